"""`python -m camjax.demo`: the README's end-to-end run on the embedded synthetic cameras.

Generates the synthetic dataset (once), trains `--config` (default `configs/camnet.py:quick`,
from the repository root; any field overridable, as in `camjax.train`), evaluates the test
set with the D4 views it trained with, writes the run's HTML report, and prints the score and
the time each stage took.
"""

from __future__ import annotations

import os
import time

from absl import app, flags
from ml_collections import config_flags

from camjax import assembly, evaluator, report, trainer

_CONFIG = config_flags.DEFINE_config_file("config", "configs/camnet.py:quick", "The demo's recipe (file[:preset]).")
_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Run directory (a fresh one each demo).")
_FRESH = flags.DEFINE_bool("fresh", True, "Delete an earlier demo run in --workdir first.")


def main(argv):
    del argv
    assembly.quiet_libraries()
    config = _CONFIG.value
    workdir = _WORKDIR.value
    if _FRESH.value and os.path.isdir(workdir):
        import shutil

        shutil.rmtree(workdir)
    t0 = time.time()
    root = assembly.resolve_data_root(config.data)
    t1 = time.time()
    print(f"[demo] synthetic dataset: {root} ({t1 - t0:.0f} s)")
    val = trainer.train_and_evaluate(config, workdir)
    t2 = time.time()
    print(
        f"[demo] trained {config.model.name} in {t2 - t1:.0f} s: val/weighted_accuracy={val['val/weighted_accuracy']:.4f}"
    )
    result = evaluator.evaluate([workdir], data_root=root, out=os.path.join(workdir, "submission.csv"))
    t3 = time.time()
    print(
        f"[demo] evaluated the test set in {t3 - t2:.0f} s; TTA subsets: "
        + ", ".join(f"{k}={v:.4f}" for k, v in result["tta_subsets"].items())
    )
    print(
        f"[demo] unbalanced={result['unbalanced_weighted_accuracy']:.4f} "
        f"balanced={result['balanced_weighted_accuracy']:.4f} (python -m camjax.evaluate --balance)"
    )
    print(f"[demo] submission: {result['out']}; report: {os.path.splitext(result['out'])[0]}_report.json")
    page = report.write_report(workdir, data_root=root)
    t4 = time.time()
    print(f"[demo] HTML report of the run: {page} ({t4 - t3:.0f} s)")
    print(f"[demo] total {t4 - t0:.0f} s")
    print(f"weighted_accuracy={result['weighted_accuracy']:.4f}")


if __name__ == "__main__":
    app.run(main)
