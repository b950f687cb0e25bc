"""Data parallelism with jax.sharding: one mesh axis over all devices, of one or many processes.

jdrop needs nothing special to run sharded: masks are drawn elementwise from
each entry's position, so a sharded ``dropout`` gives the same numbers as an
unsharded one and needs no communication. These helpers only place the data:
parameters replicated, batches split along the batch axis; ``jax.jit`` does
the rest (the gradient all-reduce included).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["data_parallel_mesh", "replicate", "shard_batch"]

Tree = TypeVar("Tree")


def data_parallel_mesh(devices: Sequence[jax.Device] | None = None, *, axis_name: str = "batch") -> Mesh:
    """A one-axis mesh over ``devices`` (default: every device of every process).

    Args:
      devices: the devices to use, in order; ``jax.devices()`` by default,
        which after ``jax.distributed.initialize`` lists all processes' devices.
      axis_name: the name of the mesh axis.

    Returns:
      A ``jax.sharding.Mesh`` with the single axis ``axis_name``.

    Example:
      >>> import jax
      >>> import jdrop
      >>> mesh = jdrop.data_parallel_mesh()
      >>> mesh.axis_names, mesh.size == jax.device_count()
      (('batch',), True)
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty: pass at least one device.")
    return Mesh(np.array(devices), (axis_name,))


def _global_array(value: Any, sharding: NamedSharding) -> jax.Array:
    # Built from a host copy shard by shard, so that every process supplies
    # the shards of its own devices: this works with one process or many, as
    # long as each process passes the same global value.
    if isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
        # A typed key array has no host form: place its raw words (one more,
        # unsplit axis), then wrap them again with the same implementation.
        data_sharding = NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec, None))  # type: ignore[no-untyped-call]
        data = _global_array(jax.random.key_data(value), data_sharding)
        keys: jax.Array = jax.random.wrap_key_data(data, impl=jax.random.key_impl(value))
        return keys
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def replicate(tree: Tree, mesh: Mesh) -> Tree:
    """Places every array of ``tree`` whole on every device of ``mesh``.

    Args:
      tree: a pytree of arrays (parameters, a :class:`jdrop.TrainState`),
        typed PRNG keys included. With several processes, every process must
        pass the same values.
      mesh: from :func:`data_parallel_mesh`.

    Returns:
      The same tree of global, fully replicated ``jax.Array``\\ s.

    Example:
      >>> import jax
      >>> import jdrop
      >>> mesh = jdrop.data_parallel_mesh()
      >>> params = jdrop.replicate(jdrop.mlp_init(jax.random.key(0), (4, 8, 2)), mesh)
      >>> params[0]["w"].sharding.is_fully_replicated
      True
    """
    sharding = NamedSharding(mesh, PartitionSpec())  # type: ignore[no-untyped-call]
    placed: Tree = jax.tree.map(lambda leaf: _global_array(leaf, sharding), tree)
    return placed


def shard_batch(tree: Tree, mesh: Mesh, *, axis: int = 0) -> Tree:
    """Splits every array of ``tree`` along ``axis`` over the mesh's single axis.

    Args:
      tree: a pytree of arrays whose ``axis`` is the batch (for example
        ``(x, y)``, or ``(x, y, keys)`` with one typed key per example).
        With several processes, every process passes the same global batch
        and keeps only its own devices' shards.
      mesh: from :func:`data_parallel_mesh`.
      axis: the batch axis (use 1 for a ``(steps, batch, ...)`` chunk).

    Returns:
      The same tree of global ``jax.Array``\\ s sharded along ``axis``.

    Raises:
      ValueError: if an array's batch size is not a multiple of the mesh size,
        or the mesh has more than one axis.

    Example:
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> mesh = jdrop.data_parallel_mesh()
      >>> x, y = jdrop.shard_batch((jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)), mesh)
      >>> x.shape, x.sharding.spec[0]
      ((8, 4), 'batch')
    """
    if len(mesh.axis_names) != 1:
        raise ValueError(f"mesh must have one axis (from data_parallel_mesh), got axes {mesh.axis_names}.")
    (axis_name,) = mesh.axis_names

    def place(leaf: Any) -> jax.Array:
        shape = np.shape(leaf)
        if not -len(shape) <= axis < len(shape):
            raise ValueError(f"axis {axis} is out of range for an array of shape {shape}.")
        size = shape[axis]
        if size % mesh.size:
            raise ValueError(
                f"the batch axis has size {size}, which {mesh.size} devices cannot split evenly: "
                f"use a batch size that is a multiple of {mesh.size}."
            )
        spec = [None] * len(shape)
        spec[axis] = axis_name
        return _global_array(leaf, NamedSharding(mesh, PartitionSpec(*spec)))  # type: ignore[no-untyped-call]

    placed: Tree = jax.tree.map(place, tree)
    return placed
