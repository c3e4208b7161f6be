"""How good is a training recipe? Train it over seeds on a dataset, score its test set.

    python benchmarks/recipe.py --config configs/camnet.py:quick --root data/checkset-0 --seeds 0,1,2 \
        [--set data.d4=none --set model.kwargs.widths=(64,128,128)] [--name label] [--hold_out 3] [--shared]

For each seed: `camjax.train` into a fresh run folder (under --runs), then `camjax.evaluate`
on ROOT/test with the views the run trained with, printing one JSON line with the validation
score, the test score of every TTA subset (unbalanced), the balanced score with the trained
views, training wall seconds and steps. Recipes are compared over seeds (a three-minute run
moves by several points with any perturbation), and judged on data they were not tuned on.

Forensic measurements ride on the same runs: the calibration on the test's known cameras
(ECE and NLL before and after the run's temperature) is always recorded, and with several
seeds once more over all their test images together (a `recipe_pooled` line: one seed's test
set is too small to show an ECE of 0.05, `common.pooled_calibration`); `--hold_out K`
trains on all but K cameras (drawn by the seed, so seeds are also splits; `--split_seed S`
draws them with S for every seed instead, so that the seeds measure how much training alone
moves one split's scores) and records the open-set report (AUROC of every score, false
rejections and acceptances at the thresholds fitted on validation); `--shared` records the
accuracy of the test set re-shared as online photos (`evaluate --shared`).
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
import numpy as np


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
    p.add_argument("--hold_out", type=int, default=0, help="cameras left out of training (drawn by the seed)")
    p.add_argument(
        "--split_seed", type=int, default=None, help="draw the held-out cameras with this seed for every seed"
    )
    p.add_argument("--shared", action="store_true", help="also score the test set shared as online photos")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax import assembly, evaluator, trainer

    assembly.quiet_libraries()
    known_tests = []  # each seed's calibration arrays, pooled at the end
    for seed in args.seeds:
        config = common.load_config(args.config)
        common.apply_overrides(config, args.set)
        config.seed = seed
        if args.root:
            config.data.root = args.root
        held_out = set()
        if args.hold_out:  # the dataset's cameras are read only to draw the held-out ones
            classes = assembly.open_dataset(config.data, seed)[0].classes
            held_out = held_out_for(args, classes, seed)
            config.data.classes = tuple(c for c in classes if c not in held_out)
        identity = [args.config, args.set, args.root, args.hold_out] + (
            [] if args.split_seed is None else [args.split_seed]
        )
        tag = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:8]
        workdir = os.path.join(args.runs, f"{tag}-seed{seed}")
        shutil.rmtree(workdir, ignore_errors=True)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON lines only
            start = time.perf_counter()
            val = trainer.train_and_evaluate(config, workdir)
            train_seconds = time.perf_counter() - start
            steps = max(json.loads(line)["step"] for line in open(os.path.join(workdir, "metrics.jsonl")))
            root = assembly.resolve_data_root(config.data)
            start = time.perf_counter()
            result = evaluator.evaluate(
                [workdir], data_root=root, out=os.path.join(workdir, "submission.csv"), shared=args.shared
            )
        common.emit(
            common.record(
                "recipe",
                **described(args, config),
                seed=seed,
                steps=steps,
                train_seconds=common.rounded(train_seconds, 1),
                eval_seconds=common.rounded(time.perf_counter() - start, 1),
                images_per_sec=common.rounded(steps * config.batch_size / train_seconds, 1),
                val_weighted_accuracy=common.rounded(val["val/weighted_accuracy"], 4),
                trained_views=result["tta"][0],
                **common.evaluation_fields(result),
                test_balanced=common.rounded(result["balanced_weighted_accuracy"], 4),
                test_unbalanced=common.rounded(result["unbalanced_weighted_accuracy"], 4),
                held_out=sorted(held_out),
                shared_online=result.get("shared_online"),
                peak_rss_mb=common.peak_rss_mb(),
                compiles_after_warmup=None,  # a whole run, not a timed loop: the trainer logs its own count
            )
        )
        known_tests.append(
            common.known_test_predictions(
                os.path.join(workdir, "submission_probs.npz"), os.path.join(root, "test_labels.csv")
            )
        )
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if len(known_tests) > 1:
        common.emit(
            common.pooled_record(
                "recipe_pooled", known_tests, **described(args, config), seeds=args.seeds, hold_out=args.hold_out
            )
        )


def described(args, config) -> dict:
    """What a record says of the recipe it measured."""
    return dict(
        model=config.model.name,
        name=args.name,
        config=args.config,
        overrides=args.set,
        root=args.root or "synthetic",
        **({} if args.split_seed is None else {"split_seed": args.split_seed}),
    )


def held_out_for(args, classes, seed: int) -> set[str]:
    """The cameras seed `seed`'s run leaves out: drawn by `--split_seed` when given, else by the seed."""
    return held_out_cameras(classes, args.hold_out, seed if args.split_seed is None else args.split_seed)


def held_out_cameras(classes, count: int, seed: int) -> set[str]:
    """`count` of the dataset's cameras, drawn by `seed`: the unknown cameras of an open-set split."""
    if count >= len(classes):
        raise SystemExit(f"--hold_out {count}: the dataset has only {len(classes)} cameras")
    rng = np.random.default_rng(seed)
    return {classes[i] for i in rng.choice(len(classes), size=count, replace=False)}


if __name__ == "__main__":
    main()
