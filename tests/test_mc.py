"""Tests for jdrop._mc: Monte Carlo dropout predictions and uncertainty."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdrop

SIZES = (6, 32, 32, 4)
KEEP_PROBS = (1.0, 0.5, 0.5)


@pytest.fixture(scope="module")
def setup():
    params = jdrop.mlp_init(jax.random.key(1), SIZES)
    x = jax.random.normal(jax.random.key(2), (9, SIZES[0]))
    return params, x


def by_hand(params, x, key, num_samples):
    """The definitions, sample by sample, in float64 numpy."""
    keys = jax.random.split(key, num_samples)
    probs = np.stack(
        [np.asarray(jax.nn.softmax(jdrop.mlp_apply(params, x, key=k, keep_probs=KEEP_PROBS)), np.float64) for k in keys]
    )

    def entropy(p):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), axis=-1)

    mean = probs.mean(0)
    return mean, entropy(mean), entropy(probs).mean(0), probs.std(0)


def test_shapes_probabilities_and_the_definitions(setup):
    params, x = setup
    key = jax.random.key(0)
    mc = jdrop.mc_predict(params, x, key=key, keep_probs=KEEP_PROBS, num_samples=20)
    chex.assert_shape([mc.mean_probs, mc.std], (9, 4))
    chex.assert_shape([mc.predictive_entropy, mc.expected_entropy, mc.mutual_information], (9,))
    chex.assert_type(list(mc), jnp.float32)
    assert bool(jnp.all(mc.mean_probs >= 0))
    chex.assert_trees_all_close(mc.mean_probs.sum(-1), jnp.ones(9), atol=1e-6)
    mean, predictive, expected, std = by_hand(params, x, jax.random.clone(key), 20)
    chex.assert_trees_all_close(mc.mean_probs, mean, atol=1e-6)
    chex.assert_trees_all_close(mc.predictive_entropy, predictive, atol=1e-5)
    chex.assert_trees_all_close(mc.expected_entropy, expected, atol=1e-5)
    chex.assert_trees_all_close(mc.mutual_information, predictive - expected, atol=1e-5)
    chex.assert_trees_all_close(mc.std, std, atol=1e-6)
    assert bool(jnp.all(mc.mutual_information > 0))  # dropout networks disagree


def test_without_dropout_the_mean_is_the_deterministic_prediction_and_nothing_varies(setup):
    params, x = setup
    mc = jdrop.mc_predict(params, x, key=None, keep_probs=(1.0, 1.0, 1.0), num_samples=7, chunk_size=3)
    expected = jax.nn.softmax(jdrop.mlp_apply(params, x, deterministic=True))
    chex.assert_trees_all_close(mc.mean_probs, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(mc.std, 0.0)
    np.testing.assert_array_equal(mc.mutual_information, 0.0)
    np.testing.assert_array_equal(mc.predictive_entropy, mc.expected_entropy)


def test_same_key_same_result_other_key_other_result(setup):
    params, x = setup
    key = jax.random.key(0)
    a, b, c = (
        jdrop.mc_predict(params, x, key=k, keep_probs=KEEP_PROBS, num_samples=8)
        for k in (key, jax.random.clone(key), jax.random.key(5))
    )
    chex.assert_trees_all_equal(a, b)
    assert not np.array_equal(a.mean_probs, c.mean_probs)


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 10])
def test_chunked_and_unchunked_runs_agree(setup, chunk_size):
    params, x = setup
    key = jax.random.key(0)
    whole = jdrop.mc_predict(params, x, key=key, keep_probs=KEEP_PROBS, num_samples=10, chunk_size=10)
    same_key = jax.random.clone(key)
    chunked = jdrop.mc_predict(params, x, key=same_key, keep_probs=KEEP_PROBS, num_samples=10, chunk_size=chunk_size)
    chex.assert_trees_all_close(chunked, whole, rtol=1e-5, atol=1e-6)


def test_works_under_jit_and_vmap(setup):
    params, x = setup
    jitted = jax.jit(lambda p, x, k: jdrop.mc_predict(p, x, key=k, keep_probs=KEEP_PROBS, num_samples=4))
    key = jax.random.key(0)
    chex.assert_trees_all_close(
        jitted(params, x, key),
        jdrop.mc_predict(params, x, key=jax.random.clone(key), keep_probs=KEEP_PROBS, num_samples=4),
        atol=1e-6,
    )
    keys = jax.random.split(jax.random.key(1), 3)
    # Under vmap the scan over the sample keys gets a transpose of them, and
    # JAX's key-reuse checker has no rule for transpose: it takes the
    # transposed keys as consumed and fails the scan (a false positive; the
    # unbatched calls in this file run with the checker).
    with jax.debug_key_reuse(False):
        batched = jax.vmap(lambda k: jdrop.mc_predict(params, x, key=k, keep_probs=KEEP_PROBS, num_samples=4))(keys)
    batched = batched.mean_probs
    chex.assert_shape(batched, (3, 9, 4))
    same_key = jax.random.clone(keys)[2]
    chex.assert_trees_all_close(
        batched[2],
        jdrop.mc_predict(params, x, key=same_key, keep_probs=KEEP_PROBS, num_samples=4).mean_probs,
        atol=1e-6,
    )


def test_errors(setup):
    params, x = setup
    key = jax.random.key(0)  # never consumed: the checks come first
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_samples must be an int >= 1"):
            jdrop.mc_predict(params, x, key=key, keep_probs=KEEP_PROBS, num_samples=bad)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        jdrop.mc_predict(params, x, key=key, keep_probs=KEEP_PROBS, num_samples=4, chunk_size=0)
    with pytest.raises(ValueError, match=r"pass key=jax.random.key\(\.\.\.\)") as missing:
        jdrop.mc_predict(params, x, key=None, keep_probs=KEEP_PROBS, num_samples=4)
    assert "deterministic" not in str(missing.value)  # mc_predict has no such argument
    with pytest.raises(ValueError, match=r"keep_probs\[1\] must be in \(0, 1\]"):
        jdrop.mc_predict(params, x, key=key, keep_probs=(1.0, 0.0, 0.5), num_samples=4)
    with pytest.raises(ValueError, match="keep_probs has 2 entries"):
        jdrop.mc_predict(params, x, key=key, keep_probs=(1.0, 0.5), num_samples=4)


def stochastic_linear(params, x, key):
    """Any stochastic model: dropout on the input of a linear layer."""
    return jdrop.dropout(key, x, 0.5) @ params["w"]


def test_apply_fn_sample_i_uses_the_ith_split_key(setup):
    _, x = setup
    params = {"w": jax.random.normal(jax.random.key(3), (SIZES[0], 4))}
    key = jax.random.key(0)
    mc = jdrop.mc_predict(params, x, key=key, num_samples=6, apply_fn=stochastic_linear, chunk_size=4)
    keys = jax.random.split(jax.random.clone(key), 6)
    probs = np.stack([jax.nn.softmax(stochastic_linear(params, x, k)) for k in keys])
    chex.assert_trees_all_close(mc.mean_probs, probs.mean(0), atol=1e-6)
    chex.assert_trees_all_close(mc.std, probs.std(0), atol=1e-6)
    assert bool(jnp.all(mc.mutual_information > 0))


def test_mlp_through_apply_fn_equals_the_mlp_path(setup):
    params, x = setup

    def apply_fn(params, x, key):
        return jdrop.mlp_apply(params, x, key=key, keep_probs=KEEP_PROBS)

    key = jax.random.key(0)
    via_apply_fn = jdrop.mc_predict(params, x, key=key, num_samples=10, apply_fn=apply_fn, chunk_size=3)
    via_mlp = jdrop.mc_predict(params, x, key=jax.random.clone(key), keep_probs=KEEP_PROBS, num_samples=10)
    chex.assert_trees_all_close(via_apply_fn, via_mlp, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk_size", [1, 4, 7])
def test_no_key_is_consumed_twice(setup, chunk_size):
    params, x = setup
    with jax.debug_key_reuse(True):
        key = jax.random.key(11)  # fresh: the checker also tracks keys consumed eagerly
        jdrop.mc_predict(params, x, key=key, keep_probs=KEEP_PROBS, num_samples=7, chunk_size=chunk_size)


def test_apply_fn_errors(setup):
    params, x = setup
    key = jax.random.key(0)  # never consumed: the checks come first
    with pytest.raises(ValueError, match="keep_probs is for jdrop's MLP"):
        jdrop.mc_predict(params, x, key=key, num_samples=4, apply_fn=stochastic_linear, keep_probs=KEEP_PROBS)
    with pytest.raises(ValueError, match=r"keep_probs is needed for jdrop's MLP.*apply_fn"):
        jdrop.mc_predict(params, x, key=key, num_samples=4)
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        jdrop.mc_predict(params, x, key=key, num_samples=4, apply_fn="mlp")
    # activation is the MLP's: beside apply_fn it means nothing, "relu" (once the "not given" value) included.
    for activation in ("tanh", "relu"):
        with pytest.raises(ValueError, match="activation is for jdrop's MLP; with apply_fn"):
            jdrop.mc_predict(params, x, key=key, num_samples=4, apply_fn=stochastic_linear, activation=activation)
    with pytest.raises(ValueError, match="pass key="):
        jdrop.mc_predict(params, x, key=None, num_samples=4, apply_fn=stochastic_linear)
    with pytest.raises(TypeError, match=r"needs params from jdrop\.mlp_init"):
        jdrop.mc_predict({"w": jnp.ones((6, 4))}, x, key=key, num_samples=4, keep_probs=(0.5,))
