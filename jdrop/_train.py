"""Training and evaluation of the dropout MLP with any optax optimiser."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jdrop._activation import Activation, _resolve_activation
from jdrop._dropout import _check_keep_prob
from jdrop._mlp import Params, mlp_apply

__all__ = ["TrainState", "evaluate", "init_train_state", "l2_penalty", "make_train_step"]


class TrainState(NamedTuple):
    """Everything a training step updates.

    Attributes:
      params: MLP parameters, from :func:`jdrop.mlp_init`.
      opt_state: the optax optimiser state.
      step: int32 scalar, the number of steps taken; folded into the dropout
        key so that every step draws new masks.
    """

    params: Params
    opt_state: optax.OptState
    step: jax.Array


def init_train_state(params: Params, optimizer: optax.GradientTransformation) -> TrainState:
    """Starts training: the optimiser state for ``params`` and step 0.

    Args:
      params: from :func:`jdrop.mlp_init`.
      optimizer: any optax gradient transformation.

    Returns:
      A :class:`TrainState`.

    Example:
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
      A float32 scalar.

    Example:
      >>> params = [{"w": jnp.ones((2, 3)), "b": jnp.ones(3)}]
      >>> float(jdrop.l2_penalty(params, l2=0.5, num_examples=3))  # 0.5 / 6 * 6
      0.5
    """
    squares = sum(jnp.sum(jnp.square(layer["w"].astype(jnp.float32))) for layer in params)
    return jnp.asarray(l2 / (2 * num_examples) * squares, jnp.float32)


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
    cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()
    loss = cross_entropy + l2_penalty(params, l2, y.shape[0]) if l2 else cross_entropy
    return loss, (cross_entropy, logits)


def _accuracy(logits: jax.Array, y: jax.Array) -> jax.Array:
    return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


TrainStep = Callable[[TrainState, jax.Array, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]
#: A keep probability, or an optax-style schedule ``step -> keep probability``.
KeepProb = float | Callable[[jax.Array], jax.Array | float]


def _check_keep_probs(keep_probs: Sequence[KeepProb]) -> tuple[KeepProb, ...]:
    """Checks numbers now, and schedules at step 0 (later steps run traced)."""
    checked = tuple(keep_probs)
    for i, keep_prob in enumerate(checked):
        if callable(keep_prob):
            first = keep_prob(jnp.zeros((), jnp.int32))
            _check_keep_prob(first, f"keep_probs[{i}] (a schedule) at step 0")
        else:
            _check_keep_prob(keep_prob, f"keep_probs[{i}]")
    return checked


def make_train_step(
    optimizer: optax.GradientTransformation,
    *,
    keep_probs: Sequence[KeepProb] | None = None,
    activation: Activation = "relu",
    l2: float = 0.0,
) -> TrainStep:
    r"""Builds a jit-compiled, pure training step for the dropout MLP.

    The step minimises the mean softmax cross-entropy plus, if ``l2 > 0``, the
    penalty :func:`l2_penalty` with :math:`m` the batch size:

    .. math::

        J = \frac{1}{m} \sum_{i=1}^m \operatorname{CE}(f(x_i), y_i)
            + \frac{\lambda}{2m} \sum_l \lVert W_l \rVert_F^2 .

    The dropout key of step :math:`t` is ``jax.random.fold_in(key, t)``, so the
    same base ``key`` can be passed every step and no mask repeats. The
    backward pass uses the forward pass's masks.

    A keep probability may be a schedule, a function of the step count such
    as ``optax.linear_schedule(1.0, 0.5, 1000)``: it is evaluated inside the
    jitted step from ``state.step``, so its value changes every step without
    recompiling. It is checked at step 0; a later value outside [0, 1] cannot
    raise inside ``jit`` and turns the step's outputs into NaN instead.

    Args:
      optimizer: any optax gradient transformation.
      keep_probs: one keep probability per layer (see :func:`jdrop.mlp_apply`),
        each a number or a schedule ``step -> keep_prob``; None trains
        without dropout.
      activation: "relu", "tanh", "sigmoid", "gelu", or a callable.
      l2: the L2 coefficient :math:`\lambda \ge 0`; 0 disables it.

    Returns:
      ``step(state, x, y, key) -> (state, metrics)``, jitted, where ``x`` is
      ``(batch, n_in)``, ``y`` ``(batch,)`` integer labels, and ``metrics`` has
      "loss" (the objective :math:`J`), "cross_entropy" and "accuracy" of the
      batch, with dropout, and with ``keep_probs`` given, "keep_probs": the
      ``(layers,)`` keep probabilities the step used.

    Raises:
      ValueError: if ``l2`` is negative or a keep probability is outside (0, 1].

    Example:
      >>> params = jdrop.mlp_init(jax.random.key(0), (4, 16, 3))
      >>> optimizer = optax.sgd(0.1)
      >>> step = jdrop.make_train_step(optimizer, keep_probs=(1.0, 0.5), l2=1e-3)
      >>> state = jdrop.init_train_state(params, optimizer)
      >>> x, y = jnp.ones((8, 4)), jnp.zeros(8, jnp.int32)
      >>> state, metrics = step(state, x, y, jax.random.key(1))
      >>> int(state.step), sorted(metrics)
      (1, ['accuracy', 'cross_entropy', 'keep_probs', 'loss'])
      >>> schedule = optax.linear_schedule(1.0, 0.5, transition_steps=1000)
      >>> step = jdrop.make_train_step(optimizer, keep_probs=(1.0, schedule))
      >>> state, metrics = step(state, x, y, jax.random.key(1))
      >>> [round(p, 4) for p in metrics["keep_probs"].tolist()]  # at step 1
      [1.0, 0.9995]
    """
    l2 = _check_l2(l2)
    schedules = None if keep_probs is None else _check_keep_probs(keep_probs)
    _resolve_activation(activation)

    @jax.jit
    def step(state: TrainState, x: jax.Array, y: jax.Array, key: jax.Array) -> tuple[TrainState, dict[str, jax.Array]]:
        keep = None
        if schedules is not None:
            keep = tuple(p(state.step) if callable(p) else p for p in schedules)
        loss_fn = functools.partial(_loss, keep_probs=keep, activation=activation, l2=l2, deterministic=False)
        step_key = jax.random.fold_in(key, state.step)
        (loss, (cross_entropy, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, x, y, step_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "cross_entropy": cross_entropy, "accuracy": _accuracy(logits, y)}
        if keep is not None:
            metrics["keep_probs"] = jnp.stack([jnp.asarray(p, jnp.float32) for p in keep])
        return TrainState(params, opt_state, state.step + 1), metrics

    return step


@functools.partial(jax.jit, static_argnames=("activation",))
def _evaluate(params: Params, x: jax.Array, y: jax.Array, activation: Activation) -> dict[str, jax.Array]:
    _, (cross_entropy, logits) = _loss(
        params, x, y, None, keep_probs=None, activation=activation, l2=0.0, deterministic=True
    )
    return {"cross_entropy": cross_entropy, "accuracy": _accuracy(logits, y)}


def evaluate(params: Params, x: jax.Array, y: jax.Array, *, activation: Activation = "relu") -> dict[str, jax.Array]:
    """Deterministic evaluation: all units, no scaling, no key (jitted).

    Args:
      params: MLP parameters.
      x: ``(n, n_in)`` inputs.
      y: ``(n,)`` integer labels.
      activation: as in training.

    Returns:
      ``{"cross_entropy": ..., "accuracy": ...}``, float32 scalars.

    Example:
      >>> params = jdrop.mlp_init(jax.random.key(0), (4, 16, 3))
      >>> metrics = jdrop.evaluate(params, jnp.ones((8, 4)), jnp.zeros(8, jnp.int32))
      >>> sorted(metrics)
      ['accuracy', 'cross_entropy']
    """
    _resolve_activation(activation)
    metrics: dict[str, jax.Array] = _evaluate(params, x, y, activation)
    return metrics
