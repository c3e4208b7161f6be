"""The same train step through camjax, Keras 3 Applications (JAX backend) and, when installed,
torchvision: images/sec of each, the spread of its step times and the ratios, measured in one
process in alternating rounds.

    python benchmarks/compare.py --model resnet50 --patch 64 --batch 8 [--dtype bfloat16]
        [--frameworks camjax,keras,torch] [--steps 5 --rounds 4 --warmup 3]

Same network on each side: the Keras Applications backbone (include_top=False, average
pooling) and one dense layer to the classes, trained with Adam (1e-4) on sparse cross-entropy;
camjax runs its registry model with the plain head (no flag injection, no hidden layers, no
auxiliary head) through the step training uses (`jax.jit`, state donated). Every runner reads
the same batch, already in memory (float32 pixels for Keras and torch, which skip
preprocess_input; uint8 for camjax, which preprocesses inside its step).

The runners (`--frameworks` takes these names, or `keras` / `torch` for both of a kind):

- `camjax`: `camjax.steps.train_step` as training builds it.
- `keras_fast`, the Keras figure the headline ratio divides by: a jitted stateless train step
  built from the model's public stateless API, the "custom training loop in JAX" of the Keras 3
  guides: `model.stateless_call` under `jax.value_and_grad`, then
  `optimizer.stateless_apply`, the variables carried as arrays between steps and donated to
  the next one. It is the step `model.fit` itself jits on the JAX backend (its train step is
  these same two calls plus the loss-tracker update, jitted with the state donated), without
  fit's per-call data adapter, callbacks and final variable sync. `fit` with
  `steps_per_execution=N` was not taken: on the JAX backend it still calls that jitted step
  once per batch from a Python loop (nothing is fused across steps), and it can only be timed
  per `fit` call, not per step.
- `keras_train_on_batch`: `model.compile(optimizer=Adam)` + `model.train_on_batch`, the way the
  challenge's code trained; Keras syncs its variables back after every call, and that cost is
  part of the path. Reported, with its own ratio, not the headline.
- `torch_eager`, `torch_compile` (need torch and torchvision): the torchvision model,
  channels_last, Adam (fused CPU/GPU kernel where this torch has one), autocast for bfloat16;
  `torch_compile` runs the forward pass and the loss through `torch.compile` (inductor; the
  backward is compiled with it by AOTAutograd), the optimizer step stays the fused kernel.
  Where torch or torchvision is missing, or torchvision has no such model, each torch runner
  prints a `skipped` record and a line on stderr.

ResNet50: torchvision builds v1.5 (the stride of each downsampling bottleneck sits in its 3x3
convolution); Keras and camjax build v1 (stride in the first 1x1 convolution, a little fewer
FLOPs). By default the torch runners move the stride to the 1x1 convolution, so all sides time
v1 (`torch_resnet: "v1"` in the records); `--torch_resnet v1.5` times torchvision's own.

Timing: each runner first runs `--warmup` steps (compilation included), then `--rounds` rounds
each time `--steps` steps of every runner, the order rotating by one runner per round so that
machine load and position hit all alike. Each step is timed alone (blocking on its loss).
Every framework's record has the median step time (images/sec come from it), the min, max and
quartiles of its steps, how many steps it timed, the path, and the 1/5/15-minute load average
before timing (`load_avg_before`) and at the end (`load_avg`). The ratios divide camjax's
images/sec by each peer's (> 1: camjax faster). A summary table goes to stderr.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import os
import statistics
import sys
import types

os.environ.setdefault("KERAS_BACKEND", "jax")

import common
import jax
import numpy as np

NUM_CLASSES = 10
TORCHVISION = {
    "resnet50": "resnet50",
    "mobilenet_v2": "mobilenet_v2",
    "densenet121": "densenet121",
    "densenet201": "densenet201",
}
GROUPS = {"keras": ("keras_fast", "keras_train_on_batch"), "torch": ("torch_eager", "torch_compile")}
# camjax's images/sec divided by each of these, when both were measured.
RATIOS = ("keras_fast", "keras_train_on_batch", "torch_eager", "torch_compile")


def parse_args(argv=None):
    smoke = common.smoke()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="resnet50", help="resnet50 | mobilenet | mobilenet_v2 | densenet121 | densenet201 | ..."
    )
    p.add_argument("--model_kwargs", default="", help="e.g. '{\"alpha\": 0.25}' (passed to both frameworks)")
    p.add_argument("--patch", type=int, default=32 if smoke else 64)
    p.add_argument("--batch", type=int, default=2 if smoke else 8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=1 if smoke else 5, help="timed steps per framework per round")
    p.add_argument("--rounds", type=int, default=2 if smoke else 4)
    p.add_argument("--warmup", type=int, default=1 if smoke else 3, help="untimed steps per framework first")
    p.add_argument(
        "--frameworks",
        default="camjax,keras,torch",
        help=f"comma-separated runners: camjax, {', '.join(RATIOS)}; keras = {'+'.join(GROUPS['keras'])}, "
        f"torch = {'+'.join(GROUPS['torch'])}",
    )
    p.add_argument(
        "--torch_resnet",
        default="v1",
        choices=["v1", "v1.5"],
        help="ResNet50 in torch: v1 as Keras and camjax (stride in the first 1x1 conv), or torchvision's v1.5",
    )
    p.add_argument("--torch_compile_mode", default="default", help="torch.compile(mode=...)")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--warmup, --steps and --rounds must be >= 1")
    args.framework_list = []
    for name in common.csv_strs(args.frameworks):
        for runner in GROUPS.get(name, (name,)):
            if runner not in RUNNERS:
                p.error(f"unknown framework {runner!r}; expected {sorted(RUNNERS)} or {sorted(GROUPS)}")
            if runner not in args.framework_list:
                args.framework_list.append(runner)
    return args


class CamjaxRunner:
    name = "camjax"
    path = "jax.jit train step (camjax.steps.train_step as training builds it, state donated), resident batch"

    def __init__(self, args, kwargs: dict, host: dict):
        import ml_collections

        mc = common.model_config(args.model)
        mc.kwargs = ml_collections.ConfigDict(kwargs)
        mc.head = ml_collections.ConfigDict({"hidden": (), "dropout": (), "inject_flag": False, "aux_head": False})
        mc.highpass, mc.pooling = "none", "avg"
        config = common.train_config(mc, dtype=args.dtype, batch=args.batch, parallel="sharded")
        config.aux_loss_weight = 0.0
        self.setup = common.TrainSetup(config, num_classes=NUM_CLASSES)
        self.batch = self.setup.put_batch(host)
        self.trainable_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(self.setup.state.params))
        self.fields = {}

    def step(self):
        self.setup.state, metrics = self.setup.train_step(self.setup.state, self.batch)
        jax.block_until_ready(metrics)


def keras_model(args, kwargs: dict):
    """keras.applications.<Model>(include_top=False, weights=None, pooling="avg") + Dense(10, softmax)."""
    import keras

    from camjax import models

    app = models.get(args.model).keras_application
    if app is None:
        raise LookupError(f"{args.model} has no Keras Applications counterpart")
    if args.dtype == "bfloat16":
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
    backbone = getattr(keras.applications, app)(
        include_top=False, weights=None, input_shape=(args.patch, args.patch, 3), pooling="avg", **kwargs
    )
    out = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(backbone.output)
    return keras.Model(backbone.input, out)


class KerasFastRunner:
    name = "keras_fast"
    path = (
        "keras.applications + Dense; jax.jit(value_and_grad(model.stateless_call) + Adam.stateless_apply), "
        "variables carried and donated (the step model.fit jits), resident batch"
    )

    def __init__(self, args, kwargs: dict, host: dict):
        import keras

        model = keras_model(args, kwargs)
        optimizer = keras.optimizers.Adam(1e-4)
        optimizer.build(model.trainable_variables)
        loss_fn = keras.losses.SparseCategoricalCrossentropy()

        def loss_and_state(trainable, non_trainable, x, y):
            y_pred, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            return loss_fn(y, y_pred), non_trainable

        grad_fn = jax.value_and_grad(loss_and_state, has_aux=True)

        @functools.partial(jax.jit, donate_argnums=0)
        def train_step(state, x, y):
            trainable, non_trainable, opt_vars = state
            (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x, y)
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return (trainable, non_trainable, opt_vars), loss

        self.train_step = train_step
        self.state = tuple(
            [v.value for v in variables]
            for variables in (model.trainable_variables, model.non_trainable_variables, optimizer.variables)
        )
        self.x = jax.device_put(host["image"].astype(np.float32))
        self.y = jax.device_put(host["label"])
        self.trainable_params = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
        self.fields = {}

    def step(self):
        self.state, loss = self.train_step(self.state, self.x, self.y)
        jax.block_until_ready(loss)


class KerasTrainOnBatchRunner:
    name = "keras_train_on_batch"
    path = "keras.applications + Dense, model.compile(Adam) + train_on_batch (variables synced every call)"

    def __init__(self, args, kwargs: dict, host: dict):
        import keras

        self.model = keras_model(args, kwargs)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        self.x = jax.device_put(host["image"].astype(np.float32))
        self.y = jax.device_put(host["label"])
        self.trainable_params = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)
        self.fields = {}

    def step(self):
        self.model.train_on_batch(self.x, self.y)  # returns host floats: it waits for the step


@functools.cache
def torchvision_models():
    """(torchvision.models, note). The note is None, or says that only torchvision's Python model
    code was loaded: a torchvision build whose compiled ops do not fit this torch (PyPI's
    CUDA torchvision beside a CPU torch fails `import torchvision` with "operator
    torchvision::nms does not exist") still has the plain torch.nn classification models,
    which use none of those ops. ImportError where torchvision is not installed."""
    try:
        import torchvision

        return torchvision.models, None
    except RuntimeError as e:
        reason = str(e).splitlines()[0]
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    spec = importlib.util.find_spec("torchvision")
    package = types.ModuleType("torchvision")  # the package without its __init__ (which loads the ops)
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__, package.__file__ = spec, spec.origin
    sys.modules["torchvision"] = package
    import torchvision.models

    return torchvision.models, f"torchvision's compiled ops do not load ({reason}); its model code was loaded alone"


def resnet50_v1(model):
    """torchvision's ResNet50 (v1.5) made v1, as Keras and camjax build it: in the first bottleneck
    of stages 2-4 the stride moves from the 3x3 convolution (conv2) to the first 1x1 (conv1).
    Same parameters and output shapes; the 3x3 convolution then runs at the reduced size."""
    for stage in (model.layer2, model.layer3, model.layer4):
        block = stage[0]
        assert block.conv1.kernel_size == (1, 1) and block.conv2.kernel_size == (3, 3)
        block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return model


def torch_model(args, kwargs: dict):
    """(torchvision model with NUM_CLASSES outputs, record fields); ImportError / LookupError where
    there is none."""
    import torch  # noqa: F401  - ImportError naming torch when it is missing

    models, note = torchvision_models()
    if args.model not in TORCHVISION:
        raise LookupError(f"torchvision has no {args.model}")
    if kwargs:
        raise LookupError(f"model kwargs {kwargs} have no torchvision equivalent")
    model = getattr(models, TORCHVISION[args.model])(num_classes=NUM_CLASSES)
    fields = {"torch": _version("torch"), "torchvision": _version("torchvision")}
    if note:
        fields["torchvision_note"] = note
    if args.model == "resnet50":
        fields["torch_resnet"] = args.torch_resnet
        if args.torch_resnet == "v1":
            model = resnet50_v1(model)
    return model, fields


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


class TorchEagerRunner:
    name = "torch_eager"
    path = "torchvision model, channels_last, Adam, eager"
    compiled = False

    def __init__(self, args, kwargs: dict, host: dict):
        import torch

        model, self.fields = torch_model(args, kwargs)
        self.torch = torch
        self.model = model.to(memory_format=torch.channels_last).train()
        try:
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4, fused=True)
            self.fields["adam"] = "fused"
        except (RuntimeError, TypeError, ValueError):  # a torch without the fused CPU kernel
            self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
            self.fields["adam"] = "default"
        images = torch.from_numpy(host["image"].astype(np.float32)).permute(0, 3, 1, 2)
        self.x = images.contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(host["label"].astype(np.int64))
        autocast = args.dtype == "bfloat16"

        def forward_loss(x, y):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                return torch.nn.functional.cross_entropy(self.model(x), y)

        self.forward_loss = forward_loss
        if self.compiled:
            self.forward_loss = torch.compile(forward_loss, mode=args.torch_compile_mode)
            self.fields["torch_compile_mode"] = args.torch_compile_mode
        self.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.forward_loss(self.x, self.y)
        loss.backward()
        self.opt.step()
        loss.item()


class TorchCompileRunner(TorchEagerRunner):
    name = "torch_compile"
    path = "torchvision model, channels_last, torch.compile(forward + loss; backward by AOTAutograd), Adam"
    compiled = True


RUNNERS = {
    r.name: r for r in (CamjaxRunner, KerasFastRunner, KerasTrainOnBatchRunner, TorchEagerRunner, TorchCompileRunner)
}


def time_in_rounds(runners, rounds: int, steps: int) -> None:
    """`steps` timed calls of each runner's step per round, each round starting one runner
    later, so no runner always runs first or right after the same neighbour. Sets each runner's
    `times`, its compilations (`compiles`) and its minor page faults (`faults`: memory the C
    library maps afresh, camjax.hostmem) over those calls.

    Says so on stderr when this process lacks the malloc huge pages camjax's commands start
    with: a script run from outside benchmarks/ that imports this module does not start itself
    again with them, and its steps then fault their memory in 4 KiB at a time (DenseNet121 at
    patch 224: 195,338 faults a step against 456), so its times are not the ones camjax gets."""
    from camjax import hostmem
    from camjax.parallel import compile_count

    if hostmem.why_not() is None:
        print(
            f"compare.time_in_rounds: this process runs without {hostmem.WANTED} (camjax.hostmem), unlike "
            f"camjax's commands; start it with GLIBC_TUNABLES={hostmem.WANTED} to time what they get",
            file=sys.stderr,
        )
    for r in runners:
        r.times, r.compiles, r.faults = [], 0, 0
    for i in range(rounds):
        first = i % len(runners) if runners else 0
        for r in runners[first:] + runners[:first]:
            before, faults_before = compile_count(), hostmem.minor_faults()
            r.times += common.time_calls(r.step, steps)
            r.compiles += compile_count() - before
            r.faults += hostmem.minor_faults() - faults_before


def base_record(args, kwargs, framework: str, **fields) -> dict:
    return common.record(
        "compare",
        framework=framework,
        model=args.model,
        model_kwargs=kwargs,
        patch=args.patch,
        batch=args.batch,
        dtype=args.dtype,
        **fields,
    )


def skipped(args, kwargs, framework: str, why: str) -> dict:
    print(f"compare.py: {framework} not measured: {why}", file=sys.stderr, flush=True)
    return base_record(
        args,
        kwargs,
        framework,
        skipped=why,
        images_per_sec=None,
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=None,
    )


def spread(times: list[float]) -> dict:
    """Median, min, max and quartiles of step times, in ms, to 0.1 us: a tiny model's step
    takes a tenth of a millisecond, where two decimals would move images/s by 3%."""
    ms = sorted(t * 1e3 for t in times)
    q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive") if len(ms) > 1 else ms * 3
    return {
        "step_ms_median": common.rounded(statistics.median(ms), 4),
        "step_ms_min": common.rounded(ms[0], 4),
        "step_ms_q1": common.rounded(q1, 4),
        "step_ms_q3": common.rounded(q3, 4),
        "step_ms_max": common.rounded(ms[-1], 4),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    host = common.synthetic_batch(args.batch, args.patch, num_classes=NUM_CLASSES)
    runners = []
    for name in args.framework_list:
        try:
            runners.append(RUNNERS[name](args, kwargs, host))
        except ImportError as e:
            common.emit(skipped(args, kwargs, name, f"{e.name or name} not installed"))
        except LookupError as e:
            common.emit(skipped(args, kwargs, name, str(e)))
    for r in runners:
        for _ in range(args.warmup):
            r.step()
    load_before = common.load_average()
    time_in_rounds(runners, args.rounds, args.steps)
    ips, by_name = {}, {r.name: r for r in runners}
    for r in runners:
        ips[r.name] = args.batch / common.median(r.times)
        common.emit(
            base_record(
                args,
                kwargs,
                r.name,
                path=r.path,
                **r.fields,
                trainable_params=r.trainable_params,
                images_per_sec=common.rounded(ips[r.name], 3),
                **spread(r.times),
                timed_steps=len(r.times),
                minor_faults_per_step=round(r.faults / len(r.times)),
                rounds=args.rounds,
                warmup=args.warmup,
                load_avg_before=load_before,
                peak_rss_mb=common.peak_rss_mb(),
                compiles_after_warmup=None if r.name.startswith("torch") else r.compiles,
            )
        )
    for other in RATIOS:
        if "camjax" in ips and other in ips:
            common.emit(
                base_record(
                    args,
                    kwargs,
                    f"camjax/{other}",
                    images_per_sec=None,
                    ratio=common.rounded(ips["camjax"] / ips[other], 3),
                    meaning=f"camjax images/sec divided by {other} images/sec, medians (> 1: camjax faster)",
                    **{k: v for k, v in by_name[other].fields.items() if k == "torch_resnet"},
                    load_avg_before=load_before,
                    peak_rss_mb=common.peak_rss_mb(),
                    compiles_after_warmup=None,
                )
            )
    summary(args, runners, ips)


def summary(args, runners, ips) -> None:
    """The records in a table, on stderr (stdout stays JSON lines)."""
    out = sys.stderr
    print(f"\n{args.model} patch {args.patch} batch {args.batch} {args.dtype}:", file=out)
    print(
        f"{'framework':<22} {'img/s':>9} {'median ms':>10} {'min-max ms':>19} {'IQR ms':>19} {'steps':>5} {'faults/step':>11}",
        file=out,
    )
    for r in runners:
        s = spread(r.times)
        print(
            f"{r.name:<22} {ips[r.name]:9.2f} {s['step_ms_median']:10.1f} "
            f"{s['step_ms_min']:9.1f}-{s['step_ms_max']:<9.1f} {s['step_ms_q1']:9.1f}-{s['step_ms_q3']:<9.1f} "
            f"{len(r.times):5d} {r.faults / len(r.times):11.0f}",
            file=out,
        )
    for other in RATIOS:
        if "camjax" in ips and other in ips:
            print(f"camjax/{other}: {ips['camjax'] / ips[other]:.3f}", file=out)
    torch_fields = next((r.fields for r in runners if r.name.startswith("torch")), {})
    if torch_fields.get("torch_resnet"):
        print(f"torch ResNet50: {torch_fields['torch_resnet']} (Keras and camjax: v1)", file=out)


if __name__ == "__main__":
    main()
