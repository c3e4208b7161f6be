"""Smoke tests of benchmarks/: each script runs with its tiniest settings and prints the
contracted JSON lines (docs/design.md, section 2). No timing is asserted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks"
CONTRACT = ("benchmark", "model", "device", "peak_rss_mb", "compiles_after_warmup", "machine", "date")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    e = dict(os.environ)
    e.update(
        CAMJAX_BENCH_SMOKE="1",
        CAMJAX_BENCH_CACHE=str(tmp_path_factory.mktemp("bench_cache")),
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
    )
    return e


def run(script: str, *args: str, env) -> list[dict]:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        check=False,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert records, f"{script} printed nothing"
    for r in records:
        missing = [k for k in CONTRACT if k not in r]
        assert not missing, f"{script}: {r.get('benchmark')} lacks {missing}"
        assert r["machine"]["cores"] >= 1 and r["machine"]["jax"]
    return records


@pytest.mark.slow
def test_train_throughput_modes_and_flops(env):
    recs = run(
        "train_throughput.py",
        "--model",
        "camnet",
        "--config",
        "configs/camnet.py:quick",
        "--patch",
        "32",
        "--batch",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--mode",
        "train,tta",
        "--peak_tflops",
        "1.0",
        env=env,
    )
    train, tta = recs
    assert (train["mode"], tta["mode"]) == ("train", "tta")
    for r in recs:
        assert r["model"] == "camnet" and r["patch"] == 32 and r["batch"] == 4 and r["parallel"] == "sharded"
        assert r["images_per_sec"] > 0 and r["compiles_after_warmup"] == 0
        assert r["mfu"] is not None and 0 < r["mfu"] < 1
    # A train step (forward, backward, Adam) costs more than a forward; 8 TTA views cost 8 forwards.
    assert train["gflops_per_image"] > 2 * train["forward_gflops_per_image"] > 0
    assert tta["views"] == 8 and tta["view_images_per_sec"] == pytest.approx(8 * tta["images_per_sec"], rel=1e-3)
    assert tta["gflops_per_image"] == pytest.approx(8 * train["forward_gflops_per_image"], rel=0.2)


def test_peak_table():
    sys.path.insert(0, str(BENCH))
    try:
        import common
    finally:
        sys.path.remove(str(BENCH))
    assert common.peak_tflops("NVIDIA H100 80GB HBM3", "bfloat16") == 989.0
    assert common.peak_tflops("NVIDIA H100 PCIe", "bfloat16") == 756.0
    assert common.peak_tflops("NVIDIA A100-SXM4-40GB", "float32") == 156.0
    assert common.peak_tflops("cpu", "float32") is None
    assert common.peak_tflops("cpu", "float32", override=2.5) == 2.5


def test_input_pipeline_workers_scaling_split_and_baseline(env):
    recs = run(
        "input_pipeline.py", "--patch", "32", "--workers", "0,1", "--manip_prob", "0,0.5", "--processes", "1,2", env=env
    )
    by_kind = {}
    for r in recs:
        by_kind.setdefault(r["benchmark"], []).append(r)
    runs = by_kind["input_pipeline"]
    assert sorted((r["workers"], r["manip_prob"]) for r in runs) == [(0, 0.0), (0, 0.5), (1, 0.0), (1, 0.5)]
    for r in runs:
        assert r["patches_per_sec"] > 0 and r["frame"] == "320x240" and r["files"] == 4
        assert len(r["worker_peak_rss_mb"]) == r["workers"]
    scaling = by_kind["input_pipeline_scaling"]
    assert [r["processes"] for r in scaling] == [1, 2]
    for r in scaling:
        assert len(r["per_process_patches_per_sec"]) == r["processes"]
        assert r["patches_per_sec"] == pytest.approx(sum(r["per_process_patches_per_sec"]), rel=1e-3)
    (split,) = by_kind["input_pipeline_split"]
    assert split["decode_ms_per_frame"] > 0 and len(split["manipulate_ms_by_kind"]) == 8
    assert set(split["patches_per_cpu_sec_estimate"]) == {"0.0", "0.5"}
    (base,) = by_kind["input_pipeline_baseline"]
    assert base["baseline_patches_per_cpu_sec"] > 0 and base["ratio"] > 0


def test_input_pipeline_times_a_window_long_against_the_workers_lookahead(monkeypatch):
    """Workers decode ahead of the consumer; a window not much longer than that look-ahead bills
    patches it never takes (2 workers read 1.43x one worker over 64 batches, 1.81x over 512)."""
    monkeypatch.setenv("CAMJAX_BENCH_SMOKE", "0")
    monkeypatch.syspath_prepend(str(BENCH))
    import input_pipeline

    from camjax.data.train_loader import READ_AHEAD_GROUPS

    args = input_pipeline.parse_args(["--patch", "512"])
    for workers in (0, 1, 2, 16):
        data = input_pipeline.data_config(args, workers=workers, manip_prob=0.0)
        group = data.mix_files * data.patches_per_image
        ahead = input_pipeline.lookahead_patches(args, data, workers)
        assert ahead == max(1, workers) * (READ_AHEAD_GROUPS * group + (args.prefetch * args.batch if workers else 0))
        untimed, timed = input_pipeline.window(args, data, workers)
        assert untimed * args.batch >= ahead and timed * args.batch >= 8 * ahead and timed >= 64
    args = input_pipeline.parse_args(["--patch", "512", "--batches", "10"])
    assert input_pipeline.window(args, data, 16)[1] == 10


@pytest.mark.slow
def test_end_to_end_ratio(env):
    (r,) = run(
        "end_to_end.py",
        "--model",
        "camnet",
        "--config",
        "configs/camnet.py:quick",
        "--patch",
        "32",
        "--batch",
        "4",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--workers",
        "0",
        "--pipeline_warmup",
        "2",
        env=env,
    )
    assert r["benchmark"] == "end_to_end" and r["compiles_after_warmup"] == 0 and r["pipeline_warmup"] == 2
    assert r["ratio"] == pytest.approx(r["resident_images_per_sec"] / r["images_per_sec"], rel=0.01)


def test_device_ops_host_vs_device(env):
    recs = run("device_ops.py", "--strategies", "map", "--skip", "each", env=env)
    impls = {r["impl"] for r in recs}
    assert {"host", "device"} <= impls, impls
    for r in recs:
        assert r["benchmark"] == "device_ops" and r["patch"] == 32 and r["patches_per_cpu_sec"] > 0
        assert r["compiles_after_warmup"] == 0


def test_gpu_script_commands_parse(env, tmp_path):
    """Every command in gpu.sh (smoke sizes) is accepted by its script's argument parser."""
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        f'case "$1" in benchmarks/*) exec {sys.executable} -c "'
        "import json, sys; sys.path.insert(0, 'benchmarks'); "
        "name = sys.argv[1].split('/')[-1][:-3]; mod = __import__(name); mod.parse_args(sys.argv[2:]); "
        'print(json.dumps({\'script\': name}))" "$@";; '
        f'*) exec {sys.executable} "$@";; esac\n'
    )
    fake.chmod(0o755)
    out = tmp_path / "gpu.jsonl"
    proc = subprocess.run(
        ["bash", str(BENCH / "gpu.sh"), str(out)],
        check=False,
        cwd=REPO,
        env={**env, "PYTHON": str(fake)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "FAILED" not in proc.stderr, out.with_suffix(".jsonl.log").read_text()
    scripts = [json.loads(line)["script"] for line in out.read_text().splitlines()]
    assert scripts == ["train_throughput"] * 6 + ["input_pipeline", "end_to_end"]


def test_depthwise_lowerings_agree(env):
    recs = run("depthwise.py", env=env)
    assert {r["impl"] for r in recs} == {"conv", "shifts"}
    for r in recs:
        assert r["forward_ms"] > 0 and r["train_ms"] > 0 and r["compiles_after_warmup"] == 0
        assert r["max_rel_diff"] < 1e-4  # the same convolution, summed in another order


def test_conv_lowering_choices_agree_per_layer_and_per_train_step(env):
    recs = run("conv_lowering.py", "--layers", env=env)
    assert {r["impl"] for r in recs} == {"conv", "auto", "gather", "taps"}
    by_layer = {r["model"]: (r["gathered_by_auto"], r["taps_by_auto"], r["kernel_grad_slices_by_auto"]) for r in recs}
    assert by_layer == {
        "conv3x3 2x2x8->8": (True, False, [1, 1]),
        "conv3x3 6x6x8->8": (False, False, [1, 1]),
        "conv1x1 12x12x8->4": (True, False, [1, 1]),
        "conv3x3 12x12x8->2": (False, True, [1, 1]),  # 288 positions, taps' outputs 18 channels per 8 in
        "conv3x3 48x48x64->64": (False, False, [4, 1]),  # 1.2 MB of input and cotangent an image: one a run
    }
    for r in recs:
        assert r["train_ms"] > 0 and r["compiles_after_warmup"] == 0
        assert r["max_rel_diff"] < 1e-4  # the same convolution, summed in another order
    steps = run("conv_lowering.py", "--models", "camnet:32:4", "--choices", "conv,gather", env=env)
    assert [(r["model"], r["impl"]) for r in steps] == [("camnet", "conv"), ("camnet", "gather")]
    assert steps[0]["ratio_to_first"] == 1.0 and steps[1]["loss_rel_diff"] < 1e-4
    assert all(r["images_per_sec"] > 0 and r["compiles_after_warmup"] == 0 for r in steps)


def test_step_variants_times_each_model_kwargs_variant_in_one_process(env):
    variants = ['{"bn_grad": "autodiff"}', '{"bn_grad": "written"}']
    recs = run("step_variants.py", "--models", "camnet:32:4", "--variants", *variants, env=env)
    assert [r["model_kwargs"] for r in recs] == [{"bn_grad": "autodiff"}, {"bn_grad": "written"}]
    assert recs[0]["ratio_to_first"] == 1.0 and recs[1]["loss_rel_diff"] < 1e-5  # the same network
    assert all(r["images_per_sec"] > 0 and r["compiles_after_warmup"] == 0 for r in recs)


def test_trace_time_traces_and_lowers_the_train_step(env):
    (rec,) = run("trace_time.py", env=env)
    assert rec["model"] == "camnet" and rec["patch"] == 64 and len(rec["seconds"]) == 1
    assert rec["median_s"] == rec["seconds"][0] > 0


def test_xla_cpu_kernels_finds_each_convolutions_library(env):
    off = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"
    args = ["--model", "camnet", "--patch", "64", "--batch", "4", "--flags=none", f"--flags={off}"]
    default, ynn_off = run("xla_cpu_kernels.py", *args, env=env)
    assert default["xla_flags"] == "" and ynn_off["xla_flags"] == off
    for r in (default, ynn_off):
        assert r["total"] == sum(r["convolutions"].values()) > 0
    assert "ynnpack" not in ynn_off["convolutions"]  # the flag that turns YNNPACK's convolutions off


def test_xla_cpu_kernels_attributes_a_convolution_to_the_fusion_that_holds_it():
    sys.path.insert(0, str(BENCH))
    from xla_cpu_kernels import convolution_libraries

    hlo = """
%fused_computation (p0: f32[8,32,32,64], p1: f32[3,3,64,64]) -> f32[8,32,32,64] {
  ROOT %c.1 = f32[8,32,32,64]{3,2,1,0} convolution(%p0, %p1), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
}

ENTRY %main (x: f32[8,32,32,64], w: f32[3,3,64,64]) -> (f32[8,32,32,64], f32[8,32,32,64]) {
  %ynn_fusion = f32[8,32,32,64]{3,2,1,0} fusion(%x, %w), kind=kCustom, calls=%fused_computation, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %c.2 = f32[8,32,32,64]{3,2,1,0} convolution(%x, %w), window={size=1x1 lhs_dilate=2x2}, dim_labels=b01f_01io->b01f
  ROOT %t = (f32[8,32,32,64]{3,2,1,0}, f32[8,32,32,64]{3,2,1,0}) tuple(%ynn_fusion, %c.2)
}
"""
    counts, xla_windows = convolution_libraries(hlo)
    assert counts == {"ynnpack": 1, "xla (unfused)": 1}
    assert xla_windows == {"size=1x1 lhs_dilate=2x2": 1}


@pytest.mark.slow
def test_eval_memory_streams_growing_test_sets(env, tmp_path):
    from camjax_testdata import make_challenge_tree
    from test_train_evaluate import tiny_config

    from camjax import trainer

    root = make_challenge_tree(tmp_path / "data", classes=("HTC-1-M7", "iPhone-4s"), per_class=3, test_per_class=2)
    workdir = tmp_path / "run"
    trainer.train_and_evaluate(tiny_config(root, num_epochs=1), str(workdir))
    recs = run("eval_memory.py", "--workdir", str(workdir), env=env)
    assert [r["test_files"] for r in recs] == [8, 32]
    for r in recs:
        assert r["benchmark"] == "eval_memory" and r["peak_rss_mb"] > 0 and r["files_per_sec"] > 0
        assert r["balance_peak_growth_mb"] >= 0 and r["balance_seconds"] >= 0
    links = sorted(os.listdir(Path(env["CAMJAX_BENCH_CACHE"]) / "eval_memory" / "32" / "test"))
    assert len(links) == 32 and sum(name.endswith("_manip.tif") for name in links) == 16


@pytest.mark.slow
def test_learning_probe_streams_and_checks_fit_against_inference(env, tmp_path):
    from camjax_testdata import make_challenge_tree

    root = make_challenge_tree(tmp_path / "data", classes=("HTC-1-M7", "iPhone-4s"), per_class=3, test_per_class=1)
    tiny = [
        "data.workers=0",
        "data.patch=32",
        "data.patches_per_image=4",
        "batch_size=8",
        "model.kwargs.widths=(8, 16)",
        "model.head.hidden=(16, 8)",
        f"data.root={root}",
    ]
    sets = [arg for item in tiny for arg in ("--set", item)]
    (stream,) = run("learning_probe.py", *sets, env=env)
    assert stream["model"] == "camnet" and len(stream["train_accuracy_per_window"]) == 2
    assert stream["compiles_after_warmup"] == 0
    (fixed,) = run("learning_probe.py", *sets, "--fixed_batches", "2", env=env)
    assert 0.0 <= fixed["inference_accuracy_on_fixed_batches"] <= 1.0


@pytest.mark.slow
def test_learning_curve_records_validation_against_seconds_and_steps(env, tmp_path):
    from camjax_testdata import make_challenge_tree

    root = make_challenge_tree(tmp_path / "data", classes=("HTC-1-M7", "iPhone-4s"), per_class=3, test_per_class=1)
    tiny = [
        "data.workers=0",
        "data.patch=32",
        "data.patches_per_image=4",
        "batch_size=8",
        "steps_per_epoch=2",
        "num_epochs=2",
        "data.val_crops=1",
        "model.kwargs.widths=(8, 16)",
        "model.head.hidden=(16, 8)",
        f"data.root={root}",
        "compilation_cache=''",
    ]
    sets = [arg for item in tiny for arg in ("--set", item)]
    out = tmp_path / "curves.jsonl"
    (r,) = run(
        "learning_curve.py",
        *sets,
        "--seconds",
        "0",
        "--workdir",
        str(tmp_path / "run"),
        "--append",
        str(out),
        "--label",
        "tiny",
        env=env,
    )
    assert r["benchmark"] == "learning_curve" and r["model"] == "camnet" and r["label"] == "tiny"
    assert r["steps"] == 4 and r["batch_size"] == 8 and r["patch"] == 32
    assert [p["step"] for p in r["curve"]] == [2, 4] and [p["epoch"] for p in r["curve"]] == [1, 2]
    assert all(0 <= p["val_weighted_accuracy"] <= 1 and p["seconds"] > 0 for p in r["curve"])
    assert r["curve"][0]["seconds"] <= r["curve"][1]["seconds"] <= r["seconds"]
    assert r["best_val_weighted_accuracy"] == max(p["val_weighted_accuracy"] for p in r["curve"])
    assert set(r["first_above"]) == {"0.2", "0.5"}
    assert r["compiles_after_warmup"] is not None
    assert json.loads(out.read_text())["curve"] == r["curve"]
    assert (tmp_path / "run" / "metrics.jsonl").exists()  # a named workdir is kept


TINY_RECIPE = [
    "data.workers=0",
    "data.patch=32",
    "data.patches_per_image=4",
    "batch_size=8",
    "steps_per_epoch=2",
    "num_epochs=1",
    "data.val_crops=1",
    "model.kwargs.widths=(8, 16)",
    "model.head.hidden=(16, 8)",
    "eval.max_tiles=2",
    "compilation_cache=''",
]


def labelled_challenge_tree(tmp_path):
    """A three-camera tree whose test labels are known: {file name: camera}."""
    import csv

    from camjax_testdata import make_challenge_tree

    classes = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")
    root = make_challenge_tree(tmp_path / "data", classes=classes, per_class=3, test_per_class=2)
    truth = {}
    with open(root / "test_labels.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["fname", "camera", "manipulation"])
        for i, name in enumerate(sorted(p.name for p in (root / "test").iterdir())):
            truth[name] = classes[i % 3]
            w.writerow([name, truth[name], "jpeg70" if "manip" in name else "none"])
    return root, truth


def test_split_seed_holds_the_same_cameras_out_for_every_seed():
    sys.path.insert(0, str(BENCH))
    import recipe

    from camjax.cameras import CHALLENGE_CLASSES

    fixed = recipe.parse_args(["--hold_out", "3", "--split_seed", "1"])
    drawn = [recipe.held_out_for(fixed, CHALLENGE_CLASSES, seed) for seed in range(5)]
    assert all(d == recipe.held_out_cameras(CHALLENGE_CLASSES, 3, 1) for d in drawn) and len(drawn[0]) == 3
    by_seed = recipe.parse_args(["--hold_out", "3"])
    assert len({frozenset(recipe.held_out_for(by_seed, CHALLENGE_CLASSES, seed)) for seed in range(5)}) > 1


@pytest.mark.slow
def test_recipe_trains_and_scores_each_seed(env, tmp_path):
    root, truth = labelled_challenge_tree(tmp_path)
    sets = [arg for item in TINY_RECIPE for arg in ("--set", item)]
    records = run(
        "recipe.py",
        "--root",
        str(root),
        "--seeds",
        "0,1",
        "--name",
        "tiny",
        "--runs",
        str(tmp_path / "runs"),
        "--hold_out",
        "1",
        "--shared",
        *sets,
        env=env,
    )
    *records, pooled = records
    assert [r["seed"] for r in records] == [0, 1] and all(r["name"] == "tiny" and r["steps"] == 2 for r in records)
    for r in records:
        assert r["trained_views"] == "d4" and set(r["test_weighted_accuracy"]) == {"none", "flips", "rot90", "d4"}
        assert all(0 <= v <= 1 for v in r["test_weighted_accuracy"].values())
        assert 0 <= r["test_balanced"] <= 1 and 0 <= r["val_weighted_accuracy"] <= 1
        # The held-out camera's test files are the unknown ones of the open-set report.
        [held_out] = r["held_out"]
        unknown = sum(camera == held_out for camera in truth.values())
        assert r["open_set"]["unknown"] == unknown and r["open_set"]["known"] == len(truth) - unknown
        assert set(r["open_set"]["auroc"]) == {"max_prob", "neg_entropy", "margin", "feature_distance"}
        assert set(r["calibration"]) >= {"before", "after"}
        assert 0 <= r["shared_online"]["after"]["weighted_accuracy"] <= 1
    assert not any((tmp_path / "runs").iterdir())  # run folders go unless --keep
    # The seeds' known test images pooled: NLL and accuracy are means, so the pooled ones are
    # the seeds' weighted by their image counts, before and after the temperatures.
    assert pooled["benchmark"] == "recipe_pooled" and pooled["seeds"] == [0, 1]
    counts = np.array([r["open_set"]["known"] for r in records])
    assert pooled["calibration"]["runs"] == 2 and pooled["calibration"]["images"] == counts.sum()
    for when in ("before", "after"):
        for key in ("nll", "accuracy"):
            seeds = np.array([r["calibration"][when][key] for r in records])
            assert pooled["calibration"][when][key] == pytest.approx((counts * seeds).sum() / counts.sum())
    assert 0 <= pooled["calibration"]["ece_if_calibrated"]["median"] <= 1


@pytest.mark.slow
def test_rescore_fits_kept_runs_again_and_reproduces_their_scores(env, tmp_path):
    root, truth = labelled_challenge_tree(tmp_path)
    sets = [arg for item in TINY_RECIPE for arg in ("--set", item)]
    runs = tmp_path / "runs"
    [trained] = run(
        "recipe.py",
        "--root",
        str(root),
        "--seeds",
        "0",
        "--runs",
        str(runs),
        "--keep",
        "--hold_out",
        "1",
        *sets,
        env=env,
    )
    [workdir] = list(runs.iterdir())
    density = workdir / "feature_density.npz"
    density.unlink()  # rescore must write it again, not read the old one
    # The same run twice: its pooled calibration is its own (every bin's count doubles).
    # With --ensemble the two are also evaluated as one ensemble: a blend of a run with itself
    # is the run.
    again, twice, pooled, ensemble = run(
        "rescore.py", str(workdir), str(workdir), "--name", "again", "--ensemble", env=env
    )
    assert again["benchmark"] == "rescore" and again["name"] == "again" and density.exists()
    assert twice["calibration"] == again["calibration"] and pooled["benchmark"] == "rescore_pooled"
    assert ensemble["benchmark"] == "rescore_ensemble" and ensemble["workdirs"] == [str(workdir)] * 2
    assert ensemble["test_weighted_accuracy"] == again["test_weighted_accuracy"]
    for when in ("before", "after"):
        assert ensemble["calibration"][when] == pytest.approx(again["calibration"][when])
    assert pooled["calibration"]["images"] == 2 * trained["open_set"]["known"]
    for when in ("before", "after"):
        assert pooled["calibration"][when] == pytest.approx(again["calibration"][when])
    # The same model and the same code: the same scores as the run's own evaluation.
    assert again["test_weighted_accuracy"] == trained["test_weighted_accuracy"]
    assert again["open_set"]["auroc"] == pytest.approx(trained["open_set"]["auroc"])
    assert again["calibration"]["after"]["ece"] == pytest.approx(trained["calibration"]["after"]["ece"], abs=1e-6)
    # The candidate open-set scores: the shipped one, refitted by the script on its own
    # embeddings, must give what `evaluate` reported for the same model, also when every
    # block's statistics ride along after the embedding (--layers).
    # The same run twice with --ensemble: a split of two members whose ensemble (the mean of
    # equal scores) gives the run's own verdicts.
    scored, twice, ensemble = run("openset_scores.py", str(workdir), str(workdir), "--layers", "--ensemble", env=env)
    assert scored["benchmark"] == "openset_scores" and twice["auroc"] == scored["auroc"]
    assert ensemble["benchmark"] == "openset_scores_ensemble" and ensemble["workdirs"] == [str(workdir)] * 2
    assert ensemble["member_auroc"] == [scored["auroc"]["feature_distance"]] * 2
    assert ensemble["auroc"] == scored["auroc"]["feature_distance"]
    assert ensemble["by_group"] == scored["by_group"] and ensemble["by_manipulation"] == scored["by_manipulation"]
    # Unaltered and manipulated apart (the tree's manipulated files are labelled jpeg70).
    [held_out] = trained["held_out"]
    for group, manipulated in (("unaltered", False), ("manipulated", True)):
        files = [f for f in truth if ("manip" in f) == manipulated]
        expected = sum(truth[f] != held_out for f in files), sum(truth[f] == held_out for f in files)
        assert (scored["by_group"][group]["known"], scored["by_group"][group]["unknown"]) == expected
    assert scored["by_group"]["unaltered"] == scored["by_manipulation"]["none"]
    for group, g in trained["open_set"]["by_group"].items():  # evaluate's report, the same split
        assert g["auroc"]["feature_distance"] == pytest.approx(scored["by_group"][group]["auroc"], abs=1e-4)
    assert scored["by_group"]["manipulated"] == scored["by_manipulation"]["jpeg70"]
    assert scored["known"] == trained["open_set"]["known"] and scored["unknown"] == trained["open_set"]["unknown"]
    assert scored["auroc"]["feature_distance"] == pytest.approx(
        again["open_set"]["auroc"]["feature_distance"], abs=1e-4
    )
    assert set(scored["auroc"]) >= {"feature_distance", "nearest_1", "relative_components", "layer_ensemble"}
    config = json.loads((workdir / "config.json").read_text())["model"]["kwargs"]
    blocks = 1 + 2 * len(config["widths"]) * config["blocks"]  # the residual, then each layer's mean and std
    assert {f"block_{i}" for i in range(blocks)} <= set(scored["auroc"]) and f"block_{blocks}" not in scored["auroc"]
    assert all(0 <= v <= 1 for v in scored["auroc"].values())
    assert [c for c, row in scored["per_camera"].items() if not row["known"]] == [held_out]
    # --set rewrites an eval setting of the run before it is fitted again: two crops of each
    # validation frame, twice the calibration samples.
    samples = json.loads((workdir / "calibration.json").read_text())["samples"]
    run("rescore.py", str(workdir), "--set", "eval.calibration_crops=2", env=env)
    assert json.loads((workdir / "config.json").read_text())["eval"]["calibration_crops"] == 2
    assert json.loads((workdir / "calibration.json").read_text())["samples"] == 2 * samples


def test_every_figure_in_a_results_table_has_its_raw_line(tmp_path):
    sys.path.insert(0, str(BENCH))
    import check_results

    gaps = check_results.missing(BENCH / "RESULTS.md")
    assert not gaps, "\n".join(f"{figure} in '{heading}': {row[:120]}" for heading, row, figure in gaps)

    # The check itself: a figure no raw line gives is reported; one marked derived (*) is not;
    # a row naming a script is checked against that script's lines only.
    (tmp_path / "raw.jsonl").write_text(
        json.dumps({"benchmark": "a", "x": 466.87, "y": 989.1})
        + "\n"
        + json.dumps({"benchmark": "b", "z": 12.5})
        + "\n"
    )
    (tmp_path / "RESULTS.md").write_text(
        "# t\n\n| what | v | w |\n|---|---|---|\n| `a.py` | 466.9 | 990 |\n| `a.py` | 12.5 | 3.18* |\n"
        "# u (no script named: every raw value counts)\n\n| what | v | w |\n|---|---|---|\n| any | 12.5 | 0.77 |\n"
    )
    assert [
        (row.split("|")[1].strip(), figure) for _, row, figure in check_results.missing(tmp_path / "RESULTS.md")
    ] == [("`a.py`", "12.5"), ("any", "0.77")]


def test_profile_step_sums_the_traced_kernels_of_the_train_step(env):
    (rec,) = run("profile_step.py", env=env)
    assert rec["model"] == "camnet" and rec["step_ms_median"] > 0 and rec["compiles_after_warmup"] == 0
    assert rec["kernel_ms_per_step"] > 0
    assert sum(k["ms_per_step"] for k in rec["by_kind"]) == pytest.approx(rec["kernel_ms_per_step"], rel=1e-3)
    assert sum(k["share"] for k in rec["by_kind"]) == pytest.approx(1.0, abs=0.01)
    kinds = {k["name"] for k in rec["by_kind"]}
    assert "ynnpack" in kinds and "xla (kLoop)" in kinds  # camnet has both
    assert rec["top"] and all(t["shape"] and t["calls_per_step"] > 0 for t in rec["top"])


def test_profile_step_puts_each_instruction_in_its_kind():
    sys.path.insert(0, str(BENCH))
    from profile_step import family, instructions

    hlo = """
ENTRY %main (x: f32[8,32,32,64], w: f32[3,3,64,64]) -> f32[8,32,32,64] {
  %ynn_fusion.3 = f32[8,32,32,64]{3,2,1,0} fusion(%x, %w), kind=kCustom, calls=%fc, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %add_pad_fusion.12 = f32[8,34,34,64]{3,2,1,0} fusion(%ynn_fusion.3), kind=kLoop, calls=%fc.1
  %convolution.1 = f32[8,32,32,64]{3,2,1,0} convolution(%x, %w), window={size=3x3 pad=1_1x1_1}, dim_labels=b01f_01io->b01f
  ROOT %copy.4 = f32[8,32,32,64]{3,2,1,0} copy(%convolution.1)
}
"""
    assert instructions(hlo) == {
        "ynn_fusion.3": ("f32[8,32,32,64]{3,2,1,0}", "ynnpack"),
        "add_pad_fusion.12": ("f32[8,34,34,64]{3,2,1,0}", "xla (kLoop)"),
        "convolution.1": ("f32[8,32,32,64]{3,2,1,0}", "xla convolution"),
        "copy.4": ("f32[8,32,32,64]{3,2,1,0}", "other"),
    }
    assert (
        family("add_pad_fusion.12") == "add_pad_fusion" and family("divide_multiply_fusion") == "divide_multiply_fusion"
    )


def test_manipulation_flag_scores_known_cameras_by_group_and_manipulation():
    sys.path.insert(0, str(BENCH))
    from manipulation_flag import accuracies

    labels = {
        "a_unalt.tif": ("Sony-NEX-7", "none"),
        "b_manip.tif": ("Sony-NEX-7", "jpeg70"),
        "c_manip.tif": ("HTC-1-M7", "resize0.5"),
        "d_manip.tif": ("Nikon-D70", "jpeg70"),  # not a trained camera: left out
    }
    answers = [
        {"path": "/x/a_unalt.tif", "camera": "Sony-NEX-7"},
        {"path": "/x/b_manip.tif", "camera": "HTC-1-M7"},
        {"path": "/x/c_manip.tif", "camera": "HTC-1-M7"},
        {"path": "/x/d_manip.tif", "camera": "HTC-1-M7"},
    ]
    got = accuracies(answers, labels, ["HTC-1-M7", "Sony-NEX-7"])
    assert got["images"] == {"unaltered": 1, "none": 1, "manipulated": 2, "jpeg70": 1, "resize0.5": 1}
    assert got["accuracy"] == {"unaltered": 1.0, "none": 1.0, "manipulated": 0.5, "jpeg70": 0.0, "resize0.5": 1.0}
