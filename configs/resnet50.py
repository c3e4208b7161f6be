"""ResNet50 (Keras Applications layout, ImageNet weights importable): the winning recipe at 512.

Usage: python -m camjax.train --config configs/resnet50.py --workdir runs/resnet50
       [--config.model.init_from=weights/resnet50]   # from `python -m camjax.convert`
"""

import ml_collections

from configs import common


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = common.get_config()
    c.model.name = "resnet50"
    c.model.pooling = "avg"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":  # 2 CPU cores: small patches, few steps; shows the loop, not the accuracy
        common.cpu_quick(c, patch=64, batch_size=16, num_epochs=2, steps_per_epoch=40)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for resnet50; expected '' or 'quick'")
    return c
