"""Shared benchmark helpers: machine description, memory, compile counts, timing, JSON lines.

Every benchmark prints one JSON object per measurement (docs/design.md, section 2) built by
`record`, so results from different scripts and machines can be concatenated and compared.
`CAMJAX_BENCH_SMOKE=1` asks the scripts for their tiniest settings (used by the tests and to
check benchmarks/gpu.sh on a CPU).
"""

from __future__ import annotations

import csv
import datetime
import functools
import json
import os
import platform
import resource
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

from camjax import hostmem

REPO = Path(__file__).resolve().parents[1]

# A benchmark measures what a camjax command gets, so a script run as `python benchmarks/x.py`
# starts itself again with huge pages for malloc, as `python -m camjax.<command>` does
# (camjax.hostmem says why; CAMJAX_HUGE_PAGES=0 measures without).
if Path(sys.argv[0]).resolve().parent == Path(__file__).resolve().parent:
    hostmem.reexec_with_huge_pages()
CACHE = Path(os.environ.get("CAMJAX_BENCH_CACHE", REPO / ".cache" / "bench"))  # generated JPEGs


def smoke() -> bool:
    return os.environ.get("CAMJAX_BENCH_SMOKE", "") not in ("", "0")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@functools.cache
def cpu_vector_isa() -> str:
    """The widest x86 vector extension /proc/cpuinfo lists (avx512f, avx2, ...), or ''."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return ""
    return next((isa for isa in ("avx512f", "avx2", "avx", "sse4_2") if isa in flags), "")


def machine() -> dict:
    """Where a number was measured: CPU, cores, library versions, accelerator."""
    import jax

    devices = jax.devices()
    return {
        "cpu": cpu_model(),
        # XLA:CPU compiles for the instruction set it finds: two VMs that both call themselves
        # "AMD EPYC" gave other digits from the same code (AVX2-only vs AVX-512).
        "vector_isa": cpu_vector_isa(),
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "python": platform.python_version(),
        "jax": _version("jax"),
        "jaxlib": _version("jaxlib"),
        "flax": _version("flax"),
        "platform": devices[0].platform,
        "device": devices[0].device_kind,
        "num_devices": len(devices),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),  # XLA:CPU's library choices change the speed
        **hostmem.state(),  # 4 KiB or 2 MiB pages for XLA:CPU's per-step buffers change it too
    }


def peak_rss_mb() -> float:
    """Peak resident memory of this process, in MiB (workers: `child_peak_rss_mb`)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    kib = usage.ru_maxrss / 1024 if sys.platform == "darwin" else usage.ru_maxrss  # macOS: bytes
    return round(kib / 1024, 1)


def child_peak_rss_mb() -> dict[int, float]:
    """Peak RSS (VmHWM) of each live child process, by pid; empty where /proc is missing."""
    import psutil

    out = {}
    for child in psutil.Process().children(recursive=True):
        try:
            for line in Path(f"/proc/{child.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[child.pid] = round(int(line.split()[1]) / 1024, 1)
        except OSError:
            pass
    return out


def load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def record(benchmark: str, **fields) -> dict:
    """A measurement with its machine and moment attached."""
    m = machine()
    return {
        "benchmark": benchmark,
        **fields,
        "device": m["device"],
        "machine": m,
        "load_avg": load_average(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def run_model(workdir: str) -> str:
    """The model a training run trained, from its config.json."""
    with open(os.path.join(workdir, "config.json")) as f:
        return json.load(f)["model"]["name"]


def runs_model(workdirs) -> str:
    """The models of several training runs, as one record field."""
    return ",".join(sorted({run_model(w) for w in workdirs}))


def evaluation_fields(result: dict) -> dict:
    """What a record keeps of an `evaluator.evaluate` report: the test score of every view set,
    the calibration before and after, and the open-set report."""
    return dict(
        test_weighted_accuracy={k: rounded(v, 4) for k, v in result["tta_subsets"].items()},
        calibration={k: v for k, v in result["calibration"].items() if k in ("before", "after", "ece_if_calibrated")},
        open_set=result.get("open_set"),
    )


def run_classes(workdir: str) -> list[str]:
    """The cameras a training run was trained on, in its class order (its run.json)."""
    with open(os.path.join(workdir, "run.json")) as f:
        return list(json.load(f)["classes"])


def kept_run_record(benchmark: str, workdir: str, name: str, **fields) -> dict:
    """A record of scores refitted on a kept training run (`recipe.py --keep`): whole
    evaluations, nothing timed."""
    return record(
        benchmark,
        model=run_model(workdir),
        name=name,
        workdir=workdir,
        **fields,
        peak_rss_mb=peak_rss_mb(),
        compiles_after_warmup=None,
    )


def known_test_predictions(probs_npz: str, labels_csv: str):
    """(uncalibrated, calibrated, label ids) of the test images of one evaluation
    (`evaluate`'s OUT_probs.npz) that were read and whose camera the run was trained on: the
    arrays of its calibration report, kept so that several runs can be pooled."""
    from camjax import postprocess

    saved = np.load(probs_npz)
    classes = list(saved["classes"])
    cameras = {fname: camera for fname, camera, _ in postprocess.read_labels(labels_csv)}
    ids = np.array([classes.index(cameras[f]) if cameras[f] in classes else -1 for f in saved["fnames"]])
    calibrated = saved["probs_before_prnu"] if "probs_before_prnu" in saved else saved["probs"]
    use = (ids >= 0) & np.isfinite(calibrated).all(-1)
    return saved["probs_uncalibrated"][use], calibrated[use], ids[use]


def pooled_calibration(parts) -> dict:
    """ECE and NLL before and after the temperatures, over several runs' known test images
    taken together (`known_test_predictions` of each), with the ECE a perfectly calibrated
    model would show on that many (`ece_if_calibrated`).

    One run's test set (168-240 synthetic patches) cannot show an ECE below about 0.06 even
    for a perfect model; three seeds' together can show about 0.04. The runs may know
    different cameras (open-set splits): only the top class and whether it is right count, so
    each run's probabilities are padded with zero columns to the widest."""
    from camjax import calibration

    width = max(p.shape[-1] for part in parts for p in part[:2])

    def padded(p):
        return np.pad(p, ((0, 0), (0, width - p.shape[-1])))

    uncalibrated = np.concatenate([padded(u) for u, _, _ in parts])
    calibrated = np.concatenate([padded(c) for _, c, _ in parts])
    labels = np.concatenate([y for _, _, y in parts])
    report = calibration.test_report(uncalibrated, calibrated, labels, calibrated_runs=[])
    return {
        "runs": len(parts),
        "images": len(labels),
        **{k: report[k] for k in ("before", "after", "ece_if_calibrated")},
    }


def pooled_record(benchmark: str, parts, **fields) -> dict:
    """A record of several runs' calibration pooled (`pooled_calibration`): nothing timed."""
    return record(
        benchmark,
        **fields,
        calibration=pooled_calibration(parts),
        peak_rss_mb=peak_rss_mb(),
        compiles_after_warmup=None,
    )


def emit(rec: dict) -> None:
    """Prints one JSON line (flushed, so a killed run keeps what it measured)."""
    print(json.dumps(rec, default=_jsonable), flush=True)


def _jsonable(x):
    if isinstance(x, (np.integer, np.floating)):
        return x.item()
    if isinstance(x, np.ndarray):
        return x.tolist()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def time_calls(fn, n: int) -> list[float]:
    """Wall seconds of `n` calls of fn(); fn must block until its work is done."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def median(times) -> float:
    return float(statistics.median(times))


def rounded(x, digits: int = 3):
    return None if x is None else round(float(x), digits)


def csv_ints(text: str) -> list[int]:
    return [int(v) for v in str(text).split(",") if v.strip()]


def csv_floats(text: str) -> list[float]:
    return [float(v) for v in str(text).split(",") if v.strip()]


def csv_strs(text: str) -> list[str]:
    return [v.strip() for v in str(text).split(",") if v.strip()]


# --- synthetic camera files ------------------------------------------------------------


def photo_like(height: int, width: int, seed: int) -> np.ndarray:
    """A uint8 RGB frame with smooth shading, edges, texture and mild sensor-like noise.

    Built at a quarter of the size and upsampled (fast for 12 MP), then noise is added at full
    size; at JPEG quality 95 a 4000x3000 frame takes a few MB, like a camera's photo, so
    entropy decoding costs about what it costs on real data (pure noise would inflate it).
    """
    import cv2

    rng = np.random.default_rng(seed)
    h4, w4 = -(-height // 4), -(-width // 4)
    y, x = np.mgrid[0:h4, 0:w4].astype(np.float32)
    base = 110 + 50 * np.sin(x / rng.uniform(20, 90) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(20, 90))
    base += 25 * (rng.random((h4 // 16 + 1, w4 // 16 + 1)) > 0.5).repeat(16, 0).repeat(16, 1)[:h4, :w4]
    small = (
        base[..., None] + rng.uniform(-30, 30, 3).astype(np.float32) + rng.normal(0, 6, (h4, w4, 3)).astype(np.float32)
    )
    frame = cv2.resize(np.clip(small, 0, 255).astype(np.uint8), (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.integers(-3, 4, (height, width, 3), dtype=np.int16)
    return np.clip(frame.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def jpeg_tree(files: int, height: int = 3000, width: int = 4000, quality: int = 95) -> Path:
    """ROOT/train/<class>/*.jpg of `files` camera-sized JPEGs over two classes, made once
    (in .cache/bench) and reused; returns ROOT."""
    from PIL import Image

    root = CACHE / f"jpeg_{width}x{height}_q{quality}_n{files}"
    done = root / ".complete"
    if done.exists():
        return root
    for i in range(files):
        folder = root / "train" / ("camA", "camB")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(height, width, seed=i)).save(folder / f"img_{i:03d}.jpg", quality=quality)
    done.touch()
    return root


# --- the train step, built as camjax/trainer.py builds it -------------------------------


def apply_overrides(config, overrides) -> None:
    """`KEY=VALUE` items (Python literals; a bare word stays a string) set on a ConfigDict,
    new keys allowed (model kwargs a config does not name)."""
    import ast

    for item in overrides:
        key, _, text = item.partition("=")
        *path, last = key.split(".")
        node = config
        for name in path:
            node = node[name]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text  # a bare string such as cosine
        node[last] = value


def load_config(spec: str):
    """`configs/<name>.py[:preset]` -> its ConfigDict (what --config takes in training), a
    relative path from the repository root."""
    from camjax import defaults

    path, sep, preset = spec.partition(":")
    file = Path(path) if Path(path).is_absolute() else REPO / path
    return defaults.load_config(f"{file}{sep}{preset}")


def model_config(name: str, kwargs_json: str = "", config: str = ""):
    """The model section: from a config file when given, else the defaults for `name`
    (camjax/defaults.py's model section), kwargs overridden."""
    from camjax.models import default_config

    if config:
        mc = load_config(config).model
        if name:
            mc.name = name
    else:
        mc = default_config(name)
    if kwargs_json:
        try:
            extra = json.loads(kwargs_json)
        except json.JSONDecodeError as e:
            raise SystemExit(f"--model_kwargs is not JSON ({e}): {kwargs_json!r}") from None
        mc.kwargs.update(extra)
    return mc


def train_config(mc, *, dtype: str, batch: int, parallel: str):
    """camjax/defaults.py's training defaults with this model section."""
    from camjax import defaults

    c = defaults.get_config()
    c.model = mc
    c.dtype, c.batch_size, c.parallel = dtype, batch, parallel
    return c


def synthetic_batch(batch: int, patch: int, seed: int = 0, num_classes: int = 10) -> dict[str, np.ndarray]:
    """A host batch with the training pipeline's model inputs (random pixels and labels)."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.integers(0, 256, (batch, patch, patch, 3), dtype=np.uint8),
        "label": rng.integers(0, num_classes, batch, dtype=np.int32),
        "is_manipulated": (rng.random(batch) < 0.5).astype(np.float32),
        "manipulation": rng.integers(0, 9, batch, dtype=np.int32),
    }


class TrainSetup:
    """Model, optimizer, placed state and the wrapped steps, built by `camjax.assembly.build`:
    the same call `python -m camjax.train` makes, so a benchmark times what training runs."""

    def __init__(self, config, num_classes: int = 10, seed: int = 0):
        from camjax import assembly
        from camjax.parallel import DataParallel

        self.config = config
        self.dp = DataParallel(config.parallel)
        self.local_batch = self.dp.check_batch_size(config.batch_size)
        self.built = assembly.build(
            config.model,
            num_classes,
            self.dp,
            dtype=config.dtype,
            optim_config=config.optim,
            steps_per_epoch=100,
            total_steps=1000,
            seed=seed,
        )
        self.state = self.dp.put_state(self.built.host_state)
        self.train_step = self.built.train_step(config)
        self.eval_step = self.built.predict()

    def tta_step(self, view_ids):
        return self.built.tta_predict(view_ids)

    def put_batch(self, batch):
        return self.dp.put_batch(batch)

    @property
    def per_device_batch(self) -> int:
        return self.config.batch_size // self.dp.num_devices


def compiled_flops(jitted, *args) -> float | None:
    """XLA's flop count of the compiled executable for these arguments (per device).

    Called after the function has run once, `lower().compile()` is a cache hit: no extra
    compilation is counted.
    """
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
    except Exception:  # noqa: BLE001 - cost analysis is optional on some backends
        return None
    if isinstance(cost, list):
        cost = cost[0] if cost else {}
    flops = (cost or {}).get("flops")
    return float(flops) if flops and flops > 0 else None


# Dense peak TFLOP/s per chip: (device_kind substring, {dtype: peak}). float32 counts the
# TF32 tensor-core rate on Ampere and later, which XLA uses for f32 convolutions and matmuls
# at JAX's default precision. V100 has no bf16 tensor cores (XLA computes bf16 at f32 rate).
PEAK_TFLOPS = (
    ("H100 PCIe", {"bfloat16": 756.0, "float32": 378.0}),
    ("H100", {"bfloat16": 989.0, "float32": 494.5}),
    ("H200", {"bfloat16": 989.0, "float32": 494.5}),
    ("A100", {"bfloat16": 312.0, "float32": 156.0}),
    ("V100", {"bfloat16": 15.7, "float32": 15.7}),
)


def peak_tflops(device_kind: str, dtype: str, override: float = 0.0) -> float | None:
    """The per-chip dense peak for `dtype`, `override` when > 0, None when unknown (e.g. CPU)."""
    if override > 0:
        return override
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(dtype)
    return None


def challenge_score(root: Path, predicted: dict[str, str]) -> tuple[float | None, dict[str, float | None]]:
    """(weighted accuracy, {"unalt": accuracy, "manip": accuracy}) of `predicted` (test file name ->
    camera) against ROOT/test_labels.csv: 0.7 unaltered + 0.3 manipulated, the challenge's score.
    Written here, not imported from camjax, so the reference baselines share no code with it;
    None where the labels or a subset are missing."""
    acc: dict[str, float | None] = {}
    labels = Path(root) / "test_labels.csv"
    if labels.exists():
        with open(labels) as fh:
            rows = list(csv.DictReader(fh))
        for kind in ("unalt", "manip"):
            hits = [
                predicted.get(r["fname"]) == r["camera"] for r in rows if r["fname"].rsplit(".", 1)[0].endswith(kind)
            ]
            acc[kind] = float(np.mean(hits)) if hits else None
    if acc.get("unalt") is None or acc.get("manip") is None:
        return None, acc
    return 0.7 * acc["unalt"] + 0.3 * acc["manip"], acc
