"""What telling `predict` that a photo was manipulated is worth: the same run's answers on its
test set read three ways.

    python benchmarks/manipulation_flag.py RUN [RUN2 ...] [--root TEST_ROOT] [--name LABEL]

The models are trained with a flag that says whether a patch was manipulated after the camera
(resized, recompressed, gamma-corrected), and `predict` sets it from the file name (the
challenge's `_manip`) unless `--manipulated` / `--nomanipulated` says it for every photo. A
user's photo taken off the web has no such name. So each run's test images (ROOT/test, with
ROOT/test_labels.csv naming each image's camera and manipulation; default: the run's own
dataset) are answered by `camjax.predict.predict_images` as named, all read as unaltered, and
all read as manipulated, and the top camera scored against the labels: accuracy on the known
cameras' unaltered and manipulated images, and per manipulation. One JSON line per run
(`"benchmark": "manipulation_flag"`); with several runs, they are answered as one ensemble,
as `predict --workdir A --workdir B` does. Nothing is timed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os

import common

READINGS = {"as named": None, "all unaltered": False, "all manipulated": True}


def accuracies(answers, labels: dict[str, tuple[str, str]], classes) -> dict:
    """Top-camera accuracy over the known cameras' images: unaltered, manipulated and per
    manipulation, from `predict`'s answers and {file name: (camera, manipulation)}."""
    hits = collections.defaultdict(list)
    for a in answers:
        camera, manipulation = labels[os.path.basename(a["path"])]
        if camera not in classes:
            continue
        right = a["camera"] == camera
        hits["unaltered" if manipulation == "none" else "manipulated"].append(right)
        hits[manipulation].append(right)
    return {
        "images": {k: len(v) for k, v in hits.items()},
        "accuracy": {k: common.rounded(sum(v) / len(v), 4) for k, v in hits.items()},
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+", help="training runs, answered as one ensemble")
    p.add_argument("--root", default=None, help="test data root (default: the first run's dataset)")
    p.add_argument("--name", default="", help="a label for the record")
    args = p.parse_args(argv)
    from camjax import assembly, postprocess, predict
    from camjax.data import sources

    assembly.quiet_libraries()
    with open(os.path.join(args.workdirs[0], "run.json")) as f:
        run = json.load(f)
    root = args.root or run["data_root"]
    labels = {f: (camera, m) for f, camera, m in postprocess.read_labels(os.path.join(root, "test_labels.csv"))}
    files = sources.list_test_files(root)
    readings = {}
    for reading, manipulated in READINGS.items():
        answers, problems = predict.predict_images(args.workdirs, files, manipulated=manipulated)
        readings[reading] = {**accuracies(answers, labels, run["classes"]), "not_answered": len(problems)}
    common.emit(
        common.kept_run_record(
            "manipulation_flag",
            args.workdirs[0],
            args.name,
            workdirs=args.workdirs,
            root=root,
            readings=readings,
        )
    )


if __name__ == "__main__":
    main()
