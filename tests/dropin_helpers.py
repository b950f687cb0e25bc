"""Shared pieces of the drop-in tests (test_nnx.py, test_linen.py, test_equinox.py)."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jdrop


def noisy_blobs(seed=0, n_train=200, n_test=2000, dim=20, classes=4):
    """Gaussian classes in 20 dimensions with few training examples: an MLP overfits, dropout helps."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim)) * 0.6
    y = rng.integers(0, classes, n_train + n_test)
    x = centres[y] + rng.normal(size=(n_train + n_test, dim))
    x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32)
    return (x[:n_train], y[:n_train]), (x[n_train:], y[n_train:])


def bit_identical(a, b):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def cross_entropy(logits, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))


#: The drop rate of the training-level tests: not 1/2, so that swapping rate and keep_prob changes the draws.
TRAINING_RATE = 0.3
#: Width of the dropped layer of the training-level models: with the 200 training examples of noisy_blobs,
#: about 50,000 units reach the dropout layer with a nonzero activation in each step.
TRAINING_WIDTH = 512
TRAINING_STEPS = 4


def zero_taps(batch):
    """Zero arrays added before and after the dropout layer, so that the gradients there are the taps' gradients."""
    return {"in": jnp.zeros((batch, TRAINING_WIDTH)), "out": jnp.zeros((batch, TRAINING_WIDTH))}


def assert_dropout_seen_in_training(steps, rate=TRAINING_RATE):
    """Checks what a dropout layer inside a model saw and did in each step of the host's training loop.

    ``steps`` holds, per training step, ``(key, h, y, dh, dy)``: the key the
    host handed the layer (or, for Equinox, one key per example, a batch of
    keys), the layer's input ``h`` and output ``y`` (batch first), and the
    loss's gradients with respect to them. Checks that

    * ``y`` is exactly ``jdrop.dropout(key, h, 1 - rate)`` (per example for a
      batch of keys): the right function, rate and key;
    * the gradient takes the forward mask: ``dh`` is exactly 0 where the mask
      dropped and ``dy / p_eff`` where it kept;
    * the kept fraction is binomial. Each of the ``n`` units with a nonzero
      input is kept (nonzero output) independently with probability
      ``p = effective_keep_prob(1 - rate)``, given the inputs (each step's key
      is fresh), so the number kept is Binomial(n, p): mean ``n p``, standard
      deviation ``s = sqrt(n p (1 - p))``. With n about 2e5, the normal
      approximation is close, and a correct layer misses ``n p +- 5 s`` with
      probability 5.7e-7. A layer that drops nothing is ``n (1 - p) / s =
      sqrt(n (1 - p) / p)``, about 300 ``s``, away; one with rate and keep
      probability swapped, ``0.4 n / s``, about 400 ``s``;
    * every step draws a new mask, and so does every example: two
      independent masks agree on a unit with probability ``p**2 + (1 - p)**2
      = 0.58``, so on the ~100 units where two rows both have an input they
      all agree with probability below 1e-23.
    """
    keep = 1 - rate
    effective = float(jdrop.effective_keep_prob(keep))
    reciprocal = np.float32(1) / np.float32(effective)  # what the layer multiplies kept units by
    kept_count = inputs_count = 0
    previous = None
    for key, h, y, dh, dy in steps:
        h, y, dh, dy = (np.asarray(a) for a in (h, y, dh, dy))
        if key.shape == ():  # one key for the batch (Flax)
            expected = jdrop.dropout(jax.random.clone(key), h, keep)
            mask = np.asarray(jdrop.dropout_mask(jax.random.clone(key), h.shape, keep))
        else:  # one key per example (Equinox)
            expected = jax.vmap(lambda k, row: jdrop.dropout(k, row, keep))(jax.random.clone(key), h)
            mask = np.asarray(
                jax.vmap(functools.partial(jdrop.dropout_mask, shape=h.shape[1:], keep_prob=keep))(
                    jax.random.clone(key)
                )
            )
        bit_identical(y, expected)
        bit_identical(dh, np.where(mask, dy * reciprocal, np.float32(0)))
        assert np.all(dh[~mask] == 0) and np.any(dy[~mask] != 0)  # dropped units pass no gradient back

        nonzero = h != 0
        kept = y != 0
        inputs_count += int(nonzero.sum())
        kept_count += int((kept & nonzero).sum())
        for row in range(h.shape[0] - 1):  # every example its own mask
            both = nonzero[row] & nonzero[row + 1]
            assert np.any((kept[row] != kept[row + 1]) & both), f"examples {row} and {row + 1} share a mask"
        if previous is not None:  # every step a new mask
            both = nonzero & previous[0]
            assert np.any((kept != previous[1]) & both), "two steps drew the same mask"
        previous = (nonzero, kept)
    sigma = math.sqrt(inputs_count * effective * (1 - effective))
    assert abs(kept_count - inputs_count * effective) <= 5 * sigma, (kept_count, inputs_count, effective)


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
