"""jdrop: fast, correct inverted dropout for JAX training loops."""

from jdrop._activation import ACTIVATIONS, activation_dropout
from jdrop._dropout import KEEP_PROB_BITS, dropout, dropout_mask, effective_keep_prob
from jdrop._mc import MCPrediction, mc_predict
from jdrop._mlp import Params, mlp_apply, mlp_init
from jdrop._parallel import data_parallel_mesh, replicate, shard_batch
from jdrop._train import TrainState, evaluate, init_train_state, l2_penalty, make_train_step

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "KEEP_PROB_BITS",
    "MCPrediction",
    "Params",
    "TrainState",
    "activation_dropout",
    "data_parallel_mesh",
    "dropout",
    "dropout_mask",
    "effective_keep_prob",
    "evaluate",
    "init_train_state",
    "l2_penalty",
    "make_train_step",
    "mc_predict",
    "mlp_apply",
    "mlp_init",
    "replicate",
    "shard_batch",
]
