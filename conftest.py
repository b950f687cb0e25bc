"""Test-wide settings: JAX's key-reuse checker, strict dtype promotion, and names for the doctests."""

from collections.abc import Iterator

import jax
import jax.numpy as jnp
import optax
import pytest

import jdrop

# Every test, doctest, fixture and module-level statement runs with JAX's
# key-reuse checker: consuming a concrete key twice (eagerly, or by passing it
# to jitted code that consumes it) raises jax.errors.KeyReuseError. A test that
# means to draw the same bits twice says so with jax.random.clone(key). Set
# here, at import time, rather than in a fixture, so that it also covers
# module-level code and module-scoped fixtures, which run outside
# function-scoped fixtures.
jax.config.update("jax_debug_key_reuse", True)


def pytest_configure(config: pytest.Config) -> None:
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


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, object]) -> None:
    doctest_namespace.update(jax=jax, jnp=jnp, optax=optax, jdrop=jdrop)
