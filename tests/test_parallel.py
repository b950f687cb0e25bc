"""Tests for jdrop._parallel and sharding: 8 CPU devices, in a subprocess."""

from pathlib import Path

import jax
import numpy as np
import pytest
from multidevice_checks import run_on_host_devices

import jdrop

CHECKS = Path(__file__).with_name("multidevice_checks.py")
LAYOUTS = ("batch", "features", "2-D mesh 4x2", "2-D mesh 2x4")


@pytest.fixture(scope="module")
def results():
    return run_on_host_devices([str(CHECKS)], 8)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_results_do_not_depend_on_the_layout(results, layout):
    checks = results["layouts"][layout]
    variants = ("gaussian_dropout", "alpha_dropout", "drop_path", "concrete_dropout")
    for name in ("dropout", "activation_dropout", "mask", "mlp", *variants):
        assert checks[name], f"{name} differs from the one-device result when sharded over {layout}"
    assert checks["mask_sharding_kept"]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_dropout_needs_no_communication_and_draws_only_its_shard(results, layout):
    checks = results["layouts"][layout]
    assert checks["collectives"] == [] and checks["variant_collectives"] == []
    assert checks["shard_shape_in_hlo"] and not checks["full_shape_in_hlo"]


def test_data_parallel_training_matches_one_device(results):
    assert results["data_parallel_steps"] == 50
    assert results["data_parallel_params_replicated"]
    # The gradient all-reduce sums in another order than one device does.
    assert results["data_parallel_max_abs_difference"] <= 1e-6


def test_typed_keys_are_sharded_and_replicated_with_their_values_and_implementation(results):
    assert results["typed_keys"] == dict.fromkeys(results["typed_keys"], True) and len(results["typed_keys"]) == 6


def test_uneven_batches_are_refused(results):
    assert "size 12, which 8 devices cannot split evenly" in results["uneven_batch_error"]


def test_helpers_on_one_device():
    mesh = jdrop.data_parallel_mesh()
    state = jdrop.replicate({"w": np.ones((2, 3))}, mesh)
    x, y = jdrop.shard_batch((np.ones((4, 5)), np.arange(4)), mesh)
    assert state["w"].sharding.is_fully_replicated
    assert x.shape == (4, 5) and np.array_equal(y, np.arange(4))
    keys = jdrop.shard_batch(jax.random.split(jax.random.key(0), 4), mesh)
    replicated = jdrop.replicate({"key": jax.random.key(1), "raw": jax.random.PRNGKey(2)}, mesh)
    assert jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key) and keys.shape == (4,)
    assert jax.dtypes.issubdtype(replicated["key"].dtype, jax.dtypes.prng_key)
    assert replicated["raw"].dtype == np.uint32  # a legacy raw key stays raw
    with pytest.raises(ValueError, match="devices is empty"):
        jdrop.data_parallel_mesh([])
    with pytest.raises(ValueError, match="one axis"):
        jdrop.shard_batch(np.ones(4), jax.make_mesh((1, 1), ("a", "b")))
    with pytest.raises(ValueError, match="axis 2 is out of range"):
        jdrop.shard_batch(np.ones((4, 5)), mesh, axis=2)
