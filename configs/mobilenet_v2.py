"""MobileNetV2 (Keras Applications layout; `model.kwargs.alpha` is the width multiplier).

Usage: python -m camjax.train --config configs/mobilenet_v2.py[:quick] --workdir runs/mobilenet_v2
       [--config.model.init_from=weights/mobilenet_v2]   # from `python -m camjax.convert`

ImageNet weights (conv1 included) still import with `model.highpass` (any: it keeps 3
channels), `model.kwargs.stem_stride=1` (a stride, not a shape) and
`model.kwargs.zero_init_residual=True` (an initialisation the import replaces);
`model.space_to_depth` > 1 gives the first convolution 3*b*b input channels, which Keras' Conv1 does not fit.
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "mobilenet_v2"
    c.model.kwargs = ml_collections.ConfigDict(dict(alpha=1.0))
    c.batch_size = 64
    c.dtype = "bfloat16"
    if preset == "quick":
        c.model.kwargs.alpha = 0.35
        # 26 x 180 steps: validation weighted accuracy 0.51-0.57 at the end on three seeds
        # (418-435 s on a 2-vCPU Zen 5 VM, 2026-12-06; benchmarks/RESULTS.md).
        defaults.cpu_quick(c, patch=64, batch_size=32, num_epochs=26, val_crops=2)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for mobilenet_v2; expected '' or 'quick'")
    return c
