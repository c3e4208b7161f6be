"""Orbax checkpoints of a run: model/optimizer state plus a JSON record (epoch, plateau,
data-iterator position, validation metrics), keeping the latest and the best k.

Orbax writes each step into a temporary folder and renames it when complete, so a run
killed mid-save never leaves a half checkpoint that looks finished; when the newest
checkpoint cannot be read anyway, `restore` falls back to an older one and says so.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

CHECKPOINT_DIR = "checkpoints"


class Checkpointer:
    def __init__(self, workdir: str, *, keep_best: int = 3, best_metric: str = "val/weighted_accuracy",
                 async_save: bool = True, read_only: bool = False):
        self.best_metric = best_metric
        preservation = policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=1),
                policies.BestN(
                    get_metric_fn=lambda m: m[best_metric], n=keep_best, keep_checkpoints_without_metrics=False
                ),
            ]
        )
        self.manager = ocp.CheckpointManager(
            os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
            item_names=("state", "record"),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=preservation,
                enable_async_checkpointing=async_save,
                read_only=read_only,
                create=not read_only,
            ),
        )

    def save(self, step: int, state, record: dict, metrics: dict | None = None, *, force: bool = False) -> bool:
        """Saves asynchronously; `record` must be JSON-serialisable. Waits for any earlier save."""
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
            metrics={self.best_metric: metrics[self.best_metric]} if metrics and self.best_metric in metrics else None,
            force=force,
        )
        return bool(saved)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def record(self, step: int) -> dict:
        return self.manager.restore(step, args=ocp.args.Composite(record=ocp.args.JsonRestore()))["record"]

    def best_step(self) -> int | None:
        """The step with the highest best_metric among saved checkpoints (latest when none has it)."""
        scored = []
        for step in self.steps():
            value = self.record(step).get("metrics", {}).get(self.best_metric)
            if value is not None:
                scored.append((value, step))
        if scored:
            return max(scored)[1]
        return self.latest_step()

    def restore(self, target, step: int | None = None) -> tuple[int, Any, dict]:
        """Restores (step, state, record) into `target` (abstract arrays with shardings).

        With no step: the latest readable checkpoint, falling back to older ones.
        """
        candidates = [step] if step is not None else list(reversed(self.steps()))
        if not candidates:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        errors = []
        for s in candidates:
            try:
                out = self.manager.restore(
                    s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore())
                )
                if errors:
                    logging.warning("restored checkpoint %d after unreadable newer ones: %s", s, "; ".join(errors))
                return s, out["state"], out["record"]
            except Exception as e:  # noqa: BLE001 - reported with the fallback
                if step is not None:
                    raise RuntimeError(f"checkpoint {s} in {self.manager.directory} cannot be restored: {e}") from e
                errors.append(f"step {s}: {type(e).__name__}: {e}")
        raise RuntimeError(f"no readable checkpoint in {self.manager.directory}: " + "; ".join(errors))

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()
