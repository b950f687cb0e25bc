"""The drop-ins take, for every argument, the values their host takes, with the host's meaning.

One sweep, parametrised over host x class x argument x value: for each
constructor and call argument of each drop-in class (Dropout, GaussianDropout,
AlphaDropout, DropPath, ConcreteDropout) in each host (Flax NNX, Flax linen,
Equinox), the values the host's Dropout takes: Python, NumPy and JAX scalars,
bools, ints and floats, 0-d arrays, sequences of axes in any form, every kind
of key source. Each value must give what its plain Python equivalent gives:

* ``identity``: the inputs themselves, with no key source at all (so no key
  is drawn): evaluation, and rate 0;
* ``zeros``: zeros of the inputs' shape, with no key source: rate 1;
* ``noise``: for the key the host hands the layer, exactly the core function
  (``jdrop.dropout`` and its variants) with the plain value.

For the Dropout class, the host's own Dropout gets the same value and must
behave alike: the same identity and zeros, the same shape and dtype, noise
where ours has noise (masks differ by design). A value that the host itself
rejects is listed in ``HOST_REJECTS``; the drop-ins may accept it.

Then the few values the hosts' truthiness lets through but that are misuse
(a string for ``deterministic``, a bool for ``rate``), which raise naming the
argument; DropPath's ``broadcast_dims``, refused alike in every host; and the
one interface of ConcreteDropout in every host.
"""

import dataclasses
import math
import warnings
from collections.abc import Callable

import equinox as eqx
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dropin_helpers import bit_identical
from flax import nnx

import jdrop
import jdrop.equinox
import jdrop.linen
import jdrop.nnx

# The exhaustive sweep (host x class x argument x value): in the slow suite, `pytest -m slow`.
pytestmark = pytest.mark.slow

HOSTS = ("nnx", "linen", "equinox")
CLASSES = ("Dropout", "GaussianDropout", "AlphaDropout", "DropPath", "ConcreteDropout")
MODULES = {"nnx": jdrop.nnx, "linen": jdrop.linen, "equinox": jdrop.equinox}
SHAPE = (4, 6, 5)
SEED = 7
RATE = 0.25  # exact in float32 and bfloat16, so every spelling of it is the same number


@dataclasses.dataclass(frozen=True)
class Fresh:
    """A value made anew for each use: keys (the key-reuse checker is on), key streams, inputs made from ``x``."""

    make: Callable[..., object]


def v(label, value, canonical=None):
    """A value of an argument, its test id, and the plain Python value it stands for (itself by default)."""
    return (label, value, value if canonical is None else canonical)


ZERO_RATES = [
    v("0", 0),
    v("0.0", 0.0),
    v("np.float32(0)", np.float32(0)),
    v("np.int64(0)", np.int64(0)),
    v("jnp.array(0.0)", jnp.array(0.0)),
    v("jnp.array(0)", jnp.array(0)),
]
ONE_RATES = [
    v("1", 1),
    v("1.0", 1.0),
    v("np.float64(1)", np.float64(1)),
    v("np.int32(1)", np.int32(1)),
    v("jnp.array(1.0)", jnp.array(1.0)),
    v("jnp.array(1)", jnp.array(1)),
]
QUARTER_RATES = [
    v("0.25", 0.25),
    v("np.float32(0.25)", np.float32(0.25), 0.25),
    v("np.float64(0.25)", np.float64(0.25), 0.25),
    v("jnp.array(0.25)", jnp.array(0.25), 0.25),
    v("jnp.array(0.25,bf16)", jnp.array(0.25, jnp.bfloat16), 0.25),
]
TRUE_LIKE = [
    v("True", True),
    v("1", 1, True),
    v("1.0", 1.0, True),
    v("np.bool_(True)", np.bool_(True), True),
    v("np.int32(1)", np.int32(1), True),
    v("np.float32(1)", np.float32(1), True),
    v("jnp.array(True)", jnp.array(True), True),
    v("jnp.array(1)", jnp.array(1), True),
]
FALSE_LIKE = [
    v("False", False),
    v("0", 0, False),
    v("0.0", 0.0, False),
    v("np.bool_(False)", np.bool_(False), False),
    v("np.int64(0)", np.int64(0), False),
    v("jnp.array(False)", jnp.array(False), False),
    v("jnp.array(0)", jnp.array(0), False),
]
AXIS_ONE = [
    v("(1,)", (1,)),
    v("[1]", [1], (1,)),
    v("(-2,)", (-2,), (1,)),
    v("range(1,2)", range(1, 2), (1,)),
    v("(np.int64(1),)", (np.int64(1),), (1,)),
    v("(jnp.array(1),)", (jnp.array(1),), (1,)),
    v("np.array([1])", np.array([1]), (1,)),
]
NO_AXES = [
    v("()", ()),
    v("[]", [], ()),
    v("range(0)", range(0), ()),
    v("np.array([],int)", np.array([], np.int32), ()),
]
MODES = [v("'row'", "row"), v("'batch'", "batch"), v("np.str_('row')", np.str_("row"), "row")]
TEMPERATURES = [
    v("0.25", 0.25),
    v("np.float32(0.25)", np.float32(0.25), 0.25),
    v("jnp.array(0.25)", jnp.array(0.25), 0.25),
    v("1", 1, 1.0),
    v("np.int64(1)", np.int64(1), 1.0),
]
LOGIT_SHAPES = [
    v("(5,)", (5,)),
    v("[5]", [5], (5,)),
    v("(np.int64(5),)", (np.int64(5),), (5,)),
    v("(jnp.array(5),)", (jnp.array(5),), (5,)),
    v("np.array([5])", np.array([5]), (5,)),
]
FLOAT_INPUTS = [
    v("np.ndarray", Fresh(np.asarray), Fresh(lambda x: x)),
    v("bfloat16", Fresh(lambda x: x.astype(jnp.bfloat16)), Fresh(lambda x: x.astype(jnp.bfloat16))),
    v("float16", Fresh(lambda x: x.astype(jnp.float16)), Fresh(lambda x: x.astype(jnp.float16))),
    v("0-d", Fresh(lambda x: x[0, 0, 0]), Fresh(lambda x: x[0, 0, 0])),
    v("np.float32-scalar", Fresh(lambda x: np.float32(x[0, 0, 0])), Fresh(lambda x: x[0, 0, 0])),
]
# equinox.nn.Dropout computes x / q, which promotes integer and bool inputs; Flax's fails on them.
PROMOTED_INPUTS = [
    v(
        "int32",
        Fresh(lambda x: (4 * x).astype(jnp.int32)),
        Fresh(lambda x: (4 * x).astype(jnp.int32).astype(jnp.float32)),
    ),
    v(
        "np.int64",
        Fresh(lambda x: np.asarray(4 * x).astype(np.int64)),
        Fresh(lambda x: (4 * x).astype(jnp.int32).astype(jnp.float32)),
    ),
    v("bool", Fresh(lambda x: x > 0), Fresh(lambda x: (x > 0).astype(jnp.float32))),
]
NNX_STREAMS = [
    v("nnx.Rngs(dropout=7)", Fresh(lambda: nnx.Rngs(dropout=SEED))),
    v("nnx.Rngs(7)", Fresh(lambda: nnx.Rngs(SEED))),  # the default stream stands in for "dropout"
    v("nnx.Rngs(params=0,dropout=7)", Fresh(lambda: nnx.Rngs(params=0, dropout=SEED))),
    v("nnx.RngStream", Fresh(lambda: nnx.Rngs(dropout=SEED)["dropout"])),
]
NNX_CALL_RNGS = [
    *NNX_STREAMS,
    v("jax.random.key", Fresh(lambda: jax.random.key(SEED))),
    v("jax.random.PRNGKey", Fresh(lambda: jax.random.PRNGKey(SEED))),
]
KEYS = [
    v("jax.random.key", Fresh(lambda: jax.random.key(SEED))),
    v("jax.random.PRNGKey", Fresh(lambda: jax.random.PRNGKey(SEED))),
    v("np.ndarray-raw-key", Fresh(lambda: np.asarray(jax.random.PRNGKey(SEED)))),
]

#: (host, argument, value) that the host's own Dropout rejects; the drop-ins accept them.
HOST_REJECTS = {
    # eqx.nn.Dropout passes 1 - p to jax.random.bernoulli, which takes no integer probability
    # (Python 0 is special-cased, as "no dropout").
    *(("equinox", "p", label) for label in ("1", "np.int32(1)", "jnp.array(1)", "np.int64(0)", "jnp.array(0)")),
    # flax.nnx refuses a JAX array inside the (static) broadcast_dims attribute.
    ("nnx", "broadcast_dims", "(jnp.array(1),)"),
}


@dataclasses.dataclass(frozen=True)
class Case:
    host: str
    cls: str
    where: str  # "init" (constructor or attribute) or "call"
    arg: str
    label: str
    value: object
    canonical: object
    outcome: str  # "identity", "zeros" or "noise"

    @property
    def id(self):
        return f"{self.host}-{self.cls}-{self.where}:{self.arg}={self.label}"


def cases_for(host, cls):
    rate = "p" if host == "equinox" else "rate"
    switches = ["inference", "deterministic"] if host == "equinox" else ["deterministic"]
    out = []

    def add(where, arg, values, outcome):
        out.extend(Case(host, cls, where, arg, label, value, canonical, outcome) for label, value, canonical in values)

    if cls == "ConcreteDropout":
        add("init", rate, QUARTER_RATES, "noise")  # the initial rate, in (0, 1): it is learned from there
        add("init", "temperature", TEMPERATURES, "noise")
        add("init", "logit_shape", LOGIT_SHAPES, "noise")
    else:
        add("init", rate, ZERO_RATES, "identity")
        add("init", rate, QUARTER_RATES, "noise")
        if cls in ("Dropout", "DropPath"):  # Gaussian and alpha noise have no limit at rate 1
            add("init", rate, ONE_RATES, "zeros")
    for switch in switches:
        for where in ("init", "call"):
            add(where, switch, TRUE_LIKE, "identity")
            add(where, switch, FALSE_LIKE, "noise")
    if cls == "DropPath":
        add("init", "mode", MODES, "noise")
        if host != "equinox":
            add("init", "broadcast_dims", NO_AXES, "noise")  # only the empty ones; see the test below
    elif host != "equinox" or cls == "ConcreteDropout":
        add("init", "broadcast_dims", AXIS_ONE, "noise")
    if host == "nnx":
        add("init", "rngs", NNX_STREAMS, "noise")
        add("call", "rngs", NNX_CALL_RNGS, "noise")
    if host == "linen":
        add("call", "rng", KEYS, "noise")
    if host == "equinox":
        add("call", "key", KEYS, "noise")
    if host != "equinox":
        add("init", "rng_collection", [v("'noise'", "noise")], "noise")
    inputs = [value for value in FLOAT_INPUTS if not (cls == "DropPath" and host != "equinox" and "0-d" in value[0])]
    if cls == "DropPath" and host != "equinox":
        inputs = [value for value in inputs if value[0] != "np.float32-scalar"]  # mode="row" needs axis 0
    add("call", "inputs" if host != "equinox" else "x", inputs, "noise")
    if host == "equinox":
        add("call", "x", PROMOTED_INPUTS, "noise")
    return out


CASES = [case for host in HOSTS for cls in CLASSES for case in cases_for(host, cls)]


def canonical_arguments(case):
    """The constructor arguments, as plain Python values, that the case's layer means; the core function's too."""
    if case.host == "equinox":
        plain = {"p": RATE}
        if case.cls == "DropPath":
            plain["mode"] = "batch"
    else:
        plain = {"rate": RATE, "broadcast_dims": ()}
        if case.cls == "DropPath":
            plain = {"rate": RATE, "mode": "row"}
    if case.cls == "ConcreteDropout":
        plain |= {"logit_shape": (), "temperature": 0.1, "broadcast_dims": ()}
    if case.where == "init" and case.arg in plain:
        plain[case.arg] = case.canonical
    return plain


def core(case, key, x):
    """What the layer must return for ``key``: the core function with the case's plain values."""
    plain = canonical_arguments(case)
    rate = plain.get("rate", plain.get("p"))
    axes = plain.get("broadcast_dims", ())
    if case.cls == "Dropout":
        return jdrop.dropout(key, x, 1 - rate, broadcast_dims=axes)
    if case.cls == "GaussianDropout":
        return jdrop.gaussian_dropout(key, x, 1 - rate, broadcast_dims=axes)
    if case.cls == "AlphaDropout":
        return jdrop.alpha_dropout(key, x, 1 - rate, broadcast_dims=axes)
    if case.cls == "DropPath":
        return jdrop.drop_path(key, x, 1 - rate, mode=plain["mode"])
    keep_logit = jnp.full(plain["logit_shape"], math.log((1 - rate) / rate), jnp.float32)
    return jdrop.concrete_dropout(key, x, keep_logit, temperature=plain["temperature"], broadcast_dims=axes)


def arguments(case, x):
    """The constructor and call keyword arguments of the case (with fresh values made), and the inputs."""
    value = case.value.make() if isinstance(case.value, Fresh) and case.arg not in ("inputs", "x") else case.value
    init, call = {}, {}
    if case.host == "equinox":
        init["p"] = RATE
    else:
        init["rate"] = RATE
        if case.host == "linen" and not (case.where == "call" and case.arg == "deterministic"):
            init["deterministic"] = False  # linen's default is None: it must be set in one place
        if case.host == "nnx" and case.where == "call" and case.arg == "deterministic":
            init["deterministic"] = None
    if case.arg in ("inputs", "x"):
        x = case.value.make(x)
    elif case.where == "init":
        init[case.arg] = value
    else:
        call[case.arg] = value
    return init, call, x


def canonical_inputs(case, x):
    if case.arg in ("inputs", "x"):
        return case.canonical.make(x)
    return x


def fresh_twin(case):
    """The same key source as the case's, made anew, to compute the key the host hands the layer."""
    if case.arg in ("rngs", "rng", "key"):
        return case.value.make()
    return None


def run_nnx(case, cls, init, call, x):
    """Runs the NNX layer; returns its output and the key it was handed (None if it needs none)."""
    collection = init.get("rng_collection", "dropout")
    needs_key = case.outcome == "noise"
    if "rngs" not in init and "rngs" not in call and needs_key:
        init["rngs"] = nnx.Rngs(**{collection: SEED})
    layer = cls(**init)
    out = layer(x, **call)
    if not needs_key:
        return out, None
    if "rngs" in call:
        source = fresh_twin(case)
        if isinstance(source, nnx.Rngs):
            return out, source[collection]()
        return out, source() if isinstance(source, nnx.RngStream) else source
    source = fresh_twin(case) if case.arg == "rngs" else nnx.Rngs(**{collection: SEED})
    stream = source[collection] if isinstance(source, nnx.Rngs) else source
    assert layer.rngs.count[...] == 1  # one key drawn, as Flax draws it
    return out, stream.fork()()


def run_linen(case, cls, init, call, x):
    collection = init.get("rng_collection", "dropout")
    layer = cls(**init)
    variables = {}
    if case.cls == "ConcreteDropout":
        variables = layer.init(jax.random.key(0), method=lambda m: m.keep_logit)
    if case.outcome != "noise":  # no rngs at all: a layer that asked for a key would raise
        return layer.apply(variables, x, **call), None
    if "rng" in call:
        return layer.apply(variables, x, **call), fresh_twin(case)
    out = layer.apply(variables, x, **call, rngs={collection: jax.random.key(SEED)})
    key = nn.Module.apply(
        layer, variables, rngs={collection: jax.random.key(SEED)}, method=lambda m: m.make_rng(m.rng_collection)
    )
    return out, key


def run_equinox(case, cls, init, call, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the deprecated deterministic= warns, as in Equinox
        layer = cls(**init)
        if case.outcome != "noise":  # no key: a layer that needed one would raise
            return layer(x, **call), None
        if "key" in call:
            return layer(x, **call), fresh_twin(case)
        return layer(x, key=jax.random.key(SEED), **call), jax.random.key(SEED)


RUNNERS = {"nnx": run_nnx, "linen": run_linen, "equinox": run_equinox}


def run_host_dropout(case, init, call, x):
    """The host's own Dropout with the same arguments (and a key source always: it may ask for one)."""
    init, call = dict(init), dict(call)
    if case.host == "nnx":
        collection = init.get("rng_collection", "dropout")
        if "rngs" not in init and "rngs" not in call:
            init["rngs"] = nnx.Rngs(**{collection: SEED})
        return nnx.Dropout(**init)(x, **call)
    if case.host == "linen":
        collection = init.get("rng_collection", "dropout")
        rngs = {} if "rng" in call else {"rngs": {collection: jax.random.key(SEED)}}
        return nn.Dropout(**init).apply({}, x, **call, **rngs)
    call.setdefault("key", jax.random.key(SEED))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return eqx.nn.Dropout(**init)(x, **call)


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_every_argument_takes_the_values_its_host_takes(case):
    x = jax.random.normal(jax.random.key(0), SHAPE)
    init, call, inputs = arguments(case, x)
    out, key = RUNNERS[case.host](case, getattr(MODULES[case.host], case.cls), dict(init), dict(call), inputs)
    plain_x = canonical_inputs(case, x)
    if case.outcome == "identity":
        assert out is inputs  # the inputs themselves, as the hosts return them
    elif case.outcome == "zeros":
        bit_identical(out, jnp.zeros_like(plain_x))
        assert out.dtype == plain_x.dtype
    else:
        expected = core(case, key, plain_x)
        assert out.shape == expected.shape and out.dtype == expected.dtype
        bit_identical(out, expected)

    if case.cls != "Dropout":
        return
    try:
        # Standard promotion, as users run the host: the hosts mix a bfloat16 rate and float32 inputs.
        with jax.numpy_dtype_promotion("standard"):
            host_init, host_call, _ = arguments(case, x)  # key sources made anew
            host_out = run_host_dropout(case, host_init, host_call, inputs)
    except Exception:  # the host's own errors are of any type
        assert (case.host, case.arg, case.label) in HOST_REJECTS, "the host rejects a value not listed as such"
        return
    assert np.shape(host_out) == np.shape(out) and jnp.result_type(host_out) == jnp.result_type(out)
    if case.outcome == "identity":
        bit_identical(host_out, inputs)
    elif case.outcome == "zeros":
        bit_identical(host_out, jnp.zeros_like(plain_x))
    else:
        assert not np.array_equal(np.asarray(host_out), np.asarray(plain_x))  # the host drops units too


def test_the_sweep_covers_every_argument_of_every_class():
    """Each constructor and call parameter of each class is swept (or named here as needing no sweep)."""
    import inspect

    no_values = {"self"}
    for host in HOSTS:
        for cls_name in CLASSES:
            cls = getattr(MODULES[host], cls_name)
            swept = {case.arg for case in CASES if case.host == host and case.cls == cls_name}
            if host == "linen":
                parameters = {f.name for f in dataclasses.fields(cls) if f.name not in ("parent", "name")}
            else:
                parameters = set(inspect.signature(cls.__init__).parameters)
            parameters |= set(inspect.signature(cls.__call__).parameters)
            if cls_name == "DropPath" and host == "equinox":
                parameters.discard("broadcast_dims")  # only () is accepted: test_drop_path_refuses_broadcast_dims_...
            assert parameters - no_values - swept == set(), (host, cls_name)


# Values whose host truthiness or int-ness lets them through, but which are misuse: clear errors here.

MISREAD = [
    v("'False'", "False"),  # a non-empty string is true: the host would evaluate
    v("np.array([True])", np.array([True])),
    v("None-like object", object()),
]


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(("label", "value", "_"), MISREAD, ids=[label for label, _, _ in MISREAD])
def test_a_switch_that_is_not_a_bool_raises_naming_it(host, label, value, _):
    switch = "inference" if host == "equinox" else "deterministic"
    module = MODULES[host]
    x = jnp.ones(SHAPE)
    for cls_name in CLASSES:
        cls = getattr(module, cls_name)
        with pytest.raises(TypeError, match=f"{switch} must be a bool"):
            if host == "linen":
                cls(0.25, deterministic=value)
            else:
                cls(0.25, **{switch: value})
        with pytest.raises(TypeError, match=f"{switch} must be a bool"):
            if host == "linen":
                layer = cls(0.25)
                variables = (
                    layer.init(jax.random.key(0), method=lambda m: m.keep_logit) if "Concrete" in cls_name else {}
                )
                layer.apply(variables, x, value, rngs={"dropout": jax.random.key(1)})
            elif host == "nnx":
                cls(0.25, rngs=nnx.Rngs(dropout=0))(x, deterministic=value)
            else:
                cls(0.25)(x, key=jax.random.key(1), inference=value)


def test_a_traced_switch_raises_naming_it_before_any_key_is_drawn():
    layer = jdrop.equinox.Dropout(0.5)
    x = jnp.ones(SHAPE)
    # jax.jit (not eqx.filter_jit) traces the bool field; Equinox's own Dropout fails on it too.
    with pytest.raises(TypeError, match="inference must be concrete"):
        jax.jit(lambda layer, x: layer(x, key=jax.random.key(0)))(layer, x)
    nnx_layer = jdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
    with pytest.raises(TypeError, match="deterministic must be concrete"):
        jax.jit(lambda d: nnx_layer(x, deterministic=d))(jnp.array(True))
    assert nnx_layer.rngs.count[...] == 0


@pytest.mark.parametrize("host", HOSTS)
def test_a_bool_rate_raises_naming_it(host):
    # Flax reads rate=True as 1 (drop everything); a bool where a probability belongs is a mistake.
    rate = "p" if host == "equinox" else "rate"
    for cls_name in CLASSES:
        with pytest.raises(TypeError, match=f"{rate} must be"):
            getattr(MODULES[host], cls_name)(True)


@pytest.mark.parametrize("host", ("nnx", "linen"))
def test_integer_inputs_which_flax_cannot_drop_out_raise_naming_them(host):
    x = jnp.ones(SHAPE, jnp.int32)
    for cls_name in CLASSES:
        cls = getattr(MODULES[host], cls_name)
        with pytest.raises(TypeError, match="inputs must have a floating or complex dtype"):
            if host == "nnx":
                cls(0.25, rngs=nnx.Rngs(dropout=0))(x)
            else:
                layer = cls(0.25, deterministic=False)
                variables = (
                    layer.init(jax.random.key(0), method=lambda m: m.keep_logit) if "Concrete" in cls_name else {}
                )
                layer.apply(variables, x, rngs={"dropout": jax.random.key(1)})


# DropPath's broadcast_dims: refused alike in every host.


def drop_path_error(host, broadcast_dims):
    with pytest.raises(Exception) as error:  # of any type: the types are compared
        MODULES[host].DropPath(0.25, broadcast_dims=broadcast_dims)
    return type(error.value), str(error.value)


@pytest.mark.parametrize("broadcast_dims", [(1,), [0, 1], np.array([2])], ids=["(1,)", "[0,1]", "np.array([2])"])
def test_drop_path_refuses_broadcast_dims_with_one_error_in_every_host(broadcast_dims):
    errors = {host: drop_path_error(host, broadcast_dims) for host in HOSTS}
    assert len(set(errors.values())) == 1, errors
    kind, message = errors["nnx"]
    assert kind is TypeError and message.startswith("DropPath takes no broadcast_dims: its mode sets")
    for host in HOSTS:  # and the empty ones are accepted everywhere
        MODULES[host].DropPath(0.25, broadcast_dims=())


# ConcreteDropout: one interface in every host.


def concrete_views(host, rate):
    """keep_prob, the initial rate's attribute, regularizer and keep_logit of a ConcreteDropout of ``host``."""
    if host == "nnx":
        layer = jdrop.nnx.ConcreteDropout(rate, logit_shape=(4,), rngs=nnx.Rngs(dropout=0))
        return layer.keep_prob, layer.rate, layer.regularizer, layer.keep_logit[...]
    if host == "linen":
        layer = jdrop.linen.ConcreteDropout(rate, logit_shape=(4,))
        variables = layer.init(jax.random.key(0), jnp.ones((2, 4)), deterministic=True)
        bound = layer.bind(variables)

        def regularizer(kernel, **kwargs):
            by_apply = layer.apply(variables, kernel, **kwargs, method="regularizer")
            bit_identical(by_apply, bound.regularizer(kernel, **kwargs))
            return by_apply

        return bound.keep_prob, layer.rate, regularizer, variables["params"]["keep_logit"]
    layer = jdrop.equinox.ConcreteDropout(rate, logit_shape=(4,))
    return layer.keep_prob, layer.p, layer.regularizer, layer.keep_logit


@pytest.mark.parametrize("host", HOSTS)
def test_concrete_dropout_has_one_interface_in_every_host(host):
    import inspect

    host_dropout = {"nnx": nnx.Dropout, "linen": nn.Dropout, "equinox": eqx.nn.Dropout}[host]
    cls = MODULES[host].ConcreteDropout
    assert issubclass(cls, host_dropout)  # host tooling that looks for Dropout layers finds it
    rate_name = "p" if host == "equinox" else "rate"
    parameters = inspect.signature(cls.__init__).parameters
    assert list(parameters)[1] == rate_name  # the host's name for the rate, first, as in the host's Dropout
    assert parameters[rate_name].default == 0.1
    keep_prob, initial_rate, regularizer, keep_logit = concrete_views(host, 0.2)
    assert initial_rate == 0.2
    np.testing.assert_allclose(keep_prob, np.full(4, 0.8), rtol=1e-6)
    kernel = jax.random.normal(jax.random.key(1), (4, 3))
    expected = jdrop.concrete_dropout_regularizer(keep_logit, kernel, num_examples=100, length_scale=0.5)
    bit_identical(regularizer(kernel, num_examples=100, length_scale=0.5), expected)
    parameters = inspect.signature(cls.regularizer).parameters
    assert [(p.name, p.kind) for p in parameters.values()][1:] == [
        ("kernel", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        ("num_examples", inspect.Parameter.KEYWORD_ONLY),
        ("length_scale", inspect.Parameter.KEYWORD_ONLY),
    ]
