"""Refit the calibration of kept runs with this code and score their test sets again.

    python benchmarks/recipe.py ... --keep --runs RUNS      # train once, old scores recorded
    python benchmarks/rescore.py RUNS/*-seed*               # the same models, this code's scores

`--set eval.KEY=VALUE` rewrites that setting in each run's config.json first (what is fitted
after training and how the run is evaluated; the model is untouched).

A change to what is fitted at the end of training (the temperature, the open-set density and
thresholds) is best judged on the same trained models: seeds move a three-minute run by more
than such a change. Each run is calibrated again (`camjax.calibration.calibrate_run`, which
overwrites DIR/calibration.json and DIR/feature_density.npz) and evaluated on its own test set
as `recipe.py` evaluates it; one JSON line per run with the calibration and open-set reports,
and with several runs a `rescore_pooled` line: the calibration over all their known test
images together (`common.pooled_calibration`). With `--ensemble`, the runs trained on the same
cameras of the same dataset (seeds of one `recipe.py --split_seed`) are then evaluated together
as `evaluate --workdir A --workdir B ...` would (a `rescore_ensemble` line each), and the
ensembles' known test images pooled (`rescore_ensemble_pooled`): how far an ensemble's
calibration carries to the cameras' other devices, against its members'.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import tempfile

import common


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+", help="kept training runs (recipe.py --keep)")
    p.add_argument("--name", default="", help="a label for the records")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        help="eval.KEY=VALUE (Python literal), written into each run's config.json before it is calibrated again",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="also evaluate the runs trained on the same cameras of the same dataset as one ensemble",
    )
    args = p.parse_args(argv)
    if any(not item.startswith("eval.") for item in args.set):
        p.error(f"--set takes eval.* settings only (what is fitted after training), got {args.set}")
    from camjax import assembly, calibration, evaluator

    assembly.quiet_libraries()
    known_tests = []  # each run's calibration arrays, pooled at the end
    splits = collections.defaultdict(list)  # (data root, trained cameras) -> the runs
    for workdir in args.workdirs:
        if args.set:
            configure(workdir, args.set)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
            calibration.calibrate_run(workdir)
            result = evaluator.evaluate([workdir], out=os.path.join(workdir, "rescored.csv"))
        common.emit(common.kept_run_record("rescore", workdir, args.name, **common.evaluation_fields(result)))
        known_tests.append(
            common.known_test_predictions(
                os.path.join(workdir, "rescored_probs.npz"), os.path.join(result["data_root"], "test_labels.csv")
            )
        )
        splits[(result["data_root"], tuple(common.run_classes(workdir)))].append(workdir)
    if len(known_tests) > 1:
        common.emit(pooled(args.workdirs, "rescore_pooled", known_tests, args.name))
    if args.ensemble:
        ensembles = [members for members in splits.values() if len(members) > 1]
        known_tests = [evaluate_ensemble(members, args.name) for members in ensembles]
        if len(known_tests) > 1:
            workdirs = [w for members in ensembles for w in members]
            common.emit(pooled(workdirs, "rescore_ensemble_pooled", known_tests, args.name))


def evaluate_ensemble(members, name: str):
    """Evaluates the runs as one ensemble (their probabilities blended as `evaluate` blends
    them; the open-set report is the first run's feature density); emits its record and returns
    its known test images' calibration arrays."""
    from camjax import evaluator

    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(sys.stderr):
        result = evaluator.evaluate(members, out=os.path.join(out, "ensemble.csv"))
        known = common.known_test_predictions(
            os.path.join(out, "ensemble_probs.npz"), os.path.join(result["data_root"], "test_labels.csv")
        )
    common.emit(
        common.record(
            "rescore_ensemble",
            model=common.runs_model(members),
            name=name,
            workdirs=members,
            **common.evaluation_fields(result),
            peak_rss_mb=common.peak_rss_mb(),
            compiles_after_warmup=None,
        )
    )
    return known


def pooled(workdirs, benchmark: str, known_tests, name: str) -> dict:
    return common.pooled_record(benchmark, known_tests, model=common.runs_model(workdirs), name=name, workdirs=workdirs)


def configure(workdir: str, overrides) -> None:
    """Sets eval.* items in the run's config.json, as if it had been trained with them (they
    change what is fitted after training and how it is evaluated, not the model)."""
    path = os.path.join(workdir, "config.json")
    with open(path) as f:
        config = json.load(f)
    common.apply_overrides(config, overrides)
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()
