"""Test set-up: tests import their fixture helpers (tests/datasets.py) by name."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("KERAS_BACKEND", "jax")


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
