"""Dropout against L2 on MNIST-1D: the same MLP trained four ways.

MNIST-1D (Greydanus, 2020) is generated locally by the ``mnist1d`` package
with its default arguments: 4000 training and 1000 test signals of 40 samples,
10 classes. A 40-512-512-10 relu MLP trained with adam overfits it badly; this
script trains it with no regularisation, with L2, with dropout and with both,
and reports train and test accuracy and the generalisation gap.

Run ``python examples/mnist1d.py`` (needs ``pip install -e ".[examples]"``).
Writes ``<out>/results.json`` and ``<out>/curves.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

import jdrop

# Run as a script, this file's folder comes first on sys.path, and this file,
# also named mnist1d, would shadow the mnist1d package that makes the data.
if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
    del sys.path[0]

CONFIGS = ("none", "l2", "dropout", "dropout+l2")


def load_mnist1d() -> dict[str, np.ndarray]:
    """Generates MNIST-1D with the package's default arguments (no download)."""
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())
    return {
        "x": data["x"].astype(np.float32),
        "y": data["y"].astype(np.int32),
        "x_test": data["x_test"].astype(np.float32),
        "y_test": data["y_test"].astype(np.int32),
    }


def batch_indices(seed: int, num_examples: int, batch_size: int, steps: int) -> np.ndarray:
    """``(steps, batch_size)`` example indices: a fresh shuffle every epoch."""
    rng = np.random.default_rng(seed)
    per_epoch = num_examples // batch_size
    epochs = -(-steps // per_epoch)
    order = np.concatenate([rng.permutation(num_examples)[: per_epoch * batch_size] for _ in range(epochs)])
    return order[: steps * batch_size].reshape(steps, batch_size)


def train(
    config: str, seed: int, data: dict[str, np.ndarray], args: argparse.Namespace, position: int = 0
) -> dict[str, object]:
    """Trains one MLP; returns final accuracies and the accuracy curves."""
    keep_probs = None
    if "dropout" in config:
        keep_probs = (args.keep_prob_input,) + (args.keep_prob_hidden,) * len(args.hidden)
    l2 = args.l2 if "l2" in config else 0.0
    optimizer = optax.adam(args.lr)
    train_step = jdrop.make_train_step(optimizer, keep_probs=keep_probs, l2=l2)

    @jax.jit
    def run_chunk(state: jdrop.TrainState, x, y, indices, key):  # type: ignore[no-untyped-def]
        # One jitted scan over many steps: no Python dispatch per step.
        def body(state: jdrop.TrainState, batch_idx: jax.Array):  # type: ignore[no-untyped-def]
            state, metrics = train_step(state, x[batch_idx], y[batch_idx], key)
            return state, metrics["loss"]

        return jax.lax.scan(body, state, indices)

    init_key, dropout_key = jax.random.split(jax.random.key(seed))
    params = jdrop.mlp_init(init_key, (data["x"].shape[1], *args.hidden, 10))
    state = jdrop.init_train_state(params, optimizer)
    x, y = jnp.asarray(data["x"]), jnp.asarray(data["y"])
    x_test, y_test = jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])
    indices = batch_indices(seed, x.shape[0], args.batch_size, args.steps)

    curve: dict[str, list[float]] = {"step": [], "train_acc": [], "test_acc": []}
    start = time.perf_counter()
    with tqdm(total=args.steps, desc=f"{config:>10} seed {seed}", position=position, leave=True) as bar:
        for first in range(0, args.steps, args.eval_every):
            chunk = jnp.asarray(indices[first : first + args.eval_every])
            state, _ = run_chunk(state, x, y, chunk, dropout_key)
            train_acc = float(jdrop.evaluate(state.params, x, y)["accuracy"])
            test_acc = float(jdrop.evaluate(state.params, x_test, y_test)["accuracy"])
            curve["step"].append(int(state.step))
            curve["train_acc"].append(train_acc)
            curve["test_acc"].append(test_acc)
            bar.update(len(chunk))
            bar.set_postfix(train=f"{train_acc:.3f}", test=f"{test_acc:.3f}")
    final_test = jdrop.evaluate(state.params, x_test, y_test)
    return {
        "config": config,
        "seed": seed,
        "train_acc": curve["train_acc"][-1],
        "test_acc": curve["test_acc"][-1],
        "gap": curve["train_acc"][-1] - curve["test_acc"][-1],
        "test_cross_entropy": float(final_test["cross_entropy"]),
        "keep_probs": list(keep_probs) if keep_probs else None,
        "l2": l2,
        "steps": args.steps,
        "seconds": time.perf_counter() - start,
        "curve": curve,
        "params": state.params,  # not written to results.json
    }


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, object]:
    """Expected calibration error over equal-width confidence bins, and the bins."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.bincount(which, weights=correct, minlength=bins) / np.maximum(counts, 1)
    mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts / len(labels) * np.abs(accuracy - mean_confidence)))
    return {"ece": ece, "counts": counts, "accuracy": accuracy, "confidence": mean_confidence, "edges": edges}


def evaluate_uncertainty(
    params: jdrop.Params, keep_probs: Sequence[float], data: dict[str, np.ndarray], num_samples: int, key: jax.Array
) -> dict[str, dict[str, object]]:
    """Test accuracy, NLL, ECE and entropies: weight scaling against MC dropout."""
    x, labels = jnp.asarray(data["x_test"]), data["y_test"]
    deterministic = np.asarray(jax.nn.softmax(jdrop.mlp_apply(params, x, deterministic=True)), np.float64)
    mc = jdrop.mc_predict(params, x, key, keep_probs=keep_probs, num_samples=num_samples)
    report = {}
    for name, probs in (("weight scaling", deterministic), (f"MC dropout, {num_samples} samples", None)):
        probs = np.asarray(mc.mean_probs, np.float64) if probs is None else probs
        entropy = -np.sum(np.where(probs > 0, probs * np.log(np.maximum(probs, 1e-30)), 0.0), axis=1)
        correct = probs.argmax(axis=1) == labels
        report[name] = {
            "test_acc": float(correct.mean()),
            "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-30)))),
            **calibration(probs, labels),
            "entropy_correct": float(entropy[correct].mean()),
            "entropy_wrong": float(entropy[~correct].mean()),
        }
    mutual_information = np.asarray(mc.mutual_information)
    mc_correct = np.asarray(mc.mean_probs).argmax(axis=1) == labels
    report[f"MC dropout, {num_samples} samples"]["mutual_information_correct"] = float(
        mutual_information[mc_correct].mean()
    )
    report[f"MC dropout, {num_samples} samples"]["mutual_information_wrong"] = float(
        mutual_information[~mc_correct].mean()
    )
    return report


def uncertainty_table(reports: Sequence[dict[str, dict[str, object]]]) -> str:
    """Mean over seeds of each evaluation's metrics, as Markdown."""
    lines = [
        "| evaluation of the dropout MLP | test acc | NLL | ECE | entropy, correct | entropy, wrong |",
        "|---|---|---|---|---|---|",
    ]
    for name in reports[0]:
        cells = [
            f"{np.mean([float(report[name][field]) for report in reports]):.3f}"  # type: ignore[arg-type]
            for field in ("test_acc", "nll", "ece", "entropy_correct", "entropy_wrong")
        ]
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot_reliability(report: dict[str, dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(report), figsize=(5 * len(report), 4.4), sharey=True)
    for ax, (name, values) in zip(axes, report.items(), strict=True):
        edges = np.asarray(values["edges"])
        counts = np.asarray(values["counts"])
        centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
        shown = counts > 0
        ax.bar(
            centres[shown],
            np.asarray(values["accuracy"])[shown],
            width=width * 0.9,
            color="tab:blue",
            edgecolor="black",
            label="accuracy in bin",
        )
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set_title(f"{name}\nECE {float(values['ece']):.3f}, NLL {float(values['nll']):.3f}")  # type: ignore[arg-type]
        ax.set_xlabel("confidence (max probability)")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def summary_table(results: Sequence[dict[str, object]]) -> str:
    """A Markdown table of mean (and spread over seeds) accuracy per config."""
    lines = [
        "| config | train acc | test acc | gap (train - test) | seeds |",
        "|---|---|---|---|---|",
    ]
    for config in CONFIGS:
        rows = [r for r in results if r["config"] == config]
        if not rows:
            continue
        cells = []
        for field in ("train_acc", "test_acc", "gap"):
            values = np.array([r[field] for r in rows], dtype=float)
            spread = f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else ""
            cells.append(f"{values.mean():.3f}{spread}")
        lines.append(f"| {config} | {' | '.join(cells)} | {len(rows)} |")
    return "\n".join(lines)


def plot_curves(results: Sequence[dict[str, object]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = dict(zip(CONFIGS, ("tab:gray", "tab:blue", "tab:red", "tab:purple"), strict=True))
    for config in CONFIGS:
        rows = [r for r in results if r["config"] == config]
        if not rows:
            continue
        steps = rows[0]["curve"]["step"]  # type: ignore[index]
        for ax, field in zip(axes, ("train_acc", "test_acc"), strict=True):
            values = np.mean([r["curve"][field] for r in rows], axis=0)  # type: ignore[index]
            ax.plot(steps, values, label=config, color=colors[config])
    for ax, title in zip(axes, ("train accuracy", "test accuracy"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean over seeds)")
    axes[1].legend()
    fig.suptitle("MNIST-1D, MLP 40-512-512-10: no regularisation vs L2 vs dropout")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000, help="training steps per run (default 8000)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per config (default 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/mnist1d"), help="output folder")
    parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 512], help="hidden widths")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="adam learning rate")
    parser.add_argument("--l2", type=float, default=0.1, help="lambda of lambda / (2m) * sum ||W||^2")
    parser.add_argument("--keep-prob-input", type=float, default=1.0)
    parser.add_argument("--keep-prob-hidden", type=float, default=0.5)
    parser.add_argument("--eval-every", type=int, default=200, help="steps between evaluations")
    parser.add_argument("--mc-samples", type=int, default=64, help="MC dropout samples for the uncertainty report")
    args = parser.parse_args(argv)
    for name in ("steps", "seeds", "batch_size", "eval_every", "mc_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.batch_size > 4000:
        parser.error(f"--batch-size must be <= 4000 (the training set), got {args.batch_size}")
    for name in ("keep_prob_input", "keep_prob_hidden"):
        if not 0.0 < getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    if not args.lr > 0 or not args.l2 >= 0:
        parser.error("--lr must be > 0 and --l2 >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    args = parse_args(argv)
    data = load_mnist1d()
    print(
        f"MNIST-1D: {len(data['x'])} train / {len(data['x_test'])} test, {data['x'].shape[1]} features; "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs"
    )
    results = [train(config, seed, data, args) for config in args.configs for seed in range(args.seeds)]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps([{k: v for k, v in r.items() if k != "params"} for r in results], indent=1)
    )
    plot_curves(results, args.out / "curves.png")
    print()
    print(summary_table(results))
    written = [args.out / "results.json", args.out / "curves.png"]

    # The dropout MLP evaluated two ways: the inverted-dropout rule (all units,
    # no scaling) against the Monte Carlo average of dropout networks.
    dropout_runs = [r for r in results if r["config"] == "dropout"]
    if dropout_runs:
        reports = [
            evaluate_uncertainty(
                r["params"],
                r["keep_probs"],
                data,
                args.mc_samples,
                jax.random.key(1000 + r["seed"]),  # type: ignore[arg-type]
            )
            for r in dropout_runs
        ]
        print()
        print(uncertainty_table(reports))
        plot_reliability(reports[0], args.out / "reliability.png")
        serialisable = [
            {name: {k: np.asarray(v).tolist() for k, v in values.items()} for name, values in report.items()}
            for report in reports
        ]
        (args.out / "uncertainty.json").write_text(json.dumps(serialisable, indent=1))
        written += [args.out / "uncertainty.json", args.out / "reliability.png"]
    print(f"\nwrote {', '.join(map(str, written))}")
    return results


if __name__ == "__main__":
    main()
