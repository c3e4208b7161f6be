"""Test set-up: tests import their fixture helpers (tests/datasets.py) by name."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("KERAS_BACKEND", "jax")
