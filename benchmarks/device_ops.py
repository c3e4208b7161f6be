"""Patches/sec of the challenge manipulations on the host (camjax.data.manipulations: OpenCV,
Pillow, numpy, one patch at a time) and on the JAX device (camjax.data.device_ops, jitted, on a
batch), per manipulation and for a training-like mix with D4 views.

    python benchmarks/device_ops.py --patch 64,256 --batch 32

Every patch starts from a raw uint8 crop of side `device_ops.raw_size(patch)`, the input the
device path takes. Each measurement prints wall-clock patches/sec and patches per CPU-second
(this process's CPU time over the timed calls: OpenCV and XLA may use several threads).
- `device_ops`, mix = <manipulation name>: every patch of the batch under that manipulation;
  host vs device strategies 'tables' and 'map';
- `device_ops`, mix = 'train': ids drawn as training draws them (`--manip_prob`, the eight
  manipulations uniform) and a random D4 view each: host `manipulate_patch` + `d4_host` vs
  `device_ops.apply_on_device` with each strategy.
"""

from __future__ import annotations

import argparse
import functools
import time

import common
import numpy as np


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patch", default="32" if smoke else "64,256", help="patch sizes, comma-separated")
    p.add_argument("--batch", type=int, default=4 if smoke else 32)
    p.add_argument("--repeats", type=int, default=2 if smoke else 5, help="timed calls per measurement (median)")
    p.add_argument("--strategies", default="tables,map", help="device_ops.manipulate strategies for the mix")
    p.add_argument("--manip_prob", type=float, default=0.5, help="share of manipulated patches in the 'train' mix")
    p.add_argument("--skip", default="", help="parts to skip: each (per-manipulation), mix")
    return p.parse_args(argv)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds of fn() (which must block until done)."""
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return common.median(walls), common.median(cpus)


def raw_crops(batch: int, patch: int, seed: int = 0) -> np.ndarray:
    """`batch` raw crops of a camera-like frame at random positions on the 8 px grid."""
    from camjax.data import device_ops

    size = device_ops.raw_size(patch)
    frame = common.photo_like(2 * size, 2 * size, seed)
    rng = np.random.default_rng(seed)
    corners = 8 * rng.integers(0, size // 8 + 1, (batch, 2))
    return np.stack([frame[y : y + size, x : x + size] for y, x in corners])


def host_fn(raw: np.ndarray, ids: np.ndarray, d4: np.ndarray | None, patch: int):
    from camjax.cameras import MANIPULATIONS
    from camjax.data import grid, manipulations

    def run():
        out = np.empty((len(raw), patch, patch, 3), np.uint8)
        for i, (image, m) in enumerate(zip(raw, ids)):
            x = manipulations.manipulate_patch(image, patch, MANIPULATIONS[int(m)])
            out[i] = grid.d4_host(x, int(d4[i])) if d4 is not None else x
        return out

    return run


@functools.cache
def jitted(patch: int, strategy: str, d4: bool):
    """One compiled program per (patch, strategy, d4): the ids are data, so every manipulation
    and mix reuses it."""
    import jax

    from camjax.data import device_ops

    if d4:
        return jax.jit(lambda r, i, k: device_ops.apply_on_device(r, i, k, patch=patch, strategy=strategy))
    return jax.jit(lambda r, i: device_ops.manipulate(r, i, patch=patch, strategy=strategy))


def device_fn(raw: np.ndarray, ids: np.ndarray, d4: np.ndarray | None, patch: int, strategy: str):
    """The jitted call on device-resident inputs, and its first call's seconds (compile + run
    the first time a program is used, run only after)."""
    import jax

    fn = jitted(patch, strategy, d4 is not None)
    args = jax.device_put((raw, ids) if d4 is None else (raw, ids, d4))
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first_call_s = time.perf_counter() - t0
    return (lambda: jax.block_until_ready(fn(*args))), first_call_s


def measure(args, *, patch: int, mix: str, impl: str, strategy: str | None, ids, d4, raw) -> dict:
    from camjax.parallel import compile_count

    if impl == "host":
        fn, first_call_s = host_fn(raw, ids, d4, patch), None
        fn()
    else:
        fn, first_call_s = device_fn(raw, ids, d4, patch, strategy)
    before = compile_count()
    wall, cpu = timed(fn, args.repeats)
    return common.record(
        "device_ops",
        model=None,
        patch=patch,
        raw_size=raw.shape[1],
        batch=len(raw),
        mix=mix,
        manipulated_share=common.rounded(np.mean(ids != 0), 3),
        d4=d4 is not None,
        impl=impl,
        strategy=strategy,
        repeats=args.repeats,
        patches_per_sec=common.rounded(len(raw) / wall, 1),
        patches_per_cpu_sec=common.rounded(len(raw) / cpu, 1) if cpu > 0 else None,
        ms_per_batch=common.rounded(wall * 1e3, 2),
        first_call_s=common.rounded(first_call_s, 2),
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=compile_count() - before,
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax.cameras import MANIPULATIONS

    skip = set(common.csv_strs(args.skip))
    strategies = common.csv_strs(args.strategies)
    for patch in common.csv_ints(args.patch):
        raw = raw_crops(args.batch, patch)

        def run(mix, ids, d4, impl, strategy=None, patch=patch, raw=raw):
            common.emit(measure(args, patch=patch, mix=mix, impl=impl, strategy=strategy, ids=ids, d4=d4, raw=raw))

        if "each" not in skip:
            for m in MANIPULATIONS:
                ids = np.full(args.batch, m.id, np.int32)
                run(m.name, ids, None, "host")
                for strategy in ("tables", "map"):
                    run(m.name, ids, None, "device", strategy)
        if "mix" not in skip:
            rng = np.random.default_rng(1)
            manipulated = rng.random(args.batch) < args.manip_prob
            ids = np.where(manipulated, rng.integers(1, len(MANIPULATIONS), args.batch), 0).astype(np.int32)
            d4 = rng.integers(0, 8, args.batch).astype(np.int32)
            run("train", ids, d4, "host")
            for strategy in strategies:
                run("train", ids, d4, "device", strategy)


if __name__ == "__main__":
    main()
