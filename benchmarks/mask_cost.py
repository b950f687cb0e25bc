"""Where the forward mask's time goes: the generator's rounds against the ``x * c`` memory floor.

``python benchmarks/mask_cost.py`` times, interleaved on a (4096, 1024) float32
array, ``x * c``, ``jdrop.dropout``, and dropout built from the generator's
formula with 1-3 rounds after the row and column hashes meet, each twice: as
written (XLA recomputes the row and column hashes for every entry, since it
fuses them into the elementwise loop) and with those hashes passed in
precomputed (a lower bound: only the per-entry rounds, the compare and the
select are left). The ratios to ``x * c`` show what a given number of
per-entry rounds can reach on this machine. Prints a Markdown table; writes nothing.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

import jdrop
from jdrop._generator import _mix32

ROWS, COLS = 4096, 1024
KEEP_THRESHOLD = 52429  # keep probability 0.8 in 16 bits
SCALE = 1.25


def from_counters(rounds: int) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """Dropout with the generator's formula at ``rounds``, row and column hashes computed in the program."""

    def drop(seeds: jax.Array, x: jax.Array) -> jax.Array:
        row = jax.lax.broadcasted_iota(jnp.uint32, (ROWS, 1), 0)
        col = jax.lax.broadcasted_iota(jnp.uint32, (1, COLS), 1)
        h = _mix32(row ^ seeds[0]) + _mix32(col ^ seeds[1])
        for i in range(rounds):
            h = _mix32(h ^ seeds[2 + i])
        return jnp.where((h >> 16) < KEEP_THRESHOLD, x * SCALE, 0.0)

    return drop


def from_hashes(rounds: int) -> Callable[[jax.Array, jax.Array, jax.Array, jax.Array], jax.Array]:
    """The same, with the row and column hashes given: only the per-entry work is timed."""

    def drop(row_hash: jax.Array, col_hash: jax.Array, seeds: jax.Array, x: jax.Array) -> jax.Array:
        h = row_hash + col_hash
        for i in range(rounds):
            h = _mix32(h ^ seeds[2 + i])
        return jnp.where((h >> 16) < KEEP_THRESHOLD, x * SCALE, 0.0)

    return drop


def main() -> None:
    x = jax.random.normal(jax.random.key(1), (ROWS, COLS))
    seeds = jax.random.bits(jax.random.key(2), (5,), jnp.uint32)
    row_hash = _mix32(jnp.arange(ROWS, dtype=jnp.uint32)[:, None] ^ seeds[0])
    col_hash = _mix32(jnp.arange(COLS, dtype=jnp.uint32)[None, :] ^ seeds[1])
    floor = jax.jit(lambda x: x * SCALE)
    library = jax.jit(lambda key, x: jdrop.dropout(key, x, 0.8))
    key = jax.random.key(3)
    runs: dict[str, Callable[[], Any]] = {
        "x * c": lambda: floor(x),
        "jdrop.dropout (3 rounds)": lambda: library(key, x),  # the same key every call: timing only
    }
    for rounds in (3, 2, 1):
        computed, given = jax.jit(from_counters(rounds)), jax.jit(from_hashes(rounds))
        runs[f"{rounds} rounds, hashes computed"] = lambda f=computed: f(seeds, x)
        runs[f"{rounds} rounds, hashes given"] = lambda f=given: f(row_hash, col_hash, seeds, x)
    for run in runs.values():  # compile and warm up
        jax.block_until_ready(run())
    samples: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(30):
        for name, run in runs.items():
            start = time.perf_counter()
            for _ in range(10):
                out = run()
            jax.block_until_ready(out)
            samples[name].append((time.perf_counter() - start) / 10)
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print(f"Forward dropout on ({ROWS}, {COLS}) float32; medians of 30 interleaved rounds of 10 calls.\n")
    print("| candidate | ms | ratio to x * c |")
    print("|---|---|---|")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1e3:.3f} | {seconds / medians['x * c']:.2f}x |")


if __name__ == "__main__":
    main()
