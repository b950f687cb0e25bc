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

For attention, :func:`dot_product_attention` has the signature of
``flax.linen.dot_product_attention``: pass it as
``linen.MultiHeadDotProductAttention(..., attention_fn=jdrop.linen.dot_product_attention)``
and the attention weights' dropout is jdrop's, computed in tiles that never
hold the (T, S) weights.

Importing this module imports Flax; ``import jdrop`` does not.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import linen
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
    _flax_attention_dropout,
    _flax_weights_dropout,
    drop_path_variant,
)
from jdrop._checks import _flag
from jdrop._variants import concrete_dropout_regularizer

__all__ = ["AlphaDropout", "ConcreteDropout", "DropPath", "Dropout", "GaussianDropout", "dot_product_attention"]


def _check_deterministic_attribute(deterministic: object) -> None:
    """The ``deterministic`` attribute, if set, must be something Flax reads as a bool; checked when built."""
    if deterministic is not None:
        _flag(deterministic, "deterministic")


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
      >>> rngs = {"dropout": jax.random.key(0)}
      >>> y = layer.apply({}, x, deterministic=False, rngs=rngs)
      >>> sorted(set(y.ravel().tolist()))  # dropped: 0, kept: 1 / 0.5
      [0.0, 2.0]
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    #: The family member applied; the variant subclasses change only this.
    _variant: ClassVar[Variant] = DROPOUT

    def __post_init__(self) -> None:
        self._variant.check_constructor(self.rate, self.broadcast_dims, FLAX)
        _check_deterministic_attribute(self.deterministic)
        super().__post_init__()

    @linen.compact
    def __call__(
        self,
        inputs: jax.Array,
        deterministic: bool | None = None,
        rng: jax.Array | None = None,
    ) -> jax.Array:
        """Applies dropout to ``inputs``.

        Args:
          inputs: an array (or array-like) of any shape: floating or complex
            (the mask applied to the complex value) where noise is applied;
            of any dtype where nothing is (evaluation, rate 0), as in Flax.
          deterministic: True for evaluation; merged with the attribute
            (exactly one of the two must be set); anything Flax reads as a bool.
          rng: a key to use instead of ``make_rng(rng_collection)``.

        Returns:
          ``inputs`` itself when nothing is dropped (evaluation, rate 0),
          otherwise an array with the shape and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set in neither place or in both,
            or an axis of ``broadcast_dims`` is out of range.
          TypeError: if ``inputs`` is neither floating nor complex while noise
            is applied (Flax's Dropout fails on integers too), or ``deterministic`` is not
            read as a bool.
        """

        def draw_key() -> jax.Array:
            return rng if rng is not None else self.make_rng(self.rng_collection)

        return _dropout_at_rate(
            draw_key,
            inputs,
            self.rate,
            deterministic=linen.merge_param("deterministic", self.deterministic, deterministic),
            broadcast_dims=self.broadcast_dims,
            variant=self._variant,
            host=FLAX,
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
      >>> rngs = {"dropout": jax.random.key(0)}
      >>> y = layer.apply({}, x, deterministic=False, rngs=rngs)
      >>> # mean 1, variance 0.2 / 0.8
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)
      (True, True)
      >>> bool(jnp.all(layer.apply({}, x, deterministic=True) == x))
      True
    """

    _variant = GAUSSIAN


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

    _variant = ALPHA


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
      >>> # each row kept whole (scaled by 2) or dropped
      >>> all(len(set(row)) == 1 for row in y.tolist())
      True
      >>> sorted(set(y.ravel().tolist()))
      [0.0, 2.0]
    """

    mode: str = "row"

    @property
    def _variant(self) -> Variant:  # type: ignore[override]  # the mode's
        return drop_path_variant(self.mode)


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
      >>> # the initial value; learned from here on
      >>> round(float(layer.bind(variables).keep_prob), 4)
      0.9
      >>> rngs = {"dropout": jax.random.key(1)}
      >>> y = layer.apply(variables, x, deterministic=False, rngs=rngs)
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> reg = layer.apply(  # add to the loss
      ...     variables,
      ...     jnp.zeros((4, 3)),
      ...     num_examples=1000,
      ...     length_scale=1.0,
      ...     method="regularizer",
      ... )
      >>> bool(jnp.all(layer.apply(variables, x, deterministic=True) == x))
      True
    """

    rate: float = 0.1
    logit_shape: Sequence[int] = ()
    temperature: float = 0.1

    def __post_init__(self) -> None:
        self._checked()
        _check_deterministic_attribute(self.deterministic)
        super().__post_init__()

    @linen.nowrap
    def _checked(self) -> ConcreteArguments:
        return ConcreteArguments.check(self.rate, self.logit_shape, self.temperature, self.broadcast_dims, FLAX)

    def setup(self) -> None:
        checked = self._checked()

        def init(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
            return jnp.full(shape, checked.keep_logit, jnp.float32)

        self.keep_logit = self.param("keep_logit", init, checked.logit_shape)

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
          inputs: a floating or complex array (any dtype in evaluation) of any
            shape that ``keep_logit`` broadcasts to.
          deterministic: True for evaluation; merged with the attribute
            (exactly one of the two must be set); anything Flax reads as a bool.
          rng: a key to use instead of ``make_rng(rng_collection)``.

        Returns:
          ``inputs`` itself in evaluation, otherwise an array with the shape
          and dtype of ``inputs``.

        Raises:
          ValueError: if ``deterministic`` is set in neither place or in both,
            or ``keep_logit`` does not broadcast to ``inputs``' shape.
          TypeError: if ``inputs`` is neither floating nor complex while noise
            is applied (Flax's Dropout fails on integers too), or ``deterministic`` is not
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
    module: linen.Module | None = None,
    force_fp32_for_softmax: bool = False,
    einsum_dot_general: Callable[..., jax.Array] | None = None,
    qk_attn_weights_einsum: Callable[..., jax.Array] | None = None,
    attn_weights_value_einsum: Callable[..., jax.Array] | None = None,
) -> jax.Array:
    r"""``flax.linen.dot_product_attention`` with jdrop's memory-light attention dropout.

    The same signature as Flax's, so that
    ``linen.MultiHeadDotProductAttention(..., attention_fn=jdrop.linen.dot_product_attention)``
    is the whole change. With dropout on (``deterministic`` false and
    ``dropout_rate > 0``) the result is, up to float rounding, Flax's formula
    with its bernoulli mask replaced by
    ``jdrop.dropout_mask(dropout_rng, s, 1 - dropout_rate)`` for ``s`` Flax's
    dropout shape (``(1, ..., 1, T, S)`` with ``broadcast_dropout``), as
    :func:`jdrop.nnx.dot_product_attention` describes: computed in tiles, the
    (T, S) weights never held, the mask regenerated in the backward pass.
    Softmax statistics are float32, whatever ``force_fp32_for_softmax``.
    ``dropout_rate=1.0`` gives zeros (Flax's ``keep / 0`` gives NaN).

    With dropout off this *is* ``flax.linen.dot_product_attention``. With
    ``module`` (sowing the weights into ``intermediates``) or custom products
    (``einsum_dot_general``, ``qk_attn_weights_einsum`` and
    ``attn_weights_value_einsum``, e.g. quantised ones), the weights are
    materialised by Flax's ``dot_product_attention_weights`` with those
    products, sown before dropout as Flax sows them, and dropped with the
    same mask.

    Args:
      query: (..., T, N, H) queries.
      key: (..., S, N, H) keys.
      value: (..., S, N, Hv) values.
      bias: optional, broadcastable to (..., N, T, S), added to the logits.
      mask: optional, broadcastable to (..., N, T, S): nonzero (True) means attend.
      broadcast_dropout: share the dropout mask across the batch and head axes.
      dropout_rng: the PRNG key for the dropout mask; needed when dropout is on.
      dropout_rate: the probability of dropping a weight, a concrete number in [0, 1].
      deterministic: if true, no dropout; anything Flax reads as a bool.
      dtype: the computation's dtype (``flax.linen.dtypes.promote_dtype``).
      precision: passed to every product, as Flax's.
      module: the module that sows the (pre-dropout) weights, or None.
      force_fp32_for_softmax: as Flax's: the output is then at least float32; the
        memory-light path's softmax is always float32.
      einsum_dot_general: as Flax's: the products' ``dot_general``.
      qk_attn_weights_einsum: as Flax's: the query-key product.
      attn_weights_value_einsum: as Flax's: the weights-value product.

    Returns:
      (..., T, N, Hv) attention output in the promoted dtype.

    Raises:
      ValueError: if ``dropout_rate`` is outside [0, 1], ``dropout_rng`` is
        missing while dropout is on, the shapes do not fit (the heads of
        ``query``, ``key`` and ``value`` differ, as Flax requires), or the
        custom products are combined as Flax refuses.
      TypeError: if ``dropout_rate`` is traced or not a number, or
        ``deterministic`` or ``broadcast_dropout`` is not read as a bool.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> from flax import linen
      >>> import jdrop.linen
      >>> layer = linen.MultiHeadDotProductAttention(
      ...     num_heads=2, dropout_rate=0.1, deterministic=False,
      ...     attention_fn=jdrop.linen.dot_product_attention)
      >>> x = jnp.ones((3, 5, 8))
      >>> params = layer.init(jax.random.key(0), x)
      >>> layer.apply(params, x, rngs={"dropout": jax.random.key(1)}).shape
      (3, 5, 8)
    """
    rate = _attention_rate(dropout_rate, deterministic, broadcast_dropout)
    custom = einsum_dot_general is not None or qk_attn_weights_einsum is not None
    if rate is None:
        return linen.dot_product_attention(  # type: ignore[no-any-return]
            query, key, value, bias, mask, broadcast_dropout, dropout_rng, dropout_rate, deterministic, dtype,
            precision, module, force_fp32_for_softmax, einsum_dot_general, qk_attn_weights_einsum,
            attn_weights_value_einsum,
        )  # fmt: skip
    # Flax's own checks of the custom products, with its messages.
    if (qk_attn_weights_einsum is None) != (attn_weights_value_einsum is None):
        raise ValueError("qk_attn_weights_einsum and attn_weights_value_einsum must be specified together.")
    if (precision or einsum_dot_general) and qk_attn_weights_einsum:
        raise ValueError(
            "precision/einsum_dot_general and qk_attn_weights_einsum/attn_weights_value_einsum are mutually "
            "exclusive. Please specify only one of them."
        )
    query, key, value = linen.dtypes.promote_dtype(query, key, value, dtype=dtype)
    if not query.shape[-2] == key.shape[-2] == value.shape[-2]:
        raise ValueError(
            f"query, key and value must have the same number of heads (as Flax linen's attention requires), got "
            f"{query.shape[-2]}, {key.shape[-2]} and {value.shape[-2]}."
        )
    if module is None and not custom:
        out = _flax_attention_dropout(
            query, key, value, bias, mask, dropout_rng=dropout_rng, rate=rate,
            broadcast_dropout=broadcast_dropout, precision=precision,
        )  # fmt: skip
        # Flax's float32 weights (force_fp32_for_softmax) make its weighted sum, and so its output, float32.
        return out.astype(jnp.promote_types(out.dtype, jnp.float32)) if force_fp32_for_softmax else out
    # Sowing or custom products need the weights: Flax's, before dropout, then jdrop's mask on them.
    weights = linen.dot_product_attention_weights(
        query, key, bias, mask, broadcast_dropout, None, 0.0, True, dtype, precision, module,
        force_fp32_for_softmax, einsum_dot_general=einsum_dot_general, einsum=qk_attn_weights_einsum,
    )  # fmt: skip
    weights = _flax_weights_dropout(dropout_rng, weights, rate, broadcast_dropout)
    if attn_weights_value_einsum is None:
        attn_weights_value_einsum = functools.partial(
            jnp.einsum, precision=precision, _dot_general=einsum_dot_general or jax.lax.dot_general
        )
    return attn_weights_value_einsum("...hqk,...khd->...qhd", weights, value)
