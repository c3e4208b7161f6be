"""Faults injected into real runs: SIGKILL at several moments, corrupt and partial checkpoints,
non-finite losses, bad command lines. Each asserts what happened and that no work was lost."""

import gc
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import grain.python as grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from camjax_testdata import make_challenge_tree
from test_train_evaluate import _train_cmd as cli_train_cmd
from test_train_evaluate import tiny_config as train_tiny_config

from camjax import faults, inspect, steps, trainer
from camjax.checkpoint import Checkpointer, tree_checksum

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")
pytestmark = pytest.mark.xdist_group("faults")  # one worker: the runs share a compilation cache


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_challenge_tree(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=5, test_per_class=1)


def tiny_config(root, **overrides):
    """The end-to-end tests' tiny camnet run: three epochs of three steps."""
    return train_tiny_config(root, **{"num_epochs": 3, "log_every": 1, **overrides})


def train_cmd(root, workdir, cache):
    """`python -m camjax.train` with tiny_config's settings and a persistent compilation cache."""
    return cli_train_cmd(root, workdir, steps_per_epoch=3, num_epochs=3, compilation_cache=cache)


def start(cmd, failpoint=""):
    env = {**os.environ, faults.ENV: failpoint}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=300):
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    return proc.returncode, err


def checksums(workdir):
    return inspect.inspect_run(str(workdir))["latest"]


@pytest.mark.slow
def test_sigkill_at_three_moments_then_resume_is_bit_identical(root, tmp_path):
    """Killed during the async save of epoch 1, then mid-epoch 3 (right after a step was
    dispatched), then at a random moment of what was left: the fourth start ends with the same
    parameters, BatchNorm statistics, optimizer and RNG as a run never interrupted."""
    reference = tmp_path / "reference"
    trainer.train_and_evaluate(tiny_config(root), str(reference))
    expected = checksums(reference)
    assert expected["step"] == 9

    workdir, cache = tmp_path / "killed", str(tmp_path / "jax-cache")
    cmd = train_cmd(root, workdir, cache)
    # Orbax starts a save only once the one before it is written, so by step 7 (after epoch
    # 2's save began) epoch 1's checkpoint is complete; an earlier kill could land while it is
    # still in flight, and the run would restart from scratch.
    for failpoint in ("save:3", "step:7"):
        code, err = finish(start(cmd, failpoint))
        assert code == -signal.SIGKILL, err[-2000:]
        # Whatever the kill left behind, only complete checkpoints count as steps.
        ckpt = Checkpointer(str(workdir), read_only=True)
        for step in ckpt.steps():
            assert ckpt.record(step)["step"] == step
        ckpt.close()

    ckpt = Checkpointer(str(workdir), read_only=True)
    complete = ckpt.latest_step()
    ckpt.close()
    assert complete in (3, 6), complete

    # The third start is killed at a moment drawn afresh each run (the draw is in the message):
    # a timer armed after a train step fires wherever the run then is - mid-step, mid-save,
    # mid-validation. Steps up to 8 leave steps to do, so the kill lands while training is in progress.
    seed = random.SystemRandom().randrange(2**32)
    draw = random.Random(seed)
    moment = f"step:{draw.randint(complete + 1, 8)}@{draw.uniform(0.0, 0.25):.3f}"
    code, err = finish(start(cmd, moment))
    assert code == -signal.SIGKILL, f"{moment} (seed {seed}) did not kill a running trainer: {err[-2000:]}"
    ckpt = Checkpointer(str(workdir), read_only=True)
    resumed_from = ckpt.latest_step()
    ckpt.close()
    assert complete <= resumed_from < 9, moment

    code, err = finish(start(cmd))
    assert code == 0, err[-2000:]
    assert f"resumed from step {resumed_from}" in err, moment  # and trained steps {resumed_from + 1}..9
    got = checksums(workdir)
    assert got["step"] == 9
    assert got["state_sha256"] == expected["state_sha256"]
    assert got["params_sha256"] == expected["params_sha256"]


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def wait_for(condition, timeout, what):
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.2)


@pytest.mark.slow
def test_one_run_owns_its_workdir_and_a_killed_run_leaves_neither_lock_nor_workers(root, tmp_path):
    """A second trainer on a live run's workdir is refused at once, naming the holder; the
    holder, killed with SIGKILL, takes its Grain workers with it, and its lock does not block
    the restart, which resumes and finishes."""
    workdir = tmp_path / "run"
    cmd = cli_train_cmd(root, workdir, steps_per_epoch=3, num_epochs=200, **{"data.workers": 2})
    first = subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        wait_for(lambda: (workdir / "metrics.jsonl").exists(), 240, "the first run's first logged step")
        assert first.poll() is None
        workers = [p for p in group_members(first.pid) if p != first.pid]
        assert len(workers) >= 2  # Grain's two workers (and multiprocessing's resource tracker)

        second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0
        assert f"in use by another run (pid {first.pid} on host" in second.stderr, second.stderr[-2000:]
        assert "Traceback" not in second.stderr
        assert first.poll() is None, "the refused run must not disturb the one holding the workdir"
        assert not list((workdir / "checkpoints").glob("*.unreadable"))
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    wait_for(lambda: not group_members(first.pid), 10, f"the killed run's processes {group_members(first.pid)}")

    ckpt = Checkpointer(str(workdir), read_only=True)
    killed_at = ckpt.latest_step() or 0
    ckpt.close()
    code, err = finish(start(cmd + ["--config.max_train_seconds=1e-9"]))  # stops at the next epoch's end
    assert code == 0, err[-2000:]
    assert f"resumed from step {killed_at}" in err or killed_at == 0
    assert checksums(workdir)["step"] > killed_at


def test_a_finished_run_frees_the_shared_memory_of_its_workers_last_batches(root, tmp_path):
    """Grain's workers hand over batches in shared memory; those still in flight when a run ends
    sit in reference cycles with the closed iterators. The run collects them, so a process that
    trains again (benchmarks/recipe.py's seeds) does not hold their /dev/shm segments until a
    later collection or its exit."""
    trainer.train_and_evaluate(tiny_config(root, **{"data.workers": 2}), str(tmp_path / "run"))
    alive = [o for o in gc.get_objects() if type(o) is grain.SharedMemoryArray]  # type(): no attribute lookups
    assert not alive, f"{len(alive)} batches' shared memory left to the garbage collector"


@pytest.fixture(scope="module")
def two_epochs(root, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two-epochs")
    trainer.train_and_evaluate(tiny_config(root, num_epochs=2), str(workdir))
    return workdir


def test_a_corrupt_latest_checkpoint_falls_back_and_the_run_redoes_the_epoch(root, two_epochs, tmp_path, caplog):
    expected = checksums(two_epochs)
    workdir = tmp_path / "run"
    shutil.copytree(two_epochs, workdir)
    assert Checkpointer(str(workdir), read_only=True).steps() == [3, 6]
    for f in (workdir / "checkpoints" / "6" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")

    trainer.train_and_evaluate(tiny_config(root, num_epochs=2), str(workdir))

    assert "unreadable" in caplog.text
    assert (workdir / "checkpoints" / "6.unreadable").is_dir(), "the corrupt step is kept for a post-mortem"
    got = checksums(workdir)
    assert (got["step"], got["state_sha256"]) == (6, expected["state_sha256"])


def test_a_full_or_read_only_disk_stops_the_run_and_the_restart_continues_exactly(
    root, two_epochs, tmp_path, monkeypatch
):
    """The save of step 3 fails as on a read-only disk (no checkpoint yet), then, on the restart,
    the save of step 6 as on a full one: each stops the run naming the folder, the error and the
    last complete checkpoint, which stays readable; the third start ends bit-identical."""
    from camjax.checkpoint import CheckpointWriteError

    workdir, cache = tmp_path / "run", str(tmp_path / "jax-cache")
    for point, error, last in (
        (("readonly", 3), "Read-only file system", "none"),
        (("nospace", 6), "No space left on device", "step 3"),
    ):
        monkeypatch.setattr(faults, "_POINTS", {point: 0.0})
        with pytest.raises(CheckpointWriteError) as info:
            trainer.train_and_evaluate(tiny_config(root, num_epochs=2, compilation_cache=cache), str(workdir))
        message = str(info.value)
        assert f"saving step {point[1]} in {workdir / 'checkpoints'} failed" in message
        assert error in message and f"the last complete checkpoint is {last}" in message
    assert checksums(workdir)["step"] == 3  # intact and readable
    monkeypatch.setattr(faults, "_POINTS", {})
    trainer.train_and_evaluate(tiny_config(root, num_epochs=2, compilation_cache=cache), str(workdir))
    assert checksums(workdir)["state_sha256"] == checksums(two_epochs)["state_sha256"]


def test_a_partial_checkpoint_is_never_a_step(two_epochs, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(two_epochs, workdir)
    partial = workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1234567"
    (partial / "state").mkdir(parents=True)
    (partial / "state" / "junk").write_bytes(b"half a write")
    ckpt = Checkpointer(str(workdir), read_only=True)
    assert ckpt.steps() == [3, 6] and ckpt.latest_step() == 6


def test_inspect_cli_prints_steps_metrics_and_checksums(two_epochs):
    out = subprocess.run(
        [sys.executable, "-m", "camjax.inspect", "--workdir", str(two_epochs), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["checkpoint"] for r in rows] == ["latest", "best"]
    assert rows[0]["step"] == 6 and 0.0 <= rows[0]["val/weighted_accuracy"] <= 1.0
    state, _ = Checkpointer(str(two_epochs), read_only=True).restore_raw(6)
    assert rows[0]["params_sha256"] == tree_checksum(state["params"])
    state["params"] = jax.tree.map(lambda x: x.copy(), state["params"])
    leaf = jax.tree.leaves(state["params"])[0]
    leaf.flat[0] = np.nextafter(leaf.flat[0], np.inf)  # one ulp anywhere changes the checksum
    assert tree_checksum(state["params"]) != rows[0]["params_sha256"]

    missing = subprocess.run(
        [sys.executable, "-m", "camjax.inspect", "--workdir", str(two_epochs / "nope")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1 and "no checkpoints/ folder" in missing.stderr
    assert "Traceback" not in missing.stderr


def _diverging(root, **overrides):
    """Resumes the two-epoch run for a third epoch at a learning rate that overflows the weights."""
    return tiny_config(root, num_epochs=3, **{"optim.learning_rate": 1e30, "optim.schedule": "constant", **overrides})


def test_a_nonfinite_loss_stops_the_run_naming_the_step_and_keeps_the_good_checkpoint(root, two_epochs, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(two_epochs, workdir)
    good = checksums(workdir)
    with pytest.raises(FloatingPointError, match=r"in steps \d+-\d+; the last good checkpoint is step 6"):
        trainer.train_and_evaluate(_diverging(root), str(workdir))
    assert checksums(workdir) == good


def test_nonfinite_skip_counts_the_batches_and_finishes(root, two_epochs, tmp_path):
    import json

    workdir = tmp_path / "run"
    shutil.copytree(two_epochs, workdir)
    trainer.train_and_evaluate(_diverging(root, nonfinite="skip"), str(workdir))
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    counts = [r["train/nonfinite_steps"] for r in rows if "train/nonfinite_steps" in r]
    assert counts and counts[-1] >= 1 and counts == sorted(counts)
    state, _ = Checkpointer(str(workdir), read_only=True).restore_raw(9)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_skip_mode_leaves_the_state_untouched_on_a_nonfinite_loss():
    """At the step level: a NaN loss (here from NaN class weights) changes nothing but the
    step counter, and is counted; in stop mode the same step poisons the parameters."""
    from camjax import assembly
    from camjax.parallel import DataParallel

    config = tiny_config("unused")
    built = assembly.build(
        config.model,
        len(CLASSES),
        DataParallel("sharded"),
        dtype="float32",
        optim_config=config.optim,
        steps_per_epoch=3,
        total_steps=9,
    )
    model_def, tx, state = built.model_def, built.tx, built.host_state
    rng = np.random.default_rng(0)
    batch = {
        "image": jnp.asarray(rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)),
        "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32),
        "is_manipulated": jnp.zeros(8, jnp.float32),
        "manipulation": jnp.zeros(8, jnp.int32),
    }
    nan_weights = np.full(3, np.nan, np.float32)
    for mode in ("skip", "stop"):
        config.nonfinite = mode
        new, metrics = jax.jit(
            lambda s, b: steps.train_step(s, b, model_def=model_def, tx=tx, config=config, class_weights=nan_weights)
        )(state, batch)
        assert int(new.step) == int(state.step) + 1
        same = tree_checksum(new.params) == tree_checksum(state.params)
        if mode == "skip":
            assert same and float(metrics["train/nonfinite_steps"]) == 1.0
            assert tree_checksum(new.opt_state) == tree_checksum(state.opt_state)
        else:
            assert not same and not all(np.isfinite(x).all() for x in jax.tree.leaves(new.params))


def test_a_config_typo_names_the_field_and_the_closest_valid_one(tmp_path):
    cmd = [
        sys.executable,
        "-m",
        "camjax.train",
        "--config",
        "configs/camnet.py:quick",
        "--workdir",
        str(tmp_path),
        "--config.data.patch=32",
        "--config.data.patchs_per_image=4",
    ]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "no config field 'patchs_per_image' (did you mean 'patches_per_image'?)" in out.stderr
    assert not (tmp_path / "checkpoints").exists()
