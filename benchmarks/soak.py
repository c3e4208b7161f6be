"""Kill a training run N times at random moments; its final state must equal an uninterrupted run's.

    python benchmarks/soak.py --kills 20 [--seed 0] [--out benchmarks/soak.jsonl]

A small camnet run (4 synthetic cameras, data.workers=2, 6 epochs of 5 steps) is trained once
without interruption (the reference), then again in another folder, where every start is
given one fail point (`camjax.faults`) drawn at random among moments still ahead of the run:
- `step:K@D`: D seconds after train step K was dispatched (lands inside a step, a log write,
  a save or a validation, wherever the run then is);
- `save:K@D`: D <= 50 ms after the epoch-end checkpoint was handed to orbax (mid-save);
- `validate:K`: after the first batch of an epoch-end validation (mid-validation);
- `start:0@D`: D <= 2 s after the data loader was built (during Grain worker start-up).
Each start must end by SIGKILL or by finishing; after N kills the run is started until it
finishes, and the sha256 of its whole train state (`camjax.inspect`) is compared with the
reference's. Prints and appends one JSON line: kills, the moments, equal or not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import common

STEPS_PER_EPOCH, EPOCHS = 5, 6
OVERRIDES = {
    "data.workers": 2,
    "data.patch": 32,
    "data.patches_per_image": 4,
    "data.val_crops": 1,
    "model.kwargs.widths": "(8, 16)",
    "model.head.hidden": "(16, 8)",
    "batch_size": 8,
    "steps_per_epoch": STEPS_PER_EPOCH,
    "num_epochs": EPOCHS,
    "log_every": 1,
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="draws the moments")
    p.add_argument("--runs", default=str(common.REPO / "runs" / "soak"))
    p.add_argument("--out", default="", help="append the JSON line here too")
    return p.parse_args(argv)


def train_cmd(data: str, workdir: str, cache: str) -> list[str]:
    flags = {"data.root": data, "compilation_cache": cache, **OVERRIDES}
    return [
        sys.executable,
        "-m",
        "camjax.train",
        "--config",
        "configs/camnet.py:quick",
        "--workdir",
        workdir,
        *(f"--config.{k}={v}" for k, v in flags.items()),
    ]


def start(cmd: list[str], failpoint: str = "") -> tuple[int, str]:
    env = {**os.environ, "CAMJAX_FAILPOINT": failpoint, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run(
        cmd, cwd=common.REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=600
    )
    return proc.returncode, proc.stderr


def latest_step(workdir: str) -> int:
    from camjax.checkpoint import Checkpointer

    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return 0
    ckpt = Checkpointer(workdir, read_only=True, async_save=False)
    try:
        return ckpt.latest_step() or 0
    finally:
        ckpt.close()


def draw_moment(rng: random.Random, done: int) -> str:
    """A fail point still ahead of a run whose latest checkpoint is step `done`."""
    total = STEPS_PER_EPOCH * EPOCHS
    epoch_ends = [e * STEPS_PER_EPOCH for e in range(done // STEPS_PER_EPOCH + 1, EPOCHS + 1)]
    kind = rng.choice(["step", "step", "save", "validate", "start"])
    if kind == "step":
        return f"step:{rng.randint(done + 1, total - 1)}@{rng.uniform(0.0, 0.3):.3f}"
    if kind == "save":
        return f"save:{rng.choice(epoch_ends[:-1] or epoch_ends)}@{rng.uniform(0.0, 0.05):.3f}"
    if kind == "validate":
        return f"validate:{rng.choice(epoch_ends)}"
    return f"start:0@{rng.uniform(0.0, 2.0):.3f}"


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax import inspect, synth

    data = str(
        synth.ensure_dataset(os.path.join(args.runs, "data"), cameras=4, images_per_camera=8, test_per_camera=2, seed=7)
    )
    cache = os.path.join(args.runs, "jax-cache")
    reference, soaked = os.path.join(args.runs, "reference"), os.path.join(args.runs, "soaked")
    for d in (reference, soaked):
        shutil.rmtree(d, ignore_errors=True)
    code, err = start(train_cmd(data, reference, cache))
    if code:
        raise SystemExit(f"the reference run failed: {err[-3000:]}")

    rng = random.Random(args.seed)
    moments, outcomes, begin = [], [], time.time()
    while len([o for o in outcomes if o == "killed"]) < args.kills:
        moment = draw_moment(rng, latest_step(soaked))
        code, err = start(train_cmd(data, soaked, cache), moment)
        if code not in (0, -signal.SIGKILL):
            raise SystemExit(f"start under {moment} failed with {code}: {err[-3000:]}")
        moments.append(moment)
        outcomes.append("killed" if code else "finished")
        print(f"{moment}: {outcomes[-1]} (latest checkpoint {latest_step(soaked)})", file=sys.stderr)
        if code == 0:  # the run finished before the moment: start it again from nothing
            shutil.rmtree(soaked)
    code, err = start(train_cmd(data, soaked, cache))
    if code:
        raise SystemExit(f"the final start failed: {err[-3000:]}")
    want, got = inspect.inspect_run(reference)["latest"], inspect.inspect_run(soaked)["latest"]
    line = common.record(
        "soak",
        model="camnet",
        kills=outcomes.count("killed"),
        finished_before_the_kill=outcomes.count("finished"),
        moments=moments,
        seed=args.seed,
        final_step=got["step"],
        state_sha256_equal=got["state_sha256"] == want["state_sha256"],
        params_sha256_equal=got["params_sha256"] == want["params_sha256"],
        reference_state_sha256=want["state_sha256"],
        wall_s=round(time.time() - begin, 1),
    )  # with the machine, the load average and the date
    print(json.dumps(line))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(line) + "\n")
    if not line["state_sha256_equal"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
