"""jdrop's dropout as a drop-in for ``flax.nnx.Dropout``.

Change ``nnx.Dropout`` to ``jdrop.nnx.Dropout`` and nothing else: the
constructor, the call, ``model.train()``/``model.eval()``, ``nnx.view`` and the
RNG streams work as in Flax, because the class *is* an ``nnx.Dropout`` whose
mask comes from :func:`jdrop.dropout` instead of ``jax.random.bernoulli``.
Importing this module imports Flax; ``import jdrop`` does not.
"""

from __future__ import annotations

import jax
from flax import nnx
from flax.nnx import rnglib
from flax.nnx.module import first_from

from jdrop._checks import _check_rate
from jdrop._dropout import _dropout_at_rate

__all__ = ["Dropout"]


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

    def __init__(
        self,
        rate: float,
        *,
        broadcast_dims: tuple[int, ...] = (),
        deterministic: bool | None = False,
        rng_collection: str = "dropout",
        rngs: rnglib.Rngs | rnglib.RngStream | None = None,
    ) -> None:
        _check_rate(rate, "rate")
        super().__init__(
            rate,
            broadcast_dims=broadcast_dims,
            deterministic=deterministic,
            rng_collection=rng_collection,
            rngs=rngs,
        )

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

        def draw_key() -> jax.Array:
            source = first_from(
                rngs,
                self.rngs,
                error_msg=(
                    "`deterministic` is False, but no `rngs` argument was provided to Dropout (jdrop.nnx.Dropout): "
                    "pass rngs=nnx.Rngs(...) to the constructor, or rngs (a key, RngStream or Rngs) to the call."
                ),
            )
            if isinstance(source, rnglib.Rngs):
                key: jax.Array = source[self.rng_collection]()
                return key
            if isinstance(source, rnglib.RngStream):
                key = source()
                return key
            if isinstance(source, jax.Array):
                return source
            raise TypeError(f"rngs must be an nnx.Rngs, nnx.RngStream or jax.Array key, got {type(source).__name__}.")

        return _dropout_at_rate(
            draw_key,
            inputs,
            self.rate,
            rate_name="rate",
            deterministic=deterministic,
            broadcast_dims=self.broadcast_dims,
        )
