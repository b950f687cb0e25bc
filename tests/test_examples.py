"""Runs the MNIST-1D examples for a few steps, as scripts, as a user runs them: the main job must keep working.

Each script runs in a subprocess from its own path, so its folder is first on
sys.path, as for a user: that is how it finds ``mnist1d_data``, and where a
file named like a package would shadow it. The subprocesses run with JAX's
key-reuse checker, as the rest of the suite does. Helpers are tested in this
process, imported with the examples' folder on sys.path.
"""

import ast
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jdrop

# Short runs of the examples, end to end: in the slow suite, `pytest -m slow`.
pytestmark = pytest.mark.slow

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name, *args, env=None):
    """Runs ``examples/<name>.py`` with ``args`` as a script on the CPU; returns its stdout."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DEBUG_KEY_REUSE": "true", **(env or {})}
    command = [sys.executable, str(EXAMPLES / f"{name}.py"), *map(str, args)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def import_example(name):
    """Imports ``examples/<name>.py`` as the module ``name``, finding its imports as the script does."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


@pytest.fixture(scope="module")
def study():
    return import_example("mnist1d_study")


@pytest.fixture(scope="module")
def data():
    return import_example("mnist1d_data").load_mnist1d()


def test_study_short_run_writes_results_and_figures(tmp_path):
    stdout = run_example("mnist1d_study", "--steps", 60, "--seeds", 1, "--eval-every", 30, "--out", tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["config"] for r in saved] == ["none", "l2", "dropout", "dropout+l2"]
    for row in saved:
        assert {"config", "seed", "train_acc", "test_acc", "gap", "test_cross_entropy"} <= set(row)
        assert 0.0 <= row["test_acc"] <= 1.0 and row["curve"]["test_acc"][-1] == row["test_acc"]
        assert row["curve"]["step"] == [30, 60]
    assert [r["keep_probs"] for r in saved] == [None, None, [1.0, 0.5, 0.5], [1.0, 0.5, 0.5]]
    assert [r["l2"] for r in saved] == [0.0, 0.1, 0.0, 0.1]
    for picture in ("curves.png", "reliability.png"):
        assert (tmp_path / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (report,) = json.loads((tmp_path / "uncertainty.json").read_text())
    assert set(report) == {"weight scaling", "MC dropout, 64 samples"}
    for values in report.values():
        assert 0.0 <= values["ece"] <= 1.0 and values["nll"] > 0
        assert sum(values["counts"]) == 1000
    assert "mutual_information_wrong" in report["MC dropout, 64 samples"]
    assert "| dropout | " in stdout and "| MC dropout, 64 samples | " in stdout


@pytest.mark.standard_promotion  # optax.adam
def test_study_trains_each_seed_as_make_train_step_alone(study, data):
    # The seeds train side by side (vmap) in chunks (scan); seed 1 must be
    # exactly the network that a plain loop of jdrop.make_train_step trains
    # from jax.random.key(1), on seed 1's batches, up to float rounding.
    args = study.parse_args(["--steps", "20", "--eval-every", "10", "--hidden", "32", "32", "--seeds", "2"])
    results = study.train_config("dropout+l2", data, args)
    assert [r["seed"] for r in results] == [0, 1] and results[1]["curve"]["step"] == [10, 20]

    optimizer = optax.adam(args.lr)
    step = jdrop.make_train_step(optimizer, keep_probs=(1.0, 0.5, 0.5), l2=0.1)
    init_key, dropout_key = jax.random.split(jax.random.key(1))
    state = jdrop.init_train_state(jdrop.mlp_init(init_key, (40, 32, 32, 10)), optimizer)
    batches = import_example("mnist1d_data").batch_indices(1, 4000, 100, 20)
    for batch in batches:
        state, _ = step(state, data["x"][batch], data["y"][batch], key=dropout_key)
    for together, alone in zip(jax.tree.leaves(results[1]["params"]), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_allclose(together, alone, rtol=0, atol=1e-6)
    test = jdrop.evaluate(state.params, data["x_test"], data["y_test"])
    assert results[1]["test_acc"] == pytest.approx(float(test["accuracy"]), abs=1e-3)  # 1 signal in 1000
    # The seeds are different networks: different weights, batches and masks.
    assert not np.allclose(results[0]["params"][0]["w"], results[1]["params"][0]["w"])


def test_data_is_mnist1d_with_its_default_split(data):
    assert data["x"].shape == (4000, 40) and data["x_test"].shape == (1000, 40)
    assert data["x"].dtype == np.float32 and data["y"].dtype == np.int32
    assert set(np.unique(data["y"])) == set(range(10))


def test_batches_visit_every_example_once_per_epoch():
    indices = import_example("mnist1d_data").batch_indices(seed=0, num_examples=50, batch_size=10, steps=12)
    assert indices.shape == (12, 10)
    for epoch in range(2):
        assert sorted(indices[5 * epoch : 5 * epoch + 5].ravel()) == list(range(50))


def test_study_bad_flags_are_rejected(study):
    bad = (["--steps", "0"], ["--keep-prob-hidden", "0"], ["--keep-prob-input", "1.5"], ["--l2", "-1"])
    for argv in (*bad, ["--batch-size", "4001"], ["--hidden", "0"], ["--mc-samples", "0"]):
        with pytest.raises(SystemExit):
            study.parse_args(argv)


def test_calibration_error_by_hand(study):
    labels = np.array([0, 1, 1, 0])
    # Confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 0.6 (right): two bins.
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    result = study.calibration(probs, labels, bins=10)
    # Bin of 0.9: accuracy 1/2, confidence 0.9; bin of 0.6: accuracy 1, confidence 0.6.
    assert abs(result["ece"] - (0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6))) < 1e-12
    confident = study.calibration(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    assert confident["ece"] == 0.0


def test_examples_share_code_only_through_mnist1d_data():
    # No example loads another by path (importlib) or edits sys.path; the one
    # example module any example imports is mnist1d_data, and no example file
    # is named like a package it imports.
    names = {path.stem for path in EXAMPLES.glob("*.py")}
    assert "mnist1d" not in names
    for path in EXAMPLES.glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module.split(".")[0])
        assert "importlib" not in imported and "sys.path" not in path.read_text(), path.name
        assert imported & names <= {"mnist1d_data"}, path.name


def test_keep_prob_sweep_runs(tmp_path):
    args = ("--keep-probs", 0.5, 1.0, "--steps", 40, "--mc-samples", 4, "--out", tmp_path)
    stdout = run_example("keep_prob_sweep", *args)
    written = json.loads((tmp_path / "sweep.json").read_text())
    rows = written["grid"]
    assert [row["keep_prob"] for row in rows] == [0.5, 1.0]
    for row in rows:
        assert all(0 <= row[f] <= 1 for f in ("train_acc", "test_acc", "mc_test_acc")) and row["nll"] > 0
    # Without dropout the MC average is the deterministic network.
    assert rows[1]["mc_test_acc"] == pytest.approx(rows[1]["test_acc"], abs=1e-6)
    assert rows[1]["mc_nll"] == pytest.approx(rows[1]["nll"], rel=1e-4)
    concrete = written["concrete"]  # the learned keep probabilities start at 0.9 and move
    assert len(concrete["learned_keep_probs"]) == 2 and all(0 < k < 1 for k in concrete["learned_keep_probs"])
    assert concrete["keep_curve"][0] != concrete["keep_curve"][-1] and 0 <= concrete["test_acc"] <= 1
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0.5 | " in stdout and "| concrete, learned " in stdout
    sweep = import_example("keep_prob_sweep")
    for argv in (["--keep-probs", "0"], ["--concrete-length-scale", "0"], ["--steps", "0"]):
        with pytest.raises(SystemExit):
            sweep.parse_args(argv)


def test_cnn_short_run_learns_and_writes_results(tmp_path):
    stdout = run_example("mnist1d_cnn", "--steps", 500, "--seeds", 1, "--eval-every", 250, "--out", tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["config"], r["seed"]) for r in saved] == [("none", 0), ("dropout", 0)]
    none, dropout = saved
    assert none["spatial_rate"] == none["rate"] == 0.0 and (dropout["spatial_rate"], dropout["rate"]) == (0.1, 0.5)
    for row in saved:
        assert row["curve"]["step"] == [250, 500]
        assert row["curve"]["test_acc"][-1] == row["test_acc"]
        for value in (*row["curve"]["train_acc"], *row["curve"]["test_acc"]):
            assert 0.0 <= value <= 1.0
        # 500 steps reach test accuracy 0.96-0.97 without dropout and 0.91-0.95
        # with it (seeds 0-2, measured); chance is 0.1, and the dropout CNN
        # with dropout on its logits as well reaches only 0.77-0.81.
        assert row["test_acc"] > 0.85 and row["train_acc"] > 0.85
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| none |" in stdout and "| dropout |" in stdout


@pytest.fixture(scope="module")
def cnn_example():
    return import_example("mnist1d_cnn")


def test_cnn_spatial_dropout_drops_whole_channels(cnn_example):
    from flax import nnx

    model = cnn_example.CNN([8, 8], [1, 2], spatial_rate=0.5, rate=0.5, rngs=nnx.Rngs(params=0))
    h = model.spatial_dropout(jnp.ones((4, 40, 8)), rngs=nnx.Rngs(dropout=1))
    # One mask value per (example, channel), shared along the length axis.
    assert jnp.all(h == h[:, :1, :]) and set(np.unique(np.asarray(h)).tolist()) == {0.0, 2.0}
    x = jnp.ones((4, 40))
    evaluation = nnx.view(model, deterministic=True)
    assert jnp.array_equal(evaluation(x), evaluation(x))
    assert not jnp.array_equal(model(x, rngs=nnx.Rngs(dropout=1)), model(x, rngs=nnx.Rngs(dropout=2)))


def test_cnn_bad_flags_are_rejected(cnn_example):
    for argv in (["--rate", "1"], ["--spatial-rate", "-0.1"], ["--channels", "8", "8"], ["--lr-none", "0"]):
        with pytest.raises(SystemExit):
            cnn_example.parse_args(argv)
