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
images together (`common.pooled_calibration`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys

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
    args = p.parse_args(argv)
    if any(not item.startswith("eval.") for item in args.set):
        p.error(f"--set takes eval.* settings only (what is fitted after training), got {args.set}")
    from camjax import assembly, calibration, evaluator

    assembly.quiet_libraries()
    known_tests = []  # each run's calibration arrays, pooled at the end
    for workdir in args.workdirs:
        if args.set:
            configure(workdir, args.set)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
            calibration.calibrate_run(workdir)
            result = evaluator.evaluate([workdir], out=os.path.join(workdir, "rescored.csv"))
        common.emit(
            common.kept_run_record(
                "rescore",
                workdir,
                args.name,
                test_weighted_accuracy={k: common.rounded(v, 4) for k, v in result["tta_subsets"].items()},
                calibration={
                    k: v for k, v in result["calibration"].items() if k in ("before", "after", "ece_if_calibrated")
                },
                open_set=result.get("open_set"),
            )
        )
        known_tests.append(
            common.known_test_predictions(
                os.path.join(workdir, "rescored_probs.npz"), os.path.join(result["data_root"], "test_labels.csv")
            )
        )
    if len(known_tests) > 1:
        common.emit(
            common.pooled_record(
                "rescore_pooled",
                known_tests,
                model=",".join(sorted({common.run_model(w) for w in args.workdirs})),
                name=args.name,
                workdirs=args.workdirs,
            )
        )


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
