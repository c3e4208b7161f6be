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
        # 32 x 180 steps: it passed validation weighted accuracy 0.5 at step 5,220 (459 s on the 2-vCPU VM, 2026-12-03).
        defaults.cpu_quick(c, patch=64, batch_size=32, num_epochs=32, val_crops=2)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for mobilenet; expected '' or 'quick'")
    return c
