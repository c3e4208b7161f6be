"""`python -m camjax.demo`: the README's end-to-end run on the embedded synthetic cameras.

Generates the synthetic dataset (once), trains `configs/camnet.py:quick`, evaluates the test
set with the D4 views it trained with, writes the run's HTML report, and prints the score and
the time each stage took.
"""

from __future__ import annotations

import os
import time

from absl import app, flags

from camjax import evaluator, report, trainer
from configs import camnet

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Run directory (a fresh one each demo).")
_FRESH = flags.DEFINE_bool("fresh", True, "Delete an earlier demo run in --workdir first.")


def main(argv):
    del argv
    trainer.quiet_libraries()
    config = camnet.get_config("quick")
    workdir = _WORKDIR.value
    if _FRESH.value and os.path.isdir(workdir):
        import shutil

        shutil.rmtree(workdir)
    t0 = time.time()
    root = trainer.resolve_data_root(config.data)
    t1 = time.time()
    print(f"[demo] synthetic dataset: {root} ({t1 - t0:.0f} s)")
    val = trainer.train_and_evaluate(config, workdir)
    t2 = time.time()
    print(f"[demo] trained camnet:quick in {t2 - t1:.0f} s: val/weighted_accuracy={val['val/weighted_accuracy']:.4f}")
    result = evaluator.evaluate(
        [workdir], data_root=root, agg=config.eval.agg, max_tiles=config.eval.max_tiles or None,
        out=os.path.join(workdir, "submission.csv"),
    )
    t3 = time.time()
    print(f"[demo] evaluated the test set in {t3 - t2:.0f} s; TTA subsets: "
          + ", ".join(f"{k}={v:.4f}" for k, v in result["tta_subsets"].items()))
    print(f"[demo] unbalanced={result['unbalanced_weighted_accuracy']:.4f} "
          f"balanced={result['balanced_weighted_accuracy']:.4f} (python -m camjax.evaluate --balance)")
    print(f"[demo] submission: {result['out']}; report: {os.path.splitext(result['out'])[0]}_report.json")
    page = report.write_report(workdir, data_root=root)
    t4 = time.time()
    print(f"[demo] HTML report of the run: {page} ({t4 - t3:.0f} s)")
    print(f"[demo] total {t4 - t0:.0f} s")
    print(f"weighted_accuracy={result['weighted_accuracy']:.4f}")


if __name__ == "__main__":
    app.run(main)
