"""jdrop's dropout as a drop-in for ``equinox.nn.Dropout``, and its dropout-family variants.

Change ``eqx.nn.Dropout`` to ``jdrop.equinox.Dropout`` and nothing else:
``p``, ``inference``, ``key=`` and ``eqx.nn.inference_mode`` work as in
Equinox, because the class *is* an ``eqx.nn.Dropout`` whose mask comes from
:func:`jdrop.dropout` instead of ``jax.random.bernoulli``.

:class:`GaussianDropout`, :class:`AlphaDropout` and :class:`DropPath` are
subclasses of :class:`Dropout` that apply :func:`jdrop.gaussian_dropout`,
:func:`jdrop.alpha_dropout` and :func:`jdrop.drop_path` instead; everything
else (``inference``, ``eqx.nn.inference_mode``, ``key=``) is inherited
unchanged. :class:`ConcreteDropout` is :func:`jdrop.concrete_dropout` as an
Equinox module whose keep probability is an array field, learned with the
weights; it has an ``inference`` field, so ``eqx.nn.inference_mode`` switches
it too. Importing this module imports Equinox; ``import jdrop`` does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
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


def _key_source(key: jax.Array | None, missing: str) -> Callable[[], jax.Array]:
    """The call's ``key``, asked for only when noise is drawn; Equinox's RuntimeError when it is missing."""

    def draw_key() -> jax.Array:
        if key is None:
            raise RuntimeError(
                f"{missing}: call it with key=jax.random.key(...) "
                "(a fresh one each call), or set inference=True (eqx.nn.inference_mode) for evaluation."
            )
        return key

    return draw_key


class Dropout(eqx.nn.Dropout):
    """``equinox.nn.Dropout`` with jdrop's masks.

    Same fields (``p``, ``inference``) and call (``key=``, ``inference=``) as
    Equinox. For a given key the result is exactly
    ``jdrop.dropout(key, x, 1 - p)``. ``p == 0`` and inference return ``x``,
    ``p == 1`` returns zeros (with zero, not NaN, gradients); a ``p`` outside
    [0, 1] raises ``ValueError`` when the module is built (Equinox accepts it).
    ``p`` may also be a JAX array (a field ``eqx.tree_at`` can change under
    ``jit``); it receives no gradient, as in Equinox.

    Args:
      p: the probability of *dropping* a unit, in [0, 1] (``1 - keep_prob``).
      inference: if True, the layer is the identity; toggle it for a whole
        model with ``eqx.nn.inference_mode``.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1] or NaN.

    Example:
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.Dropout(0.5)
      >>> y = layer(jnp.ones((2, 4)), key=jax.random.key(0))
      >>> sorted(set(y.ravel().tolist()))  # dropped: 0, kept: 1 / 0.5
      [0.0, 2.0]
      >>> layer(jnp.ones(3), inference=True).tolist()
      [1.0, 1.0, 1.0]
    """

    #: Whether ``p == 1`` (zeros) is accepted; False for noise that has no limit there.
    _allow_rate_one: ClassVar[bool] = True

    def __init__(self, p: float = 0.5, inference: bool = False, *, deterministic: bool | None = None) -> None:
        _check_rate(p, "p", allow_one=self._allow_rate_one)
        super().__init__(p, inference, deterministic=deterministic)

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        """The core function for an active call with 0 < p < 1; the subclasses change only this."""
        return dropout(key, x, keep_prob)

    def __call__(
        self,
        x: jax.Array,
        *,
        key: jax.Array | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Applies dropout to ``x``.

        Args:
          x: a floating array of any shape.
          key: a PRNG key; needed unless in inference mode or ``p == 0``.
          inference: overrides ``self.inference`` if given.
          deterministic: deprecated alternative to ``inference``, as in Equinox.

        Returns:
          An array with the shape and dtype of ``x``.

        Raises:
          RuntimeError: if ``key`` is None while dropout is active (as Equinox).
        """
        if deterministic is not None:
            inference = deterministic
            warnings.warn(
                "Dropout()(deterministic=...) is deprecated in favour of Dropout()(inference=...)", stacklevel=2
            )
        if inference is None:
            inference = self.inference

        return _dropout_at_rate(
            _key_source(key, "jdrop.equinox.Dropout needs a key when dropout is active"),
            x,
            self.p,
            rate_name="p",
            deterministic=bool(inference),
            broadcast_dims=(),
            apply=self._apply,
            allow_rate_one=self._allow_rate_one,
        )


class GaussianDropout(Dropout):
    """Multiplicative Gaussian noise (Keras ``GaussianDropout(rate)``) as an ``equinox.nn.Dropout``.

    Multiplies ``x`` by noise drawn from N(1, p / (1 - p)), the mean and
    variance of inverted dropout's factor. For a given key the result is
    exactly ``jdrop.gaussian_dropout(key, x, 1 - p)``. Everything else is
    :class:`Dropout`'s (``p == 0`` and inference return ``x`` and need no key;
    ``p`` may be a JAX array, which gets no gradient).

    Args:
      p: the drop rate whose variance the noise matches, in [0, 1).
      inference: if True, the layer is the identity; toggle it for a whole
        model with ``eqx.nn.inference_mode``.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1) or NaN (at 1 the variance is infinite).

    Example:
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.GaussianDropout(0.2)
      >>> y = layer(jnp.ones((1000,)), key=jax.random.key(0))
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)  # var = 0.2 / 0.8
      (True, True)
      >>> layer(jnp.ones(3), inference=True).tolist()
      [1.0, 1.0, 1.0]
    """

    _allow_rate_one: ClassVar[bool] = False

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return gaussian_dropout(key, x, keep_prob)


class AlphaDropout(Dropout):
    """Alpha dropout for SELU networks (``torch.nn.AlphaDropout``, Keras ``AlphaDropout``) as an ``equinox.nn.Dropout``.

    Dropped units are set to SELU's negative saturation value and an affine
    map keeps mean 0 and variance 1. For a given key the result is exactly
    ``jdrop.alpha_dropout(key, x, 1 - p)``. Everything else is
    :class:`Dropout`'s (``p == 0`` and inference return ``x`` and need no key).

    Args:
      p: the probability of dropping a unit, in [0, 1).
      inference: if True, the layer is the identity; toggle it for a whole
        model with ``eqx.nn.inference_mode``.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1) or NaN (as in torch and Keras).

    Example:
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.AlphaDropout(0.1)
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = layer(x, key=jax.random.key(0))
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """

    _allow_rate_one: ClassVar[bool] = False

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return alpha_dropout(key, x, keep_prob)


class DropPath(Dropout):
    """Stochastic depth (timm ``DropPath``) as an ``equinox.nn.Dropout``.

    Use it on a residual branch, before the sum: ``x + drop_path(f(x), key=key)``.
    For a given key the result is exactly ``jdrop.drop_path(key, x, 1 - p, mode=mode)``:
    with ``mode="row"`` each index of axis 0 keeps or drops the whole branch,
    with ``mode="batch"`` the whole array does. In the Equinox idiom of one
    example per call (``jax.vmap`` over examples with per-example keys),
    ``mode="batch"`` is one decision per example. Everything else is
    :class:`Dropout`'s: ``p == 0`` and inference return ``x`` and ``p == 1``
    returns zeros, without needing a key.

    Args:
      p: the probability of dropping the branch, in [0, 1].
      inference: if True, the layer is the identity; toggle it for a whole
        model with ``eqx.nn.inference_mode``.
      mode: ``"row"`` (one decision per index of axis 0) or ``"batch"`` (one
        for the whole array); a static field.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1] or NaN, or ``mode`` is not
        ``"row"`` or ``"batch"``.

    Example:
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.DropPath(0.5)
      >>> y = layer(jnp.ones((8, 3)), key=jax.random.key(0))
      >>> all(len(set(row)) == 1 for row in y.tolist())  # each row kept whole (scaled by 2) or dropped
      True
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
    """

    mode: str = eqx.field(static=True)

    def __init__(
        self,
        p: float = 0.5,
        inference: bool = False,
        *,
        mode: str = "row",
        deterministic: bool | None = None,
    ) -> None:
        if not isinstance(mode, str) or mode not in DROP_PATH_MODES:
            raise ValueError(f"mode must be one of {DROP_PATH_MODES}, got {mode!r}.")
        super().__init__(p, inference, deterministic=deterministic)
        self.mode = mode

    def _apply(self, key: KeyLike | None, x: jax.Array, keep_prob: ArrayLike) -> jax.Array:
        return drop_path(key, x, keep_prob, mode=self.mode)


class ConcreteDropout(eqx.Module):
    """Concrete dropout (Gal, Hron and Kendall 2017) as an Equinox module whose keep probability is learned.

    The module form of :func:`jdrop.concrete_dropout`: the keep probability is
    ``sigmoid(keep_logit)`` for the array field ``keep_logit``, which gradients
    reach through the relaxed mask (``eqx.filter_grad`` and
    ``eqx.is_inexact_array`` partitions include it), so it is learned with the
    weights. For a given key the result is exactly
    ``jdrop.concrete_dropout(key, x, keep_logit, temperature=temperature, broadcast_dims=broadcast_dims)``.
    ``inference`` is a field like ``eqx.nn.Dropout``'s, so
    ``eqx.nn.inference_mode`` switches this layer with the model's others;
    inference returns ``x`` and needs no key. ``temperature`` and
    ``broadcast_dims`` are static fields.

    Train the keep probability with the data loss plus :meth:`regularizer` for
    the layer whose weights multiply the dropped units; without that term it
    only grows towards 1.

    Args:
      p: the *initial* probability of dropping a unit, in (0, 1); the paper
        starts at 0.1. ``keep_logit`` starts at ``log((1 - p) / p)``.
      logit_shape: the shape of ``keep_logit``: ``()`` for one keep probability,
        ``(features,)`` for one per feature (last axis); it must broadcast to
        ``x``'s shape without changing it.
      temperature: the relaxation's temperature, > 0; lower is closer to a hard
        mask, with noisier gradients.
      broadcast_dims: axes along which the noise is shared.
      inference: if True, the layer is the identity; toggle it for a whole
        model with ``eqx.nn.inference_mode``.

    Raises:
      ValueError: if ``p`` is outside (0, 1) or NaN, ``temperature`` is not
        positive and finite, or ``logit_shape`` has a negative size.
      TypeError: if ``p`` or ``temperature`` is not a real number, or
        ``logit_shape`` or ``broadcast_dims`` is not a sequence of ints.

    Example:
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.ConcreteDropout(0.1)
      >>> round(float(layer.keep_prob), 4)  # the initial value; learned from here on
      0.9
      >>> y = layer(jnp.ones((10_000,)), key=jax.random.key(0))
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> reg = layer.regularizer(jnp.zeros((4, 3)), num_examples=1000, length_scale=1.0)  # add to the loss
      >>> layer(jnp.ones(3), inference=True).tolist()
      [1.0, 1.0, 1.0]
    """

    keep_logit: jax.Array
    inference: bool
    temperature: float = eqx.field(static=True)
    broadcast_dims: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        p: float = 0.1,
        *,
        logit_shape: Sequence[int] = (),
        temperature: float = 0.1,
        broadcast_dims: Sequence[int] = (),
        inference: bool = False,
    ) -> None:
        logit = _initial_keep_logit(p, "p")
        shape = _check_shape(logit_shape)
        _check_positive(temperature, "temperature")
        self.keep_logit = jnp.full(shape, logit, jnp.float32)
        self.inference = inference
        self.temperature = float(temperature)
        if isinstance(broadcast_dims, str) or not isinstance(broadcast_dims, Sequence):
            raise TypeError(f"broadcast_dims must be a sequence of axes, got {broadcast_dims!r}.")
        self.broadcast_dims = tuple(broadcast_dims)  # hashable: a static field

    @property
    def keep_prob(self) -> jax.Array:
        """The current keep probability, ``sigmoid(keep_logit)``, of ``keep_logit``'s shape."""
        return jax.nn.sigmoid(self.keep_logit)

    def regularizer(self, kernel: ArrayLike, *, num_examples: int, length_scale: float) -> jax.Array:
        """This layer's term of the training objective: :func:`jdrop.concrete_dropout_regularizer`.

        Add it to the mean loss over a batch, for every concrete dropout layer.

        Args:
          kernel: the weights that multiply this layer's outputs, shape
            ``(..., K, out)``. Note that ``eqx.nn.Linear.weight`` has shape
            ``(out, K)``: pass its transpose, ``linear.weight.T``.
          num_examples: the size of the training set, an int >= 1.
          length_scale: the prior length-scale of the weights, > 0.

        Returns:
          A scalar, float32.
        """
        return concrete_dropout_regularizer(
            self.keep_logit, kernel, num_examples=num_examples, length_scale=length_scale
        )

    def __call__(self, x: jax.Array, *, key: jax.Array | None = None, inference: bool | None = None) -> jax.Array:
        """Applies concrete dropout to ``x``.

        Args:
          x: a floating array of any shape that ``keep_logit`` broadcasts to.
          key: a PRNG key; needed unless in inference mode.
          inference: overrides ``self.inference`` if given.

        Returns:
          An array with the shape and dtype of ``x``.

        Raises:
          RuntimeError: if ``key`` is None while active (as Equinox's Dropout).
          ValueError: if ``keep_logit`` does not broadcast to ``x``'s shape.
        """
        if inference is None:
            inference = self.inference

        return _concrete_dropout_in_module(
            _key_source(key, "jdrop.equinox.ConcreteDropout needs a key when active"),
            x,
            self.keep_logit,
            temperature=self.temperature,
            deterministic=bool(inference),
            broadcast_dims=self.broadcast_dims,
            input_name="x",
        )
