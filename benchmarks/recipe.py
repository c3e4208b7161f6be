"""How good is a training recipe? Train it over seeds on a dataset, score its test set.

    python benchmarks/recipe.py --config configs/camnet.py:quick --root data/checkset-0 --seeds 0,1,2 \
        [--set data.d4=none --set model.kwargs.widths=(64,128,128)] [--name label]

For each seed: `camjax.train` into a fresh run folder (under --runs), then `camjax.evaluate`
on ROOT/test with the views the run trained with, printing one JSON line with the validation
score, the test score of every TTA subset (unbalanced), the balanced score with the trained
views, training wall seconds and steps. Recipes are compared over seeds (a three-minute run
moves by several points with any perturbation), and judged on data they were not tuned on.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import sys
import time

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/camnet.py:quick", help="configs/<x>.py[:preset]")
    p.add_argument(
        "--root", default="", help="dataset in the challenge layout with test_labels.csv (empty: the synthetic set)"
    )
    p.add_argument("--seeds", type=common.csv_ints, default=[0])
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (Python literal), repeatable")
    p.add_argument("--name", default="", help="a label for the recipe in the output")
    p.add_argument("--runs", default=str(common.REPO / "runs" / "recipe"), help="where run folders go")
    p.add_argument("--keep", action="store_true", help="keep the run folders (default: delete after scoring)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax import assembly, evaluator, trainer

    assembly.quiet_libraries()
    for seed in args.seeds:
        config = common.load_config(args.config)
        common.apply_overrides(config, args.set)
        config.seed = seed
        if args.root:
            config.data.root = args.root
        tag = hashlib.sha256(json.dumps([args.config, args.set, args.root]).encode()).hexdigest()[:8]
        workdir = os.path.join(args.runs, f"{tag}-seed{seed}")
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
            start = time.perf_counter()
            val = trainer.train_and_evaluate(config, workdir)
            train_seconds = time.perf_counter() - start
            steps = max(json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl")))
            root = assembly.resolve_data_root(config.data)
            start = time.perf_counter()
            result = evaluator.evaluate([workdir], data_root=root, out=os.path.join(workdir, "submission.csv"))
        common.emit(
            common.record(
                "recipe",
                model=config.model.name,
                name=args.name,
                config=args.config,
                overrides=args.set,
                root=args.root or "synthetic",
                seed=seed,
                steps=steps,
                train_seconds=common.rounded(train_seconds, 1),
                eval_seconds=common.rounded(time.perf_counter() - start, 1),
                images_per_sec=common.rounded(steps * config.batch_size / train_seconds, 1),
                val_weighted_accuracy=common.rounded(val["val/weighted_accuracy"], 4),
                trained_views=result["tta"][0],
                test_weighted_accuracy={k: common.rounded(v, 4) for k, v in result["tta_subsets"].items()},
                test_balanced=common.rounded(result["balanced_weighted_accuracy"], 4),
                test_unbalanced=common.rounded(result["unbalanced_weighted_accuracy"], 4),
                peak_rss_mb=common.peak_rss_mb(),
                compiles_after_warmup=None,  # a whole run, not a timed loop: the trainer logs its own count
            )
        )
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
