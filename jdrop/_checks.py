"""Argument checks that several modules share: each raises before any work, naming the argument and what it accepts.

One rule per kind of argument, for every public function and drop-in:

* real scalars (rates, keep probabilities, temperatures): :func:`_real_scalar`;
* sequences of ints (shapes, axes): :func:`_int_sequence`, any iterable of integers;
* switches (``deterministic``, ``inference``): :func:`_flag`, read as Flax and Equinox read them;
* keys: :func:`_as_key` where one is needed, :func:`_key_if_given` where it may not be:
  a key that is given is always checked;
* what noise applies to: :func:`_check_noise_input`, floating or complex, and
  any dtype where nothing is applied.

Also the one dtype rule they compute by, :func:`_compute_dtype` and :func:`_times`.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

KeyLike = jax.Array  # a typed key (jax.random.key) or a raw uint32 key (jax.random.PRNGKey)

#: What a function with a ``deterministic`` argument accepts instead of a key, for ``_as_key(or_else=...)``.
OR_DETERMINISTIC = "set deterministic=True for evaluation"


def _real_scalar(value: ArrayLike, name: str, accepted: str) -> float | None:
    """The one rule for a real scalar argument: returns it as a float, or None when it is traced.

    Python, NumPy and JAX scalars and 0-d arrays of any integer or floating
    dtype are accepted; bools, strings, complex numbers and arrays with more
    than one entry are not. A traced value has its shape and dtype checked
    here and its range by the caller's computation. ``accepted`` says what
    the argument is, for the error message (e.g. "a float in (0, 1]").
    """
    if isinstance(value, jax.core.Tracer):
        if value.shape != ():
            raise ValueError(f"{name} must be a scalar, got a traced array of shape {value.shape}.")
        if not (jnp.issubdtype(value.dtype, jnp.floating) or jnp.issubdtype(value.dtype, jnp.integer)):
            raise TypeError(f"{name} must be {accepted}, got a traced value of dtype {value.dtype}.")
        return None
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name} must be {accepted}, got the bool {value!r}.")
    if isinstance(value, numbers.Real):
        return float(value)
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}.") from error
    # jnp.issubdtype knows bfloat16 and the other ml_dtypes; np.issubdtype does not.
    if not (jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)):
        what = f"an array of dtype {array.dtype}" if isinstance(value, np.ndarray | jax.Array) else repr(value)
        raise TypeError(f"{name} must be {accepted}, got {what}.")
    if array.shape != ():
        raise ValueError(f"{name} must be a scalar, got an array of shape {array.shape}.")
    return float(array)


def _check_keep_prob(keep_prob: ArrayLike, name: str = "keep_prob") -> float | None:
    """Validates ``keep_prob``; returns it as a float, or None when it is traced.

    A traced value cannot be checked while tracing;
    :func:`jdrop._dropout._threshold_and_effective` turns an out-of-range
    traced value into NaN outputs instead.
    """
    value = _real_scalar(keep_prob, name, "a real number in (0, 1]")
    # Written so that NaN fails the test too.
    if value is not None and not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the probability of keeping a unit), got {value}.")
    return value


def _key_if_given(key: KeyLike | None, name: str = "key") -> jax.Array | None:
    """The one rule for a key where none may be needed: None stays None, anything else must be a key (:func:`_as_key`).

    A function that draws nothing (evaluation, keep probability 1) still
    checks a key it is given, so that a wrong one is found on the first call,
    not on the first call that drops.
    """
    return None if key is None else _as_key(key, name)


def _as_key(key: KeyLike | None, name: str = "key", *, or_else: str | None = None) -> jax.Array:
    """Returns ``key`` as a single typed key, accepting legacy raw uint32 keys.

    ``or_else`` completes the missing-key message with what else the caller
    accepts (e.g. "set deterministic=True for evaluation"); it must name only
    the caller's own arguments.
    """
    if key is None:
        alternative = f", or {or_else}" if or_else else ""
        raise ValueError(
            f"{name} is None, but a PRNG key is needed here: pass {name}=jax.random.key(...) "
            f"(a fresh one for every call){alternative}."
        )
    if not isinstance(key, jax.Array | np.ndarray):
        raise TypeError(
            f"{name} must be a PRNG key from jax.random.key or jax.random.PRNGKey, got {type(key).__name__}."
        )
    if not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.dtype != jnp.uint32:
            raise TypeError(
                f"{name} must be a PRNG key from jax.random.key or jax.random.PRNGKey, "
                f"got an array of dtype {key.dtype}."
            )
        try:
            key = jax.random.wrap_key_data(key)
        except (TypeError, ValueError) as error:
            raise ValueError(
                f"{name} has shape {key.shape}, which is not a single raw key of the default PRNG implementation."
            ) from error
    if key.shape != ():
        raise ValueError(
            f"{name} must be a single key, got a batch of keys of shape {key.shape}: use jax.vmap to map over keys."
        )
    return key


def _int_sequence(value: object, name: str, accepted: str) -> tuple[int, ...]:
    """The one rule for a sequence of ints (a shape, axes): returns it as a tuple of Python ints.

    Any iterable of integers is taken, as NumPy and the host libraries index
    with it: a tuple or list, a ``range``, a 1-D integer array, NumPy or JAX
    integer scalars. Strings, bools (not sizes or axes, though ``int`` takes
    them) and non-integers are not. ``accepted`` completes "``name`` must be ...".

    Raises:
      TypeError: if ``value`` is not an iterable of integers.
    """
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be {accepted}, got {value!r}.")
    try:
        items = list(value)
    except TypeError as error:  # a 0-d array is Iterable but cannot be iterated
        raise TypeError(f"{name} must be {accepted}, got {value!r}.") from error
    checked = []
    for item in items:
        if isinstance(item, bool | np.bool_) or getattr(item, "dtype", None) == np.bool_:
            raise TypeError(f"{name} must be {accepted}, got the bool {item!r} in it.")
        try:
            checked.append(operator.index(item))
        except TypeError as error:
            raise TypeError(f"{name} must be {accepted}, got {item!r} in it.") from error
    return tuple(checked)


def _check_shape(shape: object, name: str = "shape") -> tuple[int, ...]:
    """A shape (``name`` for the message, e.g. ``"logit_shape"``), as :func:`_int_sequence` takes it, as a tuple."""
    dims = _int_sequence(shape, name, "a sequence of ints")
    if any(d < 0 for d in dims):
        raise ValueError(f"{name} must have non-negative sizes, got {dims}.")
    return dims


def _axes(broadcast_dims: object, name: str = "broadcast_dims") -> tuple[int, ...]:
    """Axes as :func:`_int_sequence` takes them, as a tuple of ints; their range is checked against a rank later."""
    return _int_sequence(broadcast_dims, name, "a sequence of int axes, e.g. (1,) to share the noise along axis 1")


def _check_broadcast_dims(broadcast_dims: object, ndim: int, of: str = "x") -> frozenset[int]:
    """``broadcast_dims`` (:func:`_axes`) checked against the rank ``ndim`` of ``of``, as non-negative axes.

    ``of`` names what the axes index, for the message: an argument of the
    caller (``"x"``, ``"inputs"``) or what it computes (the attention weights).

    Raises:
      TypeError: if ``broadcast_dims`` is not a sequence of ints.
      ValueError: if an axis is out of range.
    """
    axes = _axes(broadcast_dims)
    for axis in axes:
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"broadcast_dims contains axis {axis}, out of range for {of} with {ndim} dimensions "
                f"(accepted: {-ndim} to {ndim - 1})."
            )
    return frozenset(axis % ndim for axis in axes)


def _check_floating(x: jax.Array, name: str = "x") -> None:
    """Real floating ``x``: for what applies a real function to it (an activation, SELU's correction, attention)."""
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}.")


def _check_noise_input(x: jax.Array, name: str = "x", *, why: str = "") -> None:
    """The one dtype rule for what multiplicative noise applies to: floating or complex ``x``.

    Checked only where noise is applied: where ``x`` is returned unchanged
    (evaluation, keep probability 1) any dtype is returned. Complex values
    are multiplied by the real noise, their real and imaginary parts alike.
    ``why`` ends the message (e.g. why the host refuses integers).
    """
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        raise TypeError(
            f"{name} must have a floating or complex dtype where noise is applied, got {x.dtype}{why}. "
            "(Where nothing is applied, any dtype is returned unchanged.)"
        )


def _flag(value: object, name: str) -> bool:
    """The one rule for a switch (``deterministic``, ``inference``): a Python bool, read as Flax and Equinox read it.

    Flax and Equinox test a switch with ``if``, so they take any real
    scalar: ``True``, ``1``, ``np.bool_(True)``, ``jnp.array(True)``, a 0-d
    integer or floating array. Those are accepted with the same meaning.
    Strings (``"False"`` is true), arrays with axes and other objects are
    rejected, and so are traced values: whether noise is drawn must be known
    while tracing.

    Raises:
      TypeError: if ``value`` is not a concrete real scalar.
    """
    if isinstance(value, jax.core.Tracer):
        raise TypeError(
            f"{name} must be concrete, got a traced value: it decides whether noise is drawn, which must be known "
            "while tracing. Pass it as a static argument of jax.jit (or keep it a Python bool field under "
            "eqx.filter_jit)."
        )
    if isinstance(value, bool | int | float | np.bool_ | np.integer | np.floating):
        return bool(value)
    if isinstance(value, jax.Array | np.ndarray) and value.ndim == 0:
        dtype = value.dtype
        if dtype == np.bool_ or jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating):
            return bool(value)
    raise TypeError(
        f"{name} must be a bool, or a Python, NumPy or JAX real scalar read as one (as Flax and Equinox read it), "
        f"got {value!r}."
    )


def _check_deterministic(deterministic: object) -> bool:
    """``deterministic`` as a Python bool, by :func:`_flag`'s rule."""
    return _flag(deterministic, "deterministic")


def _check_rate(rate: ArrayLike, name: str, *, allow_one: bool = True) -> float | None:
    """Validates a drop rate (the host libraries' convention); returns it as a float, or None when traced.

    The accepted range is [0, 1], or [0, 1) with ``allow_one=False`` (for noise
    whose variance is infinite at rate 1, such as Gaussian and alpha dropout).
    """
    accepted = "[0, 1]" if allow_one else "[0, 1)"
    value = _real_scalar(rate, name, f"a real number in {accepted}")
    if value is not None and not (0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0):  # NaN fails too
        raise ValueError(f"{name} must be in {accepted} (the probability of dropping a unit), got {value}.")
    return value


def _compute_dtype(array: jax.Array) -> jnp.dtype:
    """The real dtype to compute in: float64 for float64 and complex128 (with jax_enable_x64), else float32.

    bfloat16 and float16 become float32; a complex array's parts are computed
    in the real dtype of their precision.
    """
    # Not jnp.promote_types: under strict dtype promotion bfloat16 and float32 have no common type.
    wide = array.dtype in (jnp.float64, jnp.complex128)
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def _times(x: jax.Array, factor: jax.Array) -> jax.Array:
    """``x * factor`` for a real ``factor`` of ``_compute_dtype(x)``, computed in it and rounded once to ``x.dtype``.

    A complex ``x`` has its real and imaginary parts multiplied alike (not a
    complex product, in which ``inf * 0`` of a zero imaginary factor would
    make NaNs), so each part gets exactly what a real array would.
    """
    dtype = _compute_dtype(x)
    if jnp.issubdtype(x.dtype, jnp.complexfloating):
        return jax.lax.complex(x.real.astype(dtype) * factor, x.imag.astype(dtype) * factor).astype(x.dtype)
    return (x.astype(dtype) * factor).astype(x.dtype)


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def _check_keep_probs(
    keep_probs: object,
    *,
    expected: str,
    count: int | None = None,
    count_error: str = "",
    schedules: bool = False,
) -> tuple[tuple[Any, ...], tuple[float | None, ...]]:
    """The one check of a ``keep_probs`` sequence (the MLP's, Monte Carlo dropout's, the train step's).

    ``keep_probs`` must be a sequence or 1-D array (not one number, not a
    string) of keep probabilities, each as :func:`_check_keep_prob` accepts,
    and, with ``schedules``, optax-style schedules ``step -> keep_prob``,
    checked at step 0 (later steps run traced). ``expected`` describes the
    entries for the error message; ``count``, if given, is the number of
    entries required, and ``count_error`` explains it.

    Returns:
      The entries as a tuple, and their concrete values: None where an entry
      is traced or a schedule.
    """
    sequence = isinstance(keep_probs, Sequence) and not isinstance(keep_probs, str)
    if not (sequence or (isinstance(keep_probs, jax.Array | np.ndarray) and keep_probs.ndim == 1)):
        raise TypeError(f"keep_probs must be a sequence with {expected}, got {keep_probs!r}.")
    entries: tuple[Any, ...] = tuple(keep_probs)  # type: ignore[arg-type]  # checked iterable just above
    if count is not None and len(entries) != count:
        raise ValueError(f"keep_probs has {len(entries)} entries, but {count_error}.")
    values: list[float | None] = []
    for i, entry in enumerate(entries):
        if schedules and callable(entry):
            _check_keep_prob(entry(jnp.zeros((), jnp.int32)), f"keep_probs[{i}] (a schedule) at step 0")
            values.append(None)
        else:
            values.append(_check_keep_prob(entry, f"keep_probs[{i}]"))
    return entries, tuple(values)


def _check_keep_logit(keep_logit: ArrayLike, fits: tuple[int, ...] | None = None, inputs: str = "x") -> jax.Array:
    """``keep_logit`` as a floating array; with ``fits``, it must broadcast to that shape (of ``inputs``) unchanged."""
    if isinstance(keep_logit, bool | np.bool_):
        raise TypeError(f"keep_logit must be a real number or floating array, got {keep_logit!r}.")
    if isinstance(keep_logit, numbers.Real):
        keep_logit = float(keep_logit)
    array = keep_logit if isinstance(keep_logit, jax.Array) else jnp.asarray(keep_logit)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"keep_logit must be floating (it is learned by gradient descent), got dtype {array.dtype}.")
    if fits is not None:
        try:
            unchanged = jnp.broadcast_shapes(array.shape, fits) == fits
        except ValueError:  # the shapes do not broadcast at all
            unchanged = False
        if not unchanged:
            raise ValueError(
                f"keep_logit must broadcast to the shape of {inputs}, {fits}, without changing it, "
                f"got shape {array.shape}."
            )
    return array


def _check_positive(value: ArrayLike, name: str) -> float | None:
    """A positive, finite real scalar; returns it as a float, or None when it is traced (range unchecked)."""
    number = _real_scalar(value, name, "a positive real number")
    if number is not None and not 0.0 < number < math.inf:  # NaN fails too
        raise ValueError(f"{name} must be positive and finite, got {number}.")
    return number


def _initial_keep_logit(rate: ArrayLike, name: str) -> float:
    """The keep logit ``log((1 - rate) / rate)`` of an initial drop rate in (0, 1), for the concrete dropout modules.

    The rate is learned from there, so 0 and 1 (logits of -inf and +inf) are
    not accepted, nor a traced value: it sets a parameter's initial value.
    """
    accepted = "a real number in (0, 1) (the initial probability of dropping a unit, which is then learned)"
    value = _real_scalar(rate, name, accepted)
    if value is None:
        raise TypeError(f"{name} must be {accepted}, known when the module is built; got a traced value.")
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ValueError(f"{name} must be {accepted}, got {value}.")
    return math.log((1.0 - value) / value)
