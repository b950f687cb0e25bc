"""Tests for jdrop._dropout: the contract, statistics, transformations, errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

import jdrop
from jdrop._generator import uniform16 as _uniform16

DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)
SIGMAS = 5.0  # tolerance of statistical tests, in binomial standard deviations


def scale(x, keep_prob):
    """Kept entries as documented: ``x * (1 / effective_keep_prob)``, in float32, rounded once to x's dtype."""
    reciprocal = np.float32(1.0) / np.float32(jdrop.effective_keep_prob(keep_prob))
    return (np.asarray(x, np.float32) * reciprocal).astype(x.dtype)


def reference(key, x, keep_prob, broadcast_dims=()):
    """The documented contract, written independently of jdrop.dropout (in NumPy, so no backend rewrites it)."""
    mask_shape = tuple(1 if axis in {d % x.ndim for d in broadcast_dims} else n for axis, n in enumerate(x.shape))
    mask = np.broadcast_to(np.asarray(jdrop.dropout_mask(key, mask_shape, keep_prob)), x.shape)
    return np.where(mask, scale(x, keep_prob), np.zeros((), x.dtype))


def assert_binomial(successes, trials, prob, what):
    """|successes - trials * prob| within SIGMAS binomial standard deviations."""
    sigma = math.sqrt(trials * prob * (1 - prob))
    assert abs(successes - trials * prob) <= SIGMAS * sigma, (
        f"{what}: {successes} of {trials}, expected {trials * prob:.1f} +- {SIGMAS} * {sigma:.1f}"
    )


class ContractTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(
        shape=[(7,), (16, 33), (3, 5, 12), (2, 3, 4, 5)],
        keep_prob=[0.1, 0.5, 0.8, 0.999],
    )
    def test_equals_where_mask_over_effective_keep_prob(self, shape, keep_prob):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(1), shape)
        out = self.variant(jdrop.dropout, static_argnames="keep_prob")(key, x, keep_prob=keep_prob)
        chex.assert_shape(out, shape)
        np.testing.assert_array_equal(out, reference(jax.random.clone(key), x, keep_prob))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.product(dtype=DTYPES, broadcast_dims=[(), (0,), (-1,), (0, 2)])
    def test_contract_for_dtypes_and_broadcast_dims(self, dtype, broadcast_dims):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(2), (4, 6, 10)).astype(dtype)
        out = self.variant(lambda k, x: jdrop.dropout(k, x, 0.7, broadcast_dims=broadcast_dims))(key, x)
        chex.assert_type(out, dtype)
        expected = reference(jax.random.clone(key), x, 0.7, broadcast_dims)
        np.testing.assert_array_equal(np.asarray(out, np.float32), expected)

    def test_traced_keep_prob_gives_the_same_result_as_a_python_float(self):
        key = jax.random.key(0)
        x = jax.random.normal(jax.random.key(3), (64, 64))
        traced = jax.jit(jdrop.dropout)(key, x, jnp.float32(0.3))
        np.testing.assert_array_equal(traced, jdrop.dropout(jax.random.clone(key), x, 0.3))

    def test_kept_entries_equal_x_over_effective_and_dropped_are_zero(self):
        key = jax.random.key(0)
        x = jnp.arange(1.0, 1001.0)
        out = jdrop.dropout(key, x, 0.6)
        kept = out != 0
        np.testing.assert_array_equal(out[kept], scale(x, 0.6)[np.asarray(kept)])
        np.testing.assert_array_equal(kept, jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.6))

    def test_inf_and_nan_in_dropped_entries_become_exactly_zero(self):
        key = jax.random.key(0)
        x = jnp.array([jnp.inf, -jnp.inf, jnp.nan] * 100)
        out = jdrop.dropout(key, x, 0.5)
        mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.5)
        assert 0 < int(mask.sum()) < x.size
        np.testing.assert_array_equal(out[~mask], 0.0)
        np.testing.assert_array_equal(out[mask], x[mask])  # inf and NaN stay where kept

    def test_deterministic_returns_x_and_needs_no_key(self):
        x = jnp.ones((3, 4))
        assert jdrop.dropout(None, x, 0.5, deterministic=True) is x

    def test_keep_prob_one_is_the_identity_and_draws_no_bits(self):
        key = jax.random.key(0)
        x = jnp.ones((3, 4))
        assert jdrop.dropout(key, x, 1.0) is x
        assert jdrop.dropout(None, x, 1.0) is x
        jaxpr = jax.make_jaxpr(lambda k, x: jdrop.dropout(k, x, 1.0))(key, x)
        assert not jaxpr.eqns, jaxpr

    def test_traced_keep_prob_one_is_the_identity(self):
        x = jax.random.normal(jax.random.key(4), (50, 50))
        np.testing.assert_array_equal(jax.jit(jdrop.dropout)(jax.random.key(0), x, jnp.float32(1.0)), x)

    def test_traced_keep_prob_zero_gives_zeros_and_zero_gradients(self):
        x = jax.random.normal(jax.random.key(5), (20, 20))
        out_key, loss_key = jax.random.split(jax.random.key(0))

        def loss(x, keep_prob):
            return jnp.sum(jdrop.dropout(loss_key, x, keep_prob) * 3.0)

        out = jax.jit(jdrop.dropout)(out_key, x, jnp.float32(0.0))
        grad_x, grad_p = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, jnp.float32(0.0))
        np.testing.assert_array_equal(out, 0.0)
        np.testing.assert_array_equal(grad_x, 0.0)
        assert float(grad_p) == 0.0

    @parameterized.parameters(1.5, -0.25, float("nan"))
    def test_traced_keep_prob_outside_the_range_makes_the_output_nan(self, bad):
        out = jax.jit(jdrop.dropout)(jax.random.key(0), jnp.ones(100), jnp.float32(bad))
        assert bool(jnp.all(jnp.isnan(out)))

    @parameterized.parameters(*DTYPES)
    def test_size_zero_and_scalar_inputs(self, dtype):
        *keys, scalar_key = jax.random.split(jax.random.key(0), 5)
        for key, shape in zip(keys, [(0,), (0, 5), (5, 0), ()], strict=True):
            x = jnp.ones(shape, dtype)
            out = jdrop.dropout(key, x, 0.5)
            chex.assert_shape(out, shape)
            chex.assert_type(out, dtype)
        assert float(jdrop.dropout(scalar_key, jnp.float32(3.0), 0.5)) in (0.0, 6.0)

    def test_accepts_numpy_input(self):
        key = jax.random.key(0)
        x = np.ones((4, 4), np.float32)
        from_numpy = jdrop.dropout(key, x, 0.5)
        np.testing.assert_array_equal(from_numpy, jdrop.dropout(jax.random.clone(key), jnp.asarray(x), 0.5))


class EffectiveKeepProbTest(parameterized.TestCase):
    def test_quantisation_error_is_below_two_to_the_minus_16(self):
        for keep_prob in np.concatenate([np.linspace(1e-6, 1.0, 2001), [2.0**-20, 1e-9, 0.5 + 2.0**-18]]):
            effective = float(jdrop.effective_keep_prob(float(keep_prob)))
            assert abs(effective - keep_prob) <= 2.0**-16, keep_prob
            assert effective > 0.0
            assert (effective * 2**16).is_integer()

    def test_traced_values_agree_with_concrete_ones(self):
        values = jnp.linspace(0.01, 1.0, 257)
        traced = jax.jit(jax.vmap(jdrop.effective_keep_prob))(values)
        concrete = [float(jdrop.effective_keep_prob(float(v))) for v in values]
        np.testing.assert_array_equal(traced, np.array(concrete, np.float32))
        assert float(jax.jit(jdrop.effective_keep_prob)(jnp.float32(0.0))) == 0.0


class StatisticsTest(parameterized.TestCase):
    @parameterized.parameters(0.05, 0.3, 0.5, 0.8, 0.95)
    def test_kept_fraction_within_five_sigma(self, keep_prob):
        n = 1 << 21
        kept = int(jdrop.dropout_mask(jax.random.key(11), (1024, 2048), keep_prob).sum())
        assert_binomial(kept, n, float(jdrop.effective_keep_prob(keep_prob)), f"keep_prob={keep_prob}")

    @parameterized.parameters(0.2, 0.5, 0.9)
    def test_mean_is_preserved_within_five_sigma(self, keep_prob):
        x = jax.random.normal(jax.random.key(12), (1024, 1024)) + 1.0
        out = jdrop.dropout(jax.random.key(13), x, keep_prob)
        effective = float(jdrop.effective_keep_prob(keep_prob))
        # Var(out_i - x_i) = x_i^2 (1 - p) / p for inverted dropout.
        sigma = math.sqrt(float(jnp.sum(x**2)) * (1 - effective) / effective)
        difference = float(jnp.sum(out) - jnp.sum(x))
        assert abs(difference) <= SIGMAS * sigma, (difference, sigma)

    @parameterized.parameters((2048, 2048), (1 << 22,), (1 << 22, 1), (64, 256, 256))
    def test_every_bit_of_the_16_bit_uniforms_is_unbiased(self, *shape):
        # Rows of one entry (a column vector) and 1-D arrays stress the row and
        # column counters separately.
        uniforms = np.asarray(_uniform16(jax.random.key(14), shape)).ravel()
        assert uniforms.max() < 1 << 16
        for bit in range(16):
            assert_binomial(int(((uniforms >> bit) & 1).sum()), uniforms.size, 0.5, f"bit {bit} of {shape}")

    def test_the_16_bit_uniforms_fill_every_value_evenly(self):
        uniforms = np.asarray(_uniform16(jax.random.key(15), (2048, 2048))).ravel()
        counts = np.bincount(uniforms, minlength=1 << 16)
        expected = uniforms.size / (1 << 16)
        chi_square = float(((counts - expected) ** 2 / expected).sum())
        degrees = (1 << 16) - 1  # chi-square mean; its standard deviation is sqrt(2 * degrees)
        assert abs(chi_square - degrees) <= SIGMAS * math.sqrt(2 * degrees), chi_square

    @parameterized.parameters(((2048, 2048), 0.5), ((2048, 2048), 0.8), ((1 << 22, 1), 0.5), ((1 << 22,), 0.8))
    def test_neighbouring_entries_are_independent(self, shape, keep_prob):
        mask = np.asarray(jdrop.dropout_mask(jax.random.key(16), shape, keep_prob)).reshape(2048, 2048)
        p = float(jdrop.effective_keep_prob(keep_prob))
        for offset in (1, 2, 3, 4, 64):
            pairs = mask[:, :-offset] & mask[:, offset:]
            assert_binomial(int(pairs.sum()), pairs.size, p * p, f"pairs {offset} apart in a row")
            pairs = mask[:-offset] & mask[offset:]
            assert_binomial(int(pairs.sum()), pairs.size, p * p, f"pairs {offset} rows apart")

    def test_masks_of_neighbouring_keys_are_independent(self):
        key = jax.random.key(0)
        masks = [np.asarray(jdrop.dropout_mask(jax.random.fold_in(key, step), (1024, 1024), 0.5)) for step in range(3)]
        for a, b in ((0, 1), (1, 2), (0, 2)):
            assert_binomial(int((masks[a] & masks[b]).sum()), masks[a].size, 0.25, f"steps {a} and {b}")

    @parameterized.parameters("rbg", "unsafe_rbg")
    def test_other_key_implementations_keep_the_right_fraction(self, impl):
        key = jax.random.key(15, impl=impl)
        kept = int(jdrop.dropout_mask(key, (1024, 1024), 0.7).sum())
        assert_binomial(kept, 1 << 20, float(jdrop.effective_keep_prob(0.7)), impl)


class IndependenceTest(parameterized.TestCase):
    def test_every_row_gets_its_own_mask(self):
        key_2d, key_3d = jax.random.split(jax.random.key(0))
        mask = np.asarray(jdrop.dropout_mask(key_2d, (256, 128), 0.5))
        assert len({row.tobytes() for row in mask}) == 256
        mask3 = np.asarray(jdrop.dropout_mask(key_3d, (8, 16, 128), 0.5)).reshape(128, 128)
        assert len({row.tobytes() for row in mask3}) == 128

    def test_different_keys_and_steps_give_different_masks(self):
        key = jax.random.key(0)
        masks = [np.asarray(jdrop.dropout_mask(jax.random.fold_in(key, step), (64, 64), 0.5)) for step in range(20)]
        assert len({m.tobytes() for m in masks}) == 20
        split_a, split_b = jax.random.split(key)
        assert not np.array_equal(
            jdrop.dropout_mask(split_a, (64, 64), 0.5), jdrop.dropout_mask(split_b, (64, 64), 0.5)
        )

    def test_same_key_same_mask(self):
        a = jdrop.dropout(jax.random.key(7), jnp.ones((33, 17)), 0.5)
        b = jdrop.dropout(jax.random.key(7), jnp.ones((33, 17)), 0.5)
        np.testing.assert_array_equal(a, b)

    @parameterized.parameters("rbg", "unsafe_rbg")
    def test_same_key_same_mask_for_other_implementations(self, impl):
        key = jax.random.key(3, impl=impl)
        first = jdrop.dropout_mask(key, (40, 40), 0.5)
        np.testing.assert_array_equal(first, jdrop.dropout_mask(jax.random.clone(key), (40, 40), 0.5))
        other = jdrop.dropout_mask(jax.random.key(0), (40, 40), 0.5)
        assert not np.array_equal(jdrop.dropout_mask(jax.random.clone(key), (40, 40), 0.5), other)

    def test_raw_prngkey_gives_the_same_mask_as_the_typed_key(self):
        raw = jax.random.PRNGKey(42)
        typed = jax.random.wrap_key_data(raw)
        np.testing.assert_array_equal(
            jdrop.dropout(raw, jnp.ones((9, 9)), 0.5), jdrop.dropout(typed, jnp.ones((9, 9)), 0.5)
        )

    def test_broadcast_dims_share_the_mask_exactly_along_the_named_axes(self):
        x = jnp.ones((6, 7, 40))
        key, every_key = jax.random.split(jax.random.key(0))
        out = np.asarray(jdrop.dropout(key, x, 0.5, broadcast_dims=(1,)))
        np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1], out.shape))
        assert len({out[i, 0].tobytes() for i in range(6)}) == 6  # still differs along axis 0
        assert len(set(out[0, 0].tolist())) == 2  # and along axis 2
        every = np.asarray(jdrop.dropout(every_key, x, 0.5, broadcast_dims=(0, 1, 2)))
        assert len(set(every.ravel().tolist())) == 1


class TransformationTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(*DTYPES)
    def test_gradient_is_the_mask_over_the_effective_keep_prob(self, dtype):
        x = jax.random.normal(jax.random.key(20), (32, 48)).astype(dtype)
        weights = jax.random.normal(jax.random.key(21), (32, 48)).astype(dtype)
        key = jax.random.key(0)
        grad = self.variant(jax.grad(lambda x: jnp.sum(jdrop.dropout(key, x, 0.8) * weights)))(x)
        mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.8)
        expected = np.where(mask, scale(weights, 0.8), np.zeros((), dtype))
        chex.assert_type(grad, dtype)
        np.testing.assert_array_equal(np.asarray(grad, np.float32), np.asarray(expected, np.float32))

    @chex.variants(with_jit=True, without_jit=True)
    def test_forward_mode_matches_the_mask(self):
        x = jax.random.normal(jax.random.key(22), (16, 24))
        tangent = jax.random.normal(jax.random.key(23), (16, 24))
        # One key throughout: every call below must draw the same mask.
        key = jax.random.key(0)
        out, out_tangent = self.variant(lambda x, t: jax.jvp(lambda x: jdrop.dropout(key, x, 0.6), (x,), (t,)))(
            x, tangent
        )
        # The value and the tangent are the contract exactly, with the same mask.
        np.testing.assert_array_equal(out, reference(jax.random.clone(key), x, 0.6))
        np.testing.assert_array_equal(out_tangent, reference(jax.random.clone(key), tangent, 0.6))
        jacobian_key = jax.random.clone(key)
        jacobian = jax.jacfwd(lambda x: jdrop.dropout(jacobian_key, x, 0.6))(jnp.ones(12))
        diagonal = reference(jax.random.clone(key), np.ones(12, np.float32), 0.6)
        np.testing.assert_array_equal(jacobian, np.diag(diagonal))

    def test_second_order_gradients_are_zero(self):
        key = jax.random.key(0)
        hessian = jax.hessian(lambda x: jnp.sum(jdrop.dropout(key, x, 0.5)))(jnp.ones(8))
        np.testing.assert_array_equal(hessian, 0.0)

    @chex.variants(with_jit=True, without_jit=True)
    def test_vmap_over_split_keys_equals_the_calls_one_by_one(self):
        keys = jax.random.split(jax.random.key(0), 5)
        x = jax.random.normal(jax.random.key(24), (5, 3, 20))
        batched = self.variant(jax.vmap(lambda k, x: jdrop.dropout(k, x, 0.5)))(keys, x)
        same_keys = jax.random.clone(keys)
        for i in range(5):
            np.testing.assert_array_equal(batched[i], jdrop.dropout(same_keys[i], x[i], 0.5))

    def test_vmap_over_raw_keys_and_over_keep_probs(self):
        raw_keys = jax.random.split(jax.random.PRNGKey(1), 4)
        batched = jax.vmap(lambda k: jdrop.dropout_mask(k, (30,), 0.5))(raw_keys)
        for i in range(4):
            np.testing.assert_array_equal(batched[i], jdrop.dropout_mask(raw_keys[i], (30,), 0.5))
        keep_probs = jnp.array([0.2, 0.5, 0.9])
        key = jax.random.key(0)
        per_prob = jax.vmap(lambda p: jdrop.dropout(key, jnp.ones(64), p))(keep_probs)
        for i, keep_prob in enumerate([0.2, 0.5, 0.9]):
            np.testing.assert_array_equal(per_prob[i], jdrop.dropout(jax.random.clone(key), jnp.ones(64), keep_prob))

    def test_scan_over_steps_equals_the_loop(self):
        x = jax.random.normal(jax.random.key(25), (8, 16))
        key = jax.random.key(0)

        def body(carry, step):
            return carry, jdrop.dropout(jax.random.fold_in(key, step), x, 0.5)

        _, scanned = jax.lax.scan(body, None, jnp.arange(4))
        for step in range(4):
            np.testing.assert_array_equal(scanned[step], jdrop.dropout(jax.random.fold_in(key, step), x, 0.5))

    def test_eval_shape(self):
        key = jax.random.key(0)
        out = jax.eval_shape(lambda k, x: jdrop.dropout(k, x, 0.5), key, jax.ShapeDtypeStruct((3, 7), jnp.bfloat16))
        assert out.shape == (3, 7) and out.dtype == jnp.bfloat16

    def test_changing_keep_prob_does_not_retrace(self):
        @jax.jit
        @chex.assert_max_traces(n=1)
        def apply(key, x, keep_prob):
            return jdrop.dropout(key, x, keep_prob)

        x = jnp.ones((256, 256))
        fractions = []
        keys = jax.random.split(jax.random.key(0), 3)
        for key, keep_prob in zip(keys, (0.2, 0.5, 0.9), strict=True):
            fractions.append(float(jnp.mean(apply(key, x, jnp.float32(keep_prob)) != 0)))
        assert fractions[0] < 0.25 < fractions[1] < 0.55 < fractions[2]


class TestErrors:
    @pytest.mark.parametrize(
        "bad", [0.0, -0.1, 1.0001, 2, float("nan"), float("inf"), np.float32(0.0), jnp.float32(1.5)]
    )
    def test_keep_prob_outside_the_range(self, bad):
        key = jax.random.key(0)  # never consumed: the checks come first
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]"):
            jdrop.dropout(key, jnp.ones(3), bad)
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]"):
            jdrop.dropout_mask(key, (3,), bad)
        with pytest.raises(ValueError, match=r"keep_prob must be in \(0, 1\]"):
            jdrop.effective_keep_prob(bad)

    def test_keep_prob_is_checked_even_when_deterministic(self):
        with pytest.raises(ValueError, match="keep_prob"):
            jdrop.dropout(None, jnp.ones(3), 1.5, deterministic=True)

    def test_keep_prob_of_the_wrong_kind(self):
        key = jax.random.key(0)  # never consumed: the checks come first
        with pytest.raises(ValueError, match="scalar"):
            jdrop.dropout(key, jnp.ones(3), jnp.array([0.5, 0.5]))
        with pytest.raises(TypeError, match="keep_prob"):
            jdrop.dropout(key, jnp.ones(3), True)
        with pytest.raises(TypeError, match="keep_prob"):
            jdrop.dropout(key, jnp.ones(3), "0.5")

    def test_missing_key_says_what_to_do(self):
        with pytest.raises(ValueError, match=r"pass key=.*deterministic=True"):
            jdrop.dropout(None, jnp.ones(3), 0.5)
        with pytest.raises(ValueError, match="key"):
            jax.jit(lambda x: jdrop.dropout(None, x, 0.5))(jnp.ones(3))

    def test_bad_keys(self):
        with pytest.raises(ValueError, match="single key"):
            jdrop.dropout(jax.random.split(jax.random.key(0), 2), jnp.ones(3), 0.5)
        with pytest.raises(TypeError, match="PRNG key"):
            jdrop.dropout(jnp.zeros(2, jnp.float32), jnp.ones(3), 0.5)
        with pytest.raises(TypeError, match="PRNG key"):
            jdrop.dropout(0, jnp.ones(3), 0.5)
        with pytest.raises(ValueError, match="shape"):
            jdrop.dropout(jnp.zeros(3, jnp.uint32), jnp.ones(3), 0.5)

    @pytest.mark.parametrize("dims", [(2,), (-3,), (0, 5)])
    def test_broadcast_dims_out_of_range(self, dims):
        with pytest.raises(ValueError, match=r"broadcast_dims.*out of range.*-2 to 1"):
            jdrop.dropout(jax.random.key(0), jnp.ones((3, 4)), 0.5, broadcast_dims=dims)

    @pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.bool_])
    def test_integer_and_bool_x_are_refused_where_dropped_and_returned_where_not(self, dtype):
        x = jnp.ones(3, dtype)
        with pytest.raises(TypeError, match="x must have a floating or complex dtype where noise is applied"):
            jdrop.dropout(jax.random.key(0), x, 0.5)
        assert jdrop.dropout(None, x, 0.5, deterministic=True) is x  # as Flax's Dropout returns them
        assert jdrop.dropout(None, x, 1.0) is x

    def test_complex_x_is_dropped_as_a_whole(self):
        # The mask applied to the complex value: each part exactly what a real array gets.
        re, im = jax.random.normal(jax.random.key(1), (2, 8, 16))
        y = jdrop.dropout(jax.random.key(0), jax.lax.complex(re, im), 0.7, broadcast_dims=(1,))
        assert y.dtype == jnp.complex64
        np.testing.assert_array_equal(y.real, jdrop.dropout(jax.random.key(0), re, 0.7, broadcast_dims=(1,)))
        np.testing.assert_array_equal(y.imag, jdrop.dropout(jax.random.key(0), im, 0.7, broadcast_dims=(1,)))

    def test_bad_mask_shape_and_traced_deterministic(self):
        key = jax.random.key(0)  # never consumed: the checks come first
        with pytest.raises(ValueError, match="non-negative"):
            jdrop.dropout_mask(key, (3, -1), 0.5)
        with pytest.raises(TypeError, match="shape"):
            jdrop.dropout_mask(key, (3.0,), 0.5)
        with pytest.raises(TypeError, match="deterministic"):
            jax.jit(lambda x, d: jdrop.dropout(key, x, 0.5, deterministic=d))(jnp.ones(3), True)

    def test_errors_come_before_any_work(self):
        # Raised while tracing, so nothing is compiled or run.
        def bad(x):
            return jdrop.dropout(jax.random.key(0), x, 0.0)

        with pytest.raises(ValueError, match="keep_prob"):
            jax.make_jaxpr(bad)(jnp.ones(3))


class InputHandlingTest(parameterized.TestCase):
    @parameterized.parameters(jnp.bfloat16, jnp.float16, jnp.float32, np.float32, np.float64)
    def test_a_concrete_keep_prob_of_any_float_dtype_is_accepted(self, dtype):
        keep_prob = dtype(0.75)
        key = jax.random.key(30)
        expected = jdrop.dropout(jax.random.clone(key), jnp.ones((8, 16)), 0.75)
        np.testing.assert_array_equal(jdrop.dropout(key, jnp.ones((8, 16)), keep_prob), expected)

    def test_a_keep_prob_gives_the_same_threshold_eagerly_and_under_jit(self):
        # Under jit a Python float becomes float32; the eager path rounds from
        # float32 too. Before, 120 of 100,000 five-decimal values disagreed,
        # 0.12957 among them (threshold 8491 eagerly, 8492 jitted).
        values = np.round(np.random.default_rng(0).uniform(0.0001, 1.0, 5000), 5)
        values[0] = 0.12957
        eager = np.array([float(jdrop.effective_keep_prob(float(v))) for v in values])
        jitted = np.asarray(jax.jit(jax.vmap(jdrop.effective_keep_prob))(jnp.asarray(values, jnp.float32)))
        np.testing.assert_array_equal(eager, jitted)
        assert eager[0] * (1 << 16) == 8492

    @parameterized.parameters((0, 1 << 32), (0, 1 << 33, 5), (3, 0, 1 << 33))
    def test_empty_arrays_of_any_size_are_returned_empty(self, *shape):
        x = jnp.zeros(shape)
        chex.assert_shape(jdrop.dropout(jax.random.key(31), x, 0.5), shape)
        chex.assert_shape(jdrop.dropout_mask(jax.random.key(32), shape, 0.5), shape)

    def test_broadcast_dims_must_be_a_sequence(self):
        for bad in (1, "1", 1.0):
            with pytest.raises(TypeError, match=r"broadcast_dims must be a sequence of int axes, e\.g\. \(1,\)"):
                jdrop.dropout(jax.random.key(33), jnp.ones((2, 3)), 0.5, broadcast_dims=bad)


def test_remat_keeps_no_mask_alive():
    # jax#17982: under jax.checkpoint, the threefry bits of a bernoulli mask can stay in memory for the
    # backward pass. jdrop's mask is recomputed from (key, position): the compiled gradient of a remat'd
    # stack of layers needs no more temporary memory with jdrop's dropout than without dropout.
    layers, batch, width = 6, 256, 1024
    weights = jnp.full((layers, width, width), 0.01)
    x = jnp.ones((batch, width))
    keys = jax.random.split(jax.random.key(0), layers)

    def temp_bytes(drop):
        def layer(h, w_key):
            w, key = w_key
            return drop(key, jnp.tanh(h @ w)), None

        def loss(weights, x, keys):
            return (jax.lax.scan(jax.checkpoint(layer), x, (weights, keys))[0] ** 2).sum()

        compiled = jax.jit(jax.grad(loss)).lower(weights, x, keys).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    def bernoulli(key, h):
        return jnp.where(jax.random.bernoulli(key, 0.9, h.shape), h / 0.9, 0.0)

    plain = temp_bytes(lambda key, h: h)
    mask_bytes = batch * width  # one bool mask of a layer's activations
    assert temp_bytes(lambda key, h: jdrop.dropout(key, h, 0.9)) < plain + mask_bytes // 16
    assert temp_bytes(bernoulli) > plain + mask_bytes  # the measure can tell a kept mask


def test_an_explicit_mesh_draws_the_mask_of_the_unsharded_array():
    # One device: the same code path as on many (counters sharded as the input), in this process.
    from jax.sharding import PartitionSpec

    mesh = jax.make_mesh((1,), ("batch",), axis_types=(jax.sharding.AxisType.Explicit,))
    x = jnp.arange(24.0).reshape(4, 6)
    key = jax.random.key(3)
    expected = jdrop.dropout(jax.random.clone(key), x, 0.5)
    expected_mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.5)
    sharded = jax.device_put(x, jax.sharding.NamedSharding(mesh, PartitionSpec("batch")))
    eager = jdrop.dropout(jax.random.clone(key), sharded, 0.5)  # outside set_mesh: drawn whole
    with jax.set_mesh(mesh):
        y = jax.jit(lambda key, x: jdrop.dropout(key, x, 0.5))(jax.random.clone(key), sharded)
        mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.5, out_sharding=PartitionSpec("batch"))
        with pytest.raises(ValueError, match="out_sharding"):
            jdrop.dropout_mask(key, x.shape, 0.5, out_sharding=PartitionSpec("batch", None, None))
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(eager, expected)
    np.testing.assert_array_equal(mask, expected_mask)
