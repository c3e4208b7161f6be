"""Defaults shared by every model config (`configs/<model>.py` extends them): the winning recipe.

Every knob of a run lives here or in the model config that extends it; any field can be
overridden from the command line with --config.<field>=<value>. `load_config` reads a config
file the way `--config` does, for Python callers (tests, benchmarks, notebooks).
"""

import importlib.util
import os

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.source = "folder"  # folder (challenge layout under data.root) | tfds (data.tfds_dir)
    c.data.root = ""  # challenge layout; empty -> the synthetic dataset, generated once into cache_dir
    c.data.tfds_dir = ""  # a `python -m camjax.data.tfds_builder` output, for data.source='tfds'
    c.data.cache_dir = ".cache/camjax"
    c.data.synth = ml_collections.ConfigDict(dict(cameras=10, images_per_camera=40, test_per_camera=24, seed=0))
    c.data.patch = 512
    c.data.patches_per_image = 8  # patches cut from each decoded frame (decoding dominates)
    c.data.mix_files = 32  # files whose patches are shuffled together (per worker) before batching
    c.data.crop_step = 0  # 0 -> 8 px for JPEG sources (DCT grid), 2 px otherwise (CFA phase)
    c.data.manip_prob = 0.5  # probability of one of the eight challenge manipulations
    # probability that an unaltered patch is re-encoded as a photo shared online (JPEG 75-85),
    # labelled unaltered all the same; host only. See README, "Forensic use".
    c.data.shared_prob = 0.0
    c.data.manipulate_on = "host"  # host (Grain workers) | device (in the jitted step: camjax.data.device_ops)
    c.data.d4 = "d4"  # dihedral augmentation in training: none | flips | rot90 | d4
    c.data.d4_exempt_classes = ()  # classes whose orientation is meaningful: never rotated
    c.data.class_balance = "sampling"  # sampling | weights | none
    c.data.val_fraction = 0.1  # per class, by file, deterministic
    c.data.val_crops = 4  # deterministic crops per validation image, each under every manipulation
    c.data.workers = 2  # grain worker processes (0: in the main process)
    c.data.prefetch = 4  # batches buffered per worker
    c.data.shards = 0  # file shards making up each global batch (0: one per process); fix it to
    # train on the same batches, and resume, at another process count
    c.data.extra = ""  # an extra training source (e.g. pseudo-labels), same layout
    c.data.classes = ()  # train on these classes only (empty: all); e.g. to hold cameras out for open-set tests
    # Photos of other cameras, none of the classes (ROOT/train/<camera>/*): trained towards a
    # uniform prediction (outlier exposure), sampled as one more class. See README, "Forensic use".
    c.data.outliers = ""

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet50"
    c.model.kwargs = ml_collections.ConfigDict()
    c.model.highpass = "none"  # none | box3 | kv5 | constrained
    c.model.highpass_clip = 0.0  # > 0: the residual truncated to +- this many grey levels (models/layers.HighPass)
    c.model.space_to_depth = 1  # > 1: a lossless b x b space-to-depth before the backbone (keeps CFA phases)
    c.model.pooling = "avg"  # avg | max | avgmax
    c.model.jpeg_trace = 0  # > 0: that many head features read from the JPEG quantisation trace (models/jpeg_trace.py)
    c.model.bn_momentum = 0.0  # > 0: every backbone BatchNorm's running-average momentum (0: the Keras value)
    c.model.head = ml_collections.ConfigDict(
        dict(hidden=(512, 256), dropout=(0.3, 0.1), inject_flag=True, aux_head=True)
    )
    c.model.init_from = ""  # a `camjax.convert` output directory (ImageNet weights)

    c.dtype = "float32"  # compute dtype: float32 | bfloat16; parameters stay float32
    c.batch_size = 32  # global, across all devices and processes
    c.grad_accum = 1  # micro-batches per optimizer step
    c.num_epochs = 60
    c.steps_per_epoch = 0  # 0 -> one pass of (train images x patches_per_image) / batch_size
    c.max_train_seconds = 0.0  # > 0: stop at the first epoch end after this wall time
    c.label_smoothing = 0.0
    c.aux_loss_weight = 0.1  # manipulation-id head
    c.outlier_loss_weight = 0.5  # lambda of the outliers' mean loss beside the known cameras' (steps.class_loss)
    c.nonfinite = "stop"  # a NaN/Inf loss: stop (last good checkpoint kept) | skip (the batch, counted)

    c.optim = ml_collections.ConfigDict()
    c.optim.learning_rate = 1e-4
    c.optim.b1 = 0.9
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.0
    c.optim.schedule = "plateau"  # plateau | cosine | constant
    c.optim.warmup_epochs = 0.0
    c.optim.decay_epochs = 0.0  # > 0: the last this many epochs take the rate linearly to 0 (constant, plateau)
    c.optim.clip_norm = 0.0  # > 0: gradients scaled down to this global norm at most, before Adam
    # > 0: an exponential moving average of the weights (and BatchNorm statistics) with this
    # decay per step; validation, the checkpoints' evaluation and predict use the average.
    c.optim.ema_decay = 0.0
    c.optim.plateau = ml_collections.ConfigDict(
        dict(patience=5, factor=0.5, cooldown=0, min_lr=1e-7, min_delta=1e-4, metric="val/weighted_accuracy")
    )

    c.parallel = "sharded"  # sharded (jit + NamedSharding) | pmap
    c.log_every = 20
    c.checkpoint_keep_best = 3
    c.compilation_cache = ".cache/jax"
    # How `camjax.evaluate` predicts this run unless its flags say otherwise (max_tiles 0: every
    # tile of a test image); batch_size is also the validation batch in training.
    c.eval = ml_collections.ConfigDict(dict(agg="geometric", max_tiles=16, batch_size=64))
    # Test tiles on the JPEG block grid each image shows ("found"), as training crops sit on
    # their file's grid; "corner" tiles from the top-left (a crop cut off the grid is then read
    # off it: the challenge's Samsung test patches are 1 row off).
    c.eval.grid = "found"
    # At the end of training, fit a temperature and the open-set thresholds on the validation
    # frames cut like test images (camjax.calibration); evaluate and predict then use them.
    c.eval.calibrate = True
    # Crops cut from each validation frame for that fit: the centre, then an even tiling
    # (calibration.test_like_samples); each costs a prediction of every frame under nine manipulations.
    c.eval.calibration_crops = 1
    # Unaltered crops of each validation frame, counting those (the tiling's next origins, one
    # prediction each): under nine manipulations one sample in nine is unaltered, so that
    # group's open-set density and threshold would rest on one sample per frame.
    c.eval.calibration_unaltered_crops = 1
    # Which score says "none of the known cameras": feature_distance (the embedding's distance to
    # the nearest known camera's mean: the only score measured to separate held-out cameras at
    # all, benchmarks/RESULTS.md) | max_prob | neg_entropy | margin (the calibrated probabilities).
    c.eval.open_set_score = "feature_distance"
    c.eval.false_rejection = 0.05  # the share of known-camera validation images that threshold calls unknown
    return c


def cpu_quick(
    c: ml_collections.ConfigDict,
    *,
    patch: int,
    batch_size: int,
    num_epochs: int,
    steps_per_epoch: int = 0,
    patches_per_image: int = 16,
    val_crops: int = 1,
) -> ml_collections.ConfigDict:
    """The `quick` preset of a full-size model: small patches, f32, a fixed number of epochs
    (steps, not wall time: the 2-core machine is shared) on 2 CPU cores.

    From scratch these networks sit at chance for thousands of steps before they start to
    learn, and how long is set by the learning rate: at a constant 1e-3 MobileNet left chance
    at step 4,500 and passed validation weighted accuracy 0.5 at step 8,460; at 3e-3 after a
    one-epoch linear warmup it leaves chance at step 2,520 and passes 0.5 at step 5,220 (459 s
    on the 2-core VM). A decaying rate is what kept them at chance before: a cosine horizon or
    the plateau rule (halving after 5 flat epochs) cut the rate to nothing before the onset.
    Measured: benchmarks/RESULTS.md, "Full-size backbones"; raw lines in
    benchmarks/learning_curves.jsonl. BatchNorm momentum 0.9 keeps inference statistics in
    step with weights that a few hundred steps move a lot (Keras' 0.99 scored lower on the same
    36-epoch MobileNetV2 steps). Neither a final linear decay (`optim.decay_epochs`) nor
    camnet's lossless 4x4 space-to-depth stem brought them further in the same steps.

    Clipping each gradient to global norm 1 (`optim.clip_norm`) brings the onset forward and
    stops the collapses that a constant 3e-3 caused. Unclipped, the first 540 steps' gradients
    have global norms of 2-21 (median 5), the later ones 1-4, and Adam's second moment (b2 =
    0.999, a memory of about a thousand steps) remembers them, which shrinks the steps just
    when the network should start to learn (benchmarks/grad-norms-2026-12-06.txt). A weight
    average (`optim.ema_decay`) on top smooths what is validated and kept. Its decay ramps up
    as (1 + step) / (10 + step), below 0.999 until step 8,990, so in a shorter run (ResNet50's
    2,520 steps, MobileNetV2's 4,680) the ramp alone sets it, and the average's centre lies a
    tenth of the steps back. MobileNetV2 over 36 epochs, three seeds: the mean of the last five
    validations 0.61-0.67 with both (0.58 and 0.59 for the last weights of the two seeds that
    logged them), against 0.34-0.47 with neither (benchmarks/RESULTS.md, "Gradient clipping
    and a weight average").

    What these options do to ImageNet weight import (`model.init_from`): `model.highpass`
    (box3, kv5, constrained: 3 channels in, 3 out) and its clip, `model.kwargs.stem_stride`,
    `model.kwargs.stem_pool`, `model.kwargs.zero_init_residual` (an initialisation the import
    replaces), `model.bn_momentum` and `depthwise_impl` keep every weight's shape, so conv1 and
    the rest import; `model.space_to_depth` > 1 gives conv1 3*b*b input channels, which the
    Keras conv1 does not fit (it breaks the import); `alpha` needs the weights of that width.
    """
    c.dtype = "float32"
    c.data.patch = patch
    c.data.patches_per_image = patches_per_image
    c.data.val_crops = val_crops
    c.model.highpass = "box3"
    c.model.bn_momentum = 0.9
    # A high constant rate after a short warmup, and no plateau decay (see above).
    c.optim.learning_rate = 3e-3
    c.optim.warmup_epochs = 1.0
    c.optim.schedule = "constant"
    c.optim.plateau.patience = 10**6
    c.optim.clip_norm = 1.0
    c.optim.ema_decay = 0.999
    c.batch_size = batch_size
    c.num_epochs = num_epochs
    c.steps_per_epoch = steps_per_epoch
    c.log_every = max(1, min(10, steps_per_epoch // 4 or 10))
    return c


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:preset]` -> its ConfigDict, as `--config` reads it (a relative path
    from the working directory)."""
    path, _, preset = spec.partition(":")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"config file {path} not found")
    module_spec = importlib.util.spec_from_file_location(f"_camjax_config_{os.path.basename(path)[:-3]}", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset)
