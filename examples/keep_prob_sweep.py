"""How much dropout? Test accuracy on MNIST-1D as the hidden keep probability goes from 0.3 to 1.0.

Trains the MLP of ``examples/mnist1d.py`` (same data, optimiser and steps)
once per keep probability on the hidden layers, all in one jitted program
(``mnist1d.train``), and evaluates each network two ways: the inverted-dropout
rule (all units, no scaling) and the Monte Carlo average of dropout networks.
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
import numpy as np


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
    args = parser.parse_args(argv)
    for keep_prob in args.keep_probs:
        if not 0.0 < keep_prob <= 1.0:
            parser.error(f"--keep-probs must be in (0, 1], got {keep_prob}")
    if args.steps < 1 or args.seeds < 1 or args.mc_samples < 1:
        parser.error("--steps, --seeds and --mc-samples must be >= 1")
    return args


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
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "sweep.json").write_text(json.dumps(rows, indent=1))
    plot(rows, args.out / "sweep.png")
    print("\n| hidden keep prob | train acc | test acc (weight scaling) | test acc (MC) | NLL | NLL (MC) |")
    print("|---|---|---|---|---|---|")
    for keep_prob in args.keep_probs:
        group = [r for r in rows if r["keep_prob"] == keep_prob]
        cells = [np.mean([r[f] for r in group]) for f in ("train_acc", "test_acc", "mc_test_acc", "nll", "mc_nll")]
        print(f"| {keep_prob:.1f} | " + " | ".join(f"{c:.3f}" for c in cells) + " |")
    print(f"\nwrote {args.out / 'sweep.json'} and {args.out / 'sweep.png'}")
    return rows


if __name__ == "__main__":
    main()
