"""`python -m camjax.pseudolabel`: confident test predictions as an extra training source.

    python -m camjax.pseudolabel --workdir DIR [--workdir DIR2 ...] --data_root ROOT \\
        --threshold 0.95 --out PSEUDO_DIR [--prnu] [--nobalance]

Predicts the test set exactly as `camjax.evaluate` does (TTA, blending, optional PRNU
clusters, balancing), keeps the files whose assigned class has a blended probability of at
least `threshold`, and copies their original bytes (never re-encoded) to
PSEUDO_DIR/train/<class>/<test file name>, so the name still says `_unalt` / `_manip`.
PSEUDO_DIR/manifest.csv lists fname, camera, confidence, is_manipulated and source path.
Train the next round on them with `--config.data.extra=PSEUDO_DIR`: they join the training
split only, validation stays on the original files.
"""

from __future__ import annotations

import csv
import os
import shutil
import sys

import numpy as np
from absl import app, flags

from camjax import assembly, cli, evaluator, postprocess
from camjax.cameras import is_manipulated_from_fname
from camjax.data import sources
from camjax.data.decode import BadImageError

MANIFEST_COLUMNS = ("fname", "camera", "confidence", "is_manipulated", "source")


def select(fnames, classes, probs: np.ndarray, assigned, threshold: float, *, include_manipulated: bool = True):
    """(fname, class, confidence) of the files whose assigned class has probability >= threshold."""
    chosen = []
    index = {c: i for i, c in enumerate(classes)}
    for f, p, camera in zip(fnames, probs, assigned):
        confidence = float(p[index[camera]])
        if not np.isfinite(confidence) or confidence < threshold:
            continue
        if not include_manipulated and is_manipulated_from_fname(f):
            continue
        chosen.append((f, camera, confidence))
    return chosen


def write_source(out: str, test_dir: str, chosen) -> str:
    """Copies the chosen test files into out/train/<class>/ byte for byte; writes the manifest."""
    train_dir = os.path.join(out, "train")
    if os.path.isdir(train_dir) and any(os.scandir(train_dir)):
        raise FileExistsError(f"{train_dir} is not empty: write each pseudo-label round to a new folder")
    rows = []
    for fname, camera, confidence in chosen:
        src = os.path.join(test_dir, fname)
        os.makedirs(os.path.join(train_dir, camera), exist_ok=True)
        shutil.copyfile(src, os.path.join(train_dir, camera, fname))
        flag = is_manipulated_from_fname(fname)
        rows.append((fname, camera, f"{confidence:.6f}", "" if flag is None else int(flag), os.path.abspath(src)))
    manifest = os.path.join(out, "manifest.csv")
    with postprocess.atomic_write(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return manifest


def pseudolabel(
    workdirs,
    *,
    data_root: str,
    out: str,
    threshold: float = 0.95,
    balance: bool = True,
    include_manipulated: bool = True,
    **evaluate_kw,
) -> dict:
    """One round: evaluate (predictions kept under out/predictions*), select, copy. Returns the
    evaluation result with `pseudo_labels` (count), `per_class` counts and `manifest` added."""
    os.makedirs(out, exist_ok=True)
    result = evaluator.evaluate(
        workdirs, data_root=data_root, balance=balance, out=os.path.join(out, "predictions.csv"), **evaluate_kw
    )
    assigned = postprocess.read_submission(result["out"])
    saved = np.load(os.path.join(out, "predictions_probs.npz"))
    fnames, classes = [str(f) for f in saved["fnames"]], [str(c) for c in saved["classes"]]
    chosen = select(
        fnames,
        classes,
        saved["probs"],
        [assigned[f] for f in fnames],
        threshold,
        include_manipulated=include_manipulated,
    )
    result["manifest"] = write_source(out, os.path.join(data_root, "test"), chosen)
    result["pseudo_labels"] = len(chosen)
    result["per_class"] = {c: sum(1 for _, k, _ in chosen if k == c) for c in classes}
    return result


FLAGS = flags.FLAGS


def _define_flags() -> None:
    """Only when run: importing pseudolabel() next to another entry point defines no clashing flags."""
    cli.define_prediction_flags(data_root_help="Dataset root whose test/ files are pseudo-labelled.")
    flags.DEFINE_string("out", None, "Output folder: train/<class>/..., manifest.csv, predictions*.")
    flags.DEFINE_float("threshold", 0.95, "Keep files whose assigned class has at least this probability.")
    flags.DEFINE_bool("balance", True, "Assign classes with the count-balanced assignment (else argmax).")
    flags.DEFINE_bool(
        "include_manipulated",
        True,
        "Also keep files named *_manip (they train flagged as manipulated, never manipulated again).",
    )


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    assembly.quiet_libraries()
    assembly.enable_compilation_cache(".cache/jax")
    options = cli.prediction_options()
    try:
        sources.list_test_files(FLAGS.data_root)
        result = pseudolabel(
            FLAGS.workdir,
            out=FLAGS.out,
            threshold=FLAGS.threshold,
            balance=FLAGS.balance,
            include_manipulated=FLAGS.include_manipulated,
            **options,
        )
    except (BadImageError, FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(", ".join(f"{c}={n}" for c, n in result["per_class"].items()))
    print(f"wrote {result['pseudo_labels']} pseudo-labels to {os.path.join(FLAGS.out, 'train')}; {result['manifest']}")
    print(f"train on them: --config.data.extra={FLAGS.out}")
    return 0


if __name__ == "__main__":
    _define_flags()
    flags.mark_flags_as_required(["workdir", "data_root", "out"])
    app.run(main)
