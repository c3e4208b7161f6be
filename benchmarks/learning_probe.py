"""How fast does a config learn? Training accuracy along a short run, and fit vs inference.

    python benchmarks/learning_probe.py --config configs/mobilenet.py:quick --steps 900 \
        [--set optim.learning_rate=1e-4 --set model.kwargs.alpha=1.0] [--fixed_batches 8]

Streaming (default): `--steps` train steps on the real training pipeline at a constant learning
rate; prints the mean training accuracy of each `--window` steps (also to stderr as it goes,
with the seconds since the first step, its compilation included, and the load average). Telling a slow learner from
a broken one needs the second mode, `--fixed_batches N`: the same N batches over and over,
with the accuracy on them in training mode (batch statistics) and in inference mode (running
statistics) - a network that fits them in training mode but not in inference mode has stale
BatchNorm statistics, not a learning problem.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time

import common
import numpy as np


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/camnet.py:quick", help="configs/<x>.py[:preset]")
    p.add_argument("--set", action="append", default=[], help="config override KEY=VALUE (Python literal), repeatable")
    p.add_argument("--steps", type=int, default=4 if smoke else 900)
    p.add_argument("--window", type=int, default=2 if smoke else 150, help="steps per reported mean")
    p.add_argument("--fixed_batches", type=int, default=0, help="> 0: train on these many fixed batches instead")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax import assembly, trainer
    from camjax.data import train_loader
    from camjax.parallel import DataParallel, compile_count

    config = common.load_config(args.config)
    common.apply_overrides(config, args.set)
    config.optim.schedule = "constant"
    index, read, _ = assembly.open_dataset(config.data, config.seed)
    loader = train_loader.make_process_loader(
        index,
        config.data,
        global_batch=config.batch_size,
        seed=config.seed,
        process_index=0,
        process_count=1,
        read=read,
    )
    dp = DataParallel(config.parallel)
    stream = (dp.put_batch(trainer.model_inputs(b)) for b in loader)
    if args.fixed_batches:
        fixed = list(itertools.islice(stream, args.fixed_batches))
        stream = itertools.cycle(fixed)
    built = assembly.build(
        config.model,
        len(index.classes),
        dp,
        dtype=config.dtype,
        optim_config=config.optim,
        steps_per_epoch=args.steps,
        total_steps=args.steps,
        seed=config.seed,
    )
    state = dp.put_state(built.host_state)
    train_step, predict = built.train_step(config), built.predict()

    start, compiles, accuracies, windows = time.perf_counter(), None, [], []
    for i, batch in enumerate(itertools.islice(stream, args.steps)):
        state, metrics = train_step(state, batch)
        accuracies.append(metrics)
        if i == 0:
            compiles = compile_count()
        if (i + 1) % args.window == 0:
            windows.append(common.rounded(np.mean([dp.fetch_metrics(m)["train/accuracy"] for m in accuracies])))
            accuracies = []
            print(
                f"step {i + 1}: window train accuracy {windows[-1]} at {time.perf_counter() - start:.0f} s, "
                f"load {common.load_average()}",
                file=sys.stderr,
                flush=True,
            )  # progress, for long probes
    fields = dict(train_accuracy_per_window=windows, window=args.window, steps=args.steps)
    if args.fixed_batches:
        hits = [
            np.mean(np.argmax(dp.fetch_per_example(predict(state, b)), -1) == np.asarray(b["label"])) for b in fixed
        ]
        fields["inference_accuracy_on_fixed_batches"] = common.rounded(np.mean(hits))
    common.emit(
        common.record(
            "learning_probe",
            model=config.model.name,
            config=args.config,
            overrides=args.set,
            fixed_batches=args.fixed_batches,
            seconds=common.rounded(time.perf_counter() - start, 1),
            **fields,
            peak_rss_mb=common.peak_rss_mb(),
            compiles_after_warmup=compile_count() - compiles,
        )
    )


if __name__ == "__main__":
    main()
