"""InceptionResNetV2 (Keras Applications layout). Needs patches of at least 75 px."""

import ml_collections

from configs import common


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = common.get_config()
    c.model.name = "inception_resnet_v2"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":
        c.dtype = "float32"
        c.data.patch = 96
        c.data.patches_per_image = 8
        c.data.val_crops = 1
        c.model.highpass = "box3"
        c.optim.learning_rate = 1e-3
        c.batch_size = 8
        c.num_epochs = 1
        c.steps_per_epoch = 20
        c.log_every = 5
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for inception_resnet_v2; expected '' or 'quick'")
    return c
