"""Test set-up: tests import their helpers (tests/camjax_testdata.py) by name."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("KERAS_BACKEND", "jax")
# One persistent compilation cache for the whole session, test processes and the trainers they
# start alike: dozens of tests compile the same tiny programs, and a hit skips XLA's compiler.
# Compile counts include hits, so no-recompilation assertions hold; the tests of the cache
# itself point their runs at folders of their own.
os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR", os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "jax-tests")
)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")


def require_reference(available: bool, what: str) -> None:
    """A test that compares against a reference tool runs it, or says why not: a skip on a
    developer's machine, a failure under CI (CI=true), where a missing reference would
    otherwise turn a comparison into silence."""
    import pytest

    if available:
        return
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{what} is missing, and CI must run this comparison")
    pytest.skip(f"{what} is missing")


def pytest_collection_modifyitems(config, items):
    """The tests marked slow (multi-process runs, kill-and-resume, whole-network comparisons:
    one or two minutes each) go first, the rest keep their order: with two workers, a long test
    that starts last leaves the other worker idle while it runs, and short ones fill the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
