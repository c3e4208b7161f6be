"""ResNet50 (Keras Applications layout, ImageNet weights importable): the winning recipe at 512.

Usage: python -m camjax.train --config configs/resnet50.py --workdir runs/resnet50
       [--config.model.init_from=weights/resnet50]   # from `python -m camjax.convert`

ImageNet weights (conv1 included) still import with `model.highpass` (3 channels in and out)
and the stem options `model.kwargs.stem_stride=1` / `stem_pool=False` (strides, not shapes);
`model.kwargs.zero_init_residual=True` is an initialisation the import replaces;
`model.space_to_depth` > 1 gives conv1 3*b*b input channels, which Keras' conv1 does not fit.
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "resnet50"
    c.model.pooling = "avg"
    c.batch_size = 32
    c.dtype = "bfloat16"
    if preset == "quick":
        # 14 x 180 steps of 16: ten minutes on a 2-vCPU Zen 5 VM (593-622 s, 2026-12-06).
        # A third of the other backbones' rate: at 1e-3 two seeds of three pass validation
        # weighted accuracy 0.5 (at step 1,440) and the last five validations average 0.43 /
        # 0.50 / 0.57 (two more seeds, run afterwards, pass at steps 2,520 and 2,160); at
        # 1.5e-3 one seed passes (0.46 / 0.42 / 0.54), at 3e-3 none (0.39 / 0.32 / 0.34).
        # Every block starting as its shortcut brings the onset forward: 0.31-0.36 at step
        # 1,800 on three seeds, where the stock initialisation was at 0.10-0.21
        # (benchmarks/RESULTS.md).
        defaults.cpu_quick(c, patch=64, batch_size=16, num_epochs=14, steps_per_epoch=180)
        c.optim.learning_rate = 1e-3
        c.model.kwargs.zero_init_residual = True
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for resnet50; expected '' or 'quick'")
    return c
