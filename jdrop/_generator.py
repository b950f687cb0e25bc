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
shard's values. :func:`hash32` and :func:`hash16` are the same functions on
explicit counters, for the raw streams that ``benchmarks/rng_streams.py``
feeds to PractRand (``docs/randomness.md`` has the audit).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

#: Rounds after the row and column hashes meet. The PractRand table of the docs
#: shows that the construction with one round fewer still passes 32 GB (the
#: longest test run) on its hardest stream: a margin of at least one round.
ROUNDS = 3
MAX_COUNTER = 1 << 32  # rows and columns are counted in uint32


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


def bits32(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform uint32 words, one per entry of ``shape``: :math:`h` of each entry's position.

    The row hash is computed on ``(*lead, 1)`` and the column hash on
    ``(1, ..., cols)``, then broadcast. :func:`uniform16` is the top 16 bits
    of these words, for the same key and shape.
    """
    if not shape:
        return bits32(key, (1,)).reshape(())
    if math.prod(shape) == 0:  # nothing to draw, whatever the other sizes
        return jnp.zeros(shape, jnp.uint32)
    *lead, cols = shape
    if math.prod(lead) >= MAX_COUNTER or cols >= MAX_COUNTER:
        raise ValueError(f"shape {shape} is too large for the 32-bit counters of the mask generator.")
    seeds = seeds_of(key)
    row_shape = (*lead, 1)
    row = jnp.zeros(row_shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(lead))):
        row = row + jax.lax.broadcasted_iota(jnp.uint32, row_shape, axis) * jnp.uint32(stride)
        stride *= lead[axis]
    col = jax.lax.broadcasted_iota(jnp.uint32, (1,) * len(lead) + (cols,), len(lead))
    return hash32(seeds, row, col)


def uniform16(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Uniform integers in [0, 2**16) (as uint32), one per entry of ``shape``: what masks compare."""
    return bits32(key, shape) >> 16


def half_uniform(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
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
    word = bits32(key, shape)
    v = ((word & jnp.uint32(0x7FFFFFFF)).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-32)
    return v, (word >> 31) == 1
