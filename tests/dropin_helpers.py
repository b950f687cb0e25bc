"""Shared pieces of the drop-in tests (test_nnx.py, test_linen.py, test_equinox.py)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdrop

SEEDS = (0, 1, 2)


def noisy_blobs(seed=0, n_train=200, n_test=2000, dim=20, classes=4):
    """Gaussian classes in 20 dimensions with few training examples: an MLP overfits, dropout helps."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.6
    y = rng.integers(0, classes, n_train + n_test)
    x = centres[y] + rng.normal(size=(n_train + n_test, dim))
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def assert_same_accuracy_within_seed_noise(host, dropin, n_test):
    """The mean test accuracies over seeds agree within the noise that seeds and the test set make.

    The bound is 4 standard errors of the difference of the two means, from
    the seed-to-seed spread, but no less than 4 binomial standard deviations
    of one test-set accuracy (so that two lucky identical runs cannot make it
    zero).
    """
    host, dropin = np.asarray(host), np.asarray(dropin)
    spread = math.sqrt((host.var(ddof=1) + dropin.var(ddof=1)) / len(host))
    mean = (host.mean() + dropin.mean()) / 2
    floor = math.sqrt(mean * (1 - mean) / n_test)
    assert abs(host.mean() - dropin.mean()) <= 4 * max(spread, floor), (host, dropin)


def bit_identical(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def cross_entropy(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


def train_seeds(init_params, loss_fn, predict, train, test, steps=200):
    """Trains one model per seed with jdrop.make_train_step(loss_fn=...); returns the test accuracies.

    ``init_params`` has a leading seed axis; all seeds train in one vmapped,
    jitted program (one compilation), each with its own dropout key.
    """
    optimizer = optax.adam(1e-3)
    step = jdrop.make_train_step(optimizer, loss_fn=loss_fn)

    def run(params, key):
        state = jdrop.init_train_state(params, optimizer)
        state = jax.lax.scan(lambda s, _: step(s, *train, key=key), state, length=steps)[0]
        return jdrop.evaluate(state.params, test[0], test[1], apply_fn=predict)["accuracy"]

    keys = jax.random.split(jax.random.key(100), len(SEEDS))
    return np.asarray(jax.jit(jax.vmap(run))(init_params, keys)).tolist()


# The dropout-family drop-ins (GaussianDropout, AlphaDropout, DropPath): each
# host module's class of that name applies the core function below.
VARIANT_NAMES = ("GaussianDropout", "AlphaDropout", "DropPath")
NOISE_VARIANT_NAMES = ("GaussianDropout", "AlphaDropout")  # rate in [0, 1)
CORE_FUNCTIONS = {
    "GaussianDropout": jdrop.gaussian_dropout,
    "AlphaDropout": jdrop.alpha_dropout,
    "DropPath": jdrop.drop_path,
}


def variant_cases(broadcast_dims=True):
    """pytest params (class name, keyword arguments); the keywords mean the same to the class and its core function."""
    cases = [
        ("GaussianDropout", {}),
        ("AlphaDropout", {}),
        ("DropPath", {"mode": "row"}),
        ("DropPath", {"mode": "batch"}),
    ]
    if broadcast_dims:
        cases += [("GaussianDropout", {"broadcast_dims": (1,)}), ("AlphaDropout", {"broadcast_dims": (0, 2)})]
    return [pytest.param(name, kwargs, id="-".join([name, *map(str, kwargs.values())])) for name, kwargs in cases]


#: One input shape for all the variant tests: eager ops compile once per shape.
VARIANT_SHAPE = (4, 6, 5)


def core(name, key, x, rate, **kwargs):
    """What the drop-in ``name`` at drop rate ``rate`` must return for ``key``."""
    return CORE_FUNCTIONS[name](key, x, 1 - rate, **kwargs)


def assert_constant_along_non_batch_axes(y):
    y = np.asarray(y).reshape(y.shape[0], -1)
    np.testing.assert_array_equal(y, np.broadcast_to(y[:, :1], y.shape))
