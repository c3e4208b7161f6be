"""MobileNet v1 (Keras Applications layout; `model.kwargs.alpha` is the width multiplier)."""

import ml_collections

from configs import common


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = common.get_config()
    c.model.name = "mobilenet"
    c.model.kwargs = ml_collections.ConfigDict(dict(alpha=1.0))
    c.batch_size = 64
    c.dtype = "bfloat16"
    if preset == "quick":
        c.dtype = "float32"
        c.model.kwargs.alpha = 0.25
        c.model.highpass = "box3"
        c.data.patch = 64
        c.data.patches_per_image = 16
        c.data.val_crops = 2
        c.optim.learning_rate = 1e-3
        c.batch_size = 32
        c.num_epochs = 4
        c.log_every = 10
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for mobilenet; expected '' or 'quick'")
    return c
