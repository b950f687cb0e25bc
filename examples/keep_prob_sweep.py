"""How much dropout? Test accuracy on MNIST-1D as the hidden keep probability goes from 0.3 to 1.0.

Trains the MLP of ``examples/mnist1d_study.py`` (the same data, initial
weights, batches, optimiser and steps) once per keep probability of the hidden
layers, with ``jdrop.make_train_step``, and scores each network two ways:
weight scaling (all units, no rescaling) and the Monte Carlo average of
dropout networks. Then, instead of the grid, one run of concrete dropout (Gal,
Hron and Kendall 2017) learns each hidden layer's keep probability with the
weights. Writes ``<out>/sweep.json`` and ``<out>/sweep.png``.

Run ``python examples/keep_prob_sweep.py`` (needs ``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure
from mnist1d_data import batch_indices, load_mnist1d

import jdrop

HIDDEN, BATCH_SIZE, LEARNING_RATE = (512, 512), 100, 1e-3  # as in mnist1d_study.py


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--keep-probs",
        type=float,
        nargs="+",
        default=[0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
        help="keep probabilities of the hidden layers to try",
    )
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--mc-samples", type=int, default=32)
    parser.add_argument("--out", type=Path, default=Path("runs/keep_prob_sweep"))
    parser.add_argument("--no-concrete", dest="concrete", action="store_false", help="skip the concrete-dropout run")
    parser.add_argument("--concrete-length-scale", type=float, default=0.01, help="prior length-scale l")
    args = parser.parse_args(argv)
    for keep_prob in args.keep_probs:
        if not 0.0 < keep_prob <= 1.0:
            parser.error(f"--keep-probs must be in (0, 1], got {keep_prob}")
    if not args.concrete_length_scale > 0:
        parser.error(f"--concrete-length-scale must be > 0, got {args.concrete_length_scale}")
    if args.steps < 1 or args.seeds < 1 or args.mc_samples < 1:
        parser.error("--steps, --seeds and --mc-samples must be >= 1")
    return args


def fit(
    train_step: Any, state: jdrop.TrainState, key: jax.Array, data: dict[str, np.ndarray], seed: int, steps: int
) -> tuple[jdrop.TrainState, dict[str, jax.Array]]:
    """``steps`` steps of ``train_step`` on seed ``seed``'s batches, in one jitted ``lax.scan``; all steps' metrics."""

    @jax.jit  # the data are arguments, not closures: jit would copy closed-over arrays into the program
    def run(state: jdrop.TrainState, key: jax.Array, indices: jax.Array, x: jax.Array, y: jax.Array) -> Any:
        return jax.lax.scan(lambda state, batch: train_step(state, x[batch], y[batch], key=key), state, indices)

    indices = jnp.asarray(batch_indices(seed, len(data["x"]), BATCH_SIZE, steps))
    return run(state, key, indices, jnp.asarray(data["x"]), jnp.asarray(data["y"]))


def scores(
    params: jdrop.Params, keep_probs: Sequence[float], data: dict[str, np.ndarray], samples: int, key: jax.Array
) -> dict[str, float]:
    """Train accuracy; test accuracy and NLL by weight scaling and by the MC average of ``samples`` networks."""
    x, y = jnp.asarray(data["x_test"]), data["y_test"]
    test = jdrop.evaluate(params, x, y)
    probs = np.asarray(jdrop.mc_predict(params, x, key=key, num_samples=samples, keep_probs=keep_probs).mean_probs)
    return {
        "train_acc": float(jdrop.evaluate(params, data["x"], data["y"])["accuracy"]),
        "test_acc": float(test["accuracy"]),
        "mc_test_acc": float(np.mean(probs.argmax(axis=1) == y)),
        "nll": float(test["cross_entropy"]),
        "mc_nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], 1e-30)))),
    }


def concrete_mlp_apply(params: dict[str, Any], x: jax.Array, key: jax.Array | None, temperature: float) -> jax.Array:
    """The MLP with concrete dropout on the inputs of every layer after the first (the hidden units)."""
    layers, keep_logits = params["mlp"], params["keep_logits"]
    keys = jax.random.split(key, len(layers) - 1) if key is not None else [None] * (len(layers) - 1)
    h = x
    for i, layer in enumerate(layers):
        if i > 0:
            h = jdrop.concrete_dropout(keys[i - 1], h, keep_logits[i - 1], temperature=temperature)
        h = h @ layer["w"] + layer["b"]
        if i < len(layers) - 1:
            h = jax.nn.relu(h)
    return h


def train_concrete(data: dict[str, np.ndarray], steps: int, length_scale: float, seed: int = 0) -> dict[str, Any]:
    """One network whose hidden keep probabilities are learned: concrete dropout and its regulariser.

    The loss is the batch's mean cross-entropy plus, for each hidden layer,
    ``jdrop.concrete_dropout_regularizer`` with N = 4000 training examples and
    the kernel that multiplies the dropped units. The weights train as in the
    grid (adam, same learning rate, batches and steps); the keep logits with
    adam at ten times that rate, so that they settle within the run. They
    start at keep 0.9, as in the paper.
    """
    num_examples, temperature = len(data["x"]), 0.1

    def loss_fn(params: dict[str, Any], x: jax.Array, y: jax.Array, key: jax.Array, keep_probs: Any) -> Any:
        logits = concrete_mlp_apply(params, x, key, temperature)
        cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        # Hidden layer i's units are dropped on their way into layer i + 1: its kernel is the one that counts.
        penalty = sum(
            jdrop.concrete_dropout_regularizer(
                logit, params["mlp"][i + 1]["w"], num_examples=num_examples, length_scale=length_scale
            )
            for i, logit in enumerate(params["keep_logits"])
        )
        return cross_entropy + penalty, {"learned_keep_probs": jax.nn.sigmoid(params["keep_logits"])}

    optimizer = optax.multi_transform(
        {"weights": optax.adam(LEARNING_RATE), "keep": optax.adam(10 * LEARNING_RATE)},
        {"mlp": "weights", "keep_logits": "keep"},
    )
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    params = {
        "mlp": jdrop.mlp_init(init_key, (data["x"].shape[1], *HIDDEN, 10)),
        "keep_logits": jnp.full((len(HIDDEN),), np.log(0.9 / 0.1), jnp.float32),
    }
    train_step = jdrop.make_train_step(optimizer, loss_fn=loss_fn)
    state, metrics = fit(train_step, jdrop.init_train_state(params, optimizer), dropout_key, data, seed, steps)
    learned = [float(k) for k in jax.nn.sigmoid(state.params["keep_logits"])]
    keep_curve = np.asarray(metrics["learned_keep_probs"])[:: max(1, steps // 100)]
    return {"params": state.params["mlp"], "keep_probs": [1.0, *learned], "keep_curve": keep_curve.tolist()}


def plot(rows: Sequence[dict[str, float]], path: Path) -> None:
    keep = sorted({row["keep_prob"] for row in rows})

    def mean(field: str) -> list[float]:
        return [float(np.mean([r[field] for r in rows if r["keep_prob"] == k])) for k in keep]

    fig = Figure(figsize=(6.5, 4.2), layout="tight")
    ax = fig.subplots()
    ax.plot(keep, mean("train_acc"), "o-", color="tab:gray", label="train (all units)")
    ax.plot(keep, mean("test_acc"), "o-", color="tab:red", label="test, weight scaling")
    ax.plot(keep, mean("mc_test_acc"), "x--", color="tab:purple", label="test, MC dropout average")
    ax.set(xlabel="keep probability of the hidden units (1.0 = no dropout)", ylabel="accuracy")
    ax.set_title("MNIST-1D, MLP 40-512-512-10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Runs the grid (and the concrete-dropout run); returns the grid's rows."""
    args = parse_args(argv)
    data = load_mnist1d()
    optimizer = optax.adam(LEARNING_RATE)
    rows = []
    for keep_prob in args.keep_probs:
        keep_probs = (1.0, *[keep_prob] * len(HIDDEN))  # no dropout on the input signal
        train_step = jdrop.make_train_step(optimizer, keep_probs=keep_probs)
        for seed in range(args.seeds):
            start = time.perf_counter()
            init_key, dropout_key = jax.random.split(jax.random.key(seed))  # as in mnist1d_study.py
            state = jdrop.init_train_state(jdrop.mlp_init(init_key, (data["x"].shape[1], *HIDDEN, 10)), optimizer)
            state, _ = fit(train_step, state, dropout_key, data, seed, args.steps)
            row = scores(state.params, keep_probs, data, args.mc_samples, jax.random.key(1000 + seed))
            rows.append({"keep_prob": keep_prob, "seed": seed, **row})
            seconds = time.perf_counter() - start
            print(f"keep {keep_prob:g}, seed {seed}: test accuracy {row['test_acc']:.3f} ({seconds:.0f} s)", flush=True)
    concrete = None
    if args.concrete:
        result = train_concrete(data, args.steps, args.concrete_length_scale)
        learned = result["keep_probs"][1:]
        scored = scores(result["params"], result["keep_probs"], data, args.mc_samples, jax.random.key(2000))
        concrete = {"learned_keep_probs": learned, **scored, "keep_curve": result["keep_curve"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"grid": rows, "concrete": concrete}, indent=1))
    plot(rows, args.out / "sweep.png")
    fields = ("train_acc", "test_acc", "mc_test_acc", "nll", "mc_nll")
    print("\n| hidden keep prob | train acc | test acc (weight scaling) | test acc (MC) | NLL | NLL (MC) |")
    print("|---|---|---|---|---|---|")
    for keep_prob in args.keep_probs:
        group = [r for r in rows if r["keep_prob"] == keep_prob]
        print(f"| {keep_prob:.1f} | " + " | ".join(f"{np.mean([r[f] for r in group]):.3f}" for f in fields) + " |")
    if concrete is not None:
        learned = " and ".join(f"{k:.2f}" for k in concrete["learned_keep_probs"])
        print(f"| concrete, learned {learned} | " + " | ".join(f"{concrete[f]:.3f}" for f in fields) + " |")
    print(f"\nwrote {args.out / 'sweep.json'} and {args.out / 'sweep.png'}")
    return rows


if __name__ == "__main__":
    main()
