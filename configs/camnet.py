"""camnet: the compact forensic CNN. `quick` is the demo's recipe (284 s of training on a
2-vCPU VM: benchmarks/demo-2026-12-02.txt).

Usage: python -m camjax.train --config configs/camnet.py:quick --workdir runs/camnet
"""

import ml_collections

from camjax import defaults


def get_config(preset: str = "") -> ml_collections.ConfigDict:
    c = defaults.get_config()
    c.model.name = "camnet"
    c.model.highpass = "box3"  # the noise residual: without it a small CNN stays near chance
    c.model.pooling = "avg"
    # The JPEG quantisation trace beside the CNN's pooled features (camjax/models/jpeg_trace.py):
    # the camera's own JPEG tables, which a small CNN does not find in minutes. Measured:
    # benchmarks/RESULTS.md, "camnet with the JPEG quantisation trace".
    c.model.jpeg_trace = 128
    c.model.kwargs = ml_collections.ConfigDict(dict(stem=4, widths=(64, 128, 256), blocks=2))
    c.model.head = ml_collections.ConfigDict(
        dict(hidden=(256, 128), dropout=(0.3, 0.1), inject_flag=True, aux_head=True)
    )
    c.data.patch = 128
    c.batch_size = 64
    c.optim.learning_rate = 1e-3
    c.num_epochs = 40
    if preset == "quick":
        c.data.patch = 64
        c.data.patches_per_image = 16
        c.data.val_crops = 2
        c.model.kwargs.widths = (32, 64, 128)
        c.batch_size = 32
        # The budget is steps, not passes over the data: 16 x 180 steps whatever the dataset
        # (one pass of the 10-camera synthetic set). Counted in passes, a 5-camera set with
        # 40 frames per camera got half the steps, and scored 0.82 instead of 0.91 on the
        # check set (benchmarks/RESULTS.md, "Recipes").
        c.steps_per_epoch = 180
        c.num_epochs = 16
        # A short run ends better annealed than waiting for plateaus.
        c.optim.schedule = "cosine"
        c.eval.max_tiles = 0  # every 64 px tile of a 512 test patch: 64 tiles, cheap
        c.log_every = 10
    elif preset:
        raise ValueError(f"unknown preset {preset!r} for camnet; expected '' or 'quick'")
    return c
