"""Command line: write the synthetic camera dataset in the challenge layout.

    python -m camjax.synth --out DIR [--cameras N] [--images_per_camera N]
        [--test_per_camera N] [--seed S] [--workers W] [--train_window PX]

(`--images-per-camera`, `--test-per-camera`, `--train-window` are accepted too.)

The virtual cameras stand in for the first N challenge classes; see `camjax.synth` for the
physics and DIR/cameras.json for every parameter.
"""

from __future__ import annotations

import argparse
import time

from camjax import cli
from camjax.synth.dataset import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m camjax.synth", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="output folder (must not exist, or be empty)")
    parser.add_argument("--cameras", type=int, default=10, help="the first N challenge classes (1-10)")
    # camjax's flags are spelled with underscores; the dashed names stay as the documented aliases.
    parser.add_argument(
        "--images_per_camera", "--images-per-camera", type=int, default=40, help="train frames per camera"
    )
    parser.add_argument(
        "--test_per_camera", "--test-per-camera", type=int, default=24, help="test patches per camera, half manipulated"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=None, help="processes (default: one per CPU)")
    parser.add_argument(
        "--train_window",
        "--train-window",
        type=int,
        default=0,
        help="store train frames as centred crops of this side (multiple of 16; for quick tests)",
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = cli.run_or_exit(
        generate,
        args.out,
        cameras=args.cameras,
        images_per_camera=args.images_per_camera,
        test_per_camera=args.test_per_camera,
        seed=args.seed,
        workers=args.workers,
        train_window=args.train_window,
    )
    print(f"wrote {out} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
