"""Evaluation's peak host memory and speed as the test set grows: does it stream?

    python benchmarks/eval_memory.py --workdir runs/demo [--counts 1000,10000] [--max_tiles 1] [--tta none]

For each count N, a test folder of N files is made from the run's own test set by hard links
(names unique, the _unalt/_manip suffix kept), and `camjax.evaluator.evaluate` runs on it in a
fresh process, so each peak RSS (ru_maxrss) belongs to one count alone. A streaming evaluator
holds a batch of tiles and N rows of probabilities, so its peak should barely move with N.
A second fresh process runs only the class-balanced assignment (`postprocess.balance`) on the
probabilities the evaluation saved, and reports how much that step alone raised peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import common


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", required=True, help="a camjax training run (its data root supplies the test files)")
    p.add_argument("--counts", default="8,32" if smoke else "1000,10000", help="test-set sizes, comma-separated")
    p.add_argument("--max_tiles", type=int, default=1, help="tiles per test file")
    p.add_argument("--tta", default="none", help="D4 views: none | flips | rot90 | d4")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # internal: evaluate one prepared folder
    p.add_argument("--root", default="", help=argparse.SUPPRESS)
    p.add_argument("--balance_of", default="", help=argparse.SUPPRESS)  # internal: balance saved probabilities
    return p.parse_args(argv)


def cache_dir() -> Path:
    return Path(os.environ.get("CAMJAX_BENCH_CACHE", ".cache/camjax-bench"))


def make_test_tree(source_test: Path, count: int, out: Path) -> Path:
    """OUT/test/ holding `count` hard links to the files of `source_test`, cycling through them."""
    test = out / "test"
    if test.is_dir() and len(os.listdir(test)) == count:
        return out
    test.mkdir(parents=True, exist_ok=True)
    sources = sorted(p for p in source_test.iterdir() if p.is_file())
    if not sources:
        raise ValueError(f"{source_test} holds no test files")
    for i in range(count):
        src = sources[i % len(sources)]
        suffix = "manip" if src.stem.endswith("_manip") else "unalt"
        dst = test / f"img_{i:07x}_{suffix}{src.suffix}"
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:  # another file system: a copy costs disk, not memory
                dst.write_bytes(src.read_bytes())
    return out


def evaluate_one(args) -> None:
    """Child process: one evaluation; prints a JSON line with its seconds and peak RSS."""
    from camjax import evaluator
    from camjax.parallel import compile_count

    start = time.perf_counter()
    evaluator.evaluate(
        [args.workdir],
        data_root=args.root,
        tta_name=args.tta,
        max_tiles=args.max_tiles,
        batch_size=args.batch_size,
        out=os.path.join(args.root, "submission.csv"),
    )
    seconds = time.perf_counter() - start
    print(
        json.dumps({"seconds": seconds, "peak_rss_mb": common.peak_rss_mb(), "compilations": compile_count()}),
        flush=True,
    )


def balance_one(probs_file: str) -> None:
    """Child process: the balanced assignment alone; prints how much it raised peak RSS."""
    import numpy as np

    from camjax import postprocess
    from camjax.evaluator import manipulation_groups

    saved = np.load(probs_file)
    probs, groups = saved["probs"], manipulation_groups(saved["fnames"].tolist())
    before = common.peak_rss_mb()
    start = time.perf_counter()
    postprocess.balance_probs(probs, groups)
    print(json.dumps({"seconds": time.perf_counter() - start, "growth_mb": common.peak_rss_mb() - before}), flush=True)


def child(cmd: list[str], what: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, *cmd], capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.one:
        return evaluate_one(args)
    if args.balance_of:
        return balance_one(args.balance_of)
    from camjax.assembly import Run

    run = Run.load(args.workdir)
    for count in common.csv_ints(args.counts):
        root = make_test_tree(Path(run.data_root) / "test", count, cache_dir() / "eval_memory" / str(count))
        evaluated = child(
            [
                "--workdir",
                args.workdir,
                "--one",
                str(count),
                "--root",
                str(root),
                "--max_tiles",
                str(args.max_tiles),
                "--tta",
                args.tta,
                "--batch_size",
                str(args.batch_size),
            ],
            f"evaluation of {count} files",
        )
        balanced = child(
            ["--workdir", args.workdir, "--balance_of", str(root / "submission_probs.npz")], f"balancing {count} files"
        )
        common.emit(
            common.record(
                "eval_memory",
                model=run.model["name"],
                test_files=count,
                tta=args.tta,
                max_tiles=args.max_tiles,
                seconds=common.rounded(evaluated["seconds"], 2),
                files_per_sec=common.rounded(count / evaluated["seconds"], 1),
                peak_rss_mb=evaluated["peak_rss_mb"],
                compilations=evaluated["compilations"],
                compiles_after_warmup=None,
                balance_seconds=common.rounded(balanced["seconds"], 2),
                balance_peak_growth_mb=balanced["growth_mb"],
            )
        )


if __name__ == "__main__":
    main()
