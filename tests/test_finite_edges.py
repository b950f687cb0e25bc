"""The finite-edges sweep: every function of the dropout family is finite, with finite gradients, over its whole range.

Each parameter is taken to the ends of what the function accepts: keep
probabilities from 1e-4 to exactly 1.0 (where a keep-probability schedule
starts), keep logits over float32's whole range, temperatures down to 1e-3;
in float32 and bfloat16. The output and the gradient with respect to every
input (the data and the parameter itself, traced) must be finite. The
regulariser's one exception is stated and tested: where its exact value
exceeds float32 it is the correctly rounded inf, never NaN.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import expit

import jdrop

# The exhaustive sweep of edges (function x keep_prob x dtype): in the slow suite, `pytest -m slow`.
pytestmark = pytest.mark.slow

KEEP_PROBS = (1e-4, 2.0**-16, 0.3, 0.9, 1.0 - 2.0**-16, 1.0)
FLOAT32_MAX = float(jnp.finfo(jnp.float32).max)
KEEP_LOGITS = (-FLOAT32_MAX, -1e4, -200.0, -88.8, -88.0, -30.0, 0.0, 30.0, 88.8, 200.0, 1e4, FLOAT32_MAX)
# Below 1: at a temperature t > 1 the relaxed mask over the keep probability,
# sigmoid((logit + L) / t) / sigmoid(logit), is about exp(-logit (1 - 1/t)) for
# a very negative logit, and at t = 1 its derivative in t is about -logit;
# both exceed float32 there (the exact values, not rounding).
TEMPERATURES = (1e-3, 0.1, 0.5)
DTYPES = (jnp.float32, jnp.bfloat16)

KEEP_PROB_FUNCTIONS = {
    "dropout": jdrop.dropout,
    "activation_dropout": lambda key, x, p: jdrop.activation_dropout(key, x, p, activation="tanh"),
    "gaussian_dropout": jdrop.gaussian_dropout,
    "alpha_dropout": jdrop.alpha_dropout,
    "drop_path": jdrop.drop_path,
}


def data(dtype):
    return jax.random.normal(jax.random.key(7), (256, 64)).astype(dtype)


def assert_finite(tree, what):
    for leaf in jax.tree.leaves(tree):
        leaf = np.asarray(leaf, np.float32)
        assert np.all(np.isfinite(leaf)), f"{what}: {np.sum(~np.isfinite(leaf))} non-finite entries"


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("keep_prob", KEEP_PROBS)
@pytest.mark.parametrize("name", sorted(KEEP_PROB_FUNCTIONS))
def test_keep_prob_functions_and_their_gradients_are_finite(name, keep_prob, dtype):
    fn = KEEP_PROB_FUNCTIONS[name]

    @jax.jit
    def value_and_grads(key, x, p):
        # A weighted sum, so that no gradient is identically zero by symmetry.
        weights = jnp.linspace(-1.0, 2.0, x.size, dtype=jnp.float32).reshape(x.shape)
        same_key = jax.random.clone(key)  # the value and the gradient of one draw

        def loss(x, p):
            return jnp.sum(fn(same_key, x, p).astype(jnp.float32) * weights)

        return fn(key, x, p), jax.grad(loss, argnums=(0, 1))(x, p)

    out, (grad_x, grad_keep_prob) = value_and_grads(jax.random.key(0), data(dtype), jnp.float32(keep_prob))
    assert_finite(out, f"{name} at keep_prob={keep_prob}")
    assert_finite(grad_x, f"d {name} / dx at keep_prob={keep_prob}")
    assert_finite(grad_keep_prob, f"d {name} / d keep_prob at keep_prob={keep_prob}")


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("keep_logit", KEEP_LOGITS)
def test_concrete_dropout_and_its_gradients_are_finite_at_every_logit_and_temperature(keep_logit, dtype):
    @jax.jit
    def value_and_grads(key, x, logit, temperature):
        same_key = jax.random.clone(key)  # the value and the gradient of one draw

        def loss(x, logit, temperature):
            out = jdrop.concrete_dropout(same_key, x, logit, temperature=temperature)
            return jnp.sum(out.astype(jnp.float32) * jnp.cos(x.astype(jnp.float32)))

        out = jdrop.concrete_dropout(key, x, logit, temperature=temperature)
        return out, jax.grad(loss, argnums=(0, 1, 2))(x, logit, temperature)

    for seed, temperature in enumerate(TEMPERATURES):
        key, x, logit = jax.random.key(seed), data(dtype), jnp.float32(keep_logit)
        out, grads = value_and_grads(key, x, logit, jnp.float32(temperature))
        where = f"keep_logit={keep_logit}, temperature={temperature}"
        assert_finite(out, f"concrete_dropout at {where}")
        assert_finite(grads, f"concrete_dropout's gradients at {where}")


def test_concrete_dropout_at_extreme_logits_is_the_limit_it_tends_to():
    # Far below: keep probability 0 in float32, every relaxed mask 0, output 0.
    # Far above: keep probability 1, every relaxed mask 1, output x exactly.
    x = data(jnp.float32)
    key = jax.random.key(0)
    for logit in (-200.0, -FLOAT32_MAX):
        np.testing.assert_array_equal(jdrop.concrete_dropout(jax.random.clone(key), x, logit), np.zeros(x.shape))
    for logit in (200.0, FLOAT32_MAX):
        np.testing.assert_array_equal(jdrop.concrete_dropout(jax.random.clone(key), x, logit), x)


@pytest.mark.parametrize("keep_logit", KEEP_LOGITS)
def test_regularizer_is_finite_with_finite_gradients_wherever_its_value_fits_in_float32(keep_logit):
    def regularizer(logit, kernel):
        return jdrop.concrete_dropout_regularizer(logit, kernel, num_examples=1000, length_scale=0.1)

    kernels = {
        "zeros": jnp.zeros((8, 4)),
        "one zero row": jnp.ones((8, 4)).at[3].set(0.0),
        "ones": jnp.ones((8, 4)),
    }
    for (what, kernel), per_feature in itertools.product(kernels.items(), (False, True)):
        logit = jnp.full((8,) if per_feature else (), keep_logit, jnp.float32)
        value, grads = jax.value_and_grad(regularizer, argnums=(0, 1))(logit, kernel)
        # The weight term is l^2/2 ||W_k||^2 (1 + exp(-logit)) / N: beyond float32 below a logit of about -88
        # for any non-zero row, where the exact value is inf once rounded. A zero row contributes exactly 0.
        fits = what == "zeros" or keep_logit > -80.0
        where = f"keep_logit={keep_logit}, kernel={what}, per_feature={per_feature}"
        assert not np.isnan(float(value)), where
        if fits:
            assert np.isfinite(float(value)), where
            assert_finite(grads, f"the regularizer's gradients at {where}")
        else:
            assert float(value) == np.inf, where


def test_regularizer_of_a_zero_kernel_is_minus_the_entropy_at_any_logit():
    for keep_logit in KEEP_LOGITS:
        value = jdrop.concrete_dropout_regularizer(keep_logit, jnp.zeros((8, 4)), num_examples=10, length_scale=1.0)
        # In float64, from the logit: -log p = log(1 + e^-l), -log(1 - p) = log(1 + e^l), 1 - p = sigmoid(-l).
        logit = np.float64(np.float32(keep_logit))
        entropy = expit(logit) * np.logaddexp(0.0, -logit) + expit(-logit) * np.logaddexp(0.0, logit)
        np.testing.assert_allclose(float(value), -8 * entropy / 10, rtol=1e-5, atol=1e-30)
