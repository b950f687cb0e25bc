"""Training and evaluation of the dropout MLP with any optax optimiser."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from jdrop._activation import Activation, _reject_activation_with, _resolve_activation
from jdrop._checks import KeyLike, _as_key, _check_keep_probs, _compute_dtype
from jdrop._mlp import Params, _check_mlp_params, mlp_apply

__all__ = ["TrainState", "evaluate", "init_train_state", "l2_penalty", "make_train_step"]


class TrainState(NamedTuple):
    """Everything a training step updates.

    Attributes:
      params: the parameters: an MLP's from :func:`jdrop.mlp_init`, or any
        pytree of arrays (a Flax ``nnx.State``, an Equinox model's arrays)
        when the step has a ``loss_fn``.
      opt_state: the optax optimiser state.
      step: int32 scalar, the number of steps taken; folded into the dropout
        key so that every step draws new masks.
    """

    params: Any
    opt_state: optax.OptState
    step: jax.Array


def init_train_state(params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """Starts training: the optimiser state for ``params`` and step 0.

    Args:
      params: from :func:`jdrop.mlp_init`, or any pytree of arrays for a step
        with a ``loss_fn``.
      optimizer: any optax gradient transformation.

    Returns:
      A :class:`TrainState`.

    Example:
      >>> import jax
      >>> import optax
      >>> import jdrop
      >>> params = jdrop.mlp_init(jax.random.key(0), (4, 8, 3))
      >>> state = jdrop.init_train_state(params, optax.adam(1e-3))
      >>> int(state.step)
      0
    """
    return TrainState(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))


def l2_penalty(params: Params, l2: float, num_examples: int | jax.Array) -> jax.Array:
    r"""The classic L2 penalty on the weights (not the biases).

    .. math::

        \frac{\lambda}{2m} \sum_l \lVert W_l \rVert_F^2

    with :math:`\lambda` = ``l2`` and :math:`m` = ``num_examples``, the number
    of examples the data term is averaged over.

    Args:
      params: MLP parameters.
      l2: the coefficient :math:`\lambda \ge 0`.
      num_examples: :math:`m`.

    Returns:
      A scalar in the weights' precision, at least float32.

    Example:
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> params = [{"w": jnp.ones((2, 3)), "b": jnp.ones(3)}]
      >>> float(jdrop.l2_penalty(params, l2=0.5, num_examples=3))  # 0.5 / 6 * 6
      0.5
    """
    _check_mlp_params(params, "jdrop.l2_penalty")
    dtype = _compute_dtype(params[0]["w"])
    squares = sum(jnp.sum(jnp.square(layer["w"].astype(dtype))) for layer in params)
    return jnp.asarray(l2 / (2 * num_examples) * squares, dtype)


def _check_l2(l2: float) -> float:
    if isinstance(l2, bool) or not isinstance(l2, numbers.Real) or not l2 >= 0.0:
        raise ValueError(f"l2 must be a real number >= 0, got {l2!r}.")
    return float(l2)


def _loss(
    params: Params,
    x: jax.Array,
    y: jax.Array,
    key: jax.Array | None,
    *,
    keep_probs: Sequence[float | jax.Array] | None,
    activation: Activation,
    l2: float,
    deterministic: bool,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    logits = mlp_apply(params, x, key=key, keep_probs=keep_probs, deterministic=deterministic, activation=activation)
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits.astype(_compute_dtype(logits)), y).mean()
    loss = cross_entropy + l2_penalty(params, l2, y.shape[0]) if l2 else cross_entropy
    return loss, (cross_entropy, logits)


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


#: ``step(state, x, y, *, key) -> (state, metrics)``.
TrainStep = Callable[..., tuple[TrainState, dict[str, jax.Array]]]
#: A keep probability, or an optax-style schedule ``step -> keep probability``.
KeepProb = float | Callable[[jax.Array], jax.Array | float]
#: ``loss_fn(params, x, y, *, key, keep_probs) -> loss`` or ``(loss, metrics)``.
LossFn = Callable[..., Any]


_RESERVED_METRICS = frozenset({"loss", "keep_probs"})


def _call_loss_fn(
    loss_fn: LossFn, params: Any, x: Any, y: Any, key: jax.Array, keep: tuple[Any, ...] | None
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Calls a user's ``loss_fn`` and checks what it returns."""
    out = loss_fn(params, x, y, key=key, keep_probs=keep)
    metrics: Mapping[str, jax.Array] = {}
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise TypeError(
                "loss_fn must return a scalar loss or a (loss, metrics) pair with metrics a dict, "
                f"got a tuple of {len(out)} elements."
            )
        out, metrics = out
        clash = _RESERVED_METRICS & set(metrics)
        if clash:
            raise ValueError(f"loss_fn's metrics may not be named {sorted(clash)}: the step reports those itself.")
    loss = jnp.asarray(out)
    if loss.shape != () or not jnp.issubdtype(loss.dtype, jnp.floating):
        raise TypeError(f"loss_fn must return a floating scalar loss, got shape {loss.shape} and dtype {loss.dtype}.")
    return loss, dict(metrics)


def make_train_step(
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: LossFn | None = None,
    keep_probs: Sequence[KeepProb] | None = None,
    activation: Activation | None = None,
    l2: float = 0.0,
) -> TrainStep:
    r"""Builds a jit-compiled, pure training step: jdrop's MLP, or any model through ``loss_fn``.

    **Any model.** With ``loss_fn``, the step differentiates
    ``loss_fn(params, x, y, key=key, keep_probs=keep_probs)`` with respect to
    ``params`` (any pytree of arrays) and applies the optimiser. ``x`` and ``y`` are passed
    through untouched, so they may be any pytrees; ``key`` is the step's
    dropout key; ``keep_probs`` is None, or a tuple with one entry per given
    keep probability: the number itself, or a schedule's traced value at this
    step. ``loss_fn`` returns a scalar loss, or ``(loss, metrics)`` with a
    dict of scalar metrics to report. The model's own dropout layers (for
    example :class:`jdrop.nnx.Dropout` or :class:`jdrop.equinox.Dropout`)
    take their keys from ``key``.

    **jdrop's MLP.** Without ``loss_fn``, the step minimises the mean softmax
    cross-entropy of :func:`jdrop.mlp_apply` plus, if ``l2 > 0``, the penalty
    :func:`l2_penalty` with :math:`m` the batch size:

    .. math::

        J = \frac{1}{m} \sum_{i=1}^m \operatorname{CE}(f(x_i), y_i)
            + \frac{\lambda}{2m} \sum_l \lVert W_l \rVert_F^2 .

    In both cases the key of step :math:`t` is ``jax.random.fold_in(key, t)``,
    so the same base ``key`` can be passed every step and no mask repeats; the
    backward pass uses the forward pass's masks.

    A keep probability may be a schedule, a function of the step count such
    as ``optax.linear_schedule(1.0, 0.5, 1000)``: it is evaluated inside the
    jitted step from ``state.step``, so its value changes every step without
    recompiling. It is checked at step 0; a later value outside [0, 1] cannot
    raise inside ``jit`` and turns the step's outputs into NaN instead.

    Args:
      optimizer: any optax gradient transformation.
      loss_fn: ``loss_fn(params, x, y, *, key, keep_probs) -> loss`` or
        ``(loss, metrics)``, called with ``key`` and ``keep_probs`` as
        keywords; None trains jdrop's MLP.
      keep_probs: keep probabilities, each a number or a schedule
        ``step -> keep_prob``. For the MLP, one per layer (see
        :func:`jdrop.mlp_apply`), None training without dropout; with
        ``loss_fn``, as many as ``loss_fn`` uses.
      activation: the MLP's activation: "relu", "tanh", "sigmoid", "gelu", or
        a callable; None means "relu". Not allowed with ``loss_fn``.
      l2: the MLP's L2 coefficient :math:`\lambda \ge 0`; 0 disables it. With
        ``loss_fn``, put a penalty into ``loss_fn`` (or chain
        ``optax.add_decayed_weights``) instead.

    Returns:
      ``step(state, x, y, *, key) -> (state, metrics)``, jitted; ``key`` is
      keyword-only. ``metrics`` has
      "loss" (the objective, with dropout) and, with ``keep_probs`` given,
      "keep_probs": the keep probabilities the step used, as an array. For the
      MLP, ``x`` is ``(batch, n_in)``, ``y`` ``(batch,)`` integer labels, and
      ``metrics`` also has "cross_entropy" and "accuracy" of the batch; with
      ``loss_fn``, it also has ``loss_fn``'s metrics.

    Raises:
      ValueError: if ``l2`` is negative, or given with ``loss_fn``; if a keep
        probability is outside (0, 1]; or if ``activation`` is unknown or
        given with ``loss_fn``.
      TypeError: if ``loss_fn`` is not callable or ``keep_probs`` not a
        sequence. While tracing the first step: if ``loss_fn`` returns
        something other than a scalar loss or ``(loss, metrics)``, or (for
        the MLP) ``params`` did not come from :func:`jdrop.mlp_init`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import optax
      >>> import jdrop
      >>> params = jdrop.mlp_init(jax.random.key(0), (4, 16, 3))
      >>> optimizer = optax.sgd(0.1)
      >>> step = jdrop.make_train_step(optimizer, keep_probs=(1.0, 0.5), l2=1e-3)
      >>> state = jdrop.init_train_state(params, optimizer)
      >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
      >>> state, metrics = step(state, x, y, key=jax.random.key(1))
      >>> int(state.step), sorted(metrics)
      (1, ['accuracy', 'cross_entropy', 'keep_probs', 'loss'])
      >>> schedule = optax.linear_schedule(1.0, 0.5, transition_steps=1000)
      >>> step = jdrop.make_train_step(optimizer, keep_probs=(1.0, schedule))
      >>> state, metrics = step(state, x, y, key=jax.random.key(1))
      >>> [round(p, 4) for p in metrics["keep_probs"].tolist()]  # at step 1
      [1.0, 0.9995]

      Any model: a loss function of the parameters, the batch and a key.

      >>> def loss_fn(params, x, y, key, keep_probs):
      ...     hidden = jdrop.dropout(key, jnp.tanh(x @ params["w"]), keep_probs[0])
      ...     error = jnp.mean((hidden.sum(-1) - y) ** 2)
      ...     return error, {"mean_hidden": hidden.mean()}
      >>> params = {"w": jnp.full((4, 8), 0.1)}
      >>> step = jdrop.make_train_step(optimizer, loss_fn=loss_fn, keep_probs=(0.5,))
      >>> state = jdrop.init_train_state(params, optimizer)
      >>> state, metrics = step(state, x, jnp.ones(8), key=jax.random.key(2))
      >>> sorted(metrics)
      ['keep_probs', 'loss', 'mean_hidden']
    """
    l2 = _check_l2(l2)
    schedules = None
    if keep_probs is not None:
        schedules, _ = _check_keep_probs(
            keep_probs, expected="one keep probability or schedule per layer", schedules=True
        )
    if loss_fn is not None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable as loss_fn(params, x, y, *, key, keep_probs), got {loss_fn!r}.")
        if l2:
            raise ValueError(
                "l2 is the MLP's weight penalty and cannot be applied with loss_fn: add a penalty to "
                "loss_fn, or chain optax.add_decayed_weights with your optimizer."
            )
        _reject_activation_with(activation, "loss_fn")
    mlp_activation = "relu" if activation is None else activation
    _resolve_activation(mlp_activation)

    def objective(
        params: Any, x: Any, y: Any, key: jax.Array, keep: tuple[Any, ...] | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        if loss_fn is not None:
            return _call_loss_fn(loss_fn, params, x, y, key, keep)
        _check_mlp_params(params, "jdrop.make_train_step without loss_fn", "pass loss_fn=")
        x, y = jnp.asarray(x), jnp.asarray(y)  # Python lists, as anywhere in jax.numpy
        loss, (cross_entropy, logits) = _loss(
            params, x, y, key, keep_probs=keep, activation=mlp_activation, l2=l2, deterministic=False
        )
        return loss, {"cross_entropy": cross_entropy, "accuracy": _accuracy(logits, y)}

    @jax.jit
    def step(state: TrainState, x: Any, y: Any, *, key: KeyLike) -> tuple[TrainState, dict[str, jax.Array]]:
        keep = None
        if schedules is not None:
            keep = tuple(p(state.step) if callable(p) else p for p in schedules)
        step_key = jax.random.fold_in(_as_key(key), state.step)
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params, x, y, step_key, keep)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, **metrics}
        if keep is not None:
            metrics["keep_probs"] = jnp.stack([jnp.asarray(p, jnp.float32) for p in keep])
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


def _metrics_of_logits(logits: jax.Array, y: jax.Array) -> dict[str, jax.Array]:
    if logits.ndim < 1 or logits.shape[:-1] != y.shape or not jnp.issubdtype(y.dtype, jnp.integer):
        raise ValueError(
            f"evaluate needs logits of shape (..., classes) and integer labels of shape (...): got logits of "
            f"shape {logits.shape} and labels of shape {y.shape} and dtype {y.dtype}."
        )
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits.astype(_compute_dtype(logits)), y).mean()
    return {"cross_entropy": cross_entropy, "accuracy": _accuracy(logits, y)}


@functools.partial(jax.jit, static_argnames=("apply_fn", "activation"))
def _evaluate(
    params: Any,
    x: Any,
    y: jax.Array,
    apply_fn: Callable[[Any, Any], jax.Array] | None,
    activation: Activation | None,
) -> dict[str, jax.Array]:
    if apply_fn is None:
        logits = mlp_apply(params, x, deterministic=True, activation=activation or "relu")
    else:
        logits = apply_fn(params, x)
    return _metrics_of_logits(logits, y)


def evaluate(
    params: Any,
    x: Any,
    y: ArrayLike,
    *,
    apply_fn: Callable[[Any, Any], jax.Array] | None = None,
    activation: Activation | None = None,
) -> dict[str, jax.Array]:
    """Deterministic evaluation: all units, no scaling, no key (jitted).

    Args:
      params: MLP parameters, or anything ``apply_fn`` takes.
      x: ``(n, n_in)`` inputs for the MLP; anything ``apply_fn`` takes.
      y: ``(n,)`` integer labels.
      apply_fn: ``apply_fn(params, x) -> (n, classes)`` logits of your own
        model in evaluation mode (for example an NNX model merged with
        ``deterministic=True``); None runs jdrop's MLP. It is a static
        argument of the jitted evaluation: define it once, not per call.
      activation: the MLP's activation, as in training; None means "relu".
        Not allowed with ``apply_fn``.

    Returns:
      ``{"cross_entropy": ..., "accuracy": ...}``: scalars in the logits'
      precision, at least float32 (accuracy is float32).

    Raises:
      TypeError: if, without ``apply_fn``, ``params`` did not come from
        :func:`jdrop.mlp_init`.
      ValueError: if the logits and labels do not match, or ``activation`` is
        unknown or given with ``apply_fn``.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> params = jdrop.mlp_init(jax.random.key(0), (4, 16, 3))
      >>> metrics = jdrop.evaluate(params, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
      >>> sorted(metrics)
      ['accuracy', 'cross_entropy']
      >>> linear = {"w": jnp.ones((4, 3))}
      >>> def apply_fn(params, x):
      ...     return x @ params["w"]
      >>> metrics = jdrop.evaluate(
      ...     linear, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32), apply_fn=apply_fn
      ... )
      >>> float(metrics["accuracy"])  # equal logits: argmax is class 0
      1.0
    """
    if apply_fn is None:
        _check_mlp_params(params, "jdrop.evaluate without apply_fn", "pass apply_fn=")
        activation = "relu" if activation is None else activation
        _resolve_activation(activation)
    elif not callable(apply_fn):
        raise TypeError(f"apply_fn must be callable as apply_fn(params, x) -> logits, got {apply_fn!r}.")
    else:
        _reject_activation_with(activation, "apply_fn")
    metrics: dict[str, jax.Array] = _evaluate(params, x, jnp.asarray(y), apply_fn, activation)
    return metrics
