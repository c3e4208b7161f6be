"""DenseNet121 (Keras Applications layout; configs/densenet201.py is its deeper sibling).

Usage: python -m camjax.train --config configs/densenet121.py[:quick] --workdir runs/densenet121
       [--config.model.init_from=weights/densenet121]   # from `python -m camjax.convert`

ImageNet weights (conv1 included) still import with `model.highpass` (any: it keeps 3
channels) and `model.kwargs.stem_stride=1` / `stem_pool=False` (a stride and a pool, not
shapes); `model.space_to_depth` > 1 gives conv1 3*b*b input channels, which Keras' conv1
does not fit.
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "densenet121"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":  # 2 CPU cores: shows the loop; not measured to learn in minutes (benchmarks/RESULTS.md)
        defaults.cpu_quick(c, patch=64, batch_size=16, num_epochs=2, steps_per_epoch=30)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for densenet121; expected '' or 'quick'")
    return c
