"""Tests for the package as a whole: its public names, its error messages, its runtime dependencies."""

import ast
import inspect
import re
import sys
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdrop

ROOT = Path(__file__).resolve().parents[1]


def test_no_public_name_is_mutable_state():
    # A public dict (ACTIVATIONS once was one) lets a user change what the
    # library computes behind its back: replacing "relu" changed the forward
    # pass but not the fused derivative.
    for name in jdrop.__all__:
        value = getattr(jdrop, name)
        assert not isinstance(value, dict | list | set | bytearray), f"jdrop.{name} is a mutable {type(value).__name__}"
    with pytest.raises(TypeError):
        jdrop.ACTIVATIONS["relu"] = jax.nn.leaky_relu  # type: ignore[index]


KEY = jax.random.key(0)  # never consumed: every call below raises before drawing
PARAMS = jdrop.mlp_init(jax.random.key(1), (4, 8, 3))
X, Y = jnp.ones((2, 4)), jnp.zeros(2, jnp.int32)
FAMILY = ("dropout", "gaussian_dropout", "alpha_dropout", "activation_dropout")

# (function, arguments) pairs that each raise: every argument made wrong in turn.
BAD_CALLS = [
    *[(name, (None, X, 0.5), {}) for name in FAMILY],
    *[(name, (KEY, X, 1.5), {}) for name in FAMILY],
    *[(name, (KEY, jnp.ones(3, jnp.int32), 0.5), {}) for name in FAMILY],
    *[(name, (KEY, X, 0.5), {"broadcast_dims": (5,)}) for name in ("dropout", "gaussian_dropout", "alpha_dropout")],
    *[(name, (KEY, X, 0.5), {"deterministic": "no"}) for name in FAMILY],
    ("activation_dropout", (KEY, X, 0.5), {"activation": "swish"}),
    ("drop_path", (None, X, 0.5), {}),
    ("drop_path", (KEY, X, 0.5), {"mode": "column"}),
    ("concrete_dropout", (None, X, 0.0), {}),
    ("concrete_dropout", (KEY, X, jnp.zeros(5)), {}),
    ("concrete_dropout", (KEY, X, 0.0), {"temperature": 0.0}),
    ("concrete_dropout_regularizer", (0.0, jnp.ones(3)), {"num_examples": 1, "length_scale": 1.0}),
    ("concrete_dropout_regularizer", (0.0, jnp.ones((4, 3))), {"num_examples": 0, "length_scale": 1.0}),
    ("concrete_dropout_regularizer", (0.0, jnp.ones((4, 3))), {"num_examples": 1, "length_scale": -1.0}),
    ("dropout_mask", (None, (2, 3), 0.5), {}),
    ("dropout_mask", (KEY, (2, -3), 0.5), {}),
    ("dropout_mask", (KEY, (2, 3), 0.0), {}),
    ("effective_keep_prob", (2.0,), {}),
    ("mlp_init", (None, (4, 8)), {}),
    ("mlp_init", (KEY, (4,)), {}),
    ("mlp_init", (KEY, (4, 8)), {"activation": "swish"}),
    ("mlp_apply", (PARAMS, X), {"keep_probs": (0.5, 0.5)}),
    ("mlp_apply", (PARAMS, X), {"keep_probs": (0.5,)}),
    ("mlp_apply", (PARAMS, jnp.ones((2, 5))), {"deterministic": True}),
    ("mlp_apply", ({"w": 1}, X), {}),
    ("mc_predict", (PARAMS, X), {"keep_probs": (0.5, 0.5), "num_samples": 2}),
    ("mc_predict", (PARAMS, X), {"key": KEY, "keep_probs": (0.5, 0.5), "num_samples": 0}),
    ("mc_predict", (PARAMS, X), {"key": KEY, "num_samples": 2}),
    ("mc_predict", ({"w": 1}, X), {"key": KEY, "keep_probs": (0.5,), "num_samples": 2}),
    ("mc_predict", (PARAMS, X), {"key": KEY, "num_samples": 2, "apply_fn": lambda p, x, key: x, "activation": "relu"}),
    ("make_train_step", (optax.sgd(0.1),), {"l2": -1.0}),
    ("make_train_step", (optax.sgd(0.1),), {"keep_probs": 0.5}),
    ("make_train_step", (optax.sgd(0.1),), {"loss_fn": lambda *a, **k: 0.0, "activation": "relu"}),
    ("make_train_step", (optax.sgd(0.1),), {"loss_fn": lambda *a, **k: 0.0, "l2": 0.1}),
    ("evaluate", ({"w": 1}, X, Y), {}),
    ("evaluate", (PARAMS, X, Y), {"apply_fn": lambda p, x: x, "activation": "tanh"}),
    ("l2_penalty", ({"w": 1}, 0.1, 10), {}),
    ("shard_batch", (np.ones(3),), {"mesh": jdrop.data_parallel_mesh(), "axis": 2}),
    ("data_parallel_mesh", ([],), {}),
    (
        "dot_product_attention",
        (jnp.ones((1, 2, 2, 4)), jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 2, 4))),
        {"keep_prob": 0.5},
    ),
    (
        "dot_product_attention",
        (jnp.ones((1, 2, 2, 4)), jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 2, 4))),
        {"keep_prob": 0.5, "dropout_key": KEY, "block_size": 0},
    ),
    (
        "dot_product_attention",
        (jnp.ones((1, 2, 3, 4)), jnp.ones((1, 3, 2, 4)), jnp.ones((1, 3, 2, 4))),
        {"deterministic": True},
    ),
]


def named_arguments(message):
    """The argument names a message asks for as ``name=`` (``jax.random.key(...)`` is a call, not a name)."""
    return set(re.findall(r"(?<![\w.])([a-z_][a-z0-9_]*)=(?!=)", message))


@pytest.mark.parametrize(
    ("name", "args", "kwargs"), BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_CALLS)]
)
def test_errors_name_only_arguments_of_the_function_that_raised_them(name, args, kwargs):
    fn = getattr(jdrop, name)
    with pytest.raises((TypeError, ValueError)) as error:
        fn(*args, **kwargs)
    own = set(inspect.signature(fn).parameters)
    foreign = named_arguments(str(error.value)) - own
    assert not foreign, f"jdrop.{name}'s error names {sorted(foreign)}, which it does not take: {error.value}"
    # Plain mentions too, for the arguments of the family (deterministic, keep_probs, apply_fn, ...).
    for word in ("deterministic", "keep_probs", "apply_fn", "loss_fn", "broadcast_dims"):
        if re.search(rf"\b{word}\b", str(error.value)):
            assert word in own, f"jdrop.{name}'s error mentions {word}, which it does not take: {error.value}"


def test_the_bad_calls_cover_every_public_function():
    functions = {name for name in jdrop.__all__ if inspect.isfunction(getattr(jdrop, name))}
    covered = {name for name, _, _ in BAD_CALLS}
    # init_train_state and replicate take any pytree (and an optimiser or a mesh) and check nothing of their own.
    assert functions - covered == {"init_train_state", "replicate"}


def core_modules():
    """The modules that ``import jdrop`` loads: jdrop/__init__.py and the private modules (not the integrations)."""
    return [path for path in (ROOT / "jdrop").glob("*.py") if path.stem in {"__init__"} or path.stem.startswith("_")]


def test_runtime_dependencies_are_exactly_what_import_jdrop_needs():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.match(r"[\w.-]+", requirement)[0] for requirement in project["dependencies"]}
    imported = set()
    for path in core_modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"jdrop"}
    # numpy comes with jax (a dependency of jax itself); jaxlib is jax's compiled half, needed but never imported.
    assert third_party == {"jax", "numpy", "optax"}, third_party
    assert declared == {"jax", "jaxlib", "optax"}, declared
