"""Where camjax's train step spends its time on XLA:CPU: a `jax.profiler` trace of the step
`compare.py` times, summed per compiled HLO instruction.

    python benchmarks/profile_step.py --model mobilenet_v2 --patch 224 --batch 4 [--steps 5] [--top 15]

A ratio against torch says how far behind a step is, not where. This runs the same
`CamjaxRunner` as `compare.py` (warm-up steps first, so no compilation is traced), times
`--steps` steps untraced for the wall time, then traces as many and reads the Perfetto trace
the profiler writes: every event named after an instruction of the compiled step's HLO is an
XLA kernel, and its durations are summed per step. Each instruction is put in a kind:
`ynnpack` (a YNNPACK fusion: convolutions, products and the reductions XLA hands it),
`onednn` (a oneDNN fusion, under XLA_FLAGS that ask for them), `xla (kLoop)` or `xla
(kInput)` (XLA's code-generated elementwise, pad and reduction loops: batch normalisation,
activations, the shifted-slice depthwise convolutions; the fusion labels of
`xla_cpu_kernels.py`), `xla dot`/`xla convolution` (XLA's own library calls) or `other`. The record also gives each traced
thread's summed kernel time over the wall time, a rough view of how busy the cores were.

One JSON line (`"benchmark": "profile_step"`): the median step, the kernels' summed time per
step by kind, by instruction family (the name without its number), and the `--top` single
instructions with their output shapes. A table goes to stderr. Nothing here is compared with
another framework; the shares within one run are what to read.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import sys
import tempfile

import common
import compare
import jax
from xla_cpu_kernels import fusion_library

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%([\w.-]+) = (\S+) ([a-z][\w-]*)\(")


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="camnet" if smoke else "mobilenet_v2")
    p.add_argument("--patch", type=int, default=32 if smoke else 224)
    p.add_argument("--batch", type=int, default=2 if smoke else 4)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--model_kwargs", default="", help="JSON, as compare.py takes it")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=2 if smoke else 5, help="steps timed, then as many traced")
    p.add_argument("--top", type=int, default=15, help="single instructions listed")
    return p.parse_args(argv)


def instructions(hlo: str) -> dict[str, tuple[str, str]]:
    """(output shape, kind) of every instruction of a compiled HLO module, by name: a fusion's
    kind is its library as `xla_cpu_kernels.fusion_library` reads it."""
    out = {}
    for line in hlo.splitlines():
        m = _INSTRUCTION.match(line)
        if not m:
            continue
        name, shape, op = m.groups()
        if op == "fusion":
            kind = fusion_library(line)
        elif op in ("dot", "convolution"):
            kind = f"xla {op}"
        else:
            kind = "other"
        out[name] = (shape, kind)
    return out


def kernel_times(trace_events, names) -> tuple[collections.Counter, collections.Counter, dict[str, float]]:
    """Summed microseconds and calls per HLO instruction, and each kernel thread's busy
    microseconds, from a Perfetto trace's complete ('X') events."""
    micros, calls, busy = collections.Counter(), collections.Counter(), collections.Counter()
    for e in trace_events:
        if e.get("ph") == "X" and e.get("name") in names:
            micros[e["name"]] += e["dur"]
            calls[e["name"]] += 1
            busy[(e.get("pid"), e.get("tid"))] += e["dur"]
    return micros, calls, {f"{pid}/{tid}": us for (pid, tid), us in busy.items()}


def family(name: str) -> str:
    head, _, tail = name.rpartition(".")
    return head if head and tail.isdigit() else name


def read_trace(folder: str) -> list[dict]:
    files = sorted(glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)) or sorted(
        glob.glob(f"{folder}/**/*.json.gz", recursive=True)
    )
    if not files:
        raise SystemExit(f"profile_step.py: the profiler wrote no Perfetto trace under {folder}")
    with gzip.open(files[-1]) as f:
        data = json.load(f)
    return data["traceEvents"] if isinstance(data, dict) else data


def main(argv=None) -> None:
    args = parse_args(argv)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    runner = compare.CamjaxRunner(args, kwargs, common.synthetic_batch(args.batch, args.patch, num_classes=10))
    for _ in range(args.warmup):
        runner.step()
    hlo = runner.setup.train_step.lower(runner.setup.state, runner.batch).compile().as_text()
    shapes = instructions(hlo)
    from camjax.parallel import compile_count

    load_before = common.load_average()
    compiles = compile_count()
    wall = common.median(common.time_calls(runner.step, args.steps))
    with tempfile.TemporaryDirectory() as folder:
        jax.profiler.start_trace(folder, create_perfetto_trace=True)
        for _ in range(args.steps):
            runner.step()
        jax.profiler.stop_trace()
        micros, calls, busy = kernel_times(read_trace(folder), set(shapes))
    per_step = {k: v / args.steps / 1e3 for k, v in micros.items()}  # ms
    total = sum(per_step.values())
    by_kind, by_family = collections.Counter(), collections.Counter()
    for name, ms in per_step.items():
        by_kind[shapes[name][1]] += ms
        by_family[family(name)] += ms

    def shares(counter):
        return [
            {"name": k, "ms_per_step": common.rounded(v, 3), "share": common.rounded(v / total, 3)}
            for k, v in counter.most_common()
        ]

    top = [
        {
            "instruction": k,
            "kind": shapes[k][1],
            "shape": shapes[k][0],
            "ms_per_step": common.rounded(v, 3),
            "share": common.rounded(v / total, 3),
            "calls_per_step": common.rounded(calls[k] / args.steps, 2),
        }
        for k, v in sorted(per_step.items(), key=lambda kv: -kv[1])[: args.top]
    ]
    rec = common.record(
        "profile_step",
        model=args.model,
        model_kwargs=kwargs,
        patch=args.patch,
        batch=args.batch,
        dtype=args.dtype,
        step_ms_median=common.rounded(wall * 1e3, 3),
        kernel_ms_per_step=common.rounded(total, 3),
        thread_busy_share={t: common.rounded(us / args.steps / 1e3 / (wall * 1e3), 3) for t, us in busy.items()},
        by_kind=shares(by_kind),
        by_family=shares(by_family)[: args.top],
        top=top,
        steps=args.steps,
        load_avg_before=load_before,
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=compile_count() - compiles,
    )
    common.emit(rec)
    out = sys.stderr
    print(
        f"\n{args.model} patch {args.patch} batch {args.batch}: step {wall * 1e3:.1f} ms (median of {args.steps}), "
        f"kernels {total:.1f} ms summed over {len(busy)} threads",
        file=out,
    )
    for k in rec["by_kind"]:
        print(f"  {k['name']:<28} {k['ms_per_step']:9.2f} ms {100 * k['share']:5.1f}%", file=out)
    for t in top:
        print(f"  {t['instruction']:<34} {t['kind']:<12} {t['shape']:<28} {t['ms_per_step']:8.2f} ms", file=out)


if __name__ == "__main__":
    main()
