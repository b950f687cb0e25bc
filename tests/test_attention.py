"""Tests for jdrop._attention: the materialised formula, jax.nn, blocks, gradients, memory, transformations, errors."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from multidevice_checks import run_on_host_devices

import jdrop

EPS32 = float(np.finfo(np.float32).eps)


def inputs(batch, t, s, n, k, h, dtype=jnp.float32, seed=0):
    """Normal query, key and value of the shapes (*batch, T, N, H) and (*batch, S, K, H)."""
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    q = jax.random.normal(kq, (*batch, t, n, h)).astype(dtype)
    key = jax.random.normal(kk, (*batch, s, k, h)).astype(dtype)
    value = jax.random.normal(kv, (*batch, s, k, h)).astype(dtype)
    return q, key, value


@functools.partial(jax.jit, static_argnames=("keep_prob", "broadcast_dims", "is_causal", "scale", "window"))
def materialised(
    q,
    k,
    v,
    bias=None,
    mask=None,
    *,
    dropout_key=None,
    keep_prob=1.0,
    broadcast_dims=(),
    is_causal=False,
    scale=None,
    window=None,
):
    """The documented formula, on the full (..., N, T, S) weights, in float32: the reference.

    A row with every key masked out (by the mask, causality, the window or a -inf bias) has weights 0.
    """
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    groups = q.shape[-2] // k.shape[-2]
    k, v = jnp.repeat(k, groups, axis=-2), jnp.repeat(v, groups, axis=-2)  # head n uses kv head n // groups
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    logits = jnp.einsum("...tnh,...snh->...nts", q, k) * jnp.float32(scale)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32).reshape((1,) * (logits.ndim - bias.ndim) + bias.shape)
    allowed = jnp.ones(logits.shape, bool)
    if mask is not None:
        allowed = allowed & mask.reshape((1,) * (logits.ndim - mask.ndim) + mask.shape)
    lead = (1,) * (logits.ndim - 2)  # (T, S) patterns with the weights' rank (no rank promotion)
    if is_causal:
        allowed = allowed & jnp.tril(jnp.ones(logits.shape[-2:], bool)).reshape(*lead, *logits.shape[-2:])
    if window is not None:  # query t attends keys t - left .. t + right
        band = jnp.tril(jnp.triu(jnp.ones(logits.shape[-2:], bool), -window[0]), window[1])
        allowed = allowed & band.reshape(*lead, *logits.shape[-2:])
    allowed = allowed & (logits > -jnp.inf)  # a -inf bias rules a key out as a mask does
    logits = jnp.where(allowed, logits, -jnp.inf)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    e = jnp.where(allowed, jnp.exp(logits - jnp.where(jnp.isfinite(peak), peak, 0.0)), 0.0)
    total = e.sum(axis=-1, keepdims=True)
    w = jnp.where(total > 0, e / jnp.where(total > 0, total, 1.0), 0.0)
    if keep_prob != 1.0:
        w = jdrop.dropout(dropout_key, w, keep_prob, broadcast_dims=broadcast_dims)
    return jnp.einsum("...nts,...snh->...tnh", w, v)


def tolerance(v, s, keep_prob, eps=EPS32):
    """Rounding bound for an output: a sum of S weights (each rounded, times 1 / keep) times values.

    Each product and partial sum adds a relative error of at most eps, so a
    sum of S terms of size at most max|v| / keep_prob is within
    S * eps * max|v| / keep_prob; the factor 4 covers the softmax's exp, its
    normalisation and the online rescaling.
    """
    return 4 * s * eps * float(jnp.max(jnp.abs(v.astype(jnp.float32)))) / keep_prob


def padding_mask(batch, s, lengths):
    """(*batch, 1, 1, S): True for the first ``lengths[b]`` keys of each batch element."""
    valid = jnp.arange(s).reshape((1,) * len(batch) + (s,)) < jnp.asarray(lengths).reshape(*batch, 1)
    return valid[..., None, None, :]


CASES = {
    # name: (batch, T, S, N, K, H, bias shape or None, mask kind, is_causal, broadcast_dims, block_size)
    "t_ne_s_ragged": ((2,), 13, 37, 2, 2, 8, None, None, False, (), 8),
    "bias_full_causal": ((2,), 11, 19, 2, 2, 4, (2, 2, 11, 19), None, True, (), 5),
    "bias_broadcast_padding": ((3,), 9, 23, 2, 1, 4, (1, 9, 1), "padding", False, (), 6),
    "causal_t_ne_s_random_mask": ((1,), 12, 20, 2, 2, 4, (1, 1, 12, 20), "random", True, (), 7),
    "gqa_shared_heads": ((2,), 10, 14, 6, 2, 4, None, "random", False, (-3,), 4),
    "batch_3d_shared_batch_and_queries": ((2, 1, 3), 7, 9, 2, 1, 4, (1, 1, 3, 2, 1, 9), None, False, (0, -2), 4),
    "no_batch_shared_keys": ((), 8, 12, 2, 2, 4, None, "random", False, (-1,), 5),
    "default_block": ((2,), 24, 40, 2, 1, 4, (2, 1, 24, 40), "padding", True, (1,), None),
}


def case_mask(batch, s, n, mask_kind):
    """A sweep case's mask: "padding" (a key length per example), "random" (per example and head), or None."""
    if mask_kind == "padding":
        lengths = np.arange(math.prod(batch)) % s + s // 2 + 1
        return padding_mask(batch, s, np.minimum(lengths, s))
    if mask_kind == "random":
        return jax.random.bernoulli(jax.random.key(8), 0.7, (*batch, n, 1, s))
    return None


def case_arrays(name):
    batch, t, s, n, k, h, bias_shape, mask_kind, is_causal, broadcast_dims, block_size = CASES[name]
    q, key, value = inputs(batch, t, s, n, k, h)
    bias = None if bias_shape is None else jax.random.normal(jax.random.key(7), bias_shape)
    mask = case_mask(batch, s, n, mask_kind)
    options = {"is_causal": is_causal, "broadcast_dims": broadcast_dims}
    return (q, key, value, bias, mask), options, block_size


# Eager calls cost the most compilation here (one per operation), so the
# eager variant runs on the cases that differ most: ragged blocks, a 3-d
# batch with shared mask axes, and the default block with every mask kind.
EAGER_CASES = ("t_ne_s_ragged", "batch_3d_shared_batch_and_queries", "default_block")


class ContractTest(chex.TestCase):
    @chex.variants(with_jit=True)
    @parameterized.named_parameters(*((name, name) for name in CASES if name not in EAGER_CASES))
    def test_dropout_equals_materialised_formula(self, name):
        self.check_against_materialised(name)

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in EAGER_CASES))
    def test_dropout_equals_materialised_formula_eager_and_jit(self, name):
        self.check_against_materialised(name)

    def check_against_materialised(self, name):
        (q, k, v, bias, mask), options, block_size = case_arrays(name)
        key = jax.random.key(3)

        @self.variant
        def attention(q, k, v, bias, mask, key):
            return jdrop.dot_product_attention(
                q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, block_size=block_size, **options
            )

        out = attention(q, k, v, bias, mask, key)
        expected = materialised(q, k, v, bias, mask, dropout_key=jax.random.clone(key), keep_prob=0.7, **options)
        chex.assert_shape(out, q.shape)
        np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, k.shape[-3], 0.7))

    @parameterized.named_parameters(("deterministic", True, 0.5), ("keep_prob_one", False, 1.0))
    def test_dropout_off_calls_jax_nn(self, deterministic, keep_prob):
        for name in ("bias_full_causal", "causal_t_ne_s_random_mask", "gqa_shared_heads", "no_batch_shared_keys"):
            (q, k, v, bias, mask), options, _ = case_arrays(name)
            if name == "no_batch_shared_keys":  # jax.nn takes a 4-d bias; a 3-d query has no batch
                q, k, v = q[None], k[None], v[None]
            out = jdrop.dot_product_attention(
                q, k, v, bias, mask, keep_prob=keep_prob, deterministic=deterministic, is_causal=options["is_causal"]
            )
            expected = jax.nn.dot_product_attention(
                q, k, v, None if bias is None else bias.astype(jnp.float32), mask, is_causal=options["is_causal"]
            )
            np.testing.assert_array_equal(out, expected, err_msg=name)

    def test_fast_path_matches_materialised_formula_with_3d_batch(self):
        (q, k, v, bias, mask), options, _ = case_arrays("batch_3d_shared_batch_and_queries")
        out = jdrop.dot_product_attention(q, k, v, bias, mask, deterministic=True, is_causal=options["is_causal"])
        expected = materialised(q, k, v, bias, mask, is_causal=options["is_causal"])
        np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, k.shape[-3], 1.0))

    @parameterized.named_parameters(("dropout", 0.6), ("fast_path", 1.0))
    def test_scale(self, keep_prob):
        q, k, v = inputs((2,), 6, 10, 2, 2, 4)
        key = jax.random.key(1)
        out = jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=keep_prob, scale=0.3, block_size=4)
        expected = materialised(q, k, v, dropout_key=jax.random.clone(key), keep_prob=keep_prob, scale=0.3)
        np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, 10, keep_prob))

    @parameterized.named_parameters(("dropout", 0.6), ("fast_path", 1.0))
    def test_fully_masked_rows_give_zeros_and_finite_gradients(self, keep_prob):
        q, k, v = inputs((2,), 6, 10, 2, 2, 4)
        mask = jnp.ones((2, 2, 6, 10), bool).at[0, 1, 2, :].set(False).at[1, :, 4, :].set(False)

        def loss(q, k, v, key):
            out = jdrop.dot_product_attention(q, k, v, mask=mask, dropout_key=key, keep_prob=keep_prob, block_size=3)
            return (out**2).sum(), out

        grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v, jax.random.key(0))
        np.testing.assert_array_equal(out[0, 2, 1], 0.0)
        np.testing.assert_array_equal(out[1, 4], 0.0)
        assert bool(jnp.all(out[0, 2, 0] != 0.0))  # the other head of that row attends
        for g in grads:
            assert bool(jnp.all(jnp.isfinite(g)))
        np.testing.assert_array_equal(grads[0][0, 2, 1], 0.0)


class EveryRowTest(chex.TestCase):
    """One contract for rows that no key can attend, sequence lengths, windows and empty inputs, on every path."""

    def test_rows_no_key_can_attend_give_zeros_in_training_and_evaluation(self):
        # Row (0, head 0, query 1) is emptied by a -inf bias, (0, head 1, query 2) by the mask, every row of
        # batch element 1 beyond key 0 by the key lengths; the window (0, 0) with T > S empties query 9.
        q, k, v = inputs((2,), 10, 9, 2, 2, 4)
        bias = jnp.zeros((2, 2, 10, 9)).at[0, 0, 1, :].set(-jnp.inf).at[1, 0, 3, 4:].set(-jnp.inf)
        mask = jnp.ones((2, 2, 10, 9), bool).at[0, 1, 2, :].set(False)
        key_lengths = jnp.array([9, 0])
        empty = jnp.zeros((2, 10, 2), bool).at[0, 1, 0].set(True).at[0, 2, 1].set(True).at[1].set(True)
        lengths_mask = jnp.arange(9)[None, None, None] < key_lengths[:, None, None, None]

        def loss(q, k, v, bias, key, keep_prob, deterministic, window):
            out = jdrop.dot_product_attention(
                q, k, v, bias, mask, dropout_key=key, keep_prob=keep_prob, deterministic=deterministic,
                key_value_seq_lengths=key_lengths, local_window_size=window, block_size=(4, 4),
            )  # fmt: skip
            return (out**2).sum(), out

        grad = jax.jit(jax.grad(loss, (0, 1, 2, 3), has_aux=True), static_argnums=(5, 6, 7))
        for keep_prob, deterministic in ((0.7, False), (1.0, False), (0.7, True)):
            for window in (None, (0, 0)):
                what = f"keep_prob={keep_prob} deterministic={deterministic} window={window}"
                grads, out = grad(q, k, v, bias, jax.random.key(1), keep_prob, deterministic, window)
                row_empty = empty.at[0, 9].set(True) if window else empty  # T = 10 > S = 9: query 9 sees no key
                np.testing.assert_array_equal(jnp.where(row_empty[..., None], out, 0.0), 0.0, err_msg=what)
                off = keep_prob == 1.0 or deterministic
                expected = materialised(
                    q, k, v, bias, mask & lengths_mask, dropout_key=jax.random.key(1),
                    keep_prob=1.0 if off else keep_prob, window=window,
                )  # fmt: skip
                np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, 9, keep_prob), err_msg=what)
                for g in grads:
                    assert bool(jnp.all(jnp.isfinite(g))), what

    @parameterized.named_parameters(("dropout", 0.7), ("fast_path", 1.0))
    def test_sequence_lengths_and_window_are_masks(self, keep_prob):
        # query_seq_lengths zeroes the rows at or beyond it; key_value_seq_lengths and the window are masks.
        (q, k, v, bias, mask), options, block_size = case_arrays("bias_full_causal")
        query_lengths, key_lengths = jnp.array([11, 4]), jnp.array([7, 19])
        key = jax.random.key(6)
        out = jdrop.dot_product_attention(
            q, k, v, bias, mask, dropout_key=key, keep_prob=keep_prob, block_size=block_size, **options,
            query_seq_lengths=query_lengths, key_value_seq_lengths=key_lengths, local_window_size=(3, 1),
        )  # fmt: skip
        keys_mask = (jnp.arange(19)[None] < key_lengths[:, None])[:, None, None, :]
        expected = materialised(
            q, k, v, bias, keys_mask, dropout_key=jax.random.clone(key), keep_prob=keep_prob, window=(3, 1), **options
        )
        expected = jnp.where((jnp.arange(11)[None] < query_lengths[:, None])[..., None, None], expected, 0.0)
        np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, 19, keep_prob))
        if keep_prob == 1.0:  # jax.nn's own result wherever a row has a key (elsewhere: jax.nn's mean of values)
            reference = jax.nn.dot_product_attention(
                q, k, v, bias, is_causal=True, local_window_size=(3, 1),
                query_seq_lengths=query_lengths.astype(jnp.int32), key_value_seq_lengths=key_lengths.astype(jnp.int32),
            )  # fmt: skip
            band = jnp.tril(jnp.triu(jnp.ones((11, 19), bool), -3), 0)  # the window (3, 1) and causality
            has_key = jnp.any(keys_mask & band[None, None], axis=-1).transpose(0, 2, 1)[..., None]  # (B, T, 1, 1)
            assert not bool(jnp.all(has_key))  # the case has rows with no key
            np.testing.assert_allclose(jnp.where(has_key, out, reference), reference, rtol=0, atol=tolerance(v, 19, 1))

    @parameterized.named_parameters(
        ("no_queries", (2, 0, 2, 4), (2, 5, 2, 4)),
        ("no_batch", (0, 3, 2, 4), (0, 5, 2, 4)),
        ("no_head_size", (2, 3, 2, 0), (2, 5, 2, 0)),
        ("no_keys", (2, 3, 2, 4), (2, 0, 2, 4)),
    )
    def test_zero_size_dimensions_give_what_jax_nn_gives(self, query_shape, key_shape):
        q, k = jnp.ones(query_shape), jnp.ones(key_shape)

        def loss(f, **kwargs):
            return lambda q, k: (f(q, k, k, **kwargs).sum(), f(q, k, k, **kwargs))

        expected_grads, expected = jax.grad(loss(jax.nn.dot_product_attention), (0, 1), has_aux=True)(q, k)
        for keep_prob in (0.5, 1.0):
            f = functools.partial(jdrop.dot_product_attention, dropout_key=jax.random.key(0), keep_prob=keep_prob)
            grads, out = jax.grad(loss(f), (0, 1), has_aux=True)(q, k)
            chex.assert_trees_all_equal((out, grads), (expected, expected_grads))


class SecondDerivativeTest(chex.TestCase):
    @parameterized.named_parameters(
        ("causal_skipping_tiles", "bias_full_causal"),
        ("gqa_mask", "gqa_shared_heads"),
        ("padding", "bias_broadcast_padding"),
    )
    def test_reverse_over_reverse_matches_the_formula(self, name):
        # A Hessian-vector product as the gradient of a gradient's projection (reverse over reverse):
        # every loop of the kernel, forward and backward, must be reversible.
        (q, k, v, bias, mask), options, block_size = case_arrays(name)
        direction = jax.random.normal(jax.random.key(11), q.shape)
        key = jax.random.key(12)

        def hvp(f, **kwargs):
            def loss(q, k, v, key):
                return (f(q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, **options, **kwargs) ** 2).sum()

            return jax.grad(lambda q, k, v, key: jnp.vdot(direction, jax.grad(loss)(q, k, v, key)), (0, 1, 2))

        ours = jax.jit(hvp(jdrop.dot_product_attention, block_size=block_size))(q, k, v, key)
        expected = hvp(materialised)(q, k, v, jax.random.clone(key))
        for got, want, what in zip(ours, expected, ("query", "key", "value"), strict=True):
            # Two backward passes: twice the first derivative's rounding bound.
            atol = 128 * k.shape[-3] * EPS32 * float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)
            assert bool(jnp.any(want != 0.0))

    def test_fast_path_reverse_over_reverse(self):
        q, k, v = inputs((1,), 5, 6, 2, 1, 4)
        bias = jnp.zeros((1, 2, 5, 6)).at[0, 0, 1].set(-jnp.inf)

        def second(f):
            def loss(q):
                return (f(q, k, v, bias, is_causal=True) ** 2).sum()

            return jax.grad(lambda q: jax.grad(loss)(q).sum())(q)

        got = second(functools.partial(jdrop.dot_product_attention, deterministic=True))
        np.testing.assert_allclose(got, second(materialised), rtol=0, atol=1e-4)
        assert bool(jnp.all(jnp.isfinite(got)))


class BlockTest(chex.TestCase):
    @chex.variants(with_jit=True)
    def test_block_size_changes_nothing_but_rounding_and_drops_the_same_positions(self):
        # With value the identity over key positions (H = S, one kv head), the
        # output is the dropped weights themselves: out[t, n, s] = w[n, t, s].
        t, s, n = 11, 23, 3
        q = jax.random.normal(jax.random.key(0), (2, t, n, s))
        k = jax.random.normal(jax.random.key(1), (2, s, 1, s))
        v = jnp.broadcast_to(jnp.eye(s)[:, None, :], (2, s, 1, s))
        key = jax.random.key(2)
        attention = self.variant(
            lambda q, k, v, key, block_size: jdrop.dot_product_attention(
                q, k, v, dropout_key=key, keep_prob=0.6, block_size=block_size
            ),
            static_argnames="block_size",
        )
        reference = attention(q, k, v, jax.random.clone(key), block_size=None)  # one block of S
        keep = jdrop.dropout_mask(jax.random.clone(key), (2, n, t, s), 0.6)
        np.testing.assert_array_equal(jnp.swapaxes(reference, -2, -3) != 0.0, keep)
        for block_size in (1, 5, 16, 64):
            out = attention(q, k, v, jax.random.clone(key), block_size=block_size)
            np.testing.assert_array_equal(out != 0.0, reference != 0.0, err_msg=f"block_size={block_size}")
            np.testing.assert_allclose(out, reference, rtol=0, atol=tolerance(v, s, 0.6), err_msg=f"{block_size}")

    def test_backward_keeps_no_quadratic_residual(self):
        # Compile-time temporary memory of the gradient, at a fixed block size:
        # linear in T for the blocked backward, quadratic for jax.nn's (the check that the measure can tell).
        def temp_bytes(t, blocked):
            spec = jax.ShapeDtypeStruct((1, t, 2, 8), jnp.float32)
            key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

            def loss(q, k, v, key):
                if blocked:
                    return jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.9, block_size=16).sum()
                return jax.nn.dot_product_attention(q, k, v).sum()

            compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(spec, spec, spec, key).compile()
            return compiled.memory_analysis().temp_size_in_bytes

        small, large = 32, 96  # 3x the length: 3x the memory if linear, 9x if quadratic
        assert temp_bytes(large, True) / temp_bytes(small, True) < 4.5
        assert temp_bytes(large, False) / temp_bytes(small, False) > 6.0

    def test_residuals_are_inputs_output_and_row_statistics(self):
        q, k, v = inputs((1,), 40, 48, 2, 2, 4)
        bias = jax.random.normal(jax.random.key(4), (1, 1, 40, 1))
        _, vjp = jax.vjp(
            lambda q, k, v, bias: jdrop.dot_product_attention(
                q, k, v, bias, dropout_key=jax.random.key(0), keep_prob=0.8, block_size=8
            ),
            q,
            k,
            v,
            bias,
        )
        sizes = [leaf.size for leaf in jax.tree.leaves(vjp) if hasattr(leaf, "size")]
        assert max(sizes) < 40 * 48  # nothing of the weights' (T, S) size is kept


class GradientTest(chex.TestCase):
    @chex.variants(with_jit=True)
    @parameterized.named_parameters(
        *(
            (name, name)
            for name in (
                "t_ne_s_ragged",
                "bias_full_causal",
                "bias_broadcast_padding",
                "gqa_shared_heads",
                "batch_3d_shared_batch_and_queries",
            )
        )
    )
    def test_gradients_match_autodiff_of_the_formula(self, name):
        (q, k, v, bias, mask), options, block_size = case_arrays(name)
        if bias is None:
            bias = jnp.zeros((1,) * q.ndim, jnp.float32)  # the bias gradient of a fully broadcast bias
        cotangent = jax.random.normal(jax.random.key(9), q.shape)
        key = jax.random.key(5)

        def loss(f, **kwargs):
            return lambda q, k, v, bias, key: jnp.vdot(cotangent, f(q, k, v, bias, mask, dropout_key=key, **kwargs))

        ours = self.variant(
            jax.grad(loss(jdrop.dot_product_attention, block_size=block_size, keep_prob=0.7, **options), (0, 1, 2, 3))
        )(q, k, v, bias, key)
        expected = jax.grad(loss(materialised, keep_prob=0.7, **options), (0, 1, 2, 3))(
            q, k, v, bias, jax.random.clone(key)
        )
        for got, want, what in zip(ours[:3], expected[:3], ("query", "key", "value"), strict=True):
            chex.assert_equal_shape((got, want))
            scale = float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(got, want, rtol=0, atol=64 * k.shape[-3] * EPS32 * scale, err_msg=what)
        # The bias gradient is the logits' gradient (that of a bias of the weights' full shape) summed over
        # the bias's broadcast axes: the sum of `summed` entries adds that many roundings of its largest term.
        # (A bias constant along S has gradient 0, up to that rounding.)
        full = jnp.broadcast_to(bias, (*q.shape[:-3], q.shape[-2], q.shape[-3], k.shape[-3]))
        d_logits = jax.grad(loss(materialised, keep_prob=0.7, **options), 3)(q, k, v, full, jax.random.clone(key))
        summed = d_logits.size // bias.size
        atol = 16 * (k.shape[-3] + summed) * EPS32 * float(jnp.max(jnp.abs(d_logits)))
        chex.assert_equal_shape((ours[3], bias))
        np.testing.assert_allclose(ours[3], expected[3], rtol=0, atol=atol, err_msg="bias")


class TransformationTest(chex.TestCase):
    def test_per_example_keys_under_vmap(self):
        q, k, v = inputs((3,), 8, 12, 2, 2, 4)
        keys = jax.random.split(jax.random.key(0), 3)

        def one(q, k, v, key):
            return jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.5, block_size=5)

        out = jax.vmap(one)(q, k, v, keys)
        same_keys = jax.random.split(jax.random.key(0), 3)
        for i in range(3):
            expected = materialised(q[i], k[i], v[i], dropout_key=same_keys[i], keep_prob=0.5)
            np.testing.assert_allclose(out[i], expected, rtol=0, atol=tolerance(v, 12, 0.5))
        assert not np.allclose(out[0], out[1])

    def test_traced_keep_prob_compiles_once(self):
        q, k, v = inputs((2,), 8, 12, 2, 2, 4)

        @jax.jit
        @chex.assert_max_traces(n=1)
        def attention(q, k, v, key, keep_prob):
            return jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=keep_prob, block_size=5)

        for i, keep_prob in enumerate((0.9, 0.5, 0.3)):
            key = jax.random.key(i)
            out = attention(q, k, v, key, jnp.float32(keep_prob))
            expected = materialised(q, k, v, dropout_key=jax.random.clone(key), keep_prob=keep_prob)
            np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, 12, keep_prob))
        np.testing.assert_array_equal(attention(q, k, v, jax.random.key(9), jnp.float32(0.0)), 0.0)

    @parameterized.named_parameters(("bfloat16", jnp.bfloat16), ("float16", jnp.float16))
    def test_low_precision_inputs(self, dtype):
        q, k, v = inputs((2,), 9, 14, 2, 1, 8, dtype=dtype)
        key = jax.random.key(0)

        def loss(q, k, v, key):
            out = jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.8, block_size=4, is_causal=True)
            return out.astype(jnp.float32).sum(), out

        grads, out = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))(q, k, v, key)
        chex.assert_type([out, *grads], dtype)
        expected = materialised(q, k, v, dropout_key=jax.random.clone(key), keep_prob=0.8, is_causal=True)
        # The weights are rounded to the inputs' dtype before the product with v (as jax.nn's).
        eps = float(jnp.finfo(dtype).eps)
        np.testing.assert_allclose(out.astype(jnp.float32), expected, rtol=0, atol=tolerance(v, 14, 0.8, eps))
        for g in grads:
            assert bool(jnp.all(jnp.isfinite(g.astype(jnp.float32))))

    def test_checkpoint_and_scan(self):
        q, k, v = inputs((2,), 8, 12, 2, 2, 4)
        keys = jax.random.split(jax.random.key(0), 3)

        def layer(x, key):
            return jdrop.dot_product_attention(x, k, v, dropout_key=key, keep_prob=0.7, block_size=5), None

        def stacked(x, keys, layer_fn):
            return jax.lax.scan(layer_fn, x, keys)[0].sum()

        plain = jax.jit(jax.grad(lambda x, keys: stacked(x, keys, layer)))(q, keys)
        remat = jax.jit(jax.grad(lambda x, keys: stacked(x, keys, jax.checkpoint(layer))))(q, jax.random.clone(keys))
        np.testing.assert_allclose(remat, plain, rtol=1e-6, atol=1e-6)
        assert bool(jnp.any(plain != 0.0))

    def test_key_is_consumed_once(self):
        q, k, v = inputs((1,), 4, 4, 1, 1, 4)
        key = jax.random.key(0)
        jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.5)
        with pytest.raises(jax.errors.KeyReuseError):
            jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.5)


class ErrorTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("length", {"value": jnp.zeros((2, 6, 2, 4))}, ValueError, "key and value"),
        ("head_size", {"query": jnp.zeros((2, 5, 4, 3))}, ValueError, "head size"),
        ("batch", {"query": jnp.zeros((3, 5, 4, 4))}, ValueError, "batch axes"),
        ("heads", {"query": jnp.zeros((2, 5, 3, 4))}, ValueError, "multiple"),
        ("query_rank", {"query": jnp.zeros((5, 4))}, ValueError, "query"),
        ("dtype", {"query": jnp.zeros((2, 5, 4, 4), jnp.bfloat16)}, TypeError, "dtype"),
        ("integer", {"value": jnp.zeros((2, 7, 2, 4), jnp.int32)}, TypeError, "value"),
        ("bias_shape", {"bias": jnp.zeros((2, 4, 5, 6))}, ValueError, "bias"),
        ("bias_rank", {"bias": jnp.zeros((1, 2, 4, 5, 7))}, ValueError, "bias"),
        ("mask_shape", {"mask": jnp.ones((2, 3, 1, 7), bool)}, ValueError, "mask"),
        ("mask_dtype", {"mask": jnp.ones((2, 4, 5, 7))}, TypeError, "mask"),
        ("block_size", {"block_size": 0}, ValueError, "block_size"),
        ("keep_prob_zero", {"keep_prob": 0.0}, ValueError, "keep_prob"),
        ("keep_prob_large", {"keep_prob": 1.5}, ValueError, "keep_prob"),
        ("broadcast_dims", {"broadcast_dims": (4,)}, ValueError, "broadcast_dims"),
        ("deterministic", {"deterministic": "no"}, TypeError, "deterministic"),
        ("is_causal", {"is_causal": "yes"}, TypeError, "is_causal"),
        ("missing_key", {"dropout_key": None}, ValueError, "dropout_key"),
        ("implementation", {"implementation": "triton"}, ValueError, "implementation"),
        ("scale", {"scale": "large"}, TypeError, "scale"),
        ("query_seq_lengths", {"query_seq_lengths": jnp.array([1, 2, 3])}, ValueError, "query_seq_lengths"),
        ("key_value_seq_lengths", {"key_value_seq_lengths": jnp.array([1.0, 2.0])}, TypeError, "key_value_seq"),
        ("local_window_size", {"local_window_size": (2, -1)}, ValueError, "local_window_size"),
        ("local_window_size_triple", {"local_window_size": (1, 2, 3)}, ValueError, "local_window_size"),
    )
    def test_bad_input_raises_naming_the_argument(self, change, error, match):
        arguments = {
            "query": jnp.zeros((2, 5, 4, 4)),
            "key": jnp.zeros((2, 7, 2, 4)),
            "value": jnp.zeros((2, 7, 2, 4)),
            "dropout_key": jax.random.key(0),
            "keep_prob": 0.5,
        }
        arguments.update(change)
        with pytest.raises(error, match=match):
            jdrop.dot_product_attention(**arguments)


# Run in a subprocess with 4 host devices (the rest of the suite keeps one):
# the output and gradients under several shardings of the inputs equal the
# unsharded ones, so every device regenerates its part of the same mask.
SHARDING_CHECK = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import jdrop

# Sharding propagated by XLA (Auto axes) first.
mesh = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
kq, kk, kv = jax.random.split(jax.random.key(1), 3)
q = jax.random.normal(kq, (4, 12, 4, 8))
k = jax.random.normal(kk, (4, 20, 2, 8))
v = jax.random.normal(kv, (4, 20, 2, 8))

def attention(q, k, v, key):
    return jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.6, block_size=6, is_causal=True)

forward = jax.jit(attention)
backward = jax.jit(jax.grad(lambda q, k, v, key: (attention(q, k, v, key) ** 2).sum(), argnums=(0, 1, 2)))
expected = [forward(q, k, v, jax.random.key(0)), *backward(q, k, v, jax.random.key(0))]
layouts = {
    "batch x heads": (P("a", None, "b"), P("a", None, "b")),
    "queries": (P(None, ("a", "b")), P()),
    "keys": (P(), P(None, ("a", "b"))),
}
results = {}
for name, (q_spec, kv_spec) in layouts.items():
    qs = jax.device_put(q, NamedSharding(mesh, q_spec))
    ks, vs = (jax.device_put(x, NamedSharding(mesh, kv_spec)) for x in (k, v))
    got = [forward(qs, ks, vs, jax.random.key(0)), *backward(qs, ks, vs, jax.random.key(0))]
    results[name] = all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, expected))
# Explicit sharding in types (make_mesh's default) along the batch and the heads.
explicit = jax.make_mesh((2, 2), ("a", "b"))
qs = jax.device_put(q, NamedSharding(explicit, P("a", None, "b")))
ks, vs = (jax.device_put(x, NamedSharding(explicit, P("a", None, "b"))) for x in (k, v))
with jax.set_mesh(explicit):
    got = [forward(qs, ks, vs, jax.random.key(0)), *backward(qs, ks, vs, jax.random.key(0))]
results["explicit batch x heads"] = all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, expected))
print(json.dumps(results))
"""


@pytest.mark.slow  # a 4-device subprocess
def test_sharded_inputs_give_the_unsharded_result():
    results = run_on_host_devices(["-c", SHARDING_CHECK], 4)
    assert results == dict.fromkeys(("batch x heads", "queries", "keys", "explicit batch x heads"), True), results


class ScheduleTest(chex.TestCase):
    """The loop schedule (one CPU device) and the vmap one (GPU, several devices) give the same values."""

    @parameterized.named_parameters(("bias_full_causal", "bias_full_causal"), ("gqa_shared_heads", "gqa_shared_heads"))
    def test_vmap_schedule_equals_loop_schedule(self, name):
        import jdrop._attention as attention_module

        (q, k, v, bias, mask), options, block_size = case_arrays(name)
        if bias is None:
            bias = jnp.zeros((1,) * q.ndim, jnp.float32)

        def run():
            def loss(q, k, v, bias, key):
                out = jdrop.dot_product_attention(
                    q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, block_size=(4, block_size), **options
                )
                return (out**2).sum(), out

            return jax.jit(jax.grad(loss, argnums=(0, 1, 2, 3), has_aux=True))(q, k, v, bias, jax.random.key(2))

        loop_grads, loop_out = run()
        original = attention_module._schedule
        attention_module._schedule = lambda: "vmap"
        try:
            vmap_grads, vmap_out = run()
        finally:
            attention_module._schedule = original
        np.testing.assert_array_equal(vmap_out != 0.0, loop_out != 0.0)
        chex.assert_trees_all_close((vmap_out, vmap_grads), (loop_out, loop_grads), rtol=1e-5, atol=1e-5)

    def test_query_tiles_change_nothing_but_rounding(self):
        (q, k, v, bias, mask), options, _ = case_arrays("causal_t_ne_s_random_mask")
        key = jax.random.key(4)
        expected = materialised(q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, **options)
        for tiles in ((1, 5), (5, 3), (12, 20), (64, 64)):
            out = jdrop.dot_product_attention(
                q, k, v, bias, mask, dropout_key=jax.random.clone(key), keep_prob=0.7, block_size=tiles, **options
            )
            np.testing.assert_allclose(out, expected, rtol=0, atol=tolerance(v, 20, 0.7), err_msg=str(tiles))

    def test_rows_masked_by_a_large_bias_have_exact_gradients(self):
        # A bias of -1e9 on a whole row: its logsumexp, -1e9 + log(S), would round log(S) away
        # (float32 spacing at 1e9 is 64), so the backward keeps the row's shift and sum apart.
        q, k, v = inputs((1,), 6, 10, 2, 2, 4)
        bias = jnp.zeros((1, 2, 6, 10)).at[0, 1, 3].set(-1e9)
        cotangent = jax.random.normal(jax.random.key(1), q.shape)

        def loss(f, **kwargs):
            return lambda q, k, v: jnp.vdot(cotangent, f(q, k, v, bias, dropout_key=jax.random.key(0), **kwargs))

        ours = jax.grad(loss(jdrop.dot_product_attention, keep_prob=0.8, block_size=(2, 4)), (0, 1, 2))(q, k, v)
        expected = jax.grad(loss(materialised, keep_prob=0.8), (0, 1, 2))(q, k, v)
        for got, want in zip(ours, expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=64 * 10 * EPS32 * float(jnp.max(jnp.abs(want))))


# The sweeps' further cases, in the slow suite (`pytest -m slow`): each behaviour above keeps its
# causal and grouped-query cases (and the default block, eagerly) in the default run.
SLOW_CASES = frozenset(
    {
        "test_dropout_equals_materialised_formula_bias_broadcast_padding__with_jit",
        "test_dropout_equals_materialised_formula_causal_t_ne_s_random_mask__with_jit",
        "test_dropout_equals_materialised_formula_no_batch_shared_keys__with_jit",
        "test_dropout_equals_materialised_formula_eager_and_jit_batch_3d_shared_batch_and_queries__without_jit",
        "test_dropout_equals_materialised_formula_eager_and_jit_t_ne_s_ragged__without_jit",
        "test_gradients_match_autodiff_of_the_formula_bias_broadcast_padding__with_jit",
        "test_gradients_match_autodiff_of_the_formula_t_ne_s_ragged__with_jit",
        "test_reverse_over_reverse_matches_the_formula_gqa_mask",
        "test_reverse_over_reverse_matches_the_formula_padding",
        "test_vmap_schedule_equals_loop_schedule_gqa_shared_heads",
        "test_low_precision_inputs_float16",
        "test_dropout_equals_materialised_formula_eager_and_jit_batch_3d_shared_batch_and_queries__with_jit",
        "test_dropout_equals_materialised_formula_eager_and_jit_t_ne_s_ragged__with_jit",
        "test_dropout_off_calls_jax_nn_keep_prob_one",
        "test_scale_fast_path",
        "test_fully_masked_rows_give_zeros_and_finite_gradients_fast_path",
        "test_gradients_match_autodiff_of_the_formula_batch_3d_shared_batch_and_queries__with_jit",
        "test_query_tiles_change_nothing_but_rounding",
    }
)
