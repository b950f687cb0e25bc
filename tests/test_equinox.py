"""Tests for jdrop.equinox: the drop-in for equinox.nn.Dropout."""

import warnings

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
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

import jdrop
import jdrop.equinox


@pytest.fixture
def getkey():
    """Equinox's test fixture: a fresh key on every call."""
    keys = iter(jax.random.split(jax.random.key(42), 64))
    return lambda: next(keys)


# Equinox's own tests of nn.Dropout (patrick-kidger/equinox, tests/test_nn.py),
# re-expressed with jdrop.equinox.Dropout.


def test_equinox_dropout_basic(getkey):
    # Source: test_dropout_basic.
    dropout = jdrop.equinox.Dropout()
    x = jax.random.normal(getkey(), (3, 4, 5))
    y = dropout(x, key=getkey())
    assert jnp.all((y == 0) | (y == x / 0.5))


def test_equinox_dropout_inference(getkey):
    # Source: test_dropout_inference.
    dropout = jdrop.equinox.Dropout()
    x = jax.random.normal(getkey(), (3, 4, 5))
    z1 = dropout(x, key=getkey(), inference=True)
    z2 = dropout(x, inference=True)
    assert jnp.all(x == z1)
    assert jnp.all(x == z2)
    dropout2 = jdrop.equinox.Dropout(inference=True)
    assert jnp.all(x == dropout2(x))
    dropout3 = eqx.tree_at(lambda d: d.inference, dropout2, replace=False)
    assert jnp.any(x != dropout3(x, key=jax.random.PRNGKey(0)))


def test_equinox_dropout_deterministic(getkey):
    # Source: test_dropout_deterministic (the deprecated spelling still works).
    with warnings.catch_warnings():
        dropout = jdrop.equinox.Dropout()
        x = jax.random.normal(getkey(), (3, 4, 5))
        warnings.simplefilter("ignore")
        z1 = dropout(x, key=getkey(), deterministic=True)
        z2 = dropout(x, deterministic=True)
        assert jnp.all(x == z1)
        assert jnp.all(x == z2)
        dropout2 = jdrop.equinox.Dropout(deterministic=True)
        assert jnp.all(x == dropout2(x))
        dropout3 = eqx.tree_at(lambda d: d.deterministic, dropout2, replace=False)
        assert jnp.any(x != dropout3(x, key=jax.random.PRNGKey(0)))


# jdrop's contract for the drop-in.


@pytest.mark.parametrize(("p", "shape"), [(0.5, (8, 33)), (0.1, (3, 5, 7)), (0.9, (100,))])
def test_mask_is_jdrops_for_the_key_bit_for_bit(p, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    key = jax.random.key(5)
    bit_identical(jdrop.equinox.Dropout(p)(x, key=key), jdrop.dropout(jax.random.clone(key), x, 1 - p))
    raw_key = jax.random.PRNGKey(5)  # legacy raw keys, as Equinox's own tests use
    bit_identical(jdrop.equinox.Dropout(p)(x, key=raw_key), jdrop.dropout(raw_key, x, 1 - p))


def test_is_an_equinox_dropout_toggled_by_inference_mode():
    model = eqx.nn.Sequential([eqx.nn.Linear(4, 8, key=jax.random.key(0)), jdrop.equinox.Dropout(0.5)])
    assert isinstance(model.layers[1], eqx.nn.Dropout)
    x = jnp.ones(4)
    plain = model.layers[0](x)
    evaluation = eqx.nn.inference_mode(model)
    assert evaluation.layers[1].inference
    bit_identical(evaluation(x), plain)
    training = eqx.nn.inference_mode(evaluation, value=False)
    key = jax.random.key(1)
    out = training(x, key=key)
    dropout_key = jax.random.split(jax.random.clone(key), 2)[1]  # Sequential splits its key over its layers
    bit_identical(out, jdrop.dropout(dropout_key, plain, 0.5))


def test_p_zero_is_the_identity_and_p_one_gives_zeros_with_zero_gradients():
    x = jax.random.normal(jax.random.key(0), (20, 20))
    assert jdrop.equinox.Dropout(0.0)(x) is x  # no key needed, as in Equinox
    one = jdrop.equinox.Dropout(1.0)
    key = jax.random.key(1)  # never consumed: p = 1 draws no mask
    bit_identical(one(x, key=key), jnp.zeros_like(x))
    bit_identical(jax.grad(lambda x: jnp.sum(one(x, key=key)))(x), jnp.zeros_like(x))


def test_p_as_an_array_field_is_traced_under_filter_jit_and_gets_no_gradient():
    layer = jdrop.equinox.Dropout(jnp.asarray(0.25))
    x = jax.random.normal(jax.random.key(0), (64, 64))
    key = jax.random.key(2)
    out = eqx.filter_jit(lambda layer, x, key: layer(x, key=key))(layer, x, key)
    bit_identical(out, jdrop.dropout(jax.random.clone(key), x, 0.75))
    grads = eqx.filter_grad(lambda layer, key: jnp.sum(layer(x, key=key)))(layer, jax.random.clone(key))
    assert float(grads.p) == 0.0
    zero = eqx.filter_jit(lambda layer, x, key: layer(x, key=key))(
        jdrop.equinox.Dropout(jnp.asarray(1.0)), x, jax.random.clone(key)
    )
    bit_identical(zero, jnp.zeros_like(x))  # a traced p of 1 drops everything, as a concrete one does


def test_errors_name_the_argument():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
            jdrop.equinox.Dropout(bad)
    with pytest.raises(TypeError, match=r"p must be a real number in \[0, 1\]"):
        jdrop.equinox.Dropout(None)
    with pytest.raises(ValueError, match="p must be a scalar"):
        jdrop.equinox.Dropout(jnp.array([0.1, 0.2]))
    # Equinox raises RuntimeError for a missing key; so does the drop-in.
    with pytest.raises(RuntimeError, match=r"needs a key when dropout is active.*inference_mode"):
        jdrop.equinox.Dropout(0.5)(jnp.ones(3))
    # Integer x is promoted, as Equinox's x / q promotes it; complex x is dropped as Equinox drops it
    # (tests/test_host_dtypes.py), so no input dtype is refused.


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_gradients_and_forward_mode_follow_the_mask(dtype):
    x = jax.random.normal(jax.random.key(0), (16, 12)).astype(dtype)
    layer = jdrop.equinox.Dropout(0.4)
    # One key throughout: every call below must draw the same mask.
    key = jax.random.key(4)
    y = layer(x, key=key)
    chex.assert_type(y, dtype)
    bit_identical(y, jdrop.dropout(jax.random.clone(key), x, 0.6))
    mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.6)
    scale = jnp.asarray(1 / float(jdrop.effective_keep_prob(0.6)), dtype)
    grad_key, jvp_key = jax.random.clone(key), jax.random.clone(key)
    grads = jax.grad(lambda x: jnp.sum(layer(x, key=grad_key).astype(jnp.float32)))(x)
    bit_identical(grads, jnp.where(mask, scale, jnp.zeros((), dtype)))
    _, tangent = jax.jvp(lambda x: layer(x, key=jvp_key), (x,), (jnp.ones_like(x),))
    bit_identical(tangent, grads)


def test_filter_vmap_over_per_example_keys_under_filter_jit():
    layer = jdrop.equinox.Dropout(0.5)
    x = jax.random.normal(jax.random.key(0), (6, 10))
    keys = jax.random.split(jax.random.key(3), 6)

    @eqx.filter_jit
    def per_example(layer, x, keys):
        return eqx.filter_vmap(lambda x, key: layer(x, key=key))(x, keys)

    out = per_example(layer, x, keys)
    for row, key in enumerate(jax.random.clone(keys)):
        bit_identical(out[row], jdrop.dropout(key, x[row], 0.5))


class TappedMLP(eqx.Module):
    """An MLP for one example whose dropout layer's input and output are returned, with zero taps added."""

    hidden: eqx.nn.Linear
    dropout: jdrop.equinox.Dropout
    out: eqx.nn.Linear

    def __init__(self, key):
        hidden_key, out_key = jax.random.split(key)
        self.hidden = eqx.nn.Linear(20, TRAINING_WIDTH, key=hidden_key)
        self.dropout = jdrop.equinox.Dropout(TRAINING_RATE)
        self.out = eqx.nn.Linear(TRAINING_WIDTH, 4, key=out_key)

    def __call__(self, x, taps, *, key=None):
        h = jax.nn.relu(self.hidden(x)) + taps["in"]
        y = self.dropout(h, key=key) + taps["out"]
        return self.out(y), (h, y)


@pytest.mark.standard_promotion  # optax.adam
def test_inside_a_model_trained_under_vmap_the_layer_applies_jdrops_mask_for_each_examples_key():
    (x, labels), _ = noisy_blobs()
    model = TappedMLP(jax.random.key(0))
    optimizer = optax.adam(1e-3)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))

    # Equinox's training step: the model vmapped over the batch, one key per example.
    @eqx.filter_jit
    def make_step(model, opt_state, x, labels, taps, key):
        def loss_fn(model_and_taps):
            model, taps = model_and_taps
            keys = jax.random.split(key, x.shape[0])
            logits, seen = jax.vmap(lambda x, taps, k: model(x, taps, key=k))(x, taps, keys)
            return cross_entropy(logits, labels), seen

        (_, seen), (grads, tap_grads) = eqx.filter_value_and_grad(loss_fn, has_aux=True)((model, taps))
        updates, opt_state = optimizer.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
        return eqx.apply_updates(model, updates), opt_state, seen, tap_grads

    steps = []
    for step_key in jax.random.split(jax.random.key(1), TRAINING_STEPS):
        example_keys = jax.random.split(jax.random.clone(step_key), x.shape[0])  # what the layer is handed
        model, opt_state, (h, y), tap_grads = make_step(model, opt_state, x, labels, zero_taps(x.shape[0]), step_key)
        steps.append((example_keys, h, y, tap_grads["in"], tap_grads["out"]))
    assert_dropout_seen_in_training(steps)
    h, y = jax.vmap(eqx.nn.inference_mode(model))(x, zero_taps(x.shape[0]))[1]  # and inference is the identity
    bit_identical(y, h)


# The dropout-family drop-ins: GaussianDropout, AlphaDropout and DropPath (no
# broadcast_dims here: Equinox's Dropout has none).


@pytest.mark.parametrize(("name", "kwargs"), variant_cases(broadcast_dims=False))
def test_variant_is_the_core_function_for_the_key_bit_for_bit(name, kwargs):
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = getattr(jdrop.equinox, name)(0.3, **kwargs)
    key = jax.random.key(5)
    bit_identical(layer(x, key=key), core(name, jax.random.clone(key), x, 0.3, **kwargs))
    raw_key = jax.random.PRNGKey(5)  # legacy raw keys, as Equinox's own tests use
    bit_identical(layer(x, key=raw_key), core(name, raw_key, x, 0.3, **kwargs))


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_is_an_equinox_dropout_and_inference_and_p_zero_return_the_input(name):
    cls = getattr(jdrop.equinox, name)
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = cls(0.5)
    assert isinstance(layer, eqx.nn.Dropout) and isinstance(layer, jdrop.equinox.Dropout)
    # No key given: these need none, as in Equinox.
    assert layer(x, inference=True) is x
    assert cls(0.5, inference=True)(x) is x
    assert eqx.nn.inference_mode(layer)(x) is x
    assert cls(0.0)(x) is x
    with pytest.raises(RuntimeError, match="needs a key"):
        layer(x)


def test_variants_switch_with_inference_mode():
    model = eqx.nn.Sequential(
        [jdrop.equinox.GaussianDropout(0.2), jdrop.equinox.AlphaDropout(0.2), jdrop.equinox.DropPath(0.2)]
    )
    x = jnp.ones(VARIANT_SHAPE)
    evaluation = eqx.nn.inference_mode(model)
    assert all(layer.inference for layer in evaluation.layers)
    bit_identical(evaluation(x), x)
    training = eqx.nn.inference_mode(evaluation, value=False)
    assert not np.array_equal(training(x, key=jax.random.key(0)), x)


def test_drop_path_p_one_gives_zeros_and_row_mode_is_constant_along_non_batch_axes():
    x = jnp.ones(VARIANT_SHAPE)
    bit_identical(jdrop.equinox.DropPath(1.0)(x), jnp.zeros_like(x))  # no key needed
    layer = jdrop.equinox.DropPath(0.5, mode="row")
    rows = set()
    for key in jax.random.split(jax.random.key(0), 4):
        y = layer(x, key=key)
        assert_constant_along_non_batch_axes(y)
        rows |= set(np.asarray(y)[:, 0, 0].tolist())
    assert rows == {0.0, 2.0}  # rows are dropped whole or kept whole, scaled by 1 / 0.5
    batch = jdrop.equinox.DropPath(0.5, mode="batch")(x, key=jax.random.key(1))
    assert len(np.unique(batch)) == 1
    # mode is a static field: it is no leaf, so filter_jit specialises on it.
    assert jax.tree_util.tree_leaves(jdrop.equinox.DropPath(0.5, mode="batch")) == [0.5, False]


def test_drop_path_default_drops_each_examples_whole_branch_under_vmap_with_per_example_keys():
    # The Equinox idiom: the layer sees one example's residual branch (6 tokens of 5 features), and is
    # vmapped over the batch with one key per example; x + drop_path(branch) is the residual sum.
    layer = jdrop.equinox.DropPath(0.5)
    branch = jax.random.normal(jax.random.key(1), (16, 6, 5))
    keys = jax.random.split(jax.random.key(2), 16)
    out = np.asarray(jax.vmap(lambda branch, key: layer(branch, key=key))(branch, keys))
    kept = [bool(np.all(o == 2 * b)) for o, b in zip(out, np.asarray(branch), strict=True)]
    dropped = [bool(np.all(o == 0)) for o in out]
    assert all(k != d for k, d in zip(kept, dropped, strict=True))  # each example: its whole branch, or none of it
    assert any(kept) and any(dropped)
    for example, key in enumerate(jax.random.clone(keys)):
        bit_identical(out[example], jdrop.drop_path(key, branch[example], 0.5, mode="batch"))


def test_variant_errors_name_the_argument_and_the_range():
    for name in NOISE_VARIANT_NAMES:
        for bad in (1.0, 1.5, -0.1, float("nan")):
            with pytest.raises(ValueError, match=r"p must be in \[0, 1\)"):
                getattr(jdrop.equinox, name)(bad)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"p must be in \[0, 1\]"):
            jdrop.equinox.DropPath(bad)
    for mode in ("rows", None):
        with pytest.raises(ValueError, match=r"mode must be one of \('row', 'batch'\)"):
            jdrop.equinox.DropPath(0.1, mode=mode)


@pytest.mark.parametrize(("name", "kwargs"), variant_cases(broadcast_dims=False))
def test_variant_under_filter_jit_and_its_gradients_reach_the_inputs(name, kwargs):
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = getattr(jdrop.equinox, name)(0.25, **kwargs)
    key = jax.random.key(4)
    out = eqx.filter_jit(lambda layer, x, key: layer(x, key=key))(layer, x, key)
    bit_identical(out, jax.jit(lambda k, x: core(name, k, x, 0.25, **kwargs))(jax.random.clone(key), x))

    @eqx.filter_jit
    def grads(layer, x, key):
        return jax.grad(lambda x: jnp.sum(jnp.sin(layer(x, key=key))))(x)

    expected = jax.jit(jax.grad(lambda x, k: jnp.sum(jnp.sin(core(name, k, x, 0.25, **kwargs)))))
    bit_identical(grads(layer, x, jax.random.clone(key)), expected(x, jax.random.clone(key)))
    assert np.any(np.asarray(expected(x, jax.random.clone(key))) != 0)


# ConcreteDropout: the keep probability is an array field, keep_logit.


def test_concrete_dropout_is_the_core_function_for_the_key_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (4, 6, 5))
    layer = jdrop.equinox.ConcreteDropout(0.2, temperature=0.2, broadcast_dims=(1,))
    np.testing.assert_allclose(layer.keep_prob, 0.8, rtol=1e-6)
    key = jax.random.key(5)
    expected = jdrop.concrete_dropout(jax.random.clone(key), x, layer.keep_logit, temperature=0.2, broadcast_dims=(1,))
    bit_identical(layer(x, key=key), expected)
    raw_key = jax.random.PRNGKey(5)  # legacy raw keys, as Equinox's own tests use
    expected = jdrop.concrete_dropout(raw_key, x, layer.keep_logit, temperature=0.2, broadcast_dims=(1,))
    bit_identical(layer(x, key=raw_key), expected)
    # p (the initial rate), inference and keep_logit are the leaves; temperature and broadcast_dims are static.
    assert jax.tree_util.tree_leaves(layer)[:2] == [0.2, False] and len(jax.tree_util.tree_leaves(layer)) == 3
    assert eqx.filter(layer, eqx.is_inexact_array).keep_logit is layer.keep_logit


def test_concrete_dropout_switches_with_inference_mode_without_a_key():
    x = jax.random.normal(jax.random.key(0), (3, 5))
    layer = jdrop.equinox.ConcreteDropout(0.3)
    assert layer(x, inference=True) is x
    assert jdrop.equinox.ConcreteDropout(inference=True)(x) is x
    model = eqx.nn.Sequential([jdrop.equinox.Dropout(0.2), layer])
    evaluation = eqx.nn.inference_mode(model)
    assert all(layer.inference for layer in evaluation.layers)
    bit_identical(evaluation(x), x)
    training = eqx.nn.inference_mode(evaluation, value=False)
    assert not training.layers[1].inference
    with pytest.raises(RuntimeError, match="ConcreteDropout needs a key when active"):
        training.layers[1](x)


def test_concrete_dropout_gradient_reaches_keep_logit_per_feature():
    x = jax.random.normal(jax.random.key(0), (8, 4))
    layer = jdrop.equinox.ConcreteDropout(0.1, logit_shape=(4,))
    chex.assert_shape(layer.keep_logit, (4,))
    key = jax.random.key(2)
    expected = jdrop.concrete_dropout(jax.random.clone(key), x, layer.keep_logit)
    bit_identical(layer(x, key=jax.random.clone(key)), expected)
    grads = eqx.filter_jit(eqx.filter_grad(lambda layer, key: jnp.mean((layer(x, key=key) - x) ** 2)))(layer, key)
    keep_logit_grad = np.asarray(grads.keep_logit)
    assert keep_logit_grad.shape == (4,) and np.all(np.isfinite(keep_logit_grad))
    assert np.all(keep_logit_grad < 0)  # keeping more units makes the output closer to x
    chex.assert_shape(layer.regularizer(jnp.zeros((4, 3)), num_examples=10, length_scale=1.0), ())


def train_concrete_equinox(num_examples, x_scale, steps=100):
    """Adam on mean((layer(x) - x)^2) + the regulariser with a zero kernel; returns the initial and final keep_prob."""
    layer = jdrop.equinox.ConcreteDropout(0.3, logit_shape=(4,))
    x = x_scale * jax.random.normal(jax.random.key(1), (16, 4))
    optimizer = optax.adam(0.05)
    kernel = jnp.zeros((4, 1))

    def loss(layer, key):
        reg = layer.regularizer(kernel, num_examples=num_examples, length_scale=1.0)
        return jnp.mean((layer(x, key=key) - x) ** 2) + reg

    @eqx.filter_jit
    def train(layer, keys):
        params, static = eqx.partition(layer, eqx.is_inexact_array)

        def step(state, key):
            params, opt_state = state
            grads = eqx.filter_grad(loss)(eqx.combine(params, static), key)
            updates, opt_state = optimizer.update(grads, opt_state)
            return (eqx.apply_updates(params, updates), opt_state), None

        (params, _), _ = jax.lax.scan(step, (params, optimizer.init(params)), keys)
        return eqx.combine(params, static)

    trained = train(layer, jax.random.split(jax.random.key(2), steps))
    return np.asarray(layer.keep_prob), np.asarray(trained.keep_prob)


@pytest.mark.standard_promotion  # optax.adam
def test_concrete_dropout_learns_its_keep_probability_with_adam():
    # The noise term dominates: keep more.
    before, after = train_concrete_equinox(num_examples=100_000, x_scale=1.0)
    assert np.all(after > before + 0.1), (before, after)
    # The entropy term dominates (small noise, one example): towards 1/2, from 0.7.
    before, after = train_concrete_equinox(num_examples=1, x_scale=0.1)
    assert np.all(np.abs(after - 0.5) < 0.05), (before, after)


def test_concrete_dropout_errors_name_the_argument_and_the_range():
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"p must be a real number in \(0, 1\)"):
            jdrop.equinox.ConcreteDropout(bad)
    with pytest.raises(TypeError, match=r"p must be a real number in \(0, 1\)"):
        jdrop.equinox.ConcreteDropout(None)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="temperature must be positive and finite"):
            jdrop.equinox.ConcreteDropout(temperature=bad)
    with pytest.raises(ValueError, match="shape must have non-negative sizes"):
        jdrop.equinox.ConcreteDropout(logit_shape=(-1,))
    with pytest.raises(TypeError, match="broadcast_dims must be a sequence of int axes"):
        jdrop.equinox.ConcreteDropout(broadcast_dims=1)
    with pytest.raises(ValueError, match="keep_logit must broadcast to the shape of x"):
        jdrop.equinox.ConcreteDropout(logit_shape=(3,))(jnp.ones((2, 4)), inference=True)
    with pytest.raises(TypeError, match="x must be real where alpha dropout is applied"):
        jdrop.equinox.AlphaDropout(0.5)(jnp.ones(3, jnp.complex64), key=jax.random.key(0))
