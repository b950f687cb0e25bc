"""jdrop against Flax, Haiku and Equinox: masks, the dropout family, training steps, memory, drop-ins, a transformer.

Run ``pip install -e ".[bench]" && python benchmarks/run.py``. Every timed
candidate is jitted and compiled first; then the candidates run interleaved
(A B C A B C ...) for ``--rounds`` rounds, each round timing ``--calls``
back-to-back calls, and the tables report the median per-call time and ratios
taken from those medians. Memory is XLA's compile-time
``memory_analysis().temp_size_in_bytes`` of the jitted gradient: no noise.

The tables are printed as Markdown; ``--write`` also writes them to
``benchmarks/results.md`` (the file the README quotes), ``--out PATH``
elsewhere. Without either, no file is touched. ``--only dropin --quick`` smoke-tests the drop-in section alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import itertools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import equinox as eqx
import flax
import flax.linen as nn
import haiku as hk
import jax
import jax.numpy as jnp
import optax
from flax import nnx

import jdrop
import jdrop.equinox
import jdrop.linen
import jdrop.nnx

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
    """The machine and the versions of every library measured: what a figure depends on."""
    device = jax.devices()[0]
    where = f"{os.cpu_count()} CPU cores, {cpu_model()}"
    if device.platform != "cpu":
        where = f"{device.device_kind} ({device.platform}); host: {where}"
    versions = ", ".join(
        f"{name} {module.__version__}"
        for name, module in (("jax", jax), ("jaxlib", jax.lib), ("flax", flax), ("equinox", eqx), ("haiku", hk))
        if hasattr(module, "__version__")
    )
    return f"{where}; jdrop {jdrop.__version__}, {versions}, Python {platform.python_version()}"


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


#: What a user who wants faster dropout without jdrop switches to: the peers' formula,
#: ``where(bernoulli(key, keep, shape), x / keep, 0)``, with a faster key implementation
#: (``jax.random.key(seed, impl=...)``, or ``jax_default_prng_impl``).
KEY_IMPLS = ("threefry2x32", "philox4x32", "unsafe_rbg")


def _bernoulli_dropout(key: jax.Array, x: jax.Array) -> jax.Array:
    return jnp.where(jax.random.bernoulli(key, KEEP_PROB, x.shape), x / KEEP_PROB, 0.0)


def _key_impl_medians(shape: tuple[int, int], rounds: int, calls: int, min_round_seconds: float) -> dict[str, float]:
    """Median forward seconds at one shape: jdrop, bernoulli under each key implementation, x * c (interleaved)."""
    print(f"dropout forward, {shape} float32, keep {KEEP_PROB}: key implementations")
    x = jax.random.normal(jax.random.key(1), shape)
    ours = jax.jit(lambda key, x: jdrop.dropout(key, x, KEEP_PROB))
    jdrop_key = jax.random.key(0)
    runs: dict[str, Callable[[], Any]] = {"jdrop": lambda: ours(jdrop_key, x)}
    theirs = jax.jit(_bernoulli_dropout)
    keys = {impl: jax.random.key(0, impl=impl) for impl in KEY_IMPLS}
    for impl in KEY_IMPLS:
        runs[impl] = lambda impl=impl: theirs(keys[impl], x)
    floor = jax.jit(lambda x: x * (1.0 / KEEP_PROB))
    runs["x * c"] = lambda: floor(x)
    return interleaved_medians(runs, rounds, calls, min_round_seconds)


def bench_mask_sizes(
    shapes: Sequence[tuple[int, int]], rounds: int, calls: int, min_round_seconds: float = 0.2
) -> list[str]:
    """Forward dropout at several sizes: jdrop against jax.random.bernoulli under each key implementation, and x * c."""
    rows = []
    for shape in shapes:
        medians = _key_impl_medians(shape, rounds, calls, min_round_seconds)
        mib = shape[0] * shape[1] * 4 / 2**20
        cells = " | ".join(f"{medians[name] * 1e3:.2f} ({medians[name] / medians['jdrop']:.2f}x)" for name in KEY_IMPLS)
        rows.append(
            f"| {shape[0]}x{shape[1]} ({mib:.0f} MiB) | {medians['jdrop'] * 1e3:.2f} | {cells} "
            f"| {medians['x * c'] * 1e3:.2f} | {medians['jdrop'] / medians['x * c']:.2f}x |"
        )
    return [
        "Forward dropout, float32, keep 0.8, jitted, at several sizes (each size in its own interleaved rounds, "
        "separate from the table above): jdrop against the peers' formula "
        "`where(jax.random.bernoulli(key, 0.8, shape), x / 0.8, 0)` with keys of each `jax.random` implementation "
        "(`jax.random.key(0, impl=...)`); median ms per call (in brackets: the time / jdrop's). `x * c` reads and "
        "writes the array once: the floor any dropout pays. Where `x * c` is cache-resident (small arrays), jdrop's "
        "hash is most of its time; where it is bound by memory (large arrays), jdrop comes close to the floor.",
        "",
        "| shape | jdrop ms | "
        + " | ".join(f"bernoulli, {impl} ms" for impl in KEY_IMPLS)
        + " | x * c ms | jdrop / (x * c) |",
        "|---|---|" + "---|" * len(KEY_IMPLS) + "---|---|",
        *rows,
    ]


def bench_mask(shape: tuple[int, int], rounds: int, calls: int, min_round_seconds: float = 0.2) -> list[str]:
    """Forward and forward + backward of each dropout and of ``x * c``, all in the same interleaved rounds."""
    print(f"dropout forward, and forward + backward, {shape} float32, keep {KEEP_PROB}")
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), shape)
    cotangent = jax.random.normal(jax.random.key(2), shape)

    # Key and cotangent are arguments, not closed-over constants, so XLA cannot
    # fold them into the executable.
    def forward_backward(fn: Callable[[jax.Array], jax.Array], x: jax.Array, cotangent: jax.Array) -> Any:
        out, pullback = jax.vjp(fn, x)
        return out, pullback(cotangent)[0]

    ops: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
        **DROPOUTS,
        "x * c": lambda key, x: x * (1.0 / KEEP_PROB),
    }
    runs: dict[str, Callable[[], Any]] = {}
    for name, fn in ops.items():
        forward = jax.jit(fn)
        both = jax.jit(lambda key, x, cotangent, fn=fn: forward_backward(lambda x: fn(key, x), x, cotangent))
        runs[f"{name} fwd"] = lambda forward=forward: forward(key, x)
        runs[f"{name} fwd+bwd"] = lambda both=both: both(key, x, cotangent)
    medians = interleaved_medians(runs, rounds, calls, min_round_seconds)

    ours_fwd, ours_both = medians["jdrop.dropout fwd"], medians["jdrop.dropout fwd+bwd"]
    lines = [
        f"Dropout on a {shape[0]}x{shape[1]} float32 array, keep {KEEP_PROB}, jitted; median ms per call "
        "(ratio: the row's time / jdrop's). Every cell of this table comes from the same interleaved rounds. "
        "`x * c` multiplies by the constant 1 / keep: one read and one write of the array and no mask, the "
        "scaling's cost alone, for reference.",
        "",
        "| op | forward ms | forward ratio | forward + backward ms | fwd+bwd ratio |",
        "|---|---|---|---|---|",
    ]
    for name in ops:
        forward_ms, both_ms = medians[f"{name} fwd"], medians[f"{name} fwd+bwd"]
        lines.append(
            f"| {name} | {forward_ms * 1e3:.2f} | {forward_ms / ours_fwd:.2f}x "
            f"| {both_ms * 1e3:.2f} | {both_ms / ours_both:.2f}x |"
        )
    return lines


# --- The dropout family -------------------------------------------------------------------------

SELU_SATURATION = -1.0507009873554805 * 1.6732632423543772
KEEP_LOGIT = math.log(KEEP_PROB / (1.0 - KEEP_PROB))


def _alpha_with_jax_random(key: jax.Array, x: jax.Array) -> jax.Array:
    """torch.nn.AlphaDropout's formula with a jax.random.bernoulli mask."""
    q = KEEP_PROB
    a = (q + SELU_SATURATION**2 * q * (1 - q)) ** -0.5
    mask = jax.random.bernoulli(key, q, x.shape)
    return a * jnp.where(mask, x, SELU_SATURATION) + (-a * SELU_SATURATION * (1 - q))


def _concrete_with_jax_random(key: jax.Array, x: jax.Array) -> jax.Array:
    """The relaxed mask of concrete dropout from jax.random.uniform (Gal et al.'s reference code, in JAX)."""
    u = jax.random.uniform(key, x.shape, minval=1e-7, maxval=1.0 - 1e-7)
    relaxed = jax.nn.sigmoid((KEEP_LOGIT + jnp.log(u) - jnp.log1p(-u)) / 0.1)
    return x * relaxed / KEEP_PROB


#: Each variant: jdrop's function, and the straightforward implementation with jax.random.
VARIANTS: dict[str, tuple[Callable[[jax.Array, jax.Array], jax.Array], Callable[[jax.Array, jax.Array], jax.Array]]] = {
    "gaussian_dropout": (
        lambda key, x: jdrop.gaussian_dropout(key, x, KEEP_PROB),
        lambda key, x: x * (1.0 + math.sqrt(RATE / KEEP_PROB) * jax.random.normal(key, x.shape)),
    ),
    "alpha_dropout": (lambda key, x: jdrop.alpha_dropout(key, x, KEEP_PROB), _alpha_with_jax_random),
    "drop_path (row)": (
        lambda key, x: jdrop.drop_path(key, x, KEEP_PROB),
        lambda key, x: jnp.where(jax.random.bernoulli(key, KEEP_PROB, (x.shape[0], 1)), x / KEEP_PROB, 0.0),
    ),
    "concrete_dropout": (lambda key, x: jdrop.concrete_dropout(key, x, KEEP_LOGIT), _concrete_with_jax_random),
}


def bench_variants(shape: tuple[int, int], rounds: int, calls: int, min_round_seconds: float = 0.2) -> list[str]:
    """Forward time of each variant: jdrop, the jax.random version, and x * c, interleaved per variant."""
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), shape)
    floor = jax.jit(lambda x: x * (1.0 / KEEP_PROB))
    rows = []
    for name, (ours, theirs) in VARIANTS.items():
        print(f"{name} forward, {shape} float32, keep {KEEP_PROB}")
        ours_jit, theirs_jit = jax.jit(ours), jax.jit(theirs)
        runs: dict[str, Callable[[], Any]] = {
            f"jdrop.{name}": lambda ours_jit=ours_jit: ours_jit(key, x),
            f"{name} with jax.random": lambda theirs_jit=theirs_jit: theirs_jit(key, x),
            "x * c (memory floor)": lambda: floor(x),
        }
        mine, straightforward, memory = interleaved_medians(runs, rounds, calls, min_round_seconds).values()
        rows.append(
            f"| {name} | {mine * 1e3:.2f} | {straightforward * 1e3:.2f} | {memory * 1e3:.2f} "
            f"| {mine / memory:.2f}x | {straightforward / mine:.1f}x |"
        )
    return [
        f"The dropout family on a {shape[0]}x{shape[1]} float32 array, keep {KEEP_PROB} (concrete: temperature 0.1), "
        'jitted forward; median ms per call. "jax.random": the same formula with its noise from jax.random '
        "(bernoulli, normal, uniform), as one would write it with the peers' tools.",
        "",
        "| variant | jdrop ms | jax.random ms | x * c ms | jdrop / (x * c) | jax.random / jdrop |",
        "|---|---|---|---|---|---|",
        *rows,
    ]


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


def bench_train_step(
    sizes: tuple[int, ...], batch: int, rounds: int, calls: int, min_round_seconds: float = 0.2
) -> list[str]:
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
        runs[name] = lambda step=step: step(state, x, y, key=key)
    for name, step in flax_steps.items():
        runs[name] = lambda step=step: step(*flax_state[:2], x, y, key, flax_state[2])
    medians = interleaved_medians(runs, rounds, calls, min_round_seconds)
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


# --- Drop-in modules: the host library's Dropout against jdrop's, in the same model --------------
#
# Each model is written once per library and takes its Dropout class as an argument, so the host
# step and the jdrop step are the same code with a different class. The forward passes are shared
# (mlp_forward, block_forward) and take the library's layers as callables.

Run = Callable[[], Any]
Layer = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class MLPConfig:
    """A relu MLP with dropout after every hidden activation."""

    sizes: tuple[int, ...] = (784, 1024, 1024, 10)
    batch: int = 512
    rate: float = 0.2

    def describe(self) -> str:
        return f"a relu MLP {'-'.join(map(str, self.sizes))}, batch {self.batch}, dropout after each hidden relu"

    def data(self) -> tuple[jax.Array, jax.Array]:
        x = jax.random.normal(jax.random.key(3), (self.batch, self.sizes[0]))
        return x, jax.random.randint(jax.random.key(4), (self.batch,), 0, self.sizes[-1])


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """A pre-LayerNorm transformer encoder block, mean-pooled into a linear classifier."""

    d_model: int = 256
    heads: int = 4
    seq: int = 128
    batch: int = 32
    hidden: int = 1024
    classes: int = 10
    rate: float = 0.1

    def describe(self) -> str:
        return (
            f"a pre-LayerNorm transformer encoder block (d_model {self.d_model}, {self.heads} heads, sequence "
            f"{self.seq}, batch {self.batch}, gelu MLP {self.hidden}) + mean-pool + linear head to {self.classes} "
            "classes; dropout on the attention probabilities, after the attention output projection, after the "
            "MLP activation and after the MLP output projection"
        )

    def data(self) -> tuple[jax.Array, jax.Array]:
        x = jax.random.normal(jax.random.key(3), (self.batch, self.seq, self.d_model))
        return x, jax.random.randint(jax.random.key(4), (self.batch,), 0, self.classes)


class BlockLayers(NamedTuple):
    """The block's layers as callables on ``(..., seq, features)`` arrays (``head`` on ``(..., d_model)``)."""

    ln1: Layer
    qkv: Layer
    proj: Layer
    ln2: Layer
    fc1: Layer
    fc2: Layer
    head: Layer


def mlp_forward(x: jax.Array, layers: Sequence[Layer], drops: Sequence[Layer]) -> jax.Array:
    """Linear -> relu -> dropout for every hidden layer, then the output layer."""
    for layer, drop in zip(layers[:-1], drops, strict=True):
        x = drop(jax.nn.relu(layer(x)))
    return layers[-1](x)


def attention(qkv: jax.Array, heads: int, drop: Layer) -> jax.Array:
    """Softmax self-attention from fused ``(..., seq, 3 * d)`` projections; ``drop`` acts on the probabilities."""
    *lead, seq, width = qkv.shape
    d = width // 3
    q, k, v = (t.reshape(*lead, seq, heads, d // heads) for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum("...qhc,...khc->...hqk", q, k) / math.sqrt(d // heads)
    probs = drop(jax.nn.softmax(logits, axis=-1))
    return jnp.einsum("...hqk,...khc->...qhc", probs, v).reshape(*lead, seq, d)


def block_forward(x: jax.Array, heads: int, layers: BlockLayers, drops: Sequence[Layer]) -> jax.Array:
    """Pre-LN attention and MLP sublayers with residual dropout, then mean-pool and the head."""
    attn_drop, resid_drop, act_drop, out_drop = drops
    x = x + resid_drop(layers.proj(attention(layers.qkv(layers.ln1(x)), heads, attn_drop)))
    x = x + out_drop(layers.fc2(act_drop(jax.nn.gelu(layers.fc1(layers.ln2(x))))))
    return layers.head(x.mean(axis=-2))


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy with integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def looping(step: Callable[..., tuple[Any, jax.Array]], state: Any, x: jax.Array, y: jax.Array) -> Run:
    """A run that advances ``state`` by one jitted step per call, as a training loop does."""

    def run() -> Any:
        nonlocal state
        state, loss = step(state, x, y)
        return state, loss

    return run


def keyed_train_run(
    loss: Callable[[Any, jax.Array, jax.Array, jax.Array], jax.Array],
    params: Any,
    optimizer: optax.GradientTransformation,
    x: jax.Array,
    y: jax.Array,
) -> Run:
    """Adam steps of ``loss(params, x, y, key)``; step ``n`` gets the key ``fold_in(base, n)``."""
    base = jax.random.key(2)

    @jax.jit
    def step(state: Any, x: jax.Array, y: jax.Array) -> tuple[Any, jax.Array]:
        params, opt_state, count = state
        value, grads = jax.value_and_grad(loss)(params, x, y, jax.random.fold_in(base, count))
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return (optax.apply_updates(params, updates), opt_state, count + 1), value

    return looping(step, (params, optimizer.init(params), jnp.zeros((), jnp.uint32)), x, y)


# Flax NNX. The step is a jax.jit-compiled pure function of the (model, optimizer) state from one
# nnx.split, Flax's recipe for less Python overhead per call than nnx.jit. The Dropout modules' RNG
# streams are part of that state, so each step draws fresh keys (fold_in(stream key, count)).


class NnxMLP(nnx.Module):
    """The MLP in NNX, with ``dropout`` as its Dropout class."""

    def __init__(self, cfg: MLPConfig, dropout: type[nnx.Dropout], deterministic: bool, rngs: nnx.Rngs) -> None:
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in itertools.pairwise(cfg.sizes)])
        self.drops = nnx.List([dropout(cfg.rate, deterministic=deterministic, rngs=rngs) for _ in cfg.sizes[1:-1]])

    def __call__(self, x: jax.Array) -> jax.Array:
        return mlp_forward(x, list(self.layers), list(self.drops))


class NnxBlock(nnx.Module):
    """The transformer block in NNX, with ``dropout`` as its Dropout class."""

    def __init__(self, cfg: BlockConfig, dropout: type[nnx.Dropout], deterministic: bool, rngs: nnx.Rngs) -> None:
        d = cfg.d_model
        self.heads = cfg.heads
        self.layers = nnx.data(
            BlockLayers(
                ln1=nnx.LayerNorm(d, rngs=rngs),
                qkv=nnx.Linear(d, 3 * d, rngs=rngs),
                proj=nnx.Linear(d, d, rngs=rngs),
                ln2=nnx.LayerNorm(d, rngs=rngs),
                fc1=nnx.Linear(d, cfg.hidden, rngs=rngs),
                fc2=nnx.Linear(cfg.hidden, d, rngs=rngs),
                head=nnx.Linear(d, cfg.classes, rngs=rngs),
            )
        )
        self.drops = nnx.List([dropout(cfg.rate, deterministic=deterministic, rngs=rngs) for _ in range(4)])

    def __call__(self, x: jax.Array) -> jax.Array:
        return block_forward(x, self.heads, self.layers, list(self.drops))


def nnx_run(
    model_cls: type, cfg: Any, dropout: type, deterministic: bool, optimizer: optax.GradientTransformation
) -> Run:
    """A run of jitted NNX training steps of ``model_cls(cfg, dropout, deterministic)``."""
    model = model_cls(cfg, dropout, deterministic, rngs=nnx.Rngs(params=0, dropout=1))
    graphdef, state = nnx.split((model, nnx.Optimizer(model, optimizer, wrt=nnx.Param)))

    def loss(model: nnx.Module, x: jax.Array, y: jax.Array) -> jax.Array:
        return cross_entropy(model(x), y)

    @jax.jit
    def step(state: nnx.State, x: jax.Array, y: jax.Array) -> tuple[nnx.State, jax.Array]:
        model, opt = nnx.merge(graphdef, state)
        value, grads = nnx.value_and_grad(loss)(model, x, y)
        opt.update(model, grads)
        return nnx.state((model, opt)), value  # with the advanced RNG counts

    return looping(step, state, *cfg.data())


# Flax linen: the key goes in as rngs={"dropout": ...}; each Dropout draws with make_rng.


class LinenMLP(nn.Module):
    """The MLP in linen, with ``dropout`` as its Dropout class."""

    cfg: MLPConfig
    dropout: type[nn.Dropout]
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        layers = [nn.Dense(width) for width in self.cfg.sizes[1:]]
        drops = [self.dropout(rate=self.cfg.rate, deterministic=self.deterministic) for _ in self.cfg.sizes[1:-1]]
        return mlp_forward(x, layers, drops)


class LinenBlock(nn.Module):
    """The transformer block in linen, with ``dropout`` as its Dropout class."""

    cfg: BlockConfig
    dropout: type[nn.Dropout]
    deterministic: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        d = self.cfg.d_model
        layers = BlockLayers(
            ln1=nn.LayerNorm(),
            qkv=nn.Dense(3 * d),
            proj=nn.Dense(d),
            ln2=nn.LayerNorm(),
            fc1=nn.Dense(self.cfg.hidden),
            fc2=nn.Dense(d),
            head=nn.Dense(self.cfg.classes),
        )
        drops = [self.dropout(rate=self.cfg.rate, deterministic=self.deterministic) for _ in range(4)]
        return block_forward(x, self.cfg.heads, layers, drops)


def linen_run(
    model_cls: type, cfg: Any, dropout: type, deterministic: bool, optimizer: optax.GradientTransformation
) -> Run:
    """A run of jitted linen training steps of ``model_cls(cfg, dropout, deterministic)``."""
    model = model_cls(cfg, dropout, deterministic)
    x, y = cfg.data()
    params = model.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)

    def loss(params: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        return cross_entropy(model.apply(params, x, rngs={"dropout": key}), y)

    return keyed_train_run(loss, params, optimizer, x, y)


# Equinox: the models see one example; the batch is a jax.vmap with one key per example, and each
# example splits its key among its Dropout layers.


def with_keys(drops: Sequence[eqx.nn.Dropout], key: jax.Array) -> list[Layer]:
    """The Dropout layers as one-argument callables, each with its own key split from ``key``."""
    keys = jax.random.split(key, len(drops))
    return [functools.partial(drop, key=k) for drop, k in zip(drops, keys, strict=True)]


class EqxMLP(eqx.Module):
    """The MLP in Equinox (one example), with ``dropout`` as its Dropout class."""

    layers: list[eqx.nn.Linear]
    drops: list[eqx.nn.Dropout]

    def __init__(self, cfg: MLPConfig, dropout: type[eqx.nn.Dropout], deterministic: bool, *, key: jax.Array) -> None:
        keys = jax.random.split(key, len(cfg.sizes) - 1)
        self.layers = [
            eqx.nn.Linear(a, b, key=k) for (a, b), k in zip(itertools.pairwise(cfg.sizes), keys, strict=True)
        ]
        self.drops = [dropout(p=cfg.rate, inference=deterministic) for _ in cfg.sizes[1:-1]]

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        return mlp_forward(x, self.layers, with_keys(self.drops, key))


class EqxBlock(eqx.Module):
    """The transformer block in Equinox (one example), with ``dropout`` as its Dropout class."""

    heads: int = eqx.field(static=True)
    layers: BlockLayers
    drops: list[eqx.nn.Dropout]

    def __init__(self, cfg: BlockConfig, dropout: type[eqx.nn.Dropout], deterministic: bool, *, key: jax.Array) -> None:
        d = cfg.d_model
        keys = jax.random.split(key, 5)
        self.heads = cfg.heads
        self.layers = BlockLayers(
            ln1=eqx.nn.LayerNorm(d),
            qkv=eqx.nn.Linear(d, 3 * d, key=keys[0]),
            proj=eqx.nn.Linear(d, d, key=keys[1]),
            ln2=eqx.nn.LayerNorm(d),
            fc1=eqx.nn.Linear(d, cfg.hidden, key=keys[2]),
            fc2=eqx.nn.Linear(cfg.hidden, d, key=keys[3]),
            head=eqx.nn.Linear(d, cfg.classes, key=keys[4]),
        )
        self.drops = [dropout(p=cfg.rate, inference=deterministic) for _ in range(4)]

    def __call__(self, x: jax.Array, key: jax.Array) -> jax.Array:
        """One example: ``x`` is ``(seq, d_model)``; the token-wise layers are vmapped over the sequence."""
        per_token = BlockLayers(*(jax.vmap(layer) for layer in self.layers[:-1]), head=self.layers.head)
        return block_forward(x, self.heads, per_token, with_keys(self.drops, key))


def eqx_run(
    model_cls: type, cfg: Any, dropout: type, deterministic: bool, optimizer: optax.GradientTransformation
) -> Run:
    """A run of jitted Equinox training steps of ``model_cls(cfg, dropout, deterministic)``."""
    params, static = eqx.partition(model_cls(cfg, dropout, deterministic, key=jax.random.key(0)), eqx.is_array)

    def loss(params: Any, x: jax.Array, y: jax.Array, key: jax.Array) -> jax.Array:
        model = eqx.combine(params, static)
        return cross_entropy(jax.vmap(model)(x, jax.random.split(key, x.shape[0])), y)

    return keyed_train_run(loss, params, optimizer, *cfg.data())


@dataclasses.dataclass(frozen=True)
class Host:
    """A library, its own Dropout and jdrop's drop-in for it, its models and its training-step runner."""

    name: str
    dropout: type
    dropin: type
    models: dict[str, type]
    make_run: Callable[[type, Any, type, bool, optax.GradientTransformation], Run]


DROPIN_CONFIGS: dict[str, MLPConfig | BlockConfig] = {"mlp": MLPConfig(), "block": BlockConfig()}
HOSTS = (
    Host("Flax NNX (nnx.Dropout)", nnx.Dropout, jdrop.nnx.Dropout, {"mlp": NnxMLP, "block": NnxBlock}, nnx_run),
    Host("Flax linen (nn.Dropout)", nn.Dropout, jdrop.linen.Dropout, {"mlp": LinenMLP, "block": LinenBlock}, linen_run),
    Host(
        "Equinox (eqx.nn.Dropout)", eqx.nn.Dropout, jdrop.equinox.Dropout, {"mlp": EqxMLP, "block": EqxBlock}, eqx_run
    ),
)


def bench_dropin(rounds: int, calls: int, min_round_seconds: float = 0.2) -> list[str]:
    """Training-step time with the host's Dropout, with jdrop's drop-in, and without dropout."""
    optimizer = optax.adam(1e-3)
    lines = []
    for model_name, cfg in DROPIN_CONFIGS.items():
        rows = []
        for host in HOSTS:
            print(f"drop-in Dropout, {host.name}, {model_name}: one jitted adam step, rate {cfg.rate}")
            model_cls = host.models[model_name]
            runs = {
                f"{host.name}, host Dropout": host.make_run(model_cls, cfg, host.dropout, False, optimizer),
                f"{host.name}, jdrop drop-in": host.make_run(model_cls, cfg, host.dropin, False, optimizer),
                f"{host.name}, no dropout": host.make_run(model_cls, cfg, host.dropout, True, optimizer),
            }
            theirs, ours, off = interleaved_medians(runs, rounds, calls, min_round_seconds).values()
            rows.append(
                f"| {host.name} | {theirs * 1e3:.2f} | {ours * 1e3:.2f} | {off * 1e3:.2f} "
                f"| {theirs / off:.3f} | {ours / off:.3f} |"
            )
        lines += [
            f"One jitted adam step of {cfg.describe()}; dropout rate {cfg.rate}; median ms per step. The same model "
            "code with the host's Dropout, with jdrop's drop-in, and deterministic (overhead: time / no-dropout time).",
            "",
            "| library | host Dropout ms | jdrop drop-in ms | no dropout ms | host overhead (host/no-dropout) "
            "| jdrop overhead (jdrop/no-dropout) |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    return lines[:-1]


# --- A transformer language model: Flax's lm1b decoder, with Flax's dropout and with jdrop's ----
#
# The decoder-only language model of Flax's examples/lm1b/models.py (github.com/google/flax;
# TransformerLM, Decoder, EncoderDecoder1DBlock, MlpBlock), written compactly: the same layers,
# initialisers, masks and dropout sites (after the embedding, on the attention weights with
# broadcast_dropout=False, after the attention, after the MLP's relu and after its output), without
# the decoding cache, packed sequences and logical partitioning. The model takes its Dropout class
# and its attention_fn as fields, so jdrop's version is the same code with those two names changed.

LM_KERNEL_INIT = nn.initializers.xavier_uniform()
LM_BIAS_INIT = nn.initializers.normal(stddev=1e-6)


@dataclasses.dataclass(frozen=True)
class LMConfig:
    """The lm1b example's TransformerConfig, trimmed, at a CPU-sized default."""

    layers: int = 4
    emb_dim: int = 256  # also qkv_dim
    heads: int = 8
    mlp_dim: int = 1024
    vocab: int = 1024
    seq: int = 512
    batch: int = 8
    rate: float = 0.1  # dropout_rate: the embedding, the residual branches and the MLP
    attention_rate: float = 0.1  # attention_dropout_rate: the attention weights

    def describe(self) -> str:
        return (
            f"Flax's lm1b decoder-only transformer (examples/lm1b/models.py, trimmed): {self.layers} layers, width "
            f"{self.emb_dim}, {self.heads} heads of {self.emb_dim // self.heads}, relu MLP {self.mlp_dim}, vocabulary "
            f"{self.vocab}, sequence {self.seq}, batch {self.batch}, float32; dropout {self.rate} on the embedding, "
            f"the residual branches and inside the MLP, attention dropout {self.attention_rate} "
            "(broadcast_dropout=False)"
        )

    def data(self) -> tuple[jax.Array, jax.Array]:
        """Tokens in [1, vocab), 0 being padding; the targets are the tokens (the model shifts its input right)."""
        tokens = jax.random.randint(jax.random.key(3), (self.batch, self.seq), 1, self.vocab)
        return tokens, tokens


def sinusoidal_positions(length: int, features: int) -> jax.Array:
    """The example's fixed sinusoidal position embedding, ``(1, length, features)``."""
    half = features // 2
    frequencies = jnp.exp(jnp.arange(half) * (-math.log(10000.0) / (half - 1)))
    angles = jnp.arange(length)[:, None] * frequencies
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)[None]


class LMBlock(nn.Module):
    """EncoderDecoder1DBlock as the decoder uses it: pre-LayerNorm self-attention, then MlpBlock, with dropout."""

    cfg: LMConfig
    dropout: type[nn.Dropout]
    attention_fn: Callable[..., jax.Array]
    deterministic: bool

    @nn.compact
    def __call__(self, inputs: jax.Array, mask: jax.Array) -> jax.Array:
        cfg, det = self.cfg, self.deterministic
        x = nn.MultiHeadDotProductAttention(
            num_heads=cfg.heads,
            qkv_features=cfg.emb_dim,
            kernel_init=LM_KERNEL_INIT,
            bias_init=LM_BIAS_INIT,
            use_bias=False,
            broadcast_dropout=False,
            dropout_rate=cfg.attention_rate,
            deterministic=det,
            attention_fn=self.attention_fn,
        )(nn.LayerNorm()(inputs), mask=mask)
        x = inputs + self.dropout(rate=cfg.rate)(x, deterministic=det)
        z = nn.Dense(cfg.mlp_dim, kernel_init=LM_KERNEL_INIT, bias_init=LM_BIAS_INIT)(nn.LayerNorm()(x))
        z = self.dropout(rate=cfg.rate)(nn.relu(z), deterministic=det)
        z = nn.Dense(cfg.emb_dim, kernel_init=LM_KERNEL_INIT, bias_init=LM_BIAS_INIT)(z)
        return x + self.dropout(rate=cfg.rate)(z, deterministic=det)


class LMTransformer(nn.Module):
    """TransformerLM and its Decoder: padding and causal masks, embedding of the shifted tokens, blocks, logits."""

    cfg: LMConfig
    dropout: type[nn.Dropout]
    attention_fn: Callable[..., jax.Array]
    deterministic: bool

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        cfg, det = self.cfg, self.deterministic
        mask = nn.combine_masks(nn.make_attention_mask(tokens > 0, tokens > 0), nn.make_causal_mask(tokens))
        shifted = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]  # shift_inputs: position t predicts token t
        y = nn.Embed(cfg.vocab, cfg.emb_dim, embedding_init=nn.initializers.normal(stddev=1.0))(shifted)
        y = y + sinusoidal_positions(tokens.shape[1], cfg.emb_dim)
        y = self.dropout(rate=cfg.rate)(y, deterministic=det)
        for _ in range(cfg.layers):
            y = LMBlock(cfg, self.dropout, self.attention_fn, det)(y, mask)
        return nn.Dense(cfg.vocab, kernel_init=LM_KERNEL_INIT, bias_init=LM_BIAS_INIT)(nn.LayerNorm()(y))


def bench_transformer(cfg: LMConfig, rounds: int, calls: int, min_round_seconds: float = 0.2) -> list[str]:
    """Adam steps of the lm1b transformer: no dropout, Flax's dropout, jdrop's; step time and XLA temp memory."""
    print(f"transformer LM, {cfg.layers} layers, width {cfg.emb_dim}, sequence {cfg.seq}, batch {cfg.batch}")
    only_residual = dataclasses.replace(cfg, attention_rate=0.0)
    only_attention = dataclasses.replace(cfg, rate=0.0)
    variants = {  # (model config, Dropout class, attention_fn, deterministic)
        "no dropout (deterministic=True)": (cfg, nn.Dropout, nn.dot_product_attention, True),
        # Every rate 0: Flax's attention then takes its fast path (jax.nn.dot_product_attention).
        "no dropout (every rate 0)": (
            dataclasses.replace(cfg, rate=0.0, attention_rate=0.0),
            nn.Dropout,
            nn.dot_product_attention,
            False,
        ),
        "Flax: nn.Dropout, nn.dot_product_attention": (cfg, nn.Dropout, nn.dot_product_attention, False),
        "jdrop: jdrop.linen.Dropout, jdrop.linen.dot_product_attention": (
            cfg,
            jdrop.linen.Dropout,
            jdrop.linen.dot_product_attention,
            False,
        ),
        # Where jdrop's cost goes: each kind of dropout site alone, the other's rate set to 0.
        "jdrop, only the embedding, residual and MLP sites (attention rate 0)": (
            only_residual,
            jdrop.linen.Dropout,
            jdrop.linen.dot_product_attention,
            False,
        ),
        "jdrop, only the attention weights (the other sites' rate 0)": (
            only_attention,
            jdrop.linen.Dropout,
            jdrop.linen.dot_product_attention,
            False,
        ),
    }
    optimizer = optax.adam(1e-3)
    tokens, targets = cfg.data()
    params = LMTransformer(cfg, nn.Dropout, nn.dot_product_attention, True).init(jax.random.key(0), tokens)
    state = (params, optimizer.init(params), jnp.zeros((), jnp.uint32))  # the same start for every variant
    base = jax.random.key(2)
    runs: dict[str, Run] = {}
    temp: dict[str, int] = {}
    for name, (config, dropout, attention_fn, deterministic) in variants.items():
        model = LMTransformer(config, dropout, attention_fn, deterministic)

        def loss(params: Any, x: jax.Array, y: jax.Array, key: jax.Array, model: LMTransformer = model) -> jax.Array:
            return cross_entropy(model.apply(params, x, rngs={"dropout": key}), y)

        def step(state: Any, x: jax.Array, y: jax.Array, loss: Callable[..., jax.Array] = loss) -> Any:
            params, opt_state, count = state
            value, grads = jax.value_and_grad(loss)(params, x, y, jax.random.fold_in(base, count))
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state, count + 1), value

        compiled = jax.jit(step).lower(state, tokens, targets).compile()  # timed as analysed
        analysis = compiled.memory_analysis()
        if analysis is None:
            raise RuntimeError("this backend reports no memory_analysis()")
        temp[name] = int(analysis.temp_size_in_bytes)
        runs[name] = looping(compiled, state, tokens, targets)
    medians = interleaved_medians(runs, rounds, calls, min_round_seconds)
    off = next(iter(variants))
    rows = [
        f"| {name} | {medians[name] * 1e3:.1f} | {medians[name] / medians[off]:.3f} "
        f"| {temp[name] / 2**20:.1f} | {temp[name] / temp[off]:.3f} |"
        for name in variants
    ]
    return [
        f"One jitted adam step (next-token cross-entropy) of {cfg.describe()}. The same model code, parameters and "
        "data; median ms per step, and XLA's compile-time temp_size_in_bytes of the jitted step (MiB); ratios: "
        "the row's / no dropout's.",
        "",
        "| variant (Dropout, attention_fn) | step ms | time / no dropout | temp MiB | temp / no dropout |",
        "|---|---|---|---|---|",
        *rows,
    ]


# --- Attention dropout ----------------------------------------------------------------------------


def bench_attention(lengths: Sequence[int], rounds: int, calls: int, min_round_seconds: float = 0.2) -> list[str]:
    """Forward + backward of attention with dropout 0.1: jdrop's tiles, Flax's materialised weights, jax.nn without."""
    heads, head_dim = 8, 64
    print(f"attention, B=1, {heads} heads, head dim {head_dim}, float32, forward + backward of sum(out ** 2)")
    candidates: dict[str, Callable[..., jax.Array]] = {
        "jdrop.dot_product_attention, keep 0.9": lambda q, k, v, key: jdrop.dot_product_attention(
            q, k, v, dropout_key=key, keep_prob=KEEP_PROB
        ),
        "Flax nnx.dot_product_attention, rate 0.1": lambda q, k, v, key: nnx.dot_product_attention(
            q, k, v, dropout_rng=key, dropout_rate=RATE
        ),
        "jax.nn.dot_product_attention, no dropout": lambda q, k, v, key: jax.nn.dot_product_attention(q, k, v),
    }
    flax_name, jax_name = list(candidates)[1:]
    lines = [
        "### Attention dropout",
        "",
        f"B=1, {heads} heads, head dim {head_dim}, float32; one jitted gradient of `sum(out ** 2)` in query, key and "
        "value (forward + backward); dropout 0.1 on the attention weights. Temp: XLA's compiled temporary memory.",
        "",
        "| T | attention | fwd + bwd ms | vs Flax | vs jax.nn | temp MiB | temp vs Flax |",
        "|---|---|---|---|---|---|---|",
    ]
    for length in lengths:
        kq, kk, kv, key = jax.random.split(jax.random.key(length), 4)
        q, k, v = (jax.random.normal(part, (1, length, heads, head_dim)) for part in (kq, kk, kv))
        runs: dict[str, Callable[[], Any]] = {}
        temp: dict[str, float] = {}
        for name, attention in candidates.items():
            grad = jax.jit(jax.grad(lambda q, k, v, key, f=attention: (f(q, k, v, key) ** 2).sum(), argnums=(0, 1, 2)))
            compiled = grad.lower(q, k, v, key).compile()
            temp[name] = compiled.memory_analysis().temp_size_in_bytes / 2**20
            runs[name] = functools.partial(compiled, q, k, v, key)
        print(f" T={length}")
        medians = interleaved_medians(runs, rounds, calls, min_round_seconds)
        for name in candidates:
            lines.append(
                f"| {length} | {name} | {medians[name] * 1e3:.0f} | {medians[name] / medians[flax_name]:.2f} | "
                f"{medians[name] / medians[jax_name]:.2f} | {temp[name]:.0f} | {temp[name] / temp[flax_name]:.3f} |"
            )
    return lines


SECTIONS = ("mask", "sizes", "variants", "train", "memory", "dropin", "attention", "transformer")


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds (default 7, at least 5)")
    parser.add_argument("--calls", type=int, default=3, help="least calls timed back to back per round (default 3)")
    parser.add_argument("--out", type=Path, default=None, help="write the report to this file")
    parser.add_argument(
        "--write", action="store_true", help="write the report to benchmarks/results.md (the README's tables)"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip", nargs="*", default=[], choices=SECTIONS, help="sections not to run")
    which.add_argument("--only", nargs="+", choices=SECTIONS, help="run only these sections, e.g. --only dropin")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: 3 rounds of 1 call each (overrides --rounds and --calls), a 2-layer transformer at T=128",
    )
    args = parser.parse_args(argv)
    if args.rounds < 5 or args.calls < 1:
        parser.error(f"--rounds must be >= 5 and --calls >= 1, got {args.rounds} and {args.calls}")
    rounds, calls, min_round_seconds = (3, 1, 0.0) if args.quick else (args.rounds, args.calls, 0.2)
    selected = (
        [name for name in SECTIONS if name in args.only]
        if args.only
        else [name for name in SECTIONS if name not in args.skip]
    )
    if args.write and args.out is not None:
        parser.error("give --write or --out, not both")
    out = Path(__file__).resolve().parent / "results.md" if args.write else args.out

    command = "python benchmarks/run.py" + "".join(f" {arg}" for arg in (argv if argv is not None else sys.argv[1:]))
    header = [
        f"Measured {datetime.date.today().isoformat()} on {machine()}; `{command}`; medians of {rounds} "
        f"interleaved rounds, each of at least {calls} calls and {min_round_seconds:g} s per candidate"
        + (" (--quick: a smoke test, not a measurement)." if args.quick else "."),
        "",
    ]
    sections = []
    if "mask" in selected:
        sections.append(bench_mask((4096, 1024), rounds, calls, min_round_seconds))
    if "sizes" in selected:
        sections.append(bench_mask_sizes(((1024, 1024), (4096, 1024), (8192, 4096)), rounds, calls, min_round_seconds))
    if "variants" in selected:
        sections.append(bench_variants((4096, 1024), rounds, calls, min_round_seconds))
    if "train" in selected:
        sections.append(bench_train_step((784, 1024, 1024, 10), 512, rounds, calls, min_round_seconds))
    if "memory" in selected:
        sections.append(bench_memory((784, 2048, 2048, 2048, 10), 1024))
    if "dropin" in selected:
        sections.append(bench_dropin(rounds, calls, min_round_seconds))
    if "attention" in selected:
        sections.append(
            bench_attention((256, 512) if args.quick else (1024, 2048, 4096), rounds, calls, min_round_seconds)
        )
    if "transformer" in selected:
        lm = LMConfig(layers=2, seq=128) if args.quick else LMConfig()
        sections.append(bench_transformer(lm, rounds, calls, min_round_seconds))
    report = "\n".join(header + [line for section in sections for line in [*section, ""]])
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report)
    print()
    print(report)
    return report


if __name__ == "__main__":
    main()
