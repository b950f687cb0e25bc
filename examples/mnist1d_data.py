"""MNIST-1D and its batches, for the examples that train on it (imported as ``mnist1d_data``).

MNIST-1D (Greydanus, 2020) is generated on this machine by the ``mnist1d``
package with its default arguments, with no download: 4000 training and 1000
test signals of 40 samples, 10 classes. (This module is not named
``mnist1d.py``: a script beside it would import it instead of the package.)
"""

from __future__ import annotations

import numpy as np


def load_mnist1d() -> dict[str, np.ndarray]:
    """``{"x", "y", "x_test", "y_test"}``: float32 signals ``(n, 40)`` and int32 labels ``(n,)``."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # generated from a fixed seed: the same data every time
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int32),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int32),
    }


def batch_indices(seed: int, num_examples: int, batch_size: int, steps: int) -> np.ndarray:
    """``(steps, batch_size)`` example indices: a fresh shuffle every epoch, a function of ``seed`` alone.

    The last ``num_examples % batch_size`` examples of each shuffle are left
    out, so that every batch is full.
    """
    rng = np.random.default_rng(seed)
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)
