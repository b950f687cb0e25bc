"""jdrop: fast, correct inverted dropout for JAX training loops."""

from jdrop._activation import ACTIVATIONS, activation_dropout
from jdrop._attention import dot_product_attention
from jdrop._dropout import KEEP_PROB_BITS, dropout, dropout_mask, effective_keep_prob
from jdrop._mc import MCPrediction, mc_predict
from jdrop._mlp import Params, mlp_apply, mlp_init
from jdrop._parallel import data_parallel_mesh, replicate, shard_batch
from jdrop._train import TrainState, evaluate, init_train_state, l2_penalty, make_train_step
from jdrop._variants import (
    alpha_dropout,
    concrete_dropout,
    concrete_dropout_regularizer,
    drop_path,
    gaussian_dropout,
)

__version__ = "0.2.0"  # the one place the version is written (pyproject.toml reads it)

# The drop-in modules for Flax and Equinox import their host library, so they
# load only when used: `import jdrop` stays free of flax and equinox, and
# `jdrop.nnx` works after `import jdrop` as after `import jdrop.nnx`.
_INTEGRATIONS = ("equinox", "linen", "nnx")


def __getattr__(name: str) -> object:
    if name in _INTEGRATIONS:
        import importlib

        return importlib.import_module(f"jdrop.{name}")
    raise AttributeError(f"module 'jdrop' has no attribute {name!r}")


__all__ = [
    "ACTIVATIONS",
    "KEEP_PROB_BITS",
    "MCPrediction",
    "Params",
    "TrainState",
    "activation_dropout",
    "alpha_dropout",
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "data_parallel_mesh",
    "dot_product_attention",
    "drop_path",
    "dropout",
    "dropout_mask",
    "effective_keep_prob",
    "evaluate",
    "gaussian_dropout",
    "init_train_state",
    "l2_penalty",
    "make_train_step",
    "mc_predict",
    "mlp_apply",
    "mlp_init",
    "replicate",
    "shard_batch",
]
