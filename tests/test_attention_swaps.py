"""Tests for the attention swaps: jdrop.nnx/linen.dot_product_attention and jdrop.equinox.MultiheadAttention.

Each is checked against its host: equal to the host's own result with dropout
off, and with dropout on equal to the host's materialised formula with its
bernoulli mask replaced by jdrop's (the reference below), over shapes, masks,
tiles, gradients, vmap and sharding.
"""

import functools

import chex
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from flax import linen, nnx
from flax.nnx.nn.attention import dot_product_attention_weights as nnx_weights
from multidevice_checks import run_on_host_devices

import jdrop
import jdrop._attention
import jdrop.equinox
import jdrop.linen
import jdrop.nnx

EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(autouse=True)
def small_tiles(monkeypatch):
    """Tiles of (3, 4): every case below spans several query and key tiles, padding included."""
    monkeypatch.setattr(jdrop._attention, "DEFAULT_TILES", {"loop": (3, 4), "vmap": (3, 4)})


def qkv(batch, t, s, n, k, h, hv=None, seed=0):
    kq, kk, kv = jax.random.split(jax.random.key(seed), 3)
    return (
        jax.random.normal(kq, (*batch, t, n, h)),
        jax.random.normal(kk, (*batch, s, k, h)),
        jax.random.normal(kv, (*batch, s, k, hv or h)),
    )


def flax_reference(q, k, v, bias=None, mask=None, *, rng, rate, broadcast_dropout=True, is_causal=False):
    """Flax NNX's materialised attention with jdrop's mask at Flax's dropout shape."""
    w = nnx_weights(q, k, bias, mask, deterministic=True, is_causal=is_causal)
    axes = tuple(range(w.ndim - 2)) if broadcast_dropout else ()
    w = jdrop.dropout(rng, w, 1.0 - rate, broadcast_dims=axes)
    groups = q.shape[-2] // v.shape[-2]
    return jnp.einsum("...hqk,...khd->...qhd", w, jnp.repeat(v, groups, axis=-2))


def atol(v, s, rate):
    """Rounding bound of a sum of S weights (each at most 1 / keep) times values: see test_attention."""
    return 4 * s * EPS32 * float(jnp.max(jnp.abs(v))) / (1.0 - rate)


CASES = {
    # name: (batch, T, S, N, K, H, Hv, bias shape, mask kind, is_causal, broadcast_dropout)
    "ragged_t_ne_s": ((2,), 7, 10, 2, 2, 4, 4, None, None, False, True),
    "per_example_masks": ((2,), 7, 10, 2, 2, 4, 6, None, None, False, False),
    "bias_padding": ((3,), 5, 9, 2, 2, 4, 4, (3, 1, 5, 9), "padding", False, False),
    "causal_gqa": ((2,), 8, 8, 4, 2, 4, 4, None, None, True, False),
    "fully_masked_rows": ((2,), 6, 7, 2, 2, 4, 4, None, "rows", False, False),
    "batch_3d": ((2, 1, 2), 5, 6, 2, 2, 4, 4, (1, 1, 2, 1, 5, 6), "padding", False, True),
}


def case(name):
    batch, t, s, n, k, h, hv, bias_shape, mask_kind, is_causal, broadcast_dropout = CASES[name]
    q, key, value = qkv(batch, t, s, n, k, h, hv)
    bias = None if bias_shape is None else jax.random.normal(jax.random.key(7), bias_shape)
    mask = None
    if mask_kind == "padding":  # as Flax builds it: float32, 1 means attend
        lengths = jnp.arange(int(np.prod(batch))).reshape(batch) % s + 2
        keep = jnp.arange(s).reshape((1,) * len(batch) + (s,)) < lengths[..., None]
        mask = linen.make_attention_mask(jnp.ones((*batch, t)), keep.astype(jnp.float32))
    elif mask_kind == "rows":  # rows 1 and 4 of every head attend nothing
        mask = jnp.ones((*batch, 1, t, s), bool).at[..., 1, :].set(False).at[..., 4, :].set(False)
    return (q, key, value, bias, mask), {"is_causal": is_causal, "broadcast_dropout": broadcast_dropout}


class NNXTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(*((name, name) for name in CASES))
    def test_dropout_equals_flax_formula_with_jdrop_mask(self, name):
        (q, k, v, bias, mask), options = case(name)
        rng = jax.random.key(3)

        @self.variant
        def attention(q, k, v, bias, mask, rng):
            return jdrop.nnx.dot_product_attention(q, k, v, bias, mask, dropout_rng=rng, dropout_rate=0.3, **options)

        out = attention(q, k, v, bias, mask, rng)
        expected = flax_reference(q, k, v, bias, mask, rng=jax.random.clone(rng), rate=0.3, **options)
        chex.assert_shape(out, expected.shape)
        np.testing.assert_allclose(out, expected, rtol=0, atol=atol(v, k.shape[-3], 0.3))

    @parameterized.named_parameters(("deterministic", True, 0.3), ("rate_zero", False, 0.0))
    def test_dropout_off_is_flax(self, deterministic, rate):
        for name in CASES:
            (q, k, v, bias, mask), options = case(name)
            if rate == 0.0 and (v.shape[-1] != q.shape[-1] or q.ndim > 4):
                # Flax's fast path (jax.nn) fails there (no value head size of its own; a bias with
                # several broadcast batch axes is flattened wrongly): Flax raises, and so do we.
                continue
            kwargs = dict(dropout_rate=rate, deterministic=deterministic, **options)
            out = jdrop.nnx.dot_product_attention(q, k, v, bias, mask, **kwargs)
            expected = nnx.dot_product_attention(q, k, v, bias, mask, **kwargs)
            np.testing.assert_array_equal(out, expected, err_msg=name)

    @parameterized.named_parameters(("ragged_t_ne_s", "ragged_t_ne_s"), ("bias_padding", "bias_padding"))
    def test_gradients_match_autodiff_of_the_formula(self, name):
        (q, k, v, bias, mask), options = case(name)
        cotangent = jax.random.normal(jax.random.key(9), q.shape[:-1] + v.shape[-1:])

        def loss(f, **kwargs):
            return lambda q, k, v, bias: jnp.vdot(cotangent, f(q, k, v, bias, mask, **kwargs, **options))

        argnums = (0, 1, 2) if bias is None else (0, 1, 2, 3)
        ours = jax.jit(
            jax.grad(loss(jdrop.nnx.dot_product_attention, dropout_rng=jax.random.key(1), dropout_rate=0.3), argnums)
        )(q, k, v, bias)
        expected = jax.grad(loss(flax_reference, rng=jax.random.key(1), rate=0.3), argnums)(q, k, v, bias)
        weights = q.size // q.shape[-1] * k.shape[-3]  # entries of the (..., N, T, S) weights
        for got, want in zip(ours, expected, strict=True):
            chex.assert_equal_shape((got, want))
            # Each entry sums weights // got.size terms of the logits' gradient (the bias: its broadcast ones).
            bound = 64 * (k.shape[-3] + weights // got.size) * EPS32 * float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(got, want, rtol=0, atol=bound)

    def test_module_sows_flax_weights_before_dropout(self):
        layer = nnx.MultiHeadAttention(
            num_heads=2, in_features=8, decode=False, rngs=nnx.Rngs(0), attention_fn=jdrop.nnx.dot_product_attention
        )
        (q, k, v, _, _), _ = case("ragged_t_ne_s")
        out = jdrop.nnx.dot_product_attention(q, k, v, dropout_rng=jax.random.key(2), dropout_rate=0.3, module=layer)
        (sown,) = jax.tree.leaves(nnx.state(layer, nnx.Intermediate))
        np.testing.assert_allclose(sown, nnx_weights(q, k), rtol=1e-6, atol=1e-6)
        expected = flax_reference(q, k, v, rng=jax.random.key(2), rate=0.3)
        np.testing.assert_allclose(out, expected, rtol=0, atol=atol(v, 10, 0.3))

    def test_multi_head_attention_swap(self):
        def build(attention_fn):
            return nnx.MultiHeadAttention(
                num_heads=4, in_features=16, dropout_rate=0.2, decode=False, rngs=nnx.Rngs(0, dropout=5),
                attention_fn=attention_fn,
            )  # fmt: skip

        def reference_fn(query, key, value, *, dropout_rng, dropout_rate, deterministic, **kwargs):
            if deterministic:
                return nnx.dot_product_attention(query, key, value, **kwargs)
            return flax_reference(query, key, value, mask=kwargs.get("mask"), rng=dropout_rng, rate=dropout_rate)

        x = jax.random.normal(jax.random.key(1), (2, 9, 16))
        mask = nnx.make_causal_mask(jnp.ones((2, 9)))
        swapped, reference = build(jdrop.nnx.dot_product_attention), build(reference_fn)
        train = swapped(x, mask=mask, deterministic=False)
        np.testing.assert_allclose(train, reference(x, mask=mask, deterministic=False), rtol=0, atol=1e-5)
        flax_module = build(nnx.dot_product_attention)
        np.testing.assert_array_equal(
            swapped(x, mask=mask, deterministic=True), flax_module(x, mask=mask, deterministic=True)
        )

    def test_per_example_keys_under_vmap(self):
        (q, k, v, _, _), _ = case("ragged_t_ne_s")
        rngs = jax.random.split(jax.random.key(0), 2)
        out = jax.vmap(
            lambda q, k, v, rng: jdrop.nnx.dot_product_attention(q, k, v, dropout_rng=rng, dropout_rate=0.5)
        )(q, k, v, rngs)
        same = jax.random.split(jax.random.key(0), 2)
        for i in range(2):
            expected = flax_reference(q[i], k[i], v[i], rng=same[i], rate=0.5)
            np.testing.assert_allclose(out[i], expected, rtol=0, atol=atol(v, 10, 0.5))

    def test_rate_one_gives_zeros_with_zero_gradients(self):
        (q, k, v, _, _), _ = case("ragged_t_ne_s")

        def loss(q):
            return jdrop.nnx.dot_product_attention(q, k, v, dropout_rng=jax.random.key(0), dropout_rate=1.0).sum()

        np.testing.assert_array_equal(
            jdrop.nnx.dot_product_attention(q, k, v, dropout_rng=jax.random.key(1), dropout_rate=1.0), 0.0
        )
        np.testing.assert_array_equal(jax.grad(loss)(q), 0.0)

    @parameterized.named_parameters(
        ("rate_above_one", {"dropout_rate": 1.5}, ValueError, "dropout_rate"),
        ("rate_negative", {"dropout_rate": -0.1}, ValueError, "dropout_rate"),
        ("missing_rng", {"dropout_rng": None}, ValueError, "dropout_rng"),
        ("deterministic_string", {"deterministic": "no"}, TypeError, "deterministic"),
        ("mask_shape", {"mask": jnp.ones((2, 3, 7, 10))}, ValueError, "mask"),
    )
    def test_bad_input_raises_naming_the_argument(self, change, error, match):
        (q, k, v, _, _), _ = case("ragged_t_ne_s")
        arguments = {"dropout_rng": jax.random.key(0), "dropout_rate": 0.3, **change}
        with pytest.raises(error, match=match):
            jdrop.nnx.dot_product_attention(q, k, v, **arguments)

    def test_traced_rate_raises(self):
        (q, k, v, _, _), _ = case("ragged_t_ne_s")
        with pytest.raises(TypeError, match="dropout_rate"):
            jax.jit(
                lambda rate: jdrop.nnx.dot_product_attention(q, k, v, dropout_rng=jax.random.key(0), dropout_rate=rate)
            )(0.3)


class LinenTest(chex.TestCase):
    @parameterized.named_parameters(("broadcast", True), ("per_example", False))
    def test_dropout_equals_flax_formula_with_jdrop_mask(self, broadcast_dropout):
        (q, k, v, bias, mask), _ = case("bias_padding")
        out = jax.jit(
            functools.partial(jdrop.linen.dot_product_attention, dropout_rate=0.3, broadcast_dropout=broadcast_dropout)
        )(q, k, v, bias, mask, dropout_rng=jax.random.key(4))
        w = linen.dot_product_attention_weights(q, k, bias, mask)
        w = jdrop.dropout(jax.random.key(4), w, 0.7, broadcast_dims=(0, 1) if broadcast_dropout else ())
        np.testing.assert_allclose(out, jnp.einsum("...hqk,...khd->...qhd", w, v), rtol=0, atol=atol(v, 9, 0.3))

    def test_dropout_off_is_flax(self):
        (q, k, v, bias, mask), _ = case("bias_padding")
        for kwargs in ({"deterministic": True, "dropout_rate": 0.3}, {"dropout_rate": 0.0}):
            np.testing.assert_array_equal(
                jdrop.linen.dot_product_attention(q, k, v, bias, mask, **kwargs),
                linen.dot_product_attention(q, k, v, bias, mask, **kwargs),
            )

    def test_module_swap_sows_and_matches_the_materialised_path(self):
        def build(attention_fn):
            return linen.MultiHeadDotProductAttention(num_heads=2, dropout_rate=0.25, attention_fn=attention_fn)

        x = jax.random.normal(jax.random.key(0), (2, 7, 8))
        swapped = build(jdrop.linen.dot_product_attention)
        params = swapped.init(jax.random.key(1), x, deterministic=True)
        rngs = {"dropout": jax.random.key(2)}
        out = swapped.apply(params, x, deterministic=False, rngs=rngs)
        sown, state = swapped.apply(
            params, x, deterministic=False, sow_weights=True, rngs=rngs, mutable="intermediates"
        )
        np.testing.assert_allclose(out, sown, rtol=0, atol=1e-5)  # the materialised path: the same mask
        assert jax.tree.leaves(state["intermediates"])[0].shape == (2, 2, 7, 7)
        flax_module = build(linen.dot_product_attention)
        np.testing.assert_array_equal(
            swapped.apply(params, x, deterministic=True), flax_module.apply(params, x, deterministic=True)
        )

    def test_grouped_heads_raise_as_flax(self):
        q, k, v = qkv((1,), 4, 4, 4, 2, 4)
        with pytest.raises(ValueError, match="heads"):
            jdrop.linen.dot_product_attention(q, k, v, dropout_rng=jax.random.key(0), dropout_rate=0.3)


class FlaxEdgesTest(chex.TestCase):
    """What Flax's attention functions accept, the swaps accept, with the same output dtype."""

    @parameterized.named_parameters(("nnx", "nnx"), ("linen", "linen"))
    def test_integer_bias_and_deterministic_none_are_flax_s(self, host):
        ours = {"nnx": jdrop.nnx, "linen": jdrop.linen}[host].dot_product_attention
        (q, k, v, bias, mask), _ = case("bias_padding")
        integer_bias = jnp.round(bias * 3).astype(jnp.int32)
        out = ours(q, k, v, integer_bias, mask, dropout_rng=jax.random.key(1), dropout_rate=0.3, deterministic=None)
        expected = flax_reference(q, k, v, integer_bias.astype(jnp.float32), mask, rng=jax.random.key(1), rate=0.3)
        np.testing.assert_allclose(out, expected, rtol=0, atol=atol(v, 9, 0.3))

    @parameterized.named_parameters(("float32_softmax", True), ("bfloat16_softmax", False))
    def test_linen_output_dtype_is_flax_s_in_training_and_evaluation(self, force_fp32_for_softmax):
        q, k, v = (x.astype(jnp.bfloat16) for x in qkv((2,), 5, 6, 2, 2, 4))
        for deterministic in (False, True):
            kwargs = {
                "dropout_rate": 0.2,
                "deterministic": deterministic,
                "force_fp32_for_softmax": force_fp32_for_softmax,
            }
            with jax.numpy_dtype_promotion("standard"):  # Flax's float32 weights times bfloat16 values
                ours = jdrop.linen.dot_product_attention(q, k, v, dropout_rng=jax.random.key(0), **kwargs)
                theirs = linen.dot_product_attention(q, k, v, dropout_rng=jax.random.key(1), **kwargs)
            assert ours.dtype == theirs.dtype, (deterministic, ours.dtype, theirs.dtype)

    def test_rows_a_minus_inf_bias_empties_are_finite_in_training(self):
        # Flax gives NaN on such a row (its contract, kept in evaluation); in training the swap is finite
        # everywhere and equal to Flax's formula wherever Flax is finite.
        q, k, v = qkv((2,), 7, 10, 2, 2, 4)
        bias = jnp.zeros((2, 2, 7, 10)).at[0, 1, 3].set(-jnp.inf)
        out = jdrop.nnx.dot_product_attention(q, k, v, bias, dropout_rng=jax.random.key(2), dropout_rate=0.3)
        expected = flax_reference(q, k, v, bias, rng=jax.random.key(2), rate=0.3)
        assert bool(jnp.all(jnp.isfinite(out))) and not bool(jnp.all(jnp.isfinite(expected)))
        finite = jnp.isfinite(expected)
        np.testing.assert_allclose(jnp.where(finite, out, 0.0), jnp.where(finite, expected, 0.0), atol=atol(v, 10, 0.3))
        evaluation = jdrop.nnx.dot_product_attention(q, k, v, bias, deterministic=True, dropout_rate=0.3)
        # Flax's own result for the same arguments: with dropout_rate 0.3 it takes its weights path, not
        # jax.nn's fast path (the two differ in the last bit).
        host = nnx.dot_product_attention(q, k, v, bias, deterministic=True, dropout_rate=0.3)
        np.testing.assert_array_equal(evaluation, host)


class EquinoxTest(chex.TestCase):
    def modules(self, dropout_p=0.3, **kwargs):
        ours = jdrop.equinox.MultiheadAttention(4, 16, dropout_p=dropout_p, key=jax.random.key(0), **kwargs)
        host = eqx.nn.MultiheadAttention(4, 16, dropout_p=dropout_p, key=jax.random.key(0), **kwargs)
        reference = eqx.tree_at(lambda m: m.dropout, host, jdrop.equinox.Dropout(dropout_p))
        return ours, host, reference

    def inputs(self):
        x = jax.random.normal(jax.random.key(1), (7, 16))
        y = jax.random.normal(jax.random.key(2), (10, 16))
        return x, y

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters(("no_mask", None), ("mask_2d", 2), ("mask_per_head", 3))
    def test_equals_equinox_with_jdrop_dropout(self, mask_rank):
        ours, _, reference = self.modules(qk_size=6, vo_size=5)
        x, y = self.inputs()
        mask = None
        if mask_rank:
            shape = (7, 10) if mask_rank == 2 else (4, 7, 10)
            mask = jax.random.bernoulli(jax.random.key(3), 0.7, shape).at[..., 2, :].set(False)
        out = self.variant(lambda x, y, key: ours(x, y, y, mask, key=key))(x, y, jax.random.key(4))
        expected = reference(x, y, y, mask, key=jax.random.key(4))
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)

    def test_inference_is_equinox(self):
        ours, host, _ = self.modules()
        x, y = self.inputs()
        np.testing.assert_array_equal(ours(x, y, y, inference=True), host(x, y, y, inference=True))
        np.testing.assert_array_equal(eqx.nn.inference_mode(ours)(x, y, y), host(x, y, y, inference=True))
        assert isinstance(ours, eqx.nn.MultiheadAttention) and isinstance(ours.dropout, jdrop.equinox.Dropout)

    def test_gradients_and_vmapped_keys(self):
        ours, _, reference = self.modules()
        x, y = self.inputs()
        xs, ys = jnp.stack([x, x + 1.0]), jnp.stack([y, y - 1.0])
        keys = jax.random.split(jax.random.key(5), 2)

        def loss(model, xs, ys, keys):
            return (jax.vmap(lambda x, y, k: model(x, y, y, key=k))(xs, ys, keys) ** 2).sum()

        got = eqx.filter_jit(eqx.filter_grad(loss))(ours, xs, ys, keys)
        want = eqx.filter_grad(loss)(reference, xs, ys, jax.random.clone(keys))
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)

    def test_process_heads_and_rate_one(self):
        ours, _, reference = self.modules()
        x, y = self.inputs()

        def rotate(q, k, v):
            return q[:, ::-1], k * 2.0, v

        out = ours(x, y, y, key=jax.random.key(6), process_heads=rotate)
        np.testing.assert_allclose(out, reference(x, y, y, key=jax.random.key(6), process_heads=rotate), atol=1e-5)
        all_dropped, _, _ = self.modules(dropout_p=1.0, use_output_bias=True)
        np.testing.assert_allclose(
            all_dropped(x, y, y, key=jax.random.key(7)), jnp.broadcast_to(all_dropped.output_proj.bias, (7, 16))
        )

    @pytest.mark.standard_promotion  # Equinox's products promote the float32 heads with bfloat16 values
    def test_heads_of_different_dtypes_as_equinox(self):
        # RoPE in float32 on bfloat16 projections: process_heads returns float32 queries and keys.
        ours, host, reference = self.modules(dtype=jnp.bfloat16)
        x, y = (a.astype(jnp.bfloat16) for a in self.inputs())

        def rope_in_float32(q, k, v):
            return q.astype(jnp.float32), k.astype(jnp.float32), v

        out = ours(x, y, y, key=jax.random.key(8), process_heads=rope_in_float32)
        expected = reference(x, y, y, key=jax.random.key(8), process_heads=rope_in_float32)
        assert out.dtype == host(x, y, y, key=jax.random.key(9), process_heads=rope_in_float32).dtype
        np.testing.assert_allclose(out.astype(jnp.float32), expected.astype(jnp.float32), rtol=0, atol=0.05)

    def test_bad_input(self):
        with pytest.raises(ValueError, match="dropout_p"):
            jdrop.equinox.MultiheadAttention(2, 8, dropout_p=1.5, key=jax.random.key(0))
        ours, _, _ = self.modules()
        x, y = self.inputs()
        with pytest.raises(RuntimeError, match="key"):
            ours(x, y, y)
        with pytest.raises(ValueError, match="mask"):
            ours(x, y, y, jnp.ones((7, 9), bool), key=jax.random.key(0))


# In a subprocess with 4 host devices: with inputs sharded along the batch and the heads the swap gives
# the unsharded result, and its compiled forward and backward contain no collective.
SHARDING_CHECK = r"""
import json, re
import jax, jax.numpy as jnp, numpy as np
from multidevice_checks import COLLECTIVES
from jax.sharding import NamedSharding, PartitionSpec as P
import jdrop.nnx

mesh = jax.make_mesh((2, 2), ("a", "b"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
kq, kk, kv = jax.random.split(jax.random.key(1), 3)
q, k, v = (jax.random.normal(x, (4, 12, 4, 8)) for x in (kq, kk, kv))
mask = jnp.tril(jnp.ones((12, 12), bool))[None, None]

def attention(q, k, v, rng):
    return jdrop.nnx.dot_product_attention(
        q, k, v, mask=mask, dropout_rng=rng, dropout_rate=0.4, broadcast_dropout=False
    )

forward = jax.jit(attention)
backward = jax.jit(jax.grad(lambda q, k, v, rng: (attention(q, k, v, rng) ** 2).sum(), argnums=(0, 1, 2)))
expected = [forward(q, k, v, jax.random.key(0)), *backward(q, k, v, jax.random.key(0))]
spec = NamedSharding(mesh, P("a", None, "b"))
qs, ks, vs = (jax.device_put(x, spec) for x in (q, k, v))
got = [forward(qs, ks, vs, jax.random.key(0)), *backward(qs, ks, vs, jax.random.key(0))]
collective = re.compile("|".join(COLLECTIVES))
hlo = "".join(f.lower(qs, ks, vs, jax.random.key(0)).compile().as_text() for f in (forward, backward))
print(json.dumps({
    "equal": all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, expected)),
    "collectives": sorted(set(collective.findall(hlo))),
}))
"""


@pytest.mark.slow  # a 4-device subprocess
def test_sharded_swap_gives_the_unsharded_result_without_collectives():
    assert run_on_host_devices(["-c", SHARDING_CHECK], 4) == {"equal": True, "collectives": []}


def test_each_swap_consumes_its_key_once():
    # The key-reuse checker is on (conftest): a second call with the same key is caught.
    (q, k, v, _, _), _ = case("ragged_t_ne_s")
    for attention in (jdrop.nnx.dot_product_attention, jdrop.linen.dot_product_attention):
        rng = jax.random.key(0)
        attention(q, k, v, dropout_rng=rng, dropout_rate=0.3)
        with pytest.raises(jax.errors.KeyReuseError):
            attention(q, k, v, dropout_rng=rng, dropout_rate=0.3)
    module = jdrop.equinox.MultiheadAttention(2, 8, dropout_p=0.3, key=jax.random.key(1))
    x, key = jnp.ones((5, 8)), jax.random.key(2)
    module(x, x, x, key=key)
    with pytest.raises(jax.errors.KeyReuseError):
        module(x, x, x, key=key)


# The sweeps' further cases, in the slow suite (`pytest -m slow`): each behaviour above keeps at
# least one case, jitted and eager, in the default run.
SLOW_CASES = frozenset(
    {
        "test_dropout_equals_flax_formula_with_jdrop_mask_batch_3d__without_jit",
        "test_dropout_equals_flax_formula_with_jdrop_mask_bias_padding__without_jit",
        "test_dropout_equals_flax_formula_with_jdrop_mask_causal_gqa__without_jit",
        "test_dropout_equals_flax_formula_with_jdrop_mask_per_example_masks__without_jit",
        "test_dropout_equals_flax_formula_with_jdrop_mask_ragged_t_ne_s__without_jit",
        "test_dropout_equals_flax_formula_with_jdrop_mask_per_example_masks__with_jit",
        "test_dropout_equals_flax_formula_with_jdrop_mask_ragged_t_ne_s__with_jit",
        "test_equals_equinox_with_jdrop_dropout_mask_per_head__without_jit",
        "test_equals_equinox_with_jdrop_dropout_no_mask__without_jit",
        "test_gradients_match_autodiff_of_the_formula_ragged_t_ne_s",
        "test_dropout_equals_flax_formula_with_jdrop_mask_batch_3d__with_jit",
        "test_equals_equinox_with_jdrop_dropout_mask_per_head__with_jit",
        "test_dropout_off_is_flax_rate_zero",
        "test_integer_bias_and_deterministic_none_are_flax_s_linen",
    }
)
