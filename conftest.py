"""Test-wide settings: key-reuse checker, strict dtype and rank promotion, compilation, slow suite, hypothesis.

The doctests get no names from here: every example imports what it uses, so it runs as printed.
"""

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator

# The suite is mostly XLA compiling small programs for the CPU, and its
# assertions do not depend on how well LLVM optimises them: at optimisation
# level 0 the whole suite compiles about a quarter faster. Set before the
# backend starts (at the first computation). JDROP_TEST_XLA_DEFAULTS=1 keeps
# XLA's defaults, the code users run; CI's first leg runs that way.
if not os.environ.get("JDROP_TEST_XLA_DEFAULTS"):
    os.environ["XLA_FLAGS"] = " ".join(
        (
            os.environ.get("XLA_FLAGS", ""),
            "--xla_backend_optimization_level=0",
            "--xla_llvm_disable_expensive_passes=true",
        )
    ).strip()

import jax
import pytest
from hypothesis import HealthCheck, settings

# Every test, doctest, fixture and module-level statement runs with JAX's
# key-reuse checker: consuming a concrete key twice (eagerly, or by passing it
# to jitted code that consumes it) raises jax.errors.KeyReuseError. A test that
# means to draw the same bits twice says so with jax.random.clone(key). Set
# here, at import time, rather than in a fixture, so that it also covers
# module-level code and module-scoped fixtures, which run outside
# function-scoped fixtures.
jax.config.update("jax_debug_key_reuse", True)

# One compilation cache for the run, shared by the pytest-xdist workers (they
# inherit the variable from the process that made it, which removes it at
# exit): the many tests that compile the same program compile it once. It
# starts empty, so a run times what a fresh checkout takes.
if "JDROP_TEST_COMPILATION_CACHE" not in os.environ:
    os.environ["JDROP_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="jdrop-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JDROP_TEST_COMPILATION_CACHE"], ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", os.environ["JDROP_TEST_COMPILATION_CACHE"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# Rank promotion (adding a (3,) array to a (2, 3) one) is an error, as in
# Equinox's own test suite: a user who sets it must be able to run jdrop.
jax.config.update("jax_numpy_rank_promotion", "raise")


# Hypothesis: the same commit gives the same result. The default profile,
# "ci", is derandomised (its examples are a function of the test alone) and
# writes no example database. To search further, run for example
#   HYPOTHESIS_PROFILE=explore pytest tests/test_properties.py -n 0
# which draws 1000 fresh random examples per test; an example found that way
# goes into the test as an explicit @example, so that CI keeps checking it.
# Every example compiles (a new shape, dtype or set of axes), hence no
# deadline; the autouse fixtures below hold for every example alike.
_PROPERTY_SETTINGS = {
    "deadline": None,
    "database": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture],
}
settings.register_profile("ci", derandomize=True, max_examples=30, **_PROPERTY_SETTINGS)
settings.register_profile("explore", derandomize=False, max_examples=1000, **_PROPERTY_SETTINGS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.hookimpl(tryfirst=True)  # before -m deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A test module's SLOW_CASES names the cases of its sweeps that run in the
    # slow suite only: every behaviour keeps at least one case in the default run.
    # The eager variant (chex's `__without_jit`) of a swept test, e.g.
    # `test_x_(keep_prob=0.5)__without_jit`, keeps its first case in the default
    # run and the others in the slow suite: eager calls compile every primitive
    # on its own, so they cost the most, and every case keeps its jitted variant.
    eager_cases_seen: set[tuple[str, str]] = set()
    for item in items:
        if item.name in getattr(getattr(item, "module", None), "SLOW_CASES", ()):
            item.add_marker(pytest.mark.slow)
        elif item.name.endswith("__without_jit") and "_(" in item.name:
            sweep = (item.nodeid.split("::")[0], item.name.split("_(")[0])
            if sweep in eager_cases_seen:
                item.add_marker(pytest.mark.slow)
            eager_cases_seen.add(sweep)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: end-to-end runs, multi-device and multi-process subprocesses, exhaustive sweeps and the docs build; "
        "deselected by default (pyproject.toml's addopts), run with `pytest -m slow` (CI's second leg does)",
    )
    config.addinivalue_line(
        "markers", "standard_promotion: run with JAX's standard dtype promotion (for optax code that needs it)"
    )


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request: pytest.FixtureRequest) -> Iterator[None]:
    # Implicit promotion (bf16 * f32 -> f32, say) hides dtype bugs; jdrop's
    # tests forbid it. Some optax transformations (adam's bias correction)
    # rely on it, so tests of those opt out with the marker.
    mode = "standard" if request.node.get_closest_marker("standard_promotion") else "strict"
    with jax.numpy_dtype_promotion(mode):
        yield
