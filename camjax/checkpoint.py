"""Orbax checkpoints of a run: model/optimizer state plus a JSON record (epoch, plateau,
data-iterator position, validation metrics), keeping the latest and the best k.

Orbax writes each step into a temporary folder and renames it when complete, so a run
killed mid-save never leaves a half checkpoint that looks finished; when the newest
checkpoint cannot be read anyway, `restore` falls back to an older one, says so, and moves
the unreadable one aside.
"""

from __future__ import annotations

import hashlib
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from camjax import faults

CHECKPOINT_DIR = "checkpoints"


class CheckpointWriteError(OSError):
    """A checkpoint could not be written: the message names the folder, the error and the last
    complete checkpoint."""


def tree_checksum(tree) -> str:
    """sha256 of a pytree's leaves (path, dtype, shape and bytes, in path order): equal
    checksums mean bit-identical arrays, whatever device or process wrote them."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    for path, leaf in sorted(leaves, key=lambda item: jax.tree_util.keystr(item[0])):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


class Checkpointer:
    def __init__(
        self,
        workdir: str,
        *,
        keep_best: int = 3,
        best_metric: str = "val/weighted_accuracy",
        async_save: bool = True,
        read_only: bool = False,
    ):
        self.best_metric = best_metric
        self.read_only = read_only
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
        """Saves asynchronously; `record` must be JSON-serialisable. Waits for any earlier save.

        A write that fails (a full or read-only disk; an earlier asynchronous save's failure
        surfaces here or in `wait`) raises CheckpointWriteError naming the folder and the error.
        Orbax renames a step's folder only once it is complete, so the checkpoints before it stay
        intact and a restart resumes from the last of them.
        """
        try:
            faults.check_write(step, os.path.join(str(self.manager.directory), str(step)))
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)),
                metrics={self.best_metric: metrics[self.best_metric]}
                if metrics and metrics.get(self.best_metric) is not None
                else None,
                force=force,
            )
        except OSError as e:
            raise self._write_failure(f"saving step {step}", e) from e
        return bool(saved)

    def _write_failure(self, what: str, error: OSError) -> CheckpointWriteError:
        # An earlier step's asynchronous save may still be committing: which step is the last
        # complete one is known once it has finished (or failed in turn).
        try:
            self.manager.wait_until_finished()
        except OSError:
            pass
        # The failed step's temporary folder is never listed as a step.
        self.manager.reload()
        last = self.latest_step()
        return CheckpointWriteError(
            f"{what} in {self.manager.directory} failed: {error}; the last complete checkpoint is "
            f"{'step ' + str(last) if last is not None else 'none'}: free space (or make the folder writable) "
            "and start the run again, it resumes from there"
        )

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
        errors, unreadable = [], []
        for s in candidates:
            try:
                out = self.manager.restore(
                    s, args=ocp.args.Composite(state=ocp.args.StandardRestore(target), record=ocp.args.JsonRestore())
                )
                if errors:
                    logging.warning("restored checkpoint %d after unreadable newer ones: %s", s, "; ".join(errors))
                    self._set_aside(unreadable)
                return s, out["state"], out["record"]
            except Exception as e:  # noqa: BLE001 - reported with the fallback
                if step is not None:
                    raise RuntimeError(f"checkpoint {s} in {self.manager.directory} cannot be restored: {e}") from e
                errors.append(f"step {s}: {type(e).__name__}: {e}")
                unreadable.append(s)
        raise RuntimeError(f"no readable checkpoint in {self.manager.directory}: " + "; ".join(errors))

    def _set_aside(self, unreadable: list[int]) -> None:
        """Renames unreadable steps to `<step>.unreadable` (kept for a post-mortem, no longer a
        step), so the resumed run can save those steps again."""
        if self.read_only:
            return
        for s in unreadable:
            path = os.path.join(str(self.manager.directory), str(s))
            os.replace(path, f"{path}.unreadable")
            logging.warning("moved unreadable checkpoint %s aside to %s.unreadable", path, path)
        self.manager.reload()

    def restore_raw(self, step: int) -> tuple[dict, dict]:
        """(state as nested dicts of host numpy arrays, record) of `step`, without building the
        model or placing anything on a device (so any topology can read it)."""
        path = os.path.join(str(self.manager.directory), str(step), "state")
        with ocp.PyTreeCheckpointer() as reader:
            tree = reader.metadata(path).item_metadata.tree
            as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
            state = reader.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
        return state, self.record(step)

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except OSError as e:
            raise self._write_failure("an asynchronous checkpoint save", e) from e

    def close(self) -> None:
        self.manager.close()
