"""Quickstart: jdrop's dropout in a Flax linen model, in linen's own loop.

An MLP classifies MNIST-1D (Greydanus, 2020; generated locally by the
``mnist1d`` package). Everything is ordinary Flax linen (``@nn.compact``, a
``deterministic`` argument, ``rngs={"dropout": key}`` in ``apply``, a jitted
step with optax, as in Flax's dropout guide) except one line: the dropout
layer is ``jdrop.linen.Dropout`` instead of ``nn.Dropout``.

Run ``python examples/quickstart_linen.py`` (needs
``pip install -e ".[examples]"``); set ``QUICKSTART_EPOCHS`` to train for fewer
epochs than 50.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from mnist1d.data import get_dataset_args, make_dataset

import jdrop.linen


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x, deterministic: bool):
        for width in (512, 512):
            x = nn.relu(nn.Dense(width)(x))
            # the one change: was nn.Dropout(0.5, deterministic=deterministic)
            x = jdrop.linen.Dropout(0.5, deterministic=deterministic)(x)
        return nn.Dense(10)(x)


@jax.jit
def train_step(state, x, y, dropout_key):
    # new masks every step
    step_key = jax.random.fold_in(dropout_key, state.step)

    def loss_fn(params):
        rngs = {"dropout": step_key}
        variables = {"params": params}
        logits = state.apply_fn(variables, x, deterministic=False, rngs=rngs)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    return state.apply_gradients(grads=grads), loss


@jax.jit
def accuracy(state, x, y):
    variables = {"params": state.params}
    logits = state.apply_fn(variables, x, deterministic=True)  # dropout off
    return jnp.mean(jnp.argmax(logits, axis=-1) == y)


# 4000 train and 1000 test signals of 40 samples, 10 classes
data = make_dataset(get_dataset_args())
x_train, y_train = data["x"].astype(np.float32), data["y"]
x_test, y_test = data["x_test"].astype(np.float32), data["y_test"]

params_key, dropout_key = jax.random.split(jax.random.key(0))
model = MLP()
params = model.init(params_key, x_train[:1], deterministic=True)["params"]
state = train_state.TrainState.create(
    apply_fn=model.apply,
    params=params,
    tx=optax.adam(1e-3),
)
rng = np.random.default_rng(0)
epochs = int(os.environ.get("QUICKSTART_EPOCHS", "50"))
for epoch in range(1, epochs + 1):
    for batch in rng.permutation(len(x_train)).reshape(-1, 100):
        x, y = x_train[batch], y_train[batch]
        state, loss = train_step(state, x, y, dropout_key)
    if epoch % 10 == 0 or epoch == epochs:
        acc = float(accuracy(state, x_test, y_test))
        print(f"epoch {epoch}: loss {float(loss):.3f}, test accuracy {acc:.3f}")
