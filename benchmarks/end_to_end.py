"""Training fed by the real input pipeline vs by device-resident data: is the run input-bound?

    python benchmarks/end_to_end.py --model resnet50 --patch 512 --batch 64 --dtype bfloat16 --workers 8

Both halves run the same compiled train step, built as camjax/trainer.py builds it; the
pipeline half also reads batches the way training does (Grain loader, `parallel.prefetch`
moving each batch to the devices on a background thread). The resident half runs first, so the
loader's workers cannot take CPU from it. `ratio` = resident / pipeline images/sec: 1.0 means
the pipeline keeps up, above 1 means training waits for data. The files are the benchmark's
camera-sized JPEGs (see input_pipeline.py), or a dataset root in the challenge layout.
"""

from __future__ import annotations

import argparse
import threading
import time

import common


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--model_kwargs", default="")
    p.add_argument("--config", default="", help="take the model section from configs/<x>.py[:preset]")
    p.add_argument("--patch", type=int, default=512)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--parallel", default="sharded", choices=["sharded", "pmap"])
    p.add_argument("--steps", type=int, default=20, help="timed steps per half")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument(
        "--pipeline_warmup",
        type=int,
        default=0,
        help="untimed steps before timing the pipeline half; 0: twice the batches its buffers hold",
    )
    p.add_argument("--workers", type=int, default=2, help="Grain worker processes (data.workers)")
    p.add_argument("--prefetch", type=int, default=4)
    p.add_argument("--manip_prob", type=float, default=0.5)
    p.add_argument(
        "--manipulate_on",
        default="host",
        choices=["host", "device"],
        help="data.manipulate_on: manipulations and D4 in the Grain workers or in the jitted step",
    )
    p.add_argument("--patches_per_image", type=int, default=8)
    p.add_argument("--data_root", default="", help="a dataset root (challenge layout) instead of the generated JPEGs")
    p.add_argument("--files", type=int, default=4 if smoke else 16)
    p.add_argument("--frame", default="320x240" if smoke else "4000x3000", help="WIDTHxHEIGHT of the generated JPEGs")
    p.add_argument("--compilation_cache", default="")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be >= 1")
    return args


def timed_steps(setup, next_batch, warmup: int, steps: int) -> tuple[float, int]:
    """Seconds for `steps` train steps after `warmup` (host loop as in training: no blocking
    until the end), and the XLA compilations during the timed steps."""
    import jax

    from camjax.parallel import compile_count

    state = setup.state
    for _ in range(warmup):
        state, metrics = setup.train_step(state, next_batch())
    jax.block_until_ready(metrics)
    compiles = compile_count()
    t0 = time.perf_counter()
    for _ in range(steps):
        state, metrics = setup.train_step(state, next_batch())
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - t0
    setup.state = state
    return seconds, compile_count() - compiles


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax import defaults as config_common
    from camjax.assembly import enable_compilation_cache
    from camjax.data import sources, train_loader
    from camjax.parallel import prefetch

    enable_compilation_cache(args.compilation_cache)
    mc = common.model_config(args.model, args.model_kwargs, args.config)
    config = common.train_config(mc, dtype=args.dtype, batch=args.batch, parallel=args.parallel)
    config.data.patch = args.patch  # the step's device-side manipulations cut this size
    setup = common.TrainSetup(config)

    resident = setup.put_batch(common.synthetic_batch(setup.local_batch, args.patch))
    resident_s, resident_compiles = timed_steps(setup, lambda: resident, args.warmup, args.steps)

    if args.data_root:
        root = args.data_root
    else:
        width, height = (int(v) for v in args.frame.lower().split("x"))
        root = common.jpeg_tree(args.files, height, width)
    index = sources.scan_root(root, val_fraction=0.0)
    data = config_common.get_config().data
    data.patch, data.patches_per_image, data.manip_prob = args.patch, args.patches_per_image, args.manip_prob
    data.workers, data.prefetch, data.manipulate_on = args.workers, args.prefetch, args.manipulate_on
    loader = train_loader.make_train_loader(index, data, batch_size=setup.local_batch, seed=0)
    keys = ("label", "is_manipulated", "manipulation") + (
        ("raw", "d4") if args.manipulate_on == "device" else ("image",)
    )
    batches = prefetch(loader, lambda b: setup.put_batch({k: b[k] for k in keys}), size=2)
    # Buffered batches (per-worker buffers, Grain's read-ahead, the device prefetch) must drain
    # before timing, or an input-bound run looks faster than it is.
    warmup = args.pipeline_warmup or 2 * (max(args.workers, 1) * args.prefetch + 6)
    pipeline_s, pipeline_compiles = timed_steps(setup, lambda: next(batches), warmup, args.steps)
    worker_rss = sorted(common.child_peak_rss_mb().values(), reverse=True)[: args.workers]
    # Stop the transfer thread (it returns after its current item) before closing the loader.
    batches.close()
    for thread in threading.enumerate():
        if thread.name == "camjax-prefetch":
            thread.join(timeout=60)
    if hasattr(loader, "close"):
        loader.close()

    resident_ips = args.steps * args.batch / resident_s
    pipeline_ips = args.steps * args.batch / pipeline_s
    common.emit(
        common.record(
            "end_to_end",
            model=mc.name,
            model_kwargs=mc.kwargs.to_dict(),
            patch=args.patch,
            batch=args.batch,
            dtype=args.dtype,
            parallel=args.parallel,
            steps=args.steps,
            warmup=args.warmup,
            pipeline_warmup=warmup,
            workers=args.workers,
            manip_prob=args.manip_prob,
            manipulate_on=args.manipulate_on,
            patches_per_image=args.patches_per_image,
            data=args.data_root or f"generated {args.files} JPEGs {args.frame} q95",
            images_per_sec=common.rounded(pipeline_ips, 2),
            resident_images_per_sec=common.rounded(resident_ips, 2),
            ratio=common.rounded(resident_ips / pipeline_ips, 3),
            input_bound=resident_ips / pipeline_ips > 1.05,
            peak_rss_mb=common.peak_rss_mb(),
            worker_peak_rss_mb=worker_rss,
            compiles_after_warmup=resident_compiles + pipeline_compiles,
        )
    )


if __name__ == "__main__":
    main()
