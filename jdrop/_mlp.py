"""A multilayer perceptron with per-layer dropout, as a pure init/apply pair."""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from jdrop._activation import Activation, _resolve_activation, activation_dropout
from jdrop._checks import (
    OR_DETERMINISTIC,
    _as_key,
    _check_deterministic,
    _check_floating,
    _check_keep_probs,
    _key_if_given,
)
from jdrop._dropout import dropout

__all__ = ["Params", "mlp_apply", "mlp_init"]

#: Parameters of an MLP: one ``{"w": (n_in, n_out), "b": (n_out,)}`` dict per layer.
Params = list[dict[str, jax.Array]]
Initializer = Callable[..., jax.Array]


def _check_layer_keep_probs(
    keep_probs: Sequence[float | jax.Array] | None, num_layers: int
) -> tuple[tuple[float | jax.Array, ...], tuple[float | None, ...]]:
    """One keep probability per layer (all 1.0 for None), and their concrete values (None where traced)."""
    if keep_probs is None:
        return (1.0,) * num_layers, (1.0,) * num_layers
    return _check_keep_probs(
        keep_probs,
        expected="one keep probability per layer, e.g. (1.0, 0.5, 0.5)",
        count=num_layers,
        count_error=f"params has {num_layers} layers: give one keep probability per layer "
        "(keep_probs[0] applies to the input)",
    )


def _check_mlp_params(params: object, caller: str, own_model: str = "") -> None:
    """Raises a clear error if ``params`` is not an MLP made by :func:`mlp_init`.

    A Flax or Equinox model's parameters passed by mistake are told where to go
    instead of failing later with a bare ``KeyError``: ``own_model`` is the
    caller's own argument for a model of the user's (e.g. "pass apply_fn="),
    so that the message names only arguments of the function that raised it.
    """
    hint = own_model or "call jdrop.dropout in its forward pass"

    def fail(problem: str) -> NoReturn:
        raise TypeError(
            f"{caller} runs jdrop's own MLP and needs params from jdrop.mlp_init (a list of "
            f"{{'w': (n_in, n_out), 'b': (n_out,)}} dicts), but {problem}. For a model of your own "
            f"(Flax, Equinox, plain JAX), {hint}."
        )

    if not isinstance(params, list | tuple):
        fail(f"params is a {type(params).__name__}")
    if not params:
        raise ValueError(f"params is empty: build it with jdrop.mlp_init for {caller}.")
    n_out = None
    for i, layer in enumerate(params):
        if not isinstance(layer, Mapping) or set(layer) != {"w", "b"}:
            found = (
                f"a dict with keys {sorted(map(str, layer))}" if isinstance(layer, Mapping) else type(layer).__name__
            )
            fail(f"params[{i}] is {found}")
        w_shape, b_shape = tuple(getattr(layer["w"], "shape", ())), tuple(getattr(layer["b"], "shape", ()))
        if len(w_shape) != 2 or b_shape != w_shape[1:]:
            fail(f"params[{i}] has w of shape {w_shape} and b of shape {b_shape}")
        if n_out is not None and w_shape[0] != n_out:
            fail(f"params[{i}]['w'] has {w_shape[0]} inputs but the layer before has {n_out} outputs")
        n_out = w_shape[1]


def _default_w_init(activation: Activation) -> Initializer:
    # He initialisation keeps the activation variance constant through relu-like
    # units (half of them are zero); Glorot suits saturating ones. The name and
    # the function it stands for ("relu" and jax.nn.relu) give the same network.
    if _resolve_activation(activation) in (jax.nn.relu, jax.nn.gelu):
        return jax.nn.initializers.he_normal()
    return jax.nn.initializers.glorot_normal()


def mlp_init(
    key: jax.Array,
    layer_sizes: Sequence[int],
    *,
    activation: Activation = "relu",
    w_init: Initializer | None = None,
    b_init: Initializer = jax.nn.initializers.zeros,
    dtype: DTypeLike = jnp.float32,
) -> Params:
    r"""Initialises the parameters of a fully connected network.

    Layer :math:`l` maps ``(batch, n_in)`` to ``(batch, n_out)`` as
    ``a @ w + b``. This is the batch-first form of the column convention
    :math:`z = W a + b`: ``w`` is :math:`W^\top`, of shape ``(n_in, n_out)``,
    and each row of the batch is one example's :math:`a^\top`.

    Args:
      key: PRNG key; split into a weight key and a bias key per layer.
      layer_sizes: widths from input to output, e.g. ``(40, 512, 512, 10)``;
        at least two positive ints.
      activation: the activation that :func:`mlp_apply` will use. It only
        picks the default ``w_init``: He normal for relu and gelu (by name or
        as ``jax.nn.relu``, ``jax.nn.gelu``), Glorot normal otherwise.
      w_init: a ``jax.nn.initializers`` initialiser for the weights.
      b_init: initialiser for the biases (zeros by default). Weights and
        biases get keys of their own, so random initialisers of both are
        independent.
      dtype: parameter dtype.

    Returns:
      A list with one ``{"w": (n_in, n_out), "b": (n_out,)}`` dict per layer.

    Raises:
      ValueError: if ``layer_sizes`` has fewer than two entries or a size below 1.

    Example:
      >>> import jax
      >>> import jdrop
      >>> params = jdrop.mlp_init(jax.random.key(0), (40, 128, 10))
      >>> [(layer["w"].shape, layer["b"].shape) for layer in params]
      [((40, 128), (128,)), ((128, 10), (10,))]
    """
    sizes = tuple(layer_sizes)
    if len(sizes) < 2:
        raise ValueError(f"layer_sizes needs at least two entries (input and output width), got {sizes}.")
    if any(not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1 for n in sizes):
        raise ValueError(f"layer_sizes must be positive ints, got {sizes}.")
    w_init = _default_w_init(activation) if w_init is None else w_init
    keys = jax.random.split(_as_key(key), (len(sizes) - 1, 2))  # a weight key and a bias key per layer
    return [
        {
            "w": w_init(layer_keys[0], (n_in, n_out), dtype),
            "b": b_init(layer_keys[1], (n_out,), dtype),
        }
        for layer_keys, n_in, n_out in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp_apply(
    params: Params,
    x: ArrayLike,
    *,
    key: jax.Array | None = None,
    keep_probs: Sequence[float | jax.Array] | None = None,
    deterministic: bool = False,
    activation: Activation = "relu",
) -> jax.Array:
    r"""Runs the MLP with dropout on the input of each layer; returns logits.

    For layers :math:`l = 0, \dots, L-1`, with :math:`a_0 = x`:

    .. math::

        z_l = \operatorname{dropout}(k_l, a_l, p_l)\, W_l + b_l, \qquad
        a_{l+1} = \sigma(z_l),

    and the logits :math:`z_{L-1}` are returned without activation or dropout.
    ``keep_probs[0]`` applies to the input features, ``keep_probs[l]`` to the
    hidden units feeding layer ``l``. ``key`` is split once into one key per
    layer, so every layer and every example gets its own mask. For "relu",
    "tanh" and "sigmoid" each activation and the following dropout run fused
    (:func:`activation_dropout`): the same values, with a backward pass that
    stores only the layer's output.

    Args:
      params: from :func:`mlp_init`.
      x: ``(..., n_in)`` inputs, usually ``(batch, n_in)``.
      key: PRNG key; required when some ``keep_probs`` entry is below 1 and
        ``deterministic`` is False, and checked whenever given. Pass a fresh
        key every step.
      keep_probs: one keep probability per layer, in (0, 1], each a float or a
        traced scalar; ``None`` means no dropout.
      deterministic: if true, the plain network: all units, no scaling, no
        key; a bool, or a concrete real scalar read as one.
      activation: "relu", "tanh", "sigmoid", "gelu", or a callable.

    Returns:
      ``(..., n_out)`` logits.

    Raises:
      ValueError: if ``len(keep_probs) != len(params)``, the input width is not
        the first layer's ``n_in``, a keep probability is outside (0, 1], the
        activation is unknown, or ``key`` is missing while dropout is active.
      TypeError: if ``x`` is not floating.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> params = jdrop.mlp_init(jax.random.key(0), (40, 128, 10))
      >>> x = jnp.ones((32, 40))
      >>> key = jax.random.key(1)
      >>> logits = jdrop.mlp_apply(params, x, key=key, keep_probs=(0.9, 0.5))
      >>> logits.shape
      (32, 10)
      >>> jdrop.mlp_apply(params, x, deterministic=True).shape  # evaluation
      (32, 10)
    """
    _resolve_activation(activation)
    deterministic = _check_deterministic(deterministic)
    _check_mlp_params(params, "jdrop.mlp_apply")
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    _check_floating(x)
    n_in = params[0]["w"].shape[0]
    if x.ndim == 0 or x.shape[-1] != n_in:
        raise ValueError(
            f"x has {x.shape[-1] if x.ndim else 0} features (shape {x.shape}), but the first layer takes {n_in} "
            f"(params[0]['w'] has shape {params[0]['w'].shape})."
        )
    keep, concrete = _check_layer_keep_probs(keep_probs, len(params))
    active = not deterministic and any(value != 1.0 for value in concrete)
    _key_if_given(key)
    keys = jax.random.split(_as_key(key, or_else=OR_DETERMINISTIC), len(params)) if active else [None] * len(params)
    # Dropout on the input features; then each hidden layer's activation and
    # the next layer's input dropout run as one fused op (activation_dropout),
    # whose backward pass keeps only its output.
    a = dropout(keys[0], x, keep[0], deterministic=not active)
    for i, layer in enumerate(params[:-1]):
        z = _affine(a, layer)
        a = activation_dropout(keys[i + 1], z, keep[i + 1], activation=activation, deterministic=not active)
    return _affine(a, params[-1])


def _affine(a: jax.Array, layer: dict[str, jax.Array]) -> jax.Array:
    """``a @ w + b``, the bias given the product's rank (no rank promotion, as Flax's Dense adds it)."""
    z = a @ layer["w"]
    bias = layer["b"]
    return z + bias.reshape((1,) * (z.ndim - bias.ndim) + bias.shape)
