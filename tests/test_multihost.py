"""Multi-process training on JAX's distributed runtime (CPU, loopback): the global batches, the
losses and the checkpoints do not depend on how many processes make them."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from camjax_testdata import TINY_RUN, make_challenge_tree, repo_config

from camjax import evaluator, parallel, trainer
from camjax.data import decode, sources, train_loader
from camjax.parallel import DataParallel

REPO = Path(__file__).resolve().parents[1]
LOCAL_SH = REPO / "launch" / "local.sh"
CLASSES = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")
STEPS = 3  # per epoch; the runs below cover 3 epochs
# data.shards=2 fixes the global batch, whatever the process count (see train_loader.make_process_loader).
OVERRIDES = {
    **TINY_RUN,
    "data.shards": 2,
    "steps_per_epoch": STEPS,
    "num_epochs": 3,
    "log_every": 1,
    "compilation_cache": "",
}
# Each process of a run records the training files it opens (sitecustomize runs before camjax).
RECORD_OPENS = textwrap.dedent(
    """
    import atexit, json, os, sys
    _opened, _train = set(), os.environ["RECORD_TRAIN_DIR"]
    sys.addaudithook(lambda event, args: event == "open" and isinstance(args[0], str)
                     and args[0].startswith(_train) and _opened.add(args[0]))
    atexit.register(lambda: json.dump(sorted(_opened), open(os.path.join(os.environ["RECORD_OUT"], f"{os.getpid()}.json"), "w")))
    """
)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_challenge_tree(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=5, test_per_class=1)


def config(root, **overrides):
    c = repo_config("configs/camnet.py:quick")
    c.data.root = str(root)
    c.update_from_flattened_dict({**OVERRIDES, **overrides})
    return c


def train_flags(root, workdir, **overrides):
    flags = {"data.root": str(root), **OVERRIDES, **overrides}
    return ["--config", "configs/camnet.py:quick", "--workdir", str(workdir)] + [
        f"--config.{k}={v}" for k, v in flags.items()
    ]


def run(cmd, env, timeout=240, check=True):
    """Runs cmd in its own process group; a hang kills the group and fails the test."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{cmd[:3]} hung for {timeout} s: {err[-3000:]}")
    if check:
        assert proc.returncode == 0, err[-3000:]
    return proc.returncode, out, err


def losses(workdir):
    rows = [json.loads(line) for line in open(Path(workdir) / "metrics.jsonl")]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def params_at(workdir, step):
    """Parameters of a checkpoint as `camjax.evaluate` restores them (onto this process's device)."""
    restored = evaluator.restore(str(workdir), DataParallel("sharded"), step)
    return [np.asarray(x) for x in jax.tree.leaves(restored.state.params)]


def copy_until(src, dst, step):
    """A copy of a run directory as it was at `step`: later checkpoints removed."""
    shutil.copytree(src, dst)
    for d in (Path(dst) / "checkpoints").iterdir():
        if d.name.isdigit() and int(d.name) > step:
            shutil.rmtree(d)


def test_distributed_params_come_from_flags_or_the_cluster():
    assert parallel.distributed_params(env={}) is None
    assert parallel.distributed_params("h:1", 2, 1, env={}) == dict(
        coordinator_address="h:1", num_processes=2, process_id=1
    )
    slurm = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="n[1-2]", SLURM_NTASKS="4", SLURM_PROCID="3", SLURM_LOCALID="1")
    assert parallel.distributed_params(env=slurm) == dict(cluster_detection_method="slurm")
    assert parallel.distributed_params(env={**slurm, "SLURM_NTASKS": "1"}) is None
    # sbatch without srun: one process, not a broken distributed start.
    assert parallel.distributed_params(env={k: v for k, v in slurm.items() if k != "SLURM_STEP_NODELIST"}) is None
    k8s = dict(
        KUBERNETES_SERVICE_HOST="10.0.0.1",
        JOB_COMPLETION_INDEX="2",
        JAX_COORDINATOR_ADDRESS="w-0.svc:1234",
        JAX_NUM_PROCESSES="4",
    )
    assert parallel.distributed_params(env=k8s) == dict(
        coordinator_address="w-0.svc:1234", num_processes=4, process_id=2, cluster_detection_method="deactivate"
    )
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES"):
        parallel.distributed_params(env={k: v for k, v in k8s.items() if k != "JAX_NUM_PROCESSES"})
    with pytest.raises(ValueError, match="JAX_COORDINATOR_ADDRESS"):
        parallel.distributed_params(env={"KUBERNETES_SERVICE_HOST": "x", "JOB_COMPLETION_INDEX": "0"})


def test_process_shards_are_disjoint_and_make_the_single_process_batch(root):
    c = config(root)
    index = sources.scan_root(root, val_fraction=c.data.val_fraction, seed=c.seed)
    opened = {p: [] for p in range(2)}

    def reader(p):
        return lambda path: (opened[p].append(path), decode.read_bytes(path))[1]

    whole = train_loader.make_process_loader(index, c.data, global_batch=8, seed=0)
    parts = [
        train_loader.make_process_loader(
            index, c.data, global_batch=8, seed=0, process_index=p, process_count=2, read=reader(p)
        )
        for p in range(2)
    ]
    for _ in range(3):
        expected = next(whole)
        got = [next(it) for it in parts]
        for k in expected:
            np.testing.assert_array_equal(expected[k], np.concatenate([g[k] for g in got]), err_msg=k)
    assert parts[0].get_state() == parts[1].get_state() == whole.get_state()
    assert set(opened[0]).isdisjoint(opened[1])
    assert set(opened[0]) | set(opened[1]) == {r.path for r in index.train}
    c.data.shards = 3
    with pytest.raises(ValueError, match="data.shards=3"):
        train_loader.make_process_loader(index, c.data, global_batch=8, seed=0, process_index=0, process_count=2)


@pytest.mark.slow
def test_two_processes_train_like_one_and_checkpoints_move_between_them(root, tmp_path):
    """1 process x 4 devices trains 3 epochs (the reference). 2 processes x 2 devices resume its
    epoch-1 checkpoint and train epoch 2; 1 process x 1 device resumes that and trains epoch 3.
    Same global batches throughout, so the same losses and parameters."""
    one = tmp_path / "one"
    run(
        [sys.executable, "-m", "camjax.train", *train_flags(root, one)],
        {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    reference = losses(one)

    two = tmp_path / "two"
    copy_until(one, two, STEPS)
    hooks, record = tmp_path / "hooks", tmp_path / "opened"
    hooks.mkdir(), record.mkdir()
    (hooks / "sitecustomize.py").write_text(RECORD_OPENS)
    _, out, _ = run(
        [str(LOCAL_SH), "2", *train_flags(root, two, max_train_seconds=1e-9)],
        {
            "PYTHON": sys.executable,
            "LOCAL_DEVICES": "2",
            "PYTHONPATH": str(hooks),
            "RECORD_TRAIN_DIR": str(root / "train"),
            "RECORD_OUT": str(record),
        },
    )
    assert out.count("epoch 2: val/accuracy=") == 1, "only process 0 reports"
    got = losses(two)
    assert max(got) == 2 * STEPS
    for step in range(STEPS + 2, 2 * STEPS + 1):  # a resumed run's first step is not logged
        assert got[step] == pytest.approx(reference[step], rel=2e-4), step
    for a, b in zip(params_at(one, 2 * STEPS), params_at(two, 2 * STEPS)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)

    index = sources.scan_root(root)
    train_files = {r.path for r in index.train}
    opened = [set(json.load(open(f))) & train_files for f in record.iterdir()]
    per_process = [s for s in opened if s]  # local.sh's port lookup runs Python too
    assert len(per_process) == 2 and per_process[0].isdisjoint(per_process[1])
    assert per_process[0] | per_process[1] == train_files

    three = tmp_path / "three"
    shutil.copytree(two, three)
    trainer.train_and_evaluate(config(root), str(three))  # this process: one device
    got = losses(three)
    for step in range(2 * STEPS + 2, 3 * STEPS + 1):
        assert got[step] == pytest.approx(reference[step], rel=2e-4), step
    for a, b in zip(params_at(one, 3 * STEPS), params_at(three, 3 * STEPS)):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6)


def test_launch_recipes_agree_with_the_code():
    import yaml

    service, jobset = yaml.safe_load_all(open(REPO / "launch" / "jobset.yaml"))
    job = jobset["spec"]["replicatedJobs"][0]
    spec = job["template"]["spec"]
    pod = spec["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in pod["env"]}
    processes = job["replicas"] * spec["parallelism"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == spec["parallelism"]
    assert env["JAX_NUM_PROCESSES"] == str(processes)
    host, port = env["JAX_COORDINATOR_ADDRESS"].split(":")
    assert host == service["metadata"]["name"] and int(port) == service["spec"]["ports"][0]["port"]
    assert int(port) in [p["containerPort"] for p in pod["ports"]]
    assert service["spec"]["selector"]["jobset.sigs.k8s.io/jobset-name"] == jobset["metadata"]["name"]
    assert "camjax.train" in pod["command"]
    pod_env = {**env, "KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": str(processes - 1)}
    assert parallel.distributed_params(env=pod_env)["process_id"] == processes - 1
    for script in ("slurm.sbatch", "local.sh"):
        r = subprocess.run(["bash", "-n", str(REPO / "launch" / script)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_local_sh_fails_and_stops_the_others_when_one_process_fails(tmp_path):
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\ncase "$*" in *--process_id=1*) exit 3;; *) exec sleep 120;; esac\n')
    fake.chmod(0o755)
    with socket.socket() as s:  # local.sh asks PYTHON for a free port; give it one instead
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rc, _, err = run(
        [str(LOCAL_SH), "2", "--workdir", "x"], {"PYTHON": str(fake), "PORT": str(port)}, timeout=60, check=False
    )
    assert rc == 3 and "killing the others" in err


@pytest.mark.slow
def test_every_process_of_a_multi_process_run_refuses_a_held_workdir(root, tmp_path):
    """Process 0 takes the run's lock before anything is written and tells the others: with the
    workdir held by another run, every process stops with the holder's name, and nothing is written."""
    from camjax.runlock import WorkdirLock

    workdir = tmp_path / "held"
    workdir.mkdir()
    logs = tmp_path / "logs"
    with WorkdirLock(str(workdir)):
        rc, _, _ = run(
            [str(LOCAL_SH), "2", *train_flags(root, workdir)],
            {"PYTHON": sys.executable, "LOG_DIR": str(logs)},
            check=False,
        )
    assert rc != 0
    for i in range(2):
        log = (logs / f"process_{i}.log").read_text()
        assert f"in use by another run (pid {os.getpid()} on host" in log, log[-2000:]
    assert sorted(p.name for p in workdir.iterdir()) == ["run.lock"]


def test_the_lock_names_its_holder_and_is_free_once_released(tmp_path):
    from camjax.runlock import WorkdirBusyError, WorkdirLock

    first = WorkdirLock(str(tmp_path)).acquire()
    with pytest.raises(WorkdirBusyError, match=rf"pid {os.getpid()} on host {socket.gethostname()}, started 20"):
        WorkdirLock(str(tmp_path)).acquire()  # flock: two open files conflict, even in one process
    first.release()
    with WorkdirLock(str(tmp_path)):
        pass
