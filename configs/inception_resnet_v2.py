"""InceptionResNetV2 (Keras Applications layout). Needs patches of at least 75 px.

ImageNet weights (conv1 included) still import with `model.highpass` (3 channels in and out);
`model.space_to_depth` > 1 gives conv1 3*b*b input channels, which Keras' conv1 does not fit.
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "inception_resnet_v2"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":
        defaults.cpu_quick(c, patch=96, batch_size=8, num_epochs=1, steps_per_epoch=20, patches_per_image=8)
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for inception_resnet_v2; expected '' or 'quick'")
    return c
