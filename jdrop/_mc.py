"""Monte Carlo dropout: predictive uncertainty from stochastic forward passes."""

from __future__ import annotations

import functools
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jdrop._activation import Activation, _resolve_activation
from jdrop._dropout import _as_key
from jdrop._mlp import Params, _check_layer_keep_probs, mlp_apply

__all__ = ["MCPrediction", "mc_predict"]


class MCPrediction(NamedTuple):
    r"""Monte Carlo dropout predictions for a batch; every field is float32.

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


@functools.partial(jax.jit, static_argnames=("keep_probs", "num_samples", "activation", "chunk_size"))
def _mc_predict(
    params: Params,
    x: jax.Array,
    key: jax.Array,
    keep_probs: tuple[float, ...],
    num_samples: int,
    activation: Activation,
    chunk_size: int,
) -> MCPrediction:
    def probs_of(sample_key: jax.Array) -> tuple[jax.Array, jax.Array]:
        logits = mlp_apply(params, x, key=sample_key, keep_probs=keep_probs, activation=activation)
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
        # The same formula as for the mean, so that identical samples give
        # exactly zero mutual information.
        return probs, _entropy(probs)

    keys = jax.random.split(key, num_samples)
    # Sums are of differences from sample 0 (the shifted-data algorithm): no
    # cancellation in the variance, and exactly zero spread when all samples agree.
    reference_probs, reference_entropy = probs_of(keys[0])
    num_chunks = -(-num_samples // chunk_size)
    padded = jnp.concatenate([keys, jnp.tile(keys[:1], num_chunks * chunk_size - num_samples)])
    weights = (jnp.arange(num_chunks * chunk_size) < num_samples).astype(jnp.float32)

    def add_chunk(
        sums: tuple[jax.Array, jax.Array, jax.Array], chunk: tuple[jax.Array, jax.Array]
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        chunk_keys, chunk_weights = chunk
        probs, entropy = jax.vmap(probs_of)(chunk_keys)  # (chunk, ..., classes): bounded memory
        shift = probs - reference_probs
        return (
            sums[0] + jnp.tensordot(chunk_weights, shift, axes=1),
            sums[1] + jnp.tensordot(chunk_weights, shift * shift, axes=1),
            sums[2] + jnp.tensordot(chunk_weights, entropy - reference_entropy, axes=1),
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


def _check_count(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}.")


def mc_predict(
    params: Params,
    x: jax.Array,
    key: jax.Array | None,
    *,
    keep_probs: Sequence[float],
    num_samples: int,
    activation: Activation = "relu",
    chunk_size: int | None = None,
) -> MCPrediction:
    r"""Monte Carlo dropout (Gal and Ghahramani, 2016): averages ``num_samples`` dropout networks.

    Runs :func:`jdrop.mlp_apply` with dropout on ``num_samples`` independent
    keys (``jax.random.split(key, num_samples)``), ``chunk_size`` samples at a
    time under ``vmap``, so memory grows with ``chunk_size``, not with
    ``num_samples``. The mean of the softmax outputs approximates the
    predictive distribution of a Bayesian network; see :class:`MCPrediction`
    for the uncertainty measures. Jitted; the same key gives the same result,
    and the result does not depend on ``chunk_size`` beyond float rounding.

    Args:
      params: from :func:`jdrop.mlp_init`.
      x: ``(..., n_in)`` inputs.
      key: PRNG key; needed unless every keep probability is 1.0.
      keep_probs: one keep probability per layer, usually those of training.
      num_samples: number of stochastic forward passes, >= 1.
      activation: as in training.
      chunk_size: samples evaluated at once, >= 1; default ``min(num_samples, 16)``.

    Returns:
      An :class:`MCPrediction`.

    Raises:
      ValueError: if ``num_samples`` or ``chunk_size`` is below 1, the key is
        missing while dropout is active, or ``keep_probs`` is invalid (as in
        :func:`jdrop.mlp_apply`).

    Example:
      >>> params = jdrop.mlp_init(jax.random.key(0), (8, 32, 3))
      >>> x = jnp.ones((5, 8))
      >>> mc = jdrop.mc_predict(params, x, jax.random.key(1), keep_probs=(1.0, 0.5), num_samples=64)
      >>> mc.mean_probs.shape, mc.mutual_information.shape
      ((5, 3), (5,))
      >>> bool(jnp.allclose(mc.mean_probs.sum(-1), 1.0))
      True
    """
    _check_count(num_samples, "num_samples")
    if chunk_size is not None:
        _check_count(chunk_size, "chunk_size")
    _, concrete = _check_layer_keep_probs(keep_probs, len(params))
    if any(value is None for value in concrete):
        raise TypeError("keep_probs must be Python floats here (they are static arguments of the jitted function).")
    _resolve_activation(activation)
    active = any(value != 1.0 for value in concrete)
    typed_key = _as_key(key) if active else jax.random.key(0)  # unused when nothing is dropped
    chunk = min(int(num_samples), 16) if chunk_size is None else min(int(chunk_size), int(num_samples))
    static_keep = tuple(float(p) for p in concrete)  # type: ignore[arg-type]  # None excluded above
    prediction: MCPrediction = _mc_predict(params, x, typed_key, static_keep, int(num_samples), activation, chunk)
    return prediction
