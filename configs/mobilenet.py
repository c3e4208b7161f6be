"""MobileNet v1 (Keras Applications layout; `model.kwargs.alpha` is the width multiplier).

ImageNet weights (conv1 included) still import with `model.highpass` (3 channels in and out)
and `model.kwargs.stem_stride=1` (a stride, not a shape);
`model.space_to_depth` > 1 gives conv1 3*b*b input channels, which Keras' conv1 does not fit.
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "mobilenet"
    c.model.kwargs = ml_collections.ConfigDict(dict(alpha=1.0))
    c.batch_size = 64
    c.dtype = "bfloat16"
    if preset == "quick":
        c.model.kwargs.alpha = 0.25
        # 56 x 180 steps: validation weighted accuracy 0.65-0.68 at the end on three seeds
        # (536-562 s on a 2-vCPU Zen 5 VM, 2026-12-06; benchmarks/RESULTS.md).
        defaults.cpu_quick(c, patch=64, batch_size=32, num_epochs=56, val_crops=2)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for mobilenet; expected '' or 'quick'")
    return c
