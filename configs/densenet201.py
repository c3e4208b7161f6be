"""DenseNet201 (Keras Applications layout). `model.name` can be densenet121/169/201.

XLA:CPU compiles a full DenseNet201 train step in minutes: the quick preset uses DenseNet121
at 64 px so it still runs on 2 cores.
"""

import ml_collections

from configs import common


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = common.get_config()
    c.model.name = "densenet201"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":
        c.model.name = "densenet121"
        c.dtype = "float32"
        c.data.patch = 64
        c.data.patches_per_image = 16
        c.data.val_crops = 1
        c.model.highpass = "box3"
        c.optim.learning_rate = 1e-3
        c.batch_size = 16
        c.num_epochs = 2
        c.steps_per_epoch = 30
        c.log_every = 10
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for densenet201; expected '' or 'quick'")
    return c
