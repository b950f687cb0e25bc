"""Tests for jdrop._train: the optax training step, L2, evaluation."""

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdrop

SIZES = (8, 32, 32, 3)
KEEP_PROBS = (1.0, 0.5, 0.5)


def blobs(n=240, seed=0):
    """Three Gaussian classes in 8 dimensions: a small problem an MLP can learn."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, 8)) * 2.0
    y = np.arange(n) % 3
    x = centres[y] + rng.normal(size=(n, 8))
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)


def train(step_fn, state, x, y, steps, key):
    for _ in range(steps):
        state, metrics = step_fn(state, x, y, key=key)
    return state, metrics


@pytest.mark.standard_promotion  # optax.adam's bias correction mixes int and float
def test_training_with_adam_dropout_and_l2_lowers_the_loss():
    x, y = blobs()
    optimizer = optax.adam(1e-2)
    init_key, key = jax.random.split(jax.random.key(0))
    state = jdrop.init_train_state(jdrop.mlp_init(init_key, SIZES), optimizer)
    before = jdrop.evaluate(state.params, x, y)
    step = jdrop.make_train_step(optimizer, keep_probs=KEEP_PROBS, l2=1e-2)
    state, _ = train(step, state, x, y, 150, key)
    after = jdrop.evaluate(state.params, x, y)
    assert int(state.step) == 150
    assert float(after["cross_entropy"]) < 0.25 * float(before["cross_entropy"])
    assert float(after["accuracy"]) > 0.95


def test_same_key_reproduces_the_run_bit_for_bit_and_another_key_does_not():
    x, y = blobs()
    optimizer = optax.sgd(0.1, momentum=0.9)
    step = jdrop.make_train_step(optimizer, keep_probs=KEEP_PROBS)
    init_key, key = jax.random.split(jax.random.key(0))
    start = jdrop.init_train_state(jdrop.mlp_init(init_key, SIZES), optimizer)
    first, _ = train(step, start, x, y, 10, key)
    second, _ = train(step, start, x, y, 10, jax.random.clone(key))
    other, _ = train(step, start, x, y, 10, key=jax.random.key(1))
    chex.assert_trees_all_equal(first, second)
    assert not np.array_equal(first.params[1]["w"], other.params[1]["w"])


def test_each_step_folds_its_count_into_the_key_and_backprop_uses_the_forward_masks():
    x, y = blobs(n=30)
    learning_rate = 0.1
    optimizer = optax.sgd(learning_rate)
    step = jdrop.make_train_step(optimizer, keep_probs=KEEP_PROBS)
    init_key, key = jax.random.split(jax.random.key(0))
    state = jdrop.init_train_state(jdrop.mlp_init(init_key, SIZES), optimizer)

    def loss(params, step_key):
        logits = jdrop.mlp_apply(params, x, key=step_key, keep_probs=KEEP_PROBS)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    params = state.params
    for count in range(3):
        state, metrics = step(state, x, y, key=key)
        step_key = jax.random.fold_in(key, count)
        expected_loss, grads = jax.value_and_grad(loss)(params, step_key)
        params = jax.tree.map(lambda p, g: p - learning_rate * g, params, grads)
        chex.assert_trees_all_close(state.params, params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(metrics["loss"], expected_loss, rtol=1e-6)
    # Masks really differ between steps: the step-0 and step-1 keys give other losses.
    assert float(loss(params, jax.random.fold_in(key, 0))) != float(loss(params, jax.random.fold_in(key, 1)))


def test_l2_penalty_is_lambda_over_2m_times_the_squared_weights():
    init_key, key = jax.random.split(jax.random.key(0))
    params = jdrop.mlp_init(init_key, SIZES)
    squares = sum(float(jnp.sum(layer["w"] ** 2)) for layer in params)
    chex.assert_trees_all_close(jdrop.l2_penalty(params, 0.3, 20), 0.3 / 40 * squares, rtol=1e-6)
    x, y = blobs(n=20)
    optimizer = optax.sgd(0.05)
    state = jdrop.init_train_state(params, optimizer)
    new_state, metrics = jdrop.make_train_step(optimizer, l2=0.3)(state, x, y, key=key)
    chex.assert_trees_all_close(
        metrics["loss"] - metrics["cross_entropy"], jdrop.l2_penalty(params, 0.3, 20), rtol=1e-5
    )
    # The penalty's gradient, lambda / m * W, reaches the weights but not the biases.
    plain, _ = jdrop.make_train_step(optimizer)(state, x, y, key=jax.random.clone(key))
    for layer, with_l2, without in zip(params, new_state.params, plain.params, strict=True):
        chex.assert_trees_all_close(without["w"] - with_l2["w"], 0.05 * 0.3 / 20 * layer["w"], atol=1e-7)
        np.testing.assert_array_equal(without["b"], with_l2["b"])


def test_steps_run_inside_lax_scan_and_never_retrace():
    x, y = blobs(n=40)
    optimizer = optax.sgd(0.1)
    step = jdrop.make_train_step(optimizer, keep_probs=KEEP_PROBS, activation="tanh")
    init_key, key = jax.random.split(jax.random.key(0))
    start = jdrop.init_train_state(jdrop.mlp_init(init_key, SIZES, activation="tanh"), optimizer)
    looped, _ = train(step, start, x, y, 5, key)
    assert step._cache_size() == 1  # one compilation for all five steps
    same_key = jax.random.clone(key)

    def body(state, _):
        return step(state, x, y, key=same_key)

    scanned, metrics = jax.jit(lambda s: jax.lax.scan(body, s, None, length=5))(start)
    chex.assert_shape(metrics["loss"], (5,))
    chex.assert_trees_all_close(scanned, looped, rtol=1e-5, atol=1e-6)


def test_evaluate_is_deterministic_and_matches_the_plain_network():
    x, y = blobs(n=50)
    params = jdrop.mlp_init(jax.random.key(0), SIZES)
    metrics = jdrop.evaluate(params, x, y)
    logits = jdrop.mlp_apply(params, x, deterministic=True)
    chex.assert_trees_all_close(
        metrics["cross_entropy"], optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), rtol=1e-6
    )
    chex.assert_trees_all_close(metrics["accuracy"], jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32)))
    chex.assert_trees_all_equal(metrics, jdrop.evaluate(params, x, y))


def test_errors():
    with pytest.raises(ValueError, match="l2 must be a real number >= 0"):
        jdrop.make_train_step(optax.sgd(0.1), l2=-1.0)
    with pytest.raises(ValueError, match="l2"):
        jdrop.make_train_step(optax.sgd(0.1), l2=float("nan"))
    with pytest.raises(ValueError, match=r"keep_probs\[2\] must be in \(0, 1\]"):
        jdrop.make_train_step(optax.sgd(0.1), keep_probs=(1.0, 0.5, 1.5))
    with pytest.raises(ValueError, match="activation"):
        jdrop.make_train_step(optax.sgd(0.1), activation="swish")
    x, y = blobs(n=10)
    optimizer = optax.sgd(0.1)
    init_key, key = jax.random.split(jax.random.key(0))
    state = jdrop.init_train_state(jdrop.mlp_init(init_key, SIZES), optimizer)
    with pytest.raises(ValueError, match="keep_probs has 2 entries"):
        jdrop.make_train_step(optimizer, keep_probs=(0.5, 0.5))(state, x, y, key=key)


def test_keep_prob_schedules_change_every_step_without_retracing():
    x, y = blobs(n=60)
    optimizer = optax.sgd(0.1)
    schedule = optax.linear_schedule(0.9, 0.3, transition_steps=6)
    step = jdrop.make_train_step(optimizer, keep_probs=(1.0, schedule, 0.5))
    init_key, key = jax.random.split(jax.random.key(0))
    state = jdrop.init_train_state(jdrop.mlp_init(init_key, SIZES), optimizer)

    def loss(params, count, keep_prob):
        logits = jdrop.mlp_apply(params, x, key=jax.random.fold_in(key, count), keep_probs=(1.0, keep_prob, 0.5))
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    used = []
    for count in range(8):
        expected_keep = float(schedule(count))
        expected_loss = loss(state.params, count, expected_keep)
        state, metrics = step(state, x, y, key=key)
        used.append(float(metrics["keep_probs"][1]))
        chex.assert_trees_all_close(metrics["keep_probs"], jnp.array([1.0, expected_keep, 0.5]), atol=1e-7)
        # The step dropped units with the scheduled probability of that very step.
        chex.assert_trees_all_close(metrics["loss"], expected_loss, rtol=1e-6)
    assert used[0] > used[3] > used[6] == used[7]
    assert step._cache_size() == 1  # one trace for all eight steps


def test_realised_keep_fraction_follows_the_schedule():
    # One layer of unit weights on constant input: its logit is the number of
    # kept inputs over the keep probability, so the step's forward pass tells
    # how many units it kept.
    n = 4096
    params = [{"w": jnp.ones((n, 2)), "b": jnp.zeros(2)}]
    schedule = optax.linear_schedule(0.9, 0.2, transition_steps=3)
    x = jnp.ones((1, n))
    key = jax.random.key(0)
    fractions = []
    for count in range(4):
        keep_prob = float(schedule(count))
        effective = float(jdrop.effective_keep_prob(keep_prob))
        # What the training step runs at step `count` (see the test above).
        step_key = jax.random.fold_in(key, count)
        logits = jdrop.mlp_apply(params, x, key=step_key, keep_probs=(schedule(count),))
        kept = round(float(logits[0, 0]) * effective)
        layer_key = jax.random.split(jax.random.clone(step_key), 1)[0]  # the key mlp_apply gave the layer
        assert kept == int(jnp.sum(jdrop.dropout_mask(layer_key, (1, n), keep_prob)))
        assert abs(kept - n * effective) <= 5 * np.sqrt(n * effective * (1 - effective)), (count, kept)
        fractions.append(kept / n)
    assert fractions[0] > fractions[1] > fractions[2] > fractions[3]


def test_schedules_are_checked_at_step_zero():
    with pytest.raises(ValueError, match=r"keep_probs\[1\] \(a schedule\) at step 0 must be in \(0, 1\]"):
        jdrop.make_train_step(optax.sgd(0.1), keep_probs=(1.0, optax.constant_schedule(0.0)))


# make_train_step(loss_fn=...) and evaluate(apply_fn=...): any model.


def tree_model_loss(params, x, y, key, keep_probs):
    """A two-input model with nested parameters, pytree inputs and dropout from the step's key."""
    hidden = jnp.tanh(x["a"] @ params["dense"]["w"] + x["b"] * params["scale"])
    hidden = jdrop.dropout(key, hidden, keep_probs[0])
    error = jnp.mean((hidden.sum(-1) - y["target"]) ** 2)
    return error, {"hidden_mean": hidden.mean()}


def tree_model_setup(n=16):
    rng = np.random.default_rng(0)
    params = {"dense": {"w": jnp.asarray(rng.normal(size=(5, 6)), jnp.float32)}, "scale": jnp.float32(0.5)}
    x = {"a": jnp.asarray(rng.normal(size=(n, 5)), jnp.float32), "b": jnp.asarray(rng.normal(size=(n, 1)), jnp.float32)}
    y = {"target": jnp.asarray(rng.normal(size=n), jnp.float32)}
    return params, x, y


def test_loss_fn_step_is_sgd_on_the_loss_with_the_folded_key_and_scheduled_keep_probs():
    params, x, y = tree_model_setup()
    learning_rate = 0.05
    schedule = optax.linear_schedule(0.9, 0.5, transition_steps=4)
    seen = []

    def loss_fn(params, x, y, key, keep_probs):
        seen.append(keep_probs)
        return tree_model_loss(params, x, y, key, keep_probs)

    optimizer = optax.sgd(learning_rate)
    step = jdrop.make_train_step(optimizer, loss_fn=loss_fn, keep_probs=(schedule, 1.0))
    state = jdrop.init_train_state(params, optimizer)
    expected_params = params
    key = jax.random.key(0)
    for count in range(4):
        keep = float(schedule(count))
        step_key = jax.random.fold_in(key, count)
        (expected_loss, aux), grads = jax.value_and_grad(tree_model_loss, has_aux=True)(
            expected_params, x, y, step_key, (keep, 1.0)
        )
        expected_params = jax.tree.map(lambda p, g: p - learning_rate * g, expected_params, grads)
        state, metrics = step(state, x, y, key=key)
        chex.assert_trees_all_close(state.params, expected_params, rtol=1e-5, atol=1e-6)
        chex.assert_trees_all_close(metrics["loss"], expected_loss, rtol=1e-6)
        chex.assert_trees_all_close(metrics["hidden_mean"], aux["hidden_mean"], rtol=1e-6)
        chex.assert_trees_all_close(metrics["keep_probs"], jnp.array([keep, 1.0]), atol=1e-7)
    assert sorted(metrics) == ["hidden_mean", "keep_probs", "loss"]
    assert step._cache_size() == 1 and len(seen) == 1  # traced once for all steps
    scheduled, constant = seen[0]
    assert isinstance(scheduled, jax.core.Tracer) and constant == 1.0  # numbers stay Python numbers


def test_loss_fn_may_return_a_bare_scalar_and_keep_probs_may_be_none():
    params, x, y = tree_model_setup()
    seen = []

    def loss_fn(params, x, y, key, keep_probs):
        seen.append(keep_probs)
        return tree_model_loss(params, x, y, key, (0.5,))[0]

    optimizer = optax.sgd(0.1)
    state, metrics = jdrop.make_train_step(optimizer, loss_fn=loss_fn)(
        jdrop.init_train_state(params, optimizer), x, y, key=jax.random.key(0)
    )
    assert sorted(metrics) == ["loss"] and seen == [None] and int(state.step) == 1


def test_loss_fn_errors():
    params, x, y = tree_model_setup()
    optimizer = optax.sgd(0.1)
    with pytest.raises(ValueError, match=r"l2 is the MLP's weight penalty.*add_decayed_weights"):
        jdrop.make_train_step(optimizer, loss_fn=tree_model_loss, l2=0.1)
    # Any activation given beside loss_fn is an error, "relu" (once the "not given" value) included.
    for activation in ("tanh", "relu", jax.nn.relu):
        with pytest.raises(ValueError, match="activation is for jdrop's MLP; with loss_fn"):
            jdrop.make_train_step(optimizer, loss_fn=tree_model_loss, activation=activation)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        jdrop.make_train_step(optimizer, loss_fn="mse")
    with pytest.raises(TypeError, match="keep_probs must be a sequence"):
        jdrop.make_train_step(optimizer, loss_fn=tree_model_loss, keep_probs=0.5)
    state = jdrop.init_train_state(params, optimizer)
    bad_returns = {
        "a tuple of 3 elements": lambda *args, **kwargs: (1.0, {}, 2.0),
        "floating scalar loss, got shape": lambda *args, **kwargs: jnp.ones(3),
        r"may not be named \['loss'\]": lambda *args, **kwargs: (jnp.float32(1.0), {"loss": jnp.float32(0.0)}),
    }
    key = jax.random.key(0)  # never consumed: the steps raise first
    for message, loss_fn in bad_returns.items():
        with pytest.raises((TypeError, ValueError), match=message):
            jdrop.make_train_step(optimizer, loss_fn=loss_fn)(state, x, y, key=key)


def test_mlp_functions_tell_a_foreign_model_where_to_go():
    foreign = {"Dense_0": {"kernel": jnp.ones((8, 3)), "bias": jnp.zeros(3)}}  # a linen model's params
    x, y = blobs(n=10)
    optimizer = optax.sgd(0.1)
    message = r"needs params from jdrop.mlp_init.*For a model of your own \(Flax, Equinox, plain JAX\), "
    with pytest.raises(TypeError, match=message + "pass loss_fn="):
        jdrop.make_train_step(optimizer)(jdrop.init_train_state(foreign, optimizer), x, y, key=jax.random.key(0))
    with pytest.raises(TypeError, match=message + "pass apply_fn="):
        jdrop.evaluate(foreign, x, y)
    with pytest.raises(TypeError, match=message + "pass apply_fn="):
        jdrop.mc_predict(foreign, x, key=jax.random.key(0), keep_probs=(0.5,), num_samples=2)
    with pytest.raises(TypeError, match=message + "call jdrop.dropout in its forward pass"):
        jdrop.mlp_apply(foreign, x)
    with pytest.raises(TypeError, match=message + "call jdrop.dropout in its forward pass"):
        jdrop.l2_penalty(foreign, 0.1, 10)
    with pytest.raises(TypeError, match=r"params\[0\] is a dict with keys \['bias', 'kernel'\]"):
        jdrop.mlp_apply([{"kernel": jnp.ones((8, 3)), "bias": jnp.zeros(3)}], x)
    with pytest.raises(TypeError, match=r"params\[1\]\['w'\] has 5 inputs but the layer before has 4 outputs"):
        jdrop.mlp_apply([{"w": jnp.ones((8, 4)), "b": jnp.zeros(4)}, {"w": jnp.ones((5, 3)), "b": jnp.zeros(3)}], x)


def test_evaluate_with_apply_fn_is_the_metrics_of_its_logits():
    x, y = blobs(n=50)
    params = {"w": jax.random.normal(jax.random.key(0), (8, 3))}

    def apply_fn(params, x):
        return x["features"] @ params["w"]

    metrics = jdrop.evaluate(params, {"features": x}, y, apply_fn=apply_fn)
    logits = x @ params["w"]
    chex.assert_trees_all_close(
        metrics["cross_entropy"], optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), rtol=1e-6
    )
    chex.assert_trees_all_close(metrics["accuracy"], jnp.mean((jnp.argmax(logits, -1) == y).astype(jnp.float32)))
    with pytest.raises(ValueError, match="logits of shape"):
        jdrop.evaluate(params, {"features": x}, y[:10], apply_fn=apply_fn)
    with pytest.raises(TypeError, match="apply_fn must be callable"):
        jdrop.evaluate(params, x, y, apply_fn=3)
    for activation in ("tanh", "relu"):
        with pytest.raises(ValueError, match="activation is for jdrop's MLP; with apply_fn"):
            jdrop.evaluate(params, x, y, apply_fn=apply_fn, activation=activation)


def test_python_lists_are_arrays_in_the_mlp_step_and_evaluate():
    x, y = blobs(n=12)
    optimizer = optax.sgd(0.1)
    state = jdrop.init_train_state(jdrop.mlp_init(jax.random.key(40), SIZES), optimizer)
    step = jdrop.make_train_step(optimizer, keep_probs=KEEP_PROBS)
    key = jax.random.key(41)
    from_lists, _ = step(state, x.tolist(), y.tolist(), key=jax.random.clone(key))
    from_arrays, _ = step(state, x, y, key=key)
    chex.assert_trees_all_equal(from_lists, from_arrays)
    chex.assert_trees_all_equal(
        jdrop.evaluate(state.params, x.tolist(), y.tolist()), jdrop.evaluate(state.params, x, y)
    )
    with pytest.raises(TypeError, match=r"keep_probs must be a sequence with one keep probability per layer"):
        jdrop.mlp_apply(state.params, x, key=jax.random.key(42), keep_probs=0.5)


X64_CHECK = """
import jax, jax.numpy as jnp, optax, jdrop
assert jax.config.jax_enable_x64
params = jdrop.mlp_init(jax.random.key(0), (4, 8, 3), dtype=jnp.float64)
x, y = jnp.ones((6, 4), jnp.float64), jnp.arange(6) % 3
optimizer = optax.sgd(0.1)
step = jdrop.make_train_step(optimizer, keep_probs=(1.0, 0.5), l2=0.1)
state, metrics = step(jdrop.init_train_state(params, optimizer), x, y, key=jax.random.key(1))
mc = jdrop.mc_predict(params, x, key=jax.random.key(2), keep_probs=(1.0, 0.5), num_samples=4)
dtypes = {
    "loss": metrics["loss"].dtype,
    "cross_entropy": jdrop.evaluate(params, x, y)["cross_entropy"].dtype,
    "l2_penalty": jdrop.l2_penalty(params, 0.1, 6).dtype,
    "mc_predict": mc.mean_probs.dtype,
}
assert all(d == jnp.float64 for d in dtypes.values()), dtypes
print("float64")
"""


def test_float64_parameters_compute_in_float64():
    env = {**os.environ, "JAX_ENABLE_X64": "1"}
    out = subprocess.run([sys.executable, "-c", X64_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "float64", out.stderr[-2000:]
