"""Tests for jdrop.nnx: the drop-in for flax.nnx.Dropout."""

import subprocess
import sys

import chex
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
from flax import nnx

import jdrop
import jdrop.nnx


def twin_stream(seed, collection="dropout"):
    """A stream that yields the keys a Dropout built with ``rngs=nnx.Rngs(**{collection: seed})`` draws."""
    return nnx.Rngs(**{collection: seed})[collection].fork()


# Flax's own tests of nnx.Dropout (google/flax, tests/nnx/nn/stochastic_test.py,
# class TestStochastic), re-expressed with jdrop.nnx.Dropout.


def test_flax_dropout_internal_rngs():
    # Source: TestStochastic.test_dropout_internal_rngs.
    n = 0
    m1 = jdrop.nnx.Dropout(rate=0.5, deterministic=False, rngs=nnx.Rngs(dropout=0))
    m2 = jdrop.nnx.Dropout(rate=0.5, deterministic=False)
    rngs2 = nnx.Rngs(dropout=0).fork()

    @nnx.jit
    def f(m, x, rngs=None):
        nonlocal n
        n += 1
        return m(x, rngs=rngs)

    x = jnp.ones((1, 10))
    assert m1.rngs is not None and m1.rngs.count[...] == 0
    y1 = f(m1, x)
    assert n == 1
    assert m1.rngs.count[...] == 1
    y2 = f(m2, x, rngs=rngs2)
    assert n == 2
    assert rngs2.dropout.count[...] == 1
    np.testing.assert_allclose(y1, y2)
    y1 = f(m1, x)
    assert m1.rngs.count[...] == 2
    y2 = f(m2, x, rngs=rngs2)
    assert rngs2.dropout.count[...] == 2
    np.testing.assert_allclose(y1, y2)
    assert n == 2


def test_flax_dropout_rng_override():
    # Source: TestStochastic.test_dropout_rng_override.
    m1 = jdrop.nnx.Dropout(rate=0.5, deterministic=False, rngs=nnx.Rngs(dropout=0))
    m2 = jdrop.nnx.Dropout(rate=0.5, deterministic=False, rngs=nnx.Rngs(dropout=1))
    x = jnp.ones((1, 10))
    y1 = m1(x)
    y2 = m2(x)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(y1, y2)
    y2 = m2(x, rngs=nnx.Rngs(dropout=0).fork())
    np.testing.assert_allclose(y1, y2)


def test_flax_dropout_arg_override():
    # Source: TestStochastic.test_dropout_arg_override.
    m = jdrop.nnx.Dropout(rate=0.5, deterministic=False)
    x = jnp.ones((1, 10))
    m(x, deterministic=True)
    m.set_attributes(deterministic=True)
    y = m(x)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(y, m(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
    m.set_attributes(deterministic=False)
    with pytest.raises(ValueError, match="`deterministic` is False, but no `rngs` argument was provided to Dropout"):
        m(x)


def test_flax_dropout_arg_override_view():
    # Source: TestStochastic.test_dropout_arg_override_view.
    m = jdrop.nnx.Dropout(rate=0.5, deterministic=False)
    x = jnp.ones((1, 10))
    m(x, deterministic=True)
    new_m = nnx.view(m, deterministic=True)
    y = new_m(x)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(y, new_m(x, deterministic=False, rngs=nnx.Rngs(dropout=0)))
    new_m = nnx.view(m, deterministic=False)
    with pytest.raises(ValueError, match="`deterministic` is False, but no `rngs` argument was provided to Dropout"):
        new_m(x)


# jdrop's contract for the drop-in.


@pytest.mark.parametrize(
    ("rate", "broadcast_dims", "shape"),
    [(0.5, (), (8, 33)), (0.1, (), (3, 5, 7)), (0.9, (1,), (4, 6, 5)), (0.25, (0, 2), (4, 6, 5))],
)
def test_mask_is_jdrops_for_the_streams_key_bit_for_bit(rate, broadcast_dims, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    layer = jdrop.nnx.Dropout(rate, broadcast_dims=broadcast_dims, rngs=nnx.Rngs(dropout=7))
    twin = twin_stream(7)
    for _ in range(3):  # every call draws the stream's next key
        expected = jdrop.dropout(twin(), x, 1 - rate, broadcast_dims=broadcast_dims)
        bit_identical(layer(x), expected)
    key = jax.random.key(3)
    expected = jdrop.dropout(jax.random.clone(key), x, 1 - rate, broadcast_dims=broadcast_dims)
    bit_identical(layer(x, rngs=key), expected)


def test_custom_rng_collection_and_an_rngs_object_at_call_time():
    x = jnp.ones((6, 10))
    layer = jdrop.nnx.Dropout(0.3, rng_collection="noise", rngs=nnx.Rngs(noise=5))
    bit_identical(layer(x), jdrop.dropout(twin_stream(5, "noise")(), x, 0.7))
    call_rngs, twin = nnx.Rngs(noise=9), nnx.Rngs(noise=9)
    bit_identical(layer(x, rngs=call_rngs), jdrop.dropout(twin["noise"](), x, 0.7))


def test_is_an_nnx_dropout_switched_by_train_eval_and_view():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.linear = nnx.Linear(4, 8, rngs=rngs)
            self.dropout = jdrop.nnx.Dropout(0.5, rngs=rngs)

        def __call__(self, x):
            return self.dropout(self.linear(x))

    block = Block(nnx.Rngs(0, dropout=1))
    assert isinstance(block.dropout, nnx.Dropout)
    x = jnp.ones((3, 4))
    plain = block.linear(x)
    block.eval()
    bit_identical(block(x), plain)
    block.train()
    assert not np.array_equal(block(x), plain)
    bit_identical(nnx.view(block, only=nnx.Dropout, deterministic=True)(x), plain)


def test_rate_zero_is_the_identity_and_rate_one_gives_zeros_with_zero_gradients():
    x = jax.random.normal(jax.random.key(0), (20, 20))
    zero = jdrop.nnx.Dropout(0.0, rngs=nnx.Rngs(dropout=0))
    assert zero(x) is x
    assert zero.rngs.count[...] == 0  # no key drawn, as in Flax
    one = jdrop.nnx.Dropout(1.0, rngs=nnx.Rngs(dropout=0))
    bit_identical(one(x), jnp.zeros_like(x))
    grads = jax.grad(lambda x: jnp.sum(one(x, rngs=jax.random.key(1))))(x)
    bit_identical(grads, jnp.zeros_like(x))


def test_errors_name_the_argument():
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            jdrop.nnx.Dropout(bad)
    with pytest.raises(TypeError, match=r"rate must be a real number in \[0, 1\]"):
        jdrop.nnx.Dropout(True)
    layer = jdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    layer.rate = 2.0  # changed after construction: checked again at call time
    with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
        layer(jnp.ones(3))
    with pytest.raises(ValueError, match="No `deterministic` argument"):
        jdrop.nnx.Dropout(0.5, deterministic=None)(jnp.ones(3))
    with pytest.raises(TypeError, match=r"rngs must be an nnx\.Rngs"):
        jdrop.nnx.Dropout(0.5)(jnp.ones(3), rngs=3)
    with pytest.raises(TypeError, match="inputs must have a floating or complex dtype"):
        jdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))(jnp.ones(3, jnp.int32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_dtypes_gradients_and_forward_mode_follow_the_mask(dtype):
    x = jax.random.normal(jax.random.key(0), (16, 12)).astype(dtype)
    layer = jdrop.nnx.Dropout(0.4)
    # One key throughout: every call below must draw the same mask.
    key = jax.random.key(4)
    y = layer(x, rngs=key)
    chex.assert_type(y, dtype)
    bit_identical(y, jdrop.dropout(jax.random.clone(key), x, 0.6))
    scale = 1 / float(jdrop.effective_keep_prob(0.6))
    mask = jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.6)
    grad_key, jvp_key = jax.random.clone(key), jax.random.clone(key)
    grads = jax.grad(lambda x: jnp.sum(layer(x, rngs=grad_key).astype(jnp.float32)))(x)
    bit_identical(grads, jnp.where(mask, jnp.asarray(scale, dtype), jnp.zeros((), dtype)))
    _, tangent = jax.jvp(lambda x: layer(x, rngs=jvp_key), (x,), (jnp.ones_like(x),))
    bit_identical(tangent, grads)


def test_nnx_jit_vmap_over_per_example_keys_and_scan():
    layer = jdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=2))
    x_key, xs_key = jax.random.split(jax.random.key(0))
    x = jax.random.normal(x_key, (5, 9))
    keys = jax.random.split(jax.random.key(1), 5)
    per_example = nnx.vmap(lambda m, x, k: m(x, rngs=k), in_axes=(None, 0, 0))(layer, x, keys)
    for row, key in enumerate(jax.random.clone(keys)):
        bit_identical(per_example[row], jdrop.dropout(key, x[row], 0.5))

    # nnx.scan carries the module, so each step draws the stream's next key.
    @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=(nnx.Carry, 0))
    def over_time(m, x_t):
        return m, m(x_t)

    xs = jax.random.normal(xs_key, (4, 3, 9))
    _, ys = over_time(layer, xs)
    twin = twin_stream(2)
    for t in range(4):
        bit_identical(ys[t], jdrop.dropout(twin(), xs[t], 0.5))
    assert layer.rngs.count[...] == 4

    traces = 0

    @nnx.jit
    def jitted(m, x):
        nonlocal traces
        traces += 1
        return m(x)

    first, second = jitted(layer, x), jitted(layer, x)
    assert traces == 1 and not np.array_equal(first, second)  # the stream advances, no retrace
    bit_identical(first, jdrop.dropout(twin(), x, 0.5))
    bit_identical(second, jdrop.dropout(twin(), x, 0.5))


class TappedMLP(nnx.Module):
    """An MLP whose dropout layer's input and output are returned, with zero taps added to take their gradients."""

    def __init__(self, rngs):
        self.hidden = nnx.Linear(20, TRAINING_WIDTH, rngs=rngs)
        self.dropout = jdrop.nnx.Dropout(TRAINING_RATE, rngs=rngs)
        self.out = nnx.Linear(TRAINING_WIDTH, 4, rngs=rngs)

    def __call__(self, x, taps):
        h = nnx.relu(self.hidden(x)) + taps["in"]
        y = self.dropout(h) + taps["out"]
        return self.out(y), (h, y)


@pytest.mark.standard_promotion  # optax.adam
def test_inside_a_model_trained_with_nnx_optimizer_the_layer_applies_jdrops_mask_for_the_streams_keys():
    (x, labels), _ = noisy_blobs()
    model = TappedMLP(nnx.Rngs(params=0, dropout=1))
    optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

    # Flax's training step, with the taps' gradients returned as well.
    @nnx.jit
    def train_step(model, optimizer, x, labels, taps):
        def loss_fn(model, taps):
            logits, seen = model(x, taps)
            return cross_entropy(logits, labels), seen

        (_, seen), (grads, tap_grads) = nnx.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(model, taps)
        optimizer.update(model, grads)
        return seen, tap_grads

    twin = twin_stream(1)  # the keys the layer's stream hands it, one per step
    steps = []
    for _ in range(TRAINING_STEPS):
        (h, y), tap_grads = train_step(model, optimizer, x, labels, zero_taps(x.shape[0]))
        steps.append((twin(), h, y, tap_grads["in"], tap_grads["out"]))
    assert model.dropout.rngs.count[...] == TRAINING_STEPS
    assert_dropout_seen_in_training(steps)
    model.eval()  # and evaluation is the identity
    (h, y) = model(x, zero_taps(x.shape[0]))[1]
    bit_identical(y, h)


def test_import_jdrop_imports_neither_flax_nor_equinox():
    code = "import sys, jdrop; print(sorted(m for m in ('flax', 'equinox') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# The dropout-family drop-ins: GaussianDropout, AlphaDropout and DropPath.


@pytest.mark.parametrize(("name", "kwargs"), variant_cases())
def test_variant_is_the_core_function_for_the_streams_keys_bit_for_bit(name, kwargs):
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = getattr(jdrop.nnx, name)(0.3, rngs=nnx.Rngs(dropout=7), **kwargs)
    twin = twin_stream(7)
    for _ in range(3):  # every call draws the stream's next key
        bit_identical(layer(x), core(name, twin(), x, 0.3, **kwargs))
    assert layer.rngs.count[...] == 3
    key = jax.random.key(3)
    bit_identical(layer(x, rngs=key), core(name, jax.random.clone(key), x, 0.3, **kwargs))


@pytest.mark.parametrize("name", VARIANT_NAMES)
def test_variant_is_an_nnx_dropout_and_eval_and_rate_zero_return_the_input_without_a_key(name):
    cls = getattr(jdrop.nnx, name)
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = cls(0.5, rngs=nnx.Rngs(dropout=0))
    assert isinstance(layer, nnx.Dropout) and isinstance(layer, jdrop.nnx.Dropout)
    layer.eval()
    assert layer(x) is x
    layer.train()
    assert layer(x, deterministic=True) is x
    assert nnx.view(layer, deterministic=True)(x) is x
    zero = cls(0.0, rngs=nnx.Rngs(dropout=0))
    assert zero(x) is x
    assert layer.rngs.count[...] == 0 and zero.rngs.count[...] == 0  # no key drawn, as in Flax


def test_variants_switch_with_the_model_like_dropout():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.gaussian = jdrop.nnx.GaussianDropout(0.2, rngs=rngs)
            self.alpha = jdrop.nnx.AlphaDropout(0.2, rngs=rngs)
            self.drop_path = jdrop.nnx.DropPath(0.2, rngs=rngs)

        def __call__(self, x):
            return x + self.drop_path(self.alpha(self.gaussian(x)))

    block = Block(nnx.Rngs(dropout=1))
    x = jnp.ones(VARIANT_SHAPE)
    block.eval()
    bit_identical(block(x), 2 * x)
    block.train()
    assert not np.array_equal(block(x), 2 * x)
    bit_identical(nnx.view(block, only=nnx.Dropout, deterministic=True)(x), 2 * x)


def test_drop_path_rate_one_gives_zeros_and_row_mode_is_constant_along_non_batch_axes():
    x = jnp.ones(VARIANT_SHAPE)
    one = jdrop.nnx.DropPath(1.0, rngs=nnx.Rngs(dropout=0))
    bit_identical(one(x), jnp.zeros_like(x))
    assert one.rngs.count[...] == 0
    layer = jdrop.nnx.DropPath(0.5, rngs=nnx.Rngs(dropout=0))
    rows = set()
    for _ in range(4):
        y = layer(x)
        assert_constant_along_non_batch_axes(y)
        rows |= set(np.asarray(y)[:, 0, 0].tolist())
    assert rows == {0.0, 2.0}  # rows are dropped whole or kept whole, scaled by 1 / 0.5
    batch = jdrop.nnx.DropPath(0.5, mode="batch", rngs=nnx.Rngs(dropout=0))(x)
    assert len(np.unique(batch)) == 1


def test_variant_errors_name_the_argument_and_the_range():
    for name in NOISE_VARIANT_NAMES:
        for bad in (1.0, 1.5, -0.1, float("nan")):
            with pytest.raises(ValueError, match=r"rate must be in \[0, 1\)"):
                getattr(jdrop.nnx, name)(bad)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"rate must be in \[0, 1\]"):
            jdrop.nnx.DropPath(bad)
    for mode in ("rows", None):
        with pytest.raises(ValueError, match=r"mode must be one of \('row', 'batch'\)"):
            jdrop.nnx.DropPath(0.1, mode=mode)


@pytest.mark.parametrize(("name", "kwargs"), variant_cases(broadcast_dims=False))
def test_variant_under_nnx_jit_and_its_gradients_reach_the_inputs(name, kwargs):
    x = jax.random.normal(jax.random.key(0), VARIANT_SHAPE)
    layer = getattr(jdrop.nnx, name)(0.25, rngs=nnx.Rngs(dropout=2), **kwargs)
    twin = twin_stream(2)
    jitted_core = jax.jit(lambda key, x: core(name, key, x, 0.25, **kwargs))
    forward = nnx.jit(lambda m, x: m(x))
    first, second = forward(layer, x), forward(layer, x)
    bit_identical(first, jitted_core(twin(), x))
    bit_identical(second, jitted_core(twin(), x))

    @nnx.jit
    def grads(m, x, key):
        return jax.grad(lambda x: jnp.sum(jnp.sin(m(x, rngs=key))))(x)

    key = jax.random.key(4)
    expected = jax.jit(jax.grad(lambda x, key: jnp.sum(jnp.sin(core(name, key, x, 0.25, **kwargs)))))
    bit_identical(grads(layer, x, key), expected(x, jax.random.clone(key)))
    assert np.any(np.asarray(expected(x, jax.random.clone(key))) != 0)


# ConcreteDropout: the keep probability is an nnx.Param.


def test_concrete_dropout_is_the_core_function_for_the_streams_keys_bit_for_bit():
    x = jax.random.normal(jax.random.key(0), (4, 6, 5))
    layer = jdrop.nnx.ConcreteDropout(0.2, temperature=0.2, broadcast_dims=(1,), rngs=nnx.Rngs(dropout=7))
    assert isinstance(layer, nnx.Dropout) and isinstance(layer.keep_logit, nnx.Param)
    np.testing.assert_allclose(layer.keep_prob, 0.8, rtol=1e-6)
    np.testing.assert_allclose(layer.rate, 0.2, rtol=1e-5)
    twin = twin_stream(7)
    keep_logit = layer.keep_logit[...]
    for _ in range(2):  # every call draws the stream's next key
        expected = jdrop.concrete_dropout(twin(), x, keep_logit, temperature=0.2, broadcast_dims=(1,))
        bit_identical(layer(x), expected)
    assert layer.rngs.count[...] == 2
    key = jax.random.key(3)
    expected = jdrop.concrete_dropout(jax.random.clone(key), x, keep_logit, temperature=0.2, broadcast_dims=(1,))
    bit_identical(layer(x, rngs=key), expected)


def test_concrete_dropout_switches_with_the_model_without_drawing_a_key():
    class Block(nnx.Module):
        def __init__(self, rngs):
            self.dropout = jdrop.nnx.ConcreteDropout(0.3, rngs=rngs)
            self.linear = nnx.Linear(5, 2, rngs=rngs)

        def __call__(self, x):
            return self.linear(self.dropout(x))

    block = Block(nnx.Rngs(0, dropout=1))
    x = jnp.ones((3, 5))
    plain = block.linear(x)
    block.eval()
    bit_identical(block(x), plain)
    assert block.dropout(x) is x
    assert block.dropout.rngs.count[...] == 0
    block.train()
    assert block.dropout(x, deterministic=True) is x
    for view in (nnx.view(block, deterministic=True), nnx.view(block, only=nnx.Dropout, deterministic=True)):
        bit_identical(view(x), plain)
    assert block.dropout.rngs.count[...] == 0
    assert not np.array_equal(block(x), plain)
    assert block.dropout.rngs.count[...] == 1
    with pytest.raises(ValueError, match="no `rngs` argument was provided to ConcreteDropout"):
        jdrop.nnx.ConcreteDropout()(x)
    with pytest.raises(ValueError, match="No `deterministic` argument was provided to ConcreteDropout"):
        jdrop.nnx.ConcreteDropout(deterministic=None)(x)


def test_concrete_dropout_gradient_reaches_keep_logit_per_feature():
    x = jax.random.normal(jax.random.key(0), (8, 4))
    layer = jdrop.nnx.ConcreteDropout(0.1, logit_shape=(4,), rngs=nnx.Rngs(dropout=2))
    chex.assert_shape(layer.keep_logit[...], (4,))
    twin = twin_stream(2)
    bit_identical(layer(x), jdrop.concrete_dropout(twin(), x, layer.keep_logit[...]))

    @nnx.jit
    def grads(layer):
        return nnx.grad(lambda m: jnp.mean((m(x) - x) ** 2))(layer)

    keep_logit_grad = np.asarray(grads(layer)["keep_logit"][...])
    assert keep_logit_grad.shape == (4,) and np.all(np.isfinite(keep_logit_grad))
    assert np.all(keep_logit_grad < 0)  # keeping more units makes the output closer to x
    assert layer.rngs.count[...] == 2  # the stream advanced under nnx.jit and nnx.grad
    chex.assert_shape(layer.regularizer(jnp.zeros((4, 3)), num_examples=10, length_scale=1.0), ())


def train_concrete_nnx(num_examples, x_scale, steps=100):
    """Adam on mean((layer(x) - x)^2) + the regulariser with a zero kernel; returns the initial and final keep_prob."""
    layer = jdrop.nnx.ConcreteDropout(0.3, logit_shape=(4,), rngs=nnx.Rngs(dropout=0))
    optimizer = nnx.Optimizer(layer, optax.adam(0.05), wrt=nnx.Param)
    x = x_scale * jax.random.normal(jax.random.key(1), (16, 4))
    kernel = jnp.zeros((4, 1))

    def loss(layer):
        reg = layer.regularizer(kernel, num_examples=num_examples, length_scale=1.0)
        return jnp.mean((layer(x) - x) ** 2) + reg

    @nnx.jit
    def step(layer, optimizer):
        optimizer.update(layer, nnx.grad(loss)(layer))

    before = np.asarray(layer.keep_prob)
    for _ in range(steps):
        step(layer, optimizer)
    return before, np.asarray(layer.keep_prob)


@pytest.mark.standard_promotion  # optax.adam
def test_concrete_dropout_learns_its_keep_probability_with_adam():
    # The noise term dominates: keep more.
    before, after = train_concrete_nnx(num_examples=100_000, x_scale=1.0)
    assert np.all(after > before + 0.1), (before, after)
    # The entropy term dominates (small noise, one example): towards 1/2, from 0.7.
    before, after = train_concrete_nnx(num_examples=1, x_scale=0.1)
    assert np.all(np.abs(after - 0.5) < 0.05), (before, after)


def test_concrete_dropout_errors_name_the_argument_and_the_range():
    for bad in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match=r"rate must be a real number in \(0, 1\)"):
            jdrop.nnx.ConcreteDropout(bad)
    for bad in (True, "0.1", None):
        with pytest.raises(TypeError, match=r"rate must be a real number in \(0, 1\)"):
            jdrop.nnx.ConcreteDropout(bad)
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="temperature must be positive and finite"):
            jdrop.nnx.ConcreteDropout(temperature=bad)
    with pytest.raises(ValueError, match="shape must have non-negative sizes"):
        jdrop.nnx.ConcreteDropout(logit_shape=(-1,))
    layer = jdrop.nnx.ConcreteDropout(logit_shape=(3,), rngs=nnx.Rngs(dropout=0))
    with pytest.raises(ValueError, match="keep_logit must broadcast to the shape of inputs"):
        layer(jnp.ones((2, 4)))
    with pytest.raises(TypeError, match="inputs must have a floating or complex dtype"):
        layer(jnp.ones(3, jnp.int32))
    assert layer.rngs.count[...] == 0  # no key drawn for a call that fails its checks
