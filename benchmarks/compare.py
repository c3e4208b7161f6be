"""The same train step through camjax, Keras 3 Applications (JAX backend) and, when installed,
torchvision: images/sec of each and the ratio, measured in one process in alternating rounds.

    python benchmarks/compare.py --model resnet50 --patch 64 --batch 8 [--dtype bfloat16]

Same network on each side: the Keras Applications backbone (include_top=False, average
pooling) and one dense layer to the classes, trained with Adam on sparse cross-entropy; camjax
runs its registry model with the plain head (no flag injection, no hidden layers, no
auxiliary head) through the step training uses. Keras runs its native path,
`model.compile(optimizer=Adam)` + `model.train_on_batch`, the way the challenge's code
trained (Keras syncs its variables back after every call: that cost is part of the path).
Both read the same device-resident batch (float32 pixels for Keras, which skips
preprocess_input; uint8 for camjax, which preprocesses inside its step). Rounds alternate
`--steps` timed steps of each framework so that machine load hits both alike; each
framework's figure is the median over all its timed steps.
"""

from __future__ import annotations

import argparse
import json
import os

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


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", default="resnet50", help="resnet50 | mobilenet | mobilenet_v2 | densenet121 | densenet201 | ..."
    )
    p.add_argument("--model_kwargs", default="", help="e.g. '{\"alpha\": 0.25}' (passed to both frameworks)")
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--steps", type=int, default=3, help="timed steps per framework per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--frameworks", default="camjax,keras,torch")
    args = p.parse_args(argv)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        p.error("--warmup, --steps and --rounds must be >= 1")
    return args


class CamjaxRunner:
    name = "camjax"
    note = "jax.jit train step (camjax.steps.train_step), device-resident batch"

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

    def step(self):
        self.setup.state, metrics = self.setup.train_step(self.setup.state, self.batch)
        jax.block_until_ready(metrics)


class KerasRunner:
    name = "keras"
    note = "keras.applications + Dense, model.compile(Adam) + train_on_batch (JAX backend)"

    def __init__(self, args, kwargs: dict, host: dict):
        import keras

        from camjax import models

        app = models.get(args.model).keras_application
        if app is None:
            raise SystemExit(f"{args.model} has no Keras Applications counterpart")
        if args.dtype == "bfloat16":
            keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        backbone = getattr(keras.applications, app)(
            include_top=False, weights=None, input_shape=(args.patch, args.patch, 3), pooling="avg", **kwargs
        )
        out = keras.layers.Dense(NUM_CLASSES, activation="softmax", dtype="float32")(backbone.output)
        self.model = keras.Model(backbone.input, out)
        self.model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy")
        self.x = jax.device_put(host["image"].astype(np.float32))
        self.y = jax.device_put(host["label"])
        self.trainable_params = sum(int(np.prod(w.shape)) for w in self.model.trainable_weights)

    def step(self):
        self.model.train_on_batch(self.x, self.y)  # returns host floats: it waits for the step


class TorchRunner:
    name = "torch"
    note = "torchvision model, channels_last, Adam, eager"

    def __init__(self, args, kwargs: dict, host: dict):
        import torch
        import torchvision

        if args.model not in TORCHVISION:
            raise LookupError(f"torchvision has no {args.model}")
        if kwargs:
            raise LookupError(f"model kwargs {kwargs} have no torchvision equivalent")
        self.torch = torch
        self.model = getattr(torchvision.models, TORCHVISION[args.model])(num_classes=NUM_CLASSES)
        self.model = self.model.to(memory_format=torch.channels_last).train()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        images = torch.from_numpy(host["image"].astype(np.float32)).permute(0, 3, 1, 2)
        self.x = images.contiguous(memory_format=torch.channels_last)
        self.y = torch.from_numpy(host["label"].astype(np.int64))
        self.autocast = args.dtype == "bfloat16"
        self.trainable_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def step(self):
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            loss = torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        self.opt.step()
        loss.item()


RUNNERS = {"camjax": CamjaxRunner, "keras": KerasRunner, "torch": TorchRunner}


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
    return base_record(
        args,
        kwargs,
        framework,
        skipped=why,
        images_per_sec=None,
        peak_rss_mb=common.peak_rss_mb(),
        compiles_after_warmup=None,
    )


def main(argv=None) -> None:
    args = parse_args(argv)
    from camjax.parallel import compile_count

    kwargs = json.loads(args.model_kwargs) if args.model_kwargs else {}
    host = common.synthetic_batch(args.batch, args.patch, num_classes=NUM_CLASSES)
    runners = []
    for name in common.csv_strs(args.frameworks):
        if name not in RUNNERS:
            raise SystemExit(f"unknown framework {name!r}; expected one of {sorted(RUNNERS)}")
        try:
            runners.append(RUNNERS[name](args, kwargs, host))
        except ImportError as e:
            common.emit(skipped(args, kwargs, name, f"{e.name or name} not installed"))
        except LookupError as e:
            common.emit(skipped(args, kwargs, name, str(e)))
    for r in runners:
        r.times, r.compiles = [], 0
        for _ in range(args.warmup):
            r.step()
    for _ in range(args.rounds):
        for r in runners:
            before = compile_count()
            r.times += common.time_calls(r.step, args.steps)
            r.compiles += compile_count() - before
    ips = {}
    for r in runners:
        step_s = common.median(r.times)
        ips[r.name] = args.batch / step_s
        common.emit(
            base_record(
                args,
                kwargs,
                r.name,
                path=r.note,
                trainable_params=r.trainable_params,
                images_per_sec=common.rounded(ips[r.name], 3),
                step_ms_median=common.rounded(step_s * 1e3, 2),
                timed_steps=len(r.times),
                rounds=args.rounds,
                peak_rss_mb=common.peak_rss_mb(),
                compiles_after_warmup=r.compiles if r.name != "torch" else None,
            )
        )
    for other in ("keras", "torch"):
        if "camjax" in ips and other in ips:
            common.emit(
                base_record(
                    args,
                    kwargs,
                    f"camjax/{other}",
                    images_per_sec=None,
                    ratio=common.rounded(ips["camjax"] / ips[other], 3),
                    meaning=f"camjax images/sec divided by {other} images/sec (> 1: camjax faster)",
                    peak_rss_mb=common.peak_rss_mb(),
                    compiles_after_warmup=None,
                )
            )


if __name__ == "__main__":
    main()
