r"""jdrop's flash-attention kernels in Pallas: dropout on the weights, its mask generated inside the kernel.

The kernels compute what :func:`jdrop._attention._dropout_attention` computes
(the tiled XLA path), FlashAttention-2's way: the forward kernel runs an
online softmax over key tiles and saves the output and two float32 statistics
per row (the softmax's shift and reciprocal sum); the backward pass recomputes
each tile's weights from them, in one kernel for the query gradient (a program
per query tile, looping over key tiles) and one for the key and value
gradients (a program per key tile, looping over query tiles). Nothing of size
T x S is stored, except the gradient of a bias that is differentiated.

The dropout mask of a tile is the generator's hash of its (row, column)
counters, the same counters as :func:`jdrop._attention._tile_keep`'s: rows
count (batch, head, query) row-major over the mask's shape, columns count keys
from 0. The kernels therefore draw exactly the bits that ``jdrop.dropout``
draws on the materialised weights, for every tile size and on every platform.

One kernel body serves three lowerings, picked when the computation is lowered
(:func:`jax.lax.platform_dependent`), not when it is traced: Triton on GPU,
Mosaic on TPU, and Pallas's interpreter on CPU (for tests). Layouts:

- ``q`` (B N, Tp, Hp), ``k`` and ``v`` (B K, Sp, Hp): one row of the leading
  axis per (batch, head) item, padded to whole tiles and to a power-of-two
  head size (Triton's rule; zero columns change no logit and no output).
- a bias or mask as (Bb Nb, nk, Tb, kb): each of Bb, Nb, Tb the axis's size or
  1 (broadcast), and the keys split into ``nk`` tiles of ``kb`` (or one of 1),
  so that a kernel takes a key tile with a dynamic index on a leading axis.
- the generator's words, (words,) uint32: per head (or one set), the five key
  words and the threshold; on TPU in SMEM. ``1 / keep`` is a (1,) float32.

The grid is (items, tiles): two axes, so that one ``vmap`` of a call (which
adds a grid axis) still fits Triton's three.

Under an explicit mesh that splits the inputs along batch axes and heads, the
kernels run in ``shard_map`` on each device's items; an item's first mask row
is then its global one (the device's offset, from ``axis_index``, in the word
array), so the bits do not depend on the sharding.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from jdrop._attention import _causal_and_window, _row_strides
from jdrop._generator import ROUNDS, _mix32

__all__ = ["flash_attention", "unsupported"]

Platform = Literal["cpu", "cuda", "tpu"]

#: Generator words per head in the kernels' word array: the 2 + ROUNDS key words, the threshold, padding.
WORDS = 8
THRESHOLD = 2 + ROUNDS  # where the threshold sits among a head's words
ROW_OFFSET = THRESHOLD + 1  # in the first set: the shard's first mask row (0 unsharded), added to each item's
#: Tile sizes when ``block_size`` is None: (queries, keys), at most the padded lengths.
DEFAULT_BLOCKS = (128, 128)
#: The smallest tile: Triton's dot wants at least 16 along each axis.
MIN_BLOCK = 16
#: The largest head size the kernels take (after padding to a power of two).
MAX_HEAD = 256


class Kernel(NamedTuple):
    """The static part of a call: hashable, so a ``custom_vjp``'s non-differentiable argument."""

    scale: float
    is_causal: bool
    window: tuple[int, int] | None
    length: int  # S before padding: keys at or beyond it never attend
    q_block: int
    k_block: int
    heads: int  # N: item bn is (batch bn // N, head bn % N)
    groups: int  # N // K: query head n uses key/value head n // groups
    mask_queries: bool  # False when the dropout mask is shared across queries
    mask_columns: bool  # False when it is shared across keys (every column counter 0)
    masked_logit: float  # -inf (jdrop), or Flax's finite finfo.min
    skip_causal: bool  # key tiles past a query tile's diagonal are not visited
    row_strides: tuple[tuple[int, int, int], ...]  # as _attention._Config: an item's first mask row
    head_stride: int
    head_seeds: bool  # the words hold one set per head (Equinox)
    sharded: bool  # the items are one device's shard: their first rows add the words' ROW_OFFSET
    dropout: bool  # False: no mask at all (the kernels without dropout, for comparison)
    # Per bias and mask: whether it varies along (batch, head, query, key); None when absent.
    bias_layout: tuple[bool, bool, bool, bool] | None
    mask_layout: tuple[bool, bool, bool, bool] | None
    bias_grad: bool  # whether the backward pass computes the bias's gradient
    platform: Platform | None  # the lowering, or None: chosen when lowered


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def blocks_and_head(
    block_size: int | tuple[int, int] | None, t: int, s: int, h: int, hv: int
) -> tuple[int, int, int, int]:
    """(queries per tile, keys per tile, padded head size, padded value head size) for the kernels.

    Tiles are powers of two from 16 to the default (or ``block_size``), at
    most the lengths rounded up to a power of two; head sizes are padded to
    a power of two of at least 16. The default halves the query tile for
    head sizes above 128, whose tiles would otherwise fill a GPU's registers
    (a guess from the sizes, not a measurement: no GPU has run the kernels).
    """
    h_padded, hv_padded = max(MIN_BLOCK, _next_power_of_two(h)), max(MIN_BLOCK, _next_power_of_two(hv))
    if block_size is None:
        q_block, k_block = DEFAULT_BLOCKS
        if max(h_padded, hv_padded) > 128:
            q_block //= 2
    elif isinstance(block_size, tuple | list):
        q_block, k_block = (int(size) for size in block_size)
    else:
        q_block, k_block = DEFAULT_BLOCKS[0], int(block_size)
    q_block = max(MIN_BLOCK, min(q_block, _next_power_of_two(t)))
    k_block = max(MIN_BLOCK, min(k_block, _next_power_of_two(s)))
    return q_block, k_block, h_padded, hv_padded


def unsupported(
    *,
    block_size: int | tuple[int, int] | None,
    head_size: int,
    value_head_size: int,
    dtype: Any,
    precision: Any,
) -> tuple[str, str] | None:
    """Why the kernels cannot take a call: (the argument, the reason), or None when they can."""
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return "query", f"the Pallas kernels take float32, bfloat16 and float16 inputs, not {jnp.dtype(dtype)}"
    if max(head_size, value_head_size) > MAX_HEAD:
        return "query", f"the Pallas kernels take head sizes up to {MAX_HEAD}, got {head_size} and {value_head_size}"
    if precision is not None:
        return "precision", f"the Pallas kernels take the default precision only, got {precision!r}"
    if block_size is not None:
        sizes = block_size if isinstance(block_size, tuple | list) else (block_size,)
        for size in sizes:
            size = int(size)
            if size < MIN_BLOCK or size & (size - 1):
                return (
                    "block_size",
                    f"the Pallas kernels take tiles of powers of two >= {MIN_BLOCK}, got {block_size!r}",
                )
    return None


# --- The mask inside the kernel ---------------------------------------------------------------------


def _row_hash(seeds: tuple[jax.Array, ...], row: jax.Array) -> jax.Array:
    """:math:`a = m(row \\oplus s_0)`: once per tile row, shared by the tile's columns."""
    return _mix32(row ^ seeds[0])


def _col_hash(seeds: tuple[jax.Array, ...], col: jax.Array) -> jax.Array:
    """:math:`b = m(col \\oplus s_1)`: once per tile column, shared by the tile's rows."""
    return _mix32(col ^ seeds[1])


def _uniform16(seeds: tuple[jax.Array, ...], row_hash: jax.Array, col_hash: jax.Array) -> jax.Array:
    """The generator's 16-bit uniform (``hash16``) from a row's and a column's hashes: per weight.

    The last round's final xor-shift, ``x ^ (x >> 16)``, leaves the top 16
    bits of ``x`` unchanged, so it is left out: the uniform is the same.
    Per weight: 1 add, then per round 1 xor with a key word, 2 multiplies and
    3 xor-shifts (2 in the last round), then the shift to 16 bits.
    """
    h = row_hash + col_hash
    for i in range(ROUNDS - 1):
        h = _mix32(h ^ seeds[2 + i])
    h = h ^ seeds[1 + ROUNDS]
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x7FEB352D)
    h = h ^ (h >> 15)
    h = h * jnp.uint32(0x846CA68B)
    uniform: jax.Array = h >> 16
    return uniform


def _item_words(cfg: Kernel, words_ref: Any, n: jax.Array) -> tuple[tuple[jax.Array, ...], jax.Array]:
    """An item's key words and threshold, scalars read from the word array."""
    base = n * WORDS if cfg.head_seeds else 0
    seeds = tuple(words_ref[base + i] for i in range(2 + ROUNDS))
    return seeds, words_ref[base + THRESHOLD]


def _first_row(cfg: Kernel, words_ref: Any, b: jax.Array, n: jax.Array) -> jax.Array:
    """Item (``b``, ``n``)'s first mask row, as ``_attention._item_context`` computes it (uint32, wrapping).

    On a shard, (``b``, ``n``) are the device's own indices and the strides
    the global ones; the shard's offset (its first item's first row) is added.
    """
    row0: jax.Array = n.astype(jnp.uint32) * jnp.uint32(cfg.head_stride)
    if cfg.sharded:
        row0 = row0 + words_ref[ROW_OFFSET]
    for divisor, size, stride in cfg.row_strides:
        position = lax.rem(lax.div(b, jnp.int32(divisor)), jnp.int32(size))
        row0 = row0 + position.astype(jnp.uint32) * jnp.uint32(stride)
    return row0


def _rows(cfg: Kernel, row0: jax.Array, q_start: jax.Array, size: int) -> jax.Array:
    """The mask's row counters of ``size`` queries from ``q_start``: (size, 1), or (1, 1) when shared."""
    if not cfg.mask_queries:
        return jnp.full((1, 1), row0, jnp.uint32)
    return row0 + (q_start + lax.broadcasted_iota(jnp.int32, (size, 1), 0)).astype(jnp.uint32)


def _cols(cfg: Kernel, k_start: jax.Array, size: int) -> jax.Array:
    """The mask's column counters of ``size`` keys from ``k_start``: (1, size), or (1, 1) zeros when shared."""
    if not cfg.mask_columns:
        return jnp.zeros((1, 1), jnp.uint32)
    return (k_start + lax.broadcasted_iota(jnp.int32, (1, size), 1)).astype(jnp.uint32)


# --- Shared pieces of the kernels -----------------------------------------------------------------


def _item(cfg: Kernel, bn: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(batch, head) of flat item ``bn``; ``lax.div`` rather than ``//``, which Mosaic lowers without a chip."""
    return lax.div(bn, jnp.int32(cfg.heads)), lax.rem(bn, jnp.int32(cfg.heads))


def _row_tile(ref: Any, layout: tuple[bool, bool, bool, bool] | None, j: jax.Array) -> jax.Array | None:
    """Key tile ``j`` of a bias or mask block of one query tile, (nk, Tq or 1, kb): (Tq or 1, kb)."""
    if ref is None or layout is None:
        return None
    tile: jax.Array = ref[j if layout[3] else 0]
    return tile


def _column_tile(
    ref: Any, layout: tuple[bool, bool, bool, bool] | None, q_start: jax.Array, size: int
) -> jax.Array | None:
    """Query tile ``[q_start, q_start + size)`` of a bias or mask block of one key tile, (1, T or 1, kb)."""
    if ref is None or layout is None:
        return None
    tile: jax.Array = ref[0, pl.ds(q_start, size), :] if layout[2] else ref[0]
    return tile


def _logits(
    cfg: Kernel,
    q: jax.Array,
    k: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    q_start: jax.Array,
    k_start: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """A tile's float32 logits (Tq, Sk), ``cfg.masked_logit`` where not attended, and where attended.

    What ``_attention._tile_logits`` computes; padded keys are -inf.
    """
    tq, sk = q.shape[0], k.shape[0]
    logits = lax.dot_general(q, k, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    logits = logits * jnp.float32(cfg.scale)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    col = k_start + lax.broadcasted_iota(jnp.int32, (1, sk), 1)
    inside = col < cfg.length
    allowed = inside
    if mask is not None:
        allowed = allowed & (mask != 0)
    row = q_start + lax.broadcasted_iota(jnp.int32, (tq, 1), 0)
    allowed = _causal_and_window(allowed, row, col, cfg.is_causal, cfg.window)
    logits = jnp.where(allowed, logits, jnp.float32(cfg.masked_logit))
    if not math.isinf(cfg.masked_logit):
        logits = jnp.where(inside, logits, -jnp.inf)
    return logits, jnp.broadcast_to(allowed, logits.shape)


def _key_tiles_upto(cfg: Kernel, i: jax.Array, num_key_tiles: int) -> jax.Array | int:
    """How many key tiles query tile ``i`` visits: all, or with ``skip_causal`` those up to its diagonal."""
    if not cfg.skip_causal:
        return num_key_tiles
    last_query = (i + 1) * cfg.q_block - 1
    return jnp.minimum(lax.div(last_query, jnp.int32(cfg.k_block)) + 1, num_key_tiles)


def _first_query_tile(cfg: Kernel, j: jax.Array) -> jax.Array | int:
    """The first query tile that key tile ``j`` matters to: 0, or with ``skip_causal`` the one at its diagonal."""
    if not cfg.skip_causal:
        return 0
    return lax.div(j * cfg.k_block, jnp.int32(cfg.q_block))


def _dot(a: jax.Array, b: jax.Array, contract: tuple[int, int]) -> jax.Array:
    """A 2-D product contracting ``a``'s axis ``contract[0]`` with ``b``'s ``contract[1]``, accumulated in float32."""
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(a, b, dims, preferred_element_type=jnp.float32)


# --- The kernels ----------------------------------------------------------------------------------


def _split_refs(cfg: Kernel, refs: tuple[Any, ...]) -> tuple[Any, Any, tuple[Any, ...]]:
    """(bias ref or None, mask ref or None, the rest) from a kernel's refs after q, k and v."""
    rest = list(refs)
    bias_ref = rest.pop(0) if cfg.bias_layout is not None else None
    mask_ref = rest.pop(0) if cfg.mask_layout is not None else None
    return bias_ref, mask_ref, tuple(rest)


def _forward_kernel(
    cfg: Kernel, words_ref: Any, inv_keep_ref: Any, q_ref: Any, k_ref: Any, v_ref: Any, *refs: Any
) -> None:
    """One query tile of one item: its output rows and their softmax statistics."""
    bias_ref, mask_ref, (out_ref, shift_ref, inv_total_ref) = _split_refs(cfg, refs)
    bn, i = pl.program_id(0), pl.program_id(1)
    b, n = _item(cfg, bn)
    tq, tk = cfg.q_block, cfg.k_block
    q_start = i * tq
    q = q_ref[...]
    if cfg.dropout:
        seeds, threshold = _item_words(cfg, words_ref, n)
        inv_keep = inv_keep_ref[0]
        row_hash = _row_hash(seeds, _rows(cfg, _first_row(cfg, words_ref, b, n), q_start, tq))  # once per query tile

    def key_tile(j: jax.Array, carry: tuple[jax.Array, jax.Array, jax.Array]) -> tuple[jax.Array, ...]:
        acc, running_max, total = carry
        k_start = pl.multiple_of(j * tk, tk)
        bias, mask = _row_tile(bias_ref, cfg.bias_layout, j), _row_tile(mask_ref, cfg.mask_layout, j)
        logits, _ = _logits(cfg, q, k_ref[pl.ds(k_start, tk), :], bias, mask, q_start, k_start)
        new_max = jnp.maximum(running_max, logits.max(axis=1, keepdims=True))
        # -inf while every key so far is masked: subtract 0, so that exp gives 0 rather than NaN.
        shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
        p = jnp.exp(logits - shift)
        rescale = jnp.exp(running_max - shift)
        total = total * rescale + p.sum(axis=1, keepdims=True)  # the denominator is taken before dropout
        if cfg.dropout:
            keep = _uniform16(seeds, row_hash, _col_hash(seeds, _cols(cfg, k_start, tk))) < threshold
            p = jnp.where(keep, p * inv_keep, 0.0)
        v = v_ref[pl.ds(k_start, tk), :]
        return acc * rescale + _dot(p.astype(v.dtype), v, (1, 0)), new_max, total

    stats = jnp.zeros((tq, 1), jnp.float32)
    init = (jnp.zeros((tq, out_ref.shape[-1]), jnp.float32), stats - jnp.inf, stats)
    acc, running_max, total = lax.fori_loop(0, _key_tiles_upto(cfg, i, k_ref.shape[0] // tk), key_tile, init)
    attended = total > 0.0  # False for a row with no key left: its output is 0
    inv_total = jnp.where(attended, 1.0 / jnp.where(attended, total, 1.0), 0.0)
    out_ref[...] = (acc * inv_total).astype(out_ref.dtype)
    shift_ref[...] = jnp.where(running_max == -jnp.inf, 0.0, running_max)
    inv_total_ref[...] = inv_total


def _weights_and_grad(
    cfg: Kernel,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    d_out: jax.Array,
    shift: jax.Array,
    inv_total: jax.Array,
    delta: jax.Array,
    keep: jax.Array | None,
    inv_keep: jax.Array | None,
    bias: jax.Array | None,
    mask: jax.Array | None,
    q_start: jax.Array,
    k_start: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    """A tile's weights after dropout and its logits' gradient (Tq, Sk), both float32: ``_item_backward``'s."""
    logits, allowed = _logits(cfg, q, k, bias, mask, q_start, k_start)
    p = jnp.exp(logits - shift) * inv_total  # the weights, before dropout
    d_p = _dot(d_out, v, (1, 1))
    if keep is not None and inv_keep is not None:
        w = jnp.where(keep, p * inv_keep, 0.0)
        d_p = jnp.where(keep, d_p * inv_keep, 0.0)
    else:
        w = p
    d_logits = p * (d_p - delta)  # the softmax's backward
    if not math.isinf(cfg.masked_logit):  # masked keys of a fully masked row have weight but no gradient
        d_logits = jnp.where(allowed, d_logits, 0.0)
    return w, d_logits


def _dq_kernel(
    cfg: Kernel,
    words_ref: Any,
    inv_keep_ref: Any,
    q_ref: Any,
    k_ref: Any,
    v_ref: Any,
    d_out_ref: Any,
    shift_ref: Any,
    inv_total_ref: Any,
    delta_ref: Any,
    *refs: Any,
) -> None:
    """One query tile of one item: its query gradient (and its bias gradient's tiles, if wanted)."""
    bias_ref, mask_ref, outs = _split_refs(cfg, refs)
    dq_ref = outs[0]
    d_bias_ref = outs[1] if cfg.bias_grad else None
    bn, i = pl.program_id(0), pl.program_id(1)
    b, n = _item(cfg, bn)
    tq, tk = cfg.q_block, cfg.k_block
    q_start = i * tq
    q, d_out = q_ref[...], d_out_ref[...]
    shift, inv_total, delta = shift_ref[...], inv_total_ref[...], delta_ref[...]
    inv_keep = None
    if cfg.dropout:
        seeds, threshold = _item_words(cfg, words_ref, n)
        inv_keep = inv_keep_ref[0]
        row_hash = _row_hash(seeds, _rows(cfg, _first_row(cfg, words_ref, b, n), q_start, tq))

    def key_tile(j: jax.Array, dq: jax.Array) -> jax.Array:
        k_start = pl.multiple_of(j * tk, tk)
        k = k_ref[pl.ds(k_start, tk), :]
        v = v_ref[pl.ds(k_start, tk), :]
        keep = None
        if cfg.dropout:
            keep = _uniform16(seeds, row_hash, _col_hash(seeds, _cols(cfg, k_start, tk))) < threshold
        bias, mask = _row_tile(bias_ref, cfg.bias_layout, j), _row_tile(mask_ref, cfg.mask_layout, j)
        _, d_logits = _weights_and_grad(
            cfg, q, k, v, d_out, shift, inv_total, delta, keep, inv_keep, bias, mask, q_start, k_start
        )
        if d_bias_ref is not None:
            d_bias_ref[j] = d_logits
        return dq + _dot(d_logits.astype(k.dtype), k, (1, 0))

    num_key_tiles = k_ref.shape[0] // tk
    if d_bias_ref is not None and cfg.skip_causal:
        # Tiles past the diagonal are not visited: their gradient is 0 (written here, as outputs start undefined).
        def zero_tile(j: jax.Array, carry: None) -> None:
            d_bias_ref[j] = jnp.zeros((tq, tk), jnp.float32)

        lax.fori_loop(0, num_key_tiles, zero_tile, None)
    dq = lax.fori_loop(0, _key_tiles_upto(cfg, i, num_key_tiles), key_tile, jnp.zeros(q.shape, jnp.float32))
    dq_ref[...] = dq * jnp.float32(cfg.scale)


def _dkv_kernel(
    cfg: Kernel,
    words_ref: Any,
    inv_keep_ref: Any,
    q_ref: Any,
    k_ref: Any,
    v_ref: Any,
    d_out_ref: Any,
    shift_ref: Any,
    inv_total_ref: Any,
    delta_ref: Any,
    *refs: Any,
) -> None:
    """One key tile for one query head: that head's share of the tile's key and value gradients."""
    bias_ref, mask_ref, (dk_ref, dv_ref) = _split_refs(cfg, refs)
    bn, j = pl.program_id(0), pl.program_id(1)
    b, n = _item(cfg, bn)
    tq, tk = cfg.q_block, cfg.k_block
    k_start = j * tk
    k, v = k_ref[...], v_ref[...]
    inv_keep = None
    if cfg.dropout:
        seeds, threshold = _item_words(cfg, words_ref, n)
        inv_keep = inv_keep_ref[0]
        row0 = _first_row(cfg, words_ref, b, n)
        col_hash = _col_hash(seeds, _cols(cfg, k_start, tk))  # once per key tile

    def query_tile(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        dk, dv = carry
        q_start = pl.multiple_of(i * tq, tq)
        rows = pl.ds(q_start, tq)
        q, d_out = q_ref[rows, :], d_out_ref[rows, :]
        keep = None
        if cfg.dropout:
            keep = _uniform16(seeds, _row_hash(seeds, _rows(cfg, row0, q_start, tq)), col_hash) < threshold
        w, d_logits = _weights_and_grad(
            cfg,
            q,
            k,
            v,
            d_out,
            shift_ref[rows, :],
            inv_total_ref[rows, :],
            delta_ref[rows, :],
            keep,
            inv_keep,
            _column_tile(bias_ref, cfg.bias_layout, q_start, tq),
            _column_tile(mask_ref, cfg.mask_layout, q_start, tq),
            q_start,
            k_start,
        )
        dv = dv + _dot(w.astype(d_out.dtype), d_out, (0, 0))
        dk = dk + _dot(d_logits.astype(q.dtype), q, (0, 0))
        return dk, dv

    init = (jnp.zeros(k.shape, jnp.float32), jnp.zeros(v.shape, jnp.float32))
    dk, dv = lax.fori_loop(_first_query_tile(cfg, j), q_ref.shape[0] // tq, query_tile, init)
    dk_ref[...] = dk * jnp.float32(cfg.scale)
    dv_ref[...] = dv


# --- The calls, one per platform ------------------------------------------------------------------


def _shape(shape: tuple[int, ...], dtype: Any) -> jax.ShapeDtypeStruct:
    """A kernel output's shape and dtype."""
    return jax.ShapeDtypeStruct(shape, dtype)  # type: ignore[no-untyped-call]


def _compiler_params(platform: Platform, head: int) -> Any:
    """Triton's warps and stages on GPU; on TPU, every grid axis parallel (each program writes its own blocks).

    One pipeline stage for head sizes above 128: two stages of 128-key tiles of
    256 columns would need more than an H100's 228 KiB of shared memory.
    """
    if platform == "cuda":
        from jax.experimental.pallas import triton as plgpu

        return plgpu.CompilerParams(num_warps=4 if head <= 64 else 8, num_stages=2 if head <= 128 else 1)
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pltpu.CompilerParams(dimension_semantics=("parallel", "parallel"))
    return None


def _scalar_spec(platform: Platform, size: int) -> pl.BlockSpec:
    """A small array read as scalars: in SMEM on TPU, one whole block elsewhere."""
    if platform == "tpu":
        from jax.experimental.pallas import tpu as pltpu

        return pl.BlockSpec(memory_space=pltpu.SMEM)
    return pl.BlockSpec((size,), lambda *_: (0,))


def _part_index(cfg: Kernel, layout: tuple[bool, bool, bool, bool], bn: jax.Array) -> jax.Array | int:
    """The index along a bias's or mask's leading (Bb Nb) axis of item ``bn``."""
    b, n = _item(cfg, bn)
    heads = cfg.heads if layout[1] else 1
    index: jax.Array | int = 0
    if layout[0]:
        index = b * heads
    if layout[1]:
        index = index + n
    return index


def _row_part_specs(cfg: Kernel, parts: tuple[jax.Array | None, ...]) -> list[pl.BlockSpec]:
    """Bias and mask blocks of one query tile (grid (item, query tile)): (nk, Tq or 1, kb)."""
    specs = []
    for x, layout in zip(parts, (cfg.bias_layout, cfg.mask_layout), strict=True):
        if x is None or layout is None:
            continue
        rows = cfg.q_block if layout[2] else 1

        def index(bn: jax.Array, i: jax.Array, layout: Any = layout) -> tuple[Any, ...]:
            return (_part_index(cfg, layout, bn), 0, i if layout[2] else 0, 0)

        specs.append(pl.BlockSpec((None, x.shape[1], rows, x.shape[3]), index))
    return specs


def _column_part_specs(cfg: Kernel, parts: tuple[jax.Array | None, ...]) -> list[pl.BlockSpec]:
    """Bias and mask blocks of one key tile (grid (item, key tile)): (1, T or 1, kb)."""
    specs = []
    for x, layout in zip(parts, (cfg.bias_layout, cfg.mask_layout), strict=True):
        if x is None or layout is None:
            continue

        def index(bn: jax.Array, j: jax.Array, layout: Any = layout) -> tuple[Any, ...]:
            return (_part_index(cfg, layout, bn), j if layout[3] else 0, 0, 0)

        specs.append(pl.BlockSpec((None, 1, x.shape[2], x.shape[3]), index))
    return specs


def _kv_index(cfg: Kernel) -> Any:
    """Item ``bn``'s key/value row: (b N + n) // G = b K + n // G."""
    return lambda bn: lax.div(bn, jnp.int32(cfg.groups))


def _forward_call(
    platform: Platform,
    cfg: Kernel,
    words: jax.Array,
    inv_keep: jax.Array,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The forward kernel: output (BN, Tp, Hvp) and per-row shift and reciprocal sum (BN, Tp, 1)."""
    items, tp, hp = q.shape
    sp, hvp = v.shape[1:]
    tq = cfg.q_block
    kv = _kv_index(cfg)
    parts = (bias, mask)
    stats = pl.BlockSpec((None, tq, 1), lambda bn, i: (bn, i, 0))
    call = pl.pallas_call(
        functools.partial(_forward_kernel, cfg),
        grid=(items, tp // tq),
        in_specs=[
            _scalar_spec(platform, words.shape[0]),
            _scalar_spec(platform, 1),
            pl.BlockSpec((None, tq, hp), lambda bn, i: (bn, i, 0)),
            pl.BlockSpec((None, sp, hp), lambda bn, i: (kv(bn), 0, 0)),
            pl.BlockSpec((None, sp, hvp), lambda bn, i: (kv(bn), 0, 0)),
            *_row_part_specs(cfg, parts),
        ],
        out_specs=[pl.BlockSpec((None, tq, hvp), lambda bn, i: (bn, i, 0)), stats, stats],
        out_shape=[
            _shape((items, tp, hvp), q.dtype),
            _shape((items, tp, 1), jnp.float32),
            _shape((items, tp, 1), jnp.float32),
        ],
        compiler_params=_compiler_params(platform, max(hp, hvp)),
        interpret=platform == "cpu",
        name="jdrop_attention_forward",
    )
    out, shift, inv_total = call(words, inv_keep, q, k, v, *(x for x in parts if x is not None))
    return out, shift, inv_total


def _backward_calls(
    platform: Platform,
    cfg: Kernel,
    words: jax.Array,
    inv_keep: jax.Array,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    d_out: jax.Array,
    shift: jax.Array,
    inv_total: jax.Array,
    delta: jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """The query-gradient and key/value-gradient kernels: float32 dq (BN, Tp, Hp), per-query-head dk and dv
    (BN, Sp, Hp and Hvp), and the logits' gradient (BN, nk, Tp, kb) when the bias's is wanted."""
    items, tp, hp = q.shape
    sp, hvp = v.shape[1:]
    tq, tk = cfg.q_block, cfg.k_block
    kv = _kv_index(cfg)
    parts = (bias, mask)
    scalars = [_scalar_spec(platform, words.shape[0]), _scalar_spec(platform, 1)]
    arrays = (words, inv_keep, q, k, v, d_out, shift, inv_total, delta, *(x for x in parts if x is not None))
    params = _compiler_params(platform, max(hp, hvp))

    def query_rows(width: int) -> pl.BlockSpec:
        return pl.BlockSpec((None, tq, width), lambda bn, i: (bn, i, 0))

    dq_out_specs = [query_rows(hp)]
    dq_out_shape = [_shape((items, tp, hp), jnp.float32)]
    if cfg.bias_grad:
        dq_out_specs.append(pl.BlockSpec((None, sp // tk, tq, tk), lambda bn, i: (bn, 0, i, 0)))
        dq_out_shape.append(_shape((items, sp // tk, tp, tk), jnp.float32))
    dq_outs = pl.pallas_call(
        functools.partial(_dq_kernel, cfg),
        grid=(items, tp // tq),
        in_specs=[
            *scalars,
            query_rows(hp),
            pl.BlockSpec((None, sp, hp), lambda bn, i: (kv(bn), 0, 0)),
            pl.BlockSpec((None, sp, hvp), lambda bn, i: (kv(bn), 0, 0)),
            query_rows(hvp),
            query_rows(1),
            query_rows(1),
            query_rows(1),
            *_row_part_specs(cfg, parts),
        ],
        out_specs=dq_out_specs,
        out_shape=dq_out_shape,
        compiler_params=params,
        interpret=platform == "cpu",
        name="jdrop_attention_dq",
    )(*arrays)

    def whole(width: int) -> pl.BlockSpec:
        return pl.BlockSpec((None, tp, width), lambda bn, j: (bn, 0, 0))

    def key_rows(width: int, index: Any) -> pl.BlockSpec:
        return pl.BlockSpec((None, tk, width), lambda bn, j: (index(bn), j, 0))

    dk, dv = pl.pallas_call(
        functools.partial(_dkv_kernel, cfg),
        grid=(items, sp // tk),
        in_specs=[
            *scalars,
            whole(hp),
            key_rows(hp, kv),
            key_rows(hvp, kv),
            whole(hvp),
            whole(1),
            whole(1),
            whole(1),
            *_column_part_specs(cfg, parts),
        ],
        out_specs=[key_rows(hp, lambda bn: bn), key_rows(hvp, lambda bn: bn)],
        out_shape=[
            _shape((items, sp, hp), jnp.float32),
            _shape((items, sp, hvp), jnp.float32),
        ],
        compiler_params=params,
        interpret=platform == "cpu",
        name="jdrop_attention_dkv",
    )(*arrays)
    return dq_outs[0], dk, dv, dq_outs[1] if cfg.bias_grad else None


def _per_platform(fn: Any, cfg: Kernel, *args: Any) -> Any:
    """``fn(platform, cfg, *args)`` with the platform chosen when lowered: Triton, Mosaic, or the interpreter.

    ``cfg`` is bound, not passed: ``platform_dependent`` would make its numbers arrays. A
    ``cfg.platform`` that is already known (a branch of an enclosing choice) is taken as it is.
    """
    if cfg.platform is not None:
        return fn(cfg.platform, cfg, *args)
    return lax.platform_dependent(
        *args,
        cuda=functools.partial(fn, "cuda", cfg),
        tpu=functools.partial(fn, "tpu", cfg),
        default=functools.partial(fn, "cpu", cfg),
    )


# --- From jdrop's layouts to the kernels' ---------------------------------------------------------


class Shards(NamedTuple):
    """How a call's arrays are split over an explicit mesh: only along the batch axes and the heads.

    ``batch`` holds a ``PartitionSpec`` entry per batch axis (None, a mesh
    axis, or a tuple of them), ``heads`` the entry of the query, key and value
    heads. The kernels run on each device's (batch, head) items, in
    ``shard_map`` over those mesh axes, with no collective.
    """

    mesh: Any  # the explicit mesh (jax.sharding.AbstractMesh)
    batch: tuple[Any, ...]
    heads: Any

    @property
    def axes(self) -> frozenset[str]:
        """The mesh axes that split the items."""
        return frozenset(_names((*self.batch, self.heads)))


def _names(entries: tuple[Any, ...]) -> list[str]:
    """The mesh axis names in ``PartitionSpec`` entries."""
    names: list[str] = []
    for entry in entries:
        if entry is not None:
            names.extend(entry if isinstance(entry, tuple) else (entry,))
    return names


class Call(NamedTuple):
    """A call's static part: the kernels' configuration and the XLA tiles' options (for higher derivatives)."""

    kernel: Kernel  # with the whole arrays' heads and row strides; each shard's is _local_kernel's
    options: tuple[tuple[str, Any], ...]  # _attention._xla_dropout_attention's keyword arguments
    hp: int  # head sizes padded for the kernels
    hvp: int
    axis_strides: tuple[int, ...]  # the mask rows between consecutive items along each batch axis and the heads
    shards: Shards | None  # None: the kernels see the whole arrays


def _parts(
    x: jax.Array | None, batch: tuple[int, ...], t_padded: int, s_padded: int, k_block: int
) -> tuple[jax.Array | None, tuple[bool, bool, bool, bool] | None]:
    """A bias or mask broadcastable to (..., N, T, S) as the kernels' (Bb Nb, nk, Tb, kb), and its layout."""
    from jdrop._attention import _four_d, _pad

    if x is None:
        return None, None
    four, (varies_b, varies_n) = _four_d(_pad(_pad(x, -1, s_padded), -2, t_padded), batch)
    assert four is not None
    _, _, rows, cols = four.shape
    tiles = cols // k_block if cols != 1 else 1
    blocked = four.reshape(-1, rows, tiles, cols // tiles).transpose(0, 2, 1, 3)
    return blocked, (varies_b, varies_n, rows != 1, cols != 1)


def _layout(x: jax.Array | None, ndim: int) -> tuple[bool, bool, bool, bool] | None:
    """Whether a bias or mask varies along (batch, head, query, key): what :func:`_parts` gives, from the shape."""
    if x is None:
        return None
    shape = (1,) * (ndim - x.ndim) + x.shape
    return any(size != 1 for size in shape[:-3]), shape[-3] != 1, shape[-2] != 1, shape[-1] != 1


def _words(seeds: jax.Array, threshold: jax.Array, row_offset: jax.Array | None) -> jax.Array:
    """The kernels' word array: per set of key words (one, or one per head), the words, the threshold, zeros;
    on a shard, its first mask row at ``ROW_OFFSET``."""
    sets = seeds.reshape(-1, seeds.shape[-1])
    thresholds = jnp.broadcast_to(jnp.asarray(threshold, jnp.uint32).reshape(1, 1), (sets.shape[0], 1))
    padding = jnp.zeros((sets.shape[0], WORDS - sets.shape[1] - 1), jnp.uint32)
    flat = jnp.concatenate([sets.astype(jnp.uint32), thresholds, padding], axis=1).reshape(-1)
    if row_offset is not None:
        flat = flat.at[ROW_OFFSET].set(row_offset)
    return jnp.pad(flat, (0, _next_power_of_two(flat.shape[0]) - flat.shape[0]))


def _items(x: jax.Array, padded: int, width: int) -> jax.Array:
    """(..., L, heads, H) as the kernels' (B heads, padded L, padded H), padded with zeros."""
    x = x.reshape(-1, *x.shape[-3:])
    x = jnp.pad(x, ((0, 0), (0, padded - x.shape[1]), (0, 0), (0, width - x.shape[-1])))
    return x.transpose(0, 2, 1, 3).reshape(-1, padded, width)


def _unitems(x: jax.Array, like: jax.Array | jax.ShapeDtypeStruct) -> jax.Array:
    """The inverse of :func:`_items`: (..., heads, padded L, padded H) as ``like``'s (..., L, heads, H).

    No reshape: the batch axes and the heads keep their sharding.
    """
    length, width = like.shape[-3], like.shape[-1]
    return jnp.swapaxes(x[..., :length, :width], -3, -2)


def _unflat(x: jax.Array, batch: tuple[int, ...], heads: int) -> jax.Array:
    """A kernel's (B heads, ...) output as (..., heads, ...): the layout that leaves a shard."""
    return x.reshape(*batch, heads, *x.shape[1:])


def _local_kernel(call: Call, q: jax.Array, bias: jax.Array | None, mask: jax.Array | None) -> Kernel:
    """The kernels' configuration for the items of ``q`` (a shard's, or the whole arrays').

    An item's first mask row counts over the whole mask: a shard's items are
    located by their own indices with the global strides, plus the shard's
    offset (:func:`_row_offset`). A bias or mask's layout is its shard's: one
    that varies along the batch may be a single batch element's on a shard.
    """
    batch, heads = q.shape[:-3], q.shape[-2]
    weights = len(batch) + 3
    strides = call.axis_strides
    row_strides = tuple(
        (math.prod(batch[axis + 1 :]), batch[axis], strides[axis]) for axis in range(len(batch)) if strides[axis]
    )
    return call.kernel._replace(
        heads=heads,
        row_strides=row_strides,
        head_stride=strides[len(batch)],
        sharded=call.shards is not None,
        bias_layout=_layout(bias, weights),
        mask_layout=_layout(mask, weights),
    )


def _row_offset(call: Call, q: jax.Array) -> jax.Array | None:
    """Inside ``shard_map``: the first mask row of this device's first item (uint32, wrapping); else None."""
    if call.shards is None:
        return None
    offset = jnp.zeros((), jnp.uint32)
    sizes = (*q.shape[:-3], q.shape[-2])
    for entry, size, stride in zip((*call.shards.batch, call.shards.heads), sizes, call.axis_strides, strict=True):
        if entry is not None and stride:
            step = jnp.uint32(size * stride % 2**32)
            offset = offset + lax.axis_index(entry).astype(jnp.uint32) * step
    return offset


def _kernel_inputs(
    call: Call,
    cfg: Kernel,
    row_offset: jax.Array | None,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    bias: jax.Array | None,
    mask: jax.Array | None,
    seeds: jax.Array,
    threshold: jax.Array,
    inv_keep: jax.Array,
) -> tuple[Any, ...]:
    """The kernels' arrays (words, 1 / keep, q, k, v, bias, mask) from jdrop's."""
    batch = q.shape[:-3]
    t_padded = -(-q.shape[-3] // cfg.q_block) * cfg.q_block
    s_padded = -(-k.shape[-3] // cfg.k_block) * cfg.k_block
    bias_parts, _ = _parts(bias, batch, t_padded, s_padded, cfg.k_block)
    mask_parts, _ = _parts(mask, batch, t_padded, s_padded, cfg.k_block)
    if mask_parts is not None:
        mask_parts = mask_parts.astype(jnp.int8)  # bool refs lower unevenly across platforms
    return (
        _words(seeds, threshold, row_offset),
        jnp.asarray(inv_keep, jnp.float32).reshape(1),
        _items(q, t_padded, call.hp),
        _items(k, s_padded, call.hp),
        _items(v, s_padded, call.hvp),
        bias_parts,
        mask_parts,
    )


def _xla_tiles(call: Call, *arrays: Any) -> jax.Array:
    """The same attention in XLA tiles (``_attention._xla_dropout_attention``): for derivatives of order two and up."""
    from jdrop._attention import _xla_dropout_attention

    q, k, v, bias, mask, seeds, threshold, inv_keep = arrays
    return _xla_dropout_attention(
        q, k, v, bias, mask, seeds=seeds, threshold=threshold, inv_keep=inv_keep, **dict(call.options)
    )


def _xla_vjp(call: Call, arrays: tuple[Any, ...], d_out: jax.Array) -> tuple[Any, ...]:
    """Gradients in (q, k, v, bias) of the XLA tiles for the output's cotangent ``d_out``."""
    q, k, v, bias, *rest = arrays
    _, vjp = jax.vjp(lambda q, k, v, bias: _xla_tiles(call, q, k, v, bias, *rest), q, k, v, bias)
    grads: tuple[Any, ...] = vjp(d_out)
    return grads


# --- Sharding ------------------------------------------------------------------------------------
#
# A pallas_call has no sharding rule. Under an explicit mesh split only along the batch axes and the
# heads, the kernels run in shard_map on each device's items: every item's keys are on its device,
# so nothing is exchanged, and the items' first mask rows count over the whole mask
# (_local_kernel, _row_offset), so the mask bits are those of the unsharded call.

GATHER = "gather"  # kernel_shards' answer for a split the kernels cannot keep: the inputs are made whole


def kernel_shards(q: jax.Array, k: jax.Array, *others: jax.Array | None) -> Shards | str | None:
    """How the kernels split a call whose arrays carry explicit sharding in their types.

    None when no input is split (no explicit mesh axis); a :class:`Shards`
    when the query is split along batch axes and heads only (T and H whole) and
    the key/value heads divide among the head shards; else ``GATHER``.
    """
    arrays = [x for x in (q, k, *others) if x is not None]
    if all(_explicit_sharding(x) is None for x in arrays):
        return None
    sharding = _explicit_sharding(q)
    if sharding is None:
        return GATHER
    spec = (*sharding.spec, *(None,) * (q.ndim - len(sharding.spec)))
    if spec[-3] is not None or spec[-1] is not None:  # queries or head size split
        return GATHER
    shards = Shards(mesh=sharding.mesh, batch=tuple(spec[:-3]), heads=spec[-2])
    head_split = math.prod(sharding.mesh.shape[name] for name in _names((shards.heads,)))
    if k.shape[-2] % head_split:
        return GATHER
    return shards


def _token_spec(sh: Shards) -> jax.sharding.PartitionSpec:
    """The split of q, k, v (..., L, heads, H), their gradients and the output."""
    return jax.sharding.PartitionSpec(*sh.batch, None, sh.heads, None)  # type: ignore[no-untyped-call]


def _item_spec(sh: Shards) -> jax.sharding.PartitionSpec:
    """The split of the forward kernel's outputs (..., heads, Tp, W)."""
    return jax.sharding.PartitionSpec(*sh.batch, sh.heads, None, None)  # type: ignore[no-untyped-call]


def _part_spec(sh: Shards, x: jax.Array) -> jax.sharding.PartitionSpec:
    """The split of a bias or mask broadcastable to (..., N, T, S): the items' along the axes it varies on."""
    lead = (*sh.batch, sh.heads)
    offset = len(lead) + 2 - x.ndim  # x's axis i is the weights' axis i + offset
    entries = [
        lead[i + offset] if i + offset < len(lead) and i + offset >= 0 and x.shape[i] != 1 else None
        for i in range(x.ndim)
    ]
    return jax.sharding.PartitionSpec(*entries)  # type: ignore[no-untyped-call]


def _seeds_spec(sh: Shards, call: Call) -> jax.sharding.PartitionSpec:
    """The split of the generator's words: one set per head follows the heads."""
    if call.kernel.head_seeds:
        return jax.sharding.PartitionSpec(sh.heads, None)  # type: ignore[no-untyped-call]
    return jax.sharding.PartitionSpec()  # type: ignore[no-untyped-call]


def _arg_specs(call: Call, args: tuple[Any, ...]) -> list[Any]:
    """The splits of (q, k, v, bias, mask, seeds, threshold, inv_keep[, out, shift, inv_total, d_out])."""
    assert call.shards is not None
    sh = call.shards
    token, items, whole = _token_spec(sh), _item_spec(sh), jax.sharding.PartitionSpec()  # type: ignore[no-untyped-call]
    bias, mask = args[3], args[4]
    specs = [
        token,
        token,
        token,
        None if bias is None else _part_spec(sh, bias),
        None if mask is None else _part_spec(sh, mask),
        _seeds_spec(sh, call),
        whole,
        whole,
        items,
        items,
        items,
        token,
    ]
    return specs[: len(args)]


def _on_shards(call: Call, fn: Any, args: tuple[Any, ...], out_specs: Any) -> Any:
    """``fn(call, *args)``: on the whole arrays, or with ``call.shards`` on each device's shard (``shard_map``)."""
    sh = call.shards
    if sh is None:
        return fn(call, *args)
    present = [i for i, x in enumerate(args) if x is not None]
    specs = _arg_specs(call, args)

    def local(*xs: jax.Array) -> Any:
        full: list[Any] = [None] * len(args)
        for i, x in zip(present, xs, strict=True):
            full[i] = x
        return fn(call, *full)

    # Manual over every mesh axis not manual already (the kernels see no sharding in types; along the
    # axes that split no item, each device holds the whole items); check_vma=False: a pallas_call's
    # outputs carry no varying-axes types.
    mapped = jax.shard_map(
        local,
        mesh=sh.mesh,
        in_specs=tuple(specs[i] for i in present),
        out_specs=out_specs,
        axis_names=set(sh.mesh.axis_names) - set(sh.mesh.manual_axes),
        check_vma=False,
    )
    return mapped(*(jnp.asarray(args[i]) for i in present))


def _resharded(call: Call, args: tuple[Any, ...]) -> tuple[Any, ...]:
    """The call's inputs with the splits that the shards take (no copy where they have them already)."""
    assert call.shards is not None
    mesh = call.shards.mesh
    return tuple(
        None if x is None else jax.sharding.reshard(jnp.asarray(x), jax.sharding.NamedSharding(mesh, spec))  # type: ignore[no-untyped-call]
        for x, spec in zip(args, _arg_specs(call, args), strict=True)
    )


# --- Differentiation ------------------------------------------------------------------------------
#
# First derivatives come from the kernels: the forward kernel saves the output and two statistics
# per row, the backward kernels read them. The kernels themselves have no derivatives, so the two
# functions that run them carry rules for what reverse-over-reverse needs, computed by the XLA
# tiles (whose every loop is reversible): `_forward`'s is the output's first derivative,
# `_gradients`'s the total derivative of the first derivatives. The values agree with the
# kernels' to rounding, and the mask bits are the same.


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _attention(call: Call, *arrays: Any) -> jax.Array:
    """The kernels' attention on jdrop's layouts: ``arrays`` are (q, k, v, bias, mask, seeds, threshold, inv_keep)."""
    return _unitems(_forward(call, *arrays)[0], _output_like(arrays[0], arrays[2]))


def _output_like(q: jax.Array, v: jax.Array) -> jax.ShapeDtypeStruct:
    """The output's shape (..., T, N, Hv) and dtype."""
    return _shape((*q.shape[:-1], v.shape[-1]), q.dtype)


def _attention_fwd(call: Call, *primals: Any) -> tuple[jax.Array, tuple[Any, ...]]:
    # symbolic_zeros: the primals come wrapped, saying whether they are differentiated; a bias's
    # gradient (the one (T, S) array of the backward pass) is computed only when it is.
    bias = primals[3]
    bias_grad = bias is not None and bool(bias.perturbed)
    arrays: tuple[Any, ...] = tuple(None if x is None else x.value for x in primals)
    out, shift, inv_total = _forward(call, *arrays)
    like = _output_like(arrays[0], arrays[2])
    # Whether the bias's gradient is wanted is told by the residuals' structure (() or None), which is static.
    return _unitems(out, like), (arrays, out, shift, inv_total, () if bias_grad else None)


def _attention_bwd(call: Call, residuals: tuple[Any, ...], d_out: Any) -> tuple[Any, ...]:
    arrays, out, shift, inv_total, bias_grad = residuals
    if isinstance(d_out, jax.custom_derivatives.SymbolicZero):
        d_out = jnp.zeros(d_out.shape, d_out.dtype)
    call = call._replace(kernel=call.kernel._replace(bias_grad=bias_grad is not None))
    dq, dk, dv, d_bias = _gradients(call, arrays, out, shift, inv_total, d_out)
    return dq, dk, dv, d_bias, None, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _forward(call: Call, *arrays: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The forward kernel: the output (..., N, Tp, Hvp) and per-row shift and reciprocal sum (..., N, Tp, 1)."""
    sh = call.shards
    out_specs = None if sh is None else (_item_spec(sh),) * 3
    result: tuple[jax.Array, jax.Array, jax.Array] = _on_shards(call, _local_forward, arrays, out_specs)
    return result


def _local_forward(call: Call, *arrays: Any) -> tuple[jax.Array, jax.Array, jax.Array]:
    """:func:`_forward` on the whole arrays or on one device's shard of them."""
    q = arrays[0]
    batch, heads = q.shape[:-3], q.shape[-2]
    cfg = _local_kernel(call, q, arrays[3], arrays[4])
    words, inv_keep, q3, k3, v3, bias, mask = _kernel_inputs(call, cfg, _row_offset(call, q), *arrays)
    out, shift, inv_total = _per_platform(_forward_call, cfg, words, inv_keep, q3, k3, v3, bias, mask)
    return _unflat(out, batch, heads), _unflat(shift, batch, heads), _unflat(inv_total, batch, heads)


def _forward_fwd(call: Call, *arrays: Any) -> tuple[tuple[jax.Array, jax.Array, jax.Array], tuple[Any, ...]]:
    return _forward(call, *arrays), arrays


def _forward_bwd(call: Call, arrays: tuple[Any, ...], cotangents: tuple[jax.Array, ...]) -> tuple[Any, ...]:
    # Only reverse-over-reverse gets here. The statistics feed `_gradients` alone, whose rule gives
    # their cotangents as 0 (it differentiates through them itself): the output's cotangent is all.
    d_out = _unitems(cotangents[0], _output_like(arrays[0], arrays[2]))
    return (*_xla_vjp(call, arrays, d_out), None, None, None, None)


_forward.defvjp(_forward_fwd, _forward_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _gradients(
    call: Call, arrays: tuple[Any, ...], out: jax.Array, shift: jax.Array, inv_total: jax.Array, d_out: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """The backward kernels: gradients in q, k, v (their dtypes and shapes) and the bias (or None)."""
    sh = call.shards
    out_specs: Any = None
    summed: tuple[str, ...] = ()
    if sh is not None:
        token = _token_spec(sh)
        bias_spec = None if arrays[3] is None else _part_spec(sh, arrays[3])
        out_specs = (token, token, token, bias_spec)
        if bias_spec is not None:  # the shards that share the bias (it is broadcast along their axes)
            summed = tuple(sorted(sh.axes - set(_names(tuple(bias_spec)))))
    grads: tuple[jax.Array, jax.Array, jax.Array, jax.Array | None] = _on_shards(
        call, functools.partial(_local_gradients, summed=summed), (*arrays, out, shift, inv_total, d_out), out_specs
    )
    return grads


def _local_gradients(
    call: Call, *args: Any, summed: tuple[str, ...] = ()
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """:func:`_gradients` on the whole arrays or on one device's shard of them; the bias's gradient summed
    over the mesh axes ``summed`` (the shards that share the bias: the one collective)."""
    *arrays, out, shift, inv_total, d_out = args
    q, k, v, bias = arrays[:4]
    cfg = _local_kernel(call, q, bias, arrays[4])
    words, inv_keep, q3, k3, v3, bias_parts, mask_parts = _kernel_inputs(call, cfg, _row_offset(call, q), *arrays)
    out, shift, inv_total = (x.reshape(-1, *x.shape[-2:]) for x in (out, shift, inv_total))
    d_out3 = _items(d_out, q3.shape[1], call.hvp)
    # sum_s w_s dw_s, with w the weights after dropout, equals sum_h dO * O.
    delta = jnp.sum(d_out3.astype(jnp.float32) * out.astype(jnp.float32), axis=-1, keepdims=True)
    dq, dk, dv, d_logits = _per_platform(
        _backward_calls, cfg, words, inv_keep, q3, k3, v3, bias_parts, mask_parts, d_out3, shift, inv_total, delta
    )
    # Each query head's share of its key/value head's gradients, summed over the heads of a group.
    dk = dk.reshape(k3.shape[0], cfg.groups, *dk.shape[1:]).sum(axis=1)
    dv = dv.reshape(v3.shape[0], cfg.groups, *dv.shape[1:]).sum(axis=1)
    d_bias = None
    if bias is not None and d_logits is not None:
        d_bias = _bias_grad(cfg, d_logits, bias, q.shape, k.shape[-3])
        if summed:
            d_bias = lax.psum(d_bias, summed)  # type: ignore[no-untyped-call]
    batch, heads, kv_heads = q.shape[:-3], q.shape[-2], k.shape[-2]
    return (
        _unitems(_unflat(dq, batch, heads), q).astype(q.dtype),
        _unitems(_unflat(dk, batch, kv_heads), k).astype(k.dtype),
        _unitems(_unflat(dv, batch, kv_heads), v).astype(v.dtype),
        d_bias,
    )


def _gradients_fwd(
    call: Call, arrays: tuple[Any, ...], out: jax.Array, shift: jax.Array, inv_total: jax.Array, d_out: jax.Array
) -> tuple[Any, tuple[Any, ...]]:
    return _gradients(call, arrays, out, shift, inv_total, d_out), (arrays, out, shift, inv_total, d_out)


def _gradients_bwd(call: Call, residuals: tuple[Any, ...], cotangents: tuple[Any, ...]) -> tuple[Any, ...]:
    # Reverse-over-reverse: the first derivatives' total derivative, through the XLA tiles.
    arrays, out, shift, inv_total, d_out = residuals
    q, k, v, bias, *rest = arrays
    with_bias = bias is not None and call.kernel.bias_grad  # whether the first derivatives include the bias's
    wanted = cotangents if with_bias else cotangents[:3]

    def first(q: jax.Array, k: jax.Array, v: jax.Array, bias: Any, d_out: jax.Array) -> tuple[Any, ...]:
        grads = _xla_vjp(call, (q, k, v, bias, *rest), d_out)
        return grads if with_bias else grads[:3]

    _, vjp = jax.vjp(first, q, k, v, bias, d_out)
    dq, dk, dv, d_bias, d_d_out = vjp(tuple(wanted))
    d_arrays = (dq, dk, dv, d_bias, None, None, None, None)
    return d_arrays, jnp.zeros_like(out), jnp.zeros_like(shift), jnp.zeros_like(inv_total), d_d_out


_gradients.defvjp(_gradients_fwd, _gradients_bwd)


def _bias_grad(cfg: Kernel, d_logits: jax.Array, bias: jax.Array, q_shape: tuple[int, ...], s: int) -> jax.Array:
    """The bias's gradient from the logits' (BN, nk, Tp, kb): summed over the axes the bias broadcasts along."""
    *batch, t, n, _ = q_shape
    x = d_logits.reshape(-1, n, *d_logits.shape[1:]).transpose(0, 1, 3, 2, 4)  # (B, N, Tp, nk, kb)
    x = x.reshape(*batch, n, x.shape[2], -1)[..., :t, :s]  # (..., N, T, S)
    shape = (1,) * (x.ndim - bias.ndim) + bias.shape
    axes = tuple(axis for axis, size in enumerate(shape) if size == 1 and x.shape[axis] != 1)
    return x.sum(axis=axes, keepdims=True).reshape(bias.shape).astype(bias.dtype)


def flash_attention(
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
    window: tuple[int, int] | None,
    masked_logit: float,
    head_seeds: bool,
    dropout: bool = True,
    platform: Platform | None = None,
) -> jax.Array:
    """The dropout path in the Pallas kernels: the arguments and result of ``_attention._dropout_attention``.

    The caller has checked the inputs and that :func:`unsupported` is None;
    the output is non-empty. ``dropout=False`` runs the kernels with no mask.
    ``platform`` None chooses the lowering (Triton, Mosaic or the interpreter)
    when lowered; a caller that has already chosen the platform names it.

    Sharding (:func:`kernel_shards`): inputs split along batch axes and heads
    in their types (an explicit mesh) run on each device's own items, with
    the global mask rows and no collective; other explicit splits are made
    whole first (a gather). Sharding not in the types (an Auto mesh) is left
    to XLA, which gathers a ``pallas_call``'s inputs.
    """
    *batch_list, t, n, h = q.shape
    s, kv_heads, hv = v.shape[-3:]
    batch = tuple(batch_list)
    weights = (*batch, n, t, s)
    mask_shape = tuple(1 if axis in shared else size for axis, size in enumerate(weights))
    q_block, k_block, hp, hvp = blocks_and_head(block_size, t, s, h, hv)
    row_strides, head_stride = _row_strides(batch, n, t, shared)
    # The mask rows between consecutive items along each batch axis and the heads (0: shared, or head_seeds).
    counted = [1 if axis in shared else size for axis, size in enumerate((*batch, n, t))]
    axis_strides = tuple(
        0 if head_seeds or axis in shared else math.prod(counted[axis + 1 :]) for axis in range(len(batch) + 1)
    )
    cfg = Kernel(
        scale=scale,
        is_causal=is_causal,
        window=window,
        length=s,
        q_block=q_block,
        k_block=k_block,
        heads=n,
        groups=n // kv_heads,
        mask_queries=mask_shape[-2] != 1,
        mask_columns=mask_shape[-1] != 1,
        masked_logit=masked_logit,
        # As the XLA path: a row with no key left spreads its weight over every key under a finite
        # masked_logit, causally masked ones too; then every tile counts.
        skip_causal=is_causal and (math.isinf(masked_logit) or (mask is None and window is None)),
        row_strides=() if head_seeds else row_strides,
        head_stride=0 if head_seeds else head_stride,
        head_seeds=head_seeds,
        sharded=False,
        dropout=dropout,
        bias_layout=_layout(bias, len(weights)),
        mask_layout=_layout(mask, len(weights)),
        bias_grad=False,
        platform=platform,
    )
    options = (
        ("shared", shared),
        ("scale", scale),
        ("is_causal", is_causal),
        ("block_size", block_size),
        ("window", window),
        ("masked_logit", masked_logit),
        ("head_seeds", head_seeds),
    )
    if not dropout:  # the XLA tiles of higher derivatives drop nothing either
        threshold, inv_keep = jnp.uint32(1 << 16), jnp.float32(1.0)
    shards = kernel_shards(q, k, v, bias, mask)
    call = Call(
        kernel=cfg,
        options=options,
        hp=hp,
        hvp=hvp,
        axis_strides=axis_strides,
        shards=shards if isinstance(shards, Shards) else None,
    )
    args: tuple[Any, ...] = (q, k, v, bias, mask, seeds, threshold, inv_keep)
    out_sharding = None
    if call.shards is not None:
        # Split along batch axes and heads only: each device runs the kernels on its own items.
        args = _resharded(call, args)
    elif shards == GATHER:
        # Split along T, S or H (or q whole and another input split): a pallas_call is not
        # partitioned, so its inputs are made whole on every device (a gather), and the output is
        # given the query's sharding back.
        out_sharding = _explicit_sharding(q)
        args = tuple(None if x is None else _replicated(x) for x in args[:5]) + args[5:]
    out = _attention(call, *args)
    if out_sharding is None:
        return out
    resharded: jax.Array = jax.sharding.reshard(out, out_sharding)  # type: ignore[no-untyped-call]
    return resharded


def _explicit_sharding(x: jax.Array) -> jax.sharding.NamedSharding | None:
    """``x``'s sharding where its type carries one that splits an axis (explicit mesh axes), else None."""
    sharding = jax.typeof(x).sharding
    if not isinstance(sharding, jax.sharding.NamedSharding) or jax.sharding.get_abstract_mesh().empty:
        return None
    return sharding if any(entry is not None for entry in sharding.spec) else None


def _replicated(x: jax.Array) -> jax.Array:
    """``x`` whole on every device, if its type says it is split."""
    sharding = _explicit_sharding(x)
    if sharding is None:
        return x
    everywhere = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())  # type: ignore[no-untyped-call]
    whole: jax.Array = jax.sharding.reshard(x, everywhere)  # type: ignore[no-untyped-call]
    return whole
