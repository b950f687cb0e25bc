"""jdrop's dropout as a drop-in for ``equinox.nn.Dropout``.

Change ``eqx.nn.Dropout`` to ``jdrop.equinox.Dropout`` and nothing else:
``p``, ``inference``, ``key=`` and ``eqx.nn.inference_mode`` work as in
Equinox, because the class *is* an ``eqx.nn.Dropout`` whose mask comes from
:func:`jdrop.dropout` instead of ``jax.random.bernoulli``. Importing this
module imports Equinox; ``import jdrop`` does not.
"""

from __future__ import annotations

import warnings

import equinox as eqx
import jax

from jdrop._checks import _check_rate
from jdrop._dropout import _dropout_at_rate

__all__ = ["Dropout"]


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

    def __init__(self, p: float = 0.5, inference: bool = False, *, deterministic: bool | None = None) -> None:
        _check_rate(p, "p")
        super().__init__(p, inference, deterministic=deterministic)

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

        def draw_key() -> jax.Array:
            if key is None:
                raise RuntimeError(
                    "jdrop.equinox.Dropout needs a key when dropout is active: call it with key=jax.random.key(...) "
                    "(a fresh one each call), or set inference=True (eqx.nn.inference_mode) for evaluation."
                )
            return key

        return _dropout_at_rate(draw_key, x, self.p, rate_name="p", deterministic=bool(inference), broadcast_dims=())
