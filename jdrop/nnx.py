"""jdrop's dropout as a drop-in for ``flax.nnx.Dropout``, and its dropout-family variants.

Change ``nnx.Dropout`` to ``jdrop.nnx.Dropout`` and nothing else: the
constructor, the call, ``model.train()``/``model.eval()``, ``nnx.view`` and the
RNG streams work as in Flax, because the class *is* an ``nnx.Dropout`` whose
mask comes from :func:`jdrop.dropout` instead of ``jax.random.bernoulli``.

:class:`GaussianDropout`, :class:`AlphaDropout` and :class:`DropPath` are
subclasses of :class:`Dropout` that apply :func:`jdrop.gaussian_dropout`,
:func:`jdrop.alpha_dropout` and :func:`jdrop.drop_path` instead; everything
else (the switches, ``nnx.view``, the RNG stream) is inherited unchanged.
:class:`ConcreteDropout` is :func:`jdrop.concrete_dropout` as an
``nnx.Dropout`` whose keep probability is an ``nnx.Param``, learned with the
weights; it switches with the model and draws its keys as :class:`Dropout`
does. Importing this module imports Flax; ``import jdrop`` does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from
from jax.typing import ArrayLike

from jdrop._checks import KeyLike, _check_positive, _check_rate, _check_shape, _initial_keep_logit
from jdrop._dropout import _dropout_at_rate, dropout
from jdrop._variants import (
    DROP_PATH_MODES,
    _concrete_dropout_in_module,
    alpha_dropout,
    concrete_dropout_regularizer,
    drop_path,
    gaussian_dropout,
)

__all__ = ["AlphaDropout", "ConcreteDropout", "DropPath", "Dropout", "GaussianDropout"]


def _draw_key(
    call_rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None,
    own_rngs: rnglib.RngStream | None,
    rng_collection: str,
    layer: str,
) -> jax.Array:
    """The key for an active call, drawn as ``flax.nnx.Dropout`` draws it: one call of the stream, the call's first."""
    source = first_from(
        call_rngs,
        own_rngs,
        error_msg=(
            f"`deterministic` is False, but no `rngs` argument was provided to {layer}: "
            "pass rngs=nnx.Rngs(...) to the constructor, or rngs (a key, RngStream or Rngs) to the call."
        ),
    )
    if isinstance(source, rnglib.Rngs):
        key: jax.Array = source[rng_collection]()
        return key
    if isinstance(source, rnglib.RngStream):
        key = source()
        return key
    if isinstance(source, jax.Array):
        return source
    raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or jax.Array key, got {type(source).__name__}.")


class Dropout(nnx.Dropout):
    """``flax.nnx.Dropout`` with jdrop's masks.

    Takes Flax's arguments (``rate``, ``broadcast_dims``, ``deterministic``,
    ``rng_collection``, ``rngs``) with Flax's defaults, draws its key exactly
    as Flax does (one call of the ``rng_collection`` stream per active call),
    and for that key returns exactly
    ``jdrop.dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    ``rate == 0`` and evaluation return the inputs, ``rate == 1`` returns
    zeros, as in Flax; a rate outside [0, 1] raises ``ValueError`` (Flax
    accepts it silently).

    Args:
      rate: the probability of *dropping* a unit, in [0, 1] (``1 - keep_prob``).
      broadcast_dims: axes along which the mask is shared.
      deterministic: True for evaluation; None means it must be given at call
        time or set with ``model.eval()``/``model.train()``/``nnx.view``.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1] or NaN.

    Example:
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.Dropout(0.5, rngs=nnx.Rngs(dropout=0))
      >>> y = layer(jnp.ones((2, 4)))
      >>> sorted(set(y.ravel().tolist()))  # dropped: 0, kept: 1 / 0.5
      [0.0, 2.0]
      >>> layer.eval()
      >>> layer(jnp.ones((2, 4))).tolist()
      [[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]]
    """

    #: Whether ``rate == 1`` (zeros) is accepted; False for noise that has no limit there.
    _allow_rate_one: ClassVar[bool] = True

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: tuple[int, ...] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: rnglib.Rngs | rnglib.RngStream | None = None,
    ) -> None:
        _check_rate(rate, "rate", allow_one=self._allow_rate_one)
        super().__init__(
            rate,
            broadcast_dims=broadcast_dims,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
        )

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        """The core function for an active call with 0 < rate < 1; the subclasses change only this."""
        return dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout to ``inputs``.

        Args:
          inputs: a floating array of any shape.
          deterministic: overrides the module's ``deterministic`` if given.
          rngs: a key, ``nnx.RngStream`` or ``nnx.Rngs`` to use instead of the
            module's own stream.

        Returns:
          An array with the shape and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set nowhere, or no key source is
            available while dropout is active.
          TypeError: if ``rngs`` is of another type.
        """
        deterministic = first_from(
            deterministic,
            self.deterministic,
            error_msg=(
                "No `deterministic` argument was provided to Dropout (jdrop.nnx.Dropout): pass it to the constructor "
                "or the call, or use model.train()/model.eval() or nnx.view(model, deterministic=...)."
            ),
        )

        return _dropout_at_rate(
            lambda: _draw_key(rngs, self.rngs, self.rng_collection, "Dropout (jdrop.nnx.Dropout)"),
            inputs,
            self.rate,
            rate_name="rate",
            deterministic=deterministic,
            broadcast_dims=self.broadcast_dims,
            apply=self._apply,
            allow_rate_one=self._allow_rate_one,
        )


class GaussianDropout(Dropout):
    """Multiplicative Gaussian noise (Keras ``GaussianDropout(rate)``) as an ``nnx.Dropout``.

    Multiplies the inputs by noise drawn from N(1, rate / (1 - rate)), the
    mean and variance of inverted dropout's factor. For the key that
    :class:`Dropout` would draw, the result is exactly
    ``jdrop.gaussian_dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    Everything else is :class:`Dropout`'s: the arguments, ``model.train()``/
    ``model.eval()``, ``nnx.view`` and the RNG stream (``rate == 0`` and
    evaluation return the inputs without drawing a key).

    Args:
      rate: the drop rate whose variance the noise matches, in [0, 1).
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1) or NaN (at rate 1 the variance is infinite).

    Example:
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.GaussianDropout(0.2, rngs=nnx.Rngs(dropout=0))
      >>> y = layer(jnp.ones((1000,)))
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)  # var = 0.2 / 0.8
      (True, True)
      >>> layer.eval()
      >>> layer(jnp.ones(3)).tolist()
      [1.0, 1.0, 1.0]
    """

    _allow_rate_one: ClassVar[bool] = False

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return gaussian_dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)


class AlphaDropout(Dropout):
    """Alpha dropout for SELU networks (``torch.nn.AlphaDropout``, Keras ``AlphaDropout``) as an ``nnx.Dropout``.

    Dropped units are set to SELU's negative saturation value and an affine
    map keeps mean 0 and variance 1. For the key that :class:`Dropout` would
    draw, the result is exactly
    ``jdrop.alpha_dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    Everything else is :class:`Dropout`'s (``rate == 0`` and evaluation return
    the inputs without drawing a key).

    Args:
      rate: the probability of dropping a unit, in [0, 1).
      broadcast_dims: axes along which the mask is shared.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1) or NaN (as in torch and Keras).

    Example:
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.AlphaDropout(0.1, rngs=nnx.Rngs(dropout=0))
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = layer(x)
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """

    _allow_rate_one: ClassVar[bool] = False

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return alpha_dropout(key, x, keep_prob, broadcast_dims=self.broadcast_dims)


class DropPath(Dropout):
    """Stochastic depth (timm ``DropPath``) as an ``nnx.Dropout``.

    Use it on a residual branch, before the sum: ``x + self.drop_path(f(x))``.
    For the key that :class:`Dropout` would draw, the result is exactly
    ``jdrop.drop_path(key, inputs, 1 - rate, mode=mode)``: with
    ``mode="row"`` each example (index of axis 0) keeps or drops the whole
    branch, with ``mode="batch"`` the whole batch does. Everything else is
    :class:`Dropout`'s: ``rate == 0`` and evaluation return the inputs and
    ``rate == 1`` returns zeros, without drawing a key.

    Args:
      rate: the probability of dropping the branch, in [0, 1].
      mode: ``"row"`` (one decision per example) or ``"batch"``.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1] or NaN, or ``mode`` is not
        ``"row"`` or ``"batch"``.

    Example:
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.DropPath(0.5, rngs=nnx.Rngs(dropout=0))
      >>> y = layer(jnp.ones((8, 3)))
      >>> all(len(set(row)) == 1 for row in y.tolist())  # each row kept whole (scaled by 2) or dropped
      True
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
    """

    def __init__(
        self,
        rate: float,
        *,
        mode: str = "row",
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: rnglib.Rngs | rnglib.RngStream | None = None,
    ) -> None:
        if not isinstance(mode, str) or mode not in DROP_PATH_MODES:
            raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {mode!r}.")
        super().__init__(rate, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs)
        self.mode = mode

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return drop_path(key, x, keep_prob, mode=self.mode)


class ConcreteDropout(nnx.Dropout):
    """Concrete dropout (Gal, Hron and Kendall 2017) as an ``nnx.Dropout`` whose keep probability is a parameter.

    The module form of :func:`jdrop.concrete_dropout`: the keep probability is
    ``sigmoid(keep_logit)`` for the ``nnx.Param`` ``keep_logit``, which
    gradients reach through the relaxed mask, so an optimiser over
    ``nnx.Param`` learns it with the weights. Train it with the data loss plus
    :meth:`regularizer` for the layer whose kernel multiplies the dropped
    units; without that term the keep probability only grows towards 1.

    The key is drawn exactly as :class:`Dropout` draws it (one call of the
    ``rng_collection`` stream per active call, or the call's ``rngs``), and
    for that key the result is exactly
    ``jdrop.concrete_dropout(key, inputs, keep_logit, temperature=temperature, broadcast_dims=broadcast_dims)``.
    The class is an ``nnx.Dropout``, so ``model.train()``/``model.eval()`` and
    ``nnx.view(model, deterministic=...)``, with or without
    ``only=nnx.Dropout``, switch it with the model's other dropout layers;
    evaluation returns the inputs without drawing a key. There is no
    ``rate == 0`` shortcut: :attr:`rate` is ``1 - keep_prob``, read from the
    learned parameter, and cannot be set.

    Args:
      rate: the *initial* probability of dropping a unit, in (0, 1); the
        paper starts at 0.1. ``keep_logit`` starts at ``log((1 - rate) / rate)``.
      logit_shape: the shape of ``keep_logit``: ``()`` for one keep probability,
        ``(features,)`` for one per feature (last axis); it must broadcast to
        the inputs' shape without changing it.
      temperature: the relaxation's temperature, > 0; lower is closer to a
        hard mask, with noisier gradients.
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; None means it must be given at call
        time or set with ``model.eval()``/``model.train()``/``nnx.view``.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside (0, 1) or NaN, ``temperature`` is not
        positive and finite, or ``logit_shape`` has a negative size.
      TypeError: if ``rate`` or ``temperature`` is not a real number,
        ``logit_shape`` is not a sequence of ints, or ``rngs`` is of another type.

    Example:
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.ConcreteDropout(0.1, rngs=nnx.Rngs(dropout=0))
      >>> round(float(layer.keep_prob), 4)  # the initial value; learned from here on
      0.9
      >>> y = layer(jnp.ones((10_000,)))
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> reg = layer.regularizer(jnp.zeros((4, 3)), num_examples=1000, length_scale=1.0)  # add to the loss
      >>> layer.eval()
      >>> layer(jnp.ones(3)).tolist()
      [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        rate: float = 0.1,
        *,
        logit_shape: Sequence[int] = (),
        temperature: float = 0.1,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: rnglib.Rngs | rnglib.RngStream | None = None,
    ) -> None:
        # nnx.Dropout.__init__ is not called: it would store a fixed ``rate``, which is learned here.
        logit = _initial_keep_logit(rate, "rate")
        shape = _check_shape(logit_shape)
        _check_positive(temperature, "temperature")
        self.keep_logit = nnx.Param(jnp.full(shape, logit, jnp.float32))
        self.temperature = float(temperature)  # a static attribute, not an array
        self.broadcast_dims = broadcast_dims
        self.deterministic = deterministic
        self.rng_collection = rng_collection
        if isinstance(rngs, rnglib.Rngs):
            self.rngs = rngs[rng_collection].fork()
        elif isinstance(rngs, rnglib.RngStream):
            self.rngs = rngs.fork()
        elif rngs is None:
            self.rngs = nnx.data(None)
        else:
            raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or None, got {type(rngs).__name__}.")

    @property
    def keep_prob(self) -> jax.Array:
        """The current keep probability, ``sigmoid(keep_logit)``, of ``keep_logit``'s shape."""
        return jax.nn.sigmoid(self.keep_logit[...])

    @property
    def rate(self) -> jax.Array:  # type: ignore[override]  # nnx.Dropout's is a fixed float
        """The current drop rate, ``1 - keep_prob``; it is learned, so it cannot be set."""
        return 1.0 - self.keep_prob

    def regularizer(
        self, kernel: ArrayLike | nnx.Variable[jax.Array], *, num_examples: int, length_scale: float
    ) -> jax.Array:
        """This layer's term of the training objective: :func:`jdrop.concrete_dropout_regularizer`.

        Add it to the mean loss over a batch, for every concrete dropout layer.

        Args:
          kernel: the weights that multiply this layer's outputs, shape
            ``(..., K, out)`` (e.g. the next ``nnx.Linear``'s ``kernel``; a
            ``nnx.Param`` is read).
          num_examples: the size of the training set, an int >= 1.
          length_scale: the prior length-scale of the weights, > 0.

        Returns:
          A scalar, float32.
        """
        if isinstance(kernel, nnx.Variable):
            kernel = kernel[...]
        return concrete_dropout_regularizer(
            self.keep_logit[...], kernel, num_examples=num_examples, length_scale=length_scale
        )

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: rnglib.Rngs | rnglib.RngStream | jax.Array | None = None,
    ) -> jax.Array:
        """Applies concrete dropout to ``inputs``.

        Args:
          inputs: a floating array of any shape that ``keep_logit`` broadcasts to.
          deterministic: overrides the module's ``deterministic`` if given.
          rngs: a key, ``nnx.RngStream`` or ``nnx.Rngs`` to use instead of the
            module's own stream.

        Returns:
          An array with the shape and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set nowhere, no key source is
            available while active, or ``keep_logit`` does not broadcast to
            ``inputs``' shape.
          TypeError: if ``rngs`` is of another type.
        """
        deterministic = first_from(
            deterministic,
            self.deterministic,
            error_msg=(
                "No `deterministic` argument was provided to ConcreteDropout (jdrop.nnx.ConcreteDropout): pass it to "
                "the constructor or the call, or use model.train()/model.eval() or nnx.view(model, deterministic=...)."
            ),
        )
        return _concrete_dropout_in_module(
            lambda: _draw_key(rngs, self.rngs, self.rng_collection, "ConcreteDropout (jdrop.nnx.ConcreteDropout)"),
            inputs,
            self.keep_logit[...],
            temperature=self.temperature,
            deterministic=deterministic,
            broadcast_dims=self.broadcast_dims,
        )
