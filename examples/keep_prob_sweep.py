"""How much dropout? Test accuracy on MNIST-1D as the hidden keep probability goes from 0.3 to 1.0.

Trains the MLP of ``examples/mnist1d.py`` (same data, optimiser and steps)
once per keep probability on the hidden layers, all in one jitted program
(``mnist1d.train``), and evaluates each network two ways: the inverted-dropout
rule (all units, no scaling) and the Monte Carlo average of dropout networks.
Then, instead of the grid, one run of concrete dropout (Gal, Hron and Kendall
2017) learns each hidden layer's keep probability with the weights.
Writes ``<out>/sweep.json`` and ``<out>/sweep.png``.

Run ``python examples/keep_prob_sweep.py`` (needs ``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

import jdrop


def _mnist1d_example() -> Any:
    spec = importlib.util.spec_from_file_location("mnist1d_example", Path(__file__).with_name("mnist1d.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


def train_concrete(
    data: dict[str, np.ndarray], train_args: argparse.Namespace, length_scale: float, seed: int = 0
) -> dict[str, Any]:
    """One network whose hidden keep probabilities are learned: concrete dropout and its regulariser.

    The loss is the batch's mean cross-entropy plus, for each hidden layer,
    ``jdrop.concrete_dropout_regularizer`` with N = 4000 training examples and
    the kernel that multiplies the dropped units. The weights train as in the
    grid (adam, same learning rate, batches and steps); the keep logits with
    adam at ten times that rate, so that they settle within the run. They
    start at keep 0.9, as in the paper.
    """
    num_examples, temperature = len(data["x"]), 0.1
    sizes = (data["x"].shape[1], *train_args.hidden, 10)

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
        {"weights": optax.adam(train_args.lr), "keep": optax.adam(10 * train_args.lr)},
        {"mlp": "weights", "keep_logits": "keep"},
    )
    step = jdrop.make_train_step(optimizer, loss_fn=loss_fn)
    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    params = {
        "mlp": jdrop.mlp_init(init_key, sizes),
        "keep_logits": jnp.full((len(sizes) - 2,), np.log(0.9 / 0.1), jnp.float32),
    }
    example = _mnist1d_example()
    indices = jnp.asarray(example.batch_indices(seed, num_examples, train_args.batch_size, train_args.steps))
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])

    @jax.jit
    def run(state: jdrop.TrainState, indices: jax.Array) -> tuple[jdrop.TrainState, jax.Array]:
        def body(state: jdrop.TrainState, batch: jax.Array) -> tuple[jdrop.TrainState, jax.Array]:
            state, metrics = step(state, x[batch], y[batch], key=dropout_key)
            return state, metrics["learned_keep_probs"]

        return jax.lax.scan(body, state, indices)

    state, keep_curve = run(jdrop.init_train_state(params, optimizer), indices)
    mlp = state.params["mlp"]
    learned = [float(k) for k in jax.nn.sigmoid(state.params["keep_logits"])]
    return {
        "params": mlp,
        "keep_probs": [train_args.keep_prob_input, *learned],
        "train_acc": float(jdrop.evaluate(mlp, x, y)["accuracy"]),
        "test_acc": float(jdrop.evaluate(mlp, jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"]))["accuracy"]),
        "keep_curve": np.asarray(keep_curve)[:: max(1, train_args.steps // 100)].tolist(),
    }


def plot(rows: Sequence[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = sorted({row["keep_prob"] for row in rows})

    def mean(field: str) -> list[float]:
        return [float(np.mean([r[field] for r in rows if r["keep_prob"] == k])) for k in keep]

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    ax.plot(keep, mean("train_acc"), "o-", color="tab:gray", label="train (all units)")
    ax.plot(keep, mean("test_acc"), "o-", color="tab:red", label="test, weight scaling")
    ax.plot(keep, mean("mc_test_acc"), "x--", color="tab:purple", label="test, MC dropout average")
    ax.set_xlabel("keep probability of the hidden units (1.0 = no dropout)")
    ax.set_ylabel("accuracy")
    ax.set_title("MNIST-1D, MLP 40-512-512-10")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> list[dict[str, float]]:
    """Runs the grid (and the concrete-dropout run); returns the grid's rows."""
    args = parse_args(argv)
    example = _mnist1d_example()
    example.use_every_core()
    data = example.load_mnist1d()
    train_args = example.parse_args(["--steps", str(args.steps), "--eval-every", str(min(args.steps, 1000))])
    grid = [(keep_prob, seed) for keep_prob in args.keep_probs for seed in range(args.seeds)]
    keep_input, num_hidden = train_args.keep_prob_input, len(train_args.hidden)
    networks = [
        example.Network(f"keep {keep_prob:g}", seed, (keep_input,) + (keep_prob,) * num_hidden, 0.0)
        for keep_prob, seed in grid
    ]
    # One jitted program, compiled once, trains them all: the keep probabilities are traced values.
    results = example.train(networks, data, train_args)
    rows = []
    for (keep_prob, seed), result in zip(grid, results, strict=True):
        report = example.evaluate_uncertainty(
            result["params"], result["keep_probs"], data, args.mc_samples, jax.random.key(1000 + seed)
        )
        mc = report[f"MC dropout, {args.mc_samples} samples"]
        rows.append(
            {
                "keep_prob": keep_prob,
                "seed": seed,
                "train_acc": result["train_acc"],
                "test_acc": result["test_acc"],
                "mc_test_acc": mc["test_acc"],
                "nll": report["weight scaling"]["nll"],
                "mc_nll": mc["nll"],
            }
        )
    concrete = None
    if args.concrete:
        result = train_concrete(data, train_args, args.concrete_length_scale)
        report = example.evaluate_uncertainty(
            result["params"], result["keep_probs"], data, args.mc_samples, jax.random.key(2000)
        )
        mc = report[f"MC dropout, {args.mc_samples} samples"]
        concrete = {
            "learned_keep_probs": result["keep_probs"][1:],
            "train_acc": result["train_acc"],
            "test_acc": result["test_acc"],
            "mc_test_acc": mc["test_acc"],
            "nll": report["weight scaling"]["nll"],
            "mc_nll": mc["nll"],
            "keep_curve": result["keep_curve"],
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps({"grid": rows, "concrete": concrete}, indent=1))
    plot(rows, args.out / "sweep.png")
    print("\n| hidden keep prob | train acc | test acc (weight scaling) | test acc (MC) | NLL | NLL (MC) |")
    print("|---|---|---|---|---|---|")
    for keep_prob in args.keep_probs:
        group = [r for r in rows if r["keep_prob"] == keep_prob]
        cells = [np.mean([r[f] for r in group]) for f in ("train_acc", "test_acc", "mc_test_acc", "nll", "mc_nll")]
        print(f"| {keep_prob:.1f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    if concrete is not None:
        learned = ", ".join(f"{k:.2f}" for k in concrete["learned_keep_probs"])
        cells = [concrete[f] for f in ("train_acc", "test_acc", "mc_test_acc", "nll", "mc_nll")]
        print(f"| concrete, learned: {learned} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print(f"\nwrote {args.out / 'sweep.json'} and {args.out / 'sweep.png'}")
    return rows


if __name__ == "__main__":
    main()
