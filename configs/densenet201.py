"""DenseNet201 (Keras Applications layout). `model.name` can be densenet121/169/201.

XLA:CPU compiles a full DenseNet201 train step in minutes: the quick preset uses DenseNet121
at 64 px so it still runs on 2 cores.

ImageNet weights (conv1 included) still import with `model.highpass` (3 channels in and out)
and the stem options `model.kwargs.stem_stride=1` / `stem_pool=False` (strides, not shapes);
`model.space_to_depth` > 1 gives conv1 3*b*b input channels, which Keras' conv1 does not fit.
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "densenet201"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":
        c.model.name = "densenet121"
        defaults.cpu_quick(c, patch=64, batch_size=16, num_epochs=2, steps_per_epoch=30)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for densenet201; expected '' or 'quick'")
    return c
