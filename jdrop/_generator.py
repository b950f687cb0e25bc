r"""The generator: uniform words from a keyed hash of each entry's position.

Entry ``(row, col)`` of a draw, where ``row`` is the row-major index of the
leading axes and ``col`` the index along the last axis, gets the 32-bit word
:math:`h` (:func:`bits32`; the Gaussian and concrete dropout noise) whose top
16 bits are what masks compare (:func:`uniform16`):

.. math::

    a = m(\mathit{row} \oplus s_0), \quad b = m(\mathit{col} \oplus s_1), \quad
    h = m(m(m((a + b) \oplus s_2) \oplus s_3) \oplus s_4),

where :math:`m` is lowbias32 (an invertible 32-bit mixer of two multiplies and
three xor-shifts) and :math:`s_0..s_4` are five words that
``jax.random.bits(key)`` gives, whatever the key's implementation. It is a
key-alternating construction: the row and the column are each hashed before
they meet, and three keyed rounds follow, so every entry's value goes through
the full mixing of both counters. Because :math:`b` is a bijection of the
column, the entries of one row never share an input; because it is a
pseudo-random one, two rows share inputs only at scattered, birthday-rate
coincidences, never along runs (the weakness of an additive row offset).

Everything is elementwise in the position: a mask does not depend on how its
array is laid out or sharded, and a device holding a shard computes only that
shard's values. For that, the counters must be sharded as the draw is: under
an Auto mesh the compiler propagates the sharding of the array a draw is
applied to; under a mesh with Explicit axes, where a value without a sharding
in its type is whole on every device, the draw is given that array's sharding
(:func:`draw_sharding`) and passes it to the counters (:func:`bits32`).

"The same mask under any sharding" is about positions in the array that a
function is given. Inside ``shard_map`` that array is the local shard, so
positions are counted within the shard: shards of the same shape drawn with
the same key get the same mask, unless the key is made per shard first
(``jax.random.fold_in(key, jax.lax.axis_index(axis))``; ``docs/scaling.md``).

:func:`hash32` and :func:`hash16` are the same functions on explicit counters,
for the raw streams that ``benchmarks/rng_streams.py`` feeds to PractRand
(``docs/randomness.md`` has the audit).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

#: Rounds after the row and column hashes meet. The PractRand table of the docs
#: shows that the construction with one round fewer still passes 32 GB (the
#: longest test run) on its hardest stream: a margin of at least one round.
ROUNDS = 3
MAX_COUNTER = 1 << 32  # rows and columns are counted in uint32

#: How a draw is sharded: a ``NamedSharding``, a ``PartitionSpec`` (under a mesh context), or None (not explicitly).
Sharding = NamedSharding | PartitionSpec | None


def _mix32(x: jax.Array) -> jax.Array:
    """lowbias32 (C. Wellons, hash-prospector): an invertible uint32 mixer.

    Flipping any input bit flips each output bit with probability very close
    to 1/2 (its measured avalanche bias is among the lowest that search found
    for two-multiply hashes), using two multiplies and three xor-shifts, all
    of which vectorise on CPU and GPU.
    """
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def seeds_of(key: jax.Array) -> jax.Array:
    """The key words :math:`s_0, s_1, \\ldots` of a draw: ``2 + ROUNDS`` uint32 words."""
    return jax.random.bits(key, (2 + ROUNDS,), jnp.uint32)


def hash32(seeds: jax.Array, row: jax.Array, col: jax.Array, rounds: int = ROUNDS) -> jax.Array:
    """The full 32-bit hash :math:`h` of the entries at uint32 counters ``row`` and ``col``.

    ``row`` and ``col`` broadcast against each other. ``rounds`` below
    :data:`ROUNDS` exists for the safety-margin audit only.
    """
    h = _mix32(row ^ seeds[0]) + _mix32(col ^ seeds[1])
    for i in range(rounds):
        h = _mix32(h ^ seeds[2 + i])
    return h


def hash16(seeds: jax.Array, row: jax.Array, col: jax.Array, rounds: int = ROUNDS) -> jax.Array:
    """The uniform in [0, 2**16) (as uint32): the top 16 bits of :func:`hash32`."""
    return hash32(seeds, row, col, rounds) >> 16


def draw_sharding(x: jax.Array, shape: tuple[int, ...]) -> Sharding:
    """The sharding of a draw at ``shape`` whose values are applied to ``x``: ``x``'s, where it is explicit.

    Under a mesh with Explicit axes, ``x``'s type carries the axes its
    dimensions are sharded over, and a draw of ``x.shape`` gets the same; a
    dimension drawn at size 1 (the ``broadcast_dims`` of a mask, the shared
    axes of ``drop_path``) is replicated, since the draw is broadcast along it.
    None where nothing is sharded explicitly: no mesh, or an Auto mesh, whose
    compiler propagates ``x``'s sharding to the draw by itself. (Inside
    ``shard_map``, the manual axes are not in ``x``'s type: ``x`` is the local
    shard there, and the draw is the shard's own.)
    """
    sharding = jax.typeof(x).sharding
    if not isinstance(sharding, NamedSharding) or len(shape) != x.ndim:
        return None
    if not isinstance(x, jax.core.Tracer) and jax.sharding.get_abstract_mesh().empty:
        # An eager call outside `jax.set_mesh`: JAX places an op without array
        # inputs (the counters) on one device there, and fails for a sharded
        # one. The draw is then made whole, as before, and resharded by the ops
        # that apply it; under `jit`, or inside `jax.set_mesh`, it is not.
        return None
    entries = _entries(sharding, x.ndim)
    drawn = tuple(axes if size == full else None for axes, size, full in zip(entries, shape, x.shape, strict=True))
    return _with_spec(sharding, drawn)


def _with_spec(sharding: Sharding, entries: tuple[object, ...]) -> Sharding:
    """``sharding`` with the partition ``entries`` instead of its own (None when nothing is sharded)."""
    if sharding is None or all(axes is None for axes in entries):
        return None
    spec = PartitionSpec(*entries)  # type: ignore[no-untyped-call]
    return NamedSharding(sharding.mesh, spec) if isinstance(sharding, NamedSharding) else spec


def _entries(sharding: Sharding, ndim: int) -> tuple[object, ...]:
    """The partition of each of ``ndim`` dimensions under ``sharding``: its spec padded with None."""
    if sharding is None:
        return (None,) * ndim
    spec = tuple(sharding.spec if isinstance(sharding, NamedSharding) else sharding)
    if len(spec) > ndim:
        raise ValueError(f"out_sharding {sharding} has more entries than the {ndim} axes of the shape.")
    return spec + (None,) * (ndim - len(spec))


def bits32(key: jax.Array, shape: tuple[int, ...], out_sharding: Sharding = None) -> jax.Array:
    """Uniform uint32 words, one per entry of ``shape``: :math:`h` of each entry's position.

    The row hash is computed on ``(*lead, 1)`` and the column hash on
    ``(1, ..., cols)``, then broadcast. :func:`uniform16` is the top 16 bits
    of these words, for the same key and shape.

    ``out_sharding`` (a ``NamedSharding``, or a ``PartitionSpec`` under a mesh
    context; its axes Explicit) shards the result: the row counters take the
    partition of the leading axes, the column counters that of the last axis,
    so that each device hashes only the positions of its own shard. The values
    do not depend on it.
    """
    if not shape:
        return bits32(key, (1,)).reshape(())
    entries = _entries(out_sharding, len(shape))
    if math.prod(shape) == 0:  # nothing to draw, whatever the other sizes
        return jnp.zeros(shape, jnp.uint32, out_sharding=_with_spec(out_sharding, entries))
    *lead, cols = shape
    if math.prod(lead) >= MAX_COUNTER or cols >= MAX_COUNTER:
        raise ValueError(f"shape {shape} is too large for the 32-bit counters of the mask generator.")
    seeds = seeds_of(key)
    row_shape = (*lead, 1)
    row_sharding = _with_spec(out_sharding, (*entries[:-1], None))
    row = jnp.zeros(row_shape, jnp.uint32, out_sharding=row_sharding)
    stride = 1
    for axis in reversed(range(len(lead))):
        index = jax.lax.broadcasted_iota(jnp.uint32, row_shape, axis, out_sharding=row_sharding)
        row = row + index * jnp.uint32(stride)
        stride *= lead[axis]
    col_sharding = _with_spec(out_sharding, (*(None,) * len(lead), entries[-1]))
    col = jax.lax.broadcasted_iota(jnp.uint32, (1,) * len(lead) + (cols,), len(lead), out_sharding=col_sharding)
    return hash32(seeds, row, col)


def uniform16(key: jax.Array, shape: tuple[int, ...], out_sharding: Sharding = None) -> jax.Array:
    """Uniform integers in [0, 2**16) (as uint32), one per entry of ``shape``: what masks compare."""
    return bits32(key, shape, out_sharding) >> 16


def half_uniform(key: jax.Array, shape: tuple[int, ...], out_sharding: Sharding = None) -> tuple[jax.Array, jax.Array]:
    r"""A uniform :math:`v \in (0, 1/2]` and a fair sign, per entry, from one :func:`bits32` word.

    The top bit is the sign and the low 31 bits :math:`k` give
    :math:`v = (k + 1/2)\, 2^{-32}` in float32. A symmetric distribution
    (normal, logistic) takes its lower tail from :math:`v` and flips it on the
    sign, so tails come from the small values of :math:`v`, where float32 is
    exact: no value is ever 0 or 1, there are :math:`2^{31}` magnitudes, and
    the deepest tail reached is :math:`v = 2^{-33}` (a normal's
    :math:`\pm 6.34`).

    Returns:
      ``(v, negative)``: float32 ``v`` and a bool that is True for half of the entries.
    """
    word = bits32(key, shape, out_sharding)
    v = ((word & jnp.uint32(0x7FFFFFFF)).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-32)
    return v, (word >> 31) == 1
