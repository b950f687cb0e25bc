"""Argument checks that several modules share: each raises before any work, naming the argument and what it accepts.

Also the one dtype rule they share, :func:`_compute_dtype`.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

KeyLike = jax.Array  # a typed key (jax.random.key) or a raw uint32 key (jax.random.PRNGKey)


def _check_keep_prob(keep_prob: ArrayLike, name: str = "keep_prob") -> float | None:
    """Validates ``keep_prob``; returns it as a float, or None when it is traced.

    A traced value cannot be checked while tracing;
    :func:`_threshold_and_effective` turns an out-of-range traced value into
    NaN outputs instead.
    """
    if isinstance(keep_prob, bool):
        raise TypeError(f"{name} must be a float in (0, 1], got the bool {keep_prob}.")
    if isinstance(keep_prob, jax.core.Tracer):
        if keep_prob.shape != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {keep_prob.shape}.")
        if not (jnp.issubdtype(keep_prob.dtype, jnp.floating) or jnp.issubdtype(keep_prob.dtype, jnp.integer)):
            raise TypeError(f"{name} must be a real number, got dtype {keep_prob.dtype}.")
        return None
    if isinstance(keep_prob, numbers.Real):
        value = float(keep_prob)
    else:
        array = np.asarray(keep_prob)
        if array.shape != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {array.shape}.")
        # jnp.issubdtype knows bfloat16 and the other ml_dtypes; np.issubdtype does not.
        if array.dtype == np.bool_ or not (
            jnp.issubdtype(array.dtype, jnp.floating) or jnp.issubdtype(array.dtype, jnp.integer)
        ):
            raise TypeError(f"{name} must be a real number in (0, 1], got dtype {array.dtype}.")
        value = float(array)
    # Written so that NaN fails the test too.
    if not 0.0 < value <= 1.0:
        raise ValueError(f"{name} must be in (0, 1] (the probability of keeping a unit), got {value}.")
    return value


def _as_key(key: KeyLike | None, name: str = "key") -> jax.Array:
    """Returns ``key`` as a single typed key, accepting legacy raw uint32 keys."""
    if key is None:
        raise ValueError(
            f"{name} is None, but dropout is active: pass {name}=jax.random.key(...) "
            "(split a fresh one for every call), or set deterministic=True for evaluation."
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


def _check_shape(shape: Sequence[int]) -> tuple[int, ...]:
    try:
        dims = tuple(operator.index(d) for d in shape)
    except TypeError as error:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}.") from error
    if any(d < 0 for d in dims):
        raise ValueError(f"shape must have non-negative sizes, got {dims}.")
    return dims


def _check_broadcast_dims(broadcast_dims: Sequence[int], ndim: int) -> frozenset[int]:
    if isinstance(broadcast_dims, str) or not isinstance(broadcast_dims, Sequence | set | frozenset):
        raise TypeError(
            f"broadcast_dims must be a sequence of axes, e.g. (1,) to share the mask along axis 1, "
            f"got {broadcast_dims!r}."
        )
    axes: set[int] = set()
    for axis in broadcast_dims:
        if not isinstance(axis, numbers.Integral) or isinstance(axis, bool):
            raise TypeError(f"broadcast_dims must contain ints, got {axis!r}.")
        if not -ndim <= axis < ndim:
            raise ValueError(
                f"broadcast_dims contains axis {axis}, out of range for x with {ndim} dimensions "
                f"(accepted: {-ndim} to {ndim - 1})."
            )
        axes.add(int(axis) % ndim)
    return frozenset(axes)


def _check_floating(x: jax.Array, name: str = "x") -> None:
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"{name} must have a floating dtype (float16, bfloat16, float32, float64), got {x.dtype}.")


def _check_deterministic(deterministic: object) -> None:
    if not isinstance(deterministic, bool | np.bool_):
        raise TypeError(
            f"deterministic must be a Python bool (mark it static in jax.jit), got {type(deterministic).__name__}."
        )


def _check_rate(rate: float | jax.Array, name: str, *, allow_one: bool = True) -> float | None:
    """Validates a drop rate (the host libraries' convention); returns it as a float, or None when traced.

    The accepted range is [0, 1], or [0, 1) with ``allow_one=False`` (for noise
    whose variance is infinite at rate 1, such as Gaussian and alpha dropout).
    """
    if isinstance(rate, jax.core.Tracer):
        return _check_keep_prob(rate, name)  # shape and dtype checks only
    dtype = getattr(rate, "dtype", None)
    real = isinstance(rate, numbers.Real) or (
        dtype is not None and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    )
    accepted = "[0, 1]" if allow_one else "[0, 1)"
    if isinstance(rate, bool) or dtype == np.bool_ or not real:
        raise TypeError(f"{name} must be a float in {accepted} (the probability of dropping a unit), got {rate!r}.")
    if np.ndim(rate) != 0:
        raise ValueError(f"{name} must be a scalar, got an array of shape {np.shape(rate)}.")
    value = float(rate)
    if not (0.0 <= value <= 1.0 if allow_one else 0.0 <= value < 1.0):  # NaN fails too
        raise ValueError(f"{name} must be in {accepted} (the probability of dropping a unit), got {value}.")
    return value


def _compute_dtype(array: jax.Array) -> jnp.dtype:
    """At least float32: float64 stays float64 (with jax_enable_x64), bfloat16 and float16 become float32."""
    # Not jnp.promote_types: under strict dtype promotion bfloat16 and float32 have no common type.
    wide = array.dtype == jnp.float64
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def _check_keep_probs_sequence(keep_probs: object, per_layer: str) -> None:
    """``keep_probs`` must be a sequence (or 1-D array) of ``per_layer`` values, not one number or a string."""
    sequence = isinstance(keep_probs, Sequence) and not isinstance(keep_probs, str)
    if not (sequence or (isinstance(keep_probs, jax.Array | np.ndarray) and keep_probs.ndim == 1)):
        raise TypeError(f"keep_probs must be a sequence with {per_layer}, got {keep_probs!r}.")


def _check_keep_logit(keep_logit: ArrayLike) -> jax.Array:
    if isinstance(keep_logit, bool | np.bool_):
        raise TypeError(f"keep_logit must be a real number or floating array, got {keep_logit!r}.")
    if isinstance(keep_logit, numbers.Real):
        keep_logit = float(keep_logit)
    array = keep_logit if isinstance(keep_logit, jax.Array) else jnp.asarray(keep_logit)
    if not jnp.issubdtype(array.dtype, jnp.floating):
        raise TypeError(f"keep_logit must be floating (it is learned by gradient descent), got dtype {array.dtype}.")
    return array


def _check_positive(value: ArrayLike, name: str) -> None:
    """A positive, finite Python number or concrete scalar; a traced scalar passes unchecked."""
    if isinstance(value, jax.core.Tracer):
        if value.shape != ():
            raise ValueError(f"{name} must be a scalar, got an array of shape {value.shape}.")
        return
    if isinstance(value, bool) or np.ndim(value) != 0:
        raise TypeError(f"{name} must be a positive real number, got {value!r}.")
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError) as error:
        raise TypeError(f"{name} must be a positive real number, got {value!r}.") from error
    if not 0.0 < number < math.inf:  # NaN fails too
        raise ValueError(f"{name} must be positive and finite, got {number}.")


def _initial_keep_logit(rate: float | jax.Array, name: str) -> float:
    """The keep logit ``log((1 - rate) / rate)`` of an initial drop rate in (0, 1), for the concrete dropout modules.

    The rate is learned from there, so 0 and 1 (logits of -inf and +inf) are
    not accepted.
    """
    accepted = f"{name} must be in (0, 1) (the initial probability of dropping a unit, which is then learned)"
    if isinstance(rate, jax.core.Tracer | bool | np.bool_) or np.ndim(rate) != 0:
        raise TypeError(f"{accepted}, got {rate!r}.")
    dtype = getattr(rate, "dtype", None)
    if not isinstance(rate, numbers.Real) and not (
        dtype is not None and (jnp.issubdtype(dtype, jnp.floating) or jnp.issubdtype(dtype, jnp.integer))
    ):
        raise TypeError(f"{accepted}, got {rate!r}.")
    value = float(rate)
    if not 0.0 < value < 1.0:  # NaN fails too
        raise ValueError(f"{accepted}, got {value}.")
    return math.log((1.0 - value) / value)
