"""The drop-ins take inputs of every dtype their host's Dropout takes, in every mode.

One sweep, parametrised over host x class x dtype x mode: for each drop-in
class (Dropout, GaussianDropout, AlphaDropout, DropPath, ConcreteDropout) of
each host (Flax NNX, Flax linen, Equinox), inputs of each dtype (int32,
bool, bfloat16, float16, float32, float64 under ``jax.enable_x64``,
complex64) in training, evaluation, at rate 0 and at rate 1, next to the
host's own Dropout with the same arguments:

* where the host returns, the drop-in returns, with the host's shape and dtype;
* where no randomness is involved (evaluation, rate 0, rate 1), it returns
  what the host returns: the inputs themselves, or the same zeros;
* in training, it returns the core function's result for the key it was
  handed (``jdrop.dropout`` and its variants); for complex inputs, the noise
  of the real and imaginary parts' computation applied to the complex value;
* where the host raises (Flax cannot drop integer or bool inputs out), the
  drop-in raises a TypeError that names the inputs.

The one exception, ``REAL_ONLY``: alpha dropout's saturation value and affine
correction are SELU's, defined for real activations, so AlphaDropout raises
for complex inputs in training.

Inputs are tiny and of one shape, and every call is eager: the sweep's cost is
compiling each primitive once per dtype (float64 under x64 recompiles the key
handling too), some 15 s of CPU time in all.
"""

import contextlib
import math
import warnings

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

HOSTS = ("nnx", "linen", "equinox")
CLASSES = ("Dropout", "GaussianDropout", "AlphaDropout", "DropPath", "ConcreteDropout")
MODULES = {"nnx": jdrop.nnx, "linen": jdrop.linen, "equinox": jdrop.equinox}
# (name, dtype, needs x64)
DTYPES = (
    ("int32", jnp.int32, False),
    ("bool", jnp.bool_, False),
    ("bfloat16", jnp.bfloat16, False),
    ("float16", jnp.float16, False),
    ("float32", jnp.float32, False),
    ("float64", jnp.float64, True),
    ("complex64", jnp.complex64, False),
)
MODES = {"train": 0.25, "eval": 0.25, "rate0": 0.0, "rate1": 1.0}
SHAPE = (3, 4)  # axis 0 is the batch of Flax's DropPath (mode="row")
SEED = 5
REAL_ONLY = {"AlphaDropout"}


def cases():
    for host in HOSTS:
        for cls in CLASSES:
            for dtype_name, _, _ in DTYPES:
                for mode in MODES:
                    if cls == "ConcreteDropout" and mode in ("rate0", "rate1"):
                        continue  # its rate is learned, from an initial value in (0, 1)
                    if cls in ("GaussianDropout", "AlphaDropout") and mode == "rate1":
                        continue  # no limit at rate 1: refused by the constructor
                    yield pytest.param(host, cls, dtype_name, mode, id=f"{host}-{cls}-{dtype_name}-{mode}")


def make_inputs(dtype):
    values = np.array([[-2.5, 0.0, 1.0, 3.0], [0.5, -1.0, 2.0, 0.0], [4.0, 1.5, -0.5, 6.0]])
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.asarray(values + 1j * values[::-1], dtype)
    if dtype == jnp.bool_:
        return jnp.asarray(values > 0)
    if jnp.issubdtype(dtype, jnp.integer):
        return jnp.asarray(np.abs(values) * 2, dtype)
    return jnp.asarray(values, dtype)


def call(host, cls, rate, mode, x, module=None):
    """The class ``cls`` of ``module`` (the host's own Dropout if None) at ``rate``, called on ``x`` in ``mode``.

    The key is handed to the call (``rngs=``, ``rng=``, ``key=``): ``jax.random.key(SEED)``.
    """
    train = mode != "eval"
    key = jax.random.key(SEED)
    if host == "nnx":
        layer = nnx.Dropout(rate) if module is None else getattr(module, cls)(rate)
        return layer(x, deterministic=not train, rngs=key)
    if host == "linen":
        layer = nn.Dropout(rate) if module is None else getattr(module, cls)(rate)
        concrete = module is not None and cls == "ConcreteDropout"
        variables = layer.init(jax.random.key(0), method=lambda m: m.keep_logit) if concrete else {}
        return layer.apply(variables, x, not train, rng=key)
    layer = eqx.nn.Dropout(rate) if module is None else getattr(module, cls)(rate)
    return layer(x, key=key, inference=not train)


def core(host, cls, rate, x):
    """What the drop-in must return in training for ``jax.random.key(SEED)``, on a real floating ``x``."""
    key, keep = jax.random.key(SEED), 1 - rate
    if cls == "Dropout":
        return jdrop.dropout(key, x, keep)
    if cls == "GaussianDropout":
        return jdrop.gaussian_dropout(key, x, keep)
    if cls == "AlphaDropout":
        return jdrop.alpha_dropout(key, x, keep)
    if cls == "DropPath":
        return jdrop.drop_path(key, x, keep, mode="batch" if host == "equinox" else "row")
    keep_logit = jnp.float32(math.log(keep / rate))
    return jdrop.concrete_dropout(key, x, keep_logit)


def expected_training_output(host, cls, rate, x):
    if jnp.issubdtype(x.dtype, jnp.complexfloating):  # the same noise on the real and the imaginary part
        return jax.lax.complex(core(host, cls, rate, x.real), core(host, cls, rate, x.imag))
    if not jnp.issubdtype(x.dtype, jnp.floating):  # Equinox promotes, as its x / q does
        x = x.astype(jax.dtypes.canonicalize_dtype(np.float64))
    return core(host, cls, rate, x)


def outcome(fn):
    """``fn()``'s result, or the exception it raised."""
    try:
        return fn()
    except Exception as error:  # the host's own errors are of any type
        return error


@pytest.mark.parametrize(("host", "cls", "dtype_name", "mode"), list(cases()))
def test_every_input_dtype_the_host_takes_is_taken(host, cls, dtype_name, mode):
    _, dtype, x64 = next(d for d in DTYPES if d[0] == dtype_name)
    rate = MODES[mode]
    with jax.enable_x64(True) if x64 else contextlib.nullcontext(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Flax's and Equinox's own deprecation warnings
        x = make_inputs(dtype)
        assert x.dtype == dtype
        # Standard promotion, as users run the host: Flax divides a bfloat16 array by a Python float.
        with jax.numpy_dtype_promotion("standard"):
            host_out = outcome(lambda: call(host, cls, rate, mode, x))
        out = outcome(lambda: call(host, cls, rate, mode, x, MODULES[host]))
        inputs = "x" if host == "equinox" else "inputs"
        if isinstance(host_out, Exception) or (mode == "train" and cls in REAL_ONLY and dtype_name.startswith("c")):
            # Flax cannot drop integer or bool inputs out; jdrop says so, naming them.
            assert isinstance(out, TypeError), out
            assert str(out).startswith(f"{inputs} must"), out
            return
        assert not isinstance(out, Exception), f"the host returns, the drop-in raises {out!r}"
        assert out.shape == host_out.shape and out.dtype == host_out.dtype, (out.dtype, host_out.dtype)
        if mode in ("eval", "rate0"):
            assert host_out is x and out is x  # the inputs themselves
        elif mode == "rate1":
            bit_identical(out, host_out)
        elif cls in ("GaussianDropout", "ConcreteDropout"):  # continuous noise: up to float rounding
            np.testing.assert_allclose(out, expected_training_output(host, cls, rate, x), rtol=1e-6)
        else:
            bit_identical(out, expected_training_output(host, cls, rate, x))
