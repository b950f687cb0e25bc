"""Monte Carlo dropout: predictive uncertainty from stochastic forward passes."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jdrop._activation import Activation, _reject_activation_with, _resolve_activation
from jdrop._checks import KeyLike, _as_key, _check_count, _key_if_given
from jdrop._mlp import Params, _check_layer_keep_probs, _check_mlp_params, mlp_apply

__all__ = ["MCPrediction", "mc_predict"]


class MCPrediction(NamedTuple):
    r"""Monte Carlo dropout predictions for a batch; every field is float32 (float64 for float64 logits).

    With :math:`p_s` the class probabilities of sample :math:`s = 1..S` and
    :math:`H(p) = -\sum_c p_c \log p_c`:

    Attributes:
      mean_probs: ``(..., classes)``, :math:`\bar p = \frac1S \sum_s p_s`.
      predictive_entropy: ``(...)``, :math:`H(\bar p)`: total uncertainty.
      expected_entropy: ``(...)``, :math:`\frac1S \sum_s H(p_s)`: the part
        each network is sure is noise (aleatoric).
      mutual_information: ``(...)``, :math:`H(\bar p) - \frac1S \sum_s H(p_s)`:
        disagreement between the sampled networks (epistemic; "BALD").
      std: ``(..., classes)``, the standard deviation of :math:`p_{s,c}` over
        samples.
    """

    mean_probs: jax.Array
    predictive_entropy: jax.Array
    expected_entropy: jax.Array
    mutual_information: jax.Array
    std: jax.Array


def _entropy(probs: jax.Array) -> jax.Array:
    return -jnp.sum(jax.scipy.special.xlogy(probs, probs), axis=-1)


#: ``apply_fn(params, x, *, key) -> logits``: one stochastic forward pass.
ApplyFn = Callable[..., jax.Array]


@functools.lru_cache(maxsize=64)
def _mlp_sampler(keep_probs: tuple[float, ...], activation: Activation) -> ApplyFn:
    """The MLP as an ``apply_fn``; cached, so that equal settings hit the jit cache."""

    def apply_fn(params: Params, x: jax.Array, *, key: jax.Array) -> jax.Array:
        return mlp_apply(params, x, key=key, keep_probs=keep_probs, activation=activation)

    return apply_fn


@functools.partial(jax.jit, static_argnames=("apply_fn", "num_samples", "chunk_size"))
def _mc_predict(
    params: Any,
    x: Any,
    key: jax.Array,
    apply_fn: ApplyFn,
    num_samples: int,
    chunk_size: int,
) -> MCPrediction:
    def probs_of(sample_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = apply_fn(params, x, key=sample_key)
        # At least float32: float64 logits (jax_enable_x64) keep their precision.
        probs = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
        # The same formula as for the mean, so that identical samples give
        # exactly zero mutual information.
        return probs, _entropy(probs)

    keys = jax.random.split(key, num_samples)
    # Sums are of differences from sample 0 (the shifted-data algorithm): no
    # cancellation in the variance, and exactly zero spread when all samples
    # agree. Sample 0 is recomputed as the reference: a deliberate reuse of its
    # key, declared with clone for JAX's key-reuse checker. The last chunk is
    # padded with weight-0 samples on keys split from another clone of it.
    reference_probs, reference_entropy = probs_of(jax.random.clone(keys)[0])  # type: ignore[no-untyped-call, unused-ignore]  # typed in newer jax
    num_chunks = -(-num_samples // chunk_size)
    padding = jax.random.split(
        jax.random.clone(keys)[0],  # type: ignore[no-untyped-call, unused-ignore]  # typed in newer jax
        num_chunks * chunk_size - num_samples,
    )
    padded = jnp.concatenate([keys, padding])
    weights = (jnp.arange(num_chunks * chunk_size) < num_samples).astype(reference_probs.dtype)

    def add_chunk(
        sums: tuple[jax.Array, jax.Array, jax.Array], chunk: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        chunk_keys, chunk_weights = chunk
        probs, entropy = jax.vmap(probs_of)(chunk_keys)  # (chunk, ..., classes): bounded memory
        shift = probs - reference_probs[None]  # the chunk's samples against sample 0
        return (
            sums[0] + jnp.tensordot(chunk_weights, shift, axes=1),
            sums[1] + jnp.tensordot(chunk_weights, shift * shift, axes=1),
            sums[2] + jnp.tensordot(chunk_weights, entropy - reference_entropy[None], axes=1),
        ), None

    zeros = jnp.zeros_like(reference_probs)
    start = (zeros, zeros, jnp.zeros_like(reference_entropy))
    chunks = (padded.reshape(num_chunks, chunk_size), weights.reshape(num_chunks, chunk_size))
    (shift_sum, square_sum, entropy_sum), _ = jax.lax.scan(add_chunk, start, chunks)
    mean_shift = shift_sum / num_samples
    mean_probs = reference_probs + mean_shift
    variance = jnp.maximum(square_sum / num_samples - mean_shift * mean_shift, 0.0)
    predictive_entropy = _entropy(mean_probs)
    expected_entropy = reference_entropy + entropy_sum / num_samples
    return MCPrediction(
        mean_probs=mean_probs,
        predictive_entropy=predictive_entropy,
        expected_entropy=expected_entropy,
        # Never negative in exact arithmetic (entropy is concave); clip rounding.
        mutual_information=jnp.maximum(predictive_entropy - expected_entropy, 0.0),
        std=jnp.sqrt(variance),
    )


def mc_predict(
    params: Any,
    x: Any,
    *,
    key: KeyLike | None = None,
    num_samples: int,
    apply_fn: ApplyFn | None = None,
    keep_probs: Sequence[float] | None = None,
    activation: Activation | None = None,
    chunk_size: int | None = None,
) -> MCPrediction:
    r"""Monte Carlo dropout (Gal and Ghahramani, 2016): averages ``num_samples`` dropout networks.

    Sample :math:`i` is one stochastic forward pass with the key
    ``jax.random.split(key, num_samples)[i]``: ``apply_fn(params, x, key=key_i)``
    for a model of your own (for example a Flax or Equinox model with jdrop's
    drop-in Dropout, left in training mode), or, without ``apply_fn``,
    :func:`jdrop.mlp_apply` with ``keep_probs``. Samples run ``chunk_size`` at
    a time under ``vmap``, so memory grows with ``chunk_size``, not with
    ``num_samples``. The mean of the softmax outputs approximates the
    predictive distribution of a Bayesian network; see :class:`MCPrediction`
    for the uncertainty measures. Jitted; the same key gives the same result,
    and the result does not depend on ``chunk_size`` beyond float rounding.

    Args:
      params: from :func:`jdrop.mlp_init`, or whatever ``apply_fn`` takes.
      x: ``(..., n_in)`` inputs for the MLP; whatever ``apply_fn`` takes.
      key: PRNG key (keyword-only); needed unless the MLP's keep
        probabilities are all 1.0, and checked whenever given.
      num_samples: number of stochastic forward passes, >= 1.
      apply_fn: ``apply_fn(params, x, *, key) -> (..., classes)`` logits, one
        stochastic forward pass that draws its dropout masks from ``key``. It
        is a static argument of the jitted function: define it once, not per
        call, or every call compiles anew.
      keep_probs: the MLP's keep probabilities, one per layer, usually those of
        training; needed without ``apply_fn``, not allowed with it (the model
        has its own rates).
      activation: the MLP's activation, as in training; None means "relu".
        Not allowed with ``apply_fn`` (the model has its own).
      chunk_size: samples evaluated at once, >= 1; default ``min(num_samples, 16)``.

    Returns:
      An :class:`MCPrediction`.

    Raises:
      ValueError: if ``num_samples`` or ``chunk_size`` is below 1, the key is
        missing while dropout is active, ``keep_probs`` is missing without
        ``apply_fn``, given with it, or invalid (as in :func:`jdrop.mlp_apply`),
        or ``activation`` is given with ``apply_fn``.
      TypeError: if, without ``apply_fn``, ``params`` did not come from
        :func:`jdrop.mlp_init`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> params = jdrop.mlp_init(jax.random.key(0), (8, 32, 3))
      >>> x = jnp.ones((5, 8))
      >>> mc = jdrop.mc_predict(
      ...     params, x, key=jax.random.key(1), keep_probs=(1.0, 0.5), num_samples=64
      ... )
      >>> mc.mean_probs.shape, mc.mutual_information.shape
      ((5, 3), (5,))
      >>> bool(jnp.allclose(mc.mean_probs.sum(-1), 1.0))
      True

      Any stochastic model, here a linear layer with dropout on its input:

      >>> def apply_fn(params, x, *, key):
      ...     return jdrop.dropout(key, x, 0.5) @ params["w"]
      >>> params = {"w": jnp.eye(8, 3)}
      >>> mc = jdrop.mc_predict(
      ...     params, x, key=jax.random.key(2), num_samples=16, apply_fn=apply_fn
      ... )
      >>> mc.mean_probs.shape
      (5, 3)
    """
    _check_count(num_samples, "num_samples")
    if chunk_size is not None:
        _check_count(chunk_size, "chunk_size")
    if apply_fn is not None:
        if not callable(apply_fn):
            raise TypeError(f"apply_fn must be callable as apply_fn(params, x, *, key) -> logits, got {apply_fn!r}.")
        if keep_probs is not None:
            raise ValueError("keep_probs is for jdrop's MLP; with apply_fn the model's own dropout rates apply.")
        _reject_activation_with(activation, "apply_fn")
        typed_key = _as_key(key)
    else:
        _check_mlp_params(params, "jdrop.mc_predict without apply_fn", "pass apply_fn=")
        if keep_probs is None:
            raise ValueError(
                "keep_probs is needed for jdrop's MLP (one keep probability per layer, usually those of training); "
                "for a model of your own pass apply_fn."
            )
        activation = "relu" if activation is None else activation
        _resolve_activation(activation)
        _, concrete = _check_layer_keep_probs(keep_probs, len(params))
        if any(value is None for value in concrete):
            raise TypeError("keep_probs must be Python floats here (they are static arguments of the jitted function).")
        active = any(value != 1.0 for value in concrete)
        given = _key_if_given(key)  # checked when given, even if nothing is dropped
        typed_key = _as_key(key) if active else jax.random.key(0) if given is None else given
        apply_fn = _mlp_sampler(tuple(float(p) for p in concrete), activation)  # type: ignore[arg-type]
    chunk = min(int(num_samples), 16) if chunk_size is None else min(int(chunk_size), int(num_samples))
    prediction: MCPrediction = _mc_predict(params, x, typed_key, apply_fn, int(num_samples), chunk)
    return prediction
