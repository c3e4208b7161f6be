"""Which kernel library runs each convolution of camjax's train step on XLA:CPU, per XLA_FLAGS.

    python benchmarks/xla_cpu_kernels.py --model resnet50 --patch 64 --batch 8 \
        [--flags=none --flags=--xla_cpu_use_onednn=true ...]   (the = form: each value starts with --)

A timing says whether a flag made the step faster; it cannot say whether the flag reached the
convolutions at all. This compiles the step `compare.py` times (the same `CamjaxRunner`) once
per flag set, each in a fresh process (XLA reads XLA_FLAGS once, at start-up), and reads the
compiled HLO: every `convolution` instruction is attributed to the library of the fusion that
holds it (`__ynn_fusion`: YNNPACK; a oneDNN custom call or fusion: oneDNN; any other fusion or
none: XLA's own emitter, which calls Eigen for a plain convolution). Nothing is timed, so the
answer does not depend on the load. One JSON line per flag set, a table on stderr.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys

import common

DEFAULT_FLAGS = (
    "",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_experimental_onednn_custom_call=true",
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
)

_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) .*\{$")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%\S+ = .*?\s([a-z][\w-]*)\(")
_CALLS = re.compile(r"calls=%([\w.-]+)")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--model_kwargs", default="", help="JSON, as compare.py takes it")
    p.add_argument(
        "--flags", action="append", default=None, help="an XLA_FLAGS value, repeatable (write --flags=VALUE)"
    )
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def fusion_library(line: str) -> str:
    if "__ynn_fusion" in line:
        return "ynnpack"
    if "onednn" in line.lower():
        return "onednn"
    kind = re.search(r"kind=(k\w+)", line)
    return f"xla ({kind.group(1)})" if kind else "xla"


def convolution_libraries(hlo: str) -> tuple[collections.Counter, collections.Counter]:
    """Convolutions of a compiled HLO module, counted by the library that runs them, and the
    windows (size, stride, padding) of those XLA runs itself, counted."""
    library_of_computation, convolutions_in, windows_in = {}, collections.Counter(), collections.defaultdict(list)
    onednn_calls = 0
    computation = None
    for line in hlo.splitlines():
        start = _COMPUTATION.match(line)
        if start:
            computation = start.group(1)
            continue
        op = _INSTRUCTION.match(line)
        if not op:
            continue
        if op.group(1) == "convolution":
            convolutions_in[computation] += 1
            window = re.search(r"window=\{([^}]*)\}", line)
            windows_in[computation].append(window.group(1) if window else "?")
        elif op.group(1) == "fusion":
            called = _CALLS.search(line)
            if called:
                library_of_computation[called.group(1)] = fusion_library(line)
        elif op.group(1) == "custom-call" and "onednn" in line.lower() and "conv" in line.lower():
            onednn_calls += 1
    counts, xla_windows = collections.Counter(), collections.Counter()
    for comp, n in convolutions_in.items():
        library = library_of_computation.get(comp, "xla (unfused)")
        counts[library] += n
        if library.startswith("xla"):
            xla_windows.update(windows_in[comp])
    if onednn_calls:
        counts["onednn"] += onednn_calls
    return counts, xla_windows


def child(args) -> None:
    import compare

    runner = compare.CamjaxRunner(
        args, json.loads(args.model_kwargs or "{}"), common.synthetic_batch(args.batch, args.patch)
    )
    setup = runner.setup
    hlo = setup.train_step.lower(setup.state, runner.batch).compile().as_text()
    counts, xla_windows = convolution_libraries(hlo)
    print(json.dumps({"counts": counts, "xla_windows": xla_windows, "peak_rss_mb": common.peak_rss_mb()}), flush=True)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        return child(args)
    rows = []
    for flags in args.flags if args.flags is not None else DEFAULT_FLAGS:
        flags = "" if flags == "none" else flags
        env = {**os.environ, "XLA_FLAGS": flags}
        cmd = [sys.executable, __file__, "--child", "--model", args.model, "--patch", str(args.patch)]
        cmd += ["--batch", str(args.batch), "--dtype", args.dtype, "--model_kwargs", args.model_kwargs]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if done.returncode:
            raise SystemExit(f"XLA_FLAGS={flags!r}: the compile failed:\n{done.stderr[-3000:]}")
        found = json.loads(done.stdout.strip().splitlines()[-1])
        counts = found["counts"]
        rows.append((flags, counts))
        common.emit(
            common.record(
                "xla_cpu_kernels",
                model=args.model,
                patch=args.patch,
                batch=args.batch,
                dtype=args.dtype,
                xla_flags=flags,
                convolutions=counts,
                total=sum(counts.values()),
                xla_windows=found["xla_windows"],
                peak_rss_mb=found["peak_rss_mb"],  # the compiling process's
                compiles_after_warmup=None,  # compiles only, nothing is timed
            )
        )
    libraries = sorted({lib for _, c in rows for lib in c})
    print(
        f"\n{args.model} patch {args.patch} batch {args.batch} {args.dtype}: convolutions of the train step by library",
        file=sys.stderr,
    )
    print(f"{'XLA_FLAGS':64s} " + " ".join(f"{lib:>16s}" for lib in libraries), file=sys.stderr)
    for flags, counts in rows:
        print(f"{flags or '(none)':64s} " + " ".join(f"{counts.get(lib, 0):16d}" for lib in libraries), file=sys.stderr)


if __name__ == "__main__":
    main()
