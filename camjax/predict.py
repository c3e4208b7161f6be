"""`python -m camjax.predict --workdir RUN [--workdir RUN2 ...] PATH... [--json F] [--csv F]`.

Which camera took these photos, how sure the model is, and whether it is any camera it knows.
PATHs are image files (JPEG, PNG, TIFF) or folders, searched recursively. Each image is read
as stored: its EXIF orientation is reported but not applied (turning the pixels would move
the CFA and JPEG phases the model reads). It is tiled on its JPEG block grid - the file's
own for a JPEG, otherwise the one its pixels show (`camjax.extras.jpeg_grid`), so a crop
that is not aligned is still read on its grid - and predicted with the runs' views, blend
and ensemble exactly as `camjax.evaluate` does, with the runs' calibration
(`camjax.calibration`): the top cameras with calibrated probabilities, the share of tiles
that agree with the answer, the open-set score and the verdict `unknown` when it falls
below the run's threshold. Unreadable files are listed with the reason; the others are
still answered.

Whether a photo was manipulated after the camera (resized, recompressed, gamma-corrected, as
a photo taken off the web is) sets the model's manipulation flag and the group the open-set
score is read in. It comes from the file name (the challenge's `_manip`; anything else is
unaltered) unless `--manipulated` (or `--nomanipulated`) says it for every image. The
`unknown` verdict of a manipulated photo is close to a coin toss (benchmarks/RESULTS.md,
"Unknown cameras: unaltered and manipulated test images apart"), and the table says so.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from absl import app, flags
from tqdm import tqdm

from camjax import assembly, calibration, cli, evaluator
from camjax.data.decode import BAD_FILES, exif_orientation, read_bytes
from camjax.data.sources import IMAGE_EXTENSIONS
from camjax.parallel import DataParallel

log = logging.getLogger("camjax")

cli.define_model_flags()
_TOP = flags.DEFINE_integer("top", 3, "Cameras listed per image.")
_JSON = flags.DEFINE_string("json", None, "Write the answers as JSON to this file ('-': standard output).")
_CSV = flags.DEFINE_string("csv", None, "Write the answers as CSV to this file ('-': standard output).")
_MANIPULATED = flags.DEFINE_bool(
    "manipulated",
    None,
    "Treat every image as manipulated after the camera (resized, recompressed: a photo taken off "
    "the web), or with --nomanipulated as unaltered. Default: from the file name ('_manip').",
)


def find_images(paths) -> tuple[list[str], list[tuple[str, str]]]:
    """(image files, (path, reason) of the PATHs that are none), folders searched recursively."""
    found, problems = [], []
    for p in map(Path, paths):
        if p.is_dir():
            inside = sorted(
                str(f)
                for f in p.rglob("*")
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS and not f.name.startswith(".")
            )
            found += inside
            if not inside:
                problems.append((str(p), f"a folder without images ({', '.join(IMAGE_EXTENSIONS)})"))
        elif p.is_file():
            found.append(str(p))
        else:
            problems.append((str(p), "no such file or folder"))
    return list(dict.fromkeys(found)), problems


def predict_images(
    workdirs,
    paths,
    *,
    tta_name=None,
    agg=None,
    p=2.0,
    weights=None,
    batch_size=None,
    max_tiles=None,
    top=3,
    progress=False,
    manipulated=None,
):
    """One answer per image of `paths` (files or folders), and the (path, reason) of those
    that could not be read. `manipulated` (True/False) states for every image whether it was
    manipulated after the camera; None reads it from each file name."""
    files, problems = find_images(paths)
    if manipulated is None:  # the model's flag and the open-set group, one per file
        groups = evaluator.manipulation_groups([os.path.basename(f) for f in files])
    else:
        groups = np.full(len(files), int(bool(manipulated)))
    dp = DataParallel("sharded")
    restored = evaluator.restore_runs(workdirs, dp)
    agg, batch_size, max_tiles = evaluator.prediction_settings(restored[0], agg, batch_size, max_tiles)
    classes = restored[0].run.classes
    view_sets = [evaluator.views_of(r, w, tta_name) for r, w in zip(restored, workdirs)]
    bar = tqdm(total=len(files) * len(restored), desc="predict", unit="image", disable=not progress, file=sys.stderr)
    phases = evaluator.GridPhases(restored[0].run.patch, bar)
    cal = restored[0].calibration
    score_name = restored[0].config.get("eval", {}).get("open_set_score", "max_prob")
    # The feature-space score reads the first run's embedding, from the same model call.
    density = calibration.FeatureDensity.load(workdirs[0]) if score_name == calibration.FEATURE_SCORE else None
    predicted = [
        evaluator.predict_files(
            r,
            dp,
            files,
            v,
            agg=agg,
            p=p,
            batch_size=batch_size,
            max_tiles=max_tiles,
            pad=True,
            skip_bad=True,
            phase=phases,
            features=density is not None and i == 0,
            manipulated=groups,
        )
        for i, (r, v) in enumerate(zip(restored, view_sets))
    ]
    bar.close()
    probs = evaluator.blend_models(restored, [pr.probs for pr in predicted], view_sets, agg, p, weights)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an unreadable file's NaNs stay NaN
        agreement = np.nanmean(np.stack([pr.agreement for pr in predicted]), axis=0)
    threshold = None if cal is None else cal.thresholds.get(score_name)
    if score_name != calibration.FEATURE_SCORE:
        scores = calibration.OPEN_SET_SCORES[score_name](probs)
    elif density is not None:
        scores = density.score(np.nan_to_num(predicted[0].features), groups)
    else:  # a run calibrated before camjax stored the density: no verdict
        scores, threshold = np.full(len(files), np.nan), None
    answers = []
    for i, path in enumerate(files):
        if not np.isfinite(probs[i]).all():
            problems.append((path, BAD_FILES.get(path, "unreadable")))
            continue
        order = np.argsort(-probs[i])[:top]
        score = float(scores[i])
        answers.append(
            {
                "path": path,
                "camera": classes[order[0]],
                "top": [{"camera": classes[k], "probability": float(probs[i, k])} for k in order],
                "tiles_agreeing": float(agreement[i]),
                "open_set_score": score,
                "open_set_threshold": threshold,
                "verdict": "no calibration" if threshold is None else ("unknown" if score < threshold else "known"),
                "calibrated": cal is not None,
                "manipulated": bool(groups[i]),
                "manipulated_from": (
                    "file name" if manipulated is None else ("--manipulated" if manipulated else "--nomanipulated")
                ),
                "exif_orientation": exif_orientation(read_bytes(path)[0]),
                **phases.found[path],
            }
        )
    return answers, problems


def table(answers, problems) -> str:
    lines = []
    for a in answers:
        tops = ", ".join(f"{t['camera']} {t['probability']:.3f}" for t in a["top"])
        extra = "" if a["exif_orientation"] == 1 else f", EXIF orientation {a['exif_orientation']} (not applied)"
        if a["manipulated"]:
            extra += "; read as manipulated: its open-set verdict is near chance"
        lines.append(
            f"{a['path']}: {a['camera'] if a['verdict'] != 'unknown' else 'unknown camera'} ({a['verdict']}; "
            f"{tops}; tiles agreeing {a['tiles_agreeing']:.2f}; open-set score {a['open_set_score']:.3f}; "
            f"grid {tuple(a['grid_phase'])} from {a['grid_source']}{extra})"
        )
    lines += [f"{path}: not answered: {reason}" for path, reason in problems]
    return "\n".join(lines)


def write_csv(answers, f) -> None:
    w = csv.writer(f)
    w.writerow(
        [
            "path",
            "camera",
            "probability",
            "verdict",
            "open_set_score",
            "tiles_agreeing",
            "grid_row",
            "grid_col",
            "grid_source",
            "exif_orientation",
            "manipulated",
        ]
    )
    for a in answers:
        w.writerow(
            [
                a["path"],
                a["camera"],
                f"{a['top'][0]['probability']:.6f}",
                a["verdict"],
                f"{a['open_set_score']:.6f}",
                f"{a['tiles_agreeing']:.4f}",
                *a["grid_phase"],
                a["grid_source"],
                a["exif_orientation"],
                int(a["manipulated"]),
            ]
        )


def _write(target: str, write) -> None:
    if target == "-":
        write(sys.stdout)
    else:
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        with open(target, "w", newline="") as f:
            write(f)


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("name at least one image file or folder")
    assembly.quiet_libraries()
    assembly.enable_compilation_cache(".cache/jax")
    answers, problems = cli.run_or_exit(
        predict_images,
        flags.FLAGS.workdir,
        paths,
        top=_TOP.value,
        progress=sys.stderr.isatty(),
        manipulated=_MANIPULATED.value,
        **cli.model_options(),
    )
    if _JSON.value:
        _write(
            _JSON.value,
            lambda f: json.dump(
                {"answers": answers, "not_answered": [{"path": p, "reason": r} for p, r in problems]}, f, indent=2
            ),
        )
    if _CSV.value:
        _write(_CSV.value, lambda f: write_csv(answers, f))
    if "-" not in (_JSON.value, _CSV.value):
        print(table(answers, problems))
    return 0 if answers else 1


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
