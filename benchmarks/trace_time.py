"""How long a train step takes to trace and lower, before XLA compiles anything.

    python benchmarks/trace_time.py [--models densenet121,densenet201,resnet50] [--patch 512] [--batch 64]
        [--repeats 3]

The wait before a run's first step is tracing (Python building the jaxpr), lowering (StableHLO)
and XLA's compilation; the first two are host work that a faster accelerator does not shorten.
This times them for each model's real train step (`camjax.steps.train_step` under
`DataParallel("sharded")`, one device, bf16 compute) on abstract shapes: nothing is allocated
and nothing is compiled, so the numbers hold for any backend. One JSON line per model, with
the median and every repeat's seconds; each repeat traces afresh (the jit cache is cleared).
"""

from __future__ import annotations

import argparse
import time

import common


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=common.csv_strs, default=["densenet121", "densenet201", "resnet50"])
    p.add_argument("--patch", type=int, default=512)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--repeats", type=int, default=3)
    return p.parse_args(argv)


def trace_seconds(name: str, patch: int, batch: int, dtype: str, repeats: int) -> list[float]:
    import jax
    import jax.numpy as jnp

    from camjax import assembly
    from camjax.models import default_config
    from camjax.parallel import DataParallel

    config = common.train_config(default_config(name), dtype=dtype, batch=batch, parallel="sharded")
    dp = DataParallel("sharded", devices=jax.devices()[:1])
    built = assembly.build_abstract(config.model, 10, dp, dtype=config.dtype, optim_config=config.optim)
    shapes = {
        "image": jax.ShapeDtypeStruct((batch, patch, patch, 3), jnp.uint8),
        "label": jax.ShapeDtypeStruct((batch,), jnp.int32),
        "is_manipulated": jax.ShapeDtypeStruct((batch,), jnp.float32),
        "manipulation": jax.ShapeDtypeStruct((batch,), jnp.int32),
    }
    seconds = []
    for _ in range(repeats):
        jax.clear_caches()
        step = built.train_step(config)
        start = time.perf_counter()
        step.trace(built.host_state, shapes).lower()
        seconds.append(time.perf_counter() - start)
    return seconds


def main(argv=None) -> None:
    args = parse_args(argv)
    if common.smoke():
        args.models, args.patch, args.batch, args.repeats = ["camnet"], 64, 4, 1
    for name in args.models:
        seconds = trace_seconds(name, args.patch, args.batch, args.dtype, args.repeats)
        common.emit(
            common.record(
                "trace_time",
                model=name,
                patch=args.patch,
                batch=args.batch,
                dtype=args.dtype,
                median_s=common.rounded(common.median(seconds)),
                seconds=[common.rounded(s) for s in seconds],
                peak_rss_mb=common.peak_rss_mb(),
                compiles_after_warmup=None,  # nothing is compiled
            )
        )


if __name__ == "__main__":
    main()
