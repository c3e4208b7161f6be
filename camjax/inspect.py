"""`python -m camjax.inspect --workdir DIR`: what a run's checkpoints hold, comparable from the shell.

For the latest and the best checkpoint: step, epoch, validation metrics and sha256 checksums
of the parameters and of the whole train state (parameters, BatchNorm statistics, optimizer,
RNG), so two runs - a resumed one and an uninterrupted one, say - are compared by one diff.
Nothing is built or compiled; the arrays are read as saved.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from absl import logging as absl_logging

from camjax.checkpoint import CHECKPOINT_DIR, Checkpointer, tree_checksum

FLAGS = flags.FLAGS
METRICS = ("val/weighted_accuracy", "val/accuracy")


def describe(ckpt: Checkpointer, step: int) -> dict:
    """Step, epoch, validation metrics and checksums of one checkpoint."""
    state, record = ckpt.restore_raw(step)
    return {
        "step": step,
        "epoch": record.get("epoch"),
        **{k: record.get("metrics", {}).get(k) for k in METRICS},
        "params_sha256": tree_checksum(state["params"]),
        "state_sha256": tree_checksum(state),
    }


def inspect_run(workdir: str, step: int | None = None) -> dict[str, dict]:
    """{'latest': ..., 'best': ...} (or {'step N': ...}) for a workdir."""
    if not os.path.isdir(os.path.join(workdir, CHECKPOINT_DIR)):
        raise FileNotFoundError(f"{workdir}: no {CHECKPOINT_DIR}/ folder (not a camjax.train workdir?)")
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        if step is not None:
            if step not in ckpt.steps():
                raise ValueError(f"{workdir}: no checkpoint at step {step}; saved steps: {ckpt.steps()}")
            return {f"step {step}": describe(ckpt, step)}
        latest = ckpt.latest_step()
        if latest is None:
            raise FileNotFoundError(f"{workdir}: no checkpoint saved yet")
        best = ckpt.best_step()
        described = {latest: describe(ckpt, latest)}
        if best not in described:
            described[best] = describe(ckpt, best)
        return {"latest": described[latest], "best": described[best]}
    finally:
        ckpt.close()


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value[:16]
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    absl_logging.set_verbosity(absl_logging.ERROR)  # orbax's per-restore chatter; read-only warnings
    try:
        rows = inspect_run(FLAGS.workdir, FLAGS.step)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if FLAGS.json:
        for name, row in rows.items():
            print(json.dumps({"checkpoint": name, **row}))
        return 0
    columns = ["step", "epoch", *METRICS, "params_sha256", "state_sha256"]
    table = [["checkpoint", *columns]] + [[name, *(_fmt(row[c]) for c in columns)] for name, row in rows.items()]
    print(f"{FLAGS.workdir}: sha256 of the parameters and of the whole train state (first 16 hex digits)")
    widths = [max(len(r[i]) for r in table) for i in range(len(columns) + 1)]
    for r in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
    return 0


if __name__ == "__main__":  # flags defined only when run, so importing inspect_run clashes with no CLI
    flags.DEFINE_string("workdir", None, "A camjax.train workdir.")
    flags.DEFINE_integer("step", None, "Inspect this checkpoint step instead of latest and best.")
    flags.DEFINE_bool("json", False, "One JSON object per checkpoint instead of a table.")
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
