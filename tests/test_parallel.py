"""Tests for jdrop._parallel and sharding: 8 CPU devices (and 2 for the Explicit-mesh costs), in subprocesses."""

from pathlib import Path

import jax
import numpy as np
import pytest
from multidevice_checks import run_on_host_devices

import jdrop

CHECKS = Path(__file__).with_name("multidevice_checks.py")
EXPLICIT_CHECKS = Path(__file__).with_name("explicit_sharding_checks.py")
LAYOUTS = ("batch", "features", "2-D mesh 4x2", "2-D mesh 2x4")
#: How many more flops a device may run under an Explicit mesh than under an Auto one, as a fraction of
#: the Auto count. A device that draws the whole noise instead of its shard does at least (N - 1) / N of
#: the global draw more: in explicit_sharding_checks.py, with the smallest draw (drop_path's one word
#: per example, next to a read of the whole input), +7% on 2 devices; with a draw of the input's shape,
#: +48% to +178%. With each device drawing its shard, what is left differs by a few operations per
#: example (the Equinox layer under vmap: 1 flop per local example, 0.01%) or by 1 flop: 1% is 100
#: times that, and 7 times below the smallest regression.
EXPLICIT_FLOPS_TOLERANCE = 0.01


@pytest.fixture(scope="module")
def results():
    return run_on_host_devices([str(CHECKS)], 8)


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
@pytest.mark.parametrize("layout", LAYOUTS)
def test_results_do_not_depend_on_the_layout(results, layout):
    checks = results["layouts"][layout]
    variants = ("gaussian_dropout", "alpha_dropout", "drop_path", "concrete_dropout")
    for name in ("dropout", "activation_dropout", "mask", "mlp", *variants):
        assert checks[name], f"{name} differs from the one-device result when sharded over {layout}"
    assert checks["mask_sharding_kept"]


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
@pytest.mark.parametrize("layout", LAYOUTS)
def test_sharded_dropout_needs_no_communication_and_draws_only_its_shard(results, layout):
    checks = results["layouts"][layout]
    assert checks["collectives"] == [] and checks["variant_collectives"] == []
    assert checks["shard_shape_in_hlo"] and not checks["full_shape_in_hlo"]


@pytest.fixture(scope="module", params=(2, 8), ids=lambda devices: f"{devices} devices")
def explicit_results(request):
    """explicit_sharding_checks.py on ``request.param`` host devices: one subprocess per device count."""
    return run_on_host_devices([str(EXPLICIT_CHECKS), str(request.param)], request.param)["cases"]


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
def test_explicit_sharding_checks_all_ran(explicit_results):
    errors = {case: entry["error"] for case, entry in explicit_results.items() if "error" in entry}
    assert not errors, errors


def _ran(explicit_results):
    """The cases that compiled and ran (test_explicit_sharding_checks_all_ran reports the others)."""
    return {case: entry for case, entry in explicit_results.items() if "error" not in entry}


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
def test_explicit_sharding_costs_a_device_no_more_than_auto(explicit_results):
    """Under an Explicit mesh each device draws only its shard, as it does under an Auto one (issue 20)."""
    over = {
        case: (entry["Explicit"]["flops"], entry["Auto"]["flops"])
        for case, entry in _ran(explicit_results).items()
        if entry["Explicit"]["flops"] > entry["Auto"]["flops"] * (1 + EXPLICIT_FLOPS_TOLERANCE)
    }
    assert not over, f"flops per device (Explicit, Auto): {over}"


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
def test_explicit_sharding_has_no_op_at_the_global_shape(explicit_results):
    """No uint32 op of the compiled program has a draw's global shape: the counters are sharded too."""
    for mode in ("Explicit", "Auto"):
        whole = {case: entry[mode]["global_shapes_in_hlo"] for case, entry in _ran(explicit_results).items()}
        assert not any(whole.values()), f"{mode}: {whole}"


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
def test_explicit_sharding_gives_the_unsharded_values_with_the_input_sharding(explicit_results):
    for check in ("differs_from_unsharded", "sharding_changed"):
        found = {case: entry[check] for case, entry in _ran(explicit_results).items() if entry[check]}
        assert not found, f"{check}: {found}"


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
def test_data_parallel_training_matches_one_device(results):
    assert results["data_parallel_steps"] == 50
    assert results["data_parallel_params_replicated"]
    # The gradient all-reduce sums in another order than one device does.
    assert results["data_parallel_max_abs_difference"] <= 1e-6


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
def test_typed_keys_are_sharded_and_replicated_with_their_values_and_implementation(results):
    assert results["typed_keys"] == dict.fromkeys(results["typed_keys"], True) and len(results["typed_keys"]) == 6


@pytest.mark.slow  # its fixture runs a 2- or 8-device subprocess
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
