"""jdrop's dropout as a drop-in for ``flax.nnx.Dropout``, and its dropout-family variants.

Change ``nnx.Dropout`` to ``jdrop.nnx.Dropout`` and nothing else: the
constructor, the call, ``model.train()``/``model.eval()``, ``nnx.view`` and the
RNG streams work as in Flax, because the class *is* an ``nnx.Dropout`` whose
mask comes from :func:`jdrop.dropout` instead of ``jax.random.bernoulli``.
It takes what Flax takes: a rate as a Python, NumPy or JAX scalar,
``deterministic`` as anything Flax reads as a bool (``1``,
``jnp.array(True)``), axes as any sequence of integers; values Flax would
misuse silently (a rate outside [0, 1], a string for ``deterministic``) raise.

Every class here is an ``nnx.Dropout``, so ``nnx.view(model, only=nnx.Dropout,
deterministic=...)`` switches all of them with the model's other dropout
layers. :class:`GaussianDropout`, :class:`AlphaDropout` and :class:`DropPath`
are subclasses of :class:`Dropout` that apply :func:`jdrop.gaussian_dropout`,
:func:`jdrop.alpha_dropout` and :func:`jdrop.drop_path` instead; everything
else (the switches, ``nnx.view``, the RNG stream) is inherited unchanged.
:class:`ConcreteDropout` is :func:`jdrop.concrete_dropout` with its keep
probability an ``nnx.Param``, learned with the weights; it switches with the
model and draws its keys as :class:`Dropout` does. The concrete dropout
classes of the three hosts have one interface: the host's name for the
initial rate (``rate`` here), :attr:`~ConcreteDropout.keep_prob` and
:meth:`~ConcreteDropout.regularizer`.

For attention, :func:`dot_product_attention` has the signature of
``flax.nnx.dot_product_attention``: pass it as
``nnx.MultiHeadAttention(..., attention_fn=jdrop.nnx.dot_product_attention)``
and the attention weights' dropout is jdrop's, computed in tiles that never
hold the (T, S) weights.

Importing this module imports Flax; ``import jdrop`` does not.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx.nn import dtypes
from flax.nnx.nn.attention import dot_product_attention_weights
from jax.typing import ArrayLike

from jdrop._adapters import (
    ALPHA,
    DROPOUT,
    FLAX,
    GAUSSIAN,
    ConcreteArguments,
    Variant,
    _attention_rate,
    _concrete_dropout_in_module,
    _dropout_at_rate,
    _first_from,
    _flax_attention_dropout,
    _flax_weights_dropout,
    drop_path_variant,
)
from jdrop._checks import _flag
from jdrop._variants import concrete_dropout_regularizer

__all__ = ["AlphaDropout", "ConcreteDropout", "DropPath", "Dropout", "GaussianDropout", "dot_product_attention"]

#: What ``rngs`` may be in a call: Flax's key sources.
CallRngs = nnx.Rngs | nnx.RngStream | jax.Array | None


def _layer_name(layer: nnx.Module) -> str:
    """The name that error messages give ``layer``: Flax's class name first, as Flax's own messages have it."""
    cls = type(layer)
    return f"{cls.__name__} ({cls.__module__}.{cls.__qualname__})"


def _draw_key(layer: nnx.Dropout, call_rngs: CallRngs) -> jax.Array:
    """The key for an active call, drawn as ``flax.nnx.Dropout`` draws it: one call of the stream, the call's first."""
    source = _first_from(
        call_rngs,
        layer.rngs,
        error_msg=(
            f"`deterministic` is False, but no `rngs` argument was provided to {_layer_name(layer)}: "
            "pass rngs=nnx.Rngs(...) to the constructor, or rngs (a key, RngStream or Rngs) to the call."
        ),
    )
    if isinstance(source, nnx.Rngs):
        key: jax.Array = source[layer.rng_collection]()
        return key
    if isinstance(source, nnx.RngStream):
        key = source()
        return key
    if isinstance(source, jax.Array):
        return source
    raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or jax.Array key, got {type(source).__name__}.")


def _deterministic(layer: nnx.Dropout, call_value: object) -> object:
    """The call's ``deterministic`` if given, else the layer's (set by the constructor, ``eval()`` or ``nnx.view``)."""
    return _first_from(
        call_value,
        layer.deterministic,
        error_msg=(
            f"No `deterministic` argument was provided to {_layer_name(layer)}: pass it to the constructor or the "
            "call, or use model.train()/model.eval() or nnx.view(model, deterministic=...)."
        ),
    )


def _constructor_flag(deterministic: object) -> bool | None:
    """The constructor's ``deterministic``, checked now and stored as a Python bool (a static attribute)."""
    return None if deterministic is None else _flag(deterministic, "deterministic")


class Dropout(nnx.Dropout):
    """``flax.nnx.Dropout`` with jdrop's masks.

    Takes Flax's arguments (``rate``, ``broadcast_dims``, ``deterministic``,
    ``rng_collection``, ``rngs``) with Flax's defaults, draws its key exactly
    as Flax does (one call of the ``rng_collection`` stream per active call),
    and for that key returns exactly
    ``jdrop.dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    ``rate == 0`` and evaluation return the inputs, ``rate == 1`` returns
    zeros, without drawing a key, as in Flax. ``rate`` may be a JAX array
    attribute, traced under ``nnx.jit`` (Flax's own Dropout fails there); it
    gets no gradient.

    Args:
      rate: the probability of *dropping* a unit, in [0, 1] (``1 - keep_prob``):
        a Python, NumPy or JAX real scalar, not a bool.
      broadcast_dims: axes along which the mask is shared: any sequence of
        integers (stored as a tuple of ints).
      deterministic: True for evaluation: anything Flax reads as a bool
        (``True``, ``1``, ``np.bool_(True)``, ``jnp.array(True)``), or None to
        give it at call time or set it with ``model.eval()``/``model.train()``/
        ``nnx.view``.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1] or NaN (Flax accepts it silently).
      TypeError: if ``rate`` is not a real number, ``broadcast_dims`` is not a
        sequence of ints, ``deterministic`` is not read as a bool (a string,
        an array with axes), or ``rngs`` is of another type.

    Example:
      >>> import jax.numpy as jnp
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

    #: The family member applied; the variant subclasses change only this.
    _variant: ClassVar[Variant] = DROPOUT

    def __init__(
        self,
        rate: float | jax.Array,
        *,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> None:
        super().__init__(
            rate,  # type: ignore[arg-type]  # Flax annotates a float; it takes a 0-d array as well
            broadcast_dims=self._variant.check_constructor(rate, broadcast_dims, FLAX),
            deterministic=_constructor_flag(deterministic),  # type: ignore[arg-type, unused-ignore]  # flax 0.12.4 annotates bool
            rng_collection=rng_collection,
            rngs=rngs,
        )

    def __call__(
        self,
        inputs: jax.Array,
        *,
        deterministic: bool | None = None,
        rngs: CallRngs = None,
    ) -> jax.Array:
        """Applies dropout to ``inputs``.

        Args:
          inputs: an array (or array-like) of any shape: floating or complex
            (the mask applied to the complex value) where noise is applied;
            of any dtype where nothing is (evaluation, rate 0), as in Flax.
          deterministic: overrides the module's ``deterministic`` if given;
            anything Flax reads as a bool.
          rngs: a key, ``nnx.RngStream`` or ``nnx.Rngs`` to use instead of the
            module's own stream.

        Returns:
          ``inputs`` itself when nothing is dropped (evaluation, rate 0),
          otherwise an array with the shape and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set nowhere, no key source is
            available while dropout is active, or an axis of ``broadcast_dims``
            is out of range.
          TypeError: if ``inputs`` is neither floating nor complex while noise
            is applied (Flax's Dropout fails on integers too), ``deterministic`` is not
            read as a bool, or ``rngs`` is of another type.
        """
        return _dropout_at_rate(
            lambda: _draw_key(self, rngs),
            inputs,
            self.rate,
            deterministic=_deterministic(self, deterministic),
            broadcast_dims=self.broadcast_dims,
            variant=self._variant,
            host=FLAX,
        )


class GaussianDropout(Dropout):
    """Multiplicative Gaussian noise (Keras ``GaussianDropout(rate)``) as an ``nnx.Dropout``.

    Multiplies the inputs by noise drawn from N(1, rate / (1 - rate)), the
    mean and variance of inverted dropout's factor. For the key that
    :class:`Dropout` would draw, the result is exactly
    ``jdrop.gaussian_dropout(key, inputs, 1 - rate, broadcast_dims=broadcast_dims)``.
    Everything else is :class:`Dropout`'s: the arguments and the values they
    take, ``model.train()``/``model.eval()``, ``nnx.view`` and the RNG stream
    (``rate == 0`` and evaluation return the inputs without drawing a key).

    Args:
      rate: the drop rate whose variance the noise matches, in [0, 1).
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1) or NaN (at rate 1 the variance is infinite).
      TypeError: as for :class:`Dropout`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.GaussianDropout(0.2, rngs=nnx.Rngs(dropout=0))
      >>> y = layer(jnp.ones((1000,)))
      >>> # mean 1, variance 0.2 / 0.8
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)
      (True, True)
      >>> layer.eval()
      >>> layer(jnp.ones(3)).tolist()
      [1.0, 1.0, 1.0]
    """

    _variant = GAUSSIAN


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
      TypeError: as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.AlphaDropout(0.1, rngs=nnx.Rngs(dropout=0))
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = layer(x)
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """

    _variant = ALPHA


class DropPath(Dropout):
    """Stochastic depth (timm ``DropPath``) as an ``nnx.Dropout``.

    Use it on a residual branch, before the sum: ``x + self.drop_path(f(x))``.
    For the key that :class:`Dropout` would draw, the result is exactly
    ``jdrop.drop_path(key, inputs, 1 - rate, mode=mode)``. A Flax layer sees
    the whole batch, so the default, ``mode="row"``, makes one decision per
    example (index of axis 0): each example keeps or drops the whole branch.
    ``mode="batch"`` makes one decision for the whole batch. (The Equinox
    DropPath, which sees one example per call, defaults to ``"batch"``, the
    same per-example decision there.) Everything else is :class:`Dropout`'s:
    ``rate == 0`` and evaluation return the inputs and ``rate == 1`` returns
    zeros, without drawing a key.

    Args:
      rate: the probability of dropping the branch, in [0, 1].
      mode: ``"row"`` (one decision per example) or ``"batch"``.
      broadcast_dims: must be empty (``mode`` says what is shared); accepted
        so that every host's DropPath raises the same error for it.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside [0, 1] or NaN, or ``mode`` is not
        ``"row"`` or ``"batch"``.
      TypeError: if ``broadcast_dims`` is not empty, or as for :class:`Dropout`.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.DropPath(0.5, rngs=nnx.Rngs(dropout=0))
      >>> y = layer(jnp.ones((8, 3)))
      >>> # each row kept whole (scaled by 2) or dropped
      >>> all(len(set(row)) == 1 for row in y.tolist())
      True
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
    """

    def __init__(
        self,
        rate: float | jax.Array,
        *,
        mode: str = "row",
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> None:
        drop_path_variant(mode)  # checked before anything else
        self.mode = str(mode)  # set first: Dropout's constructor checks its arguments against the mode's variant
        super().__init__(
            rate, broadcast_dims=broadcast_dims, deterministic=deterministic, rng_collection=rng_collection, rngs=rngs
        )

    @property
    def _variant(self) -> Variant:  # type: ignore[override]  # the mode's
        return drop_path_variant(self.mode)


class ConcreteDropout(nnx.Dropout):
    """Concrete dropout (Gal, Hron and Kendall 2017) as an ``nnx.Dropout`` whose keep probability is a parameter.

    The module form of :func:`jdrop.concrete_dropout`: the keep probability is
    ``sigmoid(keep_logit)`` for the ``nnx.Param`` ``keep_logit``, which
    gradients reach through the relaxed mask, so an optimiser over
    ``nnx.Param`` learns it with the weights. Train it with the data loss plus
    :meth:`regularizer` for the layer whose kernel multiplies the dropped
    units; without that term the keep probability only grows towards 1.

    The class is an ``nnx.Dropout`` (not a :class:`Dropout`: its rate is not
    fixed), constructed by ``nnx.Dropout``'s own constructor, so
    ``model.train()``/``model.eval()`` and ``nnx.view(model, deterministic=...)``,
    with or without ``only=nnx.Dropout``, switch it with the model's other
    dropout layers. The key is drawn exactly as :class:`Dropout` draws it (one
    call of the ``rng_collection`` stream per active call, or the call's
    ``rngs``), and for that key the result is exactly
    ``jdrop.concrete_dropout(key, inputs, keep_logit, temperature=temperature, broadcast_dims=broadcast_dims)``;
    evaluation returns the inputs without drawing a key. There is no
    ``rate == 0`` shortcut. The Flax linen and Equinox classes have the same
    interface: the initial rate under the host's name, :attr:`keep_prob` and
    :meth:`regularizer`.

    Args:
      rate: the *initial* probability of dropping a unit, in (0, 1); the
        paper starts at 0.1. ``keep_logit`` starts at ``log((1 - rate) / rate)``.
        Kept as the attribute ``rate``, Flax's place for it, which this layer
        reads only here: the rate it applies is ``1 - keep_prob``.
      logit_shape: the shape of ``keep_logit``: ``()`` for one keep probability,
        ``(features,)`` for one per feature (last axis); it must broadcast to
        the inputs' shape without changing it.
      temperature: the relaxation's temperature, > 0; lower is closer to a
        hard mask, with noisier gradients.
      broadcast_dims: axes along which the noise is shared.
      deterministic: True for evaluation; as for :class:`Dropout`.
      rng_collection: the name of the RNG stream to draw keys from.
      rngs: an ``nnx.Rngs`` or ``nnx.RngStream`` to fork a stream from, or None
        to pass ``rngs`` at call time.

    Raises:
      ValueError: if ``rate`` is outside (0, 1) or NaN, ``temperature`` is not
        positive and finite, or ``logit_shape`` has a negative size.
      TypeError: if ``rate`` or ``temperature`` is not a real number,
        ``logit_shape`` or ``broadcast_dims`` is not a sequence of ints,
        ``deterministic`` is not read as a bool, or ``rngs`` is of another type.

    Example:
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = jdrop.nnx.ConcreteDropout(0.1, rngs=nnx.Rngs(dropout=0))
      >>> round(float(layer.keep_prob), 4)  # the initial value; learned from here on
      0.9
      >>> y = layer(jnp.ones((10_000,)))
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> # the term to add to the loss
      >>> reg = layer.regularizer(
      ...     jnp.zeros((4, 3)), num_examples=1000, length_scale=1.0
      ... )
      >>> layer.eval()
      >>> layer(jnp.ones(3)).tolist()
      [1.0, 1.0, 1.0]
    """

    def __init__(
        self,
        rate: float | jax.Array = 0.1,
        *,
        logit_shape: Sequence[int] = (),
        temperature: float = 0.1,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: nnx.Rngs | nnx.RngStream | None = None,
    ) -> None:
        checked = ConcreteArguments.check(rate, logit_shape, temperature, broadcast_dims, FLAX)
        super().__init__(
            rate,  # type: ignore[arg-type]  # Flax annotates a float; it takes a 0-d array as well
            broadcast_dims=checked.broadcast_dims,
            deterministic=_constructor_flag(deterministic),  # type: ignore[arg-type, unused-ignore]  # flax 0.12.4 annotates bool
            rng_collection=rng_collection,
            rngs=rngs,
        )
        self.keep_logit = nnx.Param(jnp.full(checked.logit_shape, checked.keep_logit, jnp.float32))
        self.temperature = checked.temperature  # a static attribute, not an array

    @property
    def keep_prob(self) -> jax.Array:
        """The keep probability in use, ``sigmoid(keep_logit)``, of ``keep_logit``'s shape; learned."""
        return jax.nn.sigmoid(self.keep_logit[...])

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

        Raises:
          ValueError: if ``kernel``'s shape does not fit ``keep_logit``'s,
            ``num_examples`` is not an int >= 1, or ``length_scale`` is not
            positive and finite.
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
        rngs: CallRngs = None,
    ) -> jax.Array:
        """Applies concrete dropout to ``inputs``.

        Args:
          inputs: a floating or complex array (any dtype in evaluation) of any
            shape that ``keep_logit`` broadcasts to.
          deterministic: overrides the module's ``deterministic`` if given;
            anything Flax reads as a bool.
          rngs: a key, ``nnx.RngStream`` or ``nnx.Rngs`` to use instead of the
            module's own stream.

        Returns:
          ``inputs`` itself in evaluation, otherwise an array with the shape
          and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set nowhere, no key source is
            available while active, or ``keep_logit`` does not broadcast to
            ``inputs``' shape.
          TypeError: if ``inputs`` is neither floating nor complex while noise
            is applied (Flax's Dropout fails on integers too), ``deterministic`` is not
            read as a bool, or ``rngs`` is of another type.
        """
        return _concrete_dropout_in_module(
            lambda: _draw_key(self, rngs),
            inputs,
            self.keep_logit[...],
            temperature=self.temperature,
            deterministic=_deterministic(self, deterministic),
            broadcast_dims=self.broadcast_dims,
            host=FLAX,
        )


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    bias: jax.Array | None = None,
    mask: jax.Array | None = None,
    broadcast_dropout: bool = True,
    dropout_rng: jax.Array | None = None,
    dropout_rate: float = 0.0,
    deterministic: bool = False,
    dtype: Any = None,
    precision: Any = None,
    module: nnx.Module | None = None,
    promote_dtype: Callable[..., Any] = dtypes.promote_dtype,
    is_causal: bool = False,
) -> jax.Array:
    r"""``flax.nnx.dot_product_attention`` with jdrop's memory-light attention dropout.

    The same signature as Flax's, so that
    ``nnx.MultiHeadAttention(..., attention_fn=jdrop.nnx.dot_product_attention)``
    is the whole change. With dropout on (``deterministic`` false and
    ``dropout_rate > 0``) the result is, up to float rounding, Flax's formula
    with its bernoulli mask replaced by jdrop's:

    .. code-block:: python

        w = softmax(q . k / sqrt(H) + bias, masked to finfo.min where mask is 0)
        out = einsum(
            "...hqk,...khd->...qhd",
            jdrop.dropout(
                dropout_rng, w, 1 - dropout_rate,
                broadcast_dims=batch and head axes if broadcast_dropout else (),
            ),
            v,
        )

    that is, the mask is ``jdrop.dropout_mask(dropout_rng, s, 1 - dropout_rate)``
    for ``s`` Flax's dropout shape (``(1, ..., 1, T, S)`` with
    ``broadcast_dropout``), computed by :func:`jdrop.dot_product_attention`'s
    tiles: the (T, S) weights are never held, and the backward pass
    regenerates the mask. A row with every key masked out spreads its weight
    over all keys, as in Flax. Softmax statistics are float32.
    ``dropout_rate=1.0`` gives zeros (Flax's ``keep / 0`` gives NaN).

    With dropout off this *is* ``flax.nnx.dot_product_attention`` (its fast
    path, ``jax.nn.dot_product_attention``, when ``module`` is None). With
    ``module`` (sowing the weights into ``nnx.Intermediate``), the weights are
    materialised by Flax's ``dot_product_attention_weights`` and sown before
    dropout, as Flax sows them, then dropped with the same mask as above.

    Args:
      query: (..., T, N, H) queries.
      key: (..., S, K, H) keys; N a multiple of K (grouped-query attention).
      value: (..., S, K, Hv) values.
      bias: optional, broadcastable to (..., N, T, S), added to the logits.
      mask: optional, broadcastable to (..., N, T, S): nonzero (True) means attend.
      broadcast_dropout: share the dropout mask across the batch and head axes.
      dropout_rng: the PRNG key for the dropout mask; needed when dropout is on.
      dropout_rate: the probability of dropping a weight, a concrete number in [0, 1].
      deterministic: if true, no dropout; anything Flax reads as a bool.
      dtype: the computation's dtype, as Flax's (``promote_dtype``).
      precision: passed to every product, as Flax's.
      module: the module that sows the (pre-dropout) weights, or None.
      promote_dtype: Flax's dtype promotion of ``(query, key, value)``.
      is_causal: if true, query ``t`` attends keys ``0..t``.

    Returns:
      (..., T, N, Hv) attention output in the promoted dtype.

    Raises:
      ValueError: if ``dropout_rate`` is outside [0, 1], ``dropout_rng`` is
        missing while dropout is on, or the shapes do not fit.
      TypeError: if ``dropout_rate`` is traced or not a number, or
        ``deterministic`` or ``broadcast_dropout`` is not read as a bool.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from flax import nnx
      >>> import jdrop.nnx
      >>> layer = nnx.MultiHeadAttention(
      ...     num_heads=2, in_features=8, dropout_rate=0.1,
      ...     decode=False, deterministic=False,
      ...     attention_fn=jdrop.nnx.dot_product_attention,
      ...     rngs=nnx.Rngs(0, dropout=1),
      ... )
      >>> layer(jnp.ones((3, 5, 8))).shape
      (3, 5, 8)
    """
    rate = _attention_rate(dropout_rate, deterministic, broadcast_dropout)
    if rate is None:
        return nnx.dot_product_attention(  # type: ignore[no-any-return]
            query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic, dtype,
            precision, module, promote_dtype, is_causal,
        )  # fmt: skip
    query, key, value = promote_dtype((query, key, value), dtype=dtype)
    if module is None:
        return _flax_attention_dropout(
            query, key, value, bias, mask, dropout_rng=dropout_rng, rate=rate,
            broadcast_dropout=broadcast_dropout, precision=precision, is_causal=is_causal,
        )  # fmt: skip
    # Sowing needs the weights: Flax's, before dropout, then jdrop's mask on them.
    weights = dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout, None, 0.0, True, dtype, precision, module, promote_dtype, is_causal
    )
    weights = _flax_weights_dropout(dropout_rng, weights, rate, broadcast_dropout)
    q_heads, kv_heads = weights.shape[-3], value.shape[-2]
    grouped = weights.reshape(*weights.shape[:-3], kv_heads, q_heads // kv_heads, *weights.shape[-2:])
    out = jnp.einsum("...hgqk,...khd->...qhgd", grouped, value, precision=precision)  # Flax's grouped product
    return out.reshape(*out.shape[:-3], q_heads, out.shape[-1])
