"""jdrop's dropout as a drop-in for ``flax.linen.Dropout``.

Change ``nn.Dropout`` to ``jdrop.linen.Dropout`` and nothing else: the
attributes, ``deterministic`` merging, the ``"dropout"`` RNG collection and
``make_rng`` work as in Flax, because the class *is* a ``flax.linen.Dropout``
whose mask comes from :func:`jdrop.dropout` instead of
``jax.random.bernoulli``. Importing this module imports Flax; ``import jdrop``
does not.
"""

from __future__ import annotations

import jax
from flax import linen
from flax.linen.module import compact, merge_param

from jdrop._checks import _check_rate
from jdrop._dropout import _dropout_at_rate

__all__ = ["Dropout"]


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

    def __post_init__(self) -> None:
        _check_rate(self.rate, "rate")
        super().__post_init__()

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
        )
