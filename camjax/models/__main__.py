"""Prints every registered backbone: parameter counts and forward GFLOPs at 512x512.

    python -m camjax.models

Backbone counts are include_top=False with BatchNorm statistics (Keras' `count_params`);
the classifier adds the default flag-injection head (camjax/defaults.py) for 10 classes.
Everything is abstract (`nnx.eval_shape`, XLA's cost analysis of the lowered forward), so
no weights are allocated and nothing runs: the table takes seconds.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from camjax.cameras import CHALLENGE_CLASSES
from camjax.models import BACKBONES, create, default_config
from camjax.models.pretrained import WEIGHTS

PATCH = 512


def count(module: nnx.Module) -> int:
    return sum(math.prod(v.shape) for v in jax.tree.leaves(nnx.state(module, WEIGHTS)))


def gflops(classifier: nnx.Module, size: int = PATCH) -> float:
    """XLA's flop count of one eval-mode forward of a (1, size, size, 3) batch, lowered only."""
    classifier.eval()
    graphdef, state = nnx.split(classifier)
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    flags = jax.ShapeDtypeStruct((1,), jnp.float32)
    lowered = jax.jit(lambda s, x, m: nnx.merge(graphdef, s)(x, m)).lower(state, images, flags)
    cost = lowered.cost_analysis()
    if isinstance(cost, list):  # older jax: one dict per computation
        cost = cost[0]
    return cost["flops"] / 1e9


def rows():
    for name in sorted(BACKBONES):
        config = default_config(name)
        classifier = nnx.eval_shape(lambda config=config: create(config, len(CHALLENGE_CLASSES)))
        yield name, count(classifier.backbone), count(classifier), gflops(classifier)


def main() -> None:
    header = ("model", "backbone params", "classifier params", f"GFLOPs @{PATCH}")
    print(f"{header[0]:<22}{header[1]:>18}{header[2]:>20}{header[3]:>14}")
    for name, backbone, total, flops in rows():
        print(f"{name:<22}{backbone:>18,}{total:>20,}{flops:>14.1f}")


if __name__ == "__main__":
    main()
