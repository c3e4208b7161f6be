"""Refit the calibration of kept runs with this code and score their test sets again.

    python benchmarks/recipe.py ... --keep --runs RUNS      # train once, old scores recorded
    python benchmarks/rescore.py RUNS/*-seed*               # the same models, this code's scores

A change to what is fitted at the end of training (the temperature, the open-set density and
thresholds) is best judged on the same trained models: seeds move a three-minute run by more
than such a change. Each run is calibrated again (`camjax.calibration.calibrate_run`, which
overwrites DIR/calibration.json and DIR/feature_density.npz) and evaluated on its own test set
as `recipe.py` evaluates it; one JSON line per run with the calibration and open-set reports.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import common


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workdirs", nargs="+", help="kept training runs (recipe.py --keep)")
    p.add_argument("--name", default="", help="a label for the records")
    args = p.parse_args(argv)
    from camjax import assembly, calibration, evaluator

    assembly.quiet_libraries()
    for workdir in args.workdirs:
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


if __name__ == "__main__":
    main()
