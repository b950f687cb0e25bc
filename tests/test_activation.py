"""Tests for jdrop._activation: the fused activation-dropout op and its derivatives."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jdrop

KEY = jax.random.key(0)
FUSED = ("relu", "tanh", "sigmoid")
FUNCTIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu}


def pre_activations(shape=(16, 40), dtype=jnp.float32):
    """Normal values plus exact zeros, where relu and tanh have their corner cases."""
    z = jax.random.normal(jax.random.key(1), shape) * 2.0
    return z.at[:, ::7].set(0.0).astype(dtype)


def float32_tolerance(scale):
    """A few float32 ulps of the largest term: both paths round tanh/sigmoid
    to float32 before forming the slope 1 - a^2 or a (1 - a), so where the
    activation saturates the two differ by cancellation error of that size
    (each is that far from the float64 slope too)."""
    return 8 * float(jnp.finfo(jnp.float32).eps) * float(scale)


def plain(z, keep_prob, activation):
    return jdrop.dropout(KEY, FUNCTIONS[activation](z), keep_prob)


def fused(z, keep_prob, activation):
    return jdrop.activation_dropout(KEY, z, keep_prob, activation=activation)


class ValueTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(activation=("relu", "tanh", "sigmoid", "gelu"), dtype=(jnp.float32, jnp.bfloat16))
    def test_equals_activation_then_dropout_exactly(self, activation, dtype):
        z = pre_activations(dtype=dtype)
        out = self.variant(lambda z: fused(z, 0.7, activation))(z)
        # Both under the same variant: XLA may evaluate bf16 gelu differently under jit.
        expected = self.variant(lambda z: plain(z, 0.7, activation))(z)
        chex.assert_type(out, dtype)
        np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))

    def test_callable_activation_and_deterministic(self):
        z = pre_activations()
        np.testing.assert_array_equal(
            jdrop.activation_dropout(KEY, z, 0.5, activation=jax.nn.softplus),
            jdrop.dropout(KEY, jax.nn.softplus(z), 0.5),
        )
        np.testing.assert_array_equal(
            jdrop.activation_dropout(None, z, 0.5, activation="tanh", deterministic=True), jnp.tanh(z)
        )
        np.testing.assert_array_equal(jdrop.activation_dropout(None, z, 1.0, activation="relu"), jax.nn.relu(z))


class DerivativeTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(activation=FUSED, keep_prob=(0.5, 0.9))
    def test_gradient_matches_the_unfused_pair(self, activation, keep_prob):
        z = pre_activations()
        weights = jax.random.normal(jax.random.key(2), z.shape)

        def grad_of(fn):
            return self.variant(jax.grad(lambda z: jnp.sum(fn(z, keep_prob, activation) * weights)))(z)

        atol = float32_tolerance(jnp.max(jnp.abs(weights)) / jdrop.effective_keep_prob(keep_prob))
        chex.assert_trees_all_close(grad_of(fused), grad_of(plain), rtol=0, atol=atol)

    def test_tanh_keeps_the_slope_of_a_kept_zero(self):
        z = jnp.zeros(64)
        grad = jax.grad(lambda z: jnp.sum(fused(z, 0.5, "tanh")))(z)
        mask = jdrop.dropout_mask(KEY, (64,), 0.5)
        np.testing.assert_array_equal(grad, jnp.where(mask, 1 / jdrop.effective_keep_prob(0.5), 0.0))

    @parameterized.parameters(*FUSED)
    def test_forward_mode_and_second_derivatives_match(self, activation):
        z = pre_activations((8, 24))
        tangent = jax.random.normal(jax.random.key(3), z.shape)
        _, fused_tangent = jax.jvp(lambda z: fused(z, 0.6, activation), (z,), (tangent,))
        _, plain_tangent = jax.jvp(lambda z: plain(z, 0.6, activation), (z,), (tangent,))
        scale = jnp.max(jnp.abs(tangent)) / jdrop.effective_keep_prob(0.6)
        chex.assert_trees_all_close(fused_tangent, plain_tangent, rtol=0, atol=float32_tolerance(scale))

        def second(fn):
            return jax.grad(lambda z: jnp.sum(jax.grad(lambda z: jnp.sum(fn(z, 0.6, activation) ** 2))(z)))(z)

        # The second derivative involves y^2 / p^2 terms; scale by the largest.
        scale = jnp.max(jnp.abs(fused(z, 0.6, activation))) / jdrop.effective_keep_prob(0.6) ** 2
        chex.assert_trees_all_close(second(fused), second(plain), rtol=0, atol=float32_tolerance(scale))

    @parameterized.parameters(*FUSED)
    def test_vmap_over_keys(self, activation):
        keys = jax.random.split(KEY, 4)
        z = pre_activations((4, 32))
        out = jax.vmap(lambda k, z: jdrop.activation_dropout(k, z, 0.5, activation=activation))(keys, z)
        for i in range(4):
            np.testing.assert_array_equal(out[i], jdrop.dropout(keys[i], FUNCTIONS[activation](z[i]), 0.5))

    def test_traced_keep_prob_zero_has_zero_gradients(self):
        z = pre_activations()
        for activation in FUSED:
            grad = jax.jit(jax.grad(lambda z, p: jnp.sum(fused(z, p, activation))))(z, jnp.float32(0.0))  # noqa: B023
            np.testing.assert_array_equal(grad, 0.0)


def _grad_temp_bytes(activation, deterministic, sizes=(64, 512, 512, 512, 10), batch=256):
    params = jdrop.mlp_init(KEY, sizes)
    x, y = jnp.ones((batch, sizes[0])), jnp.zeros(batch, jnp.int32)
    keep_probs = (1.0,) + (0.8,) * (len(sizes) - 2)

    def loss(params):
        logits = jdrop.mlp_apply(
            params, x, key=KEY, keep_probs=keep_probs, deterministic=deterministic, activation=activation
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return jax.jit(jax.grad(loss)).lower(params).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize(("activation", "limit"), [("relu", 1.05), ("tanh", 1.3), ("sigmoid", 1.3)])
def test_backward_pass_memory_with_dropout_stays_close_to_without(activation, limit):
    # Compile-time buffer sizes, not timings: deterministic for a given XLA.
    ratio = _grad_temp_bytes(activation, False) / _grad_temp_bytes(activation, True)
    assert ratio <= limit, ratio


class TestErrors:
    def test_unknown_activation(self):
        with pytest.raises(ValueError, match="activation must be one of"):
            jdrop.activation_dropout(KEY, jnp.ones(3), 0.5, activation="swish")

    def test_bad_input(self):
        with pytest.raises(TypeError, match="floating"):
            jdrop.activation_dropout(KEY, jnp.ones(3, jnp.int32), 0.5)
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]"):
            jdrop.activation_dropout(KEY, jnp.ones(3), 1.5)
        with pytest.raises(ValueError, match=r"pass key="):
            jdrop.activation_dropout(None, jnp.ones(3), 0.5, activation="tanh")
