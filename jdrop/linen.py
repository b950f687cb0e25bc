"""jdrop's dropout as a drop-in for ``flax.linen.Dropout``, and its dropout-family variants.

Change ``nn.Dropout`` to ``jdrop.linen.Dropout`` and nothing else: the
attributes, ``deterministic`` merging, the ``"dropout"`` RNG collection and
``make_rng`` work as in Flax, because the class *is* a ``flax.linen.Dropout``
whose mask comes from :func:`jdrop.dropout` instead of
``jax.random.bernoulli``. It takes what Flax takes: a rate as a Python, NumPy
or JAX scalar, ``deterministic`` as anything Flax reads as a bool (``1``,
``jnp.array(True)``), axes as any sequence of integers; values Flax would
misuse silently (a rate outside [0, 1], a string for ``deterministic``) raise.

Every class here is a ``flax.linen.Dropout``. :class:`GaussianDropout`,
:class:`AlphaDropout` and :class:`DropPath` are subclasses of :class:`Dropout`
that apply :func:`jdrop.gaussian_dropout`, :func:`jdrop.alpha_dropout` and
:func:`jdrop.drop_path` instead; everything else (the attributes,
``deterministic`` merging, ``make_rng``) is inherited unchanged.
:class:`ConcreteDropout` is :func:`jdrop.concrete_dropout` with its keep
probability a parameter (``"keep_logit"``), learned with the weights; it
merges ``deterministic`` and draws its keys as :class:`Dropout` does. The
concrete dropout classes of the three hosts have one interface: the host's
name for the initial rate (``rate`` here), :attr:`~ConcreteDropout.keep_prob`
and :meth:`~ConcreteDropout.regularizer`.

Importing this module imports Flax; ``import jdrop`` does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import linen
from jax.typing import ArrayLike

from jdrop._adapters import (
    FLAX,
    _concrete_dropout_in_module,
    _dropout_at_rate,
    _host_axes,
    _host_flag,
    _no_broadcast_dims,
)
from jdrop._checks import KeyLike, _check_positive, _check_rate, _check_shape, _initial_keep_logit
from jdrop._dropout import dropout
from jdrop._variants import DROP_PATH_MODES, alpha_dropout, concrete_dropout_regularizer, drop_path, gaussian_dropout

__all__ = ["AlphaDropout", "ConcreteDropout", "DropPath", "Dropout", "GaussianDropout"]


def _check_deterministic_attribute(deterministic: object) -> None:
    """The ``deterministic`` attribute, if set, must be something Flax reads as a bool; checked when built."""
    if deterministic is not None:
        _host_flag(deterministic, "deterministic")


class Dropout(linen.Dropout):
    """``flax.linen.Dropout`` with jdrop's masks.

    Same attributes as Flax (``rate``, ``broadcast_dims``, ``deterministic``,
    ``rng_collection``) and the same call. The key is
    ``self.make_rng(rng_collection)`` (or the call's ``rng``), drawn only when
    dropout is active, as in Flax, and for that key the result is exactly
    ``jdrop.dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    ``rate == 0`` and evaluation return the inputs, ``rate == 1`` returns
    zeros, without drawing a key, as in Flax.

    Attributes:
      rate: the probability of *dropping* a unit, in [0, 1] (``1 - keep_prob``):
        a Python, NumPy or JAX real scalar, not a bool.
      broadcast_dims: axes along which the mask is shared: any sequence of integers.
      deterministic: True for evaluation: anything Flax reads as a bool
        (``True``, ``1``, ``np.bool_(True)``, ``jnp.array(True)``); may instead
        be given at call time (exactly one of the two).
      rng_collection: the RNG collection to draw keys from.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1] or
        NaN (Flax accepts it silently).
      TypeError: when the module is built, if ``rate`` is not a real number,
        ``broadcast_dims`` is not a sequence of ints, or ``deterministic`` is
        not read as a bool (a string, an array with axes).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
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
        self._checked_axes(self.broadcast_dims)
        _check_deterministic_attribute(self.deterministic)
        super().__post_init__()

    @linen.nowrap
    def _checked_axes(self, broadcast_dims: object) -> tuple[int, ...]:
        """``broadcast_dims`` as a tuple of ints; :class:`DropPath` accepts none."""
        return _host_axes(broadcast_dims)

    @linen.nowrap
    def _apply(self, key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
        """The core function for an active call with 0 < rate < 1; the subclasses change only this."""
        return dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)

    @linen.compact
    def __call__(
        self,
        inputs: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout to ``inputs``.

        Args:
          inputs: a floating array (or array-like) of any shape.
          deterministic: True for evaluation; merged with the attribute
            (exactly one of the two must be set); anything Flax reads as a bool.
          rng: a key to use instead of ``make_rng(rng_collection)``.

        Returns:
          ``inputs`` itself when nothing is dropped (evaluation, rate 0),
          otherwise an array with the shape and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set in neither place or in both,
            or an axis of ``broadcast_dims`` is out of range.
          TypeError: if ``inputs`` is not floating or ``deterministic`` is not
            read as a bool.
        """

        def draw_key() -> jax.Array:
            return rng if rng is not None else self.make_rng(self.rng_collection)

        return _dropout_at_rate(
            draw_key,
            inputs,
            self.rate,
            deterministic=linen.merge_param("deterministic", self.deterministic, deterministic),
            broadcast_dims=self._checked_axes(self.broadcast_dims),
            apply=self._apply,
            host=FLAX,
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
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the RNG collection to draw keys from.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1) or
        NaN (at rate 1 the variance is infinite).
      TypeError: as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
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

    @linen.nowrap
    def _apply(self, key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
        return gaussian_dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)


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
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the RNG collection to draw keys from.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1) or
        NaN (as in torch and Keras).
      TypeError: as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> import jdrop.linen
      >>> layer = jdrop.linen.AlphaDropout(rate=0.1, deterministic=False)
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = layer.apply({}, x, rngs={"dropout": jax.random.key(0)})
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """

    _allow_rate_one: ClassVar[bool] = False

    @linen.nowrap
    def _apply(self, key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
        return alpha_dropout(key, x, keep_prob, broadcast_dims=broadcast_dims)


class DropPath(Dropout):
    """Stochastic depth (timm ``DropPath``) as a ``flax.linen.Dropout``.

    Use it on a residual branch, before the sum:
    ``x + DropPath(rate, deterministic=not train)(f(x))``. For the key that
    :class:`Dropout` would use, the result is exactly
    ``jdrop.drop_path(key, inputs, 1 - rate, mode=mode)``. A Flax layer sees
    the whole batch, so the default, ``mode="row"``, makes one decision per
    example (index of axis 0): each example keeps or drops the whole branch.
    ``mode="batch"`` makes one decision for the whole batch. (The Equinox
    DropPath, which sees one example per call, defaults to ``"batch"``, the
    same per-example decision there.) Everything else is :class:`Dropout`'s:
    ``rate == 0`` and evaluation return the inputs and ``rate == 1`` returns
    zeros, without drawing a key.

    Attributes:
      rate: the probability of dropping the branch, in [0, 1].
      broadcast_dims: inherited from ``linen.Dropout``; must stay empty
        (``mode`` says what is shared).
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the RNG collection to draw keys from.
      mode: ``"row"`` (one decision per example) or ``"batch"``.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside [0, 1] or
        NaN, or ``mode`` is not ``"row"`` or ``"batch"``.
      TypeError: when the module is built, if ``broadcast_dims`` is not empty,
        or as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
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
        super().__post_init__()

    @linen.nowrap
    def _checked_axes(self, broadcast_dims: object) -> tuple[int, ...]:
        return _no_broadcast_dims(broadcast_dims)

    @linen.nowrap
    def _apply(self, key: KeyLike, x: jax.Array, keep_prob: ArrayLike, broadcast_dims: tuple[int, ...]) -> jax.Array:
        return drop_path(key, x, keep_prob, mode=self.mode)


class ConcreteDropout(linen.Dropout):
    """Concrete dropout (Gal, Hron and Kendall 2017) as a ``flax.linen.Dropout`` whose keep probability is a parameter.

    The module form of :func:`jdrop.concrete_dropout`: the keep probability is
    ``sigmoid(keep_logit)`` for the parameter ``keep_logit`` (in the
    ``"params"`` collection, initialised to ``log((1 - rate) / rate)``), which
    gradients reach through the relaxed mask, so it is learned with the
    weights. Train it with the data loss plus :meth:`regularizer` for the
    layer whose kernel multiplies the dropped units; without that term the
    keep probability only grows towards 1.

    The class is a ``flax.linen.Dropout`` (not a :class:`Dropout`: its rate is
    not fixed) with ``linen.Dropout``'s attributes, and ``rate`` the initial
    one. ``deterministic`` merges as in ``flax.linen.Dropout``, and the key is
    ``self.make_rng(rng_collection)`` (or the call's ``rng``), drawn only when
    active, as :class:`Dropout` draws it; for that key the result is exactly
    ``jdrop.concrete_dropout(key, inputs, keep_logit, temperature=temperature,
    broadcast_dims=broadcast_dims)``. Evaluation returns the inputs without a
    key. The NNX and Equinox classes have the same interface: the initial
    rate under the host's name, :attr:`keep_prob` and :meth:`regularizer`,
    which here need the module bound to its variables:
    ``layer.apply(variables, kernel, num_examples=N, length_scale=l, method="regularizer")``,
    ``layer.bind(variables).keep_prob``, or, for a submodule, the functional
    ``jdrop.concrete_dropout_regularizer(params["ConcreteDropout_0"]["keep_logit"], kernel, ...)``.

    Attributes:
      rate: the *initial* probability of dropping a unit, in (0, 1); the
        paper starts at 0.1. Read only when ``keep_logit`` is created: the
        rate the layer applies is ``1 - keep_prob``.
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the RNG collection to draw keys from.
      logit_shape: the shape of ``keep_logit``: ``()`` for one keep probability,
        ``(features,)`` for one per feature (last axis); it must broadcast to
        the inputs' shape without changing it.
      temperature: the relaxation's temperature, > 0; lower is closer to a hard
        mask, with noisier gradients.

    Raises:
      ValueError: when the module is built, if ``rate`` is outside (0, 1) or
        NaN, ``temperature`` is not positive and finite, or ``logit_shape``
        has a negative size.
      TypeError: when the module is built, if ``rate`` or ``temperature`` is
        not a real number, ``logit_shape`` or ``broadcast_dims`` is not a
        sequence of ints, or ``deterministic`` is not read as a bool.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop.linen
      >>> layer = jdrop.linen.ConcreteDropout(rate=0.1)
      >>> x = jnp.ones((10_000,))
      >>> variables = layer.init(jax.random.key(0), x, deterministic=True)
      >>> round(float(layer.bind(variables).keep_prob), 4)  # the initial value; learned from here on
      0.9
      >>> y = layer.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> reg = layer.apply(  # add to the loss
      ...     variables, jnp.zeros((4, 3)), num_examples=1000, length_scale=1.0, method="regularizer"
      ... )
      >>> bool(jnp.all(layer.apply(variables, x, deterministic=True) == x))
      True
    """

    rate: float = 0.1
    logit_shape: Sequence[int] = ()
    temperature: float = 0.1

    def __post_init__(self) -> None:
        _initial_keep_logit(self.rate, "rate")
        _check_shape(self.logit_shape)
        _check_positive(self.temperature, "temperature")
        _host_axes(self.broadcast_dims)
        _check_deterministic_attribute(self.deterministic)
        super().__post_init__()

    def setup(self) -> None:
        logit = _initial_keep_logit(self.rate, "rate")

        def init(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            return jnp.full(shape, logit, jnp.float32)

        self.keep_logit = self.param("keep_logit", init, _check_shape(self.logit_shape))

    @property
    def keep_prob(self) -> jax.Array:
        """The keep probability in use, ``sigmoid(keep_logit)``, of ``keep_logit``'s shape; learned.

        Needs the module bound to its variables, e.g. ``layer.bind(variables).keep_prob``.
        """
        return jax.nn.sigmoid(self.keep_logit)

    def regularizer(self, kernel: ArrayLike, *, num_examples: int, length_scale: float) -> jax.Array:
        """This layer's term of the training objective: :func:`jdrop.concrete_dropout_regularizer`.

        Add it to the mean loss over a batch, for every concrete dropout
        layer. Needs the module bound to its variables:
        ``layer.apply(variables, kernel, num_examples=N, length_scale=l, method="regularizer")``
        or ``layer.bind(variables).regularizer(kernel, ...)``.

        Args:
          kernel: the weights that multiply this layer's outputs, shape
            ``(..., K, out)`` (e.g. the next ``nn.Dense``'s ``kernel``).
          num_examples: the size of the training set, an int >= 1.
          length_scale: the prior length-scale of the weights, > 0.

        Returns:
          A scalar, float32.

        Raises:
          ValueError: if ``kernel``'s shape does not fit ``keep_logit``'s,
            ``num_examples`` is not an int >= 1, or ``length_scale`` is not
            positive and finite.
        """
        return concrete_dropout_regularizer(
            self.keep_logit, kernel, num_examples=num_examples, length_scale=length_scale
        )

    def __call__(
        self,
        inputs: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Applies concrete dropout to ``inputs``.

        Args:
          inputs: a floating array of any shape that ``keep_logit`` broadcasts to.
          deterministic: True for evaluation; merged with the attribute
            (exactly one of the two must be set); anything Flax reads as a bool.
          rng: a key to use instead of ``make_rng(rng_collection)``.

        Returns:
          ``inputs`` itself in evaluation, otherwise an array with the shape
          and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set in neither place or in both,
            or ``keep_logit`` does not broadcast to ``inputs``' shape.
          TypeError: if ``inputs`` is not floating or ``deterministic`` is not
            read as a bool.
        """

        def draw_key() -> jax.Array:
            return rng if rng is not None else self.make_rng(self.rng_collection)

        return _concrete_dropout_in_module(
            draw_key,
            inputs,
            self.keep_logit,
            temperature=self.temperature,
            deterministic=linen.merge_param("deterministic", self.deterministic, deterministic),
            broadcast_dims=self.broadcast_dims,
            host=FLAX,
        )
