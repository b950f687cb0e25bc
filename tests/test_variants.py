"""Tests for jdrop._variants: Gaussian, alpha, drop-path and concrete dropout."""

import math
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize
import scipy.special
import scipy.stats
from absl.testing import parameterized

import jdrop
from jdrop import _generator
from jdrop._variants import _lower_normal, _standard_logistic, _standard_normal

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
SIGMAS = 5.0  # tolerance of the moment tests, in standard deviations of the estimate
N = 1 << 20  # entries in the moment and distribution tests (>= 10^6)
SELU_SATURATION = -1.0507009873554805 * 1.6732632423543772


def signed_half_uniform(key, shape):
    """The generator's words, turned into (v, negative) in float64 by NumPy."""
    words = np.asarray(_generator.bits32(key, shape))
    v = ((words & np.uint32(0x7FFFFFFF)).astype(np.float64) + 0.5) * 2.0**-32
    return v, words >> np.uint32(31) == 1


def reference_normal(key, shape):
    v, negative = signed_half_uniform(key, shape)
    lower = scipy.special.ndtri(v)
    return np.where(negative, lower, -lower)


def reference_logistic(key, shape):
    v, negative = signed_half_uniform(key, shape)
    lower = np.log(v) - np.log1p(-v)
    return np.where(negative, lower, -lower)


def assert_within_sigmas(value, expected, std, what):
    assert abs(value - expected) <= SIGMAS * std, f"{what}: {value}, expected {expected} +- {SIGMAS} * {std}"


def assert_mean_and_variance(samples, mean, variance, what):
    """Sample mean and variance within SIGMAS standard errors; the variance's from the sample's 4th moment."""
    samples = np.asarray(samples, np.float64).ravel()
    n = samples.size
    assert_within_sigmas(samples.mean(), mean, math.sqrt(variance / n), f"{what} mean")
    centred = samples - mean
    fourth = float(np.mean(centred**4))
    assert_within_sigmas(np.mean(centred**2), variance, math.sqrt((fourth - variance**2) / n), f"{what} variance")


class GaussianDropoutTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(keep_prob=[0.1, 0.5, 0.9], broadcast_dims=[(), (0,), (1, 2)])
    def test_equals_the_numpy_reference_with_the_same_noise(self, keep_prob, broadcast_dims):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(1), (6, 5, 40))
        out = self.variant(lambda k, x: jdrop.gaussian_dropout(k, x, keep_prob, broadcast_dims=broadcast_dims))(key, x)
        shape = tuple(1 if axis in broadcast_dims else n for axis, n in enumerate(x.shape))
        p = float(np.float32(keep_prob))
        expected = np.asarray(x, np.float64) * (
            1 + math.sqrt((1 - p) / p) * reference_normal(jax.random.clone(key), shape)
        )
        chex.assert_shape(out, x.shape)
        np.testing.assert_allclose(out, expected, rtol=2e-6, atol=2e-6)

    def test_normal_quantiles_are_float32_accurate(self):
        # Every lower-tail value the generator can produce at the extremes, and a dense sweep.
        k = np.concatenate([np.arange(100_000), np.geomspace(1e5, 2**31 - 1, 200_000).astype(np.int64)])
        v = (k.astype(np.float32) + np.float32(0.5)) * np.float32(2.0**-32)
        z = np.asarray(_lower_normal(jnp.asarray(v)), np.float64)
        exact = scipy.special.ndtri(v.astype(np.float64))
        relative = np.abs(z - exact) / np.maximum(np.abs(exact), 1.0)  # absolute error for |z| < 1
        assert relative[np.abs(exact) < 5.5].max() < 6e-7
        assert relative.max() < 4e-4  # beyond |z| = 5.5: 1 draw in 26 million
        assert np.all(np.diff(z) >= 0)  # monotone: no folds in the inversion

    @parameterized.parameters(0.3, 0.5, 0.8, 0.95)
    def test_noise_has_mean_one_and_the_dropout_variance(self, keep_prob):
        noise = jdrop.gaussian_dropout(jax.random.key(2), jnp.ones(N), keep_prob)
        assert_mean_and_variance(noise, 1.0, (1 - keep_prob) / keep_prob, f"keep_prob={keep_prob}")

    def test_noise_is_normal_by_kolmogorov_smirnov(self):
        # With a fixed key the test is deterministic; at alpha = 1e-4 a correct
        # generator fails for 1 key in 10^4, and the check below shows that the
        # test has the power to reject a wrong shape of the same mean and variance.
        keep_prob = 0.8
        std = math.sqrt((1 - keep_prob) / keep_prob)
        noise = np.asarray(jdrop.gaussian_dropout(jax.random.key(3), jnp.ones(N), keep_prob), np.float64)
        assert scipy.stats.kstest((noise - 1.0) / std, "norm").pvalue > 1e-4
        # Logistic noise scaled to unit variance: the same mean and variance, another shape.
        logistic = np.asarray(_standard_logistic(jax.random.key(4), (N,)), np.float64) * math.sqrt(3) / math.pi
        assert scipy.stats.kstest(logistic, "norm").pvalue < 1e-4

    def test_no_repeated_value_steps(self):
        # The normals come from 32-bit words (2^31 magnitudes), so among 2^20
        # draws only float32 rounding repeats values: 98.2% are distinct
        # (measured). Normals from float32 uniforms (23 bits, as
        # jax.random.uniform gives) have 94% distinct, 16-bit ones at most 12.5%.
        z = np.asarray(_standard_normal(jax.random.key(5), (N,)))
        assert np.unique(z).size >= 0.97 * N
        assert z.min() < -4.5 and z.max() > 4.5  # the tails are there (P(|z| > 4.5) ~ 7e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*DTYPES)
    def test_dtypes_and_gradient(self, dtype):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(6), (32, 48)).astype(dtype)
        out = self.variant(lambda k, x: jdrop.gaussian_dropout(k, x, 0.7))(key, x)
        chex.assert_type(out, dtype)
        noise = jdrop.gaussian_dropout(jax.random.clone(key), jnp.ones((32, 48)), 0.7)
        expected = (x.astype(jnp.float32) * noise).astype(dtype)
        # Within a few ulps of |x| (up to ~3): under jit XLA may fuse 1 + std * z
        # into one multiply-add, and near 1 + std * z = 0 that shows in absolute terms.
        eps = float(jnp.finfo(dtype).eps)
        tolerance = {"rtol": 2 * eps, "atol": 4 * eps}
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(expected, np.float32), **tolerance)
        grad = jax.grad(lambda x: jnp.sum(jdrop.gaussian_dropout(jax.random.clone(key), x, 0.7).astype(jnp.float32)))
        np.testing.assert_allclose(
            np.asarray(grad(x), np.float32), np.asarray(noise.astype(dtype), np.float32), **tolerance
        )

    def test_traced_keep_prob_compiles_once_and_is_differentiable(self):
        @jax.jit
        @chex.assert_max_traces(n=1)
        def noisy(key, keep_prob):
            return jdrop.gaussian_dropout(key, jnp.ones(4096), keep_prob)

        key = jax.random.key(7)
        low, high = noisy(key, 0.5), noisy(jax.random.clone(key), 0.9)
        assert float(jnp.std(low)) > float(jnp.std(high))
        grad = jax.grad(lambda p: jnp.var(jdrop.gaussian_dropout(jax.random.clone(key), jnp.ones(4096), p)))(0.7)
        assert np.isfinite(grad) and grad < 0
        assert bool(jnp.all(jnp.isnan(jax.jit(jdrop.gaussian_dropout)(jax.random.clone(key), jnp.ones(3), 0.0))))


class AlphaDropoutTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(keep_prob=[0.05, 0.5, 0.9], broadcast_dims=[(), (1,)])
    def test_equals_the_numpy_reference(self, keep_prob, broadcast_dims):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(8), (16, 40))
        out = self.variant(lambda k, x: jdrop.alpha_dropout(k, x, keep_prob, broadcast_dims=broadcast_dims))(key, x)
        shape = tuple(1 if axis in broadcast_dims else n for axis, n in enumerate(x.shape))
        mask = np.broadcast_to(np.asarray(jdrop.dropout_mask(jax.random.clone(key), shape, keep_prob)), x.shape)
        q = float(jdrop.effective_keep_prob(keep_prob))
        a = (q + SELU_SATURATION**2 * q * (1 - q)) ** -0.5
        b = -a * SELU_SATURATION * (1 - q)
        expected = a * np.where(mask, np.asarray(x, np.float64), SELU_SATURATION) + b
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)

    @parameterized.parameters(0.5, 0.8, 0.95)
    def test_keeps_a_standard_normal_input_at_mean_zero_and_variance_one(self, keep_prob):
        x = jax.random.normal(jax.random.key(9), (N,))
        out = jdrop.alpha_dropout(jax.random.key(10), x, keep_prob)
        assert_mean_and_variance(out, 0.0, 1.0, f"keep_prob={keep_prob}")

    def test_dropping_to_zero_instead_would_be_caught(self):
        # The power of the moment test: plain inverted dropout changes the variance.
        x = jax.random.normal(jax.random.key(9), (N,))
        with pytest.raises(AssertionError, match="variance"):
            assert_mean_and_variance(jdrop.dropout(jax.random.key(10), x, 0.8), 0.0, 1.0, "dropout")

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*DTYPES)
    def test_dtypes_and_gradient_is_the_mask_times_a(self, dtype):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(11), (32, 48)).astype(dtype)
        out = self.variant(lambda k, x: jdrop.alpha_dropout(k, x, 0.8))(key, x)
        chex.assert_type(out, dtype)
        mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.8)
        q = float(jdrop.effective_keep_prob(0.8))
        a = (q + SELU_SATURATION**2 * q * (1 - q)) ** -0.5
        grad = jax.grad(lambda x: jnp.sum(jdrop.alpha_dropout(jax.random.clone(key), x, 0.8).astype(jnp.float32)))(x)
        expected = np.where(mask, np.float32(a).astype(dtype), 0)
        np.testing.assert_array_equal(np.asarray(grad, np.float32), expected.astype(np.float32))


class DropPathTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_row_mode_is_constant_along_all_non_batch_axes(self):
        x = jnp.ones((512, 3, 5, 7))
        out = np.asarray(self.variant(lambda k, x: jdrop.drop_path(k, x, 0.7))(jax.random.key(12), x))
        per_example = out.reshape(512, -1)
        assert np.all(per_example == per_example[:, :1])
        kept = per_example[:, 0] != 0
        np.testing.assert_array_equal(per_example[kept, 0], 1 / np.float32(jdrop.effective_keep_prob(0.7)))
        assert 0 < kept.sum() < 512

    def test_is_dropout_with_the_mask_broadcast(self):
        key = jax.random.key(13)
        x = jax.random.normal(jax.random.key(14), (64, 4, 6))
        row = jdrop.drop_path(key, x, 0.6)
        np.testing.assert_array_equal(row, jdrop.dropout(jax.random.clone(key), x, 0.6, broadcast_dims=(1, 2)))
        batch = jdrop.drop_path(jax.random.clone(key), x, 0.6, mode="batch")
        np.testing.assert_array_equal(batch, jdrop.dropout(jax.random.clone(key), x, 0.6, broadcast_dims=(0, 1, 2)))

    def test_kept_fractions_are_binomial(self):
        keep_prob, rows = 0.75, 1 << 16
        kept = int((jdrop.drop_path(jax.random.key(15), jnp.ones((rows, 2)), keep_prob)[:, 0] != 0).sum())
        assert_within_sigmas(kept, rows * keep_prob, math.sqrt(rows * keep_prob * (1 - keep_prob)), "rows kept")
        keys = jax.random.split(jax.random.key(16), 4000)
        whole = jax.vmap(lambda k: jdrop.drop_path(k, jnp.ones((8, 3)), keep_prob, mode="batch"))(keys)
        per_call = np.asarray(whole).reshape(4000, -1)
        assert np.all(per_call == per_call[:, :1])
        kept = int((per_call[:, 0] != 0).sum())
        assert_within_sigmas(kept, 4000 * keep_prob, math.sqrt(4000 * keep_prob * (1 - keep_prob)), "batches kept")

    @parameterized.parameters(*DTYPES)
    def test_dtypes(self, dtype):
        out = jdrop.drop_path(jax.random.key(17), jnp.ones((16, 4), dtype), 0.5)
        chex.assert_type(out, dtype)
        assert set(np.asarray(out, np.float32).ravel().tolist()) <= {0.0, 2.0}


class ConcreteDropoutTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(keep=[0.2, 0.5, 0.9], temperature=[0.1, 0.5])
    def test_equals_the_numpy_reference_with_the_same_noise(self, keep, temperature):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(18), (16, 50))
        logit = jnp.float32(math.log(keep / (1 - keep)))
        out = self.variant(lambda k, x, ell: jdrop.concrete_dropout(k, x, ell, temperature=temperature))(key, x, logit)
        noise = reference_logistic(jax.random.clone(key), x.shape)
        ell = float(logit)
        expected = (
            np.asarray(x, np.float64) * scipy.special.expit((ell + noise) / temperature) / scipy.special.expit(ell)
        )
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*DTYPES)
    def test_dtypes_round_the_float32_result_once(self, dtype):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(31), (32, 48)).astype(dtype)
        out = self.variant(lambda k, x: jdrop.concrete_dropout(k, x, 1.5))(key, x)
        chex.assert_type(out, dtype)
        factor = jdrop.concrete_dropout(jax.random.clone(key), jnp.ones((32, 48)), 1.5)  # relaxed mask / p
        expected = np.asarray((x.astype(jnp.float32) * factor).astype(dtype), np.float32)
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=2 * eps, atol=4 * eps)
        grad = jax.grad(lambda ell: jnp.sum(jdrop.concrete_dropout(jax.random.clone(key), x, ell).astype(jnp.float32)))
        assert np.isfinite(float(grad(jnp.float32(1.5))))

    @parameterized.parameters(0.1, 0.5, 0.9)
    def test_relaxed_mask_is_above_one_half_with_the_keep_probability(self, keep):
        # sigmoid((l + L) / t) > 1/2 exactly when L > -l, which has probability sigmoid(l) = keep.
        logit = math.log(keep / (1 - keep))
        relaxed = np.asarray(jdrop.concrete_dropout(jax.random.key(19), jnp.ones(N), logit)) * keep
        kept = int((relaxed > 0.5).sum())
        assert_within_sigmas(kept, N * keep, math.sqrt(N * keep * (1 - keep)), f"keep={keep}")
        # At the default temperature 0.1 the mask is nearly hard.
        assert np.mean((relaxed < 0.05) | (relaxed > 0.95)) > 0.8

    @parameterized.parameters(-2.0, 0.0, 1.5, 4.0)
    def test_keep_logit_gets_a_finite_gradient_that_reduces_the_noise(self, logit):
        x = jnp.ones(1 << 16)
        key = jax.random.key(20)

        def noise_power(ell):
            return jnp.mean((jdrop.concrete_dropout(jax.random.clone(key), x, ell) - x) ** 2)

        grad = float(jax.grad(noise_power)(jnp.float32(logit)))
        assert np.isfinite(grad) and grad < 0, grad

    def test_per_feature_keep_logits_get_their_own_gradients(self):
        x = jax.random.normal(jax.random.key(21), (256, 4))
        logits = jnp.array([-1.0, 0.0, 1.0, 2.0])
        key = jax.random.key(22)
        grads = jax.grad(lambda ell: jnp.mean((jdrop.concrete_dropout(key, x, ell) - x) ** 2))(logits)
        chex.assert_shape(grads, (4,))
        assert np.all(np.isfinite(grads)) and np.all(np.asarray(grads) < 0)

    @pytest.mark.standard_promotion  # optax.adam's bias correction
    def test_learns_the_best_keep_probability_of_a_toy_problem(self):
        # Objective: the relaxed dropout noise power E[(m / p - 1)^2] plus the
        # regulariser's entropy term for K = 9 features and N = 8 examples, with
        # zero weights: J(l) = E[(m / p - 1)^2] - (9 / 8) H(p). Its minimiser is
        # found by quadrature over the logistic noise (independent of jdrop's
        # generator); training the logit by Adam with a new key every step must
        # end within 0.002 of it. Over 12 seeds the learned keep probability
        # was 0.78527 +- 0.00030 (sd) against the optimum 0.78533: the
        # tolerance is about 6 of those standard deviations.
        temperature = 0.1
        noise = np.linspace(-40, 40, 100_001)
        density = scipy.stats.logistic.pdf(noise)

        def objective(ell):
            p = scipy.special.expit(ell)
            noise_power = np.trapezoid((scipy.special.expit((ell + noise) / temperature) / p - 1) ** 2 * density, noise)
            return noise_power - 9 / 8 * scipy.stats.bernoulli.entropy(p)

        optimum = scipy.optimize.minimize_scalar(
            objective, bounds=(0.0, 4.0), method="bounded", options={"xatol": 1e-4}
        )
        best = scipy.special.expit(optimum.x)
        kernel = jnp.zeros((9, 1))
        x = jnp.ones(4096)

        def loss(ell, key):
            noise_power = jnp.mean((jdrop.concrete_dropout(key, x, ell, temperature=temperature) - 1) ** 2)
            return noise_power + jdrop.concrete_dropout_regularizer(ell, kernel, num_examples=8, length_scale=1.0)

        optimizer = optax.adam(0.02)

        def step(carry, key):
            ell, state = carry
            updates, state = optimizer.update(jax.grad(loss)(ell, key), state)
            return (optax.apply_updates(ell, updates), state), ell

        ell = jnp.float32(0.0)
        _, trajectory = jax.lax.scan(step, (ell, optimizer.init(ell)), jax.random.split(jax.random.key(23), 1500))
        learned = float(jax.nn.sigmoid(trajectory[-500:].mean()))
        assert abs(learned - best) < 0.002, (learned, best)


class RegularizerTest(parameterized.TestCase):
    @parameterized.parameters(((5, 3), ()), ((5, 3), (5,)), ((3, 3, 5, 2), ()), ((3, 3, 5, 2), (5,)))
    def test_equals_the_formula(self, kernel_shape, logit_shape):
        kernel = jax.random.normal(jax.random.key(24), kernel_shape)
        logit = jnp.linspace(-1.0, 2.0, 5).reshape(-1)[: max(1, math.prod(logit_shape))].reshape(logit_shape)
        out = jdrop.concrete_dropout_regularizer(logit, kernel, num_examples=100, length_scale=0.3)
        p = np.broadcast_to(scipy.special.expit(np.asarray(logit, np.float64)), (5,))
        rows = np.sum(np.moveaxis(np.asarray(kernel, np.float64) ** 2, -2, 0).reshape(5, -1), axis=1)
        entropy = -(p * np.log(p) + (1 - p) * np.log(1 - p))
        expected = (0.5 * 0.3**2 * np.sum(rows / p) - np.sum(entropy)) / 100
        np.testing.assert_allclose(out, expected, rtol=1e-5)

    def test_gradients_pull_the_keep_probability_the_right_ways(self):
        kernel = jnp.ones((4, 4))

        def grad_at(ell, length_scale):
            fn = jdrop.concrete_dropout_regularizer
            return float(jax.grad(lambda e: fn(e, kernel, num_examples=10, length_scale=length_scale))(ell))

        # The entropy term alone (tiny weights) pulls towards p = 1/2 from both sides;
        # the weight term pushes p up (||W||^2 / p falls as p grows).
        assert grad_at(jnp.float32(1.0), 1e-3) > 0 and grad_at(jnp.float32(-1.0), 1e-3) < 0
        assert grad_at(jnp.float32(0.0), 1.0) < 0

    def test_finite_at_extreme_logits(self):
        for logit in (-30.0, 30.0):
            value = jdrop.concrete_dropout_regularizer(logit, jnp.zeros((3, 2)), num_examples=1, length_scale=1.0)
            assert np.isfinite(float(value))


class TransformationTest(chex.TestCase):
    FUNCTIONS: ClassVar = {
        "gaussian": lambda k, x: jdrop.gaussian_dropout(k, x, 0.7),
        "alpha": lambda k, x: jdrop.alpha_dropout(k, x, 0.7),
        "drop_path": lambda k, x: jdrop.drop_path(k, x, 0.7),
        "concrete": lambda k, x: jdrop.concrete_dropout(k, x, 1.0),
    }

    @parameterized.parameters(*FUNCTIONS)
    def test_vmap_over_keys_equals_the_calls_one_by_one(self, name):
        fn = self.FUNCTIONS[name]
        keys = jax.random.split(jax.random.key(25), 4)
        x = jax.random.normal(jax.random.key(26), (4, 6, 10))
        batched = jax.vmap(fn)(keys, x)
        same_keys = jax.random.clone(keys)
        for i in range(4):
            chex.assert_trees_all_close(batched[i], fn(same_keys[i], x[i]), rtol=1e-6, atol=1e-6)
        assert not np.allclose(batched[0], batched[1] * x[0] / x[1])

    @parameterized.parameters(*FUNCTIONS)
    def test_scan_draws_new_noise_every_step_and_jvp_is_linear(self, name):
        fn = self.FUNCTIONS[name]
        x = jnp.ones((8, 16))

        def body(carry, key):
            return carry, fn(key, x)

        _, per_step = jax.lax.scan(body, 0, jax.random.split(jax.random.key(27), 3))
        assert not np.array_equal(per_step[0], per_step[1])
        key = jax.random.key(28)
        tangent = jax.random.normal(jax.random.key(29), x.shape)
        out, out_tangent = jax.jvp(lambda x: fn(key, x), (x,), (tangent,))
        # alpha dropout is affine in x (the tangent is a times the mask), the others linear.
        offset = fn(jax.random.clone(key), jnp.zeros_like(x)) if name == "alpha" else 0.0
        slope = (out - offset) / x
        chex.assert_trees_all_close(out_tangent, slope * tangent, rtol=1e-5, atol=1e-6)

    @parameterized.parameters("gaussian_dropout", "alpha_dropout", "drop_path", "concrete_dropout")
    def test_a_traced_keep_probability_compiles_once(self, name):
        fn = getattr(jdrop, name)
        chex.clear_trace_counter()  # the counter is per code location, shared by the parameters

        @jax.jit
        @chex.assert_max_traces(n=1)
        def noisy(key, keep):  # keep: a keep probability, or for concrete dropout a keep logit
            return fn(key, jnp.ones((64, 8)), keep)

        key = jax.random.key(30)
        low, high = noisy(key, 0.3), noisy(jax.random.clone(key), 0.9)
        assert not np.array_equal(low, high)

    @parameterized.parameters(*FUNCTIONS)
    def test_deterministic_returns_the_input_without_a_key(self, name):
        x = jnp.ones(5)
        calls = {
            "gaussian": jdrop.gaussian_dropout,
            "alpha": jdrop.alpha_dropout,
            "drop_path": jdrop.drop_path,
            "concrete": jdrop.concrete_dropout,
        }
        assert calls[name](None, x, 0.5, deterministic=True) is x
        with pytest.raises(ValueError, match="key"):
            calls[name](None, x, 0.5)


class TestErrors:
    KEEP_PROB_FUNCTIONS = (jdrop.gaussian_dropout, jdrop.alpha_dropout, jdrop.drop_path)

    @pytest.mark.parametrize("fn", KEEP_PROB_FUNCTIONS)
    @pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
    def test_keep_prob_outside_the_range(self, fn, bad):
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]"):
            fn(jax.random.key(0), jnp.ones(3), bad)

    @pytest.mark.parametrize("fn", (*KEEP_PROB_FUNCTIONS, jdrop.concrete_dropout))
    def test_integer_inputs(self, fn):
        with pytest.raises(TypeError, match="x must have a floating"):
            fn(jax.random.key(0), jnp.ones(3, jnp.int32), 0.5)

    @pytest.mark.parametrize("fn", (jdrop.gaussian_dropout, jdrop.alpha_dropout, jdrop.concrete_dropout))
    def test_broadcast_dims_out_of_range(self, fn):
        with pytest.raises(ValueError, match="broadcast_dims"):
            fn(jax.random.key(0), jnp.ones((2, 3)), 0.5, broadcast_dims=(2,))

    def test_drop_path_mode(self):
        with pytest.raises(ValueError, match=r"mode must be one of \('row', 'batch'\)"):
            jdrop.drop_path(jax.random.key(0), jnp.ones((2, 3)), 0.5, mode="rows")
        with pytest.raises(ValueError, match="batch axis"):
            jdrop.drop_path(jax.random.key(0), jnp.float32(1.0), 0.5)

    def test_concrete_dropout_arguments(self):
        key = jax.random.key(0)
        with pytest.raises(ValueError, match="keep_logit must broadcast"):
            jdrop.concrete_dropout(key, jnp.ones((2, 3)), jnp.zeros(2))
        with pytest.raises(TypeError, match="keep_logit must be floating"):
            jdrop.concrete_dropout(key, jnp.ones(3), jnp.int32(1))
        with pytest.raises(TypeError, match="keep_logit"):
            jdrop.concrete_dropout(key, jnp.ones(3), True)
        for bad in (0.0, -1.0, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="temperature must be positive and finite"):
                jdrop.concrete_dropout(key, jnp.ones(3), 0.0, temperature=bad)

    def test_regularizer_arguments(self):
        fn = jdrop.concrete_dropout_regularizer
        with pytest.raises(ValueError, match="kernel must have shape"):
            fn(0.0, jnp.ones(3), num_examples=1, length_scale=1.0)
        with pytest.raises(ValueError, match=r"keep_logit must be a scalar or have shape \(3,\)"):
            fn(jnp.zeros(2), jnp.ones((3, 2)), num_examples=1, length_scale=1.0)
        with pytest.raises(ValueError, match="num_examples must be an int >= 1"):
            fn(0.0, jnp.ones((3, 2)), num_examples=0, length_scale=1.0)
        with pytest.raises(ValueError, match="length_scale must be positive"):
            fn(0.0, jnp.ones((3, 2)), num_examples=1, length_scale=-1.0)
        with pytest.raises(TypeError, match="kernel must have a floating dtype"):
            fn(0.0, jnp.ones((3, 2), jnp.int32), num_examples=1, length_scale=1.0)
