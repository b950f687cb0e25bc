"""Do jdrop's masks and noise come out the same on this backend as on another? Digests to write and check.

jdrop's masks are integer hashes of each entry's position, so a key and a
shape must give the same mask bits on every backend (CPU, GPU, TPU) and under
jit. This script computes a fixed set of cases on the default backend:

* ``dropout_mask`` at several shapes, keep probabilities and seeds, eagerly,
  under ``jax.jit`` with a traced keep probability and with a raw
  ``jax.random.PRNGKey``;
* the generator's raw 32-bit words (``jdrop._generator.bits32``, private);
* ``dropout`` on ``arange + 1`` (no zero entries, so its zeros are exactly
  the dropped entries), float32 and bfloat16, with and without ``broadcast_dims``;
* ``gaussian_dropout`` on ones (the output is ``1 + sigma z``);
* ``dot_product_attention(..., keep_prob=0.9)`` with one-hot values
  (``value[b, s, n, h] = (s == h)``, S = H), so that ``out[b, t, n, h]`` is
  the dropped-out weight ``[b, n, t, h]`` and its zeros are exactly the
  dropped weights; default tiles, small tiles, and causal.

``--write FILE`` saves, per case, the SHA-256 of the packed mask bits (bool)
or of the array bytes (integers), and for floating outputs also the digest of
their bytes, a fixed sample of values and sums; the full floating values go
to ``--values`` (default: FILE with the suffix ``.npz``). ``--check FILE``
recomputes and compares: mask bits must match exactly; floating values are
compared with ``allclose`` (per-case tolerances below), since float rounding
may differ across backends (fused multiply-adds, exp/log implementations,
summation order); whether their bytes are also identical is reported but not
required. Self-consistency checks that need no reference (the jitted mask
equals the eager one, the attention's zeros equal ``dropout_mask`` of the
weights' shape, ...) run in both modes. Exit status 1 on any mismatch.

Run from the repository root, e.g.::

    JAX_PLATFORMS=cpu python benchmarks/gpu_masks.py --write /tmp/cpu_masks.json
    python benchmarks/gpu_masks.py --check /tmp/cpu_masks.json --platform gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jdrop
from jdrop._generator import bits32  # private: the raw words every mask and noise derives from

FORMAT = 1
SAMPLE_SIZE = 512  # floating values stored in the JSON itself, at fixed positions


@dataclasses.dataclass(frozen=True)
class Result:
    """One case's output: ``bits`` must be identical everywhere; ``values`` only close."""

    bits: np.ndarray  # bool (a mask or a zero pattern) or uint32
    values: np.ndarray | None = None  # floating output
    rtol: float = 0.0
    atol: float = 0.0


def host(x: jax.Array) -> np.ndarray:
    return np.asarray(jax.block_until_ready(x))


def digest(a: np.ndarray) -> str:
    """SHA-256 of dtype, shape and contents: packed bits for bool, little-endian bytes otherwise."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.name} {tuple(a.shape)}\n".encode())
    h.update(np.packbits(a.ravel()).tobytes() if a.dtype == np.bool_ else a.tobytes())
    return h.hexdigest()


# --- The cases ------------------------------------------------------------------------------------

MASK_SHAPES = ((4096, 1024), (2, 8, 512, 512), (3, 1000, 77), (1000,))
MASK_KEEPS = (0.9, 0.5)
BIG = (4096, 1024)
HEADS = (2, 8, 512, 512)
# dropout outputs are one float32 multiply per entry (exactly rounded everywhere), so tight tolerances.
DROPOUT_TOL = {"rtol": 1e-6, "atol": 0.0}
BF16_TOL = {"rtol": 1e-2, "atol": 0.0}  # one bfloat16 ulp, should the float32 product round differently
GAUSS_TOL = {"rtol": 1e-5, "atol": 1e-6}  # log, sqrt and a polynomial per entry
ATTN_TOL = {"rtol": 1e-3, "atol": 1e-6}  # exp, online softmax, summation order (matmuls at "highest")


def arange1(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """1, 2, ..., n in ``shape``: exact in float32 below 2**24, and never zero."""
    n = math.prod(shape)
    assert n < 2**24
    return np.arange(1, n + 1, dtype=np.float64).reshape(shape).astype(dtype)


def mask_case(seed: int, shape: tuple[int, ...], keep: float) -> Callable[[], Result]:
    return lambda: Result(host(jdrop.dropout_mask(jax.random.key(seed), shape, keep)))


def mask_jit_traced_keep() -> Result:
    fn = jax.jit(lambda key, p: jdrop.dropout_mask(key, BIG, p))
    return Result(host(fn(jax.random.key(0), jnp.float32(0.9))))


def mask_raw_key() -> Result:
    return Result(host(jdrop.dropout_mask(jax.random.PRNGKey(0), BIG, 0.9)))


def raw_bits() -> Result:
    return Result(host(bits32(jax.random.key(0), BIG)))


def dropout_case(shape: tuple[int, ...], keep: float, broadcast_dims: tuple[int, ...] = ()) -> Callable[[], Result]:
    def run() -> Result:
        out = host(jdrop.dropout(jax.random.key(0), jnp.asarray(arange1(shape)), keep, broadcast_dims=broadcast_dims))
        return Result(out != 0, out, **DROPOUT_TOL)

    return run


def dropout_bf16() -> Result:
    x = np.random.default_rng(0).standard_normal((1024, 1024), dtype=np.float32)
    x[x == 0] = 1.0
    out = host(jdrop.dropout(jax.random.key(0), jnp.asarray(x, jnp.bfloat16), 0.9))
    return Result(out != 0, out, **BF16_TOL)


def gaussian_case(shape: tuple[int, ...], keep: float) -> Callable[[], Result]:
    def run() -> Result:
        out = host(jdrop.gaussian_dropout(jax.random.key(0), jnp.ones(shape, jnp.float32), keep))
        return Result(out > 1.0, out, **GAUSS_TOL)

    return run


def attention_inputs(t: int, s: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(2, t, 4, 32) queries, (2, s, 4, 32) keys from numpy (the same bits everywhere), one-hot values (s == 32)."""
    rng = np.random.default_rng(1)
    q = rng.standard_normal((2, t, 4, 32), dtype=np.float32)
    k = rng.standard_normal((2, s, 4, 32), dtype=np.float32)
    v = np.broadcast_to(np.eye(s, 32, dtype=np.float32)[None, :, None, :], (2, s, 4, 32)).copy()
    return q, k, v


def attention_case(t: int, is_causal: bool = False, block_size: tuple[int, int] | None = None) -> Callable[[], Result]:
    def run() -> Result:
        q, k, v = attention_inputs(t, 32)
        with jax.default_matmul_precision("highest"):  # no TF32 on GPU: values comparable with the CPU's
            out = jdrop.dot_product_attention(
                q, k, v, dropout_key=jax.random.key(7), keep_prob=0.9, is_causal=is_causal, block_size=block_size
            )
        out = host(out)
        return Result(out != 0, out, **ATTN_TOL)

    return run


CASES: dict[str, Callable[[], Result]] = {
    **{
        f"dropout_mask key(0) {shape} keep {keep}": mask_case(0, shape, keep)
        for shape in MASK_SHAPES
        for keep in MASK_KEEPS
    },
    f"dropout_mask key(0) {BIG} keep 0.8": mask_case(0, BIG, 0.8),
    f"dropout_mask key(42) {BIG} keep 0.9": mask_case(42, BIG, 0.9),
    f"dropout_mask key(0) {BIG} keep 0.9, jit, traced keep": mask_jit_traced_keep,
    f"dropout_mask PRNGKey(0) {BIG} keep 0.9": mask_raw_key,
    f"_generator.bits32 key(0) {BIG} (uint32)": raw_bits,
    f"dropout key(0) arange {BIG} f32 keep 0.9": dropout_case(BIG, 0.9),
    f"dropout key(0) arange {HEADS} f32 keep 0.5": dropout_case(HEADS, 0.5),
    f"dropout key(0) arange {HEADS} f32 keep 0.9 broadcast_dims (1,)": dropout_case(HEADS, 0.9, (1,)),
    "dropout key(0) normal (1024, 1024) bf16 keep 0.9": dropout_bf16,
    f"gaussian_dropout key(0) ones {BIG} keep 0.9": gaussian_case(BIG, 0.9),
    f"gaussian_dropout key(0) ones {HEADS} keep 0.5": gaussian_case(HEADS, 0.5),
    "dot_product_attention key(7) (2, 64, 4, 32) keep 0.9": attention_case(64),
    "dot_product_attention key(7) (2, 64, 4, 32) keep 0.9 block (16, 8)": attention_case(64, block_size=(16, 8)),
    "dot_product_attention key(7) (2, 32, 4, 32) keep 0.9 causal": attention_case(32, is_causal=True),
}


def consistency(results: dict[str, Result]) -> dict[str, bool]:
    """Identities within one run, whatever the backend: each must hold exactly."""
    r = results
    mask = r[f"dropout_mask key(0) {BIG} keep 0.9"].bits
    heads_half = r[f"dropout_mask key(0) {HEADS} keep 0.5"].bits
    words = r[f"_generator.bits32 key(0) {BIG} (uint32)"].bits
    threshold = round(0.9 * 2**jdrop.KEEP_PROB_BITS)
    checks = {
        "jit with a traced keep == eager": np.array_equal(
            r[f"dropout_mask key(0) {BIG} keep 0.9, jit, traced keep"].bits, mask
        ),
        "raw PRNGKey(0) == key(0)": np.array_equal(r[f"dropout_mask PRNGKey(0) {BIG} keep 0.9"].bits, mask),
        "mask == (bits32 >> 16) < round(0.9 * 2**16)": np.array_equal((words >> 16) < threshold, mask),
        "keep 0.9 and keep 0.5 masks differ": not np.array_equal(mask, r[f"dropout_mask key(0) {BIG} keep 0.5"].bits),
        "key(42) mask differs from key(0)": not np.array_equal(mask, r[f"dropout_mask key(42) {BIG} keep 0.9"].bits),
        "dropout's zeros == dropout_mask (4096x1024, 0.9)": np.array_equal(
            r[f"dropout key(0) arange {BIG} f32 keep 0.9"].bits, mask
        ),
        "dropout's zeros == dropout_mask (2x8x512x512, 0.5)": np.array_equal(
            r[f"dropout key(0) arange {HEADS} f32 keep 0.5"].bits, heads_half
        ),
        "broadcast_dims (1,) zeros == dropout_mask (2, 1, 512, 512)": np.array_equal(
            r[f"dropout key(0) arange {HEADS} f32 keep 0.9 broadcast_dims (1,)"].bits,
            np.broadcast_to(host(jdrop.dropout_mask(jax.random.key(0), (2, 1, 512, 512), 0.9)), HEADS),
        ),
        "bf16 dropout's zeros == dropout_mask": np.array_equal(
            r["dropout key(0) normal (1024, 1024) bf16 keep 0.9"].bits,
            host(jdrop.dropout_mask(jax.random.key(0), (1024, 1024), 0.9)),
        ),
    }
    # Gaussian: the top bit of each word is the sign of z (set: z < 0); |y - 1| tiny may round to 0.
    gauss = r[f"gaussian_dropout key(0) ones {BIG} keep 0.9"]
    assert gauss.values is not None
    clear = np.abs(gauss.values - 1.0) > 1e-6
    checks["gaussian: y > 1 == top bit of bits32 clear (|y - 1| > 1e-6)"] = np.array_equal(
        gauss.bits[clear], (words >> 31 == 0)[clear]
    )
    # Attention: out[b, t, n, h] != 0 exactly where the weight [b, n, t, s = h] is kept.
    key = jax.random.key(7)
    full = host(jdrop.dropout_mask(key, (2, 4, 64, 32), 0.9))
    attn = r["dot_product_attention key(7) (2, 64, 4, 32) keep 0.9"].bits.transpose(0, 2, 1, 3)
    checks["attention's zeros == dropout_mask of the weights' shape"] = np.array_equal(attn, full)
    checks["attention block (16, 8) zeros == default tiles' zeros"] = np.array_equal(
        r["dot_product_attention key(7) (2, 64, 4, 32) keep 0.9 block (16, 8)"].bits.transpose(0, 2, 1, 3), full
    )
    causal = r["dot_product_attention key(7) (2, 32, 4, 32) keep 0.9 causal"].bits.transpose(0, 2, 1, 3)
    below = np.tril(np.ones((32, 32), bool))
    checks["causal attention's zeros == dropout_mask & lower triangle"] = np.array_equal(
        causal, host(jdrop.dropout_mask(key, (2, 4, 32, 32), 0.9)) & below
    )
    return {name: bool(ok) for name, ok in checks.items()}


# --- Writing and checking -------------------------------------------------------------------------


def environment() -> dict[str, Any]:
    device = jax.devices()[0]
    return {
        "backend": jax.default_backend(),
        "device": f"{device.device_kind} ({device.platform})",
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "?",
        "jdrop": jdrop.__version__,
        "jdrop_path": str(Path(jdrop.__file__).resolve().parent),
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def sample_positions(size: int) -> np.ndarray:
    return np.unique(np.linspace(0, size - 1, num=min(SAMPLE_SIZE, size)).round().astype(np.int64))


def run_cases() -> tuple[dict[str, Result], dict[str, float]]:
    results, seconds = {}, {}
    for name, case in CASES.items():
        start = time.perf_counter()
        results[name] = case()
        seconds[name] = time.perf_counter() - start
    return results, seconds


def record(name: str, result: Result, index: int) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "bits_dtype": result.bits.dtype.name,
        "shape": list(result.bits.shape),
        "bits_sha256": digest(result.bits),
        "bits_count": int(np.count_nonzero(result.bits)) if result.bits.dtype == np.bool_ else None,
    }
    if result.values is not None:
        flat = result.values.astype(np.float64).ravel()
        entry |= {
            "values_dtype": result.values.dtype.name,
            "values_sha256": digest(result.values),
            "values_key": f"v{index}",
            "rtol": result.rtol,
            "atol": result.atol,
            "sample": flat[sample_positions(flat.size)].tolist(),
            "sum": float(flat.sum()),
            "abs_sum": float(np.abs(flat).sum()),
        }
    return entry


def write(path: Path, values_path: Path) -> int:
    results, seconds = run_cases()
    checks = consistency(results)
    cases = {name: record(name, result, i) for i, (name, result) in enumerate(results.items())}
    doc = {"format": FORMAT, "environment": environment(), "cases": cases, "consistency": checks}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1) + "\n")
    values = {
        cases[name]["values_key"]: r.values.astype(np.float32) for name, r in results.items() if r.values is not None
    }
    values_path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(values_path, **values)
    width = max(map(len, results))
    print(f"wrote {len(cases)} cases to {path}, floating values to {values_path}")
    for name, entry in cases.items():
        print(f"  {name:{width}s}  {entry['bits_sha256'][:16]}  {seconds[name]:6.2f} s")
    return report_consistency(checks)


def report_consistency(checks: dict[str, bool]) -> int:
    print("\nself-consistency (this backend alone):")
    width = max(map(len, checks))
    for name, ok in checks.items():
        print(f"| {name:{width}s} | {'yes' if ok else 'NO'} |")
    return 0 if all(checks.values()) else 1


def compare_values(entry: dict[str, Any], got: np.ndarray, full: np.ndarray | None) -> tuple[bool, str]:
    """allclose against the full reference if there is one, else against the JSON's sample and sums."""
    rtol, atol = entry["rtol"], entry["atol"]
    g = got.astype(np.float64)
    if full is not None:
        if full.shape != got.shape:
            return False, f"shape {got.shape} != {full.shape}"
        ref = full.astype(np.float64)
        diff = np.abs(g - ref)
        ok = bool(np.allclose(g, ref, rtol=rtol, atol=atol))
        return ok, f"max |diff| {diff.max():.3g}, max rel {(diff / np.maximum(np.abs(ref), 1e-30)).max():.3g}"
    flat = g.ravel()
    sample = flat[sample_positions(flat.size)]
    ref_sample = np.asarray(entry["sample"])
    if sample.shape != ref_sample.shape:
        return False, "sample size differs"
    ok = bool(np.allclose(sample, ref_sample, rtol=rtol, atol=atol))
    scale = max(entry["abs_sum"], 1e-30)
    ok &= abs(float(flat.sum()) - entry["sum"]) <= max(rtol, 1e-6) * scale + atol * flat.size
    worst = np.abs(sample - ref_sample).max()
    return ok, f"sample of {sample.size} + sums only (no values file); max |diff| {worst:.3g}"


def check(path: Path, values_path: Path) -> int:
    doc = json.loads(path.read_text())
    if doc.get("format") != FORMAT:
        print(f"{path}: format {doc.get('format')!r}, expected {FORMAT}")
        return 1
    full_values: Any = np.load(values_path) if values_path.exists() else None
    if full_values is None:
        print(f"note: {values_path} not found; floating values compared on the JSON's sample and sums only")
    results, seconds = run_cases()
    ref_env, env = doc["environment"], environment()
    print(f"reference: {ref_env['device']}, jax {ref_env['jax']}, jdrop {ref_env['jdrop']} ({ref_env['jdrop_path']})")
    print(f"this run:  {env['device']}, jax {env['jax']}, jdrop {env['jdrop']} ({env['jdrop_path']})")
    print(
        "\nmatch: the mask bits (bool: packed bits; uint32: bytes) have the reference's SHA-256, and floating values\n"
        "are allclose to it (float rounding may differ across backends: FMA, exp/log, summation order).\n"
        "bytes identical: the floating outputs' bytes are the same too (reported only, not required).\n"
    )
    width = max(map(len, results))
    print(f"| {'case':{width}s} | match | bits | values | bytes identical | s | note |")
    print(f"|{'-' * (width + 2)}|---|---|---|---|---|---|")
    failures = 0
    for name, result in results.items():
        entry = doc["cases"].get(name)
        if entry is None:
            print(f"| {name:{width}s} | NO | - | - | - | {seconds[name]:.2f} | not in the reference |")
            failures += 1
            continue
        bits_ok = digest(result.bits) == entry["bits_sha256"]
        note = "" if bits_ok else f"{np.count_nonzero(result.bits)} set, reference {entry['bits_count']}"
        values_ok, same_bytes = True, "-"
        if result.values is not None:
            full = full_values[entry["values_key"]] if full_values is not None else None
            values_ok, detail = compare_values(entry, result.values, full)
            same_bytes = "yes" if digest(result.values) == entry["values_sha256"] else "no"
            note = f"{note}; {detail}" if note else detail
        ok = bits_ok and values_ok
        failures += not ok
        values_cell = "-" if result.values is None else ("yes" if values_ok else "NO")
        print(
            f"| {name:{width}s} | {'yes' if ok else 'NO'} | {'yes' if bits_ok else 'NO'} | {values_cell} "
            f"| {same_bytes} | {seconds[name]:.2f} | {note} |"
        )
    for name in doc["cases"].keys() - results.keys():
        print(f"| {name:{width}s} | NO | - | - | - | - | in the reference, not computed here |")
        failures += 1
    failures += report_consistency(consistency(results))
    print(f"\n{'ALL MATCH' if failures == 0 else f'MISMATCH: {failures} failing row(s) or checks'}")
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", type=Path, metavar="FILE", help="compute the cases and save their digests (JSON)")
    mode.add_argument("--check", type=Path, metavar="FILE", help="recompute and compare with FILE; exit 1 on mismatch")
    parser.add_argument(
        "--values", type=Path, metavar="NPZ", help="full floating outputs (default: FILE with the suffix .npz)"
    )
    parser.add_argument(
        "--platform", help="exit 2 unless jax's default backend is this one (e.g. gpu): no silent CPU fallback"
    )
    args = parser.parse_args(argv)
    backend = jax.default_backend()
    print(f"backend {backend}: {jax.devices()}; jdrop {jdrop.__version__} from {Path(jdrop.__file__).parent}")
    if args.platform is not None and backend != args.platform:
        print(f"error: the default backend is {backend!r}, not {args.platform!r}")
        return 2
    path = args.write or args.check
    values_path = args.values or path.with_suffix(".npz")
    return write(path, values_path) if args.write else check(path, values_path)


if __name__ == "__main__":
    sys.exit(main())
