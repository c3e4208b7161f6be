"""`python -m camjax.report --workdir DIR [--out FILE.html] [--data_root ROOT]`: one HTML page per run.

The page is self-contained (every plot an inline PNG data URI; no script, font or style from
elsewhere) and shows: training curves; the confusion matrix and accuracy per manipulation and
per class (from the `python -m camjax.evaluate` report JSON in DIR when there is one, else from
the validation set); the validation patches the model got wrong most confidently; saliency
maps (gradient x input and Grad-CAM on the last backbone feature map) for a few patches per
class; and a PCA projection of the pooled features coloured by camera.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import glob
import html
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
from absl import app, flags

from camjax import assembly, evaluator, plots, steps
from camjax import metrics as scoring
from camjax.cameras import MANIPULATION_NAMES
from camjax.data import eval_batches, grid
from camjax.data.decode import BadImageError
from camjax.evaluator import RestoredModel, restore
from camjax.extras import saliency
from camjax.parallel import DataParallel

log = logging.getLogger("camjax")


@dataclasses.dataclass
class ValidationPass:
    """What one pass over the validation crops keeps: small per-patch arrays for all, images
    only for the few patches the page shows."""

    pred: np.ndarray  # [N] predicted class
    label: np.ndarray  # [N]
    manipulation: np.ndarray  # [N] index into MANIPULATION_NAMES
    features: np.ndarray  # [N, F] pooled backbone features
    mistakes: list[dict]  # the most confident wrong predictions, one per file, best first
    picks: list[dict]  # unaltered patches for saliency, `per_class` per class, in class order
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # unreadable files: (path, reason)


def _forward_step(model_def: steps.ModelDef):
    """(state, batch) -> class probabilities and pooled features, in one model call."""

    def step(state, batch):
        feats, logits = steps.predict_features_and_logits(
            *steps.inference_weights(state), batch["image"], batch["is_manipulated"], model_def=model_def
        )
        return {"probs": jax.nn.softmax(logits.astype(np.float32), -1), "features": feats}

    return step


def run_validation(
    restored: RestoredModel, dp: DataParallel, records, read, *, per_class: int, mistakes: int, batch_size: int
) -> ValidationPass:
    """Predicts every validation crop (each under the 9 manipulations, as in training)."""
    num_classes = len(restored.run.classes)
    batch_size = dp.eval_batch_size(batch_size)
    predict = dp.predict(_forward_step(restored.model_def))
    batches = eval_batches.make_eval_batches(records, restored.config.data, batch_size=batch_size, read=read)
    preds, labels, manips, feats = [], [], [], []
    worst: dict[int, dict] = {}  # file -> its most confident mistake
    picks: dict[int, list[dict]] = {c: [] for c in range(num_classes)}
    for batch in batches:
        out = predict(
            restored.state, dp.put_batch({"image": batch["image"], "is_manipulated": batch["is_manipulated"]})
        )
        out = {k: dp.fetch_per_example(v) for k, v in out.items()}
        keep = np.flatnonzero(batch["mask"] > 0)
        probs = out["probs"][keep]
        pred = probs.argmax(-1)
        preds.append(pred)
        labels.append(batch["label"][keep])
        manips.append(batch["manipulation"][keep])
        feats.append(out["features"][keep])
        for j, i in enumerate(keep):
            patch = dict(
                image=batch["image"][i],
                label=int(batch["label"][i]),
                pred=int(pred[j]),
                prob=float(probs[j, pred[j]]),
                manipulation=int(batch["manipulation"][i]),
                is_manipulated=float(batch["is_manipulated"][i]),
                file=int(batch["record_index"][i]),
            )
            if patch["pred"] != patch["label"] and patch["prob"] > worst.get(patch["file"], {}).get("prob", -1.0):
                worst[patch["file"]] = patch
            if patch["manipulation"] == 0 and len(picks[patch["label"]]) < per_class:
                picks[patch["label"]].append(patch)
    if batches.skipped:
        log.warning("report: skipped %d unreadable validation files", len(batches.skipped))
    if not preds:
        raise ValueError("no readable validation file to report on")
    return ValidationPass(
        pred=np.concatenate(preds),
        label=np.concatenate(labels),
        manipulation=np.concatenate(manips),
        features=np.concatenate(feats).astype(np.float64),
        mistakes=sorted(worst.values(), key=lambda p: -p["prob"])[:mistakes],
        picks=[p for c in range(num_classes) for p in picks[c]],
        skipped=list(batches.skipped),
    )


def saliency_maps(restored: RestoredModel, picks: list[dict]) -> dict[str, np.ndarray]:
    """Gradient x input and Grad-CAM of each picked patch, explaining its true class."""
    fn = jax.jit(
        lambda params, model_state, images, flags, targets: saliency.classifier_saliency(
            restored.model_def, params, model_state, images, flags, targets
        )
    )
    out = fn(
        *steps.inference_weights(restored.state),
        np.stack([p["image"] for p in picks]),
        np.array([p["is_manipulated"] for p in picks], np.float32),
        np.array([p["label"] for p in picks], np.int32),
    )
    return {k: np.asarray(v) for k, v in out.items()}


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Projection of [N, F] onto its first two principal components, and the fraction of
    variance each explains (numpy SVD of the centred features)."""
    x = np.asarray(features, np.float64)
    x = x - x.mean(axis=0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    var = s**2
    ratio = var / var.sum() if var.sum() > 0 else np.zeros_like(var)
    k = min(2, vt.shape[0])
    points = np.zeros((len(x), 2))
    points[:, :k] = x @ vt[:k].T
    return points, np.pad(ratio[:k], (0, 2 - k))


def find_test_report(workdir: str, classes: list[str]) -> tuple[str, dict] | None:
    """The newest `*_report.json` of `python -m camjax.evaluate` in `workdir` made for these classes."""
    for path in sorted(glob.glob(os.path.join(workdir, "*_report.json")), key=os.path.getmtime, reverse=True):
        try:
            with open(path) as f:
                report = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            log.warning("report: ignoring %s: %s", path, e)
            continue
        if isinstance(report, dict) and {"confusion", "per_class", "per_manipulation"} <= set(report):
            if list(report["per_class"]) == list(classes):
                return path, report
            log.warning("report: ignoring %s: made for classes %s", path, list(report["per_class"]))
    return None


def _data_uri(png_path: str) -> str:
    with open(png_path, "rb") as f:
        return "data:image/png;base64," + base64.b64encode(f.read()).decode("ascii")


_STYLE = """body{font-family:sans-serif;max-width:1100px;margin:1em auto;padding:0 1em;color:#222}
img{max-width:100%;height:auto;display:block;margin:.5em 0}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}
h2{border-bottom:1px solid #ddd;margin-top:1.5em}.note{color:#555;font-size:90%}"""


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table>{cells}</table>"


def render_html(sections: list[tuple[str, str, list[tuple[str, str]]]], title: str, summary) -> str:
    """sections: (heading, note, [(png path, alt text)])."""
    parts = [
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
        _table(summary),
    ]
    for heading, note, images in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><p class='note'>{html.escape(note)}</p>")
        parts += [f"<img src='{_data_uri(png)}' alt='{html.escape(alt, quote=True)}'>" for png, alt in images]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_report(
    workdir, out=None, data_root=None, *, max_files: int | None = 100, per_class: int = 2, mistakes: int = 12
) -> Path:
    """Writes the run's HTML page (default DIR/report.html) and returns its path.

    The validation pass reads at most `max_files` validation files (evenly spaced over the
    classes), each with its `data.val_crops` crops under all 9 manipulations; saliency maps are
    computed for `per_class` unaltered patches of each class; `mistakes` thumbnails at most.
    """
    workdir = os.fspath(workdir)
    out = Path(out or os.path.join(workdir, "report.html"))
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(metrics_path):
        raise FileNotFoundError(f"{metrics_path} not found: {workdir} is not a camjax training directory")
    dp = DataParallel("sharded")
    restored = restore(workdir, dp)
    run, classes = restored.run, restored.run.classes
    records, read = evaluator.validation_records(restored, data_root)
    records = grid.evenly_spaced(records, max_files)  # records are grouped by class: all classes stay
    val = run_validation(
        restored, dp, records, read, per_class=per_class, mistakes=mistakes, batch_size=restored.config.eval.batch_size
    )
    val_report = scoring.report(val.pred, val.label, val.manipulation, classes)
    found = find_test_report(workdir, classes)
    if found:
        scope, scores, source = "test set", found[1], f"test set, from {os.path.basename(found[0])}"
    else:
        scope, scores = "validation set", val_report
        source = f"validation set: {len(records)} files x {restored.config.data.val_crops} crops x 9 manipulations"

    summary = [
        ("workdir", os.path.abspath(workdir)),
        ("model", run.model["name"]),
        ("checkpoint step", str(restored.step)),
        ("classes", str(len(classes))),
        ("patch", f"{run.patch} px"),
        ("dataset", data_root or run.data_root),
        ("validation accuracy", scoring.format_score(val_report["accuracy"])),
        ("validation weighted accuracy", scoring.format_score(val_report["weighted_accuracy"])),
    ]
    if val.skipped:
        summary.append(
            (
                "unreadable validation files (skipped)",
                "; ".join(f"{os.path.basename(p)}: {why}" for p, why in val.skipped),
            )
        )
    unscored = [c for c, acc in val_report["per_class"].items() if acc is None]
    if unscored:
        summary.append(("classes without a readable validation file", ", ".join(unscored)))
    if found:
        summary.append(("test weighted accuracy", scoring.format_score(scores["weighted_accuracy"])))
    summary.append(("written", datetime.datetime.now().isoformat(timespec="seconds")))

    with tempfile.TemporaryDirectory() as tmp:

        def png(name):
            return os.path.join(tmp, f"{name}.png")

        plots.curves_png(metrics_path, png("curves"))
        plots.confusion_png(
            np.array(scores["confusion"]),
            classes,
            png("confusion"),
            title=f"{scope}: weighted accuracy {scores['weighted_accuracy']:.4f}",
        )
        plots.accuracy_bars_png(
            {m: scores["per_manipulation"].get(m) for m in MANIPULATION_NAMES},
            png("manip"),
            "accuracy per manipulation",
        )
        plots.accuracy_bars_png(scores["per_class"], png("class"), "accuracy per class")
        plots.thumbnails_png(
            [m["image"] for m in val.mistakes],
            [
                f"true {classes[m['label']]}\npred {classes[m['pred']]} {m['prob']:.2f}\n{MANIPULATION_NAMES[m['manipulation']]}"
                for m in val.mistakes
            ],
            png("mistakes"),
        )
        sections = [
            ("Training curves", f"from {metrics_path}", [(png("curves"), "loss, accuracy and learning rate")]),
            (
                "Scores",
                source,
                [
                    (png("confusion"), "confusion matrix"),
                    (png("manip"), "accuracy per manipulation"),
                    (png("class"), "accuracy per class"),
                ],
            ),
            (
                "Most confident mistakes",
                f"validation patches, at most one per file: {len(val.mistakes)} shown",
                [(png("mistakes"), "most confident mistakes")],
            ),
        ]
        if restored.calibration is not None:
            c = restored.calibration
            plots.reliability_png(
                c.reliability_before,
                c.reliability_after,
                png("reliability"),
                title=f"ECE {c.before['ece']:.4f} -> {c.after['ece']:.4f}, temperature {c.temperature:.3f}",
            )
            sections.append(
                (
                    "Calibration",
                    f"{c.samples} test-like validation samples (DIR/calibration.json, checkpoint step {c.step}); "
                    f"NLL {c.before['nll']:.4f} -> {c.after['nll']:.4f}",
                    [(png("reliability"), "reliability diagram before and after calibration")],
                )
            )
        if val.picks:
            maps = saliency_maps(restored, val.picks)
            plots.saliency_png(
                [p["image"] for p in val.picks],
                maps["grad_x_input"],
                maps["grad_cam"],
                [f"{classes[p['label']]}\npred {classes[p['pred']]} {p['prob']:.2f}" for p in val.picks],
                png("saliency"),
                per_row=max(1, per_class),
            )
            sections.append(
                (
                    "Saliency",
                    "what raises the true class's logit, on unaltered validation patches: "
                    "gradient x input on the preprocessed patch (summed over colours) and Grad-CAM on the "
                    "last backbone feature map",
                    [(png("saliency"), "saliency maps")],
                )
            )
        points, ratio = pca_2d(val.features)
        plots.embedding_png(
            points,
            val.label,
            classes,
            png("pca"),
            manipulated=val.manipulation != 0,
            axis_labels=[f"PC{i + 1} ({r:.0%} of variance)" for i, r in enumerate(ratio)],
            title="pooled features, PCA",
        )
        sections.append(
            (
                "Feature space",
                f"{len(points)} validation patches; dots unaltered, crosses manipulated",
                [(png("pca"), "PCA of pooled features")],
            )
        )
        page = render_html(sections, f"camjax run report: {os.path.basename(os.path.abspath(workdir))}", summary)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(page, encoding="utf-8")
    os.replace(tmp_out, out)
    return out


def _define_flags():
    """The command's flags, defined only when run as a command: `camjax.demo` imports
    `write_report` and has its own --workdir."""
    flags.DEFINE_string("workdir", None, "Training run directory.", required=True)
    flags.DEFINE_string("out", None, "HTML file to write (default: DIR/report.html).")
    flags.DEFINE_string("data_root", None, "Dataset root for the validation patches (default: the run's).")
    flags.DEFINE_integer("max_files", 100, "At most this many validation files (0: all).")
    flags.DEFINE_integer("per_class", 2, "Saliency maps per class.")
    flags.DEFINE_integer("mistakes", 12, "Most confident mistakes shown.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    assembly.quiet_libraries()
    assembly.enable_compilation_cache(".cache/jax")
    f = flags.FLAGS
    try:
        path = write_report(
            f.workdir, f.out, f.data_root, max_files=f.max_files or None, per_class=f.per_class, mistakes=f.mistakes
        )
    except (BadImageError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    _define_flags()
    app.run(main)
