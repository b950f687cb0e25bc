"""Dropout against L2 on MNIST-1D: the same MLP trained four ways.

MNIST-1D (Greydanus, 2020) is generated locally by the ``mnist1d`` package
with its default arguments: 4000 training and 1000 test signals of 40 samples,
10 classes. A 40-512-512-10 relu MLP trained with adam overfits it badly; this
script trains it with no regularisation, with L2, with dropout and with both,
and reports train and test accuracy and the generalisation gap. All of them
(configs times seeds) train in one jitted program, with the keep probabilities
and the L2 coefficient as traced values, so that one compilation serves them
all, and with the networks split over one CPU device per core.

Run ``python examples/mnist1d.py`` (needs ``pip install -e ".[examples]"``).
Writes ``<out>/results.json`` and ``<out>/curves.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec as P
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


class Network(NamedTuple):
    """One network to train: its config, its seed and its regularisation."""

    config: str
    seed: int
    keep_probs: tuple[float, ...] | None  # one per layer, None for no dropout
    l2: float


def network(config: str, seed: int, args: argparse.Namespace) -> Network:
    """The network of ``config`` and ``seed``, regularised as the flags say."""
    keep_probs = None
    if "dropout" in config:
        keep_probs = (args.keep_prob_input,) + (args.keep_prob_hidden,) * len(args.hidden)
    return Network(config, seed, keep_probs, args.l2 if "l2" in config else 0.0)


def network_step(optimizer: optax.GradientTransformation) -> Callable[..., jdrop.TrainState]:
    """One training step of one network, with its keep probabilities and L2 as arguments.

    As ``jdrop.make_train_step``: the loss is the batch's mean cross-entropy
    plus ``l2_penalty``, and the masks come from ``fold_in(key, step)``. But
    the keep probabilities and ``l2`` are traced values, not constants, so one
    compiled program serves every config. A traced keep probability of 1.0
    keeps every unit unscaled and an ``l2`` of 0.0 adds exactly 0, so a config
    without them trains the plain network: the steps are ``make_train_step``'s
    up to float rounding (XLA fuses and orders some sums differently).
    """

    def step(
        state: jdrop.TrainState, x: jax.Array, y: jax.Array, key: jax.Array, keep_probs: jax.Array, l2: jax.Array
    ) -> jdrop.TrainState:
        step_key = jax.random.fold_in(key, state.step)

        def loss_fn(params: jdrop.Params) -> jax.Array:
            logits = jdrop.mlp_apply(params, x, key=step_key, keep_probs=tuple(keep_probs))
            cross_entropy = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
            return cross_entropy + jdrop.l2_penalty(params, l2, y.shape[0])  # type: ignore[arg-type]

        grads = jax.grad(loss_fn)(state.params)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        return jdrop.TrainState(optax.apply_updates(state.params, updates), opt_state, state.step + 1)

    return step


def use_every_core() -> None:
    """One JAX CPU device per core, for ``train`` to keep busy; unless devices were chosen or JAX has started."""
    if jax.config.jax_num_cpu_devices < 0 and "host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
        with contextlib.suppress(RuntimeError):  # JAX has started (under pytest, say): keep its devices
            jax.config.update("jax_num_cpu_devices", os.cpu_count() or 1)


def train(
    networks: Sequence[Network], data: dict[str, np.ndarray], args: argparse.Namespace
) -> list[dict[str, object]]:
    """Trains all ``networks`` in one jitted program; returns each one's final accuracies and accuracy curves.

    The networks are split over the devices, and one program, compiled once,
    trains each device's share through a chunk of steps, one network after
    another, and evaluates them. Each network keeps its own batches and
    dropout key, both from its seed.
    """
    optimizer = optax.adam(args.lr)
    step = network_step(optimizer)
    sizes = (data["x"].shape[1], *args.hidden, 10)
    no_dropout = (1.0,) * (len(sizes) - 1)
    keep_probs = jnp.asarray([n.keep_probs or no_dropout for n in networks], jnp.float32)
    l2 = jnp.asarray([n.l2 for n in networks], jnp.float32)
    init_keys, dropout_keys = zip(*(jax.random.split(jax.random.key(n.seed)) for n in networks), strict=True)
    params = jax.tree.map(lambda *p: jnp.stack(p), *(jdrop.mlp_init(key, sizes) for key in init_keys))
    states = jax.vmap(lambda p: jdrop.init_train_state(p, optimizer))(params)
    by_seed = {
        seed: batch_indices(seed, len(data["x"]), args.batch_size, args.steps) for seed in {n.seed for n in networks}
    }
    indices = np.stack([by_seed[n.seed] for n in networks])  # (networks, steps, batch)

    # Each device (one per core, see use_every_core) trains its share of the
    # networks, one network after another (lax.map), and the shares run side by
    # side: every core runs whole matmuls of its own. One device splitting each
    # small matmul over the cores measured 10% slower; vmap over all networks 20%
    # slower, presumably as eight networks' weights and adam state (37 MB)
    # overflow the cache. The number of devices used divides the number of networks.
    devices = jax.devices()[: math.gcd(len(networks), jax.device_count())]
    mesh = jax.sharding.Mesh(np.array(devices), ("networks",))
    split, whole = P("networks"), P()  # the networks' arrays are split over the devices, the data sets copied
    keys = jnp.stack(dropout_keys)
    arrays = {name: jnp.asarray(value) for name, value in data.items()}

    def train_share(
        states: jdrop.TrainState,
        indices: jax.Array,
        keys: jax.Array,
        keep_probs: jax.Array,
        l2: jax.Array,
        arrays: dict[str, jax.Array],
    ) -> tuple[jdrop.TrainState, dict[str, jax.Array]]:
        def train_network(
            network: tuple[jdrop.TrainState, jax.Array, jax.Array, jax.Array, jax.Array],
        ) -> tuple[jdrop.TrainState, dict[str, jax.Array]]:
            state, indices, key, keep_probs, l2 = network

            # A scan over the chunk's steps: no Python dispatch per step.
            def body(state: jdrop.TrainState, batch_idx: jax.Array) -> tuple[jdrop.TrainState, None]:
                x, y = arrays["x"][batch_idx], arrays["y"][batch_idx]
                return step(state, x, y, key, keep_probs, l2), None

            state, _ = jax.lax.scan(body, state, indices)
            test = jdrop.evaluate(state.params, arrays["x_test"], arrays["y_test"])
            train_acc = jdrop.evaluate(state.params, arrays["x"], arrays["y"])["accuracy"]
            return state, {"train_acc": train_acc, "test_acc": test["accuracy"], "test_ce": test["cross_entropy"]}

        return jax.lax.map(train_network, (states, indices, keys, keep_probs, l2))

    # Everything is an argument, not a closure: jit would bake closed-over arrays into the program.
    run_chunk = jax.jit(jax.shard_map(train_share, mesh=mesh, in_specs=(split,) * 5 + (whole,), out_specs=split))

    curves: list[dict[str, list[float]]] = [{"step": [], "train_acc": [], "test_acc": []} for _ in networks]
    start = time.perf_counter()
    # One bar per network, all advancing together; closed in order, so that they are printed in order.
    bars = [
        tqdm(total=args.steps, desc=f"{n.config:>10} seed {n.seed}", position=i, leave=True)
        for i, n in enumerate(networks)
    ]
    try:
        for first in range(0, args.steps, args.eval_every):
            chunk = indices[:, first : first + args.eval_every]
            states, metrics = run_chunk(states, chunk, keys, keep_probs, l2, arrays)
            metrics = jax.device_get(metrics)
            for i, (curve, bar) in enumerate(zip(curves, bars, strict=True)):
                curve["step"].append(first + chunk.shape[1])
                curve["train_acc"].append(float(metrics["train_acc"][i]))
                curve["test_acc"].append(float(metrics["test_acc"][i]))
                bar.update(chunk.shape[1])
                bar.set_postfix(train=f"{curve['train_acc'][-1]:.3f}", test=f"{curve['test_acc'][-1]:.3f}")
    finally:
        for bar in bars:
            bar.close()
    seconds = time.perf_counter() - start  # of all the networks: they train together
    params = jax.device_get(states.params)  # from every device to the host
    return [
        {
            "config": n.config,
            "seed": n.seed,
            "train_acc": curve["train_acc"][-1],
            "test_acc": curve["test_acc"][-1],
            "gap": curve["train_acc"][-1] - curve["test_acc"][-1],
            "test_cross_entropy": float(metrics["test_ce"][i]),
            "keep_probs": list(n.keep_probs) if n.keep_probs else None,
            "l2": n.l2,
            "steps": args.steps,
            "seconds": seconds,
            "curve": curve,
            "params": jax.tree.map(lambda a, i=i: jnp.asarray(a[i]), params),  # not written to results.json
        }
        for i, (n, curve) in enumerate(zip(networks, curves, strict=True))
    ]


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
    mc = jdrop.mc_predict(params, x, key=key, keep_probs=keep_probs, num_samples=num_samples)
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
    use_every_core()
    data = load_mnist1d()
    print(
        f"MNIST-1D: {len(data['x'])} train / {len(data['x_test'])} test, {data['x'].shape[1]} features; "
        f"JAX {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs, {jax.device_count()} devices"
    )
    results = train([network(config, seed, args) for config in args.configs for seed in range(args.seeds)], data, args)
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
