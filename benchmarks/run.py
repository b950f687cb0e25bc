"""jdrop against Flax, Haiku and Equinox: mask speed, training-step overhead, backward memory.

Run ``pip install -e ".[bench]" && python benchmarks/run.py``. Every timed
candidate is jitted and compiled first; then the candidates run interleaved
(A B C A B C ...) for ``--rounds`` rounds, each round timing ``--calls``
back-to-back calls, and the tables report the median per-call time and ratios
taken from those medians. Memory is XLA's compile-time
``memory_analysis().temp_size_in_bytes`` of the jitted gradient: no noise.

The tables are printed as Markdown and written to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import optax

import jdrop

KEEP_PROB = 0.8
RATE = 1.0 - KEEP_PROB  # what Flax, Haiku and Equinox take


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> str:
    device = jax.devices()[0]
    where = f"{os.cpu_count()} CPU cores, {cpu_model()}"
    if device.platform != "cpu":
        where = f"{device.device_kind} ({device.platform}); host: {where}"
    return f"{where}; JAX {jax.__version__}"


def interleaved_medians(
    candidates: dict[str, Callable[[], Any]], rounds: int, min_calls: int, min_round_seconds: float = 0.2
) -> dict[str, float]:
    """Median seconds per call of each candidate, timed in interleaved rounds.

    Each candidate makes enough back-to-back calls per round to run for at
    least ``min_round_seconds``, so fast ops are not timed at the resolution
    of a single memory-bound call.
    """
    calls = {}
    for name, run in candidates.items():  # compile, warm up, calibrate
        jax.block_until_ready(run())
        start = time.perf_counter()
        jax.block_until_ready(run())
        single = time.perf_counter() - start
        calls[name] = max(min_calls, math.ceil(min_round_seconds / max(single, 1e-6)))
    samples: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(rounds):
        for name, run in candidates.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                out = run()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / calls[name])
    medians = {name: statistics.median(v) for name, v in samples.items()}
    for name, values in samples.items():
        print(
            f"  {name:32s} median {medians[name] * 1e3:8.3f} ms  "
            f"(min {min(values) * 1e3:.3f}, max {max(values) * 1e3:.3f}; {calls[name]} calls a round)"
        )
    return medians


# --- The dropout op -----------------------------------------------------------------------------

_flax_dropout = nn.Dropout(rate=RATE)
_eqx_dropout = eqx.nn.Dropout(p=RATE)

DROPOUTS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "jdrop.dropout": lambda key, x: jdrop.dropout(key, x, KEEP_PROB),
    "flax.linen.Dropout": lambda key, x: _flax_dropout.apply({}, x, deterministic=False, rngs={"dropout": key}),
    "haiku.dropout": lambda key, x: hk.dropout(key, RATE, x),
    "equinox.nn.Dropout": lambda key, x: _eqx_dropout(x, key=key),
}


def bench_mask(shape: tuple[int, int], rounds: int, calls: int) -> list[str]:
    print(f"dropout forward, {shape} float32, keep {KEEP_PROB}")
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), shape)
    runs: dict[str, Callable[[], Any]] = {}
    for name, fn in DROPOUTS.items():
        jitted = jax.jit(fn)
        runs[name] = lambda jitted=jitted: jitted(key, x)
    floor = jax.jit(lambda x: x * (1.0 / KEEP_PROB))
    runs["x * c (memory floor)"] = lambda: floor(x)
    forward = interleaved_medians(runs, rounds, calls)

    print(f"dropout forward + backward (output and input gradient), {shape} float32, keep {KEEP_PROB}")
    cotangent = jax.random.normal(jax.random.key(2), shape)
    runs = {}

    # Key and cotangent are arguments, not closed-over constants, so XLA cannot
    # fold them into the executable.
    def forward_backward(fn: Callable[[jax.Array], jax.Array], x: jax.Array, cotangent: jax.Array) -> Any:
        out, pullback = jax.vjp(fn, x)
        return out, pullback(cotangent)[0]

    for name, fn in DROPOUTS.items():
        both_fn = jax.jit(lambda key, x, cotangent, fn=fn: forward_backward(lambda x: fn(key, x), x, cotangent))
        runs[name] = lambda both_fn=both_fn: both_fn(key, x, cotangent)
    floor_both = jax.jit(lambda x, cotangent: forward_backward(lambda x: x * (1.0 / KEEP_PROB), x, cotangent))
    runs["x * c (memory floor)"] = lambda: floor_both(x, cotangent)
    both = interleaved_medians(runs, rounds, calls)

    ours_fwd, ours_both = forward["jdrop.dropout"], both["jdrop.dropout"]
    lines = [
        f"Dropout on a {shape[0]}x{shape[1]} float32 array, keep {KEEP_PROB}, jitted; median ms per call "
        "(ratio: the row's time / jdrop's).",
        "",
        "| op | forward ms | forward ratio | forward + backward ms | fwd+bwd ratio |",
        "|---|---|---|---|---|",
    ]
    for name in runs:
        lines.append(
            f"| {name} | {forward[name] * 1e3:.2f} | {forward[name] / ours_fwd:.2f}x "
            f"| {both[name] * 1e3:.2f} | {both[name] / ours_both:.2f}x |"
        )
    return lines


# --- A training step ----------------------------------------------------------------------------


class FlaxMLP(nn.Module):
    """The Flax pattern: Dense -> activation -> Dropout for every hidden layer."""

    sizes: Sequence[int]
    activation: Callable[[jax.Array], jax.Array]

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        for width in self.sizes[1:-1]:
            x = nn.Dense(width)(x)
            x = self.activation(x)
            x = nn.Dropout(rate=RATE, deterministic=deterministic)(x)
        return nn.Dense(self.sizes[-1])(x)


def flax_loss(model: FlaxMLP, deterministic: bool) -> Callable[..., jax.Array]:
    def loss(params: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        logits = model.apply(params, x, deterministic, rngs={"dropout": key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def jdrop_loss(keep_probs: tuple[float, ...], deterministic: bool, activation: str) -> Callable[..., jax.Array]:
    def loss(params: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        logits = jdrop.mlp_apply(
            params, x, key=key, keep_probs=keep_probs, deterministic=deterministic, activation=activation
        )
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    return loss


def flax_train_step(model: FlaxMLP, optimizer: optax.GradientTransformation, deterministic: bool) -> Callable:
    grad = jax.grad(flax_loss(model, deterministic))

    @jax.jit
    def step(params: Any, opt_state: Any, x: jax.Array, y: jax.Array, key: jax.Array, count: jax.Array) -> Any:
        grads = grad(params, x, y, jax.random.fold_in(key, count))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, count + 1

    return step


def bench_train_step(sizes: tuple[int, ...], batch: int, rounds: int, calls: int) -> list[str]:
    print(f"adam training step, MLP {'-'.join(map(str, sizes))}, batch {batch}, relu, keep {KEEP_PROB} on hidden")
    optimizer = optax.adam(1e-3)
    x = jax.random.normal(jax.random.key(3), (batch, sizes[0]))
    y = jax.random.randint(jax.random.key(4), (batch,), 0, sizes[-1])
    key = jax.random.key(5)
    keep_probs = (1.0,) + (KEEP_PROB,) * (len(sizes) - 2)

    state = jdrop.init_train_state(jdrop.mlp_init(jax.random.key(6), sizes), optimizer)
    jdrop_steps = {
        "jdrop, dropout": jdrop.make_train_step(optimizer, keep_probs=keep_probs),
        "jdrop, deterministic": jdrop.make_train_step(optimizer),
    }
    model = FlaxMLP(sizes, jax.nn.relu)
    flax_params = model.init(jax.random.key(6), x, True)
    flax_state = (flax_params, optimizer.init(flax_params), jnp.zeros((), jnp.int32))
    flax_steps = {
        "flax, dropout": flax_train_step(model, optimizer, False),
        "flax, deterministic": flax_train_step(model, optimizer, True),
    }
    runs: dict[str, Callable[[], Any]] = {}
    # Each call starts from the same state: the timed work is one step.
    for name, step in jdrop_steps.items():
        runs[name] = lambda step=step: step(state, x, y, key)
    for name, step in flax_steps.items():
        runs[name] = lambda step=step: step(*flax_state[:2], x, y, key, flax_state[2])
    medians = interleaved_medians(runs, rounds, calls)
    ours = medians["jdrop, dropout"] / medians["jdrop, deterministic"]
    theirs = medians["flax, dropout"] / medians["flax, deterministic"]
    return [
        f"One adam step of a relu MLP {'-'.join(map(str, sizes))}, batch {batch}, keep {KEEP_PROB} on both hidden "
        "layers; median ms per step.",
        "",
        "| library | with dropout ms | deterministic ms | overhead (with / without) |",
        "|---|---|---|---|",
        f"| jdrop | {medians['jdrop, dropout'] * 1e3:.1f} | {medians['jdrop, deterministic'] * 1e3:.1f} | {ours:.3f} |",
        f"| Flax (Dense -> relu -> Dropout) | {medians['flax, dropout'] * 1e3:.1f} "
        f"| {medians['flax, deterministic'] * 1e3:.1f} | {theirs:.3f} |",
    ]


# --- Backward-pass memory -----------------------------------------------------------------------


def temp_bytes(loss: Callable[..., jax.Array], params: Any, *args: Any) -> int:
    analysis = jax.jit(jax.grad(loss)).lower(params, *args).compile().memory_analysis()
    if analysis is None:
        raise RuntimeError("this backend reports no memory_analysis()")
    return int(analysis.temp_size_in_bytes)


def bench_memory(sizes: tuple[int, ...], batch: int) -> list[str]:
    print(f"backward-pass memory, MLP {'-'.join(map(str, sizes))}, batch {batch}")
    x = jnp.ones((batch, sizes[0]))
    y = jnp.zeros((batch,), jnp.int32)
    key = jax.random.key(0)
    keep_probs = (1.0,) + (KEEP_PROB,) * (len(sizes) - 2)
    lines = [
        f"XLA temp buffer size of the jitted gradient of a {'-'.join(map(str, sizes))} MLP, batch {batch}, keep "
        f"{KEEP_PROB} on the hidden layers (MiB; ratio: with dropout / without).",
        "",
        "| activation | jdrop with | jdrop without | jdrop ratio | Flax with | Flax without | Flax ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for activation in ("relu", "tanh"):
        params = jdrop.mlp_init(jax.random.key(1), sizes, activation=activation)
        ours = [temp_bytes(jdrop_loss(keep_probs, det, activation), params, x, y, key) for det in (False, True)]
        model = FlaxMLP(sizes, getattr(jax.nn, activation) if activation == "relu" else jnp.tanh)
        flax_params = model.init(jax.random.key(1), x, True)
        theirs = [temp_bytes(flax_loss(model, det), flax_params, x, y, key) for det in (False, True)]
        mib = [b / 2**20 for b in (*ours, *theirs)]
        lines.append(
            f"| {activation} | {mib[0]:.1f} | {mib[1]:.1f} | {ours[0] / ours[1]:.3f} "
            f"| {mib[2]:.1f} | {mib[3]:.1f} | {theirs[0] / theirs[1]:.3f} |"
        )
        print("  " + lines[-1])
    return lines


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7, at least 5)")
    parser.add_argument("--calls", type=int, default=3, help="least calls timed back to back per round (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results.md"))
    parser.add_argument("--skip", nargs="*", default=[], choices=["mask", "train", "memory"])
    args = parser.parse_args(argv)
    if args.rounds < 5 or args.calls < 1:
        parser.error(f"--rounds must be >= 5 and --calls >= 1, got {args.rounds} and {args.calls}")

    header = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}; medians of {args.rounds} interleaved "
        f"rounds, each of at least {args.calls} calls and 0.2 s per candidate.",
        "",
    ]
    sections = []
    if "mask" not in args.skip:
        sections.append(bench_mask((4096, 1024), args.rounds, args.calls))
    if "train" not in args.skip:
        sections.append(bench_train_step((784, 1024, 1024, 10), 512, args.rounds, args.calls))
    if "memory" not in args.skip:
        sections.append(bench_memory((784, 2048, 2048, 2048, 10), 1024))
    report = "\n".join(header + [line for section in sections for line in [*section, ""]])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report)
    print()
    print(report)
    return report


if __name__ == "__main__":
    main()
