"""PNG plots (matplotlib, Agg): confusion matrix, training curves, accuracy bars, thumbnails, saliency, embeddings.

Figures are built on the object API with an explicit Agg canvas: no pyplot global state,
no display needed, safe to call from a training loop.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import matplotlib
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
                ax.text(
                    j,
                    i,
                    str(cm[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black",
                )
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


def accuracy_bars_png(values: dict[str, float | None], path: str | os.PathLike, title: str = "") -> None:
    """Horizontal bars of accuracies in [0, 1], one per name; a name without examples (None or
    NaN) is labelled n/a."""
    names = list(values)
    acc = np.array([np.nan if values[k] is None else float(values[k]) for k in names], np.float64)
    fig = Figure(figsize=(6, 0.9 + 0.3 * max(len(names), 1)))
    ax = fig.add_subplot()
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(acc), color="tab:blue")
    for i, a in enumerate(acc):
        ax.text(min(np.nan_to_num(a), 1.0) + 0.01, i, "n/a" if np.isnan(a) else f"{a:.3f}", va="center", fontsize=8)
    ax.set_yticks(y, names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.12)
    ax.set_xlabel("accuracy")
    ax.grid(axis="x", alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def thumbnails_png(
    images: Sequence[np.ndarray], captions: Sequence[str], path: str | os.PathLike, cols: int = 6
) -> None:
    """uint8 RGB images in a grid, pixels shown as they are (nearest neighbour), with captions."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(1.8 * cols, 2.3 * rows))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_axis_off()
        if i < len(images):
            ax.imshow(images[i], interpolation="nearest")
            ax.set_title(captions[i], fontsize=7)
    if not len(images):
        fig.axes[0].text(0.5, 0.5, "none", ha="center", va="center")
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.92, wspace=0.08, hspace=0.4)  # tight_layout: slow
    _save(fig, path)


def saliency_png(
    images, grad_x_input, grad_cam, captions: Sequence[str], path: str | os.PathLike, per_row: int = 2
) -> None:
    """Per patch three panels side by side: the patch, gradient x input (signed: red raises the
    score, blue lowers it; scaled to its 99th percentile of |value|) and Grad-CAM blended over
    the patch (scaled to its maximum). Each triple is composed in numpy and drawn as one image:
    a figure of many small axes takes seconds to lay out and draw."""
    n = len(images)
    if not (len(grad_x_input) == len(grad_cam) == len(captions) == n):
        raise ValueError("images, grad_x_input, grad_cam and captions must have one entry per patch")
    rows = max(1, -(-n // per_row))
    height = 2.0 * rows + 0.7  # inches; the top 0.7 hold the figure title and the first captions
    fig = Figure(figsize=(5.0 * per_row, height))
    fig.suptitle("patch | gradient x input | Grad-CAM", fontsize=9, y=1 - 0.12 / height)
    seismic, jet = matplotlib.colormaps["seismic"], matplotlib.colormaps["jet"]
    for i in range(rows * per_row):
        ax = fig.add_subplot(rows, per_row, i + 1)
        ax.set_axis_off()
        if i >= n:
            continue
        image = np.asarray(images[i], np.float64) / 255.0
        gxi, cam = np.asarray(grad_x_input[i], np.float64), np.asarray(grad_cam[i], np.float64)
        scale = float(np.percentile(np.abs(gxi), 99)) or 1.0
        gxi_rgb = seismic(np.clip(gxi / scale, -1.0, 1.0) * 0.5 + 0.5)[..., :3]
        cam_rgb = 0.5 * image + 0.5 * jet(np.clip(cam / (cam.max() or 1.0), 0.0, 1.0))[..., :3]
        gap = np.ones((image.shape[0], max(2, image.shape[1] // 16), 3))
        ax.imshow(np.concatenate([image, gap, gxi_rgb, gap, cam_rgb], axis=1), interpolation="nearest")
        ax.set_title(captions[i], fontsize=7)
    fig.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=1 - 0.7 / height, wspace=0.05, hspace=0.3)
    _save(fig, path)


def embedding_png(
    points,
    labels,
    class_names: Sequence[str],
    path: str | os.PathLike,
    *,
    manipulated=None,
    axis_labels: Sequence[str] = ("component 1", "component 2"),
    title: str = "",
) -> None:
    """A 2-D scatter of examples coloured by class; manipulated examples (if given) as small
    crosses, unaltered ones as dots."""
    points, labels = np.asarray(points, np.float64), np.asarray(labels)
    if points.ndim != 2 or points.shape[1] != 2 or len(points) != len(labels):
        raise ValueError(f"points must be [N, 2] with one label each, got {points.shape} and {labels.shape}")
    manip = np.zeros(len(points), bool) if manipulated is None else np.asarray(manipulated).astype(bool)
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.add_subplot()
    n = len(class_names)
    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20" if n <= 20 else "turbo"]
    for c, name in enumerate(class_names):
        colour = cmap(c if n <= 20 else c / max(n - 1, 1))
        sel = labels == c
        if not sel.any():
            continue
        ax.scatter(*points[sel & ~manip].T, s=14, color=colour, label=name)
        if (sel & manip).any():
            ax.scatter(*points[sel & manip].T, s=8, marker="x", alpha=0.35, linewidths=0.8, color=colour)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, path)


def reliability_png(before: dict, after: dict, path: str | os.PathLike, title: str = "") -> None:
    """Reliability diagrams (`camjax.calibration.reliability`): accuracy against confidence per
    bin, before and after the temperature; the diagonal is perfect calibration."""
    fig = Figure(figsize=(5.5, 4.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="calibrated")
    for data, name, colour in ((before, "before", "tab:red"), (after, "after", "tab:blue")):
        pts = [(c, a) for c, a in zip(data["confidence"], data["accuracy"]) if c is not None and a is not None]
        if pts:
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", color=colour, label=name)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence of the top camera")
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    ax.legend(loc="upper left")
    _save(fig, path)
