"""Runs examples/mnist1d.py for a few steps: the main job must keep working."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mnist1d.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("mnist1d_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.standard_promotion  # the example trains with optax.adam
def test_short_run_writes_results_and_curves(example, tmp_path):
    results = example.main(["--steps", "60", "--seeds", "1", "--eval-every", "30", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"] for r in saved] == ["none", "l2", "dropout", "dropout+l2"]
    for row in saved:
        assert {"config", "seed", "train_acc", "test_acc", "gap"} <= set(row)
        assert 0.0 <= row["test_acc"] <= 1.0
        assert row["curve"]["step"] == [30, 60]
    assert saved[2]["keep_probs"] == [1.0, 0.5, 0.5] and saved[3]["l2"] > 0
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dropout |" in example.summary_table(results)


def test_data_is_mnist1d_with_its_default_split(example):
    data = example.load_mnist1d()
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    assert set(np.unique(data["y"])) == set(range(10))


def test_batches_visit_every_example_once_per_epoch(example):
    indices = example.batch_indices(seed=0, num_examples=50, batch_size=10, steps=12)
    assert indices.shape == (12, 10)
    for epoch in range(2):
        assert sorted(indices[5 * epoch : 5 * epoch + 5].ravel()) == list(range(50))


def test_bad_flags_are_rejected(example):
    for argv in (["--steps", "0"], ["--keep-prob-hidden", "0"], ["--keep-prob-input", "1.5"], ["--l2", "-1"]):
        with pytest.raises(SystemExit):
            example.parse_args(argv)
