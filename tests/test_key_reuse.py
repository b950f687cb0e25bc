"""The key-hygiene sweep: every public function that takes a key, run with settings that draw from it in earnest.

The suite runs with JAX's key-reuse checker on (conftest.py), so a function
that consumes one key twice raises ``KeyReuseError`` here. Constant
initialisers, dropout in one layer or a single sample would hide such a
reuse (as ``mlp_init`` once did with its bias initialiser): each case below
uses random initialisers, dropout in every layer and several samples or
steps, and checks that what should differ does.
"""

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdrop

SIZES = (6, 16, 16, 3)
KEEP = (0.8, 0.5, 0.5)  # dropout in every layer
RANDOM_INIT = {"w_init": jax.nn.initializers.normal(1.0), "b_init": jax.nn.initializers.normal(1.0)}


def params():
    return jdrop.mlp_init(jax.random.key(100), SIZES, **RANDOM_INIT)


def x():
    return jax.random.normal(jax.random.key(101), (8, SIZES[0]))


def random_primitive(fn, **kwargs):
    def run(key):
        data = jax.random.normal(jax.random.key(102), (64, 32))
        return fn(key, data, **kwargs)

    return run


def run_mlp_init(key):
    layers = jdrop.mlp_init(key, SIZES, **RANDOM_INIT)
    for i, layer in enumerate(layers):
        # Weights and biases come from keys of their own: no bias repeats a row of its weights.
        assert not np.any(np.all(np.isclose(np.asarray(layer["w"]), np.asarray(layer["b"])), axis=1)), i
    return layers


def run_mlp_apply(key):
    return jdrop.mlp_apply(params(), x(), key=key, keep_probs=KEEP)


def run_mc_predict_mlp(key):
    prediction = jdrop.mc_predict(params(), x(), key=key, keep_probs=KEEP, num_samples=10, chunk_size=4)
    assert float(prediction.std.max()) > 0  # the samples differ
    return prediction


def apply_fn(params, x, *, key):
    # A model of the user's own, with dropout in two places from one key.
    first, second = jax.random.split(key)
    hidden = jax.nn.relu(jdrop.dropout(first, x, 0.7) @ params[0]["w"])
    return jdrop.dropout(second, hidden, 0.5) @ params[1]["w"]


def run_mc_predict_apply_fn(key):
    two_layers = jdrop.mlp_init(jax.random.key(103), (SIZES[0], 16, 3), **RANDOM_INIT)
    prediction = jdrop.mc_predict(two_layers, x(), key=key, num_samples=6, apply_fn=apply_fn, chunk_size=4)
    assert float(prediction.std.max()) > 0
    return prediction


def run_train_steps(key):
    optimizer = optax.sgd(0.1)
    step = jdrop.make_train_step(optimizer, keep_probs=KEEP)
    state = jdrop.init_train_state(params(), optimizer)
    y = jnp.arange(8) % 3
    losses = []
    for _ in range(3):  # the same base key every step: the step folds in its count
        state, metrics = step(state, x(), y, key=key)
        losses.append(float(metrics["loss"]))
    assert len(set(losses)) == 3
    return state


def run_train_steps_with_loss_fn(key):
    def loss_fn(params, x, y, key, keep_probs):
        logits = apply_fn(params, x, key=key)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    optimizer = optax.sgd(0.1)
    two_layers = jdrop.mlp_init(jax.random.key(104), (SIZES[0], 16, 3), **RANDOM_INIT)
    step = jdrop.make_train_step(optimizer, loss_fn=loss_fn)
    state = jdrop.init_train_state(two_layers, optimizer)
    for _ in range(3):
        state, _ = step(state, x(), jnp.arange(8) % 3, key=key)
    return state


CASES = {
    "dropout": random_primitive(jdrop.dropout, keep_prob=0.5),
    "dropout_mask": lambda key: jdrop.dropout_mask(key, (64, 32), 0.5),
    "activation_dropout": random_primitive(jdrop.activation_dropout, keep_prob=0.5, activation="tanh"),
    "gaussian_dropout": random_primitive(jdrop.gaussian_dropout, keep_prob=0.5),
    "alpha_dropout": random_primitive(jdrop.alpha_dropout, keep_prob=0.5),
    "drop_path": random_primitive(jdrop.drop_path, keep_prob=0.5),
    "concrete_dropout": random_primitive(jdrop.concrete_dropout, keep_logit=0.0),
    "mlp_init": run_mlp_init,
    "mlp_apply": run_mlp_apply,
    "mc_predict": run_mc_predict_mlp,
    "mc_predict with apply_fn": run_mc_predict_apply_fn,
    "make_train_step": run_train_steps,
    "make_train_step with loss_fn": run_train_steps_with_loss_fn,
    # Its "key" is the attention's key array (jax.nn's layout); the PRNG key is dropout_key.
    "dot_product_attention": lambda key: jdrop.dot_product_attention(
        jnp.ones((2, 5, 4, 8)), jnp.ones((2, 7, 2, 8)), jnp.ones((2, 7, 2, 8)), dropout_key=key, keep_prob=0.5
    ),
}


def test_every_public_function_that_takes_a_key_is_swept():
    takes_a_key = {
        name
        for name in jdrop.__all__
        if inspect.isfunction(getattr(jdrop, name)) and "key" in inspect.signature(getattr(jdrop, name)).parameters
    }
    swept = {name.split(" ")[0] for name in CASES}
    assert takes_a_key - swept == set(), "add a case for each new function that takes a key"


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_key_is_consumed_twice(name):
    # The checker raises KeyReuseError inside the call if any key is reused.
    jax.block_until_ready(CASES[name](jax.random.key(0)))


# A train step folds its step count into the key (the documented use is one
# base key for every step), so it does not consume the key it is given.
BASE_KEY_CASES = {"make_train_step", "make_train_step with loss_fn"}


@pytest.mark.parametrize("name", sorted(set(CASES) - BASE_KEY_CASES))
def test_the_same_key_twice_is_caught(name):
    # The checker is on and sees these calls: passing one key to two calls is reported.
    key = jax.random.key(1)
    CASES[name](key)
    with pytest.raises(jax.errors.KeyReuseError):
        CASES[name](key)


# The drop-in modules: every class of every host, active, on a batch, several calls.
HOST_CLASSES = ("Dropout", "GaussianDropout", "AlphaDropout", "DropPath", "ConcreteDropout")


def host_inputs():
    return jax.random.normal(jax.random.key(105), (4, 6, 8))


@pytest.mark.parametrize("name", HOST_CLASSES)
def test_nnx_modules_draw_a_new_key_from_their_stream_every_call(name):
    from flax import nnx

    import jdrop.nnx

    layer = getattr(jdrop.nnx, name)(0.5, rngs=nnx.Rngs(dropout=0))
    outputs = [np.asarray(layer(host_inputs())) for _ in range(3)]  # the checker raises on a reused key
    assert not np.array_equal(outputs[0], outputs[1]) and not np.array_equal(outputs[1], outputs[2])


@pytest.mark.parametrize("name", HOST_CLASSES)
def test_linen_modules_draw_their_keys_with_make_rng(name):
    import jdrop.linen

    layer = getattr(jdrop.linen, name)(rate=0.5, deterministic=False)
    variables = layer.init(jax.random.key(106), host_inputs())
    keys = jax.random.split(jax.random.key(107), 3)
    outputs = [np.asarray(layer.apply(variables, host_inputs(), rngs={"dropout": key})) for key in keys]
    assert not np.array_equal(outputs[0], outputs[1])


@pytest.mark.parametrize("name", HOST_CLASSES)
def test_equinox_modules_consume_their_key_once_and_take_one_per_example(name):
    import jdrop.equinox

    layer = getattr(jdrop.equinox, name)(0.5)
    x = host_inputs()
    same = jnp.broadcast_to(x[0], x.shape)  # one example four times: only the keys differ
    per_example = jax.vmap(lambda row, key: layer(row, key=key))(same, jax.random.split(jax.random.key(108), len(x)))
    assert len({np.asarray(row).tobytes() for row in per_example}) > 1
    key = jax.random.key(109)
    layer(x, key=key)
    with pytest.raises(jax.errors.KeyReuseError):
        layer(x, key=key)
