"""Checks that need 8 devices. Run by tests/test_parallel.py in a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8 (the rest of the suite keeps one device);
prints one JSON object. :func:`run_on_host_devices` is how the tests start such subprocesses."""

import json
import os
import subprocess
import sys
from pathlib import Path

COLLECTIVES = ("all-gather", "all-reduce", "collective-permute", "all-to-all", "reduce-scatter")


def run_on_host_devices(args: list[str], devices: int) -> dict:
    """``python *args`` in a subprocess with ``devices`` CPU devices; its last line of output, as JSON.

    The checkout and this folder come first on the path, so the subprocess tests
    this jdrop and can import this module.
    """
    here = Path(__file__).resolve().parent
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(here.parent), str(here), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-5000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def same_mask_and_close(out: object, expected: object) -> bool:
    """Zero exactly where ``expected`` is zero, and elsewhere within 2 float32 ulps of it."""
    import numpy as np  # imported in main's order: jax is configured first

    out, expected = np.asarray(out), np.asarray(expected)
    spacing = np.spacing(np.abs(expected).astype(np.float32))
    return bool(np.array_equal(out == 0, expected == 0) and np.all(np.abs(out - expected) <= 2 * spacing))


def close(out: object, expected: object) -> bool:
    """Within 1e-6 (relative and absolute): far below the O(1) change that other noise would make.

    For the continuous variants, whose last bit may change with the per-device
    shapes (XLA fuses ``a * x + b`` into a multiply-add or not), and near 0 an
    ulp-based test fails on such cancellation.
    """
    import numpy as np

    return bool(np.allclose(np.asarray(out), np.asarray(expected), rtol=1e-6, atol=1e-6))


def main() -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import jdrop

    # The key-reuse checker, as in the rest of the suite (conftest.py). The
    # comparisons below reuse `key` on purpose, so every call that consumes it
    # after the first gets a clone (the training steps fold the step count
    # into it, which consumes nothing).
    jax.config.update("jax_debug_key_reuse", True)
    assert jax.device_count() == 8, jax.devices()
    mesh = jax.make_mesh((4, 2), ("a", "b"))
    key = jax.random.key(0)
    x = jax.random.normal(jax.random.key(1), (64, 48))
    # Integer-valued inputs and weights with keep probabilities 1/2 make every
    # sum in the MLP exact, so its output is bit-identical under any sharding
    # exactly when its masks are (float matmuls may sum in another order).
    x_int = jnp.round(x * 2)
    params = [
        {"w": jnp.round(layer["w"] * 4), "b": jnp.round(layer["b"])}
        for layer in jdrop.mlp_init(jax.random.key(2), (48, 32, 32, 10))
    ]
    keep_probs = (0.5, 0.5, 0.5)
    apply = jax.jit(lambda p, x, k: jdrop.mlp_apply(p, x, key=k, keep_probs=keep_probs))
    drop = jax.jit(lambda k, x: jdrop.dropout(k, x, 0.7))
    fused = jax.jit(lambda k, x: jdrop.activation_dropout(k, x, 0.7, activation="tanh"))
    # The dropout family: continuous noise goes through log, sqrt and exp, and
    # alpha dropout's affine map through a multiply-add, which XLA may evaluate
    # to a different last bit for other per-device shapes; compared with close().
    variants = {
        "gaussian_dropout": jax.jit(lambda k, x: jdrop.gaussian_dropout(k, x, 0.7)),
        "alpha_dropout": jax.jit(lambda k, x: jdrop.alpha_dropout(k, x, 0.7)),
        "drop_path": jax.jit(lambda k, x: jdrop.drop_path(k, x, 0.7)),
        "concrete_dropout": jax.jit(lambda k, x: jdrop.concrete_dropout(k, x, 1.0)),
    }
    variant_reference = {name: fn(jax.random.clone(key), x) for name, fn in variants.items()}
    reference = {
        "dropout": drop(key, x),
        "activation_dropout": fused(jax.random.clone(key), x),
        "mask": jdrop.dropout_mask(jax.random.clone(key), x.shape, 0.7),
        "mlp": apply(params, x_int, jax.random.clone(key)),
    }
    layouts = {
        "batch": P(("a", "b"), None),
        "features": P(None, ("a", "b")),
        "2-D mesh 4x2": P("a", "b"),
        "2-D mesh 2x4": P("b", "a"),
    }
    results: dict[str, object] = {"layouts": {}}
    for name, spec in layouts.items():
        sharding = NamedSharding(mesh, spec)
        xs, xs_int = jax.device_put(x, sharding), jax.device_put(x_int, sharding)
        mask = jax.jit(lambda k: jdrop.dropout_mask(k, x.shape, 0.7), out_shardings=sharding)(jax.random.clone(key))
        hlo = drop.lower(key, xs).compile().as_text()
        shard = xs.addressable_shards[0].data.shape
        results["layouts"][name] = {
            "dropout": bool(np.array_equal(drop(jax.random.clone(key), xs), reference["dropout"])),
            # The same mask exactly; the kept values within 2 float32 ulps, since
            # XLA may evaluate tanh differently for other per-device shapes
            # (jax 0.12 does for the feature sharding; jdrop controls the mask).
            "activation_dropout": same_mask_and_close(
                fused(jax.random.clone(key), xs), reference["activation_dropout"]
            ),
            "mask": bool(np.array_equal(mask, reference["mask"])),
            "mask_sharding_kept": mask.sharding.is_equivalent_to(sharding, 2),
            **{name: close(fn(jax.random.clone(key), xs), variant_reference[name]) for name, fn in variants.items()},
            "mlp": bool(np.array_equal(apply(params, xs_int, jax.random.clone(key)), reference["mlp"])),
            "collectives": [op for op in COLLECTIVES if op in hlo],
            "variant_collectives": [
                f"{name}: {op}"
                for name, fn in variants.items()
                for op in COLLECTIVES
                if op in fn.lower(key, xs).compile().as_text()
            ],
            "shard_shape_in_hlo": f"f32[{shard[0]},{shard[1]}]" in hlo,
            "full_shape_in_hlo": "f32[64,48]" in hlo,
        }

    # Data-parallel training: replicated parameters, batch over all 8 devices.
    data_mesh = jdrop.data_parallel_mesh()
    optimizer = optax.sgd(0.05, momentum=0.9)
    step = jdrop.make_train_step(optimizer, keep_probs=(1.0, 0.5, 0.5))
    start = jdrop.init_train_state(jdrop.mlp_init(jax.random.key(3), (48, 64, 32, 10)), optimizer)
    labels = jax.random.randint(jax.random.key(4), (64,), 0, 10)
    single = start
    for _ in range(50):
        single, _ = step(single, x, labels, key=key)
    sharded = jdrop.replicate(start, data_mesh)
    xb, yb = jdrop.shard_batch((x, labels), data_mesh)
    for _ in range(50):
        sharded, _ = step(sharded, xb, yb, key=key)
    results["data_parallel_max_abs_difference"] = max(
        float(jnp.max(jnp.abs(a - b))) for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded), strict=True)
    )
    results["data_parallel_params_replicated"] = all(
        leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(sharded.params)
    )
    results["data_parallel_steps"] = int(sharded.step.addressable_data(0))
    # Train states and batches carry typed keys: one per example, split over the devices, and a replicated one.
    example_keys = jax.random.split(jax.random.key(5), 64)
    placed_keys, placed_x = jdrop.shard_batch((example_keys, x), data_mesh)
    state_key = jdrop.replicate({"key": jax.random.key(6, impl="rbg")}, data_mesh)["key"]
    results["typed_keys"] = {
        "batch_dtype_kept": placed_keys.dtype == example_keys.dtype,
        "batch_values_kept": bool(np.array_equal(jax.random.key_data(placed_keys), jax.random.key_data(example_keys))),
        "batch_sharded": placed_keys.sharding.spec[0] == "batch"
        and placed_keys.addressable_shards[0].data.shape == (8,),
        "replicated_impl_kept": str(jax.random.key_impl(state_key))
        == str(jax.random.key_impl(jax.random.key(0, impl="rbg"))),
        "replicated": state_key.sharding.is_fully_replicated,
        # Per-example dropout with the placed keys is the one-device result.
        "per_example_dropout": bool(
            np.array_equal(
                jax.jit(jax.vmap(lambda k, row: jdrop.dropout(k, row, 0.5)))(placed_keys, placed_x),
                jax.vmap(lambda k, row: jdrop.dropout(k, row, 0.5))(jax.random.clone(example_keys), x),
            )
        ),
    }
    try:
        jdrop.shard_batch(jnp.ones((12, 3)), data_mesh)
    except ValueError as error:
        results["uneven_batch_error"] = str(error)
    print(json.dumps(results))


if __name__ == "__main__":
    if "--xla_force_host_platform_device_count=8" not in os.environ.get("XLA_FLAGS", ""):
        sys.exit("run with XLA_FLAGS=--xla_force_host_platform_device_count=8")
    main()
