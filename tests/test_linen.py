"""Tests for jdrop.linen: the drop-in for flax.linen.Dropout."""

import functools

import chex
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from dropin_helpers import (
    NOISE_VARIANT_NAMES,
    TRAINING_RATE,
    TRAINING_STEPS,
    TRAINING_WIDTH,
    VARIANT_NAMES,
    VARIANT_SHAPE,
    assert_constant_along_non_batch_axes,
    assert_dropout_seen_in_training,
    bit_identical,
    core,
    cross_entropy,
    noisy_blobs,
    variant_cases,
    zero_taps,
)
from flax.training import train_state

import jdrop
import jdrop.linen


class FlaxDropoutTests(parameterized.TestCase):
    """Flax's own tests of linen.Dropout (google/flax, tests/linen/linen_test.py,
    class StochasticTest), re-expressed with jdrop.linen.Dropout."""

    def test_dropout(self):
        # Source: StochasticTest.test_dropout.
        key1, key2 = jax.random.split(jax.random.key(0), 2)
        module = jdrop.linen.Dropout(rate=0.5)
        y1 = module.apply({}, jnp.ones((20, 20)), deterministic=False, rngs={"dropout": key1})
        y2 = module.apply({}, jnp.ones((20, 20)), deterministic=False, rngs={"dropout": key2})
        self.assertFalse(np.all(y1 == y2))
        y1 = module.apply({}, jnp.ones((20, 20)), deterministic=True, rngs={"dropout": key1})
        y2 = module.apply({}, jnp.ones((20, 20)), deterministic=True, rngs={"dropout": key2})
        self.assertTrue(np.all(y1 == y2))

    def test_dropout_rate_stats(self):
        # Source: StochasticTest.test_dropout_rate_stats (4 sigma, as there).
        rootkey = jax.random.key(0)
        for rate in np.arange(0.1, 1.0, 0.1):
            rootkey, subkey = jax.random.split(rootkey)
            module = jdrop.linen.Dropout(rate=rate)
            n_trials = 10
            nonzero_counts = 0
            for key in jax.random.split(subkey, n_trials):
                y = module.apply({}, jnp.ones((100, 100)), deterministic=False, rngs={"dropout": key})
                nonzero_counts += np.sum(y > 0.0)
            all_counts = np.prod((100, 100, n_trials))
            frac = np.sum(nonzero_counts) / all_counts
            keep_rate = 1.0 - rate
            delta = 4 * np.sqrt(rate * keep_rate) / np.sqrt(all_counts)
            self.assertTrue(keep_rate - delta < frac < keep_rate + delta)

    def test_dropout_rate_limits(self):
        # Source: StochasticTest.test_dropout_rate_limits.
        key1, key2, key3 = jax.random.split(jax.random.key(0), 3)
        inputs = jnp.ones((20, 20))
        d0 = jdrop.linen.Dropout(rate=0.0)
        y1 = d0.apply({}, inputs, deterministic=False, rngs={"dropout": key1})
        np.testing.assert_array_equal(y1, inputs)
        d1 = jdrop.linen.Dropout(rate=1.0)
        y2 = d1.apply({}, inputs, deterministic=False, rngs={"dropout": key2})
        np.testing.assert_array_equal(y2, np.zeros_like(inputs))

        def fn(x, k):
            return d1.apply({}, x, rngs={"dropout": k}, deterministic=False)

        res = jax.grad(lambda x, k: jnp.sum(fn(x, k)))(inputs, key3)
        self.assertFalse(np.isnan(res).any())

    @parameterized.parameters(
        {"num_dims": 2, "broadcast_dims": (1,), "slice_fn": lambda out, i: out[i, :], "summed_total": 2 * 10},
        {"num_dims": 2, "broadcast_dims": (0,), "slice_fn": lambda out, i: out[:, i], "summed_total": 2 * 10},
        {"num_dims": 3, "broadcast_dims": (1, 2), "slice_fn": lambda out, i: out[i, :, :], "summed_total": 200},
        {"num_dims": 3, "broadcast_dims": (1,), "slice_fn": lambda out, i, j: out[i, :, j], "summed_total": 20},
        {"num_dims": 4, "broadcast_dims": (0, 2, 3), "slice_fn": lambda out, i: out[:, i, :, :], "summed_total": 2000},
        {"num_dims": 4, "broadcast_dims": (0, 1), "slice_fn": lambda out, i, j: out[:, :, i, j], "summed_total": 200},
        {"num_dims": 4, "broadcast_dims": (3,), "slice_fn": lambda out, i, j, k: out[i, j, k, :], "summed_total": 20},
    )
    def test_dropout_broadcast(self, num_dims, broadcast_dims, slice_fn, summed_total):
        # Source: StochasticTest.test_dropout_broadcast.
        module = jdrop.linen.Dropout(rate=0.5, broadcast_dims=broadcast_dims, deterministic=False)
        x = jnp.ones((10,) * num_dims)
        out = module.apply({}, x, rngs={"dropout": jax.random.key(0)})
        free = num_dims - len(broadcast_dims)
        for index in np.ndindex(*(10,) * free):
            self.assertIn(float(slice_fn(out, *index).sum()), (0.0, summed_total))

    def test_dropout_manual_rng(self):
        # Source: StochasticTest.test_dropout_manual_rng.
        class Foo(nn.Module):
            @nn.compact
            def __call__(self, x):
                key = self.make_rng("dropout")
                x1 = jdrop.linen.Dropout(rate=0.5, deterministic=False)(x, rng=key)
                x2 = jdrop.linen.Dropout(rate=0.5, deterministic=False)(x, rng=jax.random.clone(key))
                return x1, x2

        x1, x2 = Foo().apply({}, jnp.ones((20, 20)), rngs={"dropout": jax.random.key(0)})
        np.testing.assert_array_equal(x1, x2)


@pytest.mark.parametrize(
    ("rate", "broadcast_dims", "shape"), [(0.5, (), (8, 33)), (0.1, (), (3, 5, 7)), (0.75, (1,), (4, 6, 5))]
)
def test_mask_is_jdrops_for_make_rngs_key_bit_for_bit(rate, broadcast_dims, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    key = jax.random.key(5)

    # With rng= the key is used as given; through make_rng it is the key that
    # make_rng("dropout") gives the module's scope, drawn here the same way.
    layer = jdrop.linen.Dropout(rate, broadcast_dims=broadcast_dims)
    expected = jdrop.dropout(key, x, 1 - rate, broadcast_dims=broadcast_dims)
    bit_identical(layer.apply({}, x, deterministic=False, rng=jax.random.clone(key)), expected)
    drawn = nn.Module.apply(layer, {}, rngs={"dropout": jax.random.clone(key)}, method=lambda m: m.make_rng("dropout"))
    through_make_rng = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.clone(key)})
    bit_identical(through_make_rng, jdrop.dropout(drawn, x, 1 - rate, broadcast_dims=broadcast_dims))


def test_is_a_linen_dropout_and_checks_its_rate():
    assert isinstance(jdrop.linen.Dropout(0.5), nn.Dropout)
    for bad in (-0.5, 1.01, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            jdrop.linen.Dropout(bad)
    with pytest.raises(TypeError, match=r"rate must be a real number in \[0, 1\]"):
        jdrop.linen.Dropout("0.5")
    # Flax's own merging of deterministic: set in neither place is an error.
    with pytest.raises(ValueError, match="deterministic"):
        jdrop.linen.Dropout(0.5).apply({}, jnp.ones(3), rngs={"dropout": jax.random.key(0)})


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_and_gradients_follow_the_mask(dtype):
    x = jax.random.normal(jax.random.key(0), (16, 12)).astype(dtype)
    layer = jdrop.linen.Dropout(0.4, deterministic=False)
    # One key throughout: every call below must draw the same mask.
    key = jax.random.key(4)
    y = layer.apply({}, x, rng=key)
    chex.assert_type(y, dtype)
    bit_identical(y, jdrop.dropout(jax.random.clone(key), x, 0.6))
    grad_key = jax.random.clone(key)
    grads = jax.grad(lambda x: jnp.sum(layer.apply({}, x, rng=grad_key).astype(jnp.float32)))(x)
    mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.6)
    scale = jnp.asarray(1 / float(jdrop.effective_keep_prob(0.6)), dtype)
    bit_identical(grads, jnp.where(mask, scale, jnp.zeros((), dtype)))


def test_jit_and_lifted_vmap_with_split_rngs():
    class PerExample(nn.Module):
        @nn.compact
        def __call__(self, x):
            vmapped = nn.vmap(
                jdrop.linen.Dropout,
                in_axes=0,
                variable_axes={},
                split_rngs={"dropout": True},
                methods=["__call__"],
            )
            return vmapped(rate=0.5, deterministic=False)(x)

    x = jnp.ones((6, 40))
    out = jax.jit(lambda x, k: PerExample().apply({}, x, rngs={"dropout": k}))(x, jax.random.key(0))
    chex.assert_shape(out, (6, 40))
    rows = {tuple(np.asarray(row != 0)) for row in out}
    assert len(rows) == 6  # every example got its own mask
    assert set(np.unique(out).tolist()) == {0.0, 2.0}


class TappedMLP(nn.Module):
    """An MLP whose dropout layer's input and output are returned, with zero taps added to take their gradients."""

    def setup(self):
        self.hidden = nn.Dense(TRAINING_WIDTH)
        self.dropout = jdrop.linen.Dropout(TRAINING_RATE)
        self.out = nn.Dense(4)

    def __call__(self, x, taps, train):
        h = nn.relu(self.hidden(x)) + taps["in"]
        y = self.dropout(h, deterministic=not train) + taps["out"]
        return self.out(y), (h, y)


@pytest.mark.standard_promotion  # optax.adam
def test_inside_a_model_trained_with_a_train_state_the_layer_applies_jdrops_mask_for_make_rngs_keys():
    (x, labels), _ = noisy_blobs()
    model = TappedMLP()
    taps = zero_taps(x.shape[0])
    variables = model.init(jax.random.key(0), x, taps, train=False)
    state = train_state.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=optax.adam(1e-3))

    # Flax's training step (a dropout key folded with the step), with the taps' gradients returned as well.
    @jax.jit
    def train_step(state, x, labels, taps, dropout_key):
        step_key = jax.random.fold_in(dropout_key, state.step)

        def loss_fn(params, taps):
            logits, seen = state.apply_fn({"params": params}, x, taps, train=True, rngs={"dropout": step_key})
            return cross_entropy(logits, labels), seen

        (_, seen), (grads, tap_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(state.params, taps)
        return state.apply_gradients(grads=grads), seen, tap_grads

    def key_handed_to_the_layer(step):
        """make_rng("dropout") in the layer's scope, for the step's key: what Flax hands it."""
        step_key = jax.random.fold_in(jax.random.key(1), step)
        return model.apply(variables, rngs={"dropout": step_key}, method=lambda m: m.dropout.make_rng("dropout"))

    steps = []
    for step in range(TRAINING_STEPS):
        state, (h, y), tap_grads = train_step(state, x, labels, taps, jax.random.key(1))
        steps.append((key_handed_to_the_layer(step), h, y, tap_grads["in"], tap_grads["out"]))
    assert_dropout_seen_in_training(steps)
    h, y = model.apply({"params": state.params}, x, taps, train=False)[1]  # and evaluation is the identity
    bit_identical(y, h)


# The dropout-family drop-ins: GaussianDropout, AlphaDropout and DropPath.


def make_rng_key(layer, key):
    """The key that ``make_rng(layer.rng_collection)`` gives ``layer``'s scope for ``rngs={collection: key}``."""
    return nn.Module.apply(layer, {}, rngs={layer.rng_collection: key}, method=lambda m: m.make_rng(m.rng_collection))


@pytest.mark.parametrize(("name", "kwargs"), variant_cases())
def test_variant_is_the_core_function_for_make_rngs_key_bit_for_bit(name, kwargs):
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    key = jax.random.key(5)
    layer = getattr(jdrop.linen, name)(0.3, deterministic=False, **kwargs)
    bit_identical(layer.apply({}, x, rng=key), core(name, jax.random.clone(key), x, 0.3, **kwargs))
    through_make_rng = layer.apply({}, x, rngs={"dropout": jax.random.clone(key)})
    drawn = make_rng_key(layer, jax.random.clone(key))
    bit_identical(through_make_rng, core(name, drawn, x, 0.3, **kwargs))


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_is_a_linen_dropout_and_deterministic_and_rate_zero_return_the_input(name):
    cls = getattr(jdrop.linen, name)
    assert isinstance(cls(0.5), nn.Dropout) and isinstance(cls(0.5), jdrop.linen.Dropout)
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    # No rngs given: these must not call make_rng (which would raise without a "dropout" collection).
    bit_identical(cls(0.5).apply({}, x, deterministic=True), x)
    bit_identical(cls(0.5, deterministic=True).apply({}, x), x)
    bit_identical(cls(0.0, deterministic=False).apply({}, x), x)
    with pytest.raises(flax.errors.InvalidRngError):  # an active layer does need the collection
        cls(0.5, deterministic=False).apply({}, x)


def test_drop_path_rate_one_gives_zeros_and_row_mode_is_constant_along_non_batch_axes():
    x = jnp.ones(VARIANT_SHAPE)
    one = jdrop.linen.DropPath(1.0, deterministic=False)
    bit_identical(one.apply({}, x), jnp.zeros_like(x))  # no rngs needed: no key is drawn
    layer = jdrop.linen.DropPath(0.5, deterministic=False)
    rows = set()
    for key in jax.random.split(jax.random.key(0), 4):
        y = layer.apply({}, x, rngs={"dropout": key})
        assert_constant_along_non_batch_axes(y)
        rows |= set(np.asarray(y)[:, 0, 0].tolist())
    assert rows == {0.0, 2.0}  # rows are dropped whole or kept whole, scaled by 1 / 0.5
    batch = jdrop.linen.DropPath(0.5, deterministic=False, mode="batch").apply({}, x, rng=jax.random.key(1))
    assert len(np.unique(batch)) == 1


def test_variant_errors_name_the_argument_and_the_range():
    for name in NOISE_VARIANT_NAMES:
        for bad in (1.0, 1.5, -0.1, float("nan")):
            with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
                getattr(jdrop.linen, name)(bad)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            jdrop.linen.DropPath(bad)
    for mode in ("rows", None):
        with pytest.raises(ValueError, match=r"mode must be one of \('row', 'batch'\)"):
            jdrop.linen.DropPath(0.1, mode=mode)
    with pytest.raises(TypeError, match="DropPath takes no broadcast_dims"):
        jdrop.linen.DropPath(0.1, broadcast_dims=(1,))


@pytest.mark.parametrize(("name", "kwargs"), variant_cases(broadcast_dims=False))
def test_variant_under_jit_and_its_gradients_reach_the_inputs(name, kwargs):
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = getattr(jdrop.linen, name)(0.25, deterministic=False, **kwargs)
    key = jax.random.key(4)
    out = jax.jit(lambda x, k: layer.apply({}, x, rngs={"dropout": k}))(x, key)
    drawn = make_rng_key(layer, jax.random.clone(key))
    bit_identical(out, jax.jit(lambda k, x: core(name, k, x, 0.25, **kwargs))(drawn, x))

    def loss(apply):
        return jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(apply(k, x)))))

    # Key 1 keeps the branch for mode="batch" (key 6 would drop it, and all gradients would be 0).
    grads = loss(lambda k, x: layer.apply({}, x, rng=k))(x, jax.random.key(1))
    expected = loss(lambda k, x: core(name, k, x, 0.25, **kwargs))(x, jax.random.key(1))
    bit_identical(grads, expected)
    assert np.any(np.asarray(expected) != 0)


# ConcreteDropout: the keep probability is a parameter, "keep_logit".


def test_concrete_dropout_is_the_core_function_for_make_rngs_key_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (4, 6, 5))
    layer = jdrop.linen.ConcreteDropout(0.2, temperature=0.2, broadcast_dims=(1,))
    params = layer.init(jax.random.key(1), x, deterministic=True)
    keep_logit = params["params"]["keep_logit"]
    chex.assert_shape(keep_logit, ())
    np.testing.assert_allclose(jax.nn.sigmoid(keep_logit), 0.8, rtol=1e-6)
    key = jax.random.key(5)
    expected = jdrop.concrete_dropout(key, x, keep_logit, temperature=0.2, broadcast_dims=(1,))
    bit_identical(layer.apply(params, x, deterministic=False, rng=jax.random.clone(key)), expected)
    through_make_rng = layer.apply(params, x, deterministic=False, rngs={"dropout": jax.random.clone(key)})
    drawn = make_rng_key(layer, jax.random.clone(key))
    expected = jdrop.concrete_dropout(drawn, x, keep_logit, temperature=0.2, broadcast_dims=(1,))
    bit_identical(through_make_rng, expected)


def test_concrete_dropout_deterministic_returns_the_input_without_a_key():
    x = jax.random.normal(jax.random.key(0), (3, 5))
    layer = jdrop.linen.ConcreteDropout()
    params = layer.init(jax.random.key(1), x, deterministic=True)
    # No rngs given: these must not call make_rng (which would raise without a "dropout" collection).
    bit_identical(layer.apply(params, x, deterministic=True), x)
    bit_identical(jdrop.linen.ConcreteDropout(deterministic=True).apply(params, x), x)
    with pytest.raises(flax.errors.InvalidRngError):  # an active layer does need the collection
        layer.apply(params, x, deterministic=False)
    with pytest.raises(ValueError, match="deterministic"):  # set in neither place
        layer.apply(params, x, rngs={"dropout": jax.random.key(2)})


def test_concrete_dropout_gradient_reaches_keep_logit_per_feature():
    x = jax.random.normal(jax.random.key(0), (8, 4))
    layer = jdrop.linen.ConcreteDropout(0.1, logit_shape=(4,))
    params = layer.init(jax.random.key(1), x, deterministic=True)
    chex.assert_shape(params["params"]["keep_logit"], (4,))
    key = jax.random.key(2)
    expected = jdrop.concrete_dropout(jax.random.clone(key), x, params["params"]["keep_logit"])
    bit_identical(layer.apply(params, x, deterministic=False, rng=jax.random.clone(key)), expected)
    apply = functools.partial(layer.apply, deterministic=False)
    grads = jax.jit(jax.grad(lambda p, k: jnp.mean((apply(p, x, rng=k) - x) ** 2)))(params, key)
    keep_logit_grad = np.asarray(grads["params"]["keep_logit"])
    assert keep_logit_grad.shape == (4,) and np.all(np.isfinite(keep_logit_grad))
    assert np.all(keep_logit_grad < 0)  # keeping more units makes the output closer to x


def train_concrete_linen(num_examples, x_scale, steps=100):
    """Adam on mean((layer(x) - x)^2) + the regulariser with a zero kernel; returns the initial and final keep_prob."""
    layer = jdrop.linen.ConcreteDropout(0.3, logit_shape=(4,))
    x = x_scale * jax.random.normal(jax.random.key(1), (16, 4))
    params = layer.init(jax.random.key(0), x, deterministic=True)
    optimizer = optax.adam(0.05)
    kernel = jnp.zeros((4, 1))

    def loss(params, key):
        reg = jdrop.concrete_dropout_regularizer(
            params["params"]["keep_logit"], kernel, num_examples=num_examples, length_scale=1.0
        )
        return jnp.mean((layer.apply(params, x, deterministic=False, rngs={"dropout": key}) - x) ** 2) + reg

    def step(state, key):
        params, opt_state = state
        updates, opt_state = optimizer.update(jax.grad(loss)(params, key), opt_state)
        return (optax.apply_updates(params, updates), opt_state), None

    keys = jax.random.split(jax.random.key(2), steps)
    final, _ = jax.jit(lambda s, keys: jax.lax.scan(step, s, keys))((params, optimizer.init(params)), keys)
    keep_prob = lambda params: np.asarray(jax.nn.sigmoid(params["params"]["keep_logit"]))  # noqa: E731
    return keep_prob(params), keep_prob(final[0])


@pytest.mark.standard_promotion  # optax.adam
def test_concrete_dropout_learns_its_keep_probability_with_adam():
    # The noise term dominates: keep more.
    before, after = train_concrete_linen(num_examples=100_000, x_scale=1.0)
    assert np.all(after > before + 0.1), (before, after)
    # The entropy term dominates (small noise, one example): towards 1/2, from 0.7.
    before, after = train_concrete_linen(num_examples=1, x_scale=0.1)
    assert np.all(np.abs(after - 0.5) < 0.05), (before, after)


def test_concrete_dropout_errors_name_the_argument_and_the_range():
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be a real number in \(0, 1\)"):
            jdrop.linen.ConcreteDropout(bad)
    with pytest.raises(TypeError, match=r"rate must be a real number in \(0, 1\)"):
        jdrop.linen.ConcreteDropout("0.1")
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="temperature must be positive and finite"):
            jdrop.linen.ConcreteDropout(temperature=bad)
    with pytest.raises(ValueError, match="shape must have non-negative sizes"):
        jdrop.linen.ConcreteDropout(logit_shape=(-1,))
    with pytest.raises(ValueError, match="keep_logit must broadcast to the shape of inputs"):
        jdrop.linen.ConcreteDropout(logit_shape=(3,)).init(jax.random.key(0), jnp.ones((2, 4)), deterministic=True)
