"""What the drop-in modules for Flax NNX, Flax linen and Equinox share: their hosts' conventions, host-independently.

:mod:`jdrop.nnx`, :mod:`jdrop.linen` and :mod:`jdrop.equinox` only read their
host's arguments and RNG; everything else they hand to this module, which
knows the hosts' conventions but imports neither Flax nor Equinox
(``import jdrop`` must not load them):

* the dropout family's members as the layers apply them (:class:`Variant`:
  the core function, which rates and inputs it takes), defined once for the
  three hosts, so that a host's variant class is its docstring and one line;
* the drop *rate* (``1 - keep_prob``) and its edge cases: rate 0 and
  evaluation return the inputs, rate 1 returns zeros, and neither draws a key;
* the switches (``deterministic``, ``inference``), read by truthiness as the
  hosts read them, so that NumPy and JAX scalars work as Python bools do;
* axes, as any sequence of integers, which is what the hosts index with;
* the key, asked for only when noise is drawn and only after every argument
  has been checked, so that a host's RNG stream advances exactly when the
  host's own Dropout would advance it, and never for a call that fails.
* the attention swaps' conventions: Flax's switch (``dropout_rate`` and
  ``deterministic``) and dropout shape (``broadcast_dropout``), Equinox's
  key per head, and both hosts' rule that a row with no key left spreads its
  weight over all keys; the tiled computation itself is :mod:`jdrop._attention`'s.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from jdrop._attention import _check_counters, _checked_attention_inputs, _dropout_attention
from jdrop._checks import (
    KeyLike,
    _as_key,
    _axes,
    _check_broadcast_dims,
    _check_keep_logit,
    _check_noise_input,
    _check_positive,
    _check_rate,
    _check_shape,
    _flag,
    _initial_keep_logit,
)
from jdrop._dropout import _threshold_and_effective, dropout
from jdrop._generator import seeds_of
from jdrop._variants import DROP_PATH_MODES, alpha_dropout, concrete_dropout, drop_path, gaussian_dropout

_T = TypeVar("_T")
_Inputs = TypeVar("_Inputs", bound=ArrayLike)  # returned as given when nothing is applied

#: How an active drop-in applies its noise: ``(key, x, keep_prob, broadcast_dims)`` to the output.
ApplyFn = Callable[[KeyLike, jax.Array, ArrayLike, tuple[int, ...]], jax.Array]


@dataclasses.dataclass(frozen=True)
class HostConventions:
    """The names a host gives the drop-in's arguments, and what it does with integer inputs.

    Both hosts' Dropout return inputs of any dtype unchanged in evaluation and
    at rate 0, and apply noise to floating and complex ones (a complex value
    is multiplied by the real mask).

    Attributes:
      rate: the name of the drop probability (``"rate"`` in Flax, ``"p"`` in Equinox).
      switch: the name of the evaluation switch (``"deterministic"``, ``"inference"``).
      inputs: the name of the input array (``"inputs"``, ``"x"``).
      promotes_integers: whether integer and bool inputs are promoted to the
        default floating dtype when noise is applied (and for the zeros of
        rate 1). ``equinox.nn.Dropout`` computes ``x / q``, which promotes
        them; Flax's Dropout fails on them (``lax.select`` of an int and a
        float array), and at rate 1 returns integer zeros.
    """

    rate: str
    switch: str
    inputs: str
    promotes_integers: bool


FLAX = HostConventions(rate="rate", switch="deterministic", inputs="inputs", promotes_integers=False)
EQUINOX = HostConventions(rate="p", switch="inference", inputs="x", promotes_integers=True)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A member of the dropout family as every host's layer applies it.

    The host classes hold one of these (``_variant``) and hand it to
    :func:`_dropout_at_rate`; the arithmetic is :mod:`jdrop._variants`'.

    Attributes:
      apply: the core function of an active call (0 < rate < 1):
        ``(key, x, keep_prob, broadcast_dims)`` to the output.
      allow_rate_one: whether rate 1 (zeros) is accepted; False for noise that
        has no limit there (Gaussian, alpha).
      takes_complex: whether complex inputs are taken; False for noise defined
        for real inputs only (alpha).
      takes_broadcast_dims: False for DropPath, whose ``mode`` says what its
        decision is shared along: every host's DropPath refuses non-empty axes.
    """

    apply: ApplyFn
    allow_rate_one: bool = True
    takes_complex: bool = True
    takes_broadcast_dims: bool = True

    def checked_axes(self, broadcast_dims: object) -> tuple[int, ...]:
        """``broadcast_dims`` as a tuple of ints (hashable, for a static attribute); none for DropPath.

        Raises:
          TypeError: if ``broadcast_dims`` is not a sequence of ints, or not
            empty where the variant takes none.
        """
        return _axes(broadcast_dims) if self.takes_broadcast_dims else _no_broadcast_dims(broadcast_dims)

    def check_constructor(self, rate: object, broadcast_dims: object, host: HostConventions) -> tuple[int, ...]:
        """A layer's constructor arguments checked, before anything is built: ``broadcast_dims`` as a tuple of ints.

        Raises:
          ValueError: if a concrete ``rate`` is outside the variant's range.
          TypeError: if ``rate`` is not a real number, or ``broadcast_dims`` as
            in :meth:`checked_axes`.
        """
        _check_rate(rate, host.rate, allow_one=self.allow_rate_one)  # type: ignore[arg-type]
        return self.checked_axes(broadcast_dims)


def _apply_dropout(key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
    return dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)


def _apply_gaussian(key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
    return gaussian_dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)


def _apply_alpha(key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
    return alpha_dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)


def _drop_path_applier(mode: str) -> ApplyFn:
    def apply(key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
        return drop_path(key, x, keep_prob, mode=mode)

    return apply


DROPOUT = Variant(_apply_dropout)
GAUSSIAN = Variant(_apply_gaussian, allow_rate_one=False)
ALPHA = Variant(_apply_alpha, allow_rate_one=False, takes_complex=False)
# One object per mode, so that layers of equal mode hold equal variants.
_DROP_PATH = {mode: Variant(_drop_path_applier(mode), takes_broadcast_dims=False) for mode in DROP_PATH_MODES}


def drop_path_variant(mode: object) -> Variant:
    """DropPath's variant for ``mode``, ``"row"`` or ``"batch"``.

    Raises:
      ValueError: if ``mode`` is neither.
    """
    if not isinstance(mode, str) or mode not in DROP_PATH_MODES:
        raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {mode!r}.")
    return _DROP_PATH[mode]


def _first_from(*values: _T | None, error_msg: str) -> _T:
    """The first of ``values`` that is not None; Flax NNX's rule for call-time over constructor arguments.

    Raises:
      ValueError: with ``error_msg``, if all are None.
    """
    for value in values:
        if value is not None:
            return value
    raise ValueError(error_msg)


def _no_broadcast_dims(broadcast_dims: object) -> tuple[int, ...]:
    """DropPath's ``broadcast_dims``, which must be empty: its ``mode`` says what the decision is shared along.

    Every host's DropPath takes the keyword, so that each raises the same
    error for it (Flax linen's cannot refuse it: it is a field of
    ``linen.Dropout``).

    Raises:
      TypeError: if ``broadcast_dims`` is not empty, or not a sequence of ints.
    """
    axes = _axes(broadcast_dims)
    if axes:
        raise TypeError(
            "DropPath takes no broadcast_dims: its mode sets what the decision is shared along (mode='row': all axes "
            f"but 0, mode='batch': all axes), got broadcast_dims={axes}."
        )
    return axes


def _key_source(key: KeyLike | None, missing: str) -> Callable[[], KeyLike]:
    """The call's ``key``, asked for only when noise is drawn; Equinox's RuntimeError when it is missing."""

    def draw_key() -> KeyLike:
        if key is None:
            raise RuntimeError(
                f"{missing}: call it with key=jax.random.key(...) "
                "(a fresh one each call), or set inference=True (eqx.nn.inference_mode) for evaluation."
            )
        return key

    return draw_key


def _as_array(inputs: ArrayLike) -> jax.Array:
    return inputs if isinstance(inputs, jax.Array) else jnp.asarray(inputs)


def _promoted(array: jax.Array, host: HostConventions) -> jax.Array:
    """``array`` in the dtype ``host``'s Dropout computes in: integers and bools promoted if it promotes them."""
    if not host.promotes_integers or jnp.issubdtype(array.dtype, jnp.inexact):
        return array
    return array.astype(jax.dtypes.canonicalize_dtype(np.float64))  # the default floating dtype, as x / q gives


def _noise_input(array: jax.Array, host: HostConventions, *, takes_complex: bool = True) -> jax.Array:
    """``array`` as noise is applied to it: floating or complex (:func:`jdrop._checks._check_noise_input`), after
    ``host``'s promotion; with ``takes_complex=False`` (alpha dropout), real floating only.

    Raises:
      TypeError: naming ``host``'s inputs, for integer and bool inputs in Flax
        (whose Dropout fails on them too) and, without ``takes_complex``, complex ones.
    """
    x = _promoted(array, host)
    why = "" if host.promotes_integers else " (Flax's own Dropout cannot drop integer or bool inputs out either)"
    _check_noise_input(x, host.inputs, why=why)
    if not takes_complex and not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(
            f"{host.inputs} must be real where alpha dropout is applied (SELU's saturation value and correction are "
            f"for real activations), got {x.dtype}."
        )
    return x


def _dropout_at_rate(
    key_fn: Callable[[], KeyLike],
    inputs: _Inputs,
    rate: float | jax.Array,
    *,
    deterministic: object,
    broadcast_dims: object,
    variant: Variant,
    host: HostConventions,
) -> _Inputs | jax.Array:
    """A dropout-family layer's call at a drop ``rate``, with the host libraries' edge cases.

    Every argument is checked first. Then evaluation and rate 0 return
    ``inputs`` itself, whatever its dtype, and rate 1 returns zeros like the
    inputs (promoted as ``host`` promotes them), as the hosts' Dropout do,
    without asking for a key. Otherwise the result is exactly
    ``variant.apply(key_fn(), x, 1 - rate, axes)``, where ``x`` is ``inputs`` as a
    floating or complex array (:func:`_noise_input`) and ``axes`` is
    ``broadcast_dims`` as a tuple of ints; ``key_fn`` is called only then, so
    that a host's RNG stream advances only when noise is drawn, as with the
    host's own Dropout.

    Args:
      key_fn: returns the key for an active call, drawn as the host draws it.
      inputs: what the layer was called with (array-like).
      rate: the drop rate: concrete in [0, 1] (or [0, 1) where the variant
        does not allow rate 1), or a traced scalar, which gets no gradient
        (as in the hosts) and reaches ``variant.apply`` as ``1 - rate``.
      deterministic: the host's switch, read by truthiness (:func:`jdrop._checks._flag`).
      broadcast_dims: axes along which the noise is shared, as the host takes them.
      variant: the family member the layer applies.
      host: the host's argument names and integer-input rule.

    Returns:
      ``inputs`` itself when nothing is applied, otherwise an array of the
      shape of ``inputs`` and its dtype (the default floating dtype for
      integer and bool inputs that ``host`` promotes).

    Raises:
      TypeError: if ``rate``, ``deterministic`` or ``broadcast_dims`` has a
        type the host does not take, or noise is applied to ``inputs`` of a
        dtype that it does not apply to (:func:`_noise_input`).
      ValueError: if a concrete ``rate`` is out of range, or an axis is out of
        range for ``inputs``.
    """
    array = _as_array(inputs)
    axes = variant.checked_axes(broadcast_dims)
    _check_broadcast_dims(axes, array.ndim, of=host.inputs)
    value = _check_rate(rate, host.rate, allow_one=variant.allow_rate_one)
    if _flag(deterministic, host.switch) or value == 0.0:
        return inputs
    if value == 1.0:
        return jnp.zeros_like(_promoted(array, host))
    x = _noise_input(array, host, takes_complex=variant.takes_complex)
    # A traced rate (an array attribute or field, traced by jit) gets no gradient, as in the hosts.
    keep_prob = 1.0 - (value if value is not None else jax.lax.stop_gradient(rate))
    return variant.apply(key_fn(), x, keep_prob, axes)


@dataclasses.dataclass(frozen=True)
class ConcreteArguments:
    """A ConcreteDropout layer's constructor arguments, checked: what every host stores.

    Attributes:
      keep_logit: the keep logit's initial value, ``log((1 - rate) / rate)``.
      logit_shape: the keep logit's shape.
      temperature: the relaxation's temperature, a Python float (static).
      broadcast_dims: axes along which the noise is shared, a tuple of ints (static).
    """

    keep_logit: float
    logit_shape: tuple[int, ...]
    temperature: float
    broadcast_dims: tuple[int, ...]

    @classmethod
    def check(
        cls, rate: object, logit_shape: object, temperature: object, broadcast_dims: object, host: HostConventions
    ) -> ConcreteArguments:
        """Checks the arguments under ``host``'s name for the initial rate, before anything is built.

        Raises:
          ValueError: if ``rate`` is outside (0, 1) or NaN, ``temperature`` is
            not positive and finite, or ``logit_shape`` has a negative size.
          TypeError: if ``rate`` or ``temperature`` is not a concrete real
            number, or ``logit_shape`` or ``broadcast_dims`` is not a sequence of ints.
        """
        keep_logit = _initial_keep_logit(rate, host.rate)  # type: ignore[arg-type]
        shape = _check_shape(logit_shape, "logit_shape")
        value = _check_positive(temperature, "temperature")  # type: ignore[arg-type]
        if value is None:
            raise TypeError(
                "temperature must be a concrete positive real number (a static attribute), got a traced value."
            )
        return cls(keep_logit, shape, value, _axes(broadcast_dims))


def _concrete_dropout_in_module(
    key_fn: Callable[[], KeyLike],
    inputs: _Inputs,
    keep_logit: ArrayLike,
    *,
    temperature: float,
    deterministic: object,
    broadcast_dims: object,
    host: HostConventions,
) -> _Inputs | jax.Array:
    """:func:`jdrop.concrete_dropout` as the modules need it: every check first, then a key only if active.

    Checks what :func:`jdrop.concrete_dropout` would check (plus the host's
    input and switch conventions), so that a call that fails does so before
    ``key_fn`` advances the host's RNG stream; then returns ``inputs`` itself
    in evaluation, or calls :func:`jdrop.concrete_dropout` once with the key.
    There is no rate-0 shortcut: the keep probability is learned.

    Args:
      key_fn: returns the key for an active call, drawn as the host draws it.
      inputs: what the layer was called with (array-like).
      keep_logit: the layer's learned keep logit.
      temperature: the relaxation's temperature, > 0.
      deterministic: the host's switch, read by truthiness (:func:`jdrop._checks._flag`).
      broadcast_dims: axes along which the noise is shared, as the host takes them.
      host: the host's argument names and integer-input rule.

    Returns:
      ``inputs`` itself in evaluation (whatever its dtype), otherwise an
      array of the shape of ``inputs`` and its (floating or complex) dtype.

    Raises:
      TypeError: if ``keep_logit`` is not floating, ``inputs`` are of a dtype
        that noise is not applied to while active (:func:`_noise_input`), or
        ``deterministic`` or ``broadcast_dims`` has the wrong type.
      ValueError: if ``keep_logit`` does not broadcast to the inputs' shape,
        ``temperature`` is not positive and finite, or an axis is out of range.
    """
    array = _as_array(inputs)
    logit = _check_keep_logit(keep_logit, fits=array.shape, inputs=host.inputs)
    _check_positive(temperature, "temperature")
    if not isinstance(temperature, jax.core.Tracer):
        temperature = float(temperature)  # an integer one, e.g. np.int64(1), would not divide a float32 array
    axes = _axes(broadcast_dims)
    _check_broadcast_dims(axes, array.ndim, of=host.inputs)
    if _flag(deterministic, host.switch):
        return inputs
    x = _noise_input(array, host)
    return concrete_dropout(key_fn(), x, logit, temperature=temperature, broadcast_dims=axes)


def _attention_rate(dropout_rate: object, deterministic: object, broadcast_dropout: object) -> float | None:
    """The Flax attention functions' switches, checked: the rate when dropout is applied, else None.

    Flax applies attention dropout when ``not deterministic and dropout_rate > 0``,
    and tests ``dropout_rate == 0.0`` while tracing, so the rate is concrete.
    ``broadcast_dropout`` is checked too, before either path runs.

    Raises:
      TypeError: if ``dropout_rate`` is not a concrete real number, or
        ``deterministic`` or ``broadcast_dropout`` is not read as a bool.
      ValueError: if ``dropout_rate`` is outside [0, 1].
    """
    rate = _check_rate(dropout_rate, "dropout_rate")  # type: ignore[arg-type]
    if rate is None:
        raise TypeError(
            "dropout_rate must be a concrete real number in [0, 1], got a traced value: Flax's attention decides "
            "between its fast and its dropout path from it while tracing."
        )
    # Flax tests `not deterministic`, so None (its default in the modules' calls) means dropout on.
    off = (deterministic is not None and _flag(deterministic, "deterministic")) or rate == 0.0
    _flag(broadcast_dropout, "broadcast_dropout")
    return None if off else rate


def _flax_dropout_axes(ndim: int, broadcast_dropout: object) -> frozenset[int]:
    """The weights' axes along which Flax's attention dropout mask is shared: batch and heads, or none."""
    return frozenset(range(ndim - 2)) if _flag(broadcast_dropout, "broadcast_dropout") else frozenset()


def _keep_threshold(rate: float) -> tuple[jax.Array, jax.Array]:
    """The mask's threshold and 1 / keep for a drop ``rate`` in (0, 1]; rate 1 drops every weight."""
    if rate == 1.0:  # zeros, the limit (Flax's keep / 0 gives NaN)
        return jnp.uint32(0), jnp.float32(1.0)
    threshold, effective = _threshold_and_effective(1.0 - rate)
    return threshold, 1.0 / effective


def _flax_weights_dropout(
    dropout_rng: KeyLike | None, weights: jax.Array, rate: float, broadcast_dropout: object
) -> jax.Array:
    """Dropout on materialised attention weights, with the mask the memory-light path regenerates."""
    key = _as_key(dropout_rng, "dropout_rng", or_else=_OR_NO_ATTENTION_DROPOUT)
    if rate == 1.0:
        return jnp.zeros_like(weights)
    axes = tuple(sorted(_flax_dropout_axes(weights.ndim, broadcast_dropout)))
    return dropout(key, weights, 1.0 - rate, broadcast_dims=axes)


_OR_NO_ATTENTION_DROPOUT = "set deterministic=True (or dropout_rate=0.0) for no attention dropout"


def _flax_attention_dropout(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: ArrayLike | None,
    mask: ArrayLike | None,
    *,
    dropout_rng: KeyLike | None,
    rate: float,
    broadcast_dropout: object,
    precision: Any,
    is_causal: bool = False,
) -> jax.Array:
    """Flax's attention with dropout on, memory-light: what ``jdrop.nnx`` and ``jdrop.linen`` share.

    Flax's conventions: a mask of any dtype, nonzero meaning attend; a row
    with no key left spreads its weight uniformly over all keys (Flax's
    ``finfo.min`` logits); scale ``1 / sqrt(H)``; the dropout mask
    ``jdrop.dropout_mask(dropout_rng, s, 1 - rate)`` for ``s`` Flax's dropout
    shape. ``query``, ``key`` and ``value`` are already promoted to one dtype.
    """
    if bias is not None and not jnp.issubdtype(jnp.result_type(bias), jnp.floating):
        bias = jnp.asarray(bias, jnp.float32)  # Flax adds an integer or bool bias to its floating logits
    q, k, v, bias_array, mask_array = _checked_attention_inputs(
        query, key, value, bias, mask, value_head=True, any_mask=True
    )
    typed_key = _as_key(dropout_rng, "dropout_rng", or_else=_OR_NO_ATTENTION_DROPOUT)
    shared = _flax_dropout_axes(q.ndim, broadcast_dropout)
    weights = (*q.shape[:-3], q.shape[-2], q.shape[-3], k.shape[-3])
    _check_counters(weights, shared)
    threshold, inv_keep = _keep_threshold(rate)
    return _dropout_attention(
        q,
        k,
        v,
        bias_array,
        mask_array,
        seeds=seeds_of(typed_key),
        threshold=threshold,
        inv_keep=inv_keep,
        shared=shared,
        scale=1.0 / math.sqrt(q.shape[-1]),
        is_causal=bool(is_causal),
        block_size=None,
        masked_logit=float(np.finfo(np.float32).min),
        precision=precision,
    )


def _equinox_attention_dropout(
    query_heads: jax.Array,
    key_heads: jax.Array,
    value_heads: jax.Array,
    mask: jax.Array | None,
    *,
    key: KeyLike,
    rate: ArrayLike,
    concrete_rate: float | None,
) -> jax.Array:
    """Equinox's per-head attention with dropout on, memory-light: (T, N, vo) from its (…, N, …) heads.

    Equinox's conventions: one key per head (``jax.random.split(key, N)``),
    head ``n``'s mask ``jdrop.dropout_mask(keys[n], (T, S), 1 - rate)``; a mask
    of shape (T, S) or (N, T, S), nonzero meaning attend; a fully masked row
    spreads its weight over all keys; scale ``1 / sqrt(qk_size)``.
    """
    q, k, v, _, mask_array = _checked_attention_inputs(
        query_heads, key_heads, value_heads, None, mask, value_head=True, any_mask=True
    )
    heads = q.shape[-2]
    head_keys = jax.random.split(_as_key(key, "key"), heads)
    if concrete_rate is not None:
        threshold, inv_keep = _keep_threshold(concrete_rate)
    else:  # a traced p (an array field) gets no gradient, as in Equinox
        threshold, effective = _threshold_and_effective(1.0 - jax.lax.stop_gradient(rate))
        inv_keep = 1.0 / jnp.where(effective == 0.0, jnp.float32(1.0), effective)
    _check_counters((heads, q.shape[0], k.shape[0]), frozenset())
    return _dropout_attention(
        q,
        k,
        v,
        None,
        mask_array,
        seeds=jax.vmap(seeds_of)(head_keys),
        threshold=threshold,
        inv_keep=inv_keep,
        shared=frozenset(),
        scale=1.0 / math.sqrt(q.shape[-1]),
        is_causal=False,
        block_size=None,
        masked_logit=float(np.finfo(np.float32).min),
        head_seeds=True,
    )
