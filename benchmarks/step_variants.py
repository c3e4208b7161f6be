"""Whole train steps of one network under several `model.kwargs` variants, built in one
process and timed in alternating rounds, so that every variant shares the machine's state
(load, caches, memory) and the ratios between them are what one process measures.

    python benchmarks/step_variants.py --models mobilenet_v2:224:4,densenet121:224:4 \\
        --variants '{"bn_grad": "autodiff"}' '{"bn_grad": "written"}'

Each variant is the train step `compare.py` times (the registry model with those keywords,
plain head, Adam, state donated, batch resident). One JSON line per variant: images/sec
(median), its ratio to the first variant's, the step's spread, and the relative difference of
its first loss from the first variant's (variants that compute the same network differ only
in summation order). `conv_lowering.py --models` is this with one variant per `conv_impl`.
"""

from __future__ import annotations

import argparse
import json

import common


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", required=True, help="model:patch:batch,...")
    p.add_argument("--variants", nargs="+", required=True, help="one JSON object of model keywords each")
    p.add_argument("--steps", type=int, default=2 if smoke else 5, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=2 if smoke else 4, help="alternating rounds")
    p.add_argument("--warmup", type=int, default=1 if smoke else 3, help="untimed steps per variant")
    return p.parse_args(argv)


def time_variants(models: str, variants: list[dict], *, steps: int, rounds: int, warmup: int, benchmark: str, label):
    """Times each `model:patch:batch` of `models` under each variant; `label(kwargs)` gives the
    fields that name a variant in its record."""
    import compare
    import jax

    for spec in common.csv_strs(models):
        model, patch, batch = spec.split(":")
        cargs = compare.parse_args(["--model", model, "--patch", patch, "--batch", batch])
        host = common.synthetic_batch(cargs.batch, cargs.patch, num_classes=compare.NUM_CLASSES)
        runners = []
        for kwargs in variants:
            runner = compare.CamjaxRunner(cargs, kwargs, host)
            runner.setup.state, metrics = runner.setup.train_step(runner.setup.state, runner.batch)  # compiles once
            runner.first_loss = float(jax.device_get(metrics["train/loss"]))
            for _ in range(warmup - 1):
                runner.step()
            runners.append(runner)
        load_before = common.load_average()
        compare.time_in_rounds(runners, rounds, steps)
        ips = [cargs.batch / common.median(r.times) for r in runners]
        first = runners[0]
        for kwargs, r, rate in zip(variants, runners, ips):
            common.emit(
                common.record(
                    benchmark,
                    model=model,
                    patch=cargs.patch,
                    batch=cargs.batch,
                    **label(kwargs),
                    images_per_sec=common.rounded(rate, 3),
                    ratio_to_first=common.rounded(rate / ips[0], 3),
                    first_loss=r.first_loss,
                    loss_rel_diff=abs(r.first_loss - first.first_loss) / abs(first.first_loss),
                    **compare.spread(r.times),
                    timed_steps=len(r.times),
                    load_avg_before=load_before,
                    peak_rss_mb=common.peak_rss_mb(),
                    compiles_after_warmup=r.compiles,
                )
            )


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        variants = [json.loads(v) for v in args.variants]
    except json.JSONDecodeError as e:
        raise SystemExit(f"step_variants.py: --variants takes JSON objects: {e}") from None
    if not all(isinstance(v, dict) for v in variants):
        raise SystemExit(f"step_variants.py: each --variants value must be a JSON object, got {args.variants}")
    time_variants(
        args.models,
        variants,
        steps=args.steps,
        rounds=args.rounds,
        warmup=args.warmup,
        benchmark="step_variants",
        label=lambda kwargs: {"model_kwargs": kwargs},
    )


if __name__ == "__main__":
    main()
