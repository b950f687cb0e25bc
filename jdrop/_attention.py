r"""Memory-light dot-product attention with dropout on the attention weights.

:func:`dot_product_attention` computes, in tiles of (queries, keys), what
``jax.nn.dot_product_attention`` computes, with dropout on the softmax weights
in between: the weights of every (query, key) pair are never held at once.
The dropout mask is a pure function of each weight's position (see
:mod:`jdrop._generator`), so each tile regenerates exactly its part of the
mask that ``jdrop.dropout`` would draw on the full weights, in the forward
pass and again in the backward pass, whatever the tile size.

The work is split into items, one per (batch element, query head), each an
online softmax over its tiles with unbatched products. On one CPU device the
items run one after another (their products then use every core at about
twice the speed of products batched over heads); elsewhere they run side by
side under vmap, which keeps inputs sharded along the batch or the heads where
they are. The schedule changes no value.

Shapes follow ``jax.nn.dot_product_attention``::

    query (..., T, N, H)   key, value (..., S, K, H)   weights (..., N, T, S)

with N a multiple of K: query head ``n`` uses key/value head ``n // (N // K)``.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any, Literal, NamedTuple

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
    _key_if_given,
    _real_scalar,
)
from jdrop._dropout import _threshold_and_effective
from jdrop._generator import MAX_COUNTER, ROUNDS, hash16, seeds_of

__all__ = ["dot_product_attention"]

#: (queries, keys) per tile when ``block_size`` is None, for each way of running the
#: items (one (batch, head) pair each): "loop" (CPU, one device), where large tiles
#: make each product large enough to use every core and the loop short (512 keys
#: measured 10-18% faster than 128 for forward + backward at T = 512 to 4096, and
#: no slower than 1024), and "vmap" (GPU, or several devices: every item at once,
#: so that sharded items stay where they are).
DEFAULT_TILES = {"loop": (1024, 512), "vmap": (128, 128)}


def _schedule() -> Literal["loop", "vmap"]:
    """How the items run: one after another on a single CPU device, all at once (vmap) elsewhere.

    On a CPU a (batch, head) item's products with unbatched operands run at
    about twice the speed of the same products batched over heads; a GPU needs
    the items side by side. With several devices the items axis may be
    sharded, and a loop over it would gather it: vmap keeps every device on
    its own items. Both give the same values, the same mask bits.
    """
    return "loop" if jax.default_backend() == "cpu" and jax.device_count() == 1 else "vmap"


class _Config(NamedTuple):
    """The static part of a call: what the kernel needs besides arrays (hashable, for custom_vjp)."""

    scale: float
    is_causal: bool
    window: tuple[int, int] | None  # (left, right): query t attends keys t - left .. t + right (jax.nn's)
    length: int  # S before padding: keys at or beyond it never attend
    q_block: int  # queries per tile
    k_block: int  # keys per tile
    mask_queries: bool  # False when the dropout mask is shared across queries: every row counter is the item's
    mask_columns: bool  # False when it is shared across keys: every column counter is then 0
    # The logit of a key that the mask or causality rules out: -inf (jdrop: a row
    # with no key left gives 0), or a large finite one (Flax and Equinox: such a
    # row spreads its weight uniformly over the keys, as their finfo.min does).
    masked_logit: float
    precision: Any  # lax.Precision, a string, a pair or None: passed to every product
    skip_causal: bool  # causality ends a query tile's key loop at its diagonal (no tile beyond it matters)
    heads: int  # N: item i is (batch i // N, head i % N)
    bias_items: tuple[bool, bool]  # whether the bias varies along (batch, head); likewise the mask
    mask_items: tuple[bool, bool]
    schedule: Literal["loop", "vmap"]
    # An item's first mask row is sum ((b // divisor) % size) * stride over the batch axes, plus n * head stride.
    row_strides: tuple[tuple[int, int, int], ...]  # (divisor, size, stride) per batch axis
    head_stride: int


def _slice(x: jax.Array, axis: int, start: jax.Array, size: int) -> jax.Array:
    """Tile ``[start, start + size)`` of ``x`` along ``axis``, unless that axis has size 1 (broadcast)."""
    if x.shape[axis] == 1:
        return x
    return lax.dynamic_slice_in_dim(x, start, size, axis=axis)


def _tile_logits(
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    q_start: jax.Array,
    k_start: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """The float32 logits (Tq, Sk) of an item's tile, ``cfg.masked_logit`` where not attended, and that pattern.

    ``q`` is a query tile (Tq, H); ``k`` the item's keys (S, H), of which the
    tile takes ``[k_start, k_start + Sk)``. Keys of the padding are -inf
    (never attended, by either convention); ``allowed`` is False there too.
    """
    tq = q.shape[0]
    kj = lax.dynamic_slice_in_dim(k, k_start, cfg.k_block, axis=0)
    logits = jnp.einsum("th,sh->ts", q, kj, precision=cfg.precision, preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(cfg.scale)
    if bias is not None:
        logits = logits + _slice(_slice(bias, 0, q_start, tq), 1, k_start, cfg.k_block).astype(jnp.float32)
    col = k_start + lax.broadcasted_iota(jnp.int32, (1, cfg.k_block), 1)
    padded = cfg.length % cfg.k_block != 0
    inside = col < cfg.length  # padded keys never attend
    allowed = inside
    if mask is not None:
        allowed = allowed & _slice(_slice(mask, 0, q_start, tq), 1, k_start, cfg.k_block)
    row = q_start + lax.broadcasted_iota(jnp.int32, (tq, 1), 0)
    allowed = _causal_and_window(allowed, row, col, cfg.is_causal, cfg.window)
    if not (padded or mask is not None or cfg.is_causal or cfg.window is not None):
        return logits, allowed  # every key attends: no select to pay for
    logits = jnp.where(allowed, logits, jnp.float32(cfg.masked_logit))
    if padded and not math.isinf(cfg.masked_logit):
        logits = jnp.where(inside, logits, -jnp.inf)
    return logits, allowed


def _tile_keep(
    cfg: _Config,
    seeds: jax.Array,
    threshold: jax.Array,
    row0: jax.Array,
    q_start: jax.Array,
    tq: int,
    k_start: jax.Array,
) -> jax.Array:
    """The dropout keep-mask of a tile, (Tq or 1, Sk or 1): the full mask's entries at its positions.

    ``row0`` is the item's first mask row, so rows count (batch, head, query)
    row-major over the mask's shape, and columns count keys from 0 over the
    whole (unpadded) sequence, exactly as ``jdrop.dropout_mask`` on the full
    weights.
    """
    row = row0 + (q_start.astype(jnp.uint32) + lax.broadcasted_iota(jnp.uint32, (tq, 1), 0) if cfg.mask_queries else 0)
    if cfg.mask_columns:
        col = k_start.astype(jnp.uint32) + lax.broadcasted_iota(jnp.uint32, (1, cfg.k_block), 1)
    else:
        col = jnp.zeros((1, 1), jnp.uint32)
    return hash16(seeds, jnp.asarray(row, jnp.uint32).reshape(-1, 1), col) < threshold


def _over_key_tiles(
    cfg: _Config, q_index: jax.Array, num_key_tiles: int, body: Callable[[jax.Array, Any], Any], init: Any
) -> Any:
    """``body(j, carry)`` over the key tiles ``j`` of query tile ``q_index``: all, or with ``cfg.skip_causal``
    those up to its diagonal.

    The trip count is static, so the loop is a scan and every derivative of
    it, reverse-over-reverse included, exists (a loop with a traced trip count
    cannot be reversed). Tiles past the diagonal are skipped by a ``lax.cond``
    on the tile indices, which vmap over items leaves a real branch.
    """
    if not cfg.skip_causal:
        return lax.fori_loop(0, num_key_tiles, body, init)
    last_query = (q_index + 1) * cfg.q_block - 1
    visited = last_query // cfg.k_block + 1  # tiles 0 .. visited - 1 hold a key at or before the diagonal

    def tile_or_skip(j: jax.Array, carry: Any) -> Any:
        return lax.cond(j < visited, body, lambda _, unchanged: unchanged, j, carry)

    return lax.fori_loop(0, num_key_tiles, tile_or_skip, init)


def _item_forward(
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
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Online softmax over the tiles of one item: ``q`` (nq, Tq, H), ``k`` (S, H), ``v`` (S, Hv).

    Returns the output tiles (nq, Tq, Hv) and, per row, the softmax's shift and
    reciprocal sum (nq, Tq): the backward pass's residuals.
    """
    tq, hv = q.shape[1], v.shape[-1]
    num_key_tiles = k.shape[0] // cfg.k_block

    def query_tile(_: None, xs: tuple[jax.Array, jax.Array]) -> tuple[None, tuple[jax.Array, jax.Array, jax.Array]]:
        qi, i = xs
        q_start = i * tq

        def key_tile(j: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
            acc, running_max, total = carry
            k_start = j * cfg.k_block
            logits, _ = _tile_logits(cfg, qi, k, bias, mask, q_start, k_start)
            new_max = jnp.maximum(running_max, logits.max(axis=-1))
            # -inf while every key so far is masked: subtract 0 instead, so that
            # exp gives 0 for those keys rather than exp(-inf + inf) = NaN.
            shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
            p = jnp.exp(logits - shift[:, None])
            rescale = jnp.exp(running_max - shift)
            total = total * rescale + p.sum(axis=-1)  # the softmax denominator is taken before dropout
            keep = _tile_keep(cfg, seeds, threshold, row0, q_start, tq, k_start)
            p = jnp.where(keep, p * inv_keep, 0.0)  # dropout
            vj = lax.dynamic_slice_in_dim(v, k_start, cfg.k_block, axis=0)
            pv = jnp.einsum(  # the weights in v's dtype, as jax.nn's product
                "ts,sh->th", p.astype(v.dtype), vj, precision=cfg.precision, preferred_element_type=jnp.float32
            )
            return acc * rescale[:, None] + pv, new_max, total

        # Carries made from q (zeros_like): under explicit sharding they take its sharding, as the loop's outputs do.
        row_stats = jnp.zeros_like(qi[:, 0], jnp.float32)
        acc = jnp.zeros_like(qi[:, :1], jnp.float32) + jnp.zeros((1, hv), jnp.float32)  # no rank promotion
        init = (acc, row_stats - jnp.inf, row_stats)
        acc, running_max, total = _over_key_tiles(cfg, i, num_key_tiles, key_tile, init)
        attended = total > 0.0  # False for a row with no key left: its output is 0
        inv_total = jnp.where(attended, 1.0 / jnp.where(attended, total, 1.0), 0.0)
        shift = jnp.where(jnp.isfinite(running_max), running_max, 0.0)
        return None, ((acc * inv_total[:, None]).astype(v.dtype), shift, inv_total)

    _, (out, shift, inv_total) = lax.scan(query_tile, None, (q, jnp.arange(q.shape[0])))
    return out, shift, inv_total


def _item_backward(
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
    out: jax.Array,
    shift: jax.Array,
    inv_total: jax.Array,
    d_out: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """FlashAttention-2's backward over one item's tiles, regenerating each tile's weights and dropout mask.

    Returns float32 gradients in q (nq, Tq, H), k, v and the item's bias.
    """
    tq = q.shape[1]
    num_key_tiles = k.shape[0] // cfg.k_block
    # sum_s w_s dw_s, with w the weights after dropout, equals sum_h dO * O.
    delta = jnp.einsum("ith,ith->it", d_out.astype(jnp.float32), out.astype(jnp.float32))

    def query_tile(carry: tuple[jax.Array, ...], xs: tuple[jax.Array, ...]) -> tuple[tuple[jax.Array, ...], jax.Array]:
        qi, d_out_i, shift_i, inv_total_i, delta_i, i = xs
        q_start = i * tq

        def key_tile(j: jax.Array, carry: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
            dq, dk, dv, d_bias = carry
            k_start = j * cfg.k_block
            logits, allowed = _tile_logits(cfg, qi, k, bias, mask, q_start, k_start)
            p = jnp.exp(logits - shift_i[:, None]) * inv_total_i[:, None]  # the weights, before dropout
            vj = lax.dynamic_slice_in_dim(v, k_start, cfg.k_block, axis=0)
            kj = lax.dynamic_slice_in_dim(k, k_start, cfg.k_block, axis=0)
            d_p = jnp.einsum("th,sh->ts", d_out_i, vj, precision=cfg.precision, preferred_element_type=jnp.float32)
            keep = _tile_keep(cfg, seeds, threshold, row0, q_start, tq, k_start)
            w = jnp.where(keep, p * inv_keep, 0.0)  # the weights after dropout
            d_p = jnp.where(keep, d_p * inv_keep, 0.0)
            d_logits = p * (d_p - delta_i[:, None])  # the softmax's backward
            if not math.isinf(cfg.masked_logit):  # masked keys of a fully masked row have weight but no gradient
                d_logits = jnp.where(allowed, d_logits, 0.0)
            d_low = d_logits.astype(q.dtype)
            dv_j = jnp.einsum(
                "ts,th->sh", w.astype(q.dtype), d_out_i, precision=cfg.precision, preferred_element_type=jnp.float32
            )
            dk_j = jnp.einsum("ts,th->sh", d_low, qi, precision=cfg.precision, preferred_element_type=jnp.float32)
            dq = dq + jnp.einsum("ts,sh->th", d_low, kj, precision=cfg.precision, preferred_element_type=jnp.float32)
            dk = _add_tile(dk, dk_j, (k_start, 0))
            dv = _add_tile(dv, dv_j, (k_start, 0))
            if bias is not None:  # the logits' gradient, summed over the bias's broadcast axes
                d_bias = _add_tile(d_bias, _sum_to(d_logits, bias.shape), (q_start, k_start))
            return dq, dk, dv, d_bias

        dk, dv, d_bias = carry
        init = (jnp.zeros_like(qi, jnp.float32), dk, dv, d_bias)
        dq_i, dk, dv, d_bias = _over_key_tiles(cfg, i, num_key_tiles, key_tile, init)
        return (dk, dv, d_bias), dq_i * jnp.float32(cfg.scale)

    init: tuple[Any, ...] = (
        jnp.zeros_like(k, jnp.float32),
        jnp.zeros_like(v, jnp.float32),
        None if bias is None else jnp.zeros_like(bias, jnp.float32),
    )
    xs = (q, d_out, shift, inv_total, delta, jnp.arange(q.shape[0]))
    (dk, dv, d_bias), dq = lax.scan(query_tile, init, xs)
    return dq, dk * jnp.float32(cfg.scale), dv, d_bias


def _at(x: jax.Array, b: jax.Array | int, n: jax.Array | int) -> jax.Array:
    """``x[b, n]``, with traced indices along its two leading axes."""
    row: jax.Array = lax.dynamic_index_in_dim(lax.dynamic_index_in_dim(x, b, 0, keepdims=False), n, 0, keepdims=False)
    return row


def _flat_item(i: jax.Array, kv_heads: int, groups: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The (batch, kv head, group) of the loop schedule's flat item ``i``; its query head is ``kv * groups + g``."""
    return i // (kv_heads * groups), (i // groups) % kv_heads, i % groups


def _item_part(x: jax.Array | None, varies: tuple[bool, bool], b: jax.Array, n: jax.Array) -> jax.Array | None:
    """Item (batch ``b``, head ``n``)'s (T or 1, S or 1) part of a bias or mask (B or 1, N or 1, T or 1, S or 1)."""
    if x is None:
        return None
    return _at(x, b if varies[0] else 0, n if varies[1] else 0)


def _item_leading(x: jax.Array | None, varies: tuple[bool, bool], kv_heads: int) -> jax.Array | None:
    """A bias or mask with exactly the item axes it varies along, (B?, K?, G?, T or 1, S or 1): for the vmaps."""
    if x is None:
        return None
    if not varies[0]:
        x = x[0]
    if not varies[1]:
        return x[..., 0, :, :]
    lead = x.shape[:-3]
    return x.reshape(*lead, kv_heads, x.shape[-3] // kv_heads, *x.shape[-2:])


def _vmap_items(
    fn: Callable[..., Any],
    per_head: tuple[jax.Array, ...],
    per_kv: tuple[jax.Array, ...],
    parts: tuple[tuple[jax.Array | None, tuple[bool, bool]], ...],
) -> Any:
    """``fn(b, kv, g, *head_item, *kv_item, *part_items)`` over every item at once: vmaps over B, K and G.

    ``per_head`` arrays lead with (B, K, G), ``per_kv`` with (B, K); each of
    ``parts`` (a bias or mask from :func:`_item_leading`, and where it varies)
    leads with the item axes it varies along. vmap rather than one joined item
    axis, so that inputs sharded along the batch or the heads stay so.
    """
    heads, kvs = len(per_head), len(per_kv)

    def indexed(*arrays: Any) -> Any:
        return fn(lax.axis_index("B"), lax.axis_index("K"), lax.axis_index("G"), *arrays)

    f = indexed
    for level in ("G", "K", "B"):
        part_axes = tuple(None if x is None or not varies[0 if level == "B" else 1] else 0 for x, varies in parts)
        kv_axis = None if level == "G" else 0
        f = jax.vmap(f, in_axes=(0,) * heads + (kv_axis,) * kvs + part_axes, axis_name=level)
    return f(*per_head, *per_kv, *(x for x, _ in parts))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention_items(
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
) -> jax.Array:
    """Every item's output tiles (B, K, G, nq, Tq, Hv); differentiable in q, k, v and bias by the rules below.

    ``q`` (B, K, G, nq, Tq, H); ``k`` (B, K, S, H) and ``v`` (B, K, S, Hv);
    ``bias`` and ``mask`` (B or 1, N or 1, T or 1, S or 1); ``seeds`` the
    generator's words (words,), or each head's (N, words). Item (b, kv head, g)
    is query head ``n = kv_head * G + g``; its first mask row comes from ``cfg``.
    """
    return _items_fwd(cfg, q, k, v, bias, mask, seeds, threshold, inv_keep)[0]


# What the backward pass keeps: the inputs, the output, and each row's shift and
# reciprocal sum: O(T N (Hv + 2)) per batch element beyond the inputs, no (T, S)
# array. (The two statistics, rather than their logsumexp, because a row of
# logits near -1e9, from a bias that masks, would lose log(sum) to rounding.)
_Residuals = tuple[Any, ...]


def _flat(x: jax.Array, axes: int) -> jax.Array:
    return x.reshape(-1, *x.shape[axes:])


def _items_fwd(
    cfg: _Config,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
) -> tuple[jax.Array, _Residuals]:
    groups = q.shape[2]

    def one(
        b: jax.Array, kv: jax.Array, g: jax.Array, q_i: jax.Array, k_i: jax.Array, v_i: jax.Array, *parts: Any
    ) -> Any:
        seeds_i, row0, bias_i, mask_i = _item_context(cfg, seeds, bias, mask, parts, b, kv * groups + g)
        return _item_forward(cfg, q_i, k_i, v_i, bias_i, mask_i, seeds_i, threshold, inv_keep, row0)

    out, shift, inv_total = _over_items(cfg, one, (q,), (k, v), bias, mask)
    return out, (q, k, v, bias, mask, seeds, threshold, inv_keep, out, shift, inv_total)


def _item_context(
    cfg: _Config,
    seeds: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    parts: tuple[Any, ...],
    b: jax.Array,
    n: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """Item (batch ``b``, head ``n``)'s generator words, first mask row, and bias and mask parts.

    ``parts`` are the bias and mask parts that the vmaps have already taken
    (vmap schedule), or empty: then they are indexed here (loop schedule).
    """
    seeds_i = seeds if seeds.ndim == 1 else lax.dynamic_index_in_dim(seeds, n, 0, keepdims=False)
    # Arithmetic rather than a table lookup: b and n may be sharded (vmap's axis_index), a table is not.
    row0 = n.astype(jnp.uint32) * jnp.uint32(cfg.head_stride)
    for divisor, size, stride in cfg.row_strides:
        position = (b.astype(jnp.uint32) // jnp.uint32(divisor)) % jnp.uint32(size)
        row0 = row0 + position * jnp.uint32(stride)
    if parts:
        return seeds_i, row0, parts[0], parts[1]
    return seeds_i, row0, _item_part(bias, cfg.bias_items, b, n), _item_part(mask, cfg.mask_items, b, n)


def _over_items(
    cfg: _Config,
    fn: Callable[..., Any],
    per_head: tuple[jax.Array, ...],
    per_kv: tuple[jax.Array, ...],
    bias: jax.Array | None,
    mask: jax.Array | None,
) -> Any:
    """``fn(b, kv, g, *head_item, *kv_item, *parts)`` for every item, stacked with leading (B, K, G).

    Loop schedule: one item after another (``lax.map``), ``parts`` empty.
    vmap schedule: :func:`_vmap_items`, with the bias and mask parts.
    """
    batch, kv_heads, groups = per_head[0].shape[:3]
    if cfg.schedule == "vmap":
        parts = (
            (_item_leading(bias, cfg.bias_items, kv_heads), cfg.bias_items),
            (_item_leading(mask, cfg.mask_items, kv_heads), cfg.mask_items),
        )
        return _vmap_items(fn, per_head, per_kv, parts)

    def one(xs: tuple[jax.Array, ...]) -> Any:
        i, *head_items = xs
        b, kv, g = _flat_item(i, kv_heads, groups)
        return fn(b, kv, g, *head_items, *(_at(x, b, kv) for x in per_kv))

    stacked = lax.map(one, (jnp.arange(batch * kv_heads * groups), *(_flat(x, 3) for x in per_head)))
    return jax.tree.map(lambda x: x.reshape(batch, kv_heads, groups, *x.shape[1:]), stacked)


def _items_bwd(cfg: _Config, residuals: _Residuals, d_out: jax.Array) -> tuple[jax.Array | None, ...]:
    q, k, v, bias, mask, seeds, threshold, inv_keep, out, shift, inv_total = residuals
    batch, kv_heads, groups = q.shape[:3]

    def one(b: jax.Array, kv: jax.Array, g: jax.Array, *arrays: Any) -> Any:
        q_i, out_i, shift_i, inv_total_i, d_out_i, k_i, v_i, *parts = arrays
        seeds_i, row0, bias_i, mask_i = _item_context(cfg, seeds, bias, mask, tuple(parts), b, kv * groups + g)
        return _item_backward(
            cfg, q_i, k_i, v_i, bias_i, mask_i, seeds_i, threshold, inv_keep, row0, out_i, shift_i, inv_total_i, d_out_i
        )

    per_head = (q, out, shift, inv_total, d_out)
    if cfg.schedule == "loop":
        # One item after another; each adds its key, value and bias gradients
        # where its part lies: no per-item copies of them.
        def step(carry: tuple[Any, ...], xs: tuple[jax.Array, ...]) -> tuple[tuple[Any, ...], jax.Array]:
            dk, dv, d_bias = carry
            i, *head_items = xs
            b, kv, g = _flat_item(i, kv_heads, groups)
            dq_i, dk_i, dv_i, d_bias_i = one(b, kv, g, *head_items, _at(k, b, kv), _at(v, b, kv))
            dk = _add_tile(dk, dk_i[None, None], (b, kv, 0, 0))
            dv = _add_tile(dv, dv_i[None, None], (b, kv, 0, 0))
            if bias is not None:
                d_bias = _add_tile(d_bias, d_bias_i[None, None], (b, kv * groups + g, 0, 0))
            return (dk, dv, d_bias), dq_i

        init = (
            jnp.zeros_like(k, jnp.float32),
            jnp.zeros_like(v, jnp.float32),
            None if bias is None else jnp.zeros_like(bias, jnp.float32),
        )
        items = (jnp.arange(batch * kv_heads * groups), *(_flat(x, 3) for x in per_head))
        (dk, dv, d_bias), dq = lax.scan(step, init, items)
        dq = dq.reshape(q.shape)
    else:
        dq, dk, dv, d_bias = _over_items(cfg, one, per_head, (k, v), bias, mask)
        dk, dv = dk.sum(axis=2), dv.sum(axis=2)  # over the query heads that share a kv head
        if bias is not None:  # summed over the item axes along which the bias is shared
            d_bias = _sum_to(d_bias.reshape(batch, kv_heads * groups, *d_bias.shape[3:]), bias.shape)
    return (
        dq.astype(q.dtype),
        dk.astype(k.dtype),
        dv.astype(v.dtype),
        None if bias is None else d_bias.astype(bias.dtype),  # type: ignore[union-attr]
        None,  # the mask, the generator's words, the threshold and 1 / keep: no gradients
        None,
        None,
        None,
    )


_attention_items.defvjp(_items_fwd, _items_bwd)


def _add_tile(total: jax.Array, tile: jax.Array, starts: tuple[jax.Array | int, ...]) -> jax.Array:
    """``total`` with ``tile`` added at ``starts`` (in place, in the loop); an axis of size 1 starts at 0."""
    starts = tuple(0 if size == 1 else start for size, start in zip(total.shape, starts, strict=True))
    current = lax.dynamic_slice(total, starts, tile.shape)
    return lax.dynamic_update_slice(total, current + tile, starts)


def _sum_to(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Sums ``x`` over the axes where ``shape`` has size 1 (the bias's broadcast axes), keeping them."""
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1 and x.shape[axis] != 1)
    return x.sum(axis=axes, keepdims=True) if axes else x


def _row_strides(
    batch: tuple[int, ...], n: int, t: int, shared: frozenset[int]
) -> tuple[tuple[tuple[int, int, int], ...], int]:
    """How an item's first dropout-mask row follows from its flat batch index and head.

    Rows count row-major over the mask's (..., N, T) axes, which have size 1
    along the ``shared`` axes: an item's index along those does not count.
    Returns (divisor, size, stride) per batch axis and the head's stride.
    """
    lead = (*batch, n, t)
    sizes = [1 if axis in shared else size for axis, size in enumerate(lead)]
    strides = [math.prod(sizes[axis + 1 :]) if axis not in shared else 0 for axis in range(len(lead))]
    batch_strides = tuple(
        (math.prod(batch[axis + 1 :]), batch[axis], strides[axis]) for axis in range(len(batch)) if strides[axis]
    )
    return batch_strides, strides[len(batch)]


def _check_broadcastable(x: jax.Array, shape: tuple[int, ...], name: str) -> None:
    if x.ndim > len(shape) or any(a not in (1, b) for a, b in zip(x.shape[::-1], shape[::-1], strict=False)):
        raise ValueError(
            f"{name} of shape {x.shape} does not broadcast to the attention weights' shape {shape} (..., N, T, S)."
        )


def _jax_nn_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    batch: tuple[int, ...],
    scale: float,
    is_causal: bool,
    window: tuple[int, int] | None,
    implementation: Literal["xla", "cudnn"] | None,
) -> jax.Array:
    """The fast path: ``jax.nn.dot_product_attention`` on the batch joined to one axis; rows no key attends give 0.

    jax.nn gives a row whose keys are all masked out the mean of the values,
    and a row whose bias is -inf at every key NaN, with NaN gradients. jdrop
    gives 0 with zero gradients on every path: such a row's bias is replaced
    by 0 before the call (so that nothing computed is NaN) and its output by 0 after.
    """
    # jax.nn takes bias and mask as (B or 1, N or 1, T or 1, S or 1).
    bias4, mask4 = _four_d(bias, batch)[0], _four_d(mask, batch)[0]
    if bias4 is not None and implementation != "cudnn":
        bias4 = bias4.astype(jnp.float32)  # XLA's path adds it to float32 logits, which strict promotion requires
    attended = None
    if mask4 is not None or bias4 is not None or window is not None:
        allowed = jnp.ones((1, 1, 1, 1), bool)
        if mask4 is not None:
            allowed = allowed & mask4
        if bias4 is not None:
            allowed = allowed & (bias4 > -jnp.inf)
        positions = _positions_allowed(q.shape[-3], k.shape[-3], is_causal, window)
        if positions is not None:
            allowed = allowed & positions[None, None]
        attended = jnp.any(allowed, axis=-1)  # (B or 1, N or 1, T or 1)
        if bias4 is not None:
            bias4 = jnp.where(attended[..., None], bias4, jnp.zeros((), bias4.dtype))
    out = jax.nn.dot_product_attention(
        q.reshape(-1, *q.shape[-3:]),
        k.reshape(-1, *k.shape[-3:]),
        v.reshape(-1, *v.shape[-3:]),
        bias4,
        mask4,
        scale=scale,
        is_causal=is_causal,
        local_window_size=window,
        implementation=implementation,
    )
    if attended is not None:
        out = jnp.where(jnp.swapaxes(attended, 1, 2)[..., None], out, jnp.zeros((), out.dtype))
    return out.reshape(q.shape)


def _positions_allowed(t: int, s: int, is_causal: bool, window: tuple[int, int] | None) -> jax.Array | None:
    """The (T, S) pattern that causality and the local window allow (jax.nn's conventions), or None for all."""
    if not is_causal and window is None:
        return None
    row = lax.broadcasted_iota(jnp.int32, (t, s), 0)
    col = lax.broadcasted_iota(jnp.int32, (t, s), 1)
    return _causal_and_window(jnp.ones((t, s), bool), row, col, is_causal, window)


def _causal_and_window(
    allowed: jax.Array, row: jax.Array, col: jax.Array, is_causal: bool, window: tuple[int, int] | None
) -> jax.Array:
    """``allowed`` and where query ``row`` may attend key ``col`` (jax.nn's conventions): by causality, query t
    attends keys 0..t; by the window (left, right), keys t - left .. t + right."""
    if is_causal:
        allowed = allowed & (col <= row)
    if window is not None:
        allowed = allowed & (col >= row - window[0]) & (col <= row + window[1])
    return allowed


def _tile_sizes(
    block_size: int | tuple[int, int] | None, t: int, s: int, schedule: Literal["loop", "vmap"]
) -> tuple[int, int]:
    """(queries, keys) per tile from ``block_size`` (checked), at most (T, S)."""
    default = DEFAULT_TILES[schedule]
    if block_size is None:
        q_block, k_block = default
    elif isinstance(block_size, tuple | list):
        if len(block_size) != 2:
            raise ValueError(f"block_size must be an int or a pair (queries, keys) of ints >= 1, got {block_size!r}.")
        for size in block_size:
            _check_count(size, "block_size")
        q_block, k_block = block_size
    else:
        _check_count(block_size, "block_size")
        q_block, k_block = default[0], block_size
    return min(int(q_block), max(t, 1)), min(int(k_block), max(s, 1))


def _check_counters(weights: tuple[int, ...], shared: frozenset[int]) -> None:
    """The mask's rows and columns must fit the generator's 32-bit counters."""
    mask_shape = tuple(1 if axis in shared else size for axis, size in enumerate(weights))
    if math.prod(mask_shape[:-1]) >= MAX_COUNTER or weights[-1] >= MAX_COUNTER:
        raise ValueError(
            f"the attention weights' shape {weights} is too large for the mask generator's 32-bit counters."
        )


def _pad(x: jax.Array | None, axis: int, size: int) -> jax.Array | None:
    """``x`` padded with zeros (False for a mask) to ``size`` along ``axis``, unless that axis is broadcast (1)."""
    if x is None or x.shape[axis] in (1, size):
        return x
    widths = [(0, 0)] * x.ndim
    widths[axis] = (0, size - x.shape[axis])
    return jnp.pad(x, widths)


def _four_d(x: jax.Array | None, batch: tuple[int, ...]) -> tuple[jax.Array | None, tuple[bool, bool]]:
    """A bias or mask as (B or 1, N or 1, T or 1, S or 1), batch axes joined; and whether it varies along B, N."""
    if x is None:
        return None, (False, False)
    x = x.reshape((1,) * (len(batch) + 3 - x.ndim) + x.shape)
    lead, rest = x.shape[: len(batch)], x.shape[len(batch) :]
    shared_by_batch = all(size == 1 for size in lead)
    x = x.reshape(1, *rest) if shared_by_batch else jnp.broadcast_to(x, batch + rest).reshape(-1, *rest)
    return x, (x.shape[0] != 1, x.shape[1] != 1)


def _dropout_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    *,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
    shared: frozenset[int],
    scale: float,
    is_causal: bool,
    block_size: int | tuple[int, int] | None,
    window: tuple[int, int] | None = None,
    masked_logit: float = -math.inf,
    head_seeds: bool = False,
    precision: Any = None,
    implementation: Literal["xla", "pallas"] | None = None,
) -> jax.Array:
    """The dropout path on checked inputs: what :func:`dot_product_attention` and the Flax and Equinox swaps share.

    ``implementation``: "xla" the tiles in XLA (:func:`_xla_dropout_attention`),
    "pallas" jdrop's Pallas kernels (a ``ValueError`` if they cannot take the
    call), None the kernels on GPU and TPU where they can take the call and
    the XLA tiles otherwise, chosen when the computation is lowered. The
    arguments and the values are the same on each, and so are the mask bits.
    """
    args = (q, k, v, bias, mask)
    options: dict[str, Any] = {
        "seeds": seeds,
        "threshold": threshold,
        "inv_keep": inv_keep,
        "shared": shared,
        "scale": scale,
        "is_causal": is_causal,
        "block_size": block_size,
        "window": window,
        "masked_logit": masked_logit,
        "head_seeds": head_seeds,
    }
    empty = math.prod((*q.shape[:-1], v.shape[-1])) == 0 or v.shape[-3] == 0
    if implementation == "xla" or empty:  # (the XLA path gives an empty call its zeros)
        return _xla_dropout_attention(*args, **options, precision=precision)
    from jdrop import _pallas_attention  # Pallas is imported on the first call that may use it

    reason = _pallas_unsupported(q, v, block_size, precision)
    if implementation == "pallas":
        _raise_unsupported(reason)
        return _pallas_attention.flash_attention(*args, **options)
    if reason is not None or not _pallas_by_default(*args):
        return _xla_dropout_attention(*args, **options, precision=precision)

    def kernels(platform: Literal["cuda", "tpu"], *arrays: Any) -> jax.Array:
        return _pallas_attention.flash_attention(*arrays, **options, platform=platform)

    def tiles(*arrays: Any) -> jax.Array:
        return _xla_dropout_attention(*arrays, **options, precision=precision)

    # Every branch is traced; only the lowering platform's is compiled.
    out: jax.Array = lax.platform_dependent(
        *args, cuda=functools.partial(kernels, "cuda"), tpu=functools.partial(kernels, "tpu"), default=tiles
    )
    return out


def _pallas_unsupported(q: jax.Array, v: jax.Array, block_size: Any, precision: Any) -> tuple[str, str] | None:
    """Why the Pallas kernels cannot take a call: (the argument, the reason), or None."""
    from jdrop import _pallas_attention

    return _pallas_attention.unsupported(
        block_size=block_size, head_size=q.shape[-1], value_head_size=v.shape[-1], dtype=q.dtype, precision=precision
    )


def _raise_unsupported(reason: tuple[str, str] | None) -> None:
    """The ``ValueError`` of ``implementation="pallas"`` for a call the kernels cannot take."""
    if reason is not None:
        raise ValueError(f"implementation='pallas' does not support this call's {reason[0]}: {reason[1]}.")


def _pallas_by_default(q: jax.Array, k: jax.Array, *others: jax.Array | None) -> bool:
    """Whether ``implementation=None`` may pick the Pallas kernels on GPU and TPU: where they need no gather.

    With one device; inside ``shard_map`` (whose arrays are the device's
    own); and under a mesh whose axes are all explicit (or manual) with the
    inputs split along batch axes and heads only, which the kernels keep
    (``_pallas_attention.kernel_shards``). Elsewhere with several devices the
    XLA tiles, which keep any sharding: the sharding of an ``AxisType.Auto``
    mesh or of ``jit``'s ``in_shardings`` is not in the types, and XLA would
    gather a ``pallas_call``'s inputs, which has no sharding rule.
    """
    from jdrop import _pallas_attention

    if jax.device_count() == 1:
        return True
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return False
    auto = any(mesh.shape[name] > 1 for name in mesh.auto_axes)
    if auto:
        return bool(mesh.manual_axes)
    return _pallas_attention.kernel_shards(q, k, *others) != _pallas_attention.GATHER


def _xla_dropout_attention(
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    *,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
    shared: frozenset[int],
    scale: float,
    is_causal: bool,
    block_size: int | tuple[int, int] | None,
    window: tuple[int, int] | None = None,
    masked_logit: float = -math.inf,
    head_seeds: bool = False,
    precision: Any = None,
) -> jax.Array:
    """The dropout path in XLA tiles (``implementation="xla"``).

    ``q`` (..., T, N, H), ``k`` (..., S, K, H) and ``v`` (..., S, K, Hv) of one
    dtype; ``bias`` and ``mask`` (bool) broadcastable to the weights
    (..., N, T, S); ``shared``, the weights' axes along which the dropout mask
    is shared; ``seeds`` the generator's key words (words,), or with
    ``head_seeds`` one set per head, (N, words), each head's mask then counting
    its own rows from 0; ``window``, ``masked_logit`` and ``precision`` as in :class:`_Config`.
    """
    *batch_list, t, n, h = q.shape
    s, kv_heads, hv = v.shape[-3:]
    batch = tuple(batch_list)
    if math.prod((*batch, t, n, hv)) == 0 or s == 0:  # an empty output, or no key for any row: zeros
        return jnp.zeros((*batch, t, n, hv), q.dtype)
    weights = (*batch, n, t, s)
    mask_shape = tuple(1 if axis in shared else size for axis, size in enumerate(weights))
    schedule = _schedule()
    q_block, k_block = _tile_sizes(block_size, t, s, schedule)
    t_padded, s_padded = -(-t // q_block) * q_block, -(-s // k_block) * k_block
    # Queries and keys padded to whole tiles: padded keys never attend, padded queries are cut off.
    bias4, bias_items = _four_d(_pad(_pad(bias, -1, s_padded), -2, t_padded), batch)
    mask4, mask_items = _four_d(_pad(_pad(mask, -1, s_padded), -2, t_padded), batch)
    row_strides, head_stride = _row_strides(batch, n, t, shared)
    cfg = _Config(
        scale=scale,
        is_causal=is_causal,
        window=window,
        length=s,
        q_block=q_block,
        k_block=k_block,
        mask_queries=mask_shape[-2] != 1,
        mask_columns=mask_shape[-1] != 1,
        masked_logit=masked_logit,
        precision=precision,
        # A row that no key is left to spreads its weight over all keys under a
        # finite masked_logit, causally masked ones too: then every tile counts.
        skip_causal=is_causal and (math.isinf(masked_logit) or (mask is None and window is None)),
        heads=n,
        bias_items=bias_items,
        mask_items=mask_items,
        schedule=schedule,
        # With head_seeds each head's mask is its own, from row 0.
        row_strides=() if head_seeds else row_strides,
        head_stride=0 if head_seeds else head_stride,
    )
    groups = n // kv_heads
    # Items (batch, kv head, group): q (B, K, G, nq, Tq, H), k and v (B, K, S, H). One reshape per
    # split or join, as explicit sharding of the batch and the heads follows those but not combinations.
    q4 = _pad(q, -3, t_padded).reshape(-1, t_padded, n, h)  # type: ignore[union-attr]
    q_items = q4.reshape(-1, t_padded, kv_heads, groups, h).transpose(0, 2, 3, 1, 4)
    q_items = q_items.reshape(*q_items.shape[:3], t_padded // q_block, q_block, h)

    def kv_items(x: jax.Array) -> jax.Array:
        x = _pad(x, -3, s_padded).reshape(-1, s_padded, kv_heads, x.shape[-1])  # type: ignore[union-attr]
        return x.transpose(0, 2, 1, 3)

    item_shape = (q_items.shape[0], kv_heads, groups)
    out = _attention_items(cfg, q_items, kv_items(k), kv_items(v), bias4, mask4, seeds, threshold, inv_keep)
    out = out.reshape(*item_shape, t_padded, hv).transpose(0, 3, 1, 2, 4)
    out = out.reshape(-1, t_padded, kv_heads * groups, hv)[:, :t]
    return out.reshape(*batch, t, n, hv)


def _checked_attention_inputs(
    query: ArrayLike,
    key: ArrayLike,
    value: ArrayLike,
    bias: ArrayLike | None,
    mask: ArrayLike | None,
    *,
    value_head: bool = False,
    any_mask: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None, jax.Array | None]:
    """The inputs as arrays, their shapes and dtypes checked; ``mask`` as bool.

    ``value_head``: the value's head size may differ from the key's (Flax,
    Equinox). ``any_mask``: a mask of any dtype, nonzero meaning attend (as
    Flax and Equinox read it); otherwise it must be bool.
    """
    q, k, v = (x if isinstance(x, jax.Array) else jnp.asarray(x) for x in (query, key, value))
    for name, x in (("query", q), ("key", k), ("value", v)):
        _check_floating(x, name)
    if q.ndim < 3:
        raise ValueError(f"query must have shape (..., T, N, H), got shape {q.shape}.")
    value_fits = v.shape[:-1] == k.shape[:-1] if value_head else v.shape == k.shape
    if not value_fits:
        what = "batch axes, length and heads" if value_head else "shape"
        raise ValueError(f"key and value must have the same {what} (..., S, K, H), got {k.shape} and {v.shape}.")
    if k.ndim != q.ndim or k.shape[:-3] != q.shape[:-3]:
        raise ValueError(
            f"key must have query's batch axes: query has shape {q.shape} (..., T, N, H), key {k.shape} (..., S, K, H)."
        )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(f"query and key must have the same head size H, got {q.shape[-1]} and {k.shape[-1]}.")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"query, key and value must have the same dtype, got {q.dtype}, {k.dtype} and {v.dtype}.")
    *batch, t, n, _ = q.shape
    kv_heads = k.shape[-2]
    if kv_heads == 0 or n % kv_heads:
        raise ValueError(f"query's heads N={n} must be a multiple of key's and value's heads K={kv_heads}.")
    weights = (*batch, n, t, k.shape[-3])
    if bias is not None:
        bias = bias if isinstance(bias, jax.Array) else jnp.asarray(bias)
        _check_floating(bias, "bias")
        _check_broadcastable(bias, weights, "bias")
    if mask is not None:
        mask = mask if isinstance(mask, jax.Array) else jnp.asarray(mask)
        if any_mask and mask.dtype != jnp.bool_:
            if not (jnp.issubdtype(mask.dtype, jnp.number)):
                raise TypeError(f"mask must be a bool or numeric array (nonzero means attend), got dtype {mask.dtype}.")
            mask = mask != 0
        if mask.dtype != jnp.bool_:
            raise TypeError(f"mask must be a bool array (True means attend), got dtype {mask.dtype}.")
        _check_broadcastable(mask, weights, "mask")
    return q, k, v, bias, mask


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
    query_seq_lengths: ArrayLike | None = None,
    key_value_seq_lengths: ArrayLike | None = None,
    local_window_size: int | tuple[int, int] | None = None,
    deterministic: bool = False,
    block_size: int | tuple[int, int] | None = None,
    implementation: Literal["xla", "cudnn", "pallas"] | None = None,
) -> jax.Array:
    r"""Scaled dot-product attention with dropout on the attention weights, computed in blocks of keys.

    Exactly, up to float rounding, the result is

    .. code-block:: python

        w = softmax(scale * einsum("...tnh,...snh->...nts", q, k) + bias, where=allowed)
        out = einsum(
            "...nts,...snh->...tnh",
            jdrop.dropout(dropout_key, w, keep_prob, broadcast_dims=broadcast_dims),
            v,
        )

    with key/value head ``n // (N // K)`` for query head ``n``, where
    ``allowed`` combines ``mask``, ``is_causal``, ``local_window_size`` and
    ``key_value_seq_lengths``, and the rows of queries at or beyond
    ``query_seq_lengths`` give 0. The dropout
    mask is ``jdrop.dropout_mask(dropout_key, s, keep_prob)`` for ``s`` the
    weights' shape (..., N, T, S) with 1 at ``broadcast_dims``, the same for
    every ``block_size`` and every sharding, because each block computes its
    entries from their positions (row: the row-major index over (..., N, T);
    column: the key's index). With explicit sharding in types
    (``AxisType.Explicit``, ``jax.make_mesh``'s default) the dropout path
    takes inputs sharded along the batch and the heads (the Pallas kernels
    then run on each device's own items, with no collective); inputs sharded
    along T or S need an ``AxisType.Auto`` mesh (its contractions over T and
    S have no ``out_sharding``), or ``implementation="pallas"``, which
    gathers them (except for the gradient of a bias split along T or S).

    The weights are never held for all keys at once: an online softmax
    (running maximum and sum, as FlashAttention) runs over tiles of queries
    and keys, and the backward pass (a ``jax.custom_vjp``) recomputes each
    tile's weights from ``query``, ``key`` and two saved statistics per row
    and regenerates its dropout mask, so the residuals are the inputs, the
    output and those statistics: O(T N (H + 2)) per batch element. With
    ``is_causal`` the tiles above the diagonal are skipped. Every loop has a
    static trip count, so reverse-over-reverse derivatives (``jax.hessian``,
    gradient penalties) work. Softmax statistics are float32; products take
    the inputs' dtype with float32 accumulation, as
    ``jax.nn.dot_product_attention``. Forward-mode differentiation
    (``jax.jvp``, ``jax.jacfwd``) of the dropout path is not supported by its
    ``custom_vjp``.

    **Rows that no key can attend** give 0, with zero gradients, on every path
    and in training and evaluation alike, however the row was emptied: by
    ``mask``, by a ``bias`` that is -inf at every allowed key, by causality, by
    the local window or by ``key_value_seq_lengths``.
    ``jax.nn.dot_product_attention`` gives the mean of the values (masked
    rows) or NaN (a -inf bias) there.

    With dropout off (``deterministic=True`` or the concrete ``keep_prob``
    1.0) this calls ``jax.nn.dot_product_attention`` with the same arguments
    (``implementation="cudnn"`` selects cuDNN's fused kernel on GPU), with the
    rule above for rows that no key can attend; ``implementation="pallas"``
    runs jdrop's kernels without a mask instead.

    On GPU and TPU the dropout path runs jdrop's own flash-attention kernels
    (Pallas; ``implementation`` below), with the mask hashed inside the kernel
    from each weight's position: the same bits as the XLA tiles and
    ``jdrop.dropout``. The kernels compute values and first derivatives;
    second and higher derivatives (reverse over reverse) are computed by the
    XLA tiles, with the same mask bits.

    The arguments are ``jax.nn.dot_product_attention``'s, with any number of
    batch axes, plus the dropout's (``dropout_key``, ``keep_prob``,
    ``broadcast_dims``, ``deterministic``) and ``block_size``; its
    ``return_residual`` is not supported.

    Args:
      query: (..., T, N, H) floating array; any number of leading batch axes.
      key: (..., S, K, H) array of ``query``'s dtype and batch axes; N must be a multiple of K.
      value: array of ``key``'s shape and dtype.
      bias: optional floating array broadcastable to (..., N, T, S), added to the scaled logits.
      mask: optional bool array broadcastable to (..., N, T, S); True means attend.
      dropout_key: a PRNG key; needed unless dropout is off, checked whenever given. A fresh one per call.
      keep_prob: probability of keeping an attention weight, in (0, 1]. A
        traced scalar does not recompile; a traced value outside [0, 1] gives NaN.
      broadcast_dims: axes of the weights' shape (..., N, T, S) along which
        the dropout mask is shared, e.g. ``(-3,)`` for one mask for all heads.
      is_causal: if True, query ``t`` attends keys ``0..t`` (``jax.nn``'s convention).
      scale: the logits' scale; defaults to ``1 / sqrt(H)``.
      query_seq_lengths: optional integer array of the batch axes' shape
        (...): the queries at or beyond it give 0.
      key_value_seq_lengths: optional integer array of the batch axes' shape
        (...): the keys at or beyond it are not attended.
      local_window_size: optional ``(left, right)`` of ints >= 0, or one int
        for both: query ``t`` attends keys ``t - left .. t + right``.
      deterministic: if True, no dropout (evaluation).
      block_size: keys per tile (an int), or a pair (queries, keys) per tile,
        each at least 1; None picks (1024, 512) on one CPU device and
        (128, 128) elsewhere, at most (T, S). Only memory and speed depend on it.
      implementation: with dropout on, ``"pallas"`` runs jdrop's Pallas
        kernels (Triton on GPU, Mosaic on TPU, Pallas's interpreter on CPU,
        for tests), ``"xla"`` and ``"cudnn"`` jdrop's XLA tiles, and None
        the kernels on GPU and TPU for every call they take without a
        gather (with one device, inside ``shard_map``, or under an explicit
        mesh that splits the inputs along batch axes and heads only, each
        device on its own items) and the XLA tiles otherwise (an
        ``AxisType.Auto`` mesh, ``jit``'s ``in_shardings``), on CPU always:
        chosen when the computation is lowered, so one traced function
        lowers to each. All draw the same mask bits. With dropout off,
        ``"pallas"`` runs the kernels without a mask, and the others are
        passed to ``jax.nn.dot_product_attention``.

    Returns:
      The attention output, of ``query``'s shape and dtype. An empty output
      (a zero-size batch, T, N or H), or S = 0, gives zeros, as ``jax.nn``.

    Raises:
      ValueError: if the shapes do not fit (lengths, head sizes, batch axes,
        N not a multiple of K, a ``bias``, ``mask`` or sequence lengths that do
        not fit), ``block_size`` or ``local_window_size`` is out of range, a
        concrete ``keep_prob`` is outside (0, 1], an axis of ``broadcast_dims``
        is out of range, ``dropout_key`` is missing while dropout is on, or
        ``implementation="pallas"`` is given a call the kernels do not take
        (a head size above 256, float64, tiles that are not powers of two
        from 16); the message names the argument.
      TypeError: if an input is not floating (``mask``: not bool; sequence
        lengths: not integer), the dtypes of ``query``, ``key`` and ``value``
        differ, or an argument has the wrong type.

    Example:
      >>> import jax
      >>> import jax.numpy as jnp
      >>> import jdrop
      >>> q = jnp.ones((2, 5, 4, 8))  # (batch, T, N, H)
      >>> # (batch, S, K, H): two query heads per key/value head
      >>> kv = jnp.ones((2, 7, 2, 8))
      >>> out = jdrop.dot_product_attention(
      ...     q, kv, kv, dropout_key=jax.random.key(0), keep_prob=0.9
      ... )
      >>> out.shape
      (2, 5, 4, 8)
    """
    q, k, v, bias, mask = _checked_attention_inputs(query, key, value, bias, mask)
    *batch_list, t, n, h = q.shape
    s = k.shape[-3]
    batch = tuple(batch_list)
    weights = (*batch, n, t, s)
    if not isinstance(is_causal, bool | np.bool_):
        raise TypeError(f"is_causal must be a Python bool, got {type(is_causal).__name__}.")
    if scale is None:
        scale_value = 1.0 / math.sqrt(h) if h else 1.0  # H = 0: no logit to scale
    else:
        scale_value = _real_scalar(scale, "scale", "a real number")  # type: ignore[assignment]
        if scale_value is None:
            raise TypeError("scale must be a concrete real number (it is static), got a traced value.")
    query_lengths = _check_seq_lengths(query_seq_lengths, batch, "query_seq_lengths")
    key_lengths = _check_seq_lengths(key_value_seq_lengths, batch, "key_value_seq_lengths")
    window = _check_window(local_window_size)
    if block_size is not None:
        _tile_sizes(block_size, t, s, "loop")  # checked now, before any work
    if implementation not in (None, "xla", "cudnn", "pallas"):
        raise ValueError(f"implementation must be None, 'xla', 'cudnn' or 'pallas', got {implementation!r}.")
    switched_off = _check_deterministic(deterministic)
    concrete_keep_prob = _check_keep_prob(keep_prob)
    shared = _check_broadcast_dims(broadcast_dims, len(weights), of="the attention weights (..., N, T, S)")
    _key_if_given(dropout_key, "dropout_key")
    dropout_on = not (switched_off or concrete_keep_prob == 1.0)
    typed_key = _as_key(dropout_key, "dropout_key", or_else=OR_DETERMINISTIC) if dropout_on else None
    if key_lengths is not None:  # keys at or beyond the length: a (..., 1, 1, S) mask, no (T, S) array
        keys = lax.broadcasted_iota(key_lengths.dtype, (*batch, s), len(batch))
        attend = (keys < key_lengths[..., None])[..., None, None, :]
        mask = attend if mask is None else mask.reshape((1,) * (len(weights) - mask.ndim) + mask.shape) & attend
    if math.prod((*batch, t, n, h)) == 0 or s == 0:  # an empty output, or no key for any row: zeros, as jax.nn
        return jnp.zeros(q.shape, q.dtype)
    if typed_key is None:  # dropout off
        if implementation == "pallas":  # the kernels with no mask at all
            from jdrop import _pallas_attention

            _raise_unsupported(_pallas_unsupported(q, v, block_size, None))
            out = _pallas_attention.flash_attention(
                q,
                k,
                v,
                bias,
                mask,
                seeds=jnp.zeros((2 + ROUNDS,), jnp.uint32),
                threshold=jnp.uint32(0),
                inv_keep=jnp.float32(1.0),
                shared=frozenset(),
                scale=float(scale_value),
                is_causal=bool(is_causal),
                block_size=block_size,
                window=window,
                masked_logit=-math.inf,
                head_seeds=False,
                dropout=False,
            )
        else:
            out = _jax_nn_attention(q, k, v, bias, mask, batch, scale_value, bool(is_causal), window, implementation)
    else:
        _check_counters(weights, shared)
        threshold, effective = _threshold_and_effective(keep_prob)
        out = _dropout_attention(
            q,
            k,
            v,
            bias,
            mask,
            seeds=seeds_of(typed_key),  # the only draw from dropout_key
            threshold=threshold,
            inv_keep=1.0 / jnp.where(effective == 0.0, jnp.float32(1.0), effective),  # a traced 0.0 drops everything
            shared=shared,
            scale=float(scale_value),
            is_causal=bool(is_causal),
            block_size=block_size,
            window=window,
            # "cudnn" keeps the XLA tiles, as before: cuDNN's kernel has no mask of jdrop's.
            implementation={"cudnn": "xla"}.get(implementation, implementation),  # type: ignore[arg-type]
        )
    if query_lengths is not None:  # queries at or beyond the length give 0, as in jax.nn
        valid = lax.broadcasted_iota(query_lengths.dtype, (*batch, t), len(batch)) < query_lengths[..., None]
        out = jnp.where(valid[..., None, None], out, jnp.zeros((), out.dtype))
    return out


def _check_seq_lengths(lengths: ArrayLike | None, batch: tuple[int, ...], name: str) -> jax.Array | None:
    """Sequence lengths as an integer array of the batch axes' shape, or None."""
    if lengths is None:
        return None
    array = lengths if isinstance(lengths, jax.Array) else jnp.asarray(lengths)
    if not jnp.issubdtype(array.dtype, jnp.integer):
        raise TypeError(f"{name} must be an integer array, got dtype {array.dtype}.")
    if array.shape != batch:
        raise ValueError(f"{name} must have the batch axes' shape {batch}, got shape {array.shape}.")
    return array


def _check_window(local_window_size: object) -> tuple[int, int] | None:
    """``local_window_size`` as (left, right) ints >= 0 (one int for both), or None."""
    if local_window_size is None:
        return None
    sizes = local_window_size if isinstance(local_window_size, tuple | list) else (local_window_size,) * 2
    if len(sizes) != 2 or not all(
        isinstance(size, numbers.Integral) and not isinstance(size, bool) and int(size) >= 0 for size in sizes
    ):
        raise ValueError(
            f"local_window_size must be an int >= 0 or a pair (left, right) of ints >= 0, got {local_window_size!r}."
        )
    return int(sizes[0]), int(sizes[1])
