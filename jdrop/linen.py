"""jdrop's dropout as a drop-in for ``flax.linen.Dropout``, and its dropout-family variants.

Change ``nn.Dropout`` to ``jdrop.linen.Dropout`` and nothing else: the
attributes, ``deterministic`` merging, the ``"dropout"`` RNG collection and
``make_rng`` work as in Flax, because the class *is* a ``flax.linen.Dropout``
whose mask comes from :func:`jdrop.dropout` instead of
``jax.random.bernoulli``.

:class:`GaussianDropout`, :class:`AlphaDropout` and :class:`DropPath` are
subclasses of :class:`Dropout` that apply :func:`jdrop.gaussian_dropout`,
:func:`jdrop.alpha_dropout` and :func:`jdrop.drop_path` instead; everything
else (the attributes, ``deterministic`` merging, ``make_rng``) is inherited
unchanged. :class:`ConcreteDropout` is :func:`jdrop.concrete_dropout` as a
linen module whose keep probability is a parameter (``"keep_logit"``),
learned with the weights; it merges ``deterministic`` and draws its keys as
:class:`Dropout` does. Importing this module imports Flax; ``import jdrop``
does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen
from flax.linen.module import compact, merge_param, nowrap
from jax.typing import ArrayLike

from jdrop._checks import KeyLike, _check_positive, _check_rate, _check_shape, _initial_keep_logit
from jdrop._dropout import _dropout_at_rate, dropout
from jdrop._variants import (
    DROP_PATH_MODES,
    _concrete_dropout_in_module,
    alpha_dropout,
    drop_path,
    gaussian_dropout,
)

__all__ = ["AlphaDropout", "ConcreteDropout", "DropPath", "Dropout", "GaussianDropout"]


class Dropout(linen.Dropout):
    """``flax.linen.Dropout`` with jdrop's masks.

    Same attributes as Flax (``rate``, ``broadcast_dims``, ``deterministic``,
    ``rng_collection``) and the same call. The key is
    ``self.make_rng(rng_collection)`` (or the call's ``rng``), drawn only when
    dropout is active, as in Flax, and for that key the result is exactly
    ``jdrop.dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    ``rate == 0`` and evaluation return the inputs, ``rate == 1`` returns
    zeros, as in Flax; a rate outside [0, 1] raises ``ValueError`` when the
    module is built (Flax accepts it silently).

    Attributes:
      rate: the probability of *dropping* a unit, in [0, 1] (``1 - keep_prob``).
      broadcast_dims: axes along which the mask is shared.
      deterministic: True for evaluation; may instead be given at call time.
      rng_collection: the RNG collection to draw keys from.

    Example:
      >>> import jdrop.linen
      >>> layer = jdrop.linen.Dropout(rate=0.5)
      >>> x = jnp.ones((2, 4))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> sorted(set(y.ravel().tolist()))  # dropped: 0, kept: 1 / 0.5
      [0.0, 2.0]
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    #: Whether ``rate == 1`` (zeros) is accepted; False for noise that has no limit there.
    _allow_rate_one: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_rate(self.rate, "rate", allow_one=self._allow_rate_one)
        super().__post_init__()

    @nowrap
    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        """The core function for an active call with 0 < rate < 1; the subclasses change only this."""
        return dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)

    @compact
    def __call__(
        self,
        inputs: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout to ``inputs``.

        Args:
          inputs: a floating array of any shape.
          deterministic: True for evaluation; merged with the attribute (exactly
            one of the two must be set).
          rng: a key to use instead of ``make_rng(rng_collection)``.

        Returns:
          An array with the shape and dtype of ``inputs``.
        """
        deterministic = merge_param("deterministic", self.deterministic, deterministic)

        def draw_key() -> jax.Array:
            return rng if rng is not None else self.make_rng(self.rng_collection)

        return _dropout_at_rate(
            draw_key,
            inputs,
            self.rate,
            rate_name="rate",
            deterministic=deterministic,
            broadcast_dims=self.broadcast_dims,
            apply=self._apply,
            allow_rate_one=self._allow_rate_one,
        )


class GaussianDropout(Dropout):
    """Multiplicative Gaussian noise (Keras ``GaussianDropout(rate)``) as a ``flax.linen.Dropout``.

    Multiplies the inputs by noise drawn from N(1, rate / (1 - rate)), the
    mean and variance of inverted dropout's factor. For the key that
    :class:`Dropout` would use (``make_rng(rng_collection)`` or the call's
    ``rng``), the result is exactly
    ``jdrop.gaussian_dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    Everything else is :class:`Dropout`'s (``rate == 0`` and evaluation return
    the inputs without drawing a key).

    Attributes:
      rate: the drop rate whose variance the noise matches, in [0, 1).
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; may instead be given at call time.
      rng_collection: the RNG collection to draw keys from.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1) or
        NaN (at rate 1 the variance is infinite).

    Example:
      >>> import jdrop.linen
      >>> layer = jdrop.linen.GaussianDropout(rate=0.2)
      >>> x = jnp.ones((1000,))
      >>> y = layer.apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)  # var = 0.2 / 0.8
      (True, True)
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    _allow_rate_one: ClassVar[bool] = False

    @nowrap
    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return gaussian_dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)


class AlphaDropout(Dropout):
    """Alpha dropout for SELU networks (``torch.nn.AlphaDropout``, Keras ``AlphaDropout``) as a ``flax.linen.Dropout``.

    Dropped units are set to SELU's negative saturation value and an affine
    map keeps mean 0 and variance 1. For the key that :class:`Dropout` would
    use, the result is exactly
    ``jdrop.alpha_dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    Everything else is :class:`Dropout`'s (``rate == 0`` and evaluation return
    the inputs without drawing a key).

    Attributes:
      rate: the probability of dropping a unit, in [0, 1).
      broadcast_dims: axes along which the mask is shared.
      deterministic: True for evaluation; may instead be given at call time.
      rng_collection: the RNG collection to draw keys from.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1) or
        NaN (as in torch and Keras).

    Example:
      >>> import jdrop.linen
      >>> layer = jdrop.linen.AlphaDropout(rate=0.1, deterministic=False)
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = layer.apply({}, x, rngs={"dropout": jax.random.key(0)})
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """

    _allow_rate_one: ClassVar[bool] = False

    @nowrap
    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return alpha_dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)


class DropPath(Dropout):
    """Stochastic depth (timm ``DropPath``) as a ``flax.linen.Dropout``.

    Use it on a residual branch, before the sum:
    ``x + DropPath(rate, deterministic=not train)(f(x))``. For the key that
    :class:`Dropout` would use, the result is exactly
    ``jdrop.drop_path(key, inputs, 1 - rate, mode=mode)``: with
    ``mode="row"`` each example (index of axis 0) keeps or drops the whole
    branch, with ``mode="batch"`` the whole batch does. Everything else is
    :class:`Dropout`'s: ``rate == 0`` and evaluation return the inputs and
    ``rate == 1`` returns zeros, without drawing a key. The inherited
    ``broadcast_dims`` attribute must stay ``()``: ``mode`` says what is shared.

    Attributes:
      rate: the probability of dropping the branch, in [0, 1].
      deterministic: True for evaluation; may instead be given at call time.
      rng_collection: the RNG collection to draw keys from.
      mode: ``"row"`` (one decision per example) or ``"batch"``.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1] or
        NaN, ``mode`` is not ``"row"`` or ``"batch"``, or ``broadcast_dims`` is
        not empty.

    Example:
      >>> import jdrop.linen
      >>> layer = jdrop.linen.DropPath(rate=0.5, deterministic=False)
      >>> y = layer.apply({}, jnp.ones((8, 3)), rngs={"dropout": jax.random.key(0)})
      >>> all(len(set(row)) == 1 for row in y.tolist())  # each row kept whole (scaled by 2) or dropped
      True
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
    """

    mode: str = "row"

    def __post_init__(self) -> None:
        if not isinstance(self.mode, str) or self.mode not in DROP_PATH_MODES:
            raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {self.mode!r}.")
        if tuple(self.broadcast_dims) != ():
            raise ValueError(
                f"DropPath takes no broadcast_dims (mode sets what is shared), got {tuple(self.broadcast_dims)}."
            )
        super().__post_init__()

    @nowrap
    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return drop_path(key, x, keep_prob, mode=self.mode)


class ConcreteDropout(linen.Module):
    """Concrete dropout (Gal, Hron and Kendall 2017) as a ``flax.linen`` module whose keep probability is a parameter.

    The module form of :func:`jdrop.concrete_dropout`: the keep probability is
    ``sigmoid(keep_logit)`` for the parameter ``keep_logit`` (in the
    ``"params"`` collection, initialised to ``log((1 - rate_init) / rate_init)``),
    which gradients reach through the relaxed mask, so it is learned with the
    weights. ``deterministic`` merges as in ``flax.linen.Dropout``, and the key
    is ``self.make_rng(rng_collection)`` (or the call's ``rng``), drawn only
    when active, as :class:`Dropout` draws it; for that key the result is
    exactly ``jdrop.concrete_dropout(key, inputs, keep_logit, temperature=temperature,
    broadcast_dims=broadcast_dims)``. Evaluation returns the inputs without a key.

    Train the keep probability with the data loss plus, for each concrete
    dropout layer, ``jdrop.concrete_dropout_regularizer(keep_logit, kernel,
    num_examples=N, length_scale=l)`` on the params tree, where ``keep_logit``
    is this module's entry, e.g. ``params["params"]["ConcreteDropout_0"]["keep_logit"]``,
    and ``kernel`` that of the layer its outputs feed, e.g.
    ``params["params"]["Dense_1"]["kernel"]``. Without it the keep probability
    only grows towards 1.

    Attributes:
      rate_init: the *initial* probability of dropping a unit, in (0, 1); the
        paper starts at 0.1.
      logit_shape: the shape of ``keep_logit``: ``()`` for one keep probability,
        ``(features,)`` for one per feature (last axis); it must broadcast to
        the inputs' shape without changing it.
      temperature: the relaxation's temperature, > 0; lower is closer to a hard
        mask, with noisier gradients.
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; may instead be given at call time.
      rng_collection: the RNG collection to draw keys from.

    Raises:
      ValueError: when the module is built, if ``rate_init`` is outside (0, 1)
        or NaN, ``temperature`` is not positive and finite, or ``logit_shape``
        has a negative size.
      TypeError: when the module is built, if ``rate_init`` or ``temperature``
        is not a real number, or ``logit_shape`` is not a sequence of ints.

    Example:
      >>> import jdrop.linen
      >>> layer = jdrop.linen.ConcreteDropout(rate_init=0.1)
      >>> x = jnp.ones((10_000,))
      >>> params = layer.init(jax.random.key(0), x, deterministic=True)
      >>> round(float(jax.nn.sigmoid(params["params"]["keep_logit"])), 4)  # the initial keep probability
      0.9
      >>> y = layer.apply(params, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> reg = jdrop.concrete_dropout_regularizer(
      ...     params["params"]["keep_logit"], jnp.zeros((4, 3)), num_examples=1000, length_scale=1.0
      ... )  # add to the loss
      >>> bool(jnp.all(layer.apply(params, x, deterministic=True) == x))
      True
    """

    rate_init: float = 0.1
    logit_shape: Sequence[int] = ()
    temperature: float = 0.1
    broadcast_dims: Sequence[int] = ()
    deterministic: bool | None = None
    rng_collection: str = "dropout"

    def __post_init__(self) -> None:
        _initial_keep_logit(self.rate_init, "rate_init")
        _check_shape(self.logit_shape)
        _check_positive(self.temperature, "temperature")
        super().__post_init__()

    @compact
    def __call__(
        self,
        inputs: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Applies concrete dropout to ``inputs``.

        Args:
          inputs: a floating array of any shape that ``keep_logit`` broadcasts to.
          deterministic: True for evaluation; merged with the attribute (exactly
            one of the two must be set).
          rng: a key to use instead of ``make_rng(rng_collection)``.

        Returns:
          An array with the shape and dtype of ``inputs``.
        """
        logit = _initial_keep_logit(self.rate_init, "rate_init")

        def init(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            return jnp.full(shape, logit, jnp.float32)

        keep_logit = self.param("keep_logit", init, _check_shape(self.logit_shape))
        deterministic = merge_param("deterministic", self.deterministic, deterministic)

        def draw_key() -> jax.Array:
            return rng if rng is not None else self.make_rng(self.rng_collection)

        return _concrete_dropout_in_module(
            draw_key,
            inputs,
            keep_logit,
            temperature=self.temperature,
            deterministic=deterministic,
            broadcast_dims=self.broadcast_dims,
        )
