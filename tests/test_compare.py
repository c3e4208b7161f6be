"""benchmarks/compare.py: its records, the Keras fast path as a real train step, and the torch
ResNet50 made v1. No timing is asserted."""

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from conftest import require_reference
from test_benchmarks import BENCH, env, run  # noqa: F401  (env: fixture)

SPREAD = ("step_ms_min", "step_ms_q1", "step_ms_median", "step_ms_q3", "step_ms_max")
MEASURED = ("path", "trainable_params", "images_per_sec", *SPREAD, "timed_steps", "rounds", "warmup")


@pytest.fixture(scope="module")
def compare():
    sys.path.insert(0, str(BENCH))
    try:
        import compare
    finally:
        sys.path.remove(str(BENCH))
    return compare


def tiny_keras_model(args, kwargs):
    """Conv, BatchNorm (non-trainable statistics the step must carry), pooling, softmax."""
    import keras

    x = inputs = keras.Input((args.patch, args.patch, 3))
    x = keras.layers.Conv2D(4, 3, strides=2, use_bias=False)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(x))


def check_measured(r, steps: int):
    assert r["benchmark"] == "compare" and "skipped" not in r
    missing = [k for k in (*MEASURED, "load_avg_before", "load_avg", "machine", "date") if k not in r]
    assert not missing, f"{r['framework']} lacks {missing}"
    spread = [r[k] for k in SPREAD]
    assert spread == sorted(spread) and spread[0] > 0, spread
    assert r["timed_steps"] == steps and r["trainable_params"] > 0
    assert r["images_per_sec"] == pytest.approx(r["batch"] / (r["step_ms_median"] / 1e3), rel=0.02)


def smoke_run(compare, monkeypatch, capsys, frameworks: str) -> tuple[dict, str]:
    """compare.main in this process at the smoke defaults (2 rounds of 1 step, 1 warm-up), camjax's
    side a tiny camnet: (records by framework, stderr)."""
    monkeypatch.setenv("CAMJAX_BENCH_SMOKE", "1")
    compare.main(["--model", "camnet", "--model_kwargs", '{"widths": [4, 8], "blocks": 1}', "--frameworks", frameworks])
    out, err = capsys.readouterr()
    return {r["framework"]: r for r in map(json.loads, out.splitlines())}, err


def test_time_in_rounds_says_when_the_process_lacks_huge_pages(compare, monkeypatch, capsys):
    """A script outside benchmarks/ timing through compare does not get the huge pages camjax's
    commands start with (camjax.hostmem); its times would be a different machine's."""
    from camjax import hostmem

    runner = types.SimpleNamespace(step=lambda: None)
    for reason, warned in ((None, True), ("GLIBC_TUNABLES already sets glibc.malloc.hugetlb", False)):
        monkeypatch.setattr(hostmem, "why_not", lambda reason=reason: reason)
        compare.time_in_rounds([runner], 1, 2)
        assert len(runner.times) == 2 and runner.compiles == 0
        assert ("runs without glibc.malloc.hugetlb=1" in capsys.readouterr().err) == warned


def test_camjax_and_keras_records(compare, monkeypatch, capsys):
    """The smoke defaults (2 rounds of 1 step, 1 warm-up) through camjax and both Keras paths, a
    tiny camnet against a tiny Keras CNN, in this process: seconds."""
    monkeypatch.setattr(compare, "keras_model", tiny_keras_model)
    recs, err = smoke_run(compare, monkeypatch, capsys, "camjax,keras")
    keras = ("keras_fast", "keras_train_on_batch")
    assert set(recs) == {"camjax", *keras, *(f"camjax/{k}" for k in keras)}
    for name in ("camjax", *keras):
        check_measured(recs[name], steps=2)
        assert recs[name]["compiles_after_warmup"] == 0
        assert (recs[name]["patch"], recs[name]["batch"], recs[name]["warmup"]) == (32, 2, 1)
    assert recs["keras_fast"]["trainable_params"] == recs["keras_train_on_batch"]["trainable_params"]
    assert "stateless_call" in recs["keras_fast"]["path"] and "train_on_batch" in recs["keras_train_on_batch"]["path"]
    for name in keras:
        ratio = recs[f"camjax/{name}"]["ratio"]
        assert ratio == pytest.approx(recs["camjax"]["images_per_sec"] / recs[name]["images_per_sec"], rel=0.01)
        assert f"camjax/{name}:" in err  # the summary on stderr


def test_framework_groups(compare, monkeypatch):
    monkeypatch.setenv("CAMJAX_BENCH_SMOKE", "0")
    args = compare.parse_args([])
    assert args.framework_list == ["camjax", "keras_fast", "keras_train_on_batch", "torch_eager", "torch_compile"]
    assert args.warmup >= 3 and args.steps * args.rounds >= 20
    assert compare.parse_args(["--frameworks", "torch_compile,camjax,torch"]).framework_list == [
        "torch_compile",
        "camjax",
        "torch_eager",
    ]
    with pytest.raises(SystemExit):
        compare.parse_args(["--frameworks", "camjax,tensorflow"])


def test_keras_fast_step_trains(compare, monkeypatch):
    """The stateless step updates the weights, Adam's state and BatchNorm's statistics."""
    monkeypatch.setattr(compare, "keras_model", tiny_keras_model)
    args = types.SimpleNamespace(patch=16, batch=4, dtype="float32")
    host = {"image": np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), "label": np.arange(4)}
    runner = compare.KerasFastRunner(args, {}, host)
    before = [[np.array(v) for v in group] for group in runner.state]
    runner.step()
    runner.step()
    for group, old in zip(runner.state, before):
        assert len(group) == len(old)
        assert any(not np.allclose(np.asarray(v), o) for v, o in zip(group, old))
    assert runner.trainable_params == 3 * 3 * 3 * 4 + 2 * 4 + 4 * 10 + 10


@pytest.mark.slow  # builds and compiles MobileNet 0.25 in camjax and Keras: ~30 s on 2 cores
def test_compare_same_network_in_camjax_and_keras(env):  # noqa: F811
    """The whole network on both sides (the second Keras path, train_on_batch, is checked on a
    tiny model above), and torch's runners reported, not left out, for a model it lacks."""
    recs = run(
        "compare.py",
        "--model",
        "mobilenet",
        "--model_kwargs",
        '{"alpha": 0.25}',
        "--frameworks",
        "camjax,keras_fast,torch",
        "--patch",
        "32",
        "--batch",
        "4",
        "--steps",
        "1",
        "--rounds",
        "2",
        "--warmup",
        "1",
        env=env,
    )
    by_fw = {r["framework"]: r for r in recs}
    assert set(by_fw) == {"camjax", "keras_fast", "torch_eager", "torch_compile", "camjax/keras_fast"}
    for name in ("torch_eager", "torch_compile"):  # reported, not silently left out
        assert by_fw[name]["skipped"] in (
            "torch not installed",
            "torchvision not installed",
            "torchvision has no mobilenet",
        )
    # The same network on both sides: Keras' MobileNet(alpha=0.25) + Dense(10).
    for name in ("camjax", "keras_fast"):
        check_measured(by_fw[name], steps=2)
        assert by_fw[name]["trainable_params"] == by_fw["camjax"]["trainable_params"]
        assert by_fw[name]["compiles_after_warmup"] == 0
    ratio = by_fw["camjax"]["images_per_sec"] / by_fw["keras_fast"]["images_per_sec"]
    assert by_fw["camjax/keras_fast"]["ratio"] == pytest.approx(ratio, rel=0.01)


def require_torch():
    """torch and torchvision, or a skip (a failure under CI, whose .ci/run installs both)."""
    require_reference(importlib.util.find_spec("torch") is not None, "torch")
    require_reference(importlib.util.find_spec("torchvision") is not None, "torchvision")
    import torch

    return torch


def test_torch_runners_train_and_report(compare, monkeypatch, capsys):
    """Both torch runners, eager and `torch.compile`d, through compare's own loop on a tiny torch
    CNN (BatchNorm included): each is measured, its weights move, and the ratio to camjax is
    printed. The torchvision networks themselves are checked below without timing them."""
    torch = require_torch()
    built = []

    def tiny_torch_model(args, kwargs):
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3, stride=2, bias=False),
            torch.nn.BatchNorm2d(4),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Linear(4, compare.NUM_CLASSES),
        )
        built.append((model, [p.detach().clone() for p in model.parameters()]))
        return model, {"torch": compare._version("torch")}

    monkeypatch.setattr(compare, "torch_model", tiny_torch_model)
    recs, err = smoke_run(compare, monkeypatch, capsys, "camjax,torch")
    assert set(recs) == {"camjax", "torch_eager", "torch_compile", "camjax/torch_eager", "camjax/torch_compile"}
    for name in ("torch_eager", "torch_compile"):
        check_measured(recs[name], steps=2)
        assert recs[name]["torch"] == torch.__version__ and recs[name]["adam"] in ("fused", "default")
        ratio = recs["camjax"]["images_per_sec"] / recs[name]["images_per_sec"]
        assert recs[f"camjax/{name}"]["ratio"] == pytest.approx(ratio, rel=0.01)
    assert "torch.compile" in recs["torch_compile"]["path"] and recs["torch_compile"]["torch_compile_mode"] == "default"
    for model, before in built:  # warm-up plus timed steps moved every parameter
        assert all(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert "camjax/torch_compile:" in err


def test_torch_resnet50_v1_has_the_stride_in_the_first_1x1(compare):
    torch = require_torch()
    from torch.utils.flop_counter import FlopCounterMode

    models, _ = compare.torchvision_models()
    v15 = models.resnet50(num_classes=10).eval()
    v1 = compare.resnet50_v1(models.resnet50(num_classes=10)).eval()
    for stage, stride in (("layer1", 1), ("layer2", 2), ("layer3", 2), ("layer4", 2)):
        first = getattr(v1, stage)[0]
        assert first.conv1.kernel_size == (1, 1) and first.conv1.stride == (stride, stride)
        assert first.conv2.kernel_size == (3, 3) and first.conv2.stride == (1, 1)
        assert getattr(v15, stage)[0].conv2.stride == (stride, stride)  # torchvision's own: v1.5
        for block in getattr(v1, stage)[1:]:
            assert block.conv1.stride == block.conv2.stride == (1, 1)

    def run(model, x):
        shapes = {}
        hooks = [
            getattr(model, s).register_forward_hook(lambda m, i, o, s=s: shapes.__setitem__(s, tuple(o.shape)))
            for s in ("layer1", "layer2", "layer3", "layer4")
        ]
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
        for h in hooks:
            h.remove()
        return shapes, counter.get_total_flops()

    x = torch.zeros(1, 3, 64, 64)
    shapes15, flops15 = run(v15, x)
    shapes1, flops1 = run(v1, x)
    assert shapes1 == shapes15 == {"layer1": (1, 256, 16, 16), "layer2": (1, 512, 8, 8), "layer3": (1, 1024, 4, 4),
                                   "layer4": (1, 2048, 2, 2)}  # fmt: skip
    # v1 runs each downsampling block's first 1x1 conv (C_in -> C_in/2 channels, at the stage's
    # input size 16/8/4 px) at a quarter of the positions; the 3x3 costs the same in both.
    saved = sum(2 * side * side * cin * (cin // 2) * 3 // 4 for side, cin in ((16, 256), (8, 512), (4, 1024)))
    assert flops15 - flops1 == saved
    assert sum(p.numel() for p in v1.parameters()) == sum(p.numel() for p in v15.parameters())
