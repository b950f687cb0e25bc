"""Quickstart: jdrop's dropout in an Equinox model, in Equinox's own loop.

An MLP classifies MNIST-1D (Greydanus, 2020; generated locally by the
``mnist1d`` package) with ordinary Equinox (``eqx.filter_jit``, ``jax.vmap``
with a key per example, ``eqx.nn.inference_mode`` to evaluate) except one line:
the dropout layer is ``jdrop.equinox.Dropout`` instead of ``eqx.nn.Dropout``.
Run ``python examples/quickstart_equinox.py`` (needs ``pip install -e
".[examples]"``); ``QUICKSTART_EPOCHS`` sets the epochs (default 50).
"""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from mnist1d.data import get_dataset_args, make_dataset

import jdrop.equinox


class MLP(eqx.Module):
    layers: list[eqx.nn.Linear]
    dropout: eqx.nn.Dropout

    def __init__(self, key):
        key1, key2, key3 = jax.random.split(key, 3)
        self.layers = [
            eqx.nn.Linear(40, 512, key=key1),
            eqx.nn.Linear(512, 512, key=key2),
            eqx.nn.Linear(512, 10, key=key3),
        ]
        # the one change: was eqx.nn.Dropout(0.5)
        self.dropout = jdrop.equinox.Dropout(0.5)

    def __call__(self, x, *, key=None):  # one example; no key to evaluate
        keys = jax.random.split(key) if key is not None else (None, None)
        for layer, layer_key in zip(self.layers[:-1], keys, strict=True):
            x = self.dropout(jax.nn.relu(layer(x)), key=layer_key)
        return self.layers[-1](x)


@eqx.filter_jit
def train_step(model, opt_state, x, y, key):
    def loss_fn(model):
        keys = jax.random.split(key, len(x))  # a key per example
        logits = jax.vmap(model)(x, key=keys)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
    params = eqx.filter(model, eqx.is_array)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return eqx.apply_updates(model, updates), opt_state, loss


@eqx.filter_jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(jax.vmap(model)(x), axis=-1) == y)


# 4000 train and 1000 test signals of 40 samples, 10 classes
data = make_dataset(get_dataset_args())
x_train, y_train = data["x"].astype(np.float32), data["y"]
x_test, y_test = data["x_test"].astype(np.float32), data["y_test"]

model_key, key = jax.random.split(jax.random.key(0))
model = MLP(model_key)
optimizer = optax.adam(1e-3)
opt_state = optimizer.init(eqx.filter(model, eqx.is_array))
rng = np.random.default_rng(0)
epochs = int(os.environ.get("QUICKSTART_EPOCHS", "50"))
for epoch in range(1, epochs + 1):
    for batch in rng.permutation(len(x_train)).reshape(-1, 100):
        key, step_key = jax.random.split(key)
        x, y = x_train[batch], y_train[batch]
        model, opt_state, loss = train_step(model, opt_state, x, y, step_key)
    if epoch % 10 == 0 or epoch == epochs:
        acc = float(accuracy(eqx.nn.inference_mode(model), x_test, y_test))
        print(f"epoch {epoch}: loss {float(loss):.3f}, test accuracy {acc:.3f}")
