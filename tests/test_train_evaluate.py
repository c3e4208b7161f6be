"""End to end on a tiny challenge-layout set: train, resume exactly, evaluate, score, bad test files."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from camjax_testdata import TINY_RUN, make_challenge_tree, repo_config, write_test_labels

from camjax import assembly, trainer
from camjax.checkpoint import Checkpointer

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_challenge_tree(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=5, test_per_class=2)
    write_test_labels(root, CLASSES)
    return root


def tiny_config(root, **overrides):
    c = repo_config("configs/camnet.py:quick")
    c.data.root = str(root)
    c.update_from_flattened_dict(
        {**TINY_RUN, "steps_per_epoch": 3, "num_epochs": 2, "log_every": 2, "compilation_cache": "", **overrides}
    )
    return c


def final_params(workdir, part="params"):
    ckpt = Checkpointer(str(workdir), read_only=True)
    step = ckpt.latest_step()
    from orbax import checkpoint as ocp

    state = ckpt.manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]
    ckpt.close()
    return step, jax.tree.leaves(state[part])


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    val = trainer.train_and_evaluate(tiny_config(root), str(workdir))
    return workdir, val


def test_training_writes_the_contracted_outputs(trained):
    workdir, val = trained
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    keys = set().union(*rows)
    for key in ("train/loss", "train/accuracy", "lr", "images_per_sec", "val/accuracy", "val/weighted_accuracy"):
        assert key in keys, key
    assert all("step" in r for r in rows)
    assert 0.0 <= val["val/weighted_accuracy"] <= 1.0
    assert json.load(open(workdir / "run.json"))["classes"] == list(CLASSES)
    assert json.load(open(workdir / "config.json"))["model"]["name"] == "camnet"
    assert (workdir / "curves.png").stat().st_size > 0
    assert any((workdir / "tensorboard").iterdir())
    assert Checkpointer(str(workdir), read_only=True).latest_step() == 6


def test_metric_writer_leaves_torch_unimported_and_writes_events(tmp_path):
    """tensorboardX imports torch when it is installed (a second of every run's start) unless
    the writer keeps it out; a process that already holds torch keeps it, and both write."""
    script = (
        "import sys, glob; from camjax.writers import MetricWriter\n"
        "w = MetricWriter(sys.argv[1]); w.write(1, {'train/loss': 0.5}); w.close()\n"
        "assert glob.glob(sys.argv[1] + '/tensorboard/events.out.tfevents.*')\n"
        "print('torch' in sys.modules)"
    )
    import importlib.util

    holding = [("import torch; ", "True")] if importlib.util.find_spec("torch") else []  # a peer, not a dependency
    for first, held in [("", "False"), *holding]:
        workdir = tmp_path / held
        r = subprocess.run(
            [sys.executable, "-c", first + script, str(workdir)], capture_output=True, text=True, cwd=REPO
        )
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.split() == [held]
        assert json.loads((workdir / "metrics.jsonl").read_text())["train/loss"] == 0.5


def test_resume_is_exact(root, trained, tmp_path, monkeypatch):
    """Stopped after epoch 1 (same config, so the same schedule), resumed: bit-identical to the
    uninterrupted run. The resumed run, and the restore its calibration makes, build the initial
    state as shapes only: the checkpoint fills it. Its epoch, seconds long, draws curves.png
    once, when training stops, not also at the epoch's end."""
    from camjax import plots, steps

    trainer.train_and_evaluate(tiny_config(root, max_train_seconds=1e-9), str(tmp_path))
    assert Checkpointer(str(tmp_path), read_only=True).latest_step() == 3
    initial_steps = []

    def init_state(*args, **kwargs):
        out = init_state_of_steps(*args, **kwargs)
        initial_steps.append(out[1].step)
        return out

    init_state_of_steps = steps.init_state
    monkeypatch.setattr(steps, "init_state", init_state)
    drawn = []
    curves_png = plots.curves_png
    monkeypatch.setattr(plots, "curves_png", lambda *a: drawn.append(a) or curves_png(*a))
    trainer.train_and_evaluate(tiny_config(root), str(tmp_path))
    assert len(initial_steps) == 2 and all(isinstance(x, jax.core.Tracer) for x in initial_steps), initial_steps
    assert len(drawn) == 1 and (tmp_path / "curves.png").stat().st_size > 0
    monkeypatch.undo()
    step_a, a = final_params(trained[0])
    step_b, b = final_params(tmp_path)
    assert step_a == step_b == 6
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    steps = [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")]
    assert steps == sorted(steps), "a resumed run must not duplicate metric rows"


def test_weight_average_resumes_exactly_and_is_what_evaluation_restores(root, tmp_path):
    from camjax import evaluator
    from camjax.parallel import DataParallel

    extra = {"optim.ema_decay": 0.9, "optim.clip_norm": 1.0}
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    trainer.train_and_evaluate(tiny_config(root, **extra), str(full))
    trainer.train_and_evaluate(tiny_config(root, max_train_seconds=1e-9, **extra), str(resumed))
    trainer.train_and_evaluate(tiny_config(root, **extra), str(resumed))
    rows = [json.loads(line) for line in open(full / "metrics.jsonl")]
    scored = [r for r in rows if "val/weighted_accuracy" in r]
    assert len(scored) == 2 and all(0 <= r["val/last_weights/weighted_accuracy"] <= 1 for r in scored)
    step, average = final_params(full, "ema")
    _, weights = final_params(full)
    assert step == final_params(resumed, "ema")[0] == 6 and len(average) > len(weights)  # BatchNorm statistics too
    for x, y in zip(average, final_params(resumed, "ema")[1]):
        np.testing.assert_array_equal(x, y)
    restored = evaluator.restore(str(full), DataParallel("sharded"), step=6)
    for x, y in zip(jax.tree.leaves(restored.state.ema), average):
        np.testing.assert_array_equal(np.asarray(x), y)
    assert not all(np.allclose(x, y) for x, y in zip(average, weights))


def test_resume_refuses_another_model(root, trained):
    with pytest.raises(ValueError, match="another model"):
        trainer.train_and_evaluate(tiny_config(root, **{"model.kwargs.widths": (4, 8)}), str(trained[0]))


def _train_cmd(root, workdir, **extra):
    """`python -m camjax.train` on the tiny set, with tiny_config's sizes as flag overrides."""
    overrides = {"data.root": str(root), **TINY_RUN, "num_epochs": 1, "log_every": 1, **extra}
    cmd = [sys.executable, "-m", "camjax.train", "--config", "configs/camnet.py:quick", "--workdir", str(workdir)]
    return cmd + [f"--config.{k}={v}" for k, v in overrides.items()]


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "camjax.evaluate", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )


def test_evaluate_cli_scores_and_writes_everything(trained, root, tmp_path):
    out = tmp_path / "sub.csv"
    r = run_cli("--workdir", str(trained[0]), "--tta", "d4", "--balance", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stdout.strip().splitlines()[-1]
    assert last.startswith("weighted_accuracy=") and 0.0 <= float(last.split("=")[1]) <= 1.0
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert [r_["fname"] for r_ in rows] == sorted(os.listdir(root / "test"))
    assert {r_["camera"] for r_ in rows} <= set(CLASSES)
    report = json.load(open(tmp_path / "sub_report.json"))
    assert set(report["tta_subsets"]) == {"none", "flips", "rot90", "d4"}
    assert report["balance"] is True
    for suffix in ("_balanced.csv", "_unbalanced.csv", "_probs.npz", "_confusion.png"):
        assert (tmp_path / f"sub{suffix}").exists(), suffix
    probs = np.load(tmp_path / "sub_probs.npz")["probs"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)


def test_evaluate_names_a_corrupt_test_file_and_writes_nothing(trained, root, tmp_path):
    bad_root = tmp_path / "root"
    (bad_root / "test").mkdir(parents=True)
    for name in os.listdir(root / "test"):
        os.symlink(root / "test" / name, bad_root / "test" / name)
    (bad_root / "test" / "img_bad0000_unalt.tif").write_bytes(b"not an image")
    out = tmp_path / "sub.csv"
    r = run_cli("--workdir", str(trained[0]), "--data_root", str(bad_root), "--out", str(out))
    assert r.returncode != 0
    assert "img_bad0000_unalt.tif" in r.stderr
    assert not out.exists()
    r = run_cli("--workdir", str(trained[0]), "--data_root", str(bad_root), "--out", str(out), "--skip_bad")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == len(os.listdir(bad_root / "test"))
    assert "img_bad0000_unalt.tif" in r.stderr


def test_training_and_evaluation_from_a_tfds_build(root, tmp_path):
    """data.source='tfds' reads the packed original bytes: same classes, same validation size."""
    from camjax import evaluator
    from camjax.data import sources, tfds_builder

    tfds_dir = tmp_path / "tfds"
    tfds_builder.build(str(root), str(tfds_dir))
    workdir = tmp_path / "run"
    val = trainer.train_and_evaluate(
        tiny_config(root, **{"data.source": "tfds", "data.tfds_dir": str(tfds_dir), "num_epochs": 1}), str(workdir)
    )
    run = assembly.Run.load(str(workdir))
    assert run.data_source == "tfds" and run.classes == list(CLASSES)
    assert 0.0 <= val["val/weighted_accuracy"] <= 1.0
    result = evaluator.evaluate([str(workdir)], out=str(tmp_path / "sub.csv"))
    rows = list(csv.DictReader(open(result["out"])))
    assert [r_["fname"] for r_ in rows] == [os.path.basename(p) for p in sources.list_test_files(root)]


def test_sigterm_checkpoints_and_exits_cleanly(root, tmp_path):
    """A preempted run saves where it is and exits 0; started again it carries on from there."""
    import signal
    import time

    workdir = tmp_path / "run"
    cmd = _train_cmd(root, workdir, steps_per_epoch=1000, compilation_cache="")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.read_text().count("\n") >= 3):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    ckpt = Checkpointer(str(workdir), read_only=True)
    step = ckpt.latest_step()
    assert 3 <= step < 1000
    assert ckpt.record(step)["step"] == step
    ckpt.close()


def test_init_from_loads_the_backbone(root, tmp_path):
    """config.model.init_from (a `camjax.convert` output) sets the backbone before training:
    with a zero learning rate the trained backbone's parameters equal the saved ones."""
    from flax import nnx

    from camjax import models
    from camjax.models import pretrained

    config = tiny_config(root, num_epochs=1, **{"optim.learning_rate": 0.0})
    donor = models.create(config.model, len(CLASSES), seed=123)
    pretrained.save_backbone(str(tmp_path / "weights"), "camnet", donor.backbone, {})
    config.model.init_from = str(tmp_path / "weights")
    trainer.train_and_evaluate(config, str(tmp_path / "run"))
    _, params = final_params(tmp_path / "run")
    saved = jax.tree.leaves(nnx.state(donor.backbone, nnx.Param))
    fresh = jax.tree.leaves(nnx.state(models.create(config.model, len(CLASSES), seed=0).backbone, nnx.Param))
    trained = {x.tobytes() for x in map(np.asarray, params)}
    assert all(np.asarray(x).tobytes() in trained for x in saved)
    assert not any(np.asarray(x).tobytes() in trained for x in fresh if np.asarray(x).std() > 0)  # random inits


def test_bfloat16_training(root, tmp_path):
    """bf16 compute with f32 parameters trains (finite loss) and keeps parameters in f32."""
    val = trainer.train_and_evaluate(tiny_config(root, dtype="bfloat16", num_epochs=1), str(tmp_path))
    assert np.isfinite(val["val/weighted_accuracy"])
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    assert all(np.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    _, params = final_params(tmp_path)
    assert {np.asarray(p).dtype for p in params} == {np.dtype("float32")}


def test_a_restarted_process_reuses_the_persistent_compilation_cache(root, tmp_path):
    import re

    misses = []
    for run in ("a", "b"):
        cmd = _train_cmd(root, tmp_path / run, steps_per_epoch=2, compilation_cache=str(tmp_path / "jax_cache"))
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        misses.append(int(re.search(r"persistent-cache misses: (\d+)", r.stderr).group(1)))
    assert misses[0] > 0 and misses[1] == 0, misses


def test_device_side_manipulation_trains_like_the_host(root, trained, tmp_path):
    """data.manipulate_on='device' ships raw crops and manipulates inside the jitted step: the
    same batches as the host path (up to OpenCV's one-grey-level resize rounding), so the same
    losses."""
    trainer.train_and_evaluate(tiny_config(root, **{"data.manipulate_on": "device"}), str(tmp_path))

    def losses(workdir):
        return [r["train/loss"] for r in map(json.loads, open(workdir / "metrics.jsonl")) if "train/loss" in r]

    np.testing.assert_allclose(losses(tmp_path), losses(trained[0]), rtol=1e-3)
