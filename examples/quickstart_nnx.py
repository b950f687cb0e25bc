"""Quickstart: jdrop's dropout in a Flax NNX model, trained with NNX's own loop.

An MLP classifies MNIST-1D (Greydanus, 2020; generated locally by the
``mnist1d`` package). Everything is ordinary Flax NNX (``nnx.Rngs``,
``model.train()``/``model.eval()``, ``nnx.Optimizer``, ``nnx.jit``) except one
line: the dropout layer is ``jdrop.nnx.Dropout`` instead of ``nnx.Dropout``.

Run ``python examples/quickstart_nnx.py`` (needs
``pip install -e ".[examples]"``); set ``QUICKSTART_EPOCHS`` to train for fewer
epochs than 50.
"""

import os

import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from mnist1d.data import get_dataset_args, make_dataset

import jdrop.nnx


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden1 = nnx.Linear(40, 512, rngs=rngs)
        self.hidden2 = nnx.Linear(512, 512, rngs=rngs)
        # the one change: was nnx.Dropout(0.5, rngs=rngs)
        self.dropout = jdrop.nnx.Dropout(0.5, rngs=rngs)
        self.out = nnx.Linear(512, 10, rngs=rngs)

    def __call__(self, x):
        x = self.dropout(nnx.relu(self.hidden1(x)))
        # a new mask: each call draws a new key
        x = self.dropout(nnx.relu(self.hidden2(x)))
        return self.out(x)


@nnx.jit
def train_step(model, optimizer, x, y):
    def loss_fn(model):
        logits = model(x)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


@nnx.jit
def accuracy(model, x, y):
    return jnp.mean(jnp.argmax(model(x), axis=-1) == y)


# 4000 train and 1000 test signals of 40 samples, 10 classes
data = make_dataset(get_dataset_args())
x_train, y_train = data["x"].astype(np.float32), data["y"]
x_test, y_test = data["x_test"].astype(np.float32), data["y_test"]

model = MLP(nnx.Rngs(params=0, dropout=1))
optimizer = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)
rng = np.random.default_rng(0)
epochs = int(os.environ.get("QUICKSTART_EPOCHS", "50"))
for epoch in range(1, epochs + 1):
    model.train()  # dropout on
    for batch in rng.permutation(len(x_train)).reshape(-1, 100):
        loss = train_step(model, optimizer, x_train[batch], y_train[batch])
    if epoch % 10 == 0 or epoch == epochs:
        model.eval()  # dropout off: all units, no rescaling
        acc = float(accuracy(model, x_test, y_test))
        print(f"epoch {epoch}: loss {float(loss):.3f}, test accuracy {acc:.3f}")
