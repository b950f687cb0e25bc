"""Data-parallel MNIST-1D training over processes with jax.distributed, with preemption-safe checkpoints.

The batch is split over every device of every process (``jdrop.shard_batch``),
the parameters are replicated (``jdrop.replicate``), and the training step is
the ordinary ``jdrop.make_train_step``: ``jax.jit`` inserts the gradient
all-reduce, and the dropout masks are drawn where the data lives, with no
communication and the same values as on one device.

On one machine (the default launches 2 processes x 2 CPU devices, talking over
127.0.0.1 with gloo CPU collectives):

    python examples/data_parallel.py --processes 2 --steps 2000

On a cluster, start one process per host yourself:

    python examples/data_parallel.py --coordinator HOST0:1234 --num-processes 4 --process-id I

or let ``jax.distributed.initialize()`` detect the cluster (SLURM, Open MPI,
Cloud TPU, Kubernetes JobSet) with ``--auto``.

``--checkpoint-dir DIR --checkpoint-every N`` saves the whole training state
(parameters, optimiser state, step count and the base dropout key) with
orbax-checkpoint; ``--resume`` continues from the newest checkpoint, and a run
killed and resumed ends with exactly the parameters of an uninterrupted run.
Process 0 writes ``<out>/params.npz`` and ``<out>/metrics.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from mnist1d_data import batch_indices, load_mnist1d

import jdrop


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    launch = parser.add_argument_group("processes")
    launch.add_argument(
        "--processes", type=int, default=2, help="local processes to launch on 127.0.0.1 (1: this process alone)"
    )
    launch.add_argument("--devices-per-process", type=int, default=2, help="CPU devices per launched process")
    launch.add_argument("--coordinator", help="HOST:PORT of process 0: run as one process of a cluster")
    launch.add_argument("--num-processes", type=int, help="with --coordinator: processes in the cluster")
    launch.add_argument("--process-id", type=int, help="with --coordinator: this process's index")
    launch.add_argument("--auto", action="store_true", help="jax.distributed.initialize() with cluster detection")
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument("--batch-size", type=int, default=128, help="global batch, a multiple of the device count")
    train.add_argument("--hidden", type=int, nargs="+", default=[512, 512])
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--keep-prob-hidden", type=float, default=0.5)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--chunk", type=int, default=100, help="steps per jitted lax.scan")
    state = parser.add_argument_group("checkpoints and output")
    state.add_argument("--checkpoint-dir", type=Path, help="save the training state here (orbax)")
    state.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints")
    state.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    state.add_argument("--out", type=Path, default=Path("runs/data_parallel"))
    args = parser.parse_args(argv)
    for name in ("processes", "devices_per_process", "steps", "batch_size", "chunk", "checkpoint_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.checkpoint_every % args.chunk:
        parser.error(f"--checkpoint-every ({args.checkpoint_every}) must be a multiple of --chunk ({args.chunk})")
    if not 0.0 < args.keep_prob_hidden <= 1.0:
        parser.error(f"--keep-prob-hidden must be in (0, 1], got {args.keep_prob_hidden}")
    if args.resume and args.checkpoint_dir is None:
        parser.error("--resume needs --checkpoint-dir")
    if (args.coordinator is None) != (args.num_processes is None) or (args.coordinator is None) != (
        args.process_id is None
    ):
        parser.error("--coordinator, --num-processes and --process-id go together")
    return args


# --- Launching local processes ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Runs ``args.processes`` copies of this script as one jax.distributed job on 127.0.0.1."""
    port = _free_port()
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={args.devices_per_process}"
    workers = []
    try:
        for process_id in range(args.processes):
            command = [sys.executable, __file__, *argv, "--coordinator", f"127.0.0.1:{port}"]
            command += ["--num-processes", str(args.processes), "--process-id", str(process_id)]
            workers.append(subprocess.Popen(command, env=env))
        # Wait for all; one failing makes the others hang at the next collective, so stop them.
        codes: dict[int, int] = {}
        while len(codes) < len(workers):
            for index, worker in enumerate(workers):
                if index not in codes and worker.poll() is not None:
                    codes[index] = worker.returncode
                    if worker.returncode != 0:
                        raise RuntimeError(f"process {index} exited with code {worker.returncode}")
            time.sleep(0.05)
        return 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
            worker.wait()


# --- Checkpoints --------------------------------------------------------------------------------


def _config(args: argparse.Namespace, sizes: Sequence[int]) -> dict[str, Any]:
    """What a checkpoint must agree on to be resumed (the step count may grow)."""
    return {
        "layer_sizes": list(sizes),
        "batch_size": args.batch_size,
        "lr": args.lr,
        "keep_prob_hidden": args.keep_prob_hidden,
        "seed": args.seed,
    }


class CheckpointError(Exception):
    """A checkpoint that cannot be resumed: corrupt, incomplete, or from another setup."""


def _first_line(error: Exception, limit: int = 300) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text[:limit]}"


class Checkpoints:
    """Saves and restores ``{"state": TrainState, "key": key data}`` plus the config, with orbax."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.directory = directory.resolve()
        self.config = config
        self.manager = ocp.CheckpointManager(
            self.directory,
            item_names=("state", "config"),
            options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True),
        )

    def save(self, step: int, state: jdrop.TrainState, key_data: jax.Array) -> None:
        ocp = self._ocp
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave({"state": state, "key": key_data}),
                config=ocp.args.JsonSave(self.config),
            ),
        )

    def latest_step(self) -> int | None:
        step = self.manager.latest_step()
        return None if step is None else int(step)

    def restore(self, target: dict[str, Any]) -> dict[str, Any]:
        """Restores the newest checkpoint into arrays shaped and sharded like ``target``.

        Raises:
          CheckpointError: the checkpoint is unreadable (corrupt or incomplete)
            or was written for another model or setup.
        """
        ocp = self._ocp
        step = self.latest_step()
        where = f"checkpoint {self.directory}/{step}"
        try:
            saved_config = self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
        except Exception as error:
            raise CheckpointError(
                f"{where} could not be read ({_first_line(error)}); it may be corrupt. Not resuming."
            ) from error
        different = {
            name: (saved_config.get(name), value)
            for name, value in self.config.items()
            if saved_config.get(name) != value
        }
        if different:
            details = ", ".join(f"{name}: saved {saved!r}, now {now!r}" for name, (saved, now) in different.items())
            raise CheckpointError(f"{where} was written for another setup ({details}). Not resuming.")
        abstract = jax.tree.map(
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=leaf.sharding), target
        )
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
        except Exception as error:
            raise CheckpointError(
                f"{where} could not be restored ({_first_line(error)}); it may be corrupt. Not resuming."
            ) from error
        return dict(restored["state"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


# --- Training -----------------------------------------------------------------------------------


def _local(tree: Any) -> Any:
    """A process-local numpy copy of a replicated global tree."""
    return jax.tree.map(lambda leaf: np.asarray(leaf.addressable_data(0)), tree)


def _run(
    args: argparse.Namespace,
    data: dict[str, np.ndarray],
    order: np.ndarray,
    mesh: jax.sharding.Mesh,
    train_step: Any,
    state: jdrop.TrainState,
    key_data: jax.Array,
    checkpoints: Checkpoints | None,
) -> tuple[jdrop.TrainState, jax.Array, int]:
    """Resumes if asked, then trains in jitted chunks, saving checkpoints."""
    if checkpoints and args.resume:
        if checkpoints.latest_step() is None:
            print(f"no checkpoint in {checkpoints.directory}: starting at step 0", flush=True)
        else:
            restored = checkpoints.restore({"state": state, "key": key_data})
            state, key_data = jdrop.TrainState(*restored["state"]), restored["key"]
            print(f"resumed from {checkpoints.directory} at step {int(_local(state.step))}", flush=True)

    @jax.jit
    def run_chunk(state: jdrop.TrainState, x: jax.Array, y: jax.Array, key_data: jax.Array) -> Any:
        key = jax.random.wrap_key_data(key_data)

        def body(state: jdrop.TrainState, batch: tuple[jax.Array, jax.Array]) -> Any:
            state, metrics = train_step(state, batch[0], batch[1], key=key)
            return state, metrics["loss"]

        return jax.lax.scan(body, state, (x, y))

    start_step = int(_local(state.step))
    losses = []
    for first in range(start_step, args.steps, args.chunk):
        last = min(first + args.chunk, args.steps)
        x, y = jdrop.shard_batch((data["x"][order[first:last]], data["y"][order[first:last]]), mesh, axis=1)
        state, chunk_losses = run_chunk(state, x, y, key_data)
        losses.append(float(np.mean(_local(chunk_losses))))
        if checkpoints and last % args.checkpoint_every == 0:
            checkpoints.save(last, state, key_data)
        if jax.process_index() == 0:
            print(f"step {last}: mean training loss {losses[-1]:.4f}", flush=True)
    return state, key_data, start_step


def train(args: argparse.Namespace) -> dict[str, Any]:
    data = load_mnist1d()  # every process makes the same data set
    mesh = jdrop.data_parallel_mesh()
    if args.batch_size % mesh.size:
        raise ValueError(f"--batch-size {args.batch_size} is not a multiple of the {mesh.size} devices")
    sizes = (data["x"].shape[1], *args.hidden, 10)
    optimizer = optax.adam(args.lr)
    keep_probs = (1.0,) + (args.keep_prob_hidden,) * len(args.hidden)
    train_step = jdrop.make_train_step(optimizer, keep_probs=keep_probs)

    init_key, dropout_key = jax.random.split(jax.random.key(args.seed))
    state = jdrop.replicate(jdrop.init_train_state(jdrop.mlp_init(init_key, sizes), optimizer), mesh)
    key_data = jdrop.replicate(jax.random.key_data(dropout_key), mesh)

    # The batch order is a function of the seed and the step alone, so a
    # resumed run sees exactly the batches the interrupted one would have.
    order = batch_indices(args.seed, len(data["x"]), args.batch_size, args.steps)
    checkpoints = Checkpoints(args.checkpoint_dir, _config(args, sizes)) if args.checkpoint_dir else None
    try:
        state, key_data, start_step = _run(args, data, order, mesh, train_step, state, key_data, checkpoints)
    finally:
        if checkpoints:
            checkpoints.close()
    params = _local(state.params)
    metrics = {
        name: float(value)
        for name, value in jdrop.evaluate(params, jnp.asarray(data["x_test"]), jnp.asarray(data["y_test"])).items()
    }
    metrics.update(steps=args.steps, devices=mesh.size, processes=jax.process_count(), resumed_at=start_step)
    if jax.process_index() == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(args.out / "params.npz", **{f"{i}_{k}": v for i, layer in enumerate(params) for k, v in layer.items()})
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
        print(
            f"{metrics['processes']} process(es), {metrics['devices']} device(s): test accuracy "
            f"{metrics['accuracy']:.3f}; wrote {args.out / 'params.npz'}",
            flush=True,
        )
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.coordinator:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=args.coordinator, num_processes=args.num_processes, process_id=args.process_id
        )
    elif args.auto:
        jax.distributed.initialize()
    elif args.processes > 1:
        return launch(args, argv)
    try:
        train(args)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr, flush=True)
        return 2
    finally:
        if args.coordinator or args.auto:
            with contextlib.suppress(Exception):
                jax.distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
