"""Tests for jdrop._activation: the fused activation-dropout op and its derivatives."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

import jdrop

FUSED = ("relu", "tanh", "sigmoid")
FUNCTIONS = {"relu": jax.nn.relu, "tanh": jnp.tanh, "sigmoid": jax.nn.sigmoid, "gelu": jax.nn.gelu}


def pre_activations(shape=(16, 40), dtype=jnp.float32):
    """Normal values plus exact zeros, where relu and tanh have their corner cases."""
    z = jax.random.normal(jax.random.key(1), shape) * 2.0
    return z.at[:, ::7].set(0.0).astype(dtype)


def float32_tolerance(scale, dtype=jnp.float32):
    """A few ulps of ``dtype`` of the largest term: both paths round tanh/sigmoid
    to ``dtype`` before forming the slope 1 - a^2 or a (1 - a), so where the
    activation saturates the two differ by cancellation error of that size
    (each is that far from the exact slope too), plus a rounding or two of
    the products; 8 ulps bounds the four roundings of each path."""
    return 8 * float(jnp.finfo(dtype).eps) * float(scale)


def plain(key, z, keep_prob, activation):
    return jdrop.dropout(key, FUNCTIONS[activation](z), keep_prob)


def fused(key, z, keep_prob, activation):
    return jdrop.activation_dropout(key, z, keep_prob, activation=activation)


class ValueTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(activation=("relu", "tanh", "sigmoid", "gelu"), dtype=(jnp.float32, jnp.bfloat16))
    def test_equals_activation_then_dropout_exactly(self, activation, dtype):
        z = pre_activations(dtype=dtype)
        key = jax.random.key(0)
        out = self.variant(lambda k, z: fused(k, z, 0.7, activation))(key, z)
        # Both under the same variant: XLA may evaluate bf16 gelu differently under jit.
        expected = self.variant(lambda k, z: plain(k, z, 0.7, activation))(jax.random.clone(key), z)
        chex.assert_type(out, dtype)
        np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(expected, np.float32))

    def test_callable_activation_and_deterministic(self):
        z = pre_activations()
        key = jax.random.key(0)
        np.testing.assert_array_equal(
            jdrop.activation_dropout(key, z, 0.5, activation=jax.nn.softplus),
            jdrop.dropout(jax.random.clone(key), jax.nn.softplus(z), 0.5),
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
        key = jax.random.key(0)

        def grad_of(fn, key):
            return self.variant(jax.grad(lambda z, k: jnp.sum(fn(k, z, keep_prob, activation) * weights)))(z, key)

        atol = float32_tolerance(jnp.max(jnp.abs(weights)) / jdrop.effective_keep_prob(keep_prob))
        chex.assert_trees_all_close(grad_of(fused, key), grad_of(plain, jax.random.clone(key)), rtol=0, atol=atol)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(activation=FUSED, dtype=(jnp.bfloat16, jnp.float16))
    def test_low_precision_gradient_matches_the_unfused_pair(self, activation, dtype):
        # The custom JVP forms its slopes in the input's dtype, as autodiff of
        # the unfused pair does: they agree within a few ulps of that dtype.
        z = pre_activations(dtype=dtype)
        weights = jax.random.normal(jax.random.key(2), z.shape).astype(dtype)
        key = jax.random.key(0)

        def grad_of(fn, key):
            return self.variant(
                jax.grad(lambda z, k: jnp.sum((fn(k, z, 0.7, activation) * weights).astype(jnp.float32)))
            )(z, key)

        fused_grad, plain_grad = grad_of(fused, key), grad_of(plain, jax.random.clone(key))
        chex.assert_type(fused_grad, dtype)
        atol = float32_tolerance(jnp.max(jnp.abs(weights.astype(jnp.float32))) / jdrop.effective_keep_prob(0.7), dtype)
        np.testing.assert_allclose(
            np.asarray(fused_grad, np.float32), np.asarray(plain_grad, np.float32), rtol=0, atol=atol
        )
        # Dropped entries get exactly zero gradient in both (where tanh or
        # sigmoid saturates, a kept slope may round to 0 in one path only).
        dropped = ~np.asarray(jdrop.dropout_mask(jax.random.clone(key), z.shape, 0.7))
        np.testing.assert_array_equal(np.asarray(fused_grad, np.float32)[dropped], 0.0)
        np.testing.assert_array_equal(np.asarray(plain_grad, np.float32)[dropped], 0.0)

    def test_tanh_keeps_the_slope_of_a_kept_zero(self):
        z = jnp.zeros(64)
        key = jax.random.key(0)
        grad = jax.grad(lambda z: jnp.sum(fused(key, z, 0.5, "tanh")))(z)
        mask = jdrop.dropout_mask(jax.random.clone(key), (64,), 0.5)
        np.testing.assert_array_equal(grad, jnp.where(mask, 1 / jdrop.effective_keep_prob(0.5), 0.0))

    @parameterized.parameters(*FUSED)
    def test_forward_mode_and_second_derivatives_match(self, activation):
        z = pre_activations((8, 24))
        tangent = jax.random.normal(jax.random.key(3), z.shape)
        # One key throughout: the fused and the plain pair must draw the same mask.
        key = jax.random.key(0)
        _, fused_tangent = jax.jvp(lambda z: fused(key, z, 0.6, activation), (z,), (tangent,))
        same_key = jax.random.clone(key)
        _, plain_tangent = jax.jvp(lambda z: plain(same_key, z, 0.6, activation), (z,), (tangent,))
        scale = jnp.max(jnp.abs(tangent)) / jdrop.effective_keep_prob(0.6)
        chex.assert_trees_all_close(fused_tangent, plain_tangent, rtol=0, atol=float32_tolerance(scale))

        def second(fn, key):
            return jax.grad(lambda z: jnp.sum(jax.grad(lambda z: jnp.sum(fn(key, z, 0.6, activation) ** 2))(z)))(z)

        # The second derivative involves y^2 / p^2 terms; scale by the largest.
        scale = jnp.max(jnp.abs(fused(jax.random.clone(key), z, 0.6, activation))) / jdrop.effective_keep_prob(0.6) ** 2
        second_fused, second_plain = second(fused, jax.random.clone(key)), second(plain, jax.random.clone(key))
        chex.assert_trees_all_close(second_fused, second_plain, rtol=0, atol=float32_tolerance(scale))

    @parameterized.parameters(*FUSED)
    def test_vmap_over_keys(self, activation):
        keys = jax.random.split(jax.random.key(0), 4)
        z = pre_activations((4, 32))
        out = jax.vmap(lambda k, z: jdrop.activation_dropout(k, z, 0.5, activation=activation))(keys, z)
        same_keys = jax.random.clone(keys)
        for i in range(4):
            np.testing.assert_array_equal(out[i], jdrop.dropout(same_keys[i], FUNCTIONS[activation](z[i]), 0.5))

    def test_traced_keep_prob_zero_has_zero_gradients(self):
        z = pre_activations()
        for key, activation in zip(jax.random.split(jax.random.key(0), len(FUSED)), FUSED, strict=True):
            grad_fn = jax.grad(lambda z, p, k: jnp.sum(fused(k, z, p, activation)))  # noqa: B023
            grad = jax.jit(grad_fn)(z, jnp.float32(0.0), key)
            np.testing.assert_array_equal(grad, 0.0)


def _grad_temp_bytes(activation, deterministic, sizes=(64, 512, 512, 512, 10), batch=256):
    init_key, dropout_key = jax.random.split(jax.random.key(0))
    params = jdrop.mlp_init(init_key, sizes)
    x, y = jnp.ones((batch, sizes[0])), jnp.zeros(batch, jnp.int32)
    keep_probs = (1.0,) + (0.8,) * (len(sizes) - 2)

    def loss(params):
        logits = jdrop.mlp_apply(
            params, x, key=dropout_key, keep_probs=keep_probs, deterministic=deterministic, activation=activation
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
            jdrop.activation_dropout(jax.random.key(0), jnp.ones(3), 0.5, activation="swish")

    def test_bad_input(self):
        key = jax.random.key(0)  # never consumed: the checks come first
        with pytest.raises(TypeError, match="floating"):
            jdrop.activation_dropout(key, jnp.ones(3, jnp.int32), 0.5)
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]"):
            jdrop.activation_dropout(key, jnp.ones(3), 1.5)
        with pytest.raises(ValueError, match=r"pass key="):
            jdrop.activation_dropout(None, jnp.ones(3), 0.5, activation="tanh")
