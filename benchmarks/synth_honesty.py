"""How hard is a synthetic set? Test accuracy of a content-only and a trace-feature classifier.

    python benchmarks/synth_honesty.py ROOT [--crops 2] [--seed 0]

Runs the honesty check of tests/test_synth.py (logistic regression on colour histograms vs
on noise-residual statistics, trained on random crops of the train frames, scored on the
test patches) on any dataset in the challenge layout, and prints one JSON line.
"""

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from test_synth import accuracies  # noqa: E402  (the test's own reference features)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("root", type=pathlib.Path)
    p.add_argument("--crops", type=int, default=2, help="random 512 crops per train frame (half manipulated)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.time()
    acc = accuracies(args.root, crops=args.crops, seed=args.seed)
    classes = len([d for d in (args.root / "train").iterdir() if d.is_dir()])
    print(
        json.dumps(
            {
                "benchmark": "synth_honesty",
                "root": str(args.root),
                "classes": classes,
                "chance": 1 / classes,
                "content_accuracy": acc["content"],
                "trace_accuracy": acc["trace"],
                "crops": args.crops,
                "seed": args.seed,
                "seconds": round(time.time() - start, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
