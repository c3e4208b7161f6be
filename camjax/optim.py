"""The optimizer (Adam) with a learning-rate schedule and a host-driven reduce-on-plateau scale.

Why not `optax.contrib.reduce_on_plateau`: the recipe reduces at *epoch* granularity on a
*validation* metric that is maximised, with Keras' cooldown and min_lr semantics. That value
exists only on the host after validation, so a small tracker decides there and writes one
scalar (`plateau_scale`) into the optimizer state; the jitted step never changes shape.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import optax

SCHEDULES = ("plateau", "cosine", "constant")  # optim.schedule (the plateau scale applies on top of each)


def learning_rate_schedule(optim_config, steps_per_epoch: int, total_steps: int) -> optax.Schedule:
    """Base schedule (before the plateau scale): linear warmup, then constant or cosine.

    `decay_epochs` > 0 (constant and plateau only) ends a constant rate with a linear decay to
    zero over that many final epochs (warmup-stable-decay): a from-scratch backbone needs the
    high rate until it leaves chance, which a cosine from the start cuts short. The decay is
    an option, not a preset's: on MobileNetV2 `quick` it did not end above the constant rate
    (benchmarks/RESULTS.md, "Full-size backbones on a Zen 5 VM"). A run stopped early by
    `max_train_seconds` never reaches it.
    """
    lr = optim_config.learning_rate
    warmup = int(round(optim_config.get("warmup_epochs", 0.0) * steps_per_epoch))
    decay = int(round(optim_config.get("decay_epochs", 0.0) * steps_per_epoch))
    kind = optim_config.schedule
    if kind not in SCHEDULES:
        raise ValueError(f"unknown optim.schedule {kind!r}; expected plateau, cosine or constant")
    if decay and kind == "cosine":
        raise ValueError("optim.decay_epochs applies to the constant and plateau schedules; cosine decays already")
    if kind == "cosine":
        after = optax.cosine_decay_schedule(lr, max(1, total_steps - warmup))
    elif decay > 0:
        stable = max(0, total_steps - warmup - decay)
        after = optax.join_schedules([optax.constant_schedule(lr), optax.linear_schedule(lr, 0.0, decay)], [stable])
    else:
        after = optax.constant_schedule(lr)
    if warmup <= 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(optim_config, steps_per_epoch: int, total_steps: int) -> optax.GradientTransformation:
    """Adam (with decoupled weight decay when asked) on the schedule times the plateau scale;
    `clip_norm` > 0 first scales the whole gradient down to that global norm at most."""
    schedule = learning_rate_schedule(optim_config, steps_per_epoch, total_steps)
    parts = []
    if optim_config.get("clip_norm", 0.0) > 0:
        parts.append(optax.clip_by_global_norm(optim_config.clip_norm))
    parts.append(optax.scale_by_adam(b1=optim_config.b1, b2=optim_config.b2))
    if optim_config.weight_decay > 0:
        parts.append(optax.add_decayed_weights(optim_config.weight_decay))
    parts += [
        optax.scale_by_learning_rate(schedule),
        optax.inject_hyperparams(optax.scale)(step_size=1.0),  # the plateau scale, set by the host
    ]
    return optax.chain(*parts)


def get_plateau_scale(opt_state) -> float:
    return float(np.asarray(jax.device_get(optax.tree_utils.tree_get(opt_state, "step_size"))).ravel()[0])


def set_plateau_scale(opt_state, scale: float):
    """Returns opt_state with the plateau scale replaced, keeping each leaf's shape and sharding."""
    old = optax.tree_utils.tree_get(opt_state, "step_size")
    new = jax.device_put(np.full(old.shape, scale, old.dtype), old.sharding)
    return optax.tree_utils.tree_set(opt_state, step_size=new)


@dataclasses.dataclass
class PlateauTracker:
    """Keras `ReduceLROnPlateau` semantics on a scale of the base learning rate.

    After each epoch call `update(value)`: when the monitored value has not improved by
    `min_delta` for `patience` epochs, the scale is multiplied by `factor` (not below
    `min_scale`), then `cooldown` epochs pass before counting again.
    """

    patience: int = 5
    factor: float = 0.5
    cooldown: int = 0
    min_scale: float = 0.0
    min_delta: float = 1e-4
    mode: str = "max"
    scale: float = 1.0
    best: float | None = None
    wait: int = 0
    cooldown_counter: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise ValueError(f"plateau mode must be 'max' or 'min', got {self.mode!r}")
        if not 0.0 < self.factor < 1.0:
            raise ValueError(f"plateau factor must be in (0, 1), got {self.factor}")

    @classmethod
    def from_config(cls, plateau_config, base_lr: float) -> PlateauTracker:
        metric = plateau_config.metric
        return cls(
            patience=plateau_config.patience,
            factor=plateau_config.factor,
            cooldown=plateau_config.cooldown,
            min_scale=plateau_config.min_lr / base_lr if base_lr > 0 else 0.0,
            min_delta=plateau_config.min_delta,
            mode="min" if "loss" in metric else "max",
        )

    def _improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def update(self, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"plateau metric is not finite: {value}")
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._improved(value):
            self.best = value
            self.wait = 0
        elif self.cooldown_counter == 0:
            self.wait += 1
            if self.wait >= self.patience and self.scale > self.min_scale:
                self.scale = max(self.scale * self.factor, self.min_scale)
                self.cooldown_counter = self.cooldown
                self.wait = 0
        return self.scale

    def state_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_state_dict(cls, state: dict) -> PlateauTracker:
        return cls(**state)
