"""Property-based tests (hypothesis) of jdrop.dropout and jdrop.dropout_mask against a NumPy reference.

Each example draws a shape (0 to 4 axes of 0 to 7 entries), a dtype, a subset
of the axes to share the mask along (in any order, some as negative indices),
a keep probability in (0, 1] (1.0 and tiny values included) and a seed, from
which it makes a fresh key and the input.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import jdrop

# A property sweep (30 examples, each compiling anew): in the slow suite, `pytest -m slow`.
pytestmark = pytest.mark.slow

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)

# The examples' count and their derandomisation come from the hypothesis
# profile (conftest.py): 30 fixed examples by default, about 12 s on 2 cores.


SHAPES = st.lists(st.integers(0, 7), max_size=4).map(tuple)
SEEDS = st.integers(0, 2**32 - 1)
WRITTEN_KEEP_PROBS = st.integers(1, 999).map(lambda n: n / 1000)  # as people write them: 0.1, 0.375
KEEP_PROBS = st.one_of(
    st.just(1.0),
    st.floats(0.0, 1.0, exclude_min=True),  # any float in (0, 1]: subnormals, 1.0, its neighbours
    st.floats(0.0, 2.0**-15, exclude_min=True),  # at most two steps of the 2**-16 resolution
    WRITTEN_KEEP_PROBS,
)


@st.composite
def shapes_and_broadcast_dims(draw):
    """A shape, and a subset of its axes in any order, each given as a positive or a negative index."""
    shape = draw(SHAPES)
    ndim = len(shape)
    axes = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim)) if ndim else []
    return shape, tuple(axis - ndim if draw(st.booleans()) else axis for axis in axes)


def make_input(seed, shape, dtype):
    """Normal values, a tenth of them inf, -inf or NaN; none is exactly 0, so kept entries are never 0."""
    rng = np.random.default_rng(seed)
    values = np.asarray(rng.normal(size=shape) * 4.0)
    specials = rng.random(shape) < 0.1
    values = np.where(specials, rng.choice([np.inf, -np.inf, np.nan], size=shape), values)
    with np.errstate(over="ignore"):
        values = np.asarray(values.astype(np.float32).astype(dtype))
    return jnp.asarray(np.where(values == 0, np.ones((), dtype), values))


def numpy_dropout(x, mask, keep_prob):
    """The documented contract in NumPy: ``where(mask, x * (1 / effective_keep_prob), 0)``.

    The reciprocal is the float32 one, the product is taken in float32 and
    rounded once to ``x.dtype``: exactly what the docstring of
    :func:`jdrop.dropout` promises, on any backend.
    """
    x = np.asarray(x)
    mask = np.broadcast_to(np.asarray(mask), x.shape)
    reciprocal = np.float32(1.0) / np.float32(jdrop.effective_keep_prob(keep_prob))
    with np.errstate(over="ignore", invalid="ignore"):
        multiplied = (x.astype(np.float32) * reciprocal).astype(x.dtype)
    return np.where(mask, multiplied, np.zeros((), x.dtype))


def assert_same_values(actual, expected):
    """Entry for entry equal, NaN equal to NaN."""
    actual, expected = (np.asarray(a, np.float32) for a in (actual, expected))
    same = (actual == expected) | (np.isnan(actual) & np.isnan(expected))
    assert np.all(same), (actual[~same], expected[~same])


def bits(a):
    """The raw bits of an array, for bit-for-bit comparisons (NaNs and signed zeros included)."""
    a = np.asarray(a)
    return a.view(np.dtype(f"u{a.dtype.itemsize}"))


def check_eager_dropout(key, x, keep_prob, broadcast_dims):
    """Eager dropout against the NumPy reference and its mask; returns the output."""
    shape = x.shape
    axes = {axis % len(shape) for axis in broadcast_dims}
    mask_shape = tuple(1 if axis in axes else n for axis, n in enumerate(shape))

    out = jdrop.dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)
    chex.assert_shape(out, shape)
    chex.assert_type(out, x.dtype)

    # The reference draws the mask with the same key, on purpose.
    mask = jdrop.dropout_mask(jax.random.clone(key), mask_shape, keep_prob)
    chex.assert_shape(mask, mask_shape)
    chex.assert_type(mask, bool)
    assert_same_values(out, numpy_dropout(x, mask, keep_prob))

    # Dropped entries are exactly +0, even where x is inf or NaN; kept ones never are 0.
    out32 = np.asarray(out, np.float32)
    kept = np.broadcast_to(np.asarray(mask), shape)
    assert np.all(out32[~kept] == 0) and not np.any(np.signbit(out32[~kept]))
    np.testing.assert_array_equal(out32 != 0, kept)  # so keep_prob 1.0 keeps everything

    # The output keeps the same entries all along each broadcast axis.
    for axis in axes:
        first = np.take(out32 != 0, [0], axis=axis) if shape[axis] else out32 != 0
        np.testing.assert_array_equal(out32 != 0, np.broadcast_to(first, shape))
    return out


@given(
    case=shapes_and_broadcast_dims(),
    dtype=st.sampled_from(DTYPES),
    keep_prob=KEEP_PROBS,
    written_keep_prob=WRITTEN_KEEP_PROBS,
    seed=SEEDS,
)
# Found by random search: a 0-d array with a keep probability whose reciprocal
# is inexact once gave a kept value an ulp apart under jit and eagerly.
@example(case=((), ()), dtype=jnp.float32, keep_prob=0.3, written_keep_prob=0.7, seed=0)
def test_dropout_and_its_mask_follow_the_numpy_reference(case, dtype, keep_prob, written_keep_prob, seed):
    shape, broadcast_dims = case
    key, written_key = jax.random.split(jax.random.key(seed))
    x = make_input(seed, shape, dtype)

    out = check_eager_dropout(key, x, keep_prob, broadcast_dims)
    # A second, everyday keep probability costs no compilation when eager.
    check_eager_dropout(written_key, x, written_keep_prob, broadcast_dims)
    assert jdrop.dropout(None, x, keep_prob, deterministic=True, broadcast_dims=broadcast_dims) is x

    # Under jit, bit for bit: with keep_prob a constant, and traced (a float32,
    # which gives the same threshold as the Python float; a float below
    # float32's smallest subnormal becomes 0 there, which drops everything).
    jitted = jax.jit(lambda k, x: jdrop.dropout(k, x, keep_prob, broadcast_dims=broadcast_dims))
    np.testing.assert_array_equal(bits(jitted(jax.random.clone(key), x)), bits(out))
    if np.float32(keep_prob) > 0:
        traced = jax.jit(lambda k, x, p: jdrop.dropout(k, x, p, broadcast_dims=broadcast_dims))
        np.testing.assert_array_equal(bits(traced(jax.random.clone(key), x, jnp.float32(keep_prob))), bits(out))
