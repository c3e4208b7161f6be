"""`validate(config)`: every choice and size of a training config, checked before a run writes.

A mistyped enum or a patch too small for the backbone used to surface minutes into a run,
after run.json was written, and the corrected retry was then refused as "another run". Here
each problem is one line naming the field, the value and what would be accepted, and all of
them are reported together. The shape check traces the model abstractly (`jax.eval_shape`):
nothing is allocated or compiled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from camjax import assembly, calibration, models, optim, parallel, postprocess, tta
from camjax.data import grid, train_loader
from camjax.models.head import POOLINGS
from camjax.models.layers import HIGHPASS_KINDS

# Field -> the values it accepts, from the module that reads the field (which raises on other
# values too); this table is what a run is checked against before it starts.
CHOICES = {
    "data.source": assembly.DATA_SOURCES,
    "data.manipulate_on": train_loader.MANIPULATE_ON,
    "data.d4": tuple(tta.VIEW_SETS),
    "data.class_balance": train_loader.CLASS_BALANCE,
    "model.highpass": HIGHPASS_KINDS,
    "model.pooling": POOLINGS,
    "dtype": tuple(models.DTYPES),
    "nonfinite": ("stop", "skip"),  # a non-finite loss: stop the run | skip the batch (steps, trainer)
    "optim.schedule": optim.SCHEDULES,
    "parallel": parallel.MODES,
    "eval.agg": postprocess.AGGREGATIONS,
    "eval.open_set_score": calibration.VERDICT_SCORES,
    "eval.grid": grid.TEST_GRIDS,
}


class ConfigError(ValueError):
    """A training config that cannot run; the message lists every problem, one per line."""


def _get(config, dotted: str):
    value = config
    for part in dotted.split("."):
        value = value[part]
    return value


def _problems(config, num_devices: int) -> list[str]:
    problems = []
    for field, accepted in CHOICES.items():
        value = _get(config, field)
        if value not in accepted:
            problems.append(f"{field}={value!r}: expected one of {', '.join(map(repr, accepted))}")
    if config.model.name not in models.BACKBONES:
        problems.append(f"model.name={config.model.name!r}: expected one of {', '.join(sorted(models.BACKBONES))}")

    def positive(field, value, minimum=1):
        if not isinstance(value, int) or value < minimum:
            problems.append(f"{field}={value!r}: expected an integer >= {minimum}")
            return False
        return True

    positive("batch_size", config.batch_size)
    positive("grad_accum", config.grad_accum)
    positive("num_epochs", config.num_epochs)
    positive("steps_per_epoch", config.steps_per_epoch, minimum=0)
    positive("data.patches_per_image", config.data.patches_per_image)
    positive("data.val_crops", config.data.val_crops)
    positive("eval.calibration_crops", config.eval.get("calibration_crops", 1))
    positive("eval.calibration_unaltered_crops", config.eval.get("calibration_unaltered_crops", 1))
    positive("model.jpeg_trace", config.model.get("jpeg_trace", 0), minimum=0)
    if positive("data.patch", config.data.patch, minimum=8) and config.data.patch % 8:
        problems.append(f"data.patch={config.data.patch}: expected a multiple of 8 (the JPEG grid patches are cut on)")
    block = config.model.space_to_depth
    if positive("model.space_to_depth", block) and isinstance(config.data.patch, int) and config.data.patch % block:
        problems.append(f"model.space_to_depth={block} does not divide data.patch={config.data.patch}")
    if isinstance(config.batch_size, int) and isinstance(config.grad_accum, int) and config.grad_accum > 0:
        if config.batch_size % (config.grad_accum * num_devices):
            problems.append(
                f"batch_size={config.batch_size} must divide into grad_accum ({config.grad_accum}) x "
                f"devices ({num_devices})"
            )
    if not 0.0 < config.eval.false_rejection < 1.0:
        problems.append(f"eval.false_rejection={config.eval.false_rejection!r}: expected a value in (0, 1)")
    for field in ("data.manip_prob", "data.shared_prob", "data.val_fraction"):
        value = _get(config, field)
        if not 0.0 <= value <= 1.0:
            problems.append(f"{field}={value!r}: expected a value in [0, 1]")
    if config.data.shared_prob and config.data.manipulate_on == "device":
        problems.append(
            f"data.shared_prob={config.data.shared_prob!r}: the shared-photo recompression runs on the host only; "
            "expected data.manipulate_on='host'"
        )
    outliers = config.data.get("outliers")
    if outliers:
        weight = config.get("outlier_loss_weight", 0.5)
        if not weight > 0:
            problems.append(f"outlier_loss_weight={weight!r}: expected a weight > 0 for data.outliers")
        if outliers == config.data.root:
            problems.append(f"data.outliers={outliers!r} is data.root: outliers are other cameras' photos")
    momentum = config.model.bn_momentum
    if momentum and not 0.0 < momentum < 1.0:
        problems.append(f"model.bn_momentum={momentum!r}: expected 0 (the family's default) or a value in (0, 1)")
    clip = config.model.get("highpass_clip", 0.0)
    if clip < 0 or (clip and config.model.highpass == "none"):
        problems.append(f"model.highpass_clip={clip!r}: expected 0, or grey levels > 0 with a model.highpass")
    if config.optim.learning_rate < 0:  # 0 is allowed: it freezes the weights (a test of imported weights)
        problems.append(f"optim.learning_rate={config.optim.learning_rate!r}: expected >= 0")
    warmup, decay = config.optim.warmup_epochs, config.optim.get("decay_epochs", 0.0)
    if decay < 0 or (decay and config.optim.schedule == "cosine"):
        problems.append(f"optim.decay_epochs={decay!r}: expected 0, or epochs > 0 with a constant or plateau schedule")
    elif isinstance(config.num_epochs, int) and warmup + decay > config.num_epochs:
        problems.append(
            f"optim.warmup_epochs={warmup!r} + optim.decay_epochs={decay!r}: expected at most num_epochs={config.num_epochs}"
        )
    clip_norm, ema = config.optim.get("clip_norm", 0.0), config.optim.get("ema_decay", 0.0)
    if clip_norm < 0:
        problems.append(f"optim.clip_norm={clip_norm!r}: expected 0 (no clipping) or a global norm > 0")
    if not 0.0 <= ema < 1.0:
        problems.append(f"optim.ema_decay={ema!r}: expected 0 (no weight average) or a decay in (0, 1)")
    if not str(config.optim.plateau.metric).startswith("val/"):
        problems.append(f"optim.plateau.metric={config.optim.plateau.metric!r}: expected a validation metric (val/...)")
    problems += assembly.data_source_problems(config.data)
    return problems


def feature_map_shape(model_config, patch: int, dtype: str = "float32") -> tuple[int, ...]:
    """The backbone's output shape for one `patch` x `patch` image, traced, not computed."""

    def forward():
        classifier = models.create(model_config, 2, dtype=dtype)
        classifier.eval()
        return classifier.feature_map(jnp.zeros((1, patch, patch, 3), jnp.float32))

    return tuple(jax.eval_shape(forward).shape)


def validate(config, num_devices: int | None = None, *, shapes: bool = True) -> None:
    """Raises ConfigError listing every problem of `config`; returns None when it can run.

    `num_devices` defaults to the devices this run would use (all of them, every process).
    `shapes=False` skips tracing the model (1-10 s for the full-size families).
    """
    problems = _problems(config, jax.device_count() if num_devices is None else num_devices)
    if shapes and not problems:  # a model that cannot be built is reported above, not as a trace
        try:
            shape = feature_map_shape(config.model, config.data.patch, config.dtype)
        except Exception as e:  # noqa: BLE001 - any failure to trace is the config's problem to report
            problems.append(
                f"model {config.model.name!r} cannot take data.patch={config.data.patch}: "
                f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            )
        else:
            if min(shape[1:3]) < 1:
                problems.append(
                    f"data.patch={config.data.patch} is too small for model {config.model.name!r}: "
                    f"its feature map would be {shape[1]}x{shape[2]}"
                )
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
