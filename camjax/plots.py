"""PNG plots of a confusion matrix and of a training run's curves (matplotlib, Agg).

Figures are built on the object API with an explicit Agg canvas: no pyplot global state,
no display needed, safe to call from a training loop.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from camjax.postprocess import atomic_write


def _save(fig: Figure, path: str | os.PathLike) -> None:
    FigureCanvasAgg(fig)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=100, bbox_inches="tight")


def confusion_png(confusion, class_names: Sequence[str], path: str | os.PathLike, title: str = "") -> None:
    """Rows (true classes) normalised to sum to 1 for the colours; raw counts annotated."""
    cm = np.asarray(confusion, dtype=np.int64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix has shape {cm.shape}, expected ({n}, {n}) for {n} class names")
    support = cm.sum(axis=1, keepdims=True)
    norm = cm / np.maximum(support, 1)
    side = 1.5 + 0.55 * n
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    for i in range(n):
        for j in range(n):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    _save(fig, path)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl; a truncated last line (run killed mid-write) is skipped."""
    path = os.fspath(path)
    with open(path) as f:
        lines = [(i, line) for i, line in enumerate(f, start=1) if line.strip()]
    records = []
    for pos, (i, line) in enumerate(lines):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if pos == len(lines) - 1:
                break
            raise ValueError(f"{path}:{i}: not a JSON object: {e}") from None
    return records


# Panels: (title, keys plotted, log-scale y).
_PANELS = (
    ("loss", ("train/loss", "train/aux_loss", "val/loss"), False),
    ("accuracy", ("train/accuracy", "val/accuracy", "val/weighted_accuracy"), False),
    ("learning rate", ("lr",), True),
)


def curves_png(metrics_jsonl_path: str | os.PathLike, path: str | os.PathLike) -> None:
    """Loss, accuracy (train and validation) and learning rate against step; keys a run
    did not log and records without `step` are skipped."""
    records = [r for r in read_metrics(metrics_jsonl_path) if "step" in r]
    panels = []
    for title, keys, log in _PANELS:
        series = {}
        for key in keys:
            pts = [(r["step"], r[key]) for r in records if isinstance(r.get(key), (int, float))]
            if pts:
                series[key] = np.asarray(pts, dtype=np.float64).T
        if series:
            panels.append((title, series, log))
    fig = Figure(figsize=(5 * max(len(panels), 1), 3.8))
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, f"no metrics in {os.fspath(metrics_jsonl_path)}", ha="center", va="center")
        ax.set_axis_off()
    for i, (title, series, log) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), i)
        for key, (steps, values) in series.items():
            ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=key)
        if log and any(v > 0 for _, values in series.values() for v in values):  # lr 0 has no log
            ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
