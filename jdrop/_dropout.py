"""Inverted dropout with explicit PRNG keys.

The keep-mask is drawn from 16-bit uniform integers: ``u < t`` with
``t = round(keep_prob * 2**16)`` keeps an entry with probability exactly
``t / 2**16``. That value is :func:`effective_keep_prob`, and kept entries are
multiplied by its float32 reciprocal, so the expected output equals the input
(to float32 rounding of the reciprocal).

Why not ``jax.random.bernoulli``, as Flax, Haiku and Equinox use: it runs one
threefry2x32 hash (20 rounds, 64 bits) per entry and keeps 32 of the bits,
which on CPU costs many times reading and writing the array (the benchmarks
measure by how much). jdrop
asks JAX's generator for five key words per call and draws each entry's 16
bits from a keyed hash of the entry's position (see :mod:`jdrop._generator`).
The counters are the entry's row and column, so masks do not depend on how
``x`` is laid out or sharded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jdrop._checks import (
    OR_DETERMINISTIC,
    KeyLike,
    _as_key,
    _check_broadcast_dims,
    _check_deterministic,
    _check_keep_prob,
    _check_noise_input,
    _check_shape,
    _compute_dtype,
    _key_if_given,
    _times,
)
from jdrop._generator import Sharding, draw_sharding, uniform16

__all__ = ["dropout", "dropout_mask", "effective_keep_prob"]

#: Resolution of the keep probability: masks compare 16-bit uniforms.
KEEP_PROB_BITS = 16
_LEVELS = 1 << KEEP_PROB_BITS  # 65536


def _threshold_and_effective(keep_prob: ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Returns the uint32 threshold ``t`` and the float32 effective keep probability ``t / 2**16``.

    ``t = round(float32(keep_prob) * 2**16)``, but at least 1 for any positive
    ``keep_prob``: a positive keep probability never silently becomes "drop
    everything", and the error stays below ``2**-16``. A traced 0.0 gives
    ``t = 0`` (drop everything). A traced value outside [0, 1] or NaN cannot
    raise, so it keeps everything and makes the effective value NaN: every
    output becomes NaN rather than a plausible wrong number.
    """
    if not isinstance(keep_prob, jax.core.Tracer):
        # Concrete and already validated: do the arithmetic in Python, no device
        # work, but from the float32 value, as the traced path below does, so
        # that a keep probability gives the same mask whether it is passed as
        # a Python float or through jit (where it becomes float32). p * 2**16
        # is exact in both, and both round half to even.
        threshold = max(1, round(float(np.asarray(keep_prob, np.float32)) * _LEVELS))
        return jnp.uint32(threshold), jnp.float32(threshold / _LEVELS)
    p = keep_prob.astype(jnp.float32)
    valid = (p >= 0.0) & (p <= 1.0)  # False for NaN
    t = jnp.where(p > 0.0, jnp.maximum(jnp.round(p * _LEVELS), 1.0), 0.0)
    t = jnp.where(valid, t, float(_LEVELS))
    effective = jnp.where(valid, t / _LEVELS, jnp.nan)
    return t.astype(jnp.uint32), effective


def effective_keep_prob(keep_prob: ArrayLike) -> jax.Array:
    r"""The keep probability that :func:`dropout` realises for ``keep_prob``.

    Masks compare 16-bit uniform integers with a threshold, so the keep
    probability is quantised to a multiple of :math:`2^{-16}`:

    .. math::

        t = \max\left(1, \operatorname{round}(2^{16} p)\right), \qquad
        p_\text{eff} = t / 2^{16}, \qquad |p_\text{eff} - p| \le 2^{-16}.

    Kept units are scaled by :math:`1 / p_\text{eff}` (not :math:`1 / p`), so the
    expected output of dropout equals its input, up to the float32 rounding of
    that reciprocal.

    Args:
      keep_prob: probability of keeping a unit, in (0, 1]. A traced scalar is
        accepted (0.0 then means "drop everything").

    Returns:
      A float32 scalar.

    Raises:
      ValueError: if a concrete ``keep_prob`` is outside (0, 1], NaN or not a scalar.
      TypeError: if ``keep_prob`` is not a real number.

    Example:
      >>> import jdrop
      >>> float(jdrop.effective_keep_prob(0.5))
      0.5
      >>> float(jdrop.effective_keep_prob(0.8))  # 52429 / 65536
      0.8000030517578125
    """
    _check_keep_prob(keep_prob)
    return _threshold_and_effective(keep_prob)[1]


def _draw_mask(
    key: jax.Array, shape: tuple[int, ...], keep_prob: ArrayLike, out_sharding: Sharding = None
) -> tuple[jax.Array, jax.Array]:
    """The keep-mask for a checked key and keep probability, and the effective keep probability.

    ``out_sharding`` shards the mask (:func:`jdrop._generator.bits32`); the
    callers that apply it to an array pass :func:`jdrop._generator.draw_sharding`.
    """
    threshold, effective = _threshold_and_effective(keep_prob)
    return uniform16(key, shape, out_sharding) < threshold, effective


def dropout_mask(
    key: KeyLike | None, shape: Sequence[int], keep_prob: ArrayLike, *, out_sharding: NamedSharding | P | None = None
) -> jax.Array:
    r"""The boolean keep-mask (True = keep) that :func:`dropout` draws for ``key``.

    Each entry is kept independently with probability
    :func:`effective_keep_prob` ``(keep_prob)``. The same key and shape always
    give the same mask, however it is sharded; ``dropout(key, x, keep_prob)``
    uses ``dropout_mask(key, x.shape, keep_prob)``, sharded as ``x``.

    Args:
      key: a typed key (``jax.random.key``) or a raw ``jax.random.PRNGKey``;
        may be None when ``keep_prob`` is the Python value 1.0 (all True),
        but is checked whenever given.
      shape: shape of the mask: any sequence of ints (a tuple, list, range,
        1-D integer array).
      keep_prob: probability of keeping an entry, in (0, 1]; may be traced.
      out_sharding: how to shard the mask under a mesh with Explicit axes (a
        ``NamedSharding``, or a ``PartitionSpec`` inside ``jax.set_mesh``), as
        ``jax.random``'s functions take it: each device then draws only its
        shard. The values do not depend on it. Under an Auto mesh, give
        ``jax.jit`` the sharding instead (``out_shardings``).

    Returns:
      A bool array of shape ``shape``.

    Raises:
      ValueError: if ``keep_prob`` is outside (0, 1], ``key`` is None while
        the mask is drawn or not a single key, or ``shape`` has a negative size.
      TypeError: if ``key``, ``shape`` or ``keep_prob`` has the wrong type.

    Example:
      >>> import jax
      >>> import jdrop
      >>> mask = jdrop.dropout_mask(jax.random.key(0), (2, 4), 0.5)
      >>> mask.shape, mask.dtype
      ((2, 4), dtype('bool'))
    """
    dims = _check_shape(shape)
    concrete = _check_keep_prob(keep_prob)
    if concrete == 1.0:
        _key_if_given(key)
        return jnp.ones(dims, dtype=bool, out_sharding=out_sharding)
    return _draw_mask(_as_key(key), dims, keep_prob, out_sharding)[0]


def _scale_kept(x: jax.Array, effective: jax.Array) -> jax.Array:
    """``x * (1 / effective)``, computed in at least float32 and rounded once to ``x.dtype`` (complex: each part)."""
    compute_dtype = _compute_dtype(x)
    # A traced keep_prob of 0.0 drops everything; dividing by 1 there keeps the
    # (unused) branch finite so that its gradient is 0 rather than NaN.
    safe = jnp.where(effective == 0.0, jnp.float32(1.0), effective)
    # x times the rounded reciprocal, written out: XLA on CPU rewrites a division
    # by a scalar into that product for arrays but not always for 0-d x (jax 0.12
    # did for a jit constant, not eagerly), so a written division gave 0-d results
    # that differed by an ulp between eager and jit.
    reciprocal = 1.0 / safe.astype(compute_dtype)
    return _times(x, reciprocal)


def _noise_shape(x: jax.Array, broadcast_dims: object) -> tuple[int, ...]:
    """``x.shape`` with 1 at the axes in ``broadcast_dims`` (checked): the shape a mask or noise is drawn at."""
    axes = _check_broadcast_dims(broadcast_dims, x.ndim)
    return tuple(1 if axis in axes else size for axis, size in enumerate(x.shape))


def _checked_noise_shape(
    key: KeyLike | None, x: ArrayLike, keep_prob: ArrayLike, deterministic: object, broadcast_dims: object
) -> tuple[jax.Array, tuple[int, ...] | None]:
    """The checks that ``dropout`` and its keep-probability variants share, before any work.

    Returns ``x`` as an array and the shape to draw noise at, or None when the
    call is the identity (evaluation, or a concrete ``keep_prob`` of 1.0),
    which returns ``x`` whatever its dtype. A ``key`` that is given is checked
    either way; ``x``'s dtype only where noise is applied.
    """
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    shape = _noise_shape(x, broadcast_dims)
    concrete = _check_keep_prob(keep_prob)
    _key_if_given(key)
    if _check_deterministic(deterministic) or concrete == 1.0:
        return x, None
    _check_noise_input(x)
    return x, shape


def dropout(
    key: KeyLike | None,
    x: ArrayLike,
    keep_prob: ArrayLike,
    *,
    deterministic: bool = False,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    r"""Inverted dropout: keeps each entry of ``x`` with probability ``keep_prob``.

    Kept entries are scaled by one over the keep probability, dropped ones are zero,
    so the expected output is the input and evaluation needs no rescaling:

    .. math::

        m_i \sim \operatorname{Bernoulli}(p_\text{eff}), \qquad
        y_i = \begin{cases} x_i / p_\text{eff} & m_i = 1 \\ 0 & m_i = 0 \end{cases},
        \qquad \mathbb{E}[y_i] = x_i,

    with :math:`p_\text{eff}` = :func:`effective_keep_prob` ``(keep_prob)``.
    Exactly, ``dropout(key, x, p)`` equals
    ``jnp.where(mask, x * (1 / effective_keep_prob(p)), 0)`` with
    ``mask = dropout_mask(key, s, p)`` broadcast to ``x.shape``, where ``s`` is
    ``x.shape`` with 1 at the axes in ``broadcast_dims``: kept entries are
    multiplied by the float32 reciprocal (within one ulp of ``x / p_eff``, and
    what XLA computes for a division by a scalar anyway), the same bits eagerly
    and under ``jit``. For float16 and bfloat16 the product is taken in float32
    and rounded once. Dropped entries
    are exactly 0 even where ``x`` is inf or NaN.

    Flax and Haiku take the drop rate instead: ``rate = 1 - keep_prob``.

    Args:
      key: a typed key (``jax.random.key``) or a raw ``jax.random.PRNGKey``.
        May be None when ``deterministic=True`` or ``keep_prob`` is the Python
        value 1.0, but is checked whenever given. Use a new key for every
        call: the same key gives the same mask.
      x: floating or complex array of any shape (a complex value is scaled as
        a whole: both parts kept or both dropped). Where nothing is dropped
        (``deterministic=True``, ``keep_prob`` 1.0) any array is returned
        unchanged, an integer or bool one included.
      keep_prob: probability of keeping an entry, in (0, 1]. A traced scalar
        (for a schedule) does not trigger recompilation; a traced 0.0 drops
        everything with zero gradients. A traced value outside [0, 1] cannot
        raise and makes the output NaN.
      deterministic: if true, return ``x`` unchanged (evaluation): a bool, or
        a concrete real scalar read as one (``1``, ``jnp.array(True)``), as
        Flax and Equinox read it.
      broadcast_dims: axes along which the mask is shared, e.g. ``(1,)`` for
        one mask across all time steps of ``(batch, time, features)``: any
        sequence of ints (a tuple, list, range, 1-D integer array).

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: if a concrete ``keep_prob`` is outside (0, 1] or NaN, an axis
        in ``broadcast_dims`` is out of range, or ``key`` is missing while
        dropout is active.
      TypeError: if ``x`` is neither floating nor complex while dropout is
        active, ``key`` is given but is not a PRNG key, ``deterministic`` is
        not read as a bool, or ``broadcast_dims`` is not a sequence of ints.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> x = jnp.ones((2, 4))
      >>> y = jdrop.dropout(jax.random.key(0), x, keep_prob=0.5)
      >>> sorted(set(y.ravel().tolist()))  # dropped: 0, kept: 1 / 0.5
      [0.0, 2.0]
      >>> jdrop.dropout(None, x, 0.5, deterministic=True) is x
      True
    """
    x, mask_shape = _checked_noise_shape(key, x, keep_prob, deterministic, broadcast_dims)
    if mask_shape is None:
        return x
    typed_key = _as_key(key, or_else=OR_DETERMINISTIC)
    mask, effective = _draw_mask(typed_key, mask_shape, keep_prob, draw_sharding(x, mask_shape))
    return jnp.where(mask, _scale_kept(x, effective), jnp.zeros((), x.dtype))
