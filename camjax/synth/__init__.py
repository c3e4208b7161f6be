"""`camjax.synth`: virtual cameras, and the synthetic dataset they make in the challenge layout.

No challenge data ships with camjax, so the default runs and the tests use ten virtual
camera models that stand in for the ten challenge classes (they borrow the names, aspect
ratios and EXIF strings; their parameters are invented, not measured from real phones).
Each model is an imaging pipeline: optics blur, colour filters with crosstalk, a Bayer
mosaic, per-device PRNU, shot and read noise, an ADC, white balance, demosaicing, a colour
matrix, a tone curve, chroma denoising, sharpening and JPEG with its own tables and chroma
subsampling. All cameras photograph one shared procedural scene distribution, so the
classes differ in their traces, not in their content. Pairs of models share most of their
pipeline (iPhone-4s/iPhone-6, Motorola-Nexus-6/Motorola-X, Samsung-Galaxy-Note3/S4), as
the real ones do.

Train frames come from device 1 of each model, test patches from device 2 (another PRNU
and noise level), half of them manipulated with `camjax.data.manipulations` exactly as
in the challenge. A test frame is rendered only over the window its patch needs (the
manipulation's source near the frame centre plus margins, up to 1088 px square), aligned
so that its Bayer phase and 16-px JPEG MCU grid are those of the full frame; everything in
a scene is sized in pixels and metered on the centre, so a window has a frame's statistics.
Frames are smaller than the real sensors, so the source is not cut at the exact centre but
at the spot nearest it whose offset on the CFA and JPEG grids is that of a centre crop of
the camera's native frame: on the 8-px grid for every camera, one row off it for the
2322-row Samsung frames - as in the challenge's test set.
Everything is a pure function of the seed: frames are rendered in worker processes from
per-frame random streams, so the bytes do not depend on the number of workers.

The package: `camera_models` (models, devices, JPEG tables), `scenes`, `imaging` (the pipeline
inside a camera), `dataset` (shots, test-patch placement, the writer); `python -m camjax.synth`
writes a dataset. Training calls `ensure_dataset(cache_dir, **config.data.synth)`, which
generates it once per parameter set (and GENERATOR_VERSION) and reuses it afterwards.
"""

from camjax.synth.dataset import GENERATOR_VERSION, ensure_dataset, generate

__all__ = ["GENERATOR_VERSION", "ensure_dataset", "generate"]
