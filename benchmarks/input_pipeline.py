"""Patches/sec of the Grain training pipeline on camera-sized JPEGs, its cost split, and the
peers' baseline (one PIL decode per patch).

    python benchmarks/input_pipeline.py --patch 512 --workers 0,1,2 --manip_prob 0,0.5

The benchmark makes its own files once (12-megapixel 4000x3000 JPEGs at quality 95, ~3 MB
each, in .cache/bench) and reads them with `camjax.data.train_loader.make_train_loader`, the loader
training uses. Per measurement it prints wall-clock patches/sec and patches per CPU-second
(CPU time of this process and its Grain workers over the timed window): the second is the
per-core figure, and it holds up on a machine shared with other work. Then:
- `input_pipeline_split`: decode / crop (+D4 view) / manipulate / batch costs per patch,
  measured in this process on one core;
- `input_pipeline_baseline`: open the JPEG with PIL, convert to numpy and crop one patch for
  every patch (how the challenge's public solutions fed Keras), per core, and the ratio;
- `input_pipeline_scaling`: the host's own ceiling for workers, with no Grain in between:
  1..N independent processes, each running the in-process pipeline (workers 0) at once, and
  their summed patches/s. Two Grain workers cannot beat what two independent processes reach
  on the same cores; the ratio of the two says whether a shortfall is Grain's or the host's.

Each worker decodes `data.mix_files` frames before its first batch (a 12 MP frame is ~56 ms
on one core: 32 of them are 8 batches of 32 patches at 8 patches per frame) and then runs
ahead of the trainer by `READ_AHEAD_GROUPS` such groups plus its `--prefetch` batches: 640
patches per worker at the defaults. A timed window must be long against that look-ahead, or
it counts CPU spent on patches it never takes (with 2 workers, 64 batches of 32 are 1.6 times
their look-ahead and showed 2 workers at 1.43x one; 512 batches show 1.81x). So, by default,
each measurement first takes one look-ahead's worth of batches untimed, then times
`max(64, 8 x look-ahead)` patches' worth (`--batches` sets the timed count instead).
"""

from __future__ import annotations

import argparse
import gc
import os
import time

import common
import numpy as np


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patch", type=int, default=512)
    p.add_argument("--batch", type=int, default=8 if smoke else 32)
    p.add_argument(
        "--patches_per_image", type=int, default=8, help="patches cut per decoded frame (data.patches_per_image)"
    )
    p.add_argument("--workers", default="0,1,2", help="Grain worker counts, comma-separated")
    p.add_argument("--manip_prob", default="0,0.5", help="manipulation probabilities, comma-separated")
    p.add_argument("--prefetch", type=int, default=4, help="batches buffered per worker (data.prefetch)")
    p.add_argument(
        "--batches",
        type=int,
        default=2 if smoke else None,
        help="timed batches per measurement (default: 8x the workers' look-ahead, at least 64)",
    )
    p.add_argument(
        "--processes",
        default="1,2",
        help="independent in-process pipelines run at once (scaling part), comma-separated",
    )
    p.add_argument("--files", type=int, default=4 if smoke else 16)
    p.add_argument("--frame", default="320x240" if smoke else "4000x3000", help="WIDTHxHEIGHT of the generated JPEGs")
    p.add_argument("--quality", type=int, default=95)
    p.add_argument("--baseline_patches", type=int, default=3 if smoke else 12)
    p.add_argument("--skip", default="", help="parts to skip: pipeline, scaling, split, baseline (comma-separated)")
    args = p.parse_args(argv)
    try:
        args.width, args.height = (int(v) for v in args.frame.lower().split("x"))
    except ValueError:
        p.error(f"--frame must be WIDTHxHEIGHT, got {args.frame!r}")
    from camjax.data import manipulations

    need = manipulations.max_source_size(args.patch)
    if min(args.width, args.height) < need:
        p.error(f"--frame {args.frame} is too small for --patch {args.patch} (manipulations need {need} px)")
    return args


def data_config(args, *, workers: int, manip_prob: float):
    from camjax import defaults as config_common

    c = config_common.get_config().data
    c.patch, c.patches_per_image, c.manip_prob = args.patch, args.patches_per_image, manip_prob
    c.workers, c.prefetch = workers, args.prefetch
    return c


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of this process and of its live children (the Grain workers)."""
    import psutil

    me = psutil.Process()
    children = 0.0
    for child in me.children(recursive=True):
        try:
            children += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:
            pass
    return sum(me.cpu_times()[:2]), children


def lookahead_patches(args, data, workers: int) -> int:
    """Patches a loader of `workers` processes (0: in process) decodes before they are asked for."""
    from camjax.data.train_loader import READ_AHEAD_GROUPS

    group = max(1, int(data.mix_files)) * data.patches_per_image
    return max(1, workers) * (READ_AHEAD_GROUPS * group + (args.prefetch * args.batch if workers else 0))


def window(args, data, workers: int) -> tuple[int, int]:
    """(untimed, timed) batches of one measurement: see the module doc."""
    ahead = -(-lookahead_patches(args, data, workers) // args.batch)
    untimed = 2 * workers if common.smoke() else ahead  # smoke runs: started and delivered
    return untimed, (max(64, 8 * ahead) if args.batches is None else args.batches)


def measure_pipeline(args, index, *, workers: int, manip_prob: float) -> dict:
    from camjax.data import train_loader

    data = data_config(args, workers=workers, manip_prob=manip_prob)
    untimed, timed = window(args, data, workers)
    loader = train_loader.make_train_loader(index, data, batch_size=args.batch, seed=0)
    t0 = time.perf_counter()
    next(loader)
    first_batch_s = time.perf_counter() - t0
    for _ in range(untimed):  # every worker has started, delivered and filled its look-ahead
        next(loader)
    (main0, workers0), t0 = cpu_seconds(), time.perf_counter()
    for _ in range(timed):
        batch = next(loader)
    wall = time.perf_counter() - t0
    main1, workers1 = cpu_seconds()
    main_cpu, workers_cpu = main1 - main0, workers1 - workers0
    cpu = main_cpu + workers_cpu
    worker_rss = sorted(common.child_peak_rss_mb().values(), reverse=True)
    del loader
    gc.collect()
    patches = timed * args.batch
    if batch["image"].shape != (args.batch, args.patch, args.patch, 3):
        raise RuntimeError(f"the loader made batches of shape {batch['image'].shape}")
    return common.record(
        "input_pipeline",
        model=None,
        patch=args.patch,
        batch=args.batch,
        patches_per_image=args.patches_per_image,
        workers=workers,
        manip_prob=manip_prob,
        prefetch=args.prefetch,
        lookahead_patches=lookahead_patches(args, data, workers),
        untimed_batches=untimed,
        timed_batches=timed,
        patches_per_sec=common.rounded(patches / wall, 2),
        cpu_seconds=common.rounded(cpu, 2),
        main_cpu_seconds=common.rounded(main_cpu, 2),
        patches_per_cpu_sec=common.rounded(patches / cpu, 2) if cpu > 0 else None,
        first_batch_s=common.rounded(first_batch_s, 2),
        peak_rss_mb=common.peak_rss_mb(),
        worker_peak_rss_mb=worker_rss[:workers] if workers else [],
        compiles_after_warmup=0,  # no XLA in the input pipeline
        **files_info(args, index),
    )


def _one_pipeline(args, index, manip_prob, start, out) -> None:
    """One independent process's in-process pipeline: patches/s over `--batches` once `start` opens."""
    from camjax.data import train_loader

    data = data_config(args, workers=0, manip_prob=manip_prob)
    untimed, timed = window(args, data, 0)
    loader = train_loader.make_train_loader(index, data, batch_size=args.batch, seed=0)
    for _ in range(1 + untimed):  # imports, first decodes, the read-ahead filled
        next(loader)
    start.wait()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(timed):
        next(loader)
    out.put((timed * args.batch, time.perf_counter() - t0, time.process_time() - c0))


def measure_scaling(args, index, processes: int, manip_prob: float) -> dict:
    """`processes` independent in-process pipelines started together: the host's ceiling."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    start, out = ctx.Barrier(processes + 1), ctx.Queue()
    procs = [ctx.Process(target=_one_pipeline, args=(args, index, manip_prob, start, out)) for _ in range(processes)]
    for p in procs:
        p.start()
    start.wait()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    per_process = [n / wall for n, wall, _ in results]
    return common.record(
        "input_pipeline_scaling",
        model=None,
        patch=args.patch,
        batch=args.batch,
        patches_per_image=args.patches_per_image,
        processes=processes,
        manip_prob=manip_prob,
        timed_batches=window(args, data_config(args, workers=0, manip_prob=manip_prob), 0)[1],
        patches_per_sec=common.rounded(sum(per_process), 2),
        per_process_patches_per_sec=[common.rounded(v, 2) for v in per_process],
        patches_per_cpu_sec=common.rounded(sum(n for n, _, _ in results) / sum(c for _, _, c in results), 2),
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=0,
        **files_info(args, index),
    )


def files_info(args, index) -> dict:
    sizes = [os.path.getsize(r.path) for r in index.train]
    return {
        "frame": f"{args.width}x{args.height}",
        "files": len(sizes),
        "mean_file_mb": common.rounded(np.mean(sizes) / 1e6, 2),
    }


def _ms(fn, repeat: int) -> float:
    """Median CPU milliseconds of fn() (process time: robust to other work on the machine)."""
    times = []
    for _ in range(repeat):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return common.median(times) * 1e3


def measure_split(args, index, manip_probs) -> dict:
    """Per-patch costs of each stage, on one core of this process."""
    from camjax.cameras import MANIPULATIONS
    from camjax.data import manipulations, train_loader
    from camjax.data.decode import decode_image
    from camjax.tta import views

    paths = [r.path for r in index.train][: max(2, min(8, len(index.train)))]
    decode = common.median([_ms(lambda p=p: decode_image(p), 1) for p in paths])
    frame = decode_image(paths[0])
    rng = np.random.default_rng(0)
    n = args.patches_per_image

    def cut():
        return train_loader.cut_train_patches(
            frame, rng, patch=args.patch, count=n, step=8, manip_prob=0.0, views=views("d4")
        )

    crop = _ms(cut, 5) / n
    source = frame[: manipulations.max_source_size(args.patch), : manipulations.max_source_size(args.patch)]
    per_manip = {
        m.name: _ms(lambda m=m: manipulations.manipulate_patch(source, args.patch, m), 5) for m in MANIPULATIONS[1:]
    }
    manipulate = float(np.mean(list(per_manip.values())))
    group = max(1, min(64, -(-2 * args.batch // n)))
    parts = [dict(cut(), label=np.zeros(n, np.int32)) for _ in range(group)]

    def assemble():
        out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        perm = rng.permutation(len(out["label"]))
        return {k: v[perm] for k, v in out.items()}

    batch = _ms(assemble, 5) / (group * n)
    per_patch = {p: decode / n + crop + p * manipulate + batch for p in manip_probs}
    return common.record(
        "input_pipeline_split",
        model=None,
        patch=args.patch,
        patches_per_image=n,
        decode_ms_per_frame=common.rounded(decode, 2),
        decode_ms_per_patch=common.rounded(decode / n, 3),
        crop_d4_ms_per_patch=common.rounded(crop, 3),
        manipulate_ms_per_manipulated_patch=common.rounded(manipulate, 3),
        manipulate_ms_by_kind={k: common.rounded(v, 3) for k, v in per_manip.items()},
        batch_ms_per_patch=common.rounded(batch, 3),
        patches_per_sec=None,
        patches_per_cpu_sec_estimate={str(p): common.rounded(1e3 / t, 1) for p, t in per_patch.items()},
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=0,
        **files_info(args, index),
    )


def pil_patch(path: str, patch: int, rng: np.random.Generator) -> np.ndarray:
    """The baseline: a full PIL decode and numpy conversion for one random patch."""
    from PIL import Image

    with Image.open(path) as im:
        frame = np.asarray(im.convert("RGB"))
    top = int(rng.integers(0, frame.shape[0] - patch + 1))
    left = int(rng.integers(0, frame.shape[1] - patch + 1))
    return np.ascontiguousarray(frame[top : top + patch, left : left + patch])


def measure_baseline(args, index, camjax_per_cpu_sec: float | None, source: str) -> dict:
    paths = [r.path for r in index.train]
    rng = np.random.default_rng(0)
    ms = [_ms(lambda i=i: pil_patch(paths[i % len(paths)], args.patch, rng), 1) for i in range(args.baseline_patches)]
    baseline = 1e3 / common.median(ms)
    return common.record(
        "input_pipeline_baseline",
        model=None,
        patch=args.patch,
        method="PIL open + convert('RGB') + numpy + crop, one decode per patch",
        patches_per_sec=None,
        baseline_patches_per_cpu_sec=common.rounded(baseline, 2),
        camjax_patches_per_cpu_sec=common.rounded(camjax_per_cpu_sec, 2),
        camjax_source=source,
        ratio=common.rounded(camjax_per_cpu_sec / baseline, 2) if camjax_per_cpu_sec else None,
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=0,
        **files_info(args, index),
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax.data import sources

    root = common.jpeg_tree(args.files, args.height, args.width, args.quality)
    index = sources.scan_root(root, val_fraction=0.0)
    skip = set(common.csv_strs(args.skip))
    manip_probs = common.csv_floats(args.manip_prob)
    per_cpu, source = None, None
    if "pipeline" not in skip:
        for workers in common.csv_ints(args.workers):
            for manip_prob in manip_probs:
                rec = measure_pipeline(args, index, workers=workers, manip_prob=manip_prob)
                common.emit(rec)
                if (
                    manip_prob == 0
                    and rec["patches_per_cpu_sec"]
                    and (per_cpu is None or rec["patches_per_cpu_sec"] > per_cpu)
                ):
                    per_cpu, source = rec["patches_per_cpu_sec"], f"input_pipeline workers={workers} manip_prob=0"
    if "scaling" not in skip:
        for processes in common.csv_ints(args.processes):
            common.emit(measure_scaling(args, index, processes, manip_probs[0]))
    if "split" not in skip:
        rec = measure_split(args, index, manip_probs)
        common.emit(rec)
        if per_cpu is None:
            per_cpu, source = (
                rec["patches_per_cpu_sec_estimate"].get("0.0"),
                "input_pipeline_split estimate, manip_prob=0",
            )
    if "baseline" not in skip:
        common.emit(measure_baseline(args, index, per_cpu, source))


if __name__ == "__main__":
    main()
