r"""Memory-light dot-product attention with dropout on the attention weights.

:func:`dot_product_attention` computes, in blocks of keys, what
``jax.nn.dot_product_attention`` computes, with dropout on the softmax weights
in between: the weights of every (query, key) pair are never held at once.
The dropout mask is a pure function of each weight's position (see
:mod:`jdrop._generator`), so each block regenerates exactly its part of the
mask that ``jdrop.dropout`` would draw on the full weights, in the forward
pass and again in the backward pass, whatever the block size.

Shapes follow ``jax.nn.dot_product_attention``::

    query (..., T, N, H)   key, value (..., S, K, H)   weights (..., N, T, S)

with N a multiple of K: query head ``n`` uses key/value head ``n // (N // K)``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.typing import ArrayLike

from jdrop._checks import (
    OR_DETERMINISTIC,
    KeyLike,
    _as_key,
    _check_broadcast_dims,
    _check_count,
    _check_deterministic,
    _check_floating,
    _check_keep_prob,
    _real_scalar,
)
from jdrop._dropout import _threshold_and_effective
from jdrop._generator import MAX_COUNTER, hash16, seeds_of

__all__ = ["dot_product_attention"]

#: Keys per block when ``block_size`` is None: the per-block weights of one
#: batch element are N * T * 512 float32 values.
DEFAULT_BLOCK_SIZE = 512


class _Config(NamedTuple):
    """The static part of a call: what the kernel needs besides arrays (hashable, for custom_vjp)."""

    scale: float
    is_causal: bool
    length: int  # S before padding: columns at or beyond it never attend
    block: int  # keys per block
    mask_heads: int  # N, or 1 when the dropout mask is shared across heads (broadcast_dims)
    mask_queries: int  # T, or 1 when it is shared across queries
    mask_columns: bool  # False when it is shared across keys: every column counter is then 0


def _slice_keys(x: jax.Array, start: jax.Array, size: int) -> jax.Array:
    """Block ``[start, start + size)`` of ``x`` along its last axis, unless that axis has size 1 (broadcast)."""
    if x.shape[-1] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis=x.ndim - 1)


def _block_logits(
    cfg: _Config, q: jax.Array, k: jax.Array, bias: jax.Array | None, mask: jax.Array | None, start: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """The logits of the keys ``[start, start + block)`` for one batch element, and where they attend.

    Returns float32 logits of shape (N, T, block), -inf where a key is not
    attended (the mask, causality, padding), and that boolean pattern.
    """
    t, n, h = q.shape
    kj = lax.dynamic_slice_in_dim(k, start, cfg.block, axis=0)
    groups = n // kj.shape[1]
    grouped = q.reshape(t, kj.shape[1], groups, h)  # head n = kv_head * groups + g, as jax.nn's
    logits = jnp.einsum("tkgh,skh->kgts", grouped, kj, preferred_element_type=jnp.float32)
    logits = logits.reshape(n, t, cfg.block) * jnp.float32(cfg.scale)
    if bias is not None:
        logits = logits + _slice_keys(bias, start, cfg.block).astype(jnp.float32)
    col = start + lax.broadcasted_iota(jnp.int32, (1, 1, cfg.block), 2)
    allowed = col < cfg.length  # padded keys never attend
    if mask is not None:
        allowed = allowed & _slice_keys(mask, start, cfg.block)
    if cfg.is_causal:  # jax.nn's convention: query t attends keys 0..t
        allowed = allowed & (col <= lax.broadcasted_iota(jnp.int32, (1, t, 1), 1))
    return jnp.where(allowed, logits, -jnp.inf), allowed


def _block_keep(cfg: _Config, seeds: jax.Array, threshold: jax.Array, row0: jax.Array, start: jax.Array) -> jax.Array:
    """The dropout keep-mask of a key block, (N or 1, T or 1, block or 1): the full mask's entries at its positions.

    ``row0`` is the batch element's first mask row, so rows count (batch, head,
    query) row-major over the mask's shape, and columns count keys from 0 over
    the whole (unpadded) sequence, exactly as ``jdrop.dropout_mask`` on the
    full weights.
    """
    heads = lax.broadcasted_iota(jnp.uint32, (cfg.mask_heads, 1, 1), 0)
    queries = lax.broadcasted_iota(jnp.uint32, (1, cfg.mask_queries, 1), 1)
    row = (row0 + heads * jnp.uint32(cfg.mask_queries)) + queries
    if cfg.mask_columns:
        col = start.astype(jnp.uint32) + lax.broadcasted_iota(jnp.uint32, (1, 1, cfg.block), 2)
    else:
        col = jnp.zeros((1, 1, 1), jnp.uint32)
    return hash16(seeds, row, col) < threshold


def _pv(p: jax.Array, v: jax.Array) -> jax.Array:
    """``sum_s p[n, t, s] v[s, n // G, h]`` as (T, N, H) float32, with p cast to v's dtype as jax.nn does."""
    n, t, s = p.shape
    kv_heads = v.shape[1]
    out = jnp.einsum(
        "kgts,skh->tkgh",
        p.reshape(kv_heads, n // kv_heads, t, s).astype(v.dtype),
        v,
        preferred_element_type=jnp.float32,
    )
    return out.reshape(t, n, v.shape[-1])


def _forward(
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
    row0: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """Online softmax over key blocks for one batch element: the output (T, N, H) and the logsumexp (N, T)."""

    def step(
        carry: tuple[jax.Array, jax.Array, jax.Array], j: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array, jax.Array], None]:
        acc, running_max, total = carry
        start = j * cfg.block
        logits, _ = _block_logits(cfg, q, k, bias, mask, start)
        new_max = jnp.maximum(running_max, logits.max(axis=-1))
        # -inf while every key so far is masked: subtract 0 instead, so that
        # exp gives 0 for those keys rather than exp(-inf + inf) = NaN.
        shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
        p = jnp.exp(logits - shift[..., None])
        rescale = jnp.exp(running_max - shift)
        total = total * rescale + p.sum(axis=-1)  # the softmax denominator is taken before dropout
        p = jnp.where(_block_keep(cfg, seeds, threshold, row0, start), p * inv_keep, 0.0)  # dropout
        acc = acc * rescale.T[..., None] + _pv(p, lax.dynamic_slice_in_dim(v, start, cfg.block, axis=0))
        return (acc, new_max, total), None

    # Carries shaped like q (zeros_like): under explicit sharding they take its sharding, as the loop's outputs do.
    row_stats = jnp.zeros_like(q[..., 0], jnp.float32).T  # (N, T)
    init = (jnp.zeros_like(q, jnp.float32), row_stats - jnp.inf, row_stats)
    (acc, running_max, total), _ = lax.scan(step, init, jnp.arange(k.shape[0] // cfg.block))
    attended = total > 0.0  # False for a fully masked row: its output is 0
    out = jnp.where(attended.T[..., None], acc / jnp.where(attended, total, 1.0).T[..., None], 0.0)
    lse = jnp.where(attended, running_max + jnp.log(jnp.where(attended, total, 1.0)), 0.0)
    return out.astype(q.dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blocked_attention(
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
    row0: jax.Array,
) -> jax.Array:
    """One batch element's attention output, (T, N, H); differentiable in q, k, v and bias by the rules below."""
    return _forward(cfg, q, k, v, bias, mask, seeds, threshold, inv_keep, row0)[0]


# What the backward pass keeps: the inputs (q, k, v, bias, mask, seeds, threshold,
# 1 / keep, first mask row), the output and the logsumexp. O(T N (H + 1)) per
# batch element beyond the inputs: no (T, S) array.
_Residuals = tuple[
    jax.Array,
    jax.Array,
    jax.Array,
    jax.Array | None,
    jax.Array | None,
    jax.Array,
    jax.Array,
    jax.Array,
    jax.Array,
    jax.Array,
    jax.Array,
]


def _blocked_fwd(
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
    row0: jax.Array,
) -> tuple[jax.Array, _Residuals]:
    out, lse = _forward(cfg, q, k, v, bias, mask, seeds, threshold, inv_keep, row0)
    return out, (q, k, v, bias, mask, seeds, threshold, inv_keep, row0, out, lse)


def _blocked_bwd(cfg: _Config, residuals: _Residuals, d_out: jax.Array) -> tuple[jax.Array | None, ...]:
    """FlashAttention-2's backward over key blocks, regenerating each block's weights and dropout mask."""
    q, k, v, bias, mask, seeds, threshold, inv_keep, row0, out, lse = residuals
    t, n, h = q.shape
    kv_heads = k.shape[1]
    d_grouped = d_out.reshape(t, kv_heads, n // kv_heads, h)
    q_grouped = q.reshape(t, kv_heads, n // kv_heads, h)
    # sum_s w_s dw_s, with w the weights after dropout, equals sum_h dO * O.
    delta = jnp.einsum("tnh,tnh->nt", d_out.astype(jnp.float32), out.astype(jnp.float32))
    bias_blocked = bias is not None and bias.shape[-1] != 1

    def step(
        carry: tuple[jax.Array, jax.Array], j: jax.Array
    ) -> tuple[tuple[jax.Array, jax.Array], tuple[jax.Array, ...]]:
        dq, d_bias_sum = carry
        start = j * cfg.block
        logits, allowed = _block_logits(cfg, q, k, bias, mask, start)
        p = jnp.where(allowed, jnp.exp(logits - lse[..., None]), 0.0)  # the softmax weights, before dropout
        d_p = jnp.einsum(
            "tkgh,skh->kgts",
            d_grouped,
            lax.dynamic_slice_in_dim(v, start, cfg.block, axis=0),
            preferred_element_type=jnp.float32,
        ).reshape(n, t, cfg.block)
        keep = _block_keep(cfg, seeds, threshold, row0, start)
        w = jnp.where(keep, p * inv_keep, 0.0)  # the weights after dropout
        d_p = jnp.where(keep, d_p * inv_keep, 0.0)
        d_logits = p * (d_p - delta[..., None])  # the softmax's backward
        d_grouped_logits = d_logits.reshape(kv_heads, n // kv_heads, t, cfg.block).astype(q.dtype)
        d_v = jnp.einsum(
            "kgts,tkgh->skh",
            w.reshape(d_grouped_logits.shape).astype(q.dtype),
            d_grouped,
            preferred_element_type=jnp.float32,
        )
        d_k = jnp.einsum("kgts,tkgh->skh", d_grouped_logits, q_grouped, preferred_element_type=jnp.float32)
        kj = lax.dynamic_slice_in_dim(k, start, cfg.block, axis=0)
        dq = dq + _pv(d_logits, kj)
        d_bias = jnp.zeros(())
        if bias is not None:  # the logits' gradient, summed over the bias's broadcast axes
            d_bias = _sum_to(d_logits, (*bias.shape[:-1], cfg.block if bias_blocked else 1))
            if not bias_blocked:
                d_bias_sum = d_bias_sum + d_bias
        return (dq, d_bias_sum), (d_k * cfg.scale, d_v, d_bias if bias_blocked else jnp.zeros(()))

    bias_sum_shape = (1, 1, 1) if bias is None or bias_blocked else bias.shape
    init = (jnp.zeros_like(q, jnp.float32), jnp.zeros(bias_sum_shape, jnp.float32))
    (dq, d_bias_sum), (dk, dv, d_bias_blocks) = lax.scan(step, init, jnp.arange(k.shape[0] // cfg.block))
    d_bias_out: jax.Array | None = None
    if bias is not None:
        # Per-block gradients (blocks, *lead, block) join into (*lead, blocks * block).
        joined = jnp.moveaxis(d_bias_blocks, 0, -2).reshape(bias.shape) if bias_blocked else d_bias_sum
        d_bias_out = joined.astype(bias.dtype)
    return (
        (dq * cfg.scale).astype(q.dtype),
        dk.reshape(k.shape).astype(k.dtype),
        dv.reshape(v.shape).astype(v.dtype),
        d_bias_out,
        None,
        None,
        None,
        None,
        None,
    )


_blocked_attention.defvjp(_blocked_fwd, _blocked_bwd)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums ``x`` over the axes where ``shape`` has size 1 (the bias's broadcast axes), keeping them."""
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1 and x.shape[axis] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def _first_mask_row(index: jax.Array, batch: tuple[int, ...], shared: frozenset[int], cfg: _Config) -> jax.Array:
    """The dropout mask's row counter of a batch element's (head 0, query 0), from its flat batch ``index``.

    Rows count row-major over the mask's shape, whose batch axes in ``shared``
    have size 1: the element's index along those axes does not count.
    """
    index = index.astype(jnp.uint32)
    row, stride = jnp.zeros((), jnp.uint32), 1
    for axis in reversed(range(len(batch))):
        index, position = index // jnp.uint32(batch[axis]), index % jnp.uint32(batch[axis])
        if axis not in shared:
            row, stride = row + position * jnp.uint32(stride), stride * batch[axis]
    first: jax.Array = row * jnp.uint32(cfg.mask_heads * cfg.mask_queries)
    return first


def _check_broadcastable(x: jax.Array, shape: tuple[int, ...], name: str) -> None:
    if x.ndim > len(shape) or any(a not in (1, b) for a, b in zip(x.shape[::-1], shape[::-1], strict=False)):
        raise ValueError(
            f"{name} of shape {x.shape} does not broadcast to the attention weights' shape {shape} (..., N, T, S)."
        )


def _flatten_batch(x: jax.Array | None, batch: tuple[int, ...]) -> tuple[jax.Array | None, int | None]:
    """A bias or mask as (B, n, t, s), B the flattened batch, and vmap's in_axes 0.

    Or as (n, t, s) and in_axes None when it has no batch axes of size above 1.
    """
    if x is None:
        return None, None
    x = x.reshape((1,) * (len(batch) + 3 - x.ndim) + x.shape)
    if all(size == 1 for size in x.shape[: len(batch)]):
        return x.reshape(x.shape[len(batch) :]), None
    return jnp.broadcast_to(x, batch + x.shape[len(batch) :]).reshape(-1, *x.shape[len(batch) :]), 0


def _jax_nn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    batch: tuple[int, ...],
    scale: float,
    is_causal: bool,
    implementation: Literal["xla", "cudnn"] | None,
) -> jax.Array:
    """The fast path: ``jax.nn.dot_product_attention`` on the batch flattened to one axis, fully masked rows zeroed."""

    def four_d(x: jax.Array | None) -> jax.Array | None:  # jax.nn takes bias and mask as (B or 1, N, T, S)
        flat = _flatten_batch(x, batch)[0]
        return None if flat is None else flat.reshape((1,) * (4 - flat.ndim) + flat.shape)

    bias4, mask4 = four_d(bias), four_d(mask)
    if bias4 is not None and implementation != "cudnn":
        bias4 = bias4.astype(jnp.float32)  # XLA's path adds it to float32 logits, which strict promotion requires
    out = jax.nn.dot_product_attention(
        q.reshape(-1, *q.shape[-3:]),
        k.reshape(-1, *k.shape[-3:]),
        v.reshape(-1, *v.shape[-3:]),
        bias4,
        mask4,
        scale=scale,
        is_causal=is_causal,
        implementation=implementation,
    )
    if mask4 is not None:
        # jax.nn gives a row with every key masked out the mean of the values;
        # jdrop defines it as 0, on this path as on the blocked one.
        allowed = mask4
        if is_causal:
            allowed = allowed & jnp.tril(jnp.ones((q.shape[-3], k.shape[-3]), bool))
        attended = jnp.any(allowed, axis=-1)  # (B or 1, N or 1, T or 1)
        out = jnp.where(jnp.swapaxes(attended, 1, 2)[..., None], out, jnp.zeros((), out.dtype))
    return out.reshape(q.shape)


def dot_product_attention(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    bias: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    *,
    dropout_key: KeyLike | None = None,
    keep_prob: ArrayLike = 1.0,
    broadcast_dims: Sequence[int] = (),
    is_causal: bool = False,
    scale: float | None = None,
    deterministic: bool = False,
    block_size: int | None = None,
    implementation: Literal["xla", "cudnn"] | None = None,
) -> jax.Array:
    r"""Scaled dot-product attention with dropout on the attention weights, computed in blocks of keys.

    Exactly, up to float rounding, the result is

    .. code-block:: python

        w = softmax(scale * einsum("...tnh,...snh->...nts", q, k) + bias, where=mask)
        out = einsum("...nts,...snh->...tnh",
                     jdrop.dropout(dropout_key, w, keep_prob, broadcast_dims=broadcast_dims), v)

    with key/value head ``n // (N // K)`` for query head ``n``: the dropout
    mask is ``jdrop.dropout_mask(dropout_key, s, keep_prob)`` for ``s`` the
    weights' shape (..., N, T, S) with 1 at ``broadcast_dims``, the same for
    every ``block_size`` and every sharding, because each block computes its
    entries from their positions (row: the row-major index over (..., N, T);
    column: the key's index). With explicit sharding in types
    (``AxisType.Explicit``, ``jax.make_mesh``'s default) the dropout path
    takes inputs sharded along the batch and the heads; inputs sharded along
    T or S need an ``AxisType.Auto`` mesh (its contractions over T and S
    have no ``out_sharding``).

    The weights are never held for all keys at once: an online softmax
    (running maximum and sum, as FlashAttention) runs over blocks of
    ``block_size`` keys, and the backward pass (a ``jax.custom_vjp``)
    recomputes each block's weights from ``query``, ``key`` and the saved
    logsumexp and regenerates its dropout mask, so the residuals are the
    inputs, the output and the logsumexp: O(T N (H + 1)) per batch element.
    Softmax statistics are float32; products take the inputs' dtype with
    float32 accumulation, as ``jax.nn.dot_product_attention``. Reverse mode
    only: forward-mode differentiation (``jax.jvp``, ``jax.jacfwd``) of the
    dropout path is not supported by its ``custom_vjp``.

    A row whose keys are all masked out (by ``mask`` and ``is_causal``)
    gives 0, with zero gradients; ``jax.nn.dot_product_attention`` would give
    the mean of the values.

    With dropout off (``deterministic=True`` or the concrete ``keep_prob``
    1.0) this calls ``jax.nn.dot_product_attention`` with the same arguments
    (``implementation="cudnn"`` selects cuDNN's fused kernel on GPU), and
    zeroes fully masked rows.

    Args:
      query: (..., T, N, H) floating array; any number of leading batch axes.
      key: (..., S, K, H) array of ``query``'s dtype and batch axes; N must be a multiple of K.
      value: array of ``key``'s shape and dtype.
      bias: optional floating array broadcastable to (..., N, T, S), added to the scaled logits.
      mask: optional bool array broadcastable to (..., N, T, S); True means attend.
      dropout_key: a PRNG key; needed unless dropout is off. A fresh one for every call.
      keep_prob: probability of keeping an attention weight, in (0, 1]. A
        traced scalar does not recompile; a traced value outside [0, 1] gives NaN.
      broadcast_dims: axes of the weights' shape (..., N, T, S) along which
        the dropout mask is shared, e.g. ``(-3,)`` for one mask for all heads.
      is_causal: if True, query ``t`` attends keys ``0..t`` (``jax.nn``'s convention).
      scale: the logits' scale; defaults to ``1 / sqrt(H)``.
      deterministic: if True, no dropout (evaluation).
      block_size: keys per block, at least 1; None picks ``min(S, 512)``.
        Only memory and speed depend on it.
      implementation: passed to ``jax.nn.dot_product_attention`` on the fast
        path (dropout off); the dropout path is the same XLA code everywhere.

    Returns:
      The attention output, of ``query``'s shape and dtype.

    Raises:
      ValueError: if the shapes do not fit (lengths, head sizes, batch axes,
        N not a multiple of K, a ``bias`` or ``mask`` that does not broadcast),
        ``block_size`` is below 1, a concrete ``keep_prob`` is outside (0, 1],
        an axis of ``broadcast_dims`` is out of range, or ``dropout_key`` is
        missing while dropout is on.
      TypeError: if an input is not floating (``mask``: not bool), the dtypes
        of ``query``, ``key`` and ``value`` differ, or an argument has the wrong type.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> q = jnp.ones((2, 5, 4, 8))  # (batch, T, N, H)
      >>> kv = jnp.ones((2, 7, 2, 8))  # (batch, S, K, H): two query heads per key/value head
      >>> out = jdrop.dot_product_attention(q, kv, kv, dropout_key=jax.random.key(0), keep_prob=0.9)
      >>> out.shape
      (2, 5, 4, 8)
    """
    q, k, v = (x if isinstance(x, jax.Array) else jnp.asarray(x) for x in (query, key, value))
    for name, x in (("query", q), ("key", k), ("value", v)):
        _check_floating(x, name)
    if q.ndim < 3:
        raise ValueError(f"query must have shape (..., T, N, H), got shape {q.shape}.")
    if k.shape != v.shape:
        raise ValueError(f"key and value must have the same shape (..., S, K, H), got {k.shape} and {v.shape}.")
    if k.ndim != q.ndim or k.shape[:-3] != q.shape[:-3]:
        raise ValueError(
            f"key must have query's batch axes: query has shape {q.shape} (..., T, N, H), key {k.shape} (..., S, K, H)."
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"query and key must have the same head size H, got {q.shape[-1]} and {k.shape[-1]}.")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"query, key and value must have the same dtype, got {q.dtype}, {k.dtype} and {v.dtype}.")
    *batch_list, t, n, h = q.shape
    s, kv_heads = k.shape[-3], k.shape[-2]
    if kv_heads == 0 or n % kv_heads:
        raise ValueError(f"query's heads N={n} must be a multiple of key's and value's heads K={kv_heads}.")
    batch = tuple(batch_list)
    weights = (*batch, n, t, s)
    if bias is not None:
        bias = bias if isinstance(bias, jax.Array) else jnp.asarray(bias)
        _check_floating(bias, "bias")
        _check_broadcastable(bias, weights, "bias")
    if mask is not None:
        mask = mask if isinstance(mask, jax.Array) else jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be a bool array (True means attend), got dtype {mask.dtype}.")
        _check_broadcastable(mask, weights, "mask")
    if not isinstance(is_causal, bool | np.bool_):
        raise TypeError(f"is_causal must be a Python bool, got {type(is_causal).__name__}.")
    if scale is None:
        scale_value = 1.0 / math.sqrt(h)
    else:
        scale_value = _real_scalar(scale, "scale", "a real number")  # type: ignore[assignment]
        if scale_value is None:
            raise TypeError("scale must be a concrete real number (it is static), got a traced value.")
    if block_size is not None:
        _check_count(block_size, "block_size")
    if implementation not in (None, "xla", "cudnn"):
        raise ValueError(f"implementation must be None, 'xla' or 'cudnn', got {implementation!r}.")
    _check_deterministic(deterministic)
    concrete_keep_prob = _check_keep_prob(keep_prob)
    shared = _check_broadcast_dims(broadcast_dims, len(weights))
    if deterministic or concrete_keep_prob == 1.0:
        return _jax_nn_attention(q, k, v, bias, mask, batch, scale_value, bool(is_causal), implementation)
    typed_key = _as_key(dropout_key, "dropout_key", or_else=OR_DETERMINISTIC)
    mask_shape = tuple(1 if axis in shared else size for axis, size in enumerate(weights))
    if math.prod(mask_shape[:-1]) >= MAX_COUNTER or s >= MAX_COUNTER:
        raise ValueError(
            f"the attention weights' shape {weights} is too large for the mask generator's 32-bit counters."
        )
    if s == 0:
        raise ValueError(f"key and value must have at least one position (S >= 1), got shape {k.shape}.")

    block = min(block_size or DEFAULT_BLOCK_SIZE, s)
    padded = -(-s // block) * block  # keys padded with masked-out positions to whole blocks

    def pad_keys(x: jax.Array | None, axis: int) -> jax.Array | None:
        if x is None or padded == s or x.shape[axis] == 1:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, padded - s)
        return jnp.pad(x, widths)  # zeros, and False for the mask: never attended

    seeds = seeds_of(typed_key)  # the only draw from dropout_key
    threshold, effective = _threshold_and_effective(keep_prob)
    inv_keep = 1.0 / jnp.where(effective == 0.0, jnp.float32(1.0), effective)  # a traced 0.0 drops everything
    cfg = _Config(
        scale=float(scale_value),
        is_causal=bool(is_causal),
        length=s,
        block=block,
        mask_heads=mask_shape[-3],
        mask_queries=mask_shape[-2],
        mask_columns=mask_shape[-1] != 1,
    )
    flat_bias, bias_axis = _flatten_batch(pad_keys(bias, -1), batch)
    flat_mask, mask_axis = _flatten_batch(pad_keys(mask, -1), batch)

    def per_example(
        q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None, mask: jax.Array | None
    ) -> jax.Array:
        # The element's first mask row, from its batch index: no (B,) table of rows to build and map.
        row0 = _first_mask_row(lax.axis_index("batch"), batch, shared, cfg)
        return _blocked_attention(cfg, q, k, v, bias, mask, seeds, threshold, inv_keep, row0)

    out = jax.vmap(per_example, in_axes=(0, 0, 0, bias_axis, mask_axis), axis_name="batch")(
        q.reshape(-1, t, n, h),
        pad_keys(k, -3).reshape(-1, padded, kv_heads, h),  # type: ignore[union-attr]
        pad_keys(v, -3).reshape(-1, padded, kv_heads, h),  # type: ignore[union-attr]
        flat_bias,
        flat_mask,
    )
    return out.reshape(q.shape)
