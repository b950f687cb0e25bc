r"""The dropout family beyond Bernoulli masks: Gaussian, alpha, drop-path and concrete dropout.

Each draws its noise from the same position-keyed generator as
:func:`jdrop.dropout` (:mod:`jdrop._generator`): values depend only on the key
and each entry's position, so they are identical under any sharding, and a
call costs five key words from ``jax.random`` plus a hash per entry.
Continuous noise (Gaussian, logistic) uses all 32 bits of an entry's hash
through :func:`jdrop._generator.half_uniform`, not the 16 a mask compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jdrop._checks import (
    OR_DETERMINISTIC,
    KeyLike,
    _as_key,
    _check_count,
    _check_deterministic,
    _check_floating,
    _check_keep_logit,
    _check_noise_input,
    _check_positive,
    _compute_dtype,
    _key_if_given,
    _times,
)
from jdrop._dropout import _checked_noise_shape, _draw_mask, _noise_shape, dropout
from jdrop._generator import Sharding, draw_sharding, half_uniform

__all__ = [
    "alpha_dropout",
    "concrete_dropout",
    "concrete_dropout_regularizer",
    "drop_path",
    "gaussian_dropout",
]

#: SELU's negative saturation value, :math:`-\lambda \alpha` (Klambauer et al. 2017).
SELU_SATURATION = -1.0507009873554805 * 1.6732632423543772
DROP_PATH_MODES = ("row", "batch")


# M. Giles, "Approximating the erfinv function" (GPU Computing Gems, 2011): the
# single-precision polynomials, in w = -log((1 - x)(1 + x)), for w < 5 and w >= 5.
_ERFINV_CENTRAL = (
    2.81022636e-08, 3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087,
    -0.00125372503, -0.00417768164, 0.246640727, 1.50140941,
)  # fmt: skip
_ERFINV_TAIL = (
    -0.000200214257, 0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773,
    -0.0076224613, 0.00943887047, 1.00167406, 2.83297682,
)  # fmt: skip


def _horner(coefficients: tuple[float, ...], t: jax.Array) -> jax.Array:
    value = jnp.full_like(t, coefficients[0])
    for c in coefficients[1:]:
        value = c + value * t
    return value


def _standard_normal(key: jax.Array, shape: tuple[int, ...], out_sharding: Sharding = None) -> jax.Array:
    """float32 N(0, 1) by inversion, from 32 bits per entry (tails to about 6.3).

    The lower half is :math:`z = -\\sqrt 2\\, \\operatorname{erfinv}(1 - 2v)`
    for :math:`v \\in (0, 1/2]`, with Giles' single-precision erfinv. Its
    argument :math:`w = -\\log(1 - x^2)` is computed as :math:`-\\log(4v(1 - v))`,
    from :math:`v` itself, so the tails lose nothing to the cancellation in
    :math:`1 - 2v`. Against float64 ``ndtri``: relative error below 6e-7 for
    :math:`|z| < 5.5`, below 4e-4 beyond (1 draw in 26 million); 2.7 times as
    fast as ``jax.scipy.special.ndtri`` on CPU.
    """
    v, negative = half_uniform(key, shape, out_sharding)
    lower = _lower_normal(v)
    return jnp.where(negative, lower, -lower)


def _lower_normal(v: jax.Array) -> jax.Array:
    """The standard normal quantile of ``v`` in (0, 1/2] (so <= 0), float32."""
    w = -jnp.log(4.0 * v * (1.0 - v))
    erfinv_over_x = jnp.where(w < 5.0, _horner(_ERFINV_CENTRAL, w - 2.5), _horner(_ERFINV_TAIL, jnp.sqrt(w) - 3.0))
    return -math.sqrt(2.0) * erfinv_over_x * (1.0 - 2.0 * v)


def _standard_logistic(key: jax.Array, shape: tuple[int, ...], out_sharding: Sharding = None) -> jax.Array:
    """float32 Logistic(0, 1), :math:`\\log u - \\log(1 - u)`, by the same inversion (tails to about 22.9)."""
    v, negative = half_uniform(key, shape, out_sharding)
    lower = jnp.log(v / (1.0 - v))  # one log: 1 - v is in [1/2, 1), exact enough
    return jnp.where(negative, lower, -lower)


@jax.custom_jvp
def _noise_std(keep_prob: jax.Array) -> jax.Array:
    """Gaussian dropout's noise scale :math:`\\sqrt{(1 - p) / p}` (float32), NaN outside (0, 1]."""
    valid = (keep_prob > 0.0) & (keep_prob <= 1.0)  # False for NaN
    return jnp.where(valid, jnp.sqrt((1.0 - keep_prob) / jnp.where(valid, keep_prob, 1.0)), jnp.nan)


@_noise_std.defjvp
def _noise_std_jvp(primals: tuple[jax.Array], tangents: tuple[jax.Array]) -> tuple[jax.Array, jax.Array]:
    # d/dp sqrt((1 - p) / p) = -1 / (2 std p^2). At p = 1 (std = 0) the exact
    # one-sided derivative is -inf; it is taken as 0 there, so that a schedule
    # or a learned keep probability that reaches 1 never turns gradients into
    # NaN (autodiff of the sqrt gave inf * 0 = NaN).
    (keep_prob,), (keep_prob_dot,) = primals, tangents
    std = _noise_std(keep_prob)
    positive = std > 0.0  # False for NaN
    slope = jnp.where(positive, -0.5 / (jnp.where(positive, std, 1.0) * keep_prob * keep_prob), 0.0)
    return std, slope * keep_prob_dot


def gaussian_dropout(
    key: KeyLike | None,
    x: ArrayLike,
    keep_prob: ArrayLike,
    *,
    deterministic: bool = False,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    r"""Multiplicative Gaussian noise with the mean and variance of inverted dropout.

    .. math::

        y_i = x_i\, (1 + \sigma z_i), \qquad z_i \sim \mathcal{N}(0, 1), \qquad
        \sigma^2 = \frac{1 - p}{p},

    the variance of the factor :math:`m_i / p` of Bernoulli dropout with keep
    probability :math:`p` (Srivastava et al. 2014, section 10; Keras
    ``GaussianDropout(rate)`` with ``rate = 1 - p``). :math:`z` is the inverse
    normal CDF of a 32-bit uniform, so no two neighbouring values are more
    than float32 rounding apart and the tails reach :math:`|z| \approx 6.3`.
    The noise is computed in float32 and multiplied in at least float32, with
    one rounding to ``x.dtype``.

    Args:
      key: a typed or raw PRNG key; may be None when ``deterministic=True`` or
        ``keep_prob`` is the Python value 1.0, but is checked whenever given.
      x: floating or complex array of any shape (complex: both parts get the
        same noise); any array where nothing is applied.
      keep_prob: in (0, 1]; sets :math:`\sigma`. A traced scalar does not
        trigger recompilation and is differentiable; at 1.0, where
        :math:`d\sigma/dp` is infinite, its derivative is defined as 0, so
        gradients stay finite. A traced value outside (0, 1] makes the
        output NaN.
      deterministic: if true, return ``x`` unchanged (evaluation); a bool, or
        a concrete real scalar read as one, as for :func:`dropout`.
      broadcast_dims: axes along which the noise is shared: any sequence of ints.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: if a concrete ``keep_prob`` is outside (0, 1] or NaN, an axis
        in ``broadcast_dims`` is out of range, or ``key`` is missing while
        active.
      TypeError: as :func:`dropout`: if ``x`` is neither floating nor complex
        while active, or an argument has the wrong type.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> x = jnp.ones((1000,))
      >>> y = jdrop.gaussian_dropout(jax.random.key(0), x, keep_prob=0.8)
      >>> # mean 1, variance 0.2 / 0.8
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)
      (True, True)
    """
    x, shape = _checked_noise_shape(key, x, keep_prob, deterministic, broadcast_dims)
    if shape is None:
        return x
    z = _standard_normal(_as_key(key, or_else=OR_DETERMINISTIC), shape, draw_sharding(x, shape))
    std = _noise_std(jnp.asarray(keep_prob).astype(jnp.float32))
    dtype = _compute_dtype(x)
    return _times(x, 1.0 + std.astype(dtype) * z.astype(dtype))


def alpha_dropout(
    key: KeyLike | None,
    x: ArrayLike,
    keep_prob: ArrayLike,
    *,
    deterministic: bool = False,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    r"""Alpha dropout for self-normalising (SELU) networks.

    Dropped units are set to SELU's negative saturation value
    :math:`\alpha' = -\lambda\alpha \approx -1.758` rather than 0, and an affine
    map restores mean 0 and variance 1 for inputs with mean 0 and variance 1
    (Klambauer et al. 2017; ``torch.nn.AlphaDropout``, Keras ``AlphaDropout``):

    .. math::

        y_i = a \left(m_i x_i + (1 - m_i)\,\alpha'\right) + b, \qquad
        a = \left(p + \alpha'^2 p (1 - p)\right)^{-1/2}, \qquad
        b = -a\, \alpha' (1 - p),

    with the mask :math:`m` of :func:`dropout_mask` and :math:`p` its
    :func:`effective_keep_prob`, so the correction matches the mask's actual
    keep probability. Computed in at least float32, rounded once to ``x.dtype``.

    Args:
      key: a typed or raw PRNG key; may be None when ``deterministic=True`` or
        ``keep_prob`` is the Python value 1.0, but is checked whenever given.
      x: floating array of any shape, typically SELU activations (real: the
        correction is SELU's); any array where nothing is applied.
      keep_prob: in (0, 1]. A traced scalar does not trigger recompilation; a
        traced value outside (0, 1] makes the output NaN.
      deterministic: if true, return ``x`` unchanged (evaluation); a bool, or
        a concrete real scalar read as one, as for :func:`dropout`.
      broadcast_dims: axes along which the mask is shared (e.g. channels as in
        torch's ``FeatureAlphaDropout``).

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: if a concrete ``keep_prob`` is outside (0, 1] or NaN, an axis
        in ``broadcast_dims`` is out of range, or ``key`` is missing while
        active.
      TypeError: if ``x`` is not real floating while active (complex included),
        or an argument has the wrong type, as for :func:`dropout`.

    Example:
      >>> import jax
      >>> import jdrop
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = jdrop.alpha_dropout(jax.random.key(0), x, keep_prob=0.9)
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """
    x, shape = _checked_noise_shape(key, x, keep_prob, deterministic, broadcast_dims)
    if shape is None:
        return x
    _check_floating(x)  # SELU's saturation value and correction are for real activations
    mask, q = _draw_mask(_as_key(key, or_else=OR_DETERMINISTIC), shape, keep_prob, draw_sharding(x, shape))
    dtype = _compute_dtype(x)
    q = q.astype(dtype)
    # q is NaN for an invalid traced keep_prob and 0 for a traced 0: both NaN here.
    a = jnp.where(q > 0.0, jax.lax.rsqrt(q + SELU_SATURATION**2 * q * (1.0 - q)), jnp.nan)
    b = -a * SELU_SATURATION * (1.0 - q)
    saturated = jnp.asarray(SELU_SATURATION, dtype)
    return (a * jnp.where(mask, x.astype(dtype), saturated) + b).astype(x.dtype)


def drop_path(
    key: KeyLike | None,
    x: ArrayLike,
    keep_prob: ArrayLike,
    *,
    deterministic: bool = False,
    mode: str = "row",
) -> jax.Array:
    r"""Stochastic depth: drops a residual branch's output for whole examples, or for the whole batch.

    Use it on the branch, before the residual sum: ``x + drop_path(key, f(x), p)``
    (Huang et al. 2016; torchvision ``stochastic_depth``, timm ``DropPath``).
    Kept values are scaled by one over the effective keep probability, as in
    :func:`dropout`, so the expected branch output is unchanged:

    * ``mode="row"``: one keep decision per index of axis 0 (per example),
      shared along all other axes; equal to
      ``dropout(key, x, keep_prob, broadcast_dims=range(1, x.ndim))``.
    * ``mode="batch"``: one decision for the whole array.

    Args:
      key: a typed or raw PRNG key; may be None when ``deterministic=True`` or
        ``keep_prob`` is the Python value 1.0, but is checked whenever given.
      x: floating or complex array; for ``mode="row"`` with the batch on
        axis 0. Any array where nothing is applied.
      keep_prob: probability of keeping the branch, in (0, 1]. A traced scalar
        (e.g. the linear depth schedule) does not trigger recompilation.
      deterministic: if true, return ``x`` unchanged (evaluation); a bool, or
        a concrete real scalar read as one, as for :func:`dropout`.
      mode: ``"row"`` or ``"batch"``.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: if ``mode`` is not one of the two, ``x`` is a scalar with
        ``mode="row"``, a concrete ``keep_prob`` is outside (0, 1] or NaN, or
        ``key`` is missing while active.
      TypeError: as :func:`dropout`: if ``x`` is neither floating nor complex
        while active, or an argument has the wrong type.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> y = jdrop.drop_path(jax.random.key(0), jnp.ones((4, 3)), keep_prob=0.5)
      >>> y.tolist()  # each row is kept whole (scaled by 2) or dropped whole
      [[0.0, 0.0, 0.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0], [2.0, 2.0, 2.0]]
    """
    if not isinstance(mode, str) or mode not in DROP_PATH_MODES:
        raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {mode!r}.")
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    if mode == "row" and x.ndim == 0:
        raise ValueError("x must have a batch axis (axis 0) for mode='row', got a scalar; use mode='batch'.")
    first_shared_axis = 1 if mode == "row" else 0
    return dropout(
        key, x, keep_prob, deterministic=deterministic, broadcast_dims=tuple(range(first_shared_axis, x.ndim))
    )


def concrete_dropout(
    key: KeyLike | None,
    x: ArrayLike,
    keep_logit: ArrayLike,
    *,
    temperature: float = 0.1,
    deterministic: bool = False,
    broadcast_dims: Sequence[int] = (),
) -> jax.Array:
    r"""Concrete dropout: a relaxed Bernoulli mask whose keep probability is learned by gradient descent.

    The keep probability is :math:`p = \operatorname{sigmoid}(\ell)` for the
    learnable ``keep_logit`` :math:`\ell`. The hard mask of :func:`dropout` is
    replaced by its Concrete (Gumbel-softmax) relaxation at temperature
    :math:`t`, so gradients reach :math:`\ell` (Gal, Hron and Kendall 2017):

    .. math::

        \tilde m_i = \operatorname{sigmoid}\!\left(\frac{\ell + L_i}{t}\right), \qquad
        L_i = \log u_i - \log(1 - u_i) \sim \operatorname{Logistic}(0, 1), \qquad
        y_i = x_i\, \tilde m_i / p.

    As :math:`t \to 0`, :math:`\tilde m_i` becomes a Bernoulli(:math:`p`) mask
    and :math:`y` inverted dropout; at the paper's :math:`t = 0.1` most
    :math:`\tilde m_i` are within a few percent of 0 or 1. Train the keep
    probability with the data loss plus :func:`concrete_dropout_regularizer`,
    without which it only grows towards 1. :math:`u_i` has 32 bits, so
    :math:`|L_i|` reaches about 22.9.

    Args:
      key: a typed or raw PRNG key; may be None when ``deterministic=True``,
        but is checked whenever given.
      x: floating or complex array of any shape (complex: both parts get the
        same mask); any array when ``deterministic=True``.
      keep_logit: the logit of the keep probability: a scalar, or an array
        that broadcasts to ``x.shape`` without changing it (e.g. one per
        feature, shape ``(features,)``). Gradients flow to it.
      temperature: the relaxation's temperature :math:`t > 0`; lower is closer
        to a hard mask, with noisier gradients.
      deterministic: if true, return ``x`` unchanged (evaluation); a bool, or
        a concrete real scalar read as one, as for :func:`dropout`.
      broadcast_dims: axes along which the noise is shared: any sequence of ints.

    Returns:
      An array with the shape and dtype of ``x``.

    Raises:
      ValueError: if ``keep_logit`` does not broadcast to ``x.shape``,
        ``temperature`` is not positive and finite, an axis in
        ``broadcast_dims`` is out of range, or ``key`` is missing while active.
      TypeError: if ``x`` is neither floating nor complex while active,
        ``keep_logit`` is not floating, ``key`` is given but is not a PRNG
        key, or another argument has the wrong type.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> keep_logit = jnp.log(0.9 / 0.1)  # p = 0.9
      >>> x = jnp.ones((100_000,))
      >>> y = jdrop.concrete_dropout(jax.random.key(0), x, keep_logit)
      >>> round(float(y.mean()), 2)  # ~ 1: kept units are scaled by 1 / p
      1.0
      >>> def noise(logit):
      ...     return jnp.var(jdrop.concrete_dropout(jax.random.key(1), x, logit))
      >>> grad = jax.grad(noise)(keep_logit)
      >>> bool(grad < 0)  # keeping more units reduces the noise
      True
    """
    if not isinstance(x, jax.Array):
        x = jnp.asarray(x)
    logit = _check_keep_logit(keep_logit, fits=x.shape)
    _check_positive(temperature, "temperature")
    shape = _noise_shape(x, broadcast_dims)
    _key_if_given(key)
    if _check_deterministic(deterministic):
        return x
    _check_noise_input(x)
    logistic = _standard_logistic(_as_key(key, or_else=OR_DETERMINISTIC), shape, draw_sharding(x, shape))
    dtype = _compute_dtype(x)
    logit = logit.astype(dtype).reshape((1,) * (len(shape) - logit.ndim) + logit.shape)  # the noise's rank
    # The mask over the keep probability, sigmoid(z) / sigmoid(logit), in log
    # space: for a logit below about -88 both are below float32's range, and
    # the direct form (1 + exp(-logit) overflowing times a mask of 0) was NaN.
    # log_sigmoid and its derivative are finite for every finite input.
    relaxed = (logit + logistic.astype(dtype)) / temperature
    scaled_mask = jnp.exp(jax.nn.log_sigmoid(relaxed) - jax.nn.log_sigmoid(logit))
    return _times(x, scaled_mask)


def concrete_dropout_regularizer(
    keep_logit: ArrayLike,
    kernel: ArrayLike,
    *,
    num_examples: int,
    length_scale: float,
) -> jax.Array:
    r"""The regulariser that trains concrete dropout's keep probability, for one layer.

    For dropout with keep probability :math:`p = \operatorname{sigmoid}(\ell)` on
    the :math:`K` inputs of a layer with kernel :math:`W`, the variational
    objective of Gal, Hron and Kendall (2017, eq. 3-4) adds, per layer,

    .. math::

        R = \frac{1}{N}\left(\frac{l^2}{2}\,\frac{\lVert W \rVert^2}{p}
            - K\,\mathcal{H}(p)\right), \qquad
        \mathcal{H}(p) = -p \log p - (1 - p) \log (1 - p),

    to the *mean* loss over a batch, where :math:`N` is the number of training
    examples and :math:`l` the prior length-scale. (The paper writes the
    kernel of non-inverted dropout, :math:`M = W / p`, so its
    :math:`l^2 p \lVert M \rVert^2 / 2` is the first term here.) The entropy
    term pulls :math:`p` towards 1/2 with a strength that falls as
    :math:`1/N`: with more data the learned model drops less. The reference
    Keras code uses twice this (``weight_regularizer = l**2 / N``,
    ``dropout_regularizer = 2 / N``), with its loss scaled to match; for
    regression with a Gaussian likelihood of precision :math:`\tau`, pass
    ``num_examples = tau * N``. With one keep logit per input feature, the
    terms are summed per feature (row of :math:`W`).

    Args:
      keep_logit: the layer's keep logit, as passed to :func:`concrete_dropout`:
        a scalar or one per input feature, shape ``(K,)``.
      kernel: the weights that multiply the dropped activations, shape
        ``(..., K, out)`` (a dense ``(K, out)`` or convolution ``(h, w, K, out)``
        kernel).
      num_examples: :math:`N`, the size of the training set, an int >= 1.
      length_scale: :math:`l > 0`, the prior length-scale of the weights (also
        what an L2 penalty would set).

    Returns:
      A scalar, float32 (float64 for float64 inputs).

    Raises:
      ValueError: if ``kernel`` has fewer than 2 axes, ``keep_logit`` is neither
        a scalar nor of shape ``(K,)``, ``num_examples`` is not an int >= 1, or
        ``length_scale`` is not positive and finite.
      TypeError: if ``keep_logit`` or ``kernel`` is not floating.

    Example:
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> kernel = jnp.zeros((4, 3))
      >>> r = jdrop.concrete_dropout_regularizer(
      ...     0.0, kernel, num_examples=8, length_scale=1.0
      ... )
      >>> # -4 * log(2) / 8: zero weights, p = 1/2, maximal entropy
      >>> round(float(r), 4)
      -0.3466
    """
    logit = _check_keep_logit(keep_logit)
    if not isinstance(kernel, jax.Array):
        kernel = jnp.asarray(kernel)
    _check_floating(kernel, "kernel")
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have shape (..., in_features, out_features), got shape {kernel.shape}.")
    in_features = kernel.shape[-2]
    if logit.shape not in ((), (in_features,)):
        raise ValueError(
            f"keep_logit must be a scalar or have shape ({in_features},) (one per input feature), got {logit.shape}."
        )
    _check_count(num_examples, "num_examples")
    _check_positive(length_scale, "length_scale")
    dtype = jnp.promote_types(_compute_dtype(kernel), _compute_dtype(logit))
    logit = jnp.broadcast_to(logit.astype(dtype), (in_features,))
    squares = jnp.square(kernel.astype(dtype))
    row_squares = squares.sum(axis=tuple(a for a in range(kernel.ndim) if a != kernel.ndim - 2))
    # ||W_k||^2 / p_k, with 1 / p = exp(softplus(-l)). Below a logit of about
    # -88, 1 / p exceeds float32: a row of zeros then contributes exactly 0
    # (not 0 * inf = NaN, in the value or the gradient), any other row the
    # correctly rounded inf.
    nonzero = row_squares > 0.0
    log_inverse_keep = jnp.where(nonzero, jax.nn.softplus(-logit), 0.0)
    weighted = jnp.where(nonzero, row_squares * jnp.exp(log_inverse_keep), 0.0)
    # Binary entropy from the logit, finite at any logit: -log p = softplus(-l),
    # -log(1 - p) = softplus(l), and 1 - p = sigmoid(-l), which keeps its
    # precision where p rounds to 1.
    entropy = jax.nn.sigmoid(logit) * jax.nn.softplus(-logit) + jax.nn.sigmoid(-logit) * jax.nn.softplus(logit)
    weight_term = 0.5 * jnp.asarray(length_scale, dtype) ** 2 * jnp.sum(weighted)
    return (weight_term - jnp.sum(entropy)) / num_examples
