"""Tests for jdrop._pallas_attention: the Pallas kernels, interpreted on CPU, and their lowerings for GPU and TPU.

On CPU the kernels run under Pallas's interpreter: the same kernel bodies that
Triton (GPU) and Mosaic (TPU) compile. They are checked against the
materialised formula and against the XLA tiles (``implementation="xla"``),
with the dropout mask bit for bit. The lowering tests export the same
functions for ``cuda`` and ``tpu`` (``jax.export``, no device needed): what
catches a kernel that interprets but that Triton's or Mosaic's lowering
refuses (block shapes, layouts, dtypes). Sizes stay small in the interpreter;
the realistic lowering sweep is in the slow suite.
"""

import contextlib
import re

import chex
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
import pytest
from absl.testing import parameterized
from multidevice_checks import run_on_host_devices
from test_attention import EPS32, case_mask, inputs, materialised, tolerance

import jdrop
from jdrop import _pallas_attention
from jdrop._attention import _dropout_attention
from jdrop._dropout import _threshold_and_effective
from jdrop._generator import hash16, seeds_of

PALLAS = {"implementation": "pallas"}

# The interpreter compiles slowly: these cases run in the slow suite only (conftest.py), each behaviour
# keeping a case in the default run.
SLOW_CASES = frozenset(
    {
        "test_mask_bits_equal_dropout_mask_and_xla_tiles_32_32_shared_heads",
        "test_mask_bits_equal_dropout_mask_and_xla_default_tiles_shared_queries",
        "test_values_and_gradients_match_the_formula_and_xla_bfloat16_window_broadcast_bias",
        "test_values_and_gradients_match_the_formula_and_xla_float16_two_batch_axes_random_mask",
        "test_mask_bits_equal_dropout_mask_and_xla_tiles_16_32_shared_batch_and_keys",
    }
)


def test_the_kernels_uniform_is_the_generators_hash16():
    # The kernels split the hash into row, column and per-weight parts, and leave out a last xor-shift
    # that cannot change the top 16 bits: the same uniforms, so the same masks.
    seeds = seeds_of(jax.random.key(0))
    row = jax.random.bits(jax.random.key(1), (64, 1), jnp.uint32)
    col = jnp.concatenate([jnp.arange(32, dtype=jnp.uint32), jnp.uint32(2**32 - 32) + jnp.arange(32, dtype=jnp.uint32)])
    col = col.reshape(1, -1)
    words = tuple(seeds[i] for i in range(seeds.shape[0]))
    ours = _pallas_attention._uniform16(
        words, _pallas_attention._row_hash(words, row), _pallas_attention._col_hash(words, col)
    )
    np.testing.assert_array_equal(ours, hash16(seeds, row, col))


def identity_values(batch, t, s, n, k):
    """Zero queries and keys (uniform weights) and identity values, H = S: the output *is* the weights."""
    q = jnp.zeros((*batch, t, n, s))
    keys = jnp.zeros((*batch, s, k, s))
    values = jnp.broadcast_to(jnp.eye(s)[:, None, :], (*batch, s, k, s))
    return q, keys, values


class MaskBitsTest(parameterized.TestCase):
    @parameterized.named_parameters(
        ("tiles_16_16", (16, 16), ()),
        ("tiles_32_32_shared_heads", (32, 32), (-3,)),
        ("default_tiles_shared_queries", None, (-2,)),
        ("tiles_16_32_shared_batch_and_keys", (16, 32), (0, -1)),
    )
    def test_mask_bits_equal_dropout_mask_and_xla(self, block_size, broadcast_dims):
        # Output (b, t, n, h) is weight (b, n, t, h) after dropout: non-zero exactly where the mask keeps.
        # S = 40 is padded to whole key tiles and the head size to 64: neither may shift a counter.
        batch, t, s, n, k = (2,), 24, 40, 4, 2
        q, keys, values = identity_values(batch, t, s, n, k)
        key = jax.random.key(3)

        def attention(q, keys, values, key, implementation, block_size):
            return jdrop.dot_product_attention(
                q,
                keys,
                values,
                dropout_key=key,
                keep_prob=0.6,
                broadcast_dims=broadcast_dims,
                block_size=block_size,
                implementation=implementation,
            )

        ours = jax.jit(attention, static_argnums=(4, 5))(q, keys, values, key, "pallas", block_size)
        kept = jnp.swapaxes(ours, -3, -2) != 0.0  # (b, n, t, s)
        shape = tuple(
            1 if axis - 4 in broadcast_dims or axis in broadcast_dims else size
            for axis, size in enumerate((*batch, n, t, s))
        )
        expected = jnp.broadcast_to(jdrop.dropout_mask(jax.random.clone(key), shape, 0.6), kept.shape)
        np.testing.assert_array_equal(kept, expected)
        xla = jax.jit(attention, static_argnums=(4, 5))(q, keys, values, jax.random.clone(key), "xla", 8)
        np.testing.assert_array_equal(kept, jnp.swapaxes(xla, -3, -2) != 0.0)
        # Each kept weight is 1 / (S keep): the same values as the tiles give.
        np.testing.assert_allclose(ours, xla, rtol=0, atol=4 * EPS32)
        assert 0.5 < float(kept.mean()) < 0.7


# name: (batch, T, S, N, K, H, dtype, bias shape or None, mask kind, is_causal, window, broadcast_dims, block_size)
CASES = {
    # Causal with T != S, GQA, a full bias, padding (the sequence lengths' mask) and a row no key can attend.
    "causal_gqa_bias_padding": (
        (2,),
        20,
        36,
        4,
        2,
        8,
        jnp.float32,
        (2, 4, 20, 36),
        "padding",
        True,
        None,
        (),
        (16, 16),
    ),
    # A broadcast bias (T and batch shared), a local window, shared heads in the mask, bfloat16.
    "bfloat16_window_broadcast_bias": (
        (2,),
        24,
        24,
        2,
        1,
        16,
        jnp.bfloat16,
        (2, 1, 24),
        None,
        False,
        (3, 2),
        (-3,),
        None,
    ),
    # Two batch axes, a random mask shared by the queries, float16, ragged head size (12, padded to 16).
    "float16_two_batch_axes_random_mask": (
        (2, 1),
        17,
        33,
        2,
        2,
        12,
        jnp.float16,
        None,
        "random",
        True,
        None,
        (-2,),
        (16, 32),
    ),
}


def case_arrays(name):
    batch, t, s, n, k, h, dtype, bias_shape, mask_kind, is_causal, window, broadcast_dims, block_size = CASES[name]
    q, key, value = inputs(batch, t, s, n, k, h, dtype=dtype)
    bias = None if bias_shape is None else jax.random.normal(jax.random.key(7), bias_shape)
    mask = case_mask(batch, s, n, mask_kind)
    if bias is not None and mask_kind == "padding":  # a row that no key can attend: output 0, gradients 0
        bias = bias.at[0, 1, 3].set(-jnp.inf)
    options = {"is_causal": is_causal, "broadcast_dims": broadcast_dims, "local_window_size": window}
    return (q, key, value, bias, mask), options, block_size


class FormulaTest(parameterized.TestCase):
    @parameterized.named_parameters((name, name) for name in CASES)
    def test_values_and_gradients_match_the_formula_and_xla(self, name):
        (q, k, v, bias, mask), options, block_size = case_arrays(name)
        key = jax.random.key(5)
        direction = jax.random.normal(jax.random.key(6), (*q.shape[:-1], v.shape[-1]))
        window = options["local_window_size"]
        reference_options = {
            "is_causal": options["is_causal"],
            "broadcast_dims": options["broadcast_dims"],
            "window": None if window is None else tuple(window),
        }

        def loss(f, **kwargs):
            def value_and_out(q, k, v, bias, key):
                out = f(q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, **kwargs)
                return jnp.vdot(direction, out.astype(jnp.float32)), out

            return jax.jit(jax.grad(value_and_out, argnums=(0, 1, 2, 3), has_aux=True))

        run = loss(jdrop.dot_product_attention, block_size=block_size, **options, **PALLAS)
        grads, out = run(q, k, v, bias, key)
        chex.assert_type([out, *grads[:3]], q.dtype)
        xla_grads, xla_out = loss(jdrop.dot_product_attention, implementation="xla", **options)(
            q, k, v, bias, jax.random.clone(key)
        )
        formula_grads, formula_out = loss(materialised, **reference_options)(
            *(x.astype(jnp.float32) for x in (q, k, v)), bias, jax.random.clone(key)
        )
        eps = float(jnp.finfo(q.dtype).eps)
        s = k.shape[-3]
        atol = tolerance(v, s, 0.7, eps)
        np.testing.assert_allclose(out.astype(jnp.float32), formula_out, rtol=0, atol=atol)
        np.testing.assert_allclose(out.astype(jnp.float32), xla_out.astype(jnp.float32), rtol=0, atol=atol)
        for got, xla, want, what in zip(
            grads, xla_grads, formula_grads, ("query", "key", "value", "bias"), strict=True
        ):
            if want is None:  # no bias
                continue
            want = want.astype(jnp.float32)
            scale = float(jnp.max(jnp.abs(want)))
            bound = 64 * s * eps * scale
            np.testing.assert_allclose(got.astype(jnp.float32), want, rtol=0, atol=bound, err_msg=what)
            np.testing.assert_allclose(
                got.astype(jnp.float32), xla.astype(jnp.float32), rtol=0, atol=bound, err_msg=what
            )
        if name == "causal_gqa_bias_padding":  # the row no key can attend: 0, and it passes no gradient
            np.testing.assert_array_equal(out[0, 3, 1], 0.0)
            np.testing.assert_array_equal(grads[0][0, 3, 1], 0.0)

    def test_flax_and_equinox_conventions(self):
        # The swaps' calls: a finite masked logit (a row with no key left spreads its weight over every key)
        # and one set of key words per head (Equinox), with a row masked out entirely.
        q, k, v = inputs((), 12, 20, 4, 2, 16)
        mask = jnp.ones((4, 12, 20), bool).at[1, 5].set(False)
        seeds = jax.vmap(seeds_of)(jax.random.split(jax.random.key(0), 4))
        threshold, effective = _threshold_and_effective(0.75)

        def attention(q, k, v, implementation):
            return _dropout_attention(
                q,
                k,
                v,
                None,
                mask,
                seeds=seeds,
                threshold=threshold,
                inv_keep=1.0 / effective,
                shared=frozenset(),
                scale=0.25,
                is_causal=True,
                block_size=None,
                masked_logit=float(np.finfo(np.float32).min),
                head_seeds=True,
                implementation=implementation,
            )

        def grads(implementation):
            return jax.jit(
                jax.value_and_grad(lambda q, k, v: (attention(q, k, v, implementation) ** 2).sum(), (0, 1, 2))
            )

        (value, ours), (value_xla, xla) = grads("pallas")(q, k, v), grads("xla")(q, k, v)
        np.testing.assert_allclose(value, value_xla, rtol=1e-5)
        for got, want in zip(ours, xla, strict=True):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(want))))

    def test_without_dropout_equals_jax_nn(self):
        (q, k, v, bias, mask), _, _ = case_arrays("causal_gqa_bias_padding")
        ours = jdrop.dot_product_attention(q, k, v, bias, mask, is_causal=True, **PALLAS)
        expected = jdrop.dot_product_attention(q, k, v, bias, mask, is_causal=True)
        np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance(v, 36, 1.0))


class TransformationTest(chex.TestCase):
    def test_vmap_checkpoint_scan_and_traced_keep_prob(self):
        # Per-example keys under vmap, the layer rematerialised inside a scan, keep_prob traced:
        # the same as the XLA tiles, and one trace for every keep_prob.
        q, k, v = inputs((3,), 16, 16, 2, 2, 16)

        @chex.assert_max_traces(n=2)  # one per implementation
        def stacked(x, keys, keep_prob, implementation):
            def layer(x, key):
                def one(x, k, v, key):
                    return jdrop.dot_product_attention(
                        x, k, v, dropout_key=key, keep_prob=keep_prob, implementation=implementation
                    )

                return jax.vmap(one)(x, k, v, jax.random.split(key, 3)), None

            return (jax.lax.scan(jax.checkpoint(layer), x, keys)[0] ** 2).sum()

        run = jax.jit(jax.value_and_grad(stacked), static_argnums=3)
        for keep_prob in (0.8, 0.5):
            keys = jax.random.split(jax.random.key(1), 2)
            value, grad = run(q, keys, jnp.float32(keep_prob), "pallas")
            value_xla, grad_xla = run(q, jax.random.clone(keys), jnp.float32(keep_prob), "xla")
            np.testing.assert_allclose(value, value_xla, rtol=1e-5)
            np.testing.assert_allclose(grad, grad_xla, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(grad_xla))))
            assert bool(jnp.any(grad != 0.0))

    def test_reverse_over_reverse_matches_the_formula(self):
        # The kernels have no derivatives; their rules compute the second order with the XLA tiles.
        (q, k, v, bias, mask), _, _ = case_arrays("causal_gqa_bias_padding")  # causal
        direction = jax.random.normal(jax.random.key(11), q.shape)
        key = jax.random.key(12)

        def hvp(f, **kwargs):
            def loss(q, k, v, bias, key):
                return (f(q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, is_causal=True, **kwargs) ** 2).sum()

            def first(q, k, v, bias, key):
                return jnp.vdot(direction, jax.grad(loss)(q, k, v, bias, key))

            return jax.grad(first, (0, 1, 2, 3))

        ours = jax.jit(hvp(jdrop.dot_product_attention, **PALLAS))(q, k, v, bias, key)
        expected = hvp(materialised)(q, k, v, bias, jax.random.clone(key))
        for got, want, what in zip(ours, expected, ("query", "key", "value", "bias"), strict=True):
            # Two backward passes: twice the first derivative's rounding bound (as test_attention's).
            atol = 128 * k.shape[-3] * EPS32 * float(jnp.max(jnp.abs(want)))
            np.testing.assert_allclose(got, want, rtol=0, atol=atol, err_msg=what)
            assert bool(jnp.any(want != 0.0))

    def test_key_is_consumed_once(self):
        q, k, v = inputs((1,), 16, 16, 1, 1, 16)
        key = jax.random.key(0)
        attention = jax.jit(
            lambda q, k, v, key: jdrop.dot_product_attention(q, k, v, dropout_key=key, keep_prob=0.5, **PALLAS)
        )
        attention(q, k, v, key)
        with pytest.raises(jax.errors.KeyReuseError):
            attention(q, k, v, key)


class ErrorTest(parameterized.TestCase):
    @parameterized.named_parameters(
        (
            "head_size",
            {"query": jnp.zeros((2, 5, 4, 320)), "key": jnp.zeros((2, 7, 2, 320)), "value": jnp.zeros((2, 7, 2, 320))},
            "query",
        ),
        ("block_size_not_a_power_of_two", {"block_size": (24, 16)}, "block_size"),
        ("block_size_too_small", {"block_size": 8}, "block_size"),
        ("without_dropout", {"block_size": 12, "deterministic": True}, "block_size"),
    )
    def test_unsupported_calls_raise_naming_implementation_and_the_argument(self, change, argument):
        arguments = {
            "query": jnp.zeros((2, 5, 4, 16)),
            "key": jnp.zeros((2, 7, 2, 16)),
            "value": jnp.zeros((2, 7, 2, 16)),
            "dropout_key": jax.random.key(0),
            "keep_prob": 0.5,
            "implementation": "pallas",
        }
        arguments.update(change)
        with pytest.raises(ValueError, match=f"implementation='pallas' does not support this call's {argument}"):
            jdrop.dot_product_attention(**arguments)

    def test_unknown_implementation_lists_pallas(self):
        with pytest.raises(ValueError, match="'pallas'"):
            jdrop.dot_product_attention(
                jnp.zeros((1, 4, 1, 8)), jnp.zeros((1, 4, 1, 8)), jnp.zeros((1, 4, 1, 8)), implementation="triton"
            )

    def test_none_falls_back_to_the_tiles_for_what_the_kernels_do_not_take(self):
        # block_size 5 is not a kernel tile: None keeps the XLA tiles on every platform, and the call works.
        q, k, v = inputs((1,), 8, 8, 1, 1, 8)
        out = jdrop.dot_product_attention(q, k, v, dropout_key=jax.random.key(0), keep_prob=0.5, block_size=5)
        assert out.shape == q.shape


# --- Lowering for GPU and TPU, on this CPU ---------------------------------------------------------

TRITON = "__gpu$xla.gpu.triton"


#: The GPU that a cuda lowering targets on a machine without one: from jax 0.12, Pallas's Triton lowering
#: asks which GPU it lowers for, from the abstract mesh's device when no GPU is present (jax 0.10 needs
#: none, and 0.10.1 fails with one: it looks for a GPU backend).
GPU_TARGET = jax.sharding.AbstractMesh(
    (1,),
    ("gpu",),
    (jax.sharding.AxisType.Explicit,),
    abstract_device=jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu"),
)


def export(f, platform, *args):
    """``jax.export`` of ``jax.jit(f)`` for one platform (the Triton custom call allowed for cuda): the module text."""
    checks = [jax.export.DisabledSafetyCheck.custom_call(TRITON)] if platform == "cuda" else []

    def exported_for(target):
        with target:
            return jax.export.export(jax.jit(f), platforms=[platform], disabled_checks=checks)(*args)

    try:
        try:
            exported = exported_for(contextlib.nullcontext())
        except RuntimeError as error:
            if platform != "cuda" or "AbstractDevice" not in str(error):
                raise
            exported = exported_for(jax.sharding.use_abstract_mesh(GPU_TARGET))
    except Exception as error:
        # Later jaxlib releases may compile Triton while lowering, which needs the CUDA plugin (a GPU machine).
        if platform == "cuda" and re.search(r"(?i)cuda plugin|ptx|triton_kernel_call|no gpu", str(error)):
            pytest.skip(
                f"the installed jaxlib {jaxlib.__version__} cannot lower Pallas's Triton kernels for cuda without a "
                f"GPU: {type(error).__name__}: {str(error)[:300]}"
            )
        raise
    return exported.mlir_module()


def custom_calls(text):
    return re.findall(r"custom_call @([\w$.]+)", text)


def tensor_shapes(text):
    """Every tensor type of the module's own ops (the kernels' bodies are serialised strings, left out)."""
    text = re.sub(r'backend_config = "[^"]*"', "", text)
    text = re.sub(r"backend_config = \{[^}]*\}", "", text)
    return [tuple(int(d) for d in dims.split("x") if d) for dims in re.findall(r"tensor<((?:\d+x)+)[a-z]", text)]


def attention_function(t, s, n, k, h, dtype, is_causal, implementation="pallas"):
    shapes = (
        jax.ShapeDtypeStruct((1, t, n, h), dtype),
        jax.ShapeDtypeStruct((1, s, k, h), dtype),
        jax.ShapeDtypeStruct((1, s, k, h), dtype),
        jax.ShapeDtypeStruct((1, 1, 1, s), bool),  # a padding mask: (B, 1, 1, S), no (T, S) array
        jax.ShapeDtypeStruct((), jax.random.key(0).dtype),
        jax.ShapeDtypeStruct((), jnp.float32),
    )

    def forward(q, key_, value, mask, dropout_key, keep_prob):
        return jdrop.dot_product_attention(
            q,
            key_,
            value,
            mask=mask,
            dropout_key=dropout_key,
            keep_prob=keep_prob,
            is_causal=is_causal,
            implementation=implementation,
        )

    def gradient(q, key_, value, mask, dropout_key, keep_prob):
        def loss(q, key_, value):
            return forward(q, key_, value, mask, dropout_key, keep_prob).astype(jnp.float32).sum()

        return jax.grad(loss, argnums=(0, 1, 2))(q, key_, value)

    return forward, gradient, shapes


def has_two_axes(shape, t, s):
    """Whether ``shape`` has an axis of size ``t`` and another of size ``s``."""
    return any(
        a != b for a, size_a in enumerate(shape) for b, size_b in enumerate(shape) if size_a == t and size_b == s
    )


def check_lowering(platform, t, s, h, dtype, is_causal):
    call = TRITON if platform == "cuda" else "tpu_custom_call"
    forward, gradient, shapes = attention_function(t, s, 8, 2, h, dtype, is_causal)
    for f, kernels in ((forward, 1), (gradient, 3)):
        text = export(f, platform, *shapes)
        assert custom_calls(text).count(call) == kernels, custom_calls(text)
        weights = [shape for shape in tensor_shapes(text) if has_two_axes(shape, t, s)]
        assert not weights, f"(T, S) arrays outside the kernels: {weights}"


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_forward_and_gradient_lower(platform):
    check_lowering(platform, 1024, 1024, 64, jnp.bfloat16, True)


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
@pytest.mark.parametrize("t", [1024, 4096])
@pytest.mark.parametrize("h", [64, 128])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
@pytest.mark.parametrize("is_causal", [False, True])
def test_realistic_sizes_lower(platform, t, h, dtype, is_causal):
    check_lowering(platform, t, t, h, dtype, is_causal)


@pytest.mark.slow
@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_head_size_256_lowers(platform):
    check_lowering(platform, 1024, 1024, 256, jnp.bfloat16, True)


def test_none_chooses_the_kernels_when_lowered_for_gpu_and_tpu_and_the_tiles_for_cpu():
    # One traced function: its cuda and tpu lowerings run the kernels, its cpu lowering the XLA tiles.
    forward, gradient, shapes = attention_function(256, 256, 4, 4, 64, jnp.float32, False, implementation=None)
    assert custom_calls(export(gradient, "cuda", *shapes)).count(TRITON) == 3
    assert custom_calls(export(forward, "tpu", *shapes)).count("tpu_custom_call") == 1
    assert not custom_calls(export(forward, "cpu", *shapes))


def test_vmap_lowers_for_cuda():
    # vmap adds a grid axis to each kernel: (items, tiles) plus one, within Triton's three.
    _, gradient, shapes = attention_function(256, 256, 4, 2, 64, jnp.bfloat16, True)
    batched = [jax.ShapeDtypeStruct((3, *x.shape), x.dtype) for x in shapes[:3]]
    text = export(jax.vmap(gradient, in_axes=(0, 0, 0, None, None, None)), "cuda", *batched, *shapes[3:])
    assert custom_calls(text).count(TRITON) == 3


def test_bias_gradient_lowers():
    # A differentiated bias (B, N, T, S): its gradient is the backward pass's one (T, S) output.
    bias = jax.ShapeDtypeStruct((1, 4, 256, 256), jnp.float32)
    q = jax.ShapeDtypeStruct((1, 256, 4, 128), jnp.bfloat16)

    def gradient(q, bias, key):
        def loss(q, bias):
            out = jdrop.dot_product_attention(q, q, q, bias, dropout_key=key, keep_prob=0.9, **PALLAS)
            return out.astype(jnp.float32).sum()

        return jax.grad(loss, argnums=(0, 1))(q, bias)

    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)
    for platform, call in (("cuda", TRITON), ("tpu", "tpu_custom_call")):
        assert custom_calls(export(gradient, platform, q, bias, key)).count(call) == 3


def test_the_flax_swap_runs_the_kernels_when_lowered_for_gpu():
    # The swaps call the dropout path with implementation=None: on GPU they get the kernels, unchanged.
    linen = pytest.importorskip("jdrop.linen")
    q = jax.ShapeDtypeStruct((2, 256, 4, 64), jnp.bfloat16)
    key = jax.ShapeDtypeStruct((), jax.random.key(0).dtype)

    def gradient(q, key):
        def loss(q):
            out = linen.dot_product_attention(q, q, q, dropout_rng=key, dropout_rate=0.1, broadcast_dropout=False)
            return out.astype(jnp.float32).sum()

        return jax.grad(loss)(q)

    assert custom_calls(export(gradient, "cuda", q, key)).count(TRITON) == 3


# Run in a subprocess with 4 host devices: sharded inputs give the unsharded values. Under an Auto
# mesh the kernels are not partitioned by XLA (a pallas_call has no sharding rule): "pallas" lets
# XLA gather the inputs, None keeps the XLA tiles. Under an explicit mesh the kernels run on each
# device's items (SHARDED_KERNELS_CHECK below).
SHARDING_CHECK = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
import jdrop

kq, kk, kv = jax.random.split(jax.random.key(1), 3)
q = jax.random.normal(kq, (4, 32, 4, 16))
k = jax.random.normal(kk, (4, 32, 2, 16))
v = jax.random.normal(kv, (4, 32, 2, 16))

def attention(q, k, v, key, implementation):
    return jdrop.dot_product_attention(
        q, k, v, dropout_key=key, keep_prob=0.6, is_causal=True, implementation=implementation
    )

forward = jax.jit(attention, static_argnums=4)
loss = lambda q, k, v, key, implementation: (attention(q, k, v, key, implementation) ** 2).sum()
backward = jax.jit(jax.grad(loss, argnums=(0, 1, 2)), static_argnums=4)
expected = [forward(q, k, v, jax.random.key(0), "xla"), *backward(q, k, v, jax.random.key(0), "xla")]
results = {}
for axes in ("auto", "explicit"):
    types = (jax.sharding.AxisType.Auto if axes == "auto" else jax.sharding.AxisType.Explicit,) * 2
    mesh = jax.make_mesh((2, 2), ("a", "b"), axis_types=types)
    qs, ks, vs = (jax.device_put(x, NamedSharding(mesh, P("a", None, "b"))) for x in (q, k, v))
    for implementation in ("pallas", None):
        with jax.set_mesh(mesh):
            got = [forward(qs, ks, vs, jax.random.key(0), implementation)]
            got += backward(qs, ks, vs, jax.random.key(0), implementation)
        same = all(np.allclose(a, b, rtol=1e-5, atol=1e-5) for a, b in zip(got, expected))
        results[f"{axes} {implementation}"] = same
print(json.dumps(results))
"""


@pytest.mark.slow  # a 4-device subprocess
def test_sharded_inputs_give_the_unsharded_result():
    results = run_on_host_devices(["-c", SHARDING_CHECK], 4)
    expected = dict.fromkeys(("auto pallas", "auto None", "explicit pallas", "explicit None"), True)
    assert results == expected, results


# Run in a subprocess with 8 host devices. Under an explicit mesh split along batch and heads, each
# device runs the kernels on its own (batch, head) items, forward and backward, with no collective,
# and the mask counts the items' global positions: the results are the unsharded ones, the mask bit
# for bit. On GPU implementation=None picks the kernels there (the export for cuda has the three
# Triton kernels and no collective). Split along the queries, "pallas" gathers.
SHARDED_KERNELS_CHECK = r"""
import json, re
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import jdrop
from multidevice_checks import COLLECTIVES

B, T, S, N, K = 4, 24, 40, 4, 2
mesh = jax.make_mesh((4, 2), ("a", "b"), axis_types=(AxisType.Explicit,) * 2)
kq, kk, kv, kb, km = jax.random.split(jax.random.key(1), 5)
q = jax.random.normal(kq, (B, T, N, 16))
k = jax.random.normal(kk, (B, S, K, 16))
v = jax.random.normal(kv, (B, S, K, 16))
bias = jax.random.normal(kb, (B, N, T, S))
mask = jnp.arange(S) < jnp.array([S, 30, 17, 33])[:, None, None, None]  # (B, 1, 1, S) padding
# Zero queries and keys, identity values (H = S): the output is the weights, zero exactly where dropped.
q0, k0 = jnp.zeros((B, T, N, S)), jnp.zeros((B, S, K, S))
v0 = jnp.broadcast_to(jnp.eye(S)[:, None, :], (B, S, K, S))

def weights(q, k, v, key, implementation=None):
    return jdrop.dot_product_attention(
        q, k, v, dropout_key=key, keep_prob=0.6, is_causal=True, implementation=implementation
    )

def gradients(q, k, v, bias, mask, key, implementation=None):
    def loss(q, k, v, bias):
        out = jdrop.dot_product_attention(
            q, k, v, bias, mask, dropout_key=key, keep_prob=0.7, implementation=implementation
        )
        return (out**2).sum()

    return jax.grad(loss, argnums=(0, 1, 2, 3))(q, k, v, bias)

key = jax.random.key(0)
expected_weights = jax.jit(weights, static_argnums=4)(q0, k0, v0, key, "xla")
expected_grads = jax.jit(gradients, static_argnums=6)(q, k, v, bias, mask, key, "xla")

def put(x, spec):
    return jax.device_put(x, NamedSharding(mesh, spec))

def collectives(compiled):
    return sorted(c for c in COLLECTIVES if c in compiled.as_text())

results = {}
for name, batch, heads in (("batch", "a", None), ("heads", None, "b"), ("both", "a", "b")):
    token, items = P(batch, None, heads), P(batch, heads)
    with jax.set_mesh(mesh):
        args = (put(q0, token), put(k0, token), put(v0, token), key, "pallas")
        forward = jax.jit(weights, static_argnums=4).lower(*args).compile()
        got = forward(*args[:4])
        args = (put(q, token), put(k, token), put(v, token), put(bias, items), put(mask, P(batch)), key, "pallas")
        backward = jax.jit(gradients, static_argnums=6).lower(*args).compile()
        grads = backward(*args[:6])
    results[name] = {
        "mask bits": bool(np.array_equal(np.asarray(got) == 0, np.asarray(expected_weights) == 0)),
        "weights": bool(np.allclose(got, expected_weights, rtol=1e-5, atol=1e-6)),
        "gradients": [bool(np.allclose(a, b, rtol=1e-4, atol=1e-5)) for a, b in zip(grads, expected_grads)],
        "output sharding": str(got.sharding.spec),
        "collectives": collectives(forward) + collectives(backward),
    }

# Split along the queries: the kernels cannot keep it, so "pallas" makes the inputs whole.
with jax.set_mesh(mesh):
    args = (put(q0, P(None, "a")), put(k0, P()), put(v0, P()), key, "pallas")
    forward = jax.jit(weights, static_argnums=4).lower(*args).compile()
    got = forward(*args[:4])
results["queries"] = {
    "mask bits": bool(np.array_equal(np.asarray(got) == 0, np.asarray(expected_weights) == 0)),
    "gathers": "all-gather" in forward.as_text(),
}

# On GPU, implementation=None picks the kernels under the same split, each device on its own items.
TRITON = "__gpu$xla.gpu.triton"
COLLECTIVE_OPS = r"stablehlo\.(all_gather|all_reduce|all_to_all|collective_\w+|reduce_scatter)"
def export_for_cuda(target_mesh, context):
    with context:
        sharding = NamedSharding(target_mesh, P("a", None, "b"))
        shapes = [jax.ShapeDtypeStruct((8, 256, 8, 64), jnp.bfloat16, sharding=sharding)]
        shapes += [jax.ShapeDtypeStruct((8, 256, 2, 64), jnp.bfloat16, sharding=sharding)] * 2
        shapes.append(jax.ShapeDtypeStruct((), key.dtype))
        return jax.export.export(
            jax.jit(lambda q, k, v, key: gradients(q, k, v, None, None, key)),
            platforms=["cuda"],
            disabled_checks=[jax.export.DisabledSafetyCheck.custom_call(TRITON)],
        )(*shapes)


def exported_for_cuda():
    try:
        return export_for_cuda(mesh, jax.set_mesh(mesh))
    except RuntimeError as error:
        # From jax 0.12 a cuda lowering without a GPU asks which GPU it targets: the same mesh of GPUs,
        # abstract (jax 0.10 needs none).
        if "AbstractDevice" not in str(error):
            raise
        device = jax.sharding.AbstractDevice(device_kind="NVIDIA H100", num_cores=132, platform="gpu")
        gpus = mesh.abstract_mesh.update(abstract_device=device)
        return export_for_cuda(gpus, jax.sharding.use_abstract_mesh(gpus))


try:
    exported = exported_for_cuda()
except Exception as error:
    # Later jaxlib releases may compile Triton while lowering, which needs the CUDA plugin (a GPU machine).
    if not re.search(r"(?i)cuda plugin|ptx|triton_kernel_call|no gpu", str(error)):
        raise
    results["cuda"] = "needs the CUDA plugin: " + str(error)[:200]
else:
    text = exported.mlir_module()
    results["cuda"] = {
        "triton kernels": re.findall(r"custom_call @([\w$.]+)", text).count(TRITON),
        "collectives": sorted(set(re.findall(COLLECTIVE_OPS, text))),
    }
print(json.dumps(results))
"""


@pytest.mark.slow  # an 8-device subprocess
def test_explicit_batch_and_head_sharding_runs_the_kernels_per_device_with_no_collective():
    results = run_on_host_devices(["-c", SHARDED_KERNELS_CHECK], 8)
    for name, spec in (("batch", "P('a', None, None, None)"), ("heads", "P(None, None, 'b', None)")):
        assert results[name]["output sharding"] == spec, results
    assert results["both"]["output sharding"] == "P('a', None, 'b', None)", results
    for name in ("batch", "heads", "both"):
        expected = {"mask bits": True, "weights": True, "gradients": [True] * 4, "collectives": []}
        assert {key: results[name][key] for key in expected} == expected, (name, results[name])
    assert results["queries"] == {"mask bits": True, "gathers": True}, results
    if isinstance(results["cuda"], str):  # as the export helper above: only a later jaxlib on a CPU machine
        pytest.skip(results["cuda"])
    assert results["cuda"] == {"triton kernels": 3, "collectives": []}, results
