"""Tests for jdrop._generator: the documented construction, and regressions of the audited flaws."""

import hashlib
import importlib.util
import itertools
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdrop
from jdrop import _generator

STREAMS = Path(__file__).resolve().parents[1] / "benchmarks" / "rng_streams.py"


def mix_numpy(x):
    """lowbias32 in NumPy (uint32 arithmetic wraps as in C)."""
    x = x ^ (x >> np.uint32(16))
    x = x * np.uint32(0x7FEB352D)
    x = x ^ (x >> np.uint32(15))
    x = x * np.uint32(0x846CA68B)
    return x ^ (x >> np.uint32(16))


def reference(key, shape, rounds=_generator.ROUNDS, words=False):
    """The module docstring's formula, written independently in NumPy.

    It draws the key words itself, so callers pass a clone of the key they
    give the generator: the same bits twice, on purpose.
    """
    s = np.asarray(jax.random.bits(key, (2 + _generator.ROUNDS,), jnp.uint32))
    lead, cols = shape[:-1], shape[-1]
    row = np.arange(int(np.prod(lead)), dtype=np.uint32).reshape(*lead, 1)
    col = np.arange(cols, dtype=np.uint32)
    with np.errstate(over="ignore"):
        h = mix_numpy(row ^ s[0]) + mix_numpy(col ^ s[1])
        for i in range(rounds):
            h = mix_numpy(h ^ s[2 + i])
    return h if words else h >> np.uint32(16)


@pytest.mark.parametrize("shape", [(7,), (33, 17), (3, 5, 12), (1 << 12, 1), (2, 3, 4, 5)])
def test_values_are_the_documented_formula(shape):
    key, scalar_key = jax.random.key(0), jax.random.key(1)
    expected, expected_scalar = reference(jax.random.clone(key), shape), reference(jax.random.clone(scalar_key), (1,))
    np.testing.assert_array_equal(np.asarray(_generator.uniform16(key, shape)), expected)
    np.testing.assert_array_equal(np.asarray(_generator.uniform16(scalar_key, ())), expected_scalar.reshape(()))


@pytest.mark.parametrize("shape", [(7,), (33, 17), (3, 5, 12)])
def test_words_are_the_full_hash_and_uniforms_their_top_half(shape):
    key = jax.random.key(4)
    words = np.asarray(_generator.bits32(jax.random.clone(key), shape))
    np.testing.assert_array_equal(words, reference(jax.random.clone(key), shape, words=True))
    np.testing.assert_array_equal(np.asarray(_generator.uniform16(key, shape)), words >> np.uint32(16))


def test_half_uniform_splits_a_word_into_sign_and_31_bit_magnitude():
    key = jax.random.key(6)
    words = np.asarray(_generator.bits32(jax.random.clone(key), (4096,)))
    v, negative = _generator.half_uniform(key, (4096,))
    expected = ((words & np.uint32(0x7FFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    np.testing.assert_allclose(np.asarray(v), expected, rtol=2**-23)  # two float32 roundings
    np.testing.assert_array_equal(np.asarray(negative), words >> np.uint32(31) == 1)
    assert float(v.min()) > 0 and float(v.max()) <= 0.5


def test_the_mask_compares_these_uniforms_with_the_threshold():
    uniforms = _generator.uniform16(jax.random.key(3), (64, 80))
    threshold = round(0.3 * (1 << 16))
    np.testing.assert_array_equal(jdrop.dropout_mask(jax.random.key(3), (64, 80), 0.3), uniforms < threshold)


def test_no_four_entry_window_repeats_anywhere_in_a_large_draw():
    # Regression: the previous generator added a row offset to the column
    # counter, so two rows whose offsets differed by d < 4096 shared 4096 - d
    # identical values at shifted columns (17 row pairs in a 4096x4096 draw).
    # Here every window of 4 consecutive entries of a row (64 bits) is
    # compared with every other, at every alignment and across rows: among
    # 16.7M windows of 64 random bits a repeat has probability ~1e-5. (The
    # previous generator gives 23107 repeats here: rows were shifted copies.)
    values = np.asarray(_generator.uniform16(jax.random.key(21), (4096, 4096))).astype(np.uint64)
    windows = values[:, :-3] << 48 | values[:, 1:-2] << 32 | values[:, 2:-1] << 16 | values[:, 3:]
    windows = np.sort(windows.ravel())
    repeats = int(np.count_nonzero(windows[1:] == windows[:-1]))
    assert repeats == 0, f"{repeats} repeated 4-entry windows: rows share runs of values"


def test_fewer_rounds_give_other_values_so_the_audit_measures_the_real_margin():
    key = jax.random.key(0)
    seeds = _generator.seeds_of(jax.random.clone(key))  # words, not a key: reused freely below
    full = np.asarray(_generator.hash16(seeds, *_grid(8, 8)))
    for rounds in range(_generator.ROUNDS):
        fewer = np.asarray(_generator.hash16(seeds, *_grid(8, 8), rounds))
        np.testing.assert_array_equal(fewer, reference(jax.random.clone(key), (8, 8), rounds))
        assert not np.array_equal(fewer, full)


def _grid(rows, cols):
    return jnp.arange(rows, dtype=jnp.uint32)[:, None], jnp.arange(cols, dtype=jnp.uint32)[None, :]


def test_too_large_shapes_name_the_limit():
    with pytest.raises(ValueError, match="too large for the 32-bit counters"):
        jax.eval_shape(lambda: _generator.uniform16(jax.random.key(0), (1 << 16, 1 << 16, 2)))


@pytest.fixture(scope="module")
def streams():
    spec = importlib.util.spec_from_file_location("rng_streams", STREAMS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def first_chunks(streams, mode, count):
    return list(itertools.islice(streams.chunks(mode, seed=5), count))


def test_streams_carry_exactly_the_library_values(streams):
    base = jax.random.key(5)
    side = streams.SIDE
    first, second = first_chunks(streams, "bigarray", 2)
    # The streams derive their keys from the same seed: the library's draws here clone it on purpose.
    whole = np.asarray(_generator.uniform16(jax.random.clone(base), (2 * streams.CHUNK_ROWS, side)))
    whole = whole.astype(np.uint16)
    np.testing.assert_array_equal(np.concatenate([first, second]), whole)
    (bits,) = first_chunks(streams, "bigbits", 1)
    mask = np.asarray(jdrop.dropout_mask(jax.random.clone(base), (streams.CHUNK_ROWS, side), 0.5))
    np.testing.assert_array_equal(np.unpackbits(bits).reshape(mask.shape), mask)
    draws = [np.asarray(_generator.uniform16(jax.random.fold_in(base, i), (side, side))) for i in range(2)]
    np.testing.assert_array_equal(np.concatenate(first_chunks(streams, "rowmajor", 2)), np.concatenate(draws, None))
    np.testing.assert_array_equal(first_chunks(streams, "colmajor", 1)[0], draws[0].T.ravel())
    (packed,) = first_chunks(streams, "bits", 1)
    np.testing.assert_array_equal(np.unpackbits(packed), (draws[0] < 1 << 15).ravel())


def test_word_streams_carry_the_library_words(streams):
    base = jax.random.key(5)
    (big,) = first_chunks(streams, "bigwords", 1)
    whole = _generator.bits32(jax.random.clone(base), (streams.CHUNK_ROWS, streams.SIDE))
    np.testing.assert_array_equal(big, np.asarray(whole))
    (words,) = first_chunks(streams, "words", 1)
    first_draw = _generator.bits32(jax.random.fold_in(base, 0), (streams.SIDE, streams.SIDE))
    np.testing.assert_array_equal(words, np.asarray(first_draw).ravel())


def test_step_layer_and_narrow_streams_carry_the_library_values(streams):
    base = jax.random.key(5)
    (steps,) = first_chunks(streams, "steps", 1)
    per_step = [np.asarray(_generator.uniform16(jax.random.fold_in(base, t), (64, 64))).ravel() for t in (0, 1, 4095)]
    # Position p's values over steps 0..4095 are consecutive in the stream.
    np.testing.assert_array_equal(steps.reshape(64 * 64, 4096)[:, [0, 1, 4095]], np.stack(per_step, axis=1))
    (layers,) = first_chunks(streams, "layers", 1)
    layer_keys = jax.random.split(jax.random.fold_in(base, 0), 8)
    expected = np.stack([np.asarray(_generator.uniform16(k, (512, 1024))).ravel() for k in layer_keys], axis=1)
    np.testing.assert_array_equal(layers, expected.ravel())
    column, flat = first_chunks(streams, "narrow", 2)
    n = 1 << 20
    np.testing.assert_array_equal(column, np.asarray(_generator.uniform16(jax.random.fold_in(base, 0), (n, 1))).ravel())
    np.testing.assert_array_equal(flat, np.asarray(_generator.uniform16(jax.random.fold_in(base, 1), (n,))))


# The golden stream: the masks and words that the current release draws, pinned.
# CHANGELOG.md's stability policy promises these bits for every 0.2.x release
# (and, from 1.0, every 1.x): a change here is a breaking change that needs a
# new minor version and a changelog entry, never an accident. Integers and
# booleans only, so the pins hold on every backend.
GOLDEN_MASKS = [
    # (seed, shape, keep_prob, sha256 of the packed mask bits, its first 16 hex digits; kept count)
    (0, (1000,), 0.5, "49693a4f6ff4f4ed", 500),
    (1, (7, 13, 5), 0.1, "5a918dba160dcb48", 53),
    (2, (64, 257), 0.9, "da784eca7f335caa", 14817),
    (3, (), 0.5, "76be8b528d0075f7", 1),
    (4, (3, 1, 4096), 0.999, "e34b9d40f1c1c6bc", 12279),
]
GOLDEN_WORDS = [
    # (seed, shape, sha256 of the little-endian uint32 words, first 16 hex digits; the first three words)
    (0, (1000,), "318c8ea9a127c095", [3001292279, 1826837331, 4187184255]),
    (5, (9, 33), "64d978921061859b", [349617346, 3973634157, 1434974989]),
]


@pytest.mark.parametrize(("seed", "shape", "keep_prob", "digest", "kept"), GOLDEN_MASKS)
def test_golden_masks(seed, shape, keep_prob, digest, kept):
    mask = np.asarray(jdrop.dropout_mask(jax.random.key(seed), shape, keep_prob))
    assert int(mask.sum()) == kept
    assert hashlib.sha256(np.packbits(mask.ravel()).tobytes()).hexdigest()[:16] == digest


def test_golden_mask_of_a_raw_key_is_that_of_its_typed_key():
    raw = np.asarray(jdrop.dropout_mask(jax.random.PRNGKey(0), (100,), 0.5))
    assert hashlib.sha256(np.packbits(raw).tobytes()).hexdigest()[:16] == "4eefd86c5704d1a0"


@pytest.mark.parametrize(("seed", "shape", "digest", "first"), GOLDEN_WORDS)
def test_golden_words(seed, shape, digest, first):
    words = np.asarray(_generator.bits32(jax.random.key(seed), shape))
    assert words.ravel()[:3].tolist() == first
    assert hashlib.sha256(words.astype("<u4").tobytes()).hexdigest()[:16] == digest
