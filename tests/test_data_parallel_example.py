"""Runs examples/data_parallel.py: jax.distributed over local processes, checkpoints, kill and resume.

Each run is a subprocess in its own process group, killed with its workers on
timeout or failure; the example picks a free port for its coordinator."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

# Multi-process runs of the example (subprocesses): in the slow suite, `pytest -m slow`.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "data_parallel.py"
SMALL = ["--hidden", "64", "64", "--batch-size", "64", "--chunk", "50", "--checkpoint-every", "100"]


def _env():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["JAX_PLATFORMS"] = "cpu"
    return env


def start(args):
    return subprocess.Popen(
        [sys.executable, str(EXAMPLE), *map(str, args)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: the workers die with it
    )


def stop(process):
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    return process.communicate()


def run(args, timeout=120):
    process = start(args)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        stop(process)
    return process.returncode, stdout, stderr


def params(out):
    with np.load(out / "params.npz") as saved:
        return {name: saved[name] for name in saved.files}


def assert_same(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for name in a:
        if atol:
            np.testing.assert_allclose(a[name], b[name], rtol=0, atol=atol, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """200 steps on 2 processes x 2 devices, with checkpoints at steps 100 and 200."""
    root = tmp_path_factory.mktemp("two_processes")
    outputs = ["--checkpoint-dir", root / "checkpoints", "--out", root / "out"]
    code, stdout, stderr = run(["--processes", 2, "--devices-per-process", 2, "--steps", 200, *SMALL, *outputs])
    assert code == 0, stderr[-3000:]
    assert "2 process(es), 4 device(s)" in stdout
    return root


def test_two_processes_reach_the_parameters_of_one(two_processes, tmp_path):
    code, _, stderr = run(["--processes", 1, "--steps", 200, *SMALL, "--out", tmp_path])
    assert code == 0, stderr[-3000:]
    # Only the gradient all-reduce's summation order differs.
    assert_same(params(tmp_path), params(two_processes / "out"), atol=1e-6)


def test_two_processes_resume_bit_identically(two_processes, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(two_processes / "checkpoints", checkpoints)
    shutil.rmtree(checkpoints / "200")  # as if stopped after step 100
    code, stdout, stderr = run(
        ["--processes", 2, "--steps", 200, *SMALL, "--checkpoint-dir", checkpoints, "--resume", "--out", tmp_path]
    )
    assert code == 0, stderr[-3000:]
    assert "at step 100" in stdout
    assert_same(params(tmp_path), params(two_processes / "out"))


def test_a_killed_run_resumes_to_the_same_parameters(tmp_path):
    args = ["--processes", 1, "--steps", 1000, "--hidden", 256, 256, "--batch-size", 100]
    args += ["--chunk", 50, "--checkpoint-every", 100]
    code, _, stderr = run([*args, "--out", tmp_path / "straight"])
    assert code == 0, stderr[-3000:]

    checkpoints = tmp_path / "checkpoints"
    process = start([*args, "--checkpoint-dir", checkpoints, "--out", tmp_path / "killed"])
    try:
        deadline = time.monotonic() + 120
        while not (checkpoints / "200").is_dir():  # orbax renames a finished checkpoint into place
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.01)
    finally:
        stop(process)
    assert process.returncode == -signal.SIGKILL, "the run finished before the kill: make it longer"
    assert not (tmp_path / "killed").exists()

    code, stdout, stderr = run([*args, "--checkpoint-dir", checkpoints, "--resume", "--out", tmp_path / "resumed"])
    assert code == 0, stderr[-3000:]
    assert "resumed from" in stdout
    assert_same(params(tmp_path / "resumed"), params(tmp_path / "straight"))


def test_a_checkpoint_of_another_model_is_refused(two_processes, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(two_processes / "checkpoints", checkpoints)
    other_model = ["--processes", 1, "--steps", 300, *SMALL[3:], "--hidden", 32, 32]
    code, _, stderr = run([*other_model, "--checkpoint-dir", checkpoints, "--resume", "--out", tmp_path])
    assert code == 2
    assert "written for another setup (layer_sizes: saved [40, 64, 64, 10], now [40, 32, 32, 10])" in stderr
    assert not (tmp_path / "params.npz").exists()


def test_a_corrupt_checkpoint_is_refused(two_processes, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(two_processes / "checkpoints", checkpoints)
    for path in (checkpoints / "200" / "state").rglob("*"):
        if path.is_file() and "ocdbt.process_" in str(path):
            path.write_bytes(b"not a checkpoint")
    code, _, stderr = run(
        ["--processes", 1, "--steps", 300, *SMALL, "--checkpoint-dir", checkpoints, "--resume", "--out", tmp_path]
    )
    assert code == 2
    assert "checkpoint" in stderr and "it may be corrupt. Not resuming." in stderr
    assert not (tmp_path / "params.npz").exists()
