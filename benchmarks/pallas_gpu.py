"""jdrop's Pallas attention kernels on a GPU: checked against the XLA tiles, the formula and the CPU, then timed.

Run by ``benchmarks/gpu.sh`` (section "pallas"), or alone on a machine with a GPU::

    python benchmarks/pallas_gpu.py --out /tmp/pallas.md --budget 200

1. Check (always first): ``implementation="pallas"`` against ``"xla"`` and the
   materialised formula on the GPU (values and gradients), and its dropout
   mask bit for bit against ``jdrop.dropout_mask`` computed on the CPU
   (identity values make the output the weights themselves). Prints
   ``ALL MATCH`` or ``MISMATCH``.
2. Time forward + backward (one jitted gradient of ``sum(out ** 2)`` in query,
   key and value) and XLA's compiled temporary memory, batch 4, 16 heads,
   bfloat16, for T = S in 4096, 1024, 16384 (in that order), head size 64 and
   128, causal and not: jdrop ``"pallas"`` with dropout 0.1 and without,
   ``jax.nn.dot_product_attention`` with ``"cudnn"`` and ``"xla"`` without
   dropout, Flax's attention with dropout 0.1 (materialised weights: up to
   T = 4096) and jdrop ``"xla"`` with dropout 0.1. Cases run until
   ``--budget`` seconds are spent; what is left is listed as skipped.
3. The lm1b transformer step of ``benchmarks/run.py`` at a GPU size, if time is left.

``--smoke`` runs every part at toy sizes (on CPU too, where the kernels are interpreted): a test of this script.
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import jdrop

KEEP = 0.9
RATE = 0.1


def check(smoke: bool) -> bool:
    """The GPU's "pallas" against "xla", the formula, and the CPU's mask bits; True if all match."""
    ok = True
    batch, t, n, k = 2, 128 if smoke else 256, 4, 2
    for dtype in (jnp.float32, jnp.bfloat16):
        keys = jax.random.split(jax.random.key(0), 4)
        q = jax.random.normal(keys[0], (batch, t, n, 64)).astype(dtype)
        kk = jax.random.normal(keys[1], (batch, t, k, 64)).astype(dtype)
        v = jax.random.normal(keys[2], (batch, t, k, 64)).astype(dtype)
        for causal in (False, True):

            def grads(implementation: str | None, arrays: tuple[jax.Array, ...], key: jax.Array, causal: bool) -> Any:
                def loss(query: jax.Array, keys_: jax.Array, values: jax.Array) -> jax.Array:
                    if implementation is None:
                        out = materialised(query, keys_, values, key, causal)
                    else:
                        out = jdrop.dot_product_attention(
                            query,
                            keys_,
                            values,
                            dropout_key=jax.random.clone(key),
                            keep_prob=KEEP,
                            is_causal=causal,
                            implementation=implementation,
                        )
                    return (out.astype(jnp.float32) ** 2).sum()

                return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))(*arrays)

            results = {
                name: grads(implementation, (q, kk, v), keys[3], causal)
                for name, implementation in (("pallas", "pallas"), ("xla", "xla"), ("formula", None))
            }
            eps = float(jnp.finfo(dtype).eps)
            for other in ("xla", "formula"):
                for got, want, what in zip(
                    jax.tree.leaves(results["pallas"]),
                    jax.tree.leaves(results[other]),
                    ("loss", "dq", "dk", "dv"),
                    strict=True,
                ):
                    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
                    error = float(np.max(np.abs(got - want)) / max(float(np.max(np.abs(want))), 1e-30))
                    good = error < 64 * t * eps
                    ok &= good
                    print(
                        f"  {jnp.dtype(dtype).name} causal={causal} pallas vs {other} {what}: relative {error:.2e}"
                        f"{'' if good else '  <-- MISMATCH'}"
                    )
    # Mask bits: zero queries and keys (uniform weights), identity values with H = S: output = weights.
    s = 64 if smoke else 128
    q = jnp.zeros((2, 48, 4, s), jnp.float32)
    kk = jnp.zeros((2, s, 2, s), jnp.float32)
    v = jnp.broadcast_to(jnp.eye(s, dtype=jnp.float32)[:, None, :], (2, s, 2, s))
    dropout_key = jax.random.key(5)
    for block_size in ((16, 16), (32, 64), None):
        out = jax.jit(
            lambda q, kk, v, key, block_size=block_size: jdrop.dot_product_attention(
                q, kk, v, dropout_key=key, keep_prob=0.6, block_size=block_size, implementation="pallas"
            )
        )(q, kk, v, jax.random.clone(dropout_key))
        kept = np.asarray(jnp.swapaxes(out, -3, -2) != 0.0)
        with jax.default_device(jax.devices("cpu")[0]):
            expected = np.asarray(jdrop.dropout_mask(jax.random.clone(dropout_key), kept.shape, 0.6))
        same = bool(np.array_equal(kept, expected))
        ok &= same
        print(
            f"  mask bits, tiles {block_size}: {'equal to the CPU' + chr(39) + 's' if same else 'MISMATCH'} "
            f"({kept.mean():.3f} kept)"
        )
    print("ALL MATCH" if ok else "MISMATCH")
    return ok


def materialised(q: jax.Array, k: jax.Array, v: jax.Array, key: jax.Array, causal: bool) -> jax.Array:
    """The formula on the full weights, in float32, with jdrop.dropout's mask."""
    q, k, v = (x.astype(jnp.float32) for x in (q, k, v))
    groups = q.shape[-2] // k.shape[-2]
    k, v = jnp.repeat(k, groups, axis=-2), jnp.repeat(v, groups, axis=-2)
    logits = jnp.einsum("btnh,bsnh->bnts", q, k) / math.sqrt(q.shape[-1])
    if causal:
        logits = jnp.where(jnp.tril(jnp.ones(logits.shape[-2:], bool)), logits, -jnp.inf)
    w = jdrop.dropout(jax.random.clone(key), jax.nn.softmax(logits, axis=-1), KEEP)
    return jnp.einsum("bnts,bsnh->btnh", w, v)


def candidates(flax_ok: bool, length: int) -> dict[str, Callable[..., jax.Array]]:
    """Name: attention(q, k, v, key, causal)."""
    out: dict[str, Callable[..., jax.Array]] = {
        "jdrop pallas, dropout 0.1": lambda q, k, v, key, causal: jdrop.dot_product_attention(
            q, k, v, dropout_key=key, keep_prob=KEEP, is_causal=causal, implementation="pallas"
        ),
        "jdrop pallas, no dropout": lambda q, k, v, key, causal: jdrop.dot_product_attention(
            q, k, v, is_causal=causal, implementation="pallas"
        ),
        "jax.nn cudnn, no dropout": lambda q, k, v, key, causal: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="cudnn"
        ),
        "jax.nn xla, no dropout": lambda q, k, v, key, causal: jax.nn.dot_product_attention(
            q, k, v, is_causal=causal, implementation="xla"
        ),
        "jdrop xla, dropout 0.1": lambda q, k, v, key, causal: jdrop.dot_product_attention(
            q, k, v, dropout_key=key, keep_prob=KEEP, is_causal=causal, implementation="xla"
        ),
    }
    if flax_ok and length <= 4096:  # Flax holds the (B, N, T, S) weights and mask
        from flax import nnx

        def flax_attention(q: jax.Array, k: jax.Array, v: jax.Array, key: jax.Array, causal: bool) -> jax.Array:
            mask = nnx.make_causal_mask(jnp.ones(q.shape[:2])) if causal else None
            return nnx.dot_product_attention(q, k, v, mask=mask, dropout_rng=key, dropout_rate=RATE)

        out["Flax nnx, dropout 0.1"] = flax_attention
    return out


def bench(args: argparse.Namespace, deadline: float) -> list[str]:
    """The timing table, as Markdown lines; cases beyond the deadline are listed as skipped."""
    try:
        import flax  # noqa: F401

        flax_ok = True
    except ImportError:
        flax_ok = False
    lengths = (256,) if args.smoke else (4096, 1024, 16384)
    batch, heads = (1, 2) if args.smoke else (4, 16)
    lines = [
        f"Device: {jax.devices()[0].device_kind} ({jax.default_backend()}); jax {jax.__version__}. Batch {batch}, "
        f"{heads} heads, bfloat16; one jitted gradient of `sum(out ** 2)` in q, k, v (forward + backward). Median "
        "of interleaved rounds; temp: XLA's compiled temporary memory.",
        "",
        "| T | head | causal | attention | fwd + bwd ms | vs pallas no dropout | vs cudnn | temp MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    skipped = []
    for length in lengths:
        for head in (64, 128):
            for causal in (True, False):
                label = f"T={length} H={head} causal={causal}"
                if time.monotonic() > deadline:
                    skipped.append(label)
                    continue
                print(f" {label}", flush=True)
                keys = jax.random.split(jax.random.key(length + head), 4)
                q, k, v = (jax.random.normal(part, (batch, length, heads, head), jnp.bfloat16) for part in keys[:3])
                runs: dict[str, Callable[[], Any]] = {}
                temp: dict[str, float] = {}
                for name, attention in candidates(flax_ok, length).items():
                    if time.monotonic() > deadline:
                        break

                    def loss(
                        q: jax.Array,
                        k: jax.Array,
                        v: jax.Array,
                        key: jax.Array,
                        f: Any = attention,
                        causal: bool = causal,
                    ) -> jax.Array:
                        return (f(q, k, v, key, causal).astype(jnp.float32) ** 2).sum()

                    try:
                        compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, k, v, keys[3]).compile()
                    except Exception as error:  # e.g. cuDNN absent, or out of memory: recorded, not fatal
                        print(f"  {name}: {type(error).__name__}: {str(error)[:200]}")
                        continue
                    analysis = compiled.memory_analysis()
                    temp[name] = float("nan") if analysis is None else analysis.temp_size_in_bytes / 2**20
                    runs[name] = functools.partial(compiled, q, k, v, keys[3])
                medians = interleaved(runs, rounds=3 if args.smoke else 5)
                base = medians.get("jdrop pallas, no dropout", float("nan"))
                cudnn = medians.get("jax.nn cudnn, no dropout", float("nan"))
                for name, median in medians.items():
                    lines.append(
                        f"| {length} | {head} | {causal} | {name} | {median * 1e3:.2f} | {median / base:.2f} | "
                        f"{median / cudnn:.2f} | {temp[name]:.0f} |"
                    )
    if skipped:
        lines += ["", f"Skipped (out of the {args.budget} s budget): {', '.join(skipped)}."]
    return lines


def interleaved(runs: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median seconds per call of each run, timed in interleaved rounds (A B C A B C ...) after a warm-up call."""
    for run in runs.values():
        jax.block_until_ready(run())
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run())
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(values)) for name, values in times.items()}


def transformer(args: argparse.Namespace) -> list[str]:
    """``benchmarks/run.py``'s lm1b transformer step at a GPU size (jdrop's swap runs the kernels there)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import run as run_py  # benchmarks/run.py: needs flax, equinox and dm-haiku

    if args.smoke:
        cfg = run_py.LMConfig(layers=1, seq=128, batch=2)
    else:
        cfg = run_py.LMConfig(layers=4, emb_dim=1024, heads=16, mlp_dim=4096, vocab=8192, seq=2048, batch=8)
    lines: list[str] = run_py.bench_transformer(cfg, rounds=3 if args.smoke else 5, calls=1)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the Markdown report here too")
    parser.add_argument("--budget", type=float, default=200.0, help="seconds for the whole run (default 200)")
    parser.add_argument("--smoke", action="store_true", help="toy sizes: a test of this script, on any backend")
    args = parser.parse_args()
    start = time.monotonic()
    deadline = start + args.budget
    print(f"jdrop Pallas attention on {jax.devices()[0]} ({jax.default_backend()})")
    ok = check(args.smoke)
    lines = [
        "### jdrop's Pallas attention kernels",
        "",
        f"Check against xla, the formula and the CPU's masks: {'ALL MATCH' if ok else 'MISMATCH'}.",
        "",
    ]
    lines += bench(args, deadline - 60)  # a minute kept for the transformer
    if time.monotonic() < deadline - 30:
        try:
            lines += ["", "### The lm1b transformer step", "", *transformer(args)]
        except ImportError as error:
            lines += ["", f"Transformer step skipped: {error}."]
    else:
        lines += ["", "Transformer step skipped: no time left."]
    report = "\n".join(lines) + "\n"
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    print(f"{time.monotonic() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
