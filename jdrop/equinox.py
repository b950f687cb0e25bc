"""jdrop's dropout as a drop-in for ``equinox.nn.Dropout``, and its dropout-family variants.

Change ``eqx.nn.Dropout`` to ``jdrop.equinox.Dropout`` and nothing else:
``p``, ``inference``, ``key=`` and ``eqx.nn.inference_mode`` work as in
Equinox, because the class *is* an ``eqx.nn.Dropout`` whose mask comes from
:func:`jdrop.dropout` instead of ``jax.random.bernoulli``. It takes what
Equinox takes: ``p`` as a Python, NumPy or JAX scalar (a JAX array field is
traced under ``eqx.filter_jit``), ``inference`` as anything Equinox reads as
a bool (``1``, ``jnp.array(True)``), integer inputs (promoted to floating, as
Equinox promotes them); values Equinox would misuse silently (a ``p``
outside [0, 1], a string for ``inference``) raise.

Every class here is an ``eqx.nn.Dropout``. :class:`GaussianDropout`,
:class:`AlphaDropout` and :class:`DropPath` are subclasses of :class:`Dropout`
that apply :func:`jdrop.gaussian_dropout`, :func:`jdrop.alpha_dropout` and
:func:`jdrop.drop_path` instead; everything else (``inference``,
``eqx.nn.inference_mode``, ``key=``) is inherited unchanged.
:class:`ConcreteDropout` is :func:`jdrop.concrete_dropout` with its keep
probability an array field, learned with the weights; ``eqx.nn.inference_mode``
switches it too. The concrete dropout classes of the three hosts have one
interface: the host's name for the initial rate (``p`` here),
:attr:`~ConcreteDropout.keep_prob` and :meth:`~ConcreteDropout.regularizer`.

An Equinox layer sees one example per call (the model is ``jax.vmap``-ped
over the batch with one key per example), so :class:`DropPath` defaults to
``mode="batch"``: one decision for the whole example it is given. The Flax
DropPath layers see the batch and default to ``mode="row"``, one decision
per example there.

For attention, :class:`MultiheadAttention` is ``eqx.nn.MultiheadAttention``
with jdrop's attention dropout, computed in tiles that never hold the (T, S)
weights: change the class name and nothing else.

Importing this module imports Equinox; ``import jdrop`` does not.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from jdrop._adapters import (
    ALPHA,
    DROPOUT,
    EQUINOX,
    GAUSSIAN,
    ConcreteArguments,
    Variant,
    _concrete_dropout_in_module,
    _dropout_at_rate,
    _equinox_attention_dropout,
    _key_source,
    drop_path_variant,
)
from jdrop._checks import KeyLike, _check_rate, _flag
from jdrop._variants import concrete_dropout_regularizer

__all__ = ["AlphaDropout", "ConcreteDropout", "DropPath", "Dropout", "GaussianDropout", "MultiheadAttention"]


def _constructor_flags(inference: object, deterministic: object) -> tuple[bool, bool | None]:
    """The constructor's ``inference`` and deprecated ``deterministic``, checked now and made Python bools.

    Python bools, not arrays: an array field would be traced under
    ``eqx.filter_jit``, and a traced switch cannot choose whether to draw noise.
    """
    checked_deterministic = None if deterministic is None else _flag(deterministic, "deterministic")
    return _flag(inference, "inference"), checked_deterministic


def _call_switch(layer: eqx.nn.Dropout, inference: object, deterministic: object) -> object:
    """The switch for a call, as ``eqx.nn.Dropout`` resolves it: ``deterministic`` (deprecated), then ``inference``."""
    if deterministic is not None:
        _flag(deterministic, "deterministic")  # named as given, before it stands in for inference
        # Equinox's warning, word for word and of its category (UserWarning), for filters written against it.
        warnings.warn("Dropout()(deterministic=...) is deprecated in favour of Dropout()(inference=...)", stacklevel=3)
        return deterministic
    return layer.inference if inference is None else inference


class Dropout(eqx.nn.Dropout):
    """``equinox.nn.Dropout`` with jdrop's masks.

    Same fields (``p``, ``inference``) and call (``key=``, ``inference=``) as
    Equinox. For a given key the result is exactly
    ``jdrop.dropout(key, x, 1 - p)``. ``p == 0`` and inference return ``x``,
    ``p == 1`` returns zeros (with zero, not NaN, gradients), without needing
    a key. ``p`` may also be a JAX array (a field ``eqx.tree_at`` can change
    under ``jit``); it receives no gradient, as in Equinox. Integer and bool
    ``x`` are promoted to the default floating dtype when noise is applied,
    as Equinox's ``x / q`` promotes them.

    Args:
      p: the probability of *dropping* a unit, in [0, 1] (``1 - keep_prob``):
        a Python, NumPy or JAX real scalar, not a bool.
      inference: if true, the layer is the identity: anything Equinox reads as
        a bool (``True``, ``1``, ``np.bool_(True)``, ``jnp.array(True)``),
        stored as a Python bool; toggle it for a whole model with
        ``eqx.nn.inference_mode``.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1] or NaN (Equinox accepts it).
      TypeError: if ``p`` is not a real number, or ``inference`` or
        ``deterministic`` is not read as a bool (a string, an array with axes).

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.Dropout(0.5)
      >>> y = layer(jnp.ones((2, 4)), key=jax.random.key(0))
      >>> sorted(set(y.ravel().tolist()))  # dropped: 0, kept: 1 / 0.5
      [0.0, 2.0]
      >>> layer(jnp.ones(3), inference=True).tolist()
      [1.0, 1.0, 1.0]
    """

    #: The family member applied; the variant subclasses change only this.
    _variant: ClassVar[Variant] = DROPOUT

    def __init__(
        self, p: float | jax.Array = 0.5, inference: bool = False, *, deterministic: bool | None = None
    ) -> None:
        self._variant.check_constructor(p, (), EQUINOX)
        inference, deterministic = _constructor_flags(inference, deterministic)
        super().__init__(p, inference, deterministic=deterministic)  # type: ignore[arg-type]  # as Equinox takes it

    def __call__(
        self,
        x: jax.Array,
        *,
        key: KeyLike | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Applies dropout to ``x``.

        Args:
          x: an array (or array-like) of any shape and dtype, as Equinox takes
            it: floating or complex, or integer or bool (promoted to the
            default floating dtype when noise is applied); returned unchanged
            where nothing is applied.
          key: a PRNG key (typed or raw); needed unless in inference mode,
            ``p == 0`` or ``p == 1``.
          inference: overrides ``self.inference`` if given; anything Equinox
            reads as a bool.
          deterministic: deprecated alternative to ``inference``, as in Equinox.

        Returns:
          ``x`` itself when nothing is dropped (inference, ``p == 0``),
          otherwise an array with the shape of ``x`` and its (floating) dtype.

        Raises:
          RuntimeError: if ``key`` is None while dropout is active (as Equinox).
          TypeError: if ``inference`` is not
            read as a bool (a traced one included).
        """
        return _dropout_at_rate(
            _key_source(key, f"{type(self).__module__}.{type(self).__qualname__} needs a key when dropout is active"),
            x,
            self.p,
            deterministic=_call_switch(self, inference, deterministic),
            broadcast_dims=(),
            variant=self._variant,
            host=EQUINOX,
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
      inference: if true, the layer is the identity; as for :class:`Dropout`.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1) or NaN (at 1 the variance is infinite).
      TypeError: as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.GaussianDropout(0.2)
      >>> y = layer(jnp.ones((1000,)), key=jax.random.key(0))
      >>> # mean 1, variance 0.2 / 0.8
      >>> bool(abs(y.mean() - 1) < 0.1), bool(abs(y.var() - 0.25) < 0.05)
      (True, True)
      >>> layer(jnp.ones(3), inference=True).tolist()
      [1.0, 1.0, 1.0]
    """

    _variant = GAUSSIAN


class AlphaDropout(Dropout):
    """Alpha dropout for SELU networks (``torch.nn.AlphaDropout``, Keras ``AlphaDropout``) as an ``equinox.nn.Dropout``.

    Dropped units are set to SELU's negative saturation value and an affine
    map keeps mean 0 and variance 1. For a given key the result is exactly
    ``jdrop.alpha_dropout(key, x, 1 - p)``. Everything else is
    :class:`Dropout`'s (``p == 0`` and inference return ``x`` and need no key).

    Args:
      p: the probability of dropping a unit, in [0, 1).
      inference: if true, the layer is the identity; as for :class:`Dropout`.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1) or NaN (as in torch and Keras).
      TypeError: as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.AlphaDropout(0.1)
      >>> x = jax.random.normal(jax.random.key(1), (100_000,))
      >>> y = layer(x, key=jax.random.key(0))
      >>> bool(abs(y.mean()) < 0.02), bool(abs(y.std() - 1) < 0.02)
      (True, True)
    """

    _variant = ALPHA


class DropPath(Dropout):
    """Stochastic depth (timm ``DropPath``) as an ``equinox.nn.Dropout``: drops one example's residual branch.

    Use it on a residual branch, before the sum: ``x + drop_path(f(x), key=key)``,
    in a model that is ``jax.vmap``-ped over the batch with one key per
    example, the Equinox idiom. For a given key the result is exactly
    ``jdrop.drop_path(key, x, 1 - p, mode=mode)``. The layer is given one
    example, so the default, ``mode="batch"``, makes one decision for the
    whole array: the example keeps or drops its whole branch, which is
    stochastic depth. ``mode="row"`` makes one decision per index of axis 0,
    for a layer that is given a batch; per example, it would decide per token
    or per row, which is not stochastic depth. (The Flax DropPath layers see
    the batch, so there ``"row"`` is the default and the per-example decision.)
    Everything else is :class:`Dropout`'s: ``p == 0`` and inference return
    ``x`` and ``p == 1`` returns zeros, without needing a key.

    Args:
      p: the probability of dropping the branch, in [0, 1].
      inference: if true, the layer is the identity; as for :class:`Dropout`.
      mode: ``"batch"`` (one decision for the whole array: per example under
        ``jax.vmap``) or ``"row"`` (one per index of axis 0); a static field.
      broadcast_dims: must be empty (``mode`` says what is shared); accepted
        so that every host's DropPath raises the same error for it.
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside [0, 1] or NaN, or ``mode`` is not
        ``"row"`` or ``"batch"``.
      TypeError: if ``broadcast_dims`` is not empty, or as for :class:`Dropout`.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.DropPath(0.5)
      >>> x = jnp.ones((8, 4, 3))  # 8 examples of 4 tokens
      >>> keys = jax.random.split(jax.random.key(0), 8)  # one per example
      >>> y = jax.vmap(lambda x, key: layer(x, key=key))(x, keys)
      >>> # each example kept whole (x 2) or dropped
      >>> [sorted(set(example.ravel().tolist())) for example in y]
      [[0.0], [0.0], [0.0], [0.0], [2.0], [0.0], [2.0], [0.0]]
    """

    mode: str = eqx.field(static=True)

    def __init__(
        self,
        p: float | jax.Array = 0.5,
        inference: bool = False,
        *,
        mode: str = "batch",
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = None,
    ) -> None:
        drop_path_variant(mode).checked_axes(broadcast_dims)  # the mode, then the axes, before anything else
        self.mode = str(mode)  # set first: Dropout's constructor checks p against the mode's variant
        super().__init__(p, inference, deterministic=deterministic)

    @property
    def _variant(self) -> Variant:  # type: ignore[override]  # the mode's
        return drop_path_variant(self.mode)


class ConcreteDropout(eqx.nn.Dropout):
    """Concrete dropout (Gal, Hron and Kendall 2017) as an ``equinox.nn.Dropout`` whose keep probability is learned.

    The module form of :func:`jdrop.concrete_dropout`: the keep probability is
    ``sigmoid(keep_logit)`` for the array field ``keep_logit``, which gradients
    reach through the relaxed mask (``eqx.filter_grad`` and
    ``eqx.is_inexact_array`` partitions include it), so it is learned with the
    weights. Train it with the data loss plus :meth:`regularizer` for the
    layer whose weights multiply the dropped units; without that term it only
    grows towards 1.

    The class is an ``eqx.nn.Dropout`` (not a :class:`Dropout`: its rate is
    not fixed), with its fields ``p``, here the initial rate, and
    ``inference``, so ``eqx.nn.inference_mode`` switches this layer with the
    model's others; inference returns ``x`` and needs no key. For a given key
    the result is exactly ``jdrop.concrete_dropout(key, x, keep_logit,
    temperature=temperature, broadcast_dims=broadcast_dims)``. ``temperature``
    and ``broadcast_dims`` are static fields. The Flax NNX and linen classes
    have the same interface: the initial rate under the host's name,
    :attr:`keep_prob` and :meth:`regularizer`.

    Args:
      p: the *initial* probability of dropping a unit, in (0, 1); the paper
        starts at 0.1. ``keep_logit`` starts at ``log((1 - p) / p)``. Kept as
        the field ``p``, Equinox's place for it, which this layer reads only
        here: the rate it applies is ``1 - keep_prob``.
      inference: if true, the layer is the identity; as for :class:`Dropout`.
      logit_shape: the shape of ``keep_logit``: ``()`` for one keep probability,
        ``(features,)`` for one per feature (last axis); it must broadcast to
        ``x``'s shape without changing it.
      temperature: the relaxation's temperature, > 0; lower is closer to a hard
        mask, with noisier gradients.
      broadcast_dims: axes along which the noise is shared: any sequence of
        integers (stored as a tuple of ints).
      deterministic: deprecated alternative to ``inference``, as in Equinox.

    Raises:
      ValueError: if ``p`` is outside (0, 1) or NaN, ``temperature`` is not
        positive and finite, or ``logit_shape`` has a negative size.
      TypeError: if ``p`` or ``temperature`` is not a real number,
        ``logit_shape`` or ``broadcast_dims`` is not a sequence of ints, or
        ``inference`` is not read as a bool.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop.equinox
      >>> layer = jdrop.equinox.ConcreteDropout(0.1)
      >>> round(float(layer.keep_prob), 4)  # the initial value; learned from here on
      0.9
      >>> y = layer(jnp.ones((10_000,)), key=jax.random.key(0))
      >>> round(float(y.mean()), 1)  # kept units are scaled by 1 / keep_prob
      1.0
      >>> # the term to add to the loss
      >>> reg = layer.regularizer(
      ...     jnp.zeros((4, 3)), num_examples=1000, length_scale=1.0
      ... )
      >>> layer(jnp.ones(3), inference=True).tolist()
      [1.0, 1.0, 1.0]
    """

    keep_logit: jax.Array
    temperature: float = eqx.field(static=True)
    broadcast_dims: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        p: float | jax.Array = 0.1,
        inference: bool = False,
        *,
        logit_shape: Sequence[int] = (),
        temperature: float = 0.1,
        broadcast_dims: Sequence[int] = (),
        deterministic: bool | None = None,
    ) -> None:
        checked = ConcreteArguments.check(p, logit_shape, temperature, broadcast_dims, EQUINOX)
        inference, deterministic = _constructor_flags(inference, deterministic)
        super().__init__(p, inference, deterministic=deterministic)  # type: ignore[arg-type]  # as Equinox takes it
        self.keep_logit = jnp.full(checked.logit_shape, checked.keep_logit, jnp.float32)
        self.temperature = checked.temperature
        self.broadcast_dims = checked.broadcast_dims  # hashable: a static field

    @property
    def keep_prob(self) -> jax.Array:
        """The keep probability in use, ``sigmoid(keep_logit)``, of ``keep_logit``'s shape; learned."""
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
        x: jax.Array,
        *,
        key: KeyLike | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
    ) -> jax.Array:
        """Applies concrete dropout to ``x``.

        Args:
          x: an array of any shape that ``keep_logit`` broadcasts to: floating
            or complex, or integer or bool (promoted to the default floating
            dtype when noise is applied).
          key: a PRNG key (typed or raw); needed unless in inference mode.
          inference: overrides ``self.inference`` if given; anything Equinox
            reads as a bool.
          deterministic: deprecated alternative to ``inference``, as in Equinox.

        Returns:
          ``x`` itself in inference mode, otherwise an array with the shape of
          ``x`` and its (floating) dtype.

        Raises:
          RuntimeError: if ``key`` is None while active (as Equinox's Dropout).
          ValueError: if ``keep_logit`` does not broadcast to ``x``'s shape.
          TypeError: if ``inference`` is not
            read as a bool.
        """
        return _concrete_dropout_in_module(
            _key_source(key, f"{type(self).__module__}.{type(self).__qualname__} needs a key when active"),
            x,
            self.keep_logit,
            temperature=self.temperature,
            deterministic=_call_switch(self, inference, deterministic),
            broadcast_dims=self.broadcast_dims,
            host=EQUINOX,
        )


class MultiheadAttention(eqx.nn.MultiheadAttention):
    r"""``equinox.nn.MultiheadAttention`` with jdrop's memory-light attention dropout.

    The constructor and the call of Equinox's, and the same module (it *is*
    an ``eqx.nn.MultiheadAttention``, whose ``dropout`` is a
    :class:`jdrop.equinox.Dropout`), so changing the class name is the whole
    change. For a given key the result equals, up to float rounding,
    Equinox's module with its ``dropout`` replaced by
    :class:`jdrop.equinox.Dropout`: Equinox splits ``key`` once per head, so
    head ``n``'s mask is ``jdrop.dropout_mask(jax.random.split(key, N)[n],
    (T, S), 1 - dropout_p)``. It is computed by the tiles of
    :func:`jdrop.dot_product_attention`: the (T, S) weights are never held, and
    the backward pass regenerates the masks. A row with every key masked out
    spreads its weight over all keys, as in Equinox (its ``finfo.min`` logits).
    Softmax statistics are float32.

    In inference (``inference=True``, ``eqx.nn.inference_mode``) or with
    ``dropout_p == 0`` the call is Equinox's own, without a key.

    Args:
      num_heads: the number of heads N.
      query_size: the query's channels.
      key_size: the key's channels (default ``query_size``).
      value_size: the value's channels (default ``query_size``).
      output_size: the output's channels (default ``query_size``).
      qk_size: channels per head for the query-key product (default ``query_size // num_heads``).
      vo_size: channels per head for the value-output product (default ``query_size // num_heads``).
      use_query_bias: a bias in the query projection.
      use_key_bias: a bias in the key projection.
      use_value_bias: a bias in the value projection.
      use_output_bias: a bias in the output projection.
      dropout_p: the probability of dropping an attention weight, in [0, 1].
      inference: if true, no dropout (toggle with ``eqx.nn.inference_mode``).
      dtype: the parameters' dtype.
      key: the PRNG key for the parameters' initialisation (keyword only).

    Raises:
      ValueError: if ``dropout_p`` is outside [0, 1] (Equinox accepts it).
      TypeError: if ``dropout_p`` is not a real number, or ``inference`` is not read as a bool.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop.equinox
      >>> attention = jdrop.equinox.MultiheadAttention(
      ...     2, 8, dropout_p=0.1, key=jax.random.key(0)
      ... )
      >>> x = jnp.ones((5, 8))
      >>> attention(x, x, x, key=jax.random.key(1)).shape
      (5, 8)
    """

    def __init__(
        self,
        num_heads: int,
        query_size: int,
        key_size: int | None = None,
        value_size: int | None = None,
        output_size: int | None = None,
        qk_size: int | None = None,
        vo_size: int | None = None,
        use_query_bias: bool = False,
        use_key_bias: bool = False,
        use_value_bias: bool = False,
        use_output_bias: bool = False,
        dropout_p: float = 0.0,
        inference: bool = False,
        dtype: Any = None,
        *,
        key: jax.Array,
    ) -> None:
        _check_rate(dropout_p, "dropout_p")  # before anything is built
        super().__init__(
            num_heads, query_size, key_size, value_size, output_size, qk_size, vo_size, use_query_bias,
            use_key_bias, use_value_bias, use_output_bias, dropout_p, inference, dtype, key=key,
        )  # fmt: skip
        self.dropout = Dropout(dropout_p, inference=inference)

    def __call__(
        self,
        query: jax.Array,
        key_: jax.Array,
        value: jax.Array,
        mask: jax.Array | None = None,
        *,
        key: KeyLike | None = None,
        inference: bool | None = None,
        deterministic: bool | None = None,
        process_heads: Callable[..., tuple[jax.Array, jax.Array, jax.Array]] | None = None,
    ) -> jax.Array:
        """Multi-head attention of ``query`` (T, query_size) over ``key_`` and ``value`` (S, ...), as Equinox's.

        Args:
          query: (T, query_size) queries.
          key_: (S, key_size) keys.
          value: (S, value_size) values.
          mask: optional (T, S) or (N, T, S) array: nonzero (True) means attend.
          key: the PRNG key for dropout; needed when dropout is on.
          inference: overrides ``self.dropout.inference`` if given.
          deterministic: deprecated alternative to ``inference``, as in Equinox.
          process_heads: as Equinox's: a function of the (query, key, value)
            heads that returns new heads of the same shapes (e.g. rotary embeddings).

        Returns:
          (T, output_size) output.

        Raises:
          RuntimeError: if ``key`` is None while dropout is on (as Equinox).
          ValueError: if the shapes do not fit (as Equinox).
        """
        if deterministic is not None:
            # Equinox's warning, word for word.
            message = (
                "MultiheadAttention()(deterministic=...) is deprecated in favour of MultiheadAttention()(inference=...)"
            )
            warnings.warn(message, stacklevel=2)
            inference = deterministic
        switch = _flag(self.dropout.inference if inference is None else inference, "inference")
        rate = _check_rate(self.dropout.p, "p")
        if switch or rate == 0.0:
            own: jax.Array = super().__call__(query, key_, value, mask, inference=True, process_heads=process_heads)
            return own
        q_length, _ = query.shape
        kv_length, _ = key_.shape
        if kv_length != value.shape[0]:
            raise ValueError("key and value must both be sequences of equal length.")
        # Equinox's projections: (length, N, channels per head).
        query_heads = jax.vmap(self.query_proj)(query).reshape(q_length, self.num_heads, -1)
        key_heads = jax.vmap(self.key_proj)(key_).reshape(kv_length, self.num_heads, -1)
        value_heads = jax.vmap(self.value_proj)(value).reshape(kv_length, self.num_heads, -1)
        if process_heads is not None:
            shapes = (query_heads.shape, key_heads.shape, value_heads.shape)
            query_heads, key_heads, value_heads = process_heads(query_heads, key_heads, value_heads)
            if (query_heads.shape, key_heads.shape, value_heads.shape) != shapes:
                raise ValueError("process_heads must not change the shape of the heads.")
        if mask is not None:
            mask = jnp.asarray(mask)
            per_head = mask.shape[1:] if mask.ndim == 3 else mask.shape
            if per_head != (q_length, kv_length) or (mask.ndim == 3 and mask.shape[0] != self.num_heads):
                raise ValueError(
                    f"mask must have shape (query_seq_length, kv_seq_length)=({q_length}, {kv_length}) or "
                    f"(num_heads, {q_length}, {kv_length}), got {mask.shape}."
                )
        needs_key = f"{type(self).__module__}.{type(self).__qualname__} needs a key when dropout is active"
        dropout_key = _key_source(key, needs_key)()
        # Equinox's products promote heads of different dtypes (process_heads may
        # return float32 queries and keys from bfloat16 projections): so do these.
        with jax.numpy_dtype_promotion("standard"):
            heads_dtype = jnp.result_type(query_heads, key_heads, value_heads)
        out = _equinox_attention_dropout(
            query_heads.astype(heads_dtype),
            key_heads.astype(heads_dtype),
            value_heads.astype(heads_dtype),
            mask,
            key=dropout_key,
            rate=self.dropout.p,
            concrete_rate=rate,
        )
        projected: jax.Array = jax.vmap(self.output_proj)(out.reshape(q_length, -1))
        return projected
