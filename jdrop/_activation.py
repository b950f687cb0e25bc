"""Activation followed by dropout, fused so that the backward pass needs only the output."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jdrop._checks import (
    OR_DETERMINISTIC,
    KeyLike,
    _as_key,
    _check_deterministic,
    _check_floating,
    _check_keep_prob,
    _key_if_given,
)
from jdrop._dropout import _draw_mask, _scale_kept, dropout
from jdrop._generator import draw_sharding

__all__ = ["ACTIVATIONS", "Activation", "activation_dropout"]

Activation = str | Callable[[jax.Array], jax.Array]

#: The activations that ``activation="name"`` selects (read-only: the fused
#: backward passes below are written for exactly these functions; pass a
#: callable for any other activation).
ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = types.MappingProxyType(
    {
        "relu": jax.nn.relu,
        "tanh": jnp.tanh,
        "sigmoid": jax.nn.sigmoid,
        "gelu": jax.nn.gelu,
    }
)

# Activations whose derivative can be written in terms of their output, so the
# fused op's backward pass keeps the output alone (plus, for tanh, the mask).
_FUSED = frozenset({"relu", "tanh", "sigmoid"})


def _resolve_activation(activation: Activation) -> Callable[[jax.Array], jax.Array]:
    if callable(activation):
        return activation
    if isinstance(activation, str) and activation in ACTIVATIONS:
        return ACTIVATIONS[activation]
    raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a callable, got {activation!r}.")


def _reject_activation_with(activation: Activation | None, model_fn: str) -> None:
    """``activation`` is jdrop's MLP's: with a model of the user's own (``model_fn``) it must stay unset."""
    if activation is not None:
        raise ValueError(
            f"activation is for jdrop's MLP; with {model_fn} the model applies its own activations, "
            f"so leave activation unset (got {activation!r})."
        )


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _fused(kind: str, x: jax.Array, mask: jax.Array, effective: jax.Array) -> jax.Array:
    return jnp.where(mask, _scale_kept(ACTIVATIONS[kind](x), effective), jnp.zeros((), x.dtype))


@_fused.defjvp
def _fused_jvp(
    kind: str, primals: tuple[jax.Array, jax.Array, jax.Array], tangents: tuple[jax.Array, ...]
) -> tuple[jax.Array, jax.Array]:
    # The keep probability is quantised (a step function), so, as in the
    # unfused path, nothing flows to it; the mask is boolean.
    x, mask, effective = primals
    x_dot = tangents[0]
    y = _fused(kind, x, mask, effective)
    zero = jnp.zeros((), x.dtype)
    e = effective.astype(x.dtype)
    # With a = activation(x) and y = a / e on kept entries, a = e * y, and the
    # tangent of y is activation'(x) / e * x_dot. Every product below keeps y
    # (not a new array derived from it) as the known factor, so reverse mode
    # stores y, which the next layer keeps anyway, instead of x.
    if kind == "relu":
        # relu' = 1 exactly where y > 0 (y > 0 implies kept; relu'(0) = 0).
        y_dot = jnp.where(y > 0, _scale_kept(x_dot, effective), zero)
    elif kind == "tanh":
        # tanh' / e = (1 - a^2) / e = 1 / e - e * y^2. A kept entry can be 0
        # (tanh(0)) with slope 1 / e, so the mask is needed here.
        y_dot = jnp.where(mask, _scale_kept(x_dot, effective) - y * (y * x_dot) * e, zero)
    else:  # sigmoid
        # sigmoid' / e = a (1 - a) / e = y - e * y^2: 0 where dropped (y = 0).
        y_dot = y * x_dot - y * (y * x_dot) * e
    return y, y_dot


def activation_dropout(
    key: KeyLike | None,
    x: ArrayLike,
    keep_prob: ArrayLike,
    *,
    activation: Activation = "relu",
    deterministic: bool = False,
) -> jax.Array:
    r"""``dropout(key, activation(x), keep_prob)``, with a lean backward pass.

    The value is exactly that of the unfused pair. For "relu", "tanh" and
    "sigmoid" the derivative is computed from the output :math:`y`:

    .. math::

        \frac{\partial y}{\partial x} = m \, \frac{\sigma'(x)}{p_\text{eff}},\qquad
        \sigma'(x) = \begin{cases}
            [y > 0] & \text{relu} \\
            1 - (p_\text{eff} y)^2 & \text{tanh} \\
            p_\text{eff} y \, (1 - p_\text{eff} y) & \text{sigmoid}
        \end{cases}

    so reverse mode keeps :math:`y` (which the next layer's weight gradient
    needs anyway) and, for tanh, the boolean mask, instead of the
    pre-activation and the activation. It is a ``jax.custom_jvp``: forward-mode
    AD, ``vmap`` and higher derivatives work. Other activations (and
    callables) run the plain pair.

    Args:
      key: PRNG key; may be None when ``deterministic=True`` or ``keep_prob``
        is 1.0, but is checked whenever given.
      x: real floating pre-activations of any shape (the activations are real
        functions, so complex ``x`` is not taken).
      keep_prob: probability of keeping an entry, in (0, 1]; may be traced.
      activation: "relu", "tanh", "sigmoid", "gelu", or a callable.
      deterministic: if true, return ``activation(x)``; a bool, or a concrete
        real scalar read as one, as for :func:`dropout`.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: as :func:`dropout`, or for an unknown activation name.
      TypeError: as :func:`dropout`, but for any ``x`` that is not real floating.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> z = jnp.array([[-1.0, 0.5, 2.0, 3.0]])
      >>> key = jax.random.key(0)
      >>> same_key = jax.random.clone(key)  # the same mask on purpose
      >>> fused = jdrop.activation_dropout(key, z, 0.5, activation="relu")
      >>> bool(jnp.all(fused == jdrop.dropout(same_key, jax.nn.relu(z), 0.5)))
      True
    """
    act = _resolve_activation(activation)
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    _check_floating(x)
    concrete = _check_keep_prob(keep_prob)
    _key_if_given(key)
    if _check_deterministic(deterministic) or concrete == 1.0:
        return act(x)
    if not (isinstance(activation, str) and activation in _FUSED):
        return dropout(key, act(x), keep_prob)
    typed_key = _as_key(key, or_else=OR_DETERMINISTIC)
    mask, effective = _draw_mask(typed_key, x.shape, keep_prob, draw_sharding(x, x.shape))
    return _fused(activation, x, mask, effective)
