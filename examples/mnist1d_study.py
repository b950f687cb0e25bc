"""Dropout against L2 on MNIST-1D, and weight scaling against Monte Carlo averaging.

A 40-512-512-10 relu MLP trained with adam overfits MNIST-1D (Greydanus, 2020;
4000 training and 1000 test signals of 40 samples, 10 classes). This trains it
four ways (no regularisation, L2, dropout, both; ``--seeds`` networks each)
with ``jdrop.make_train_step``, the seeds side by side (``jax.vmap``) in jitted
``lax.scan`` chunks of ``--eval-every`` steps, and reports train and test
accuracy. Then it scores each dropout network by weight scaling (all units,
one pass) and by Monte Carlo dropout (``jdrop.mc_predict``): test accuracy,
NLL, calibration, and the entropy of right and wrong answers. It writes
``results.json``, ``curves.png``, ``uncertainty.json`` and ``reliability.png``
to ``--out``. Run ``python examples/mnist1d_study.py`` (``pip install -e ".[examples]"``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from matplotlib.figure import Figure  # figures for files, with no window and no pyplot state
from mnist1d_data import batch_indices, load_mnist1d
from tqdm import tqdm

import jdrop

CONFIGS = ("none", "l2", "dropout", "dropout+l2")


def train_config(config: str, data: dict[str, np.ndarray], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Trains ``args.seeds`` networks of one config side by side; one result per seed.

    Seed s gives the initial weights, batches and dropout key in every config: only the regularisation differs.
    """
    keep_probs = (args.keep_prob_input, *[args.keep_prob_hidden] * len(args.hidden)) if "dropout" in config else None
    l2 = args.l2 if "l2" in config else 0.0
    optimizer = optax.adam(args.lr)
    train_step = jdrop.make_train_step(optimizer, keep_probs=keep_probs, l2=l2)
    sizes = (data["x"].shape[1], *args.hidden, 10)

    def init(seed: jax.Array) -> tuple[jdrop.TrainState, jax.Array]:
        init_key, dropout_key = jax.random.split(jax.random.key(seed))
        return jdrop.init_train_state(jdrop.mlp_init(init_key, sizes), optimizer), dropout_key

    states, dropout_keys = jax.vmap(init)(jnp.arange(args.seeds))  # seed s as jax.random.key(s) would give it
    indices = np.stack([batch_indices(s, len(data["x"]), args.batch_size, args.steps) for s in range(args.seeds)])
    arrays = {name: jnp.asarray(value) for name, value in data.items()}

    @jax.jit  # the data are an argument, not a closure: jit would copy closed-over arrays into the program
    def train_chunk(states: Any, keys: jax.Array, indices: jax.Array, arrays: dict[str, jax.Array]) -> Any:
        def train_network(state: jdrop.TrainState, key: jax.Array, indices: jax.Array) -> Any:
            def body(state: jdrop.TrainState, batch: jax.Array) -> tuple[jdrop.TrainState, None]:
                return train_step(state, arrays["x"][batch], arrays["y"][batch], key=key)[0], None

            state, _ = jax.lax.scan(body, state, indices)  # the chunk's steps: no Python dispatch per step
            test = jdrop.evaluate(state.params, arrays["x_test"], arrays["y_test"])
            train_acc = jdrop.evaluate(state.params, arrays["x"], arrays["y"])["accuracy"]
            return state, (train_acc, test["accuracy"], test["cross_entropy"])

        return jax.vmap(train_network)(states, keys, indices)

    history = []  # at each evaluation: the step, and the train and test accuracies of all seeds
    start = time.perf_counter()
    with tqdm(total=args.steps, desc=f"{config:>10}, {args.seeds} seeds") as bar:
        for first in range(0, args.steps, args.eval_every):
            chunk = indices[:, first : first + args.eval_every]
            states, metrics = train_chunk(states, dropout_keys, chunk, arrays)
            train, test, test_ce = jax.device_get(metrics)
            history.append((first + chunk.shape[1], train, test))
            bar.set_postfix(train=f"{train.mean():.3f}", test=f"{test.mean():.3f}", refresh=False)
            bar.update(chunk.shape[1])
    seconds = time.perf_counter() - start  # of all the seeds: they train together
    steps, train_acc, test_acc = zip(*history, strict=True)
    train_acc, test_acc = np.array(train_acc).T.tolist(), np.array(test_acc).T.tolist()  # [seed][evaluation]
    return [
        {
            "config": config,
            "seed": seed,
            "train_acc": train_acc[seed][-1],
            "test_acc": test_acc[seed][-1],
            "gap": train_acc[seed][-1] - test_acc[seed][-1],
            "test_cross_entropy": float(test_ce[seed]),
            "keep_probs": list(keep_probs) if keep_probs else None,
            "l2": l2,
            "steps": args.steps,
            "seconds": seconds,
            "curve": {"step": list(steps), "train_acc": train_acc[seed], "test_acc": test_acc[seed]},
            "params": jax.tree.map(lambda a, seed=seed: a[seed], states.params),  # not written to results.json
        }
        for seed in range(args.seeds)
    ]


def calibration(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """Expected calibration error over equal-width confidence bins, and the bins."""
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    accuracy = np.bincount(which, weights=correct, minlength=bins) / np.maximum(counts, 1)
    mean_confidence = np.bincount(which, weights=confidence, minlength=bins) / np.maximum(counts, 1)
    ece = float(np.sum(counts / len(labels) * np.abs(accuracy - mean_confidence)))
    return {"ece": ece, "counts": counts, "accuracy": accuracy, "confidence": mean_confidence, "edges": edges}


def uncertainty(
    params: jdrop.Params, keep_probs: Sequence[float], data: dict[str, np.ndarray], samples: int, key: jax.Array
) -> dict[str, dict[str, Any]]:
    """Weight scaling against MC dropout on the test set: accuracy, NLL, ECE and entropies."""
    x, labels = jnp.asarray(data["x_test"]), data["y_test"]
    mc = jdrop.mc_predict(params, x, key=key, num_samples=samples, keep_probs=keep_probs)
    weight_scaling = jax.nn.softmax(jdrop.mlp_apply(params, x, deterministic=True))
    mc_name, report = f"MC dropout, {samples} samples", {}
    for name, probs in (("weight scaling", weight_scaling), (mc_name, mc.mean_probs)):
        probs = np.asarray(probs, np.float64)
        correct = probs.argmax(axis=1) == labels
        entropy = -np.sum(probs * np.log(np.maximum(probs, 1e-30)), axis=1)
        report[name] = {
            "test_acc": float(correct.mean()),
            "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-30)))),
            **calibration(probs, labels),
            "entropy_correct": float(entropy[correct].mean()),
            "entropy_wrong": float(entropy[~correct].mean()),
        }
    information = np.asarray(mc.mutual_information)  # the part of the MC uncertainty that is disagreement
    report[mc_name]["mutual_information_correct"] = float(information[correct].mean())  # correct: the MC's
    report[mc_name]["mutual_information_wrong"] = float(information[~correct].mean())
    return report


def markdown(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def summary_table(results: Sequence[dict[str, Any]]) -> str:
    """Per config: train and test accuracy and their gap, mean ± standard deviation over seeds."""

    def cell(values: list[float]) -> str:
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else "")

    groups = [(c, [r for r in results if r["config"] == c]) for c in CONFIGS]
    rows = [(c, *(cell([r[f] for r in rs]) for f in ("train_acc", "test_acc", "gap")), len(rs)) for c, rs in groups]
    return markdown(("config", "train acc", "test acc", "gap (train - test)", "seeds"), [r for r in rows if r[-1]])


def uncertainty_table(reports: Sequence[dict[str, dict[str, Any]]]) -> str:
    """Each evaluation's metrics, mean over seeds."""
    fields = ("test_acc", "nll", "ece", "entropy_correct", "entropy_wrong")
    rows = [(name, *(f"{np.mean([r[name][f] for r in reports]):.3f}" for f in fields)) for name in reports[0]]
    header = ("evaluation of the dropout MLP", "test acc", "NLL", "ECE", "entropy, correct", "entropy, wrong")
    return markdown(header, rows)


def plot_curves(results: Sequence[dict[str, Any]], path: Path) -> None:
    fig = Figure(figsize=(11, 4), layout="tight")
    axes = fig.subplots(1, 2, sharey=True)
    for config, color in zip(CONFIGS, ("tab:gray", "tab:blue", "tab:red", "tab:purple"), strict=True):
        if rows := [r for r in results if r["config"] == config]:
            for ax, field in zip(axes, ("train_acc", "test_acc"), strict=True):
                values = np.mean([r["curve"][field] for r in rows], axis=0)
                ax.plot(rows[0]["curve"]["step"], values, label=config, color=color)
    for ax, title in zip(axes, ("train accuracy", "test accuracy"), strict=True):
        ax.set(title=title, xlabel="step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean over seeds)")
    axes[1].legend()
    fig.suptitle("MNIST-1D, MLP 40-512-512-10: no regularisation vs L2 vs dropout")
    fig.savefig(path, dpi=120)


def plot_reliability(report: dict[str, dict[str, Any]], path: Path) -> None:
    """Reliability diagrams: accuracy against confidence, per confidence bin, one panel per evaluation."""
    fig = Figure(figsize=(5 * len(report), 4.4), layout="tight")
    axes = fig.subplots(1, len(report), sharey=True)
    for ax, (name, values) in zip(axes, report.items(), strict=True):
        edges, shown = values["edges"], values["counts"] > 0
        centres, width = (edges[:-1] + edges[1:]) / 2, 0.9 * (edges[1] - edges[0])
        ax.bar(centres[shown], values["accuracy"][shown], width, edgecolor="black", label="accuracy in bin")
        ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
        ax.set(title=f"{name}\nECE {values['ece']:.3f}, NLL {values['nll']:.3f}", xlim=(0, 1), ylim=(0, 1))
        ax.set_xlabel("confidence (max probability)")
    axes[0].set_ylabel("accuracy")
    axes[0].legend(loc="upper left")
    fig.savefig(path, dpi=120)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8000, help="training steps per network (default 8000)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per config (default 2)")
    parser.add_argument("--out", type=Path, default=Path("runs/mnist1d_study"), help="output folder")
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
    if args.batch_size > 4000 or min(args.hidden) < 1:
        parser.error("--batch-size must be <= 4000 (the training set) and --hidden widths >= 1")
    for name in ("keep_prob_input", "keep_prob_hidden"):
        if not 0.0 < getattr(args, name) <= 1.0:
            parser.error(f"--{name.replace('_', '-')} must be in (0, 1], got {getattr(args, name)}")
    if not args.lr > 0 or not args.l2 >= 0:
        parser.error("--lr must be > 0 and --l2 >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    data = load_mnist1d()
    print(f"MNIST-1D: {len(data['x'])} train / {len(data['x_test'])} test signals; JAX {jax.__version__}")
    results = [result for config in args.configs for result in train_config(config, data, args)]
    args.out.mkdir(parents=True, exist_ok=True)
    written = [args.out / name for name in ("results.json", "curves.png")]
    written[0].write_text(json.dumps([{k: v for k, v in r.items() if k != "params"} for r in results], indent=1))
    plot_curves(results, written[1])
    print("\n" + summary_table(results))

    # The dropout MLP evaluated two ways: weight scaling against the average of dropout networks.
    if dropout_runs := [r for r in results if r["config"] == "dropout"]:
        reports = [
            uncertainty(r["params"], r["keep_probs"], data, args.mc_samples, jax.random.key(1000 + r["seed"]))
            for r in dropout_runs
        ]
        print("\n" + uncertainty_table(reports))
        listed = [{n: {k: np.asarray(v).tolist() for k, v in m.items()} for n, m in r.items()} for r in reports]
        written += [args.out / name for name in ("uncertainty.json", "reliability.png")]
        written[2].write_text(json.dumps(listed, indent=1))
        plot_reliability(reports[0], written[3])
    print(f"\nwrote {', '.join(map(str, written))}")
    return results


if __name__ == "__main__":
    main()
