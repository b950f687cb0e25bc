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


# The drop-in modules' attention functions and layer constructors (jdrop.nnx.Dropout, ...): every
# argument that they check made wrong in turn. The names are looked up in jdrop ("nnx.Dropout").
Q, KV = jnp.ones((1, 2, 2, 4)), jnp.ones((1, 3, 2, 4))
LAYER_ARGUMENTS = {  # the host's name for the rate and its switch, and each class's own extra arguments
    "nnx": ("rate", "deterministic"),
    "linen": ("rate", "deterministic"),
    "equinox": ("p", "inference"),
}
BAD_CALLS += [
    (
        "dot_product_attention",
        (Q, KV, KV),
        {"keep_prob": 0.5, "dropout_key": KEY, "broadcast_dims": (7,)},
    ),
    ("dot_product_attention", (Q, KV, KV), {"keep_prob": 0.5, "dropout_key": "not a key"}),
    *[
        (f"{host}.dot_product_attention", (Q, KV, KV), kwargs)
        for host in ("nnx", "linen")
        for kwargs in (
            {"dropout_rate": 1.5, "dropout_rng": KEY},
            {"dropout_rate": 0.5, "dropout_rng": None},
            {"dropout_rate": 0.5, "dropout_rng": KEY, "deterministic": "no"},
            {"dropout_rate": 0.5, "dropout_rng": KEY, "broadcast_dropout": "no"},
            {"dropout_rate": 0.5, "dropout_rng": KEY, "mask": jnp.ones((5, 5))},
        )
    ],
    *[
        (f"{host}.{cls}", args, kwargs)
        for host, (rate, switch) in LAYER_ARGUMENTS.items()
        for cls in ("Dropout", "GaussianDropout", "AlphaDropout", "DropPath", "ConcreteDropout")
        for args, kwargs in (
            ((1.5,), {}),
            ((True,), {}),
            ((0.5,), {switch: "no"}),
            *([((0.5,), {"broadcast_dims": 5})] if host != "equinox" or cls == "ConcreteDropout" else []),
            *([((0.5,), {"mode": "column"})] if cls == "DropPath" else []),
            *([((0.5,), {"logit_shape": (-1,)}), ((0.5,), {"temperature": 0.0})] if cls == "ConcreteDropout" else []),
        )
    ],
    ("equinox.MultiheadAttention", (2, 8), {"dropout_p": 1.5, "key": KEY}),
    ("equinox.MultiheadAttention", (2, 8), {"dropout_p": 0.5, "inference": "no", "key": KEY}),
]

#: Argument names of the public API that are not English words: a message that mentions one must be
#: from a function that takes it.
ARGUMENT_WORDS = (
    "x", "inputs", "keep_prob", "keep_probs", "keep_logit", "logit_shape", "broadcast_dims", "deterministic",
    "inference", "apply_fn", "loss_fn", "dropout_key", "dropout_rng", "dropout_rate", "dropout_p",
    "broadcast_dropout", "rng_collection", "temperature", "num_examples", "length_scale",
)  # fmt: skip


def named_arguments(message):
    """The argument names a message asks for as ``name=`` (``jax.random.key(...)`` is a call, not a name)."""
    return set(re.findall(r"(?<![\w.])([a-z_][a-z0-9_]*)=(?!=)", message))


def subject(message):
    """The argument a message is about, when it opens with one: "shape must ..." is about ``shape``."""
    match = re.match(r"([a-z_][a-z0-9_]*) (?:must|is|has|contains)\b", message)
    return {match[1]} if match else set()


def resolve(name):
    """``jdrop.<name>``: a public function, or a drop-in module's function or class ("nnx.Dropout")."""
    obj = jdrop
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def own_arguments(fn):
    if not inspect.isclass(fn):
        return set(inspect.signature(fn).parameters)
    # A layer: its constructor's arguments (a linen module's fields), and its call's, which its errors may name.
    return set(inspect.signature(fn.__init__).parameters) | set(inspect.signature(fn.__call__).parameters)


@pytest.mark.parametrize(
    ("name", "args", "kwargs"), BAD_CALLS, ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(BAD_CALLS)]
)
def test_errors_name_only_arguments_of_the_function_that_raised_them(name, args, kwargs):
    fn = resolve(name)
    with pytest.raises((TypeError, ValueError)) as error:
        fn(*args, **kwargs)
    message = str(error.value)
    own = own_arguments(fn)
    foreign = (named_arguments(message) | subject(message)) - own
    assert not foreign, f"jdrop.{name}'s error names {sorted(foreign)}, which it does not take: {message}"
    # Plain mentions too, for the argument names that are not English words.
    for word in ARGUMENT_WORDS:
        if re.search(rf"(?<![\w.`]){word}(?![\w(`])", message):
            assert word in own, f"jdrop.{name}'s error mentions {word}, which it does not take: {message}"


def test_the_bad_calls_cover_every_public_function():
    functions = {name for name in jdrop.__all__ if inspect.isfunction(getattr(jdrop, name))}
    for host in ("nnx", "linen", "equinox"):
        module = getattr(jdrop, host)
        functions |= {f"{host}.{name}" for name in module.__all__}  # its classes and functions
    covered = {name for name, _, _ in BAD_CALLS}
    # init_train_state and replicate take any pytree (and an optimiser or a mesh) and check nothing of their own.
    assert functions - covered == {"init_train_state", "replicate"}


# One normalisation rule per kind of argument, in every public function.

AXES_FORMS = [(1,), [1], range(1, 2), np.array([1]), (np.int64(1),), (jnp.array(1),)]
AXES_FUNCTIONS = {  # a call with broadcast_dims=axes: x of shape (2, 4), attention weights of shape (N, T, S)
    "dropout": lambda key, axes: jdrop.dropout(key, X, 0.5, broadcast_dims=axes),
    "gaussian_dropout": lambda key, axes: jdrop.gaussian_dropout(key, X, 0.5, broadcast_dims=axes),
    "alpha_dropout": lambda key, axes: jdrop.alpha_dropout(key, X, 0.5, broadcast_dims=axes),
    "concrete_dropout": lambda key, axes: jdrop.concrete_dropout(key, X, 0.0, broadcast_dims=axes),
    "dot_product_attention": lambda key, axes: jdrop.dot_product_attention(
        Q[0], KV[0], KV[0], dropout_key=key, keep_prob=0.5, broadcast_dims=axes
    ),
}


@pytest.mark.parametrize("name", AXES_FUNCTIONS)
def test_axes_take_one_form_everywhere(name):
    # Any sequence of integers: a tuple, a list, a range, a 1-d integer array, NumPy and JAX integers;
    # what the drop-ins take, as their hosts do.
    fn = AXES_FUNCTIONS[name]
    reference = fn(jax.random.key(3), (1,))
    for axes in AXES_FORMS:
        np.testing.assert_array_equal(fn(jax.random.key(3), axes), reference, err_msg=repr(axes))
    for bad in (1, "1", (1.0,), (True,)):
        with pytest.raises(TypeError, match="broadcast_dims must be a sequence of int axes"):
            fn(jax.random.key(3), bad)
    np.testing.assert_array_equal(
        jdrop.dropout_mask(jax.random.key(4), np.array([2, 3]), 0.5), jdrop.dropout_mask(jax.random.key(4), (2, 3), 0.5)
    )


NOT_A_KEY = "not a key"


def family_call(name, kwargs):
    """``jdrop.<name>`` with a key that is no key, at keep probability 1 (``kwargs`` None) or with ``kwargs``."""
    return lambda: getattr(jdrop, name)(NOT_A_KEY, X, 1.0 if kwargs is None else 0.5, **(kwargs or {}))


#: Calls that draw nothing (evaluation, keep probability 1), with a key that is no key.
NOTHING_DRAWN = {
    **{
        f"{name}-{how}": family_call(name, kwargs)
        for name in ("dropout", "gaussian_dropout", "alpha_dropout", "drop_path", "activation_dropout")
        for how, kwargs in (("keep_prob=1", None), ("deterministic", {"deterministic": True}))
    },
    "concrete_dropout-deterministic": lambda: jdrop.concrete_dropout(NOT_A_KEY, X, 0.0, deterministic=True),
    "dropout_mask-keep_prob=1": lambda: jdrop.dropout_mask(NOT_A_KEY, (2, 3), 1.0),
    "mlp_apply-deterministic": lambda: jdrop.mlp_apply(PARAMS, X, key=NOT_A_KEY, deterministic=True),
    "mc_predict-keep_probs=1": lambda: jdrop.mc_predict(PARAMS, X, key=NOT_A_KEY, keep_probs=(1.0, 1.0), num_samples=2),
    "dot_product_attention-deterministic": lambda: jdrop.dot_product_attention(
        Q, KV, KV, dropout_key=NOT_A_KEY, keep_prob=0.5, deterministic=True
    ),
}


@pytest.mark.parametrize("call", NOTHING_DRAWN.values(), ids=NOTHING_DRAWN.keys())
def test_a_key_that_is_given_is_checked_even_when_nothing_is_drawn(call):
    # None is accepted where nothing is drawn; anything else must be a key, as dropout_mask always required.
    with pytest.raises(TypeError, match="must be a PRNG key"):
        call()


def test_no_key_is_needed_where_nothing_is_drawn():
    np.testing.assert_array_equal(jdrop.dropout(None, X, 1.0), X)
    np.testing.assert_array_equal(jdrop.dropout_mask(None, (2, 3), 1.0), np.ones((2, 3), bool))
    with pytest.raises(ValueError, match="key is None"):
        jdrop.dropout_mask(None, (2, 3), 0.5)


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


def test_argument_rules_at_their_edges():
    # The shared rules of jdrop._checks on the values that reach their rarer branches.
    x, key = jnp.ones((2, 3)), jax.random.key(0)
    with pytest.raises(ValueError, match="keep_prob must be a scalar"):
        jax.jit(lambda p: jdrop.dropout(key, x, p))(jnp.full((2,), 0.5))
    with pytest.raises(TypeError, match="keep_prob must be"):
        jax.jit(lambda p: jdrop.dropout(key, x, p))(jnp.array(True))
    with pytest.raises(TypeError, match="keep_prob must be"):
        jdrop.dropout(key, x, [[0.5], [0.5, 0.5]])  # ragged: not an array
    with pytest.raises(TypeError, match="broadcast_dims"):
        jdrop.dropout(key, x, 0.5, broadcast_dims=np.array(1))  # 0-d: not a sequence
    # A 0-d array switch reads as a bool, as the hosts read it.
    np.testing.assert_array_equal(jdrop.dropout(None, x, 0.5, deterministic=jnp.array(True)), x)
    with pytest.raises(AttributeError, match="no_such_name"):
        jdrop.no_such_name  # noqa: B018
