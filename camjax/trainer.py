"""The training loop behind `python -m camjax.train`: data, steps, validation, checkpoints, logs.

Started again on the same DIR, the run resumes from its latest checkpoint: model, optimizer,
plateau tracker and data-iterator position, so it continues exactly where it stopped.
"""

from __future__ import annotations

import gc
import json
import logging
import math
import os
import signal
import sys
import time

import jax
import numpy as np
from tqdm import tqdm

from camjax import assembly, config_checks, faults, optim
from camjax import metrics as scoring
from camjax.checkpoint import Checkpointer
from camjax.data import eval_batches, sources, train_loader
from camjax.parallel import DataParallel, cache_miss_count, compile_count, prefetch
from camjax.runlock import WorkdirBusyError, WorkdirLock
from camjax.writers import MetricWriter

log = logging.getLogger("camjax")
# curves.png is redrawn at an epoch's end at most this often, and once when training stops:
# a drawing takes 0.4 s warm and more the first time in a process, which runs of seconds-long
# epochs (tests, smoke runs) would otherwise pay every epoch.
CURVES_EVERY_SECONDS = 60.0


class _StopFlag:
    """SIGTERM/SIGINT ask the loop to checkpoint and exit at the next step boundary."""

    def __init__(self):
        self.requested = False
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        logging.warning("signal %d: checkpointing and stopping at the next step", signum)
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def validate(
    predict, dp: DataParallel, state, index, data_config, batch_size: int, classes, read, step: int = 0
) -> dict:
    """Accuracy, weighted accuracy and per-class accuracy over the deterministic validation set.

    A run that keeps a weight average is validated with the average, and its last weights are
    scored on the same batches too (`val/last_weights/...`: what the average gives; a state
    without the average is one more program, compiled once). An unreadable validation file is
    skipped and counted (`val/skipped_files`), named once per process; a class left with no
    readable file has no accuracy (None, logged once), rather than a zero that would pull the
    plateau tracker and the best checkpoint down.
    """
    scored = {"val": state} | ({"val/last_weights": state.replace(ema=None)} if state.ema is not None else {})
    preds, labels, manips = {name: [] for name in scored}, [], []
    batches = eval_batches.make_eval_batches(index.val, data_config, batch_size=batch_size, read=read)
    for batch in batches:
        # Every process reads every batch and runs its rows; predictions are gathered, so all
        # processes compute the same metrics (and plateau decisions).
        inputs = dp.put_batch(dp.process_rows(model_inputs(batch)))
        keep = batch["mask"] > 0
        for name, weights in scored.items():
            preds[name].append(dp.fetch_per_example(predict(weights, inputs)).argmax(-1)[keep])
        labels.append(batch["label"][keep])
        manips.append(batch["manipulation"][keep])
        faults.check("validate", step)
    if not labels:
        _warn_once(f"no readable validation file among {len(index.val)}: nothing is validated")
        return {}
    labels, manips = np.concatenate(labels), np.concatenate(manips)
    report = scoring.report(np.concatenate(preds["val"]), labels, manips, list(classes))
    out = {
        "val/accuracy": report["accuracy"],
        "val/weighted_accuracy": report["weighted_accuracy"],
        "val/accuracy_unalt": report["acc_unalt"],
        "val/accuracy_manip": report["acc_manip"],
        "val/skipped_files": len(batches.skipped),
    }
    out.update({f"val/class/{name}": acc for name, acc in report["per_class"].items()})
    if "val/last_weights" in preds:
        last = scoring.report(np.concatenate(preds["val/last_weights"]), labels, manips, list(classes))
        out["val/last_weights/accuracy"] = last["accuracy"]
        out["val/last_weights/weighted_accuracy"] = last["weighted_accuracy"]
    unscored = [name for name, acc in report["per_class"].items() if acc is None]
    if unscored:
        _warn_once(
            f"no readable validation file for class {', '.join(unscored)}: its accuracy is not reported "
            "(weighted and overall accuracy cover the other classes)"
        )
    return out


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


_MODEL_INPUTS = ("image", "label", "is_manipulated", "manipulation")
_DEVICE_AUGMENT_INPUTS = ("raw", "d4")  # data.manipulate_on='device': the step makes "image"


def model_inputs(batch):
    """The fields of a loader batch that the steps take (the rest is bookkeeping)."""
    keys = _MODEL_INPUTS + (_DEVICE_AUGMENT_INPUTS if "raw" in batch else ())
    return {k: batch[k] for k in keys if k in batch}


def _check_same_run(workdir: str, run: assembly.Run) -> None:
    """A workdir with a checkpoint belongs to one model and class list: resuming another is an
    error. (run.json is written with the first checkpoint, so a run that failed before it
    leaves nothing to refuse a corrected retry with.)"""
    if not os.path.exists(os.path.join(workdir, assembly.RUN_FILE)):
        return
    old = assembly.Run.load(workdir)
    for field in ("model", "classes", "patch"):
        if getattr(old, field) != getattr(run, field):
            raise ValueError(
                f"{workdir} holds a run with another {field} ({getattr(old, field)!r}, now {getattr(run, field)!r}); "
                "use a new --workdir"
            )


def lock_workdir(workdir: str) -> WorkdirLock | None:
    """Process 0 takes the run's lock before any process writes; if it cannot, every process
    raises the same WorkdirBusyError. Returns the lock on process 0 (None on the others)."""
    lock, refusal = None, ""
    if jax.process_index() == 0:
        try:
            lock = WorkdirLock(workdir).acquire()
        except WorkdirBusyError as e:
            refusal = str(e)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        if multihost_utils.broadcast_one_to_all(np.int32(bool(refusal))):
            raise WorkdirBusyError(refusal or WorkdirLock(workdir).busy_message())
    elif refusal:
        raise WorkdirBusyError(refusal)
    return lock


def train_and_evaluate(config, workdir: str) -> dict[str, float]:
    """Trains `config` in `workdir` (resuming if it holds a checkpoint); returns the last validation
    metrics. A config that cannot run (config_checks.ConfigError), or a workdir that another live
    run holds (WorkdirBusyError), is refused before anything is written."""
    config_checks.validate(config)
    os.makedirs(workdir, exist_ok=True)
    lock = lock_workdir(workdir)
    try:
        return _train(config, workdir)
    finally:
        # The training loader's last batches are Grain shared-memory arrays in reference cycles
        # with its closed iterators: collect them once the run's frame is gone, or a process that
        # trains again (benchmarks/recipe.py's seeds) holds their /dev/shm segments until a later
        # collection or its exit, which the resource tracker then reports as leaked.
        gc.collect()
        if lock is not None:
            lock.release()


def _train(config, workdir: str) -> dict[str, float]:
    assembly.enable_compilation_cache(config.compilation_cache)
    index, read, root = assembly.open_dataset(config.data, config.seed)
    if config.data.get("outliers"):
        outliers = [r for r in index.train if r.label == sources.OUTLIER]
        log.info(
            "outlier exposure: %d photos of %d other cameras from %s",
            len(outliers),
            len({r.class_name for r in outliers}),
            config.data.outliers,
        )
    run = assembly.Run.from_config(config, index.classes, root)
    is_main = jax.process_index() == 0
    dp = DataParallel(config.parallel)
    dp.check_batch_size(config.batch_size)
    steps_per_epoch = config.steps_per_epoch or max(
        1, len(index.train) * config.data.patches_per_image // config.batch_size
    )
    total_steps = steps_per_epoch * config.num_epochs

    ckpt = Checkpointer(workdir, keep_best=config.checkpoint_keep_best, best_metric=config.optim.plateau.metric)
    resuming = ckpt.latest_step() is not None
    # A resumed run takes every array from its checkpoint: the state is built as shapes only.
    built = (assembly.build_abstract if resuming else assembly.build)(
        config.model,
        len(run.classes),
        dp,
        dtype=config.dtype,
        optim_config=config.optim,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        seed=config.seed,
        init_from="" if resuming else config.model.init_from,
    )
    host_state = built.host_state
    plateau = optim.PlateauTracker.from_config(config.optim.plateau, config.optim.learning_rate)
    schedule = optim.learning_rate_schedule(config.optim, steps_per_epoch, total_steps)

    writer = MetricWriter(workdir)
    step, data_state = 0, None
    if resuming:
        _check_same_run(workdir, run)
        step, host_state, record = ckpt.restore(built.restore_target(dp.restore_sharding))
        plateau = optim.PlateauTracker.from_state_dict(record["plateau"])
        data_state = record.get("data_state")
        log.info("resumed from step %d (epoch %d)", step, step // steps_per_epoch)
    writer.truncate_after(step)  # rows a killed or failed attempt logged after its last checkpoint
    state = dp.put_state(host_state)
    del host_state
    built.host_state = None  # on the devices now: the host copy is freed

    class_weights = None
    if config.data.class_balance == "weights":
        class_weights = sources.class_weights(index)
    train_step = built.train_step(config, class_weights)
    predict = built.predict()

    loader = train_loader.make_process_loader(
        index,
        config.data,
        global_batch=config.batch_size,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        read=read,
    )
    if data_state is not None:
        loader.set_state(_decode_data_state(data_state))
    faults.check("start", 0)

    def with_position(it):
        for batch in it:
            yield batch, it.get_state()

    def to_device(item):
        batch, position = item
        return dp.put_batch(model_inputs(batch)), int(batch["skipped"].sum()), position

    batches = prefetch(with_position(loader), to_device, size=2)

    val_batch = dp.eval_batch_size(config.eval.batch_size)
    last_val: dict[str, float] = {}
    skipped_total = nonfinite_total = 0
    start = time.time()
    interactive = sys.stdout.isatty()  # in a log file, a progress line every 30 s is plenty
    bar = tqdm(
        total=total_steps,
        initial=step,
        disable=not is_main,
        mininterval=2.0 if interactive else 30.0,
        dynamic_ncols=True,
        file=sys.stdout,
        desc="train",
    )
    pending, window_start, window_steps = [], None, 0
    compiles_after_first = None

    def save(metrics=None, *, force=False):
        if is_main and ckpt.latest_step() is None:  # the first checkpoint: the run's description goes with it
            run.save(workdir)
            assembly.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
        record = {
            "step": int(step),
            "epoch": step // steps_per_epoch,
            "plateau": plateau.state_dict(),
            "data_state": _encode_data_state(position),
            "metrics": metrics or {},
        }
        ckpt.save(step, dp.saveable(state), record, metrics, force=force)
        faults.check("save", step)

    def draw_curves():
        if is_main:
            from camjax import plots

            plots.curves_png(writer.path, os.path.join(workdir, "curves.png"))
        return time.time()

    position = data_state
    interrupted = False
    curves_drawn = time.time()
    try:
        with _StopFlag() as stop:
            while step < total_steps:
                dev_batch, skipped, position = next(batches)
                state, metrics = train_step(state, dev_batch)
                step += 1
                faults.check("step", step)
                skipped_total += skipped
                pending.append(metrics)
                window_steps += 1
                if window_start is None:  # exclude the first step's compilation from images/sec
                    jax.block_until_ready(metrics)
                    window_start, window_steps, pending = time.time(), 0, []
                    compiles_after_first = compile_count()
                bar.update(1)
                end_of_epoch = step % steps_per_epoch == 0
                if (step % config.log_every == 0 or end_of_epoch) and pending:
                    fetched = [dp.fetch_metrics(m) for m in pending]
                    nonfinite_total += int(sum(f.pop("train/nonfinite_steps", 0) for f in fetched))
                    if config.nonfinite == "skip":  # averages over the steps that updated, if any did
                        fetched = [f for f in fetched if math.isfinite(f["train/loss"])] or fetched
                    scalars = {k: float(np.mean([f[k] for f in fetched])) for k in fetched[0]}
                    elapsed = time.time() - window_start
                    scalars["images_per_sec"] = window_steps * config.batch_size / max(elapsed, 1e-9)
                    scalars["lr"] = float(schedule(step)) * plateau.scale
                    scalars["data/skipped_files"] = skipped_total
                    if config.nonfinite == "skip":
                        scalars["train/nonfinite_steps"] = nonfinite_total
                    if config.nonfinite != "skip" and not math.isfinite(scalars["train/loss"]):
                        raise FloatingPointError(
                            f"train/loss is {scalars['train/loss']} in steps {step - len(fetched) + 1}-{step}; the last "
                            f"good checkpoint is step {ckpt.latest_step()} in {workdir} (--config.nonfinite=skip skips "
                            "such batches instead)"
                        )
                    writer.write(step, scalars)
                    bar.set_postfix(loss=f"{scalars['train/loss']:.3f}", img_s=f"{scalars['images_per_sec']:.0f}")
                    pending, window_start, window_steps = [], time.time(), 0
                if end_of_epoch:
                    last_val = validate(predict, dp, state, index, config.data, val_batch, run.classes, read, step)
                    if last_val:
                        writer.write(step, {**last_val, "epoch": step // steps_per_epoch})
                        line = ", ".join(
                            f"{k}={scoring.format_score(last_val[k])}"
                            for k in ("val/accuracy", "val/weighted_accuracy", "val/last_weights/weighted_accuracy")
                            if k in last_val
                        )
                        if last_val.get(config.optim.plateau.metric) is not None:
                            scale = plateau.update(last_val[config.optim.plateau.metric])
                            state = state.replace(opt_state=optim.set_plateau_scale(state.opt_state, scale))
                            line += f" lr_scale={scale:g}"
                        if is_main:
                            bar.write(f"epoch {step // steps_per_epoch}: {line}")
                    save(last_val)
                    if time.time() - curves_drawn > CURVES_EVERY_SECONDS:
                        curves_drawn = draw_curves()
                    if config.max_train_seconds and dp.any_process(time.time() - start > config.max_train_seconds):
                        logging.warning("max_train_seconds reached at step %d", step)
                        break
                if dp.should_stop(stop.requested, step, config.log_every):
                    save(force=True)
                    interrupted = True
                    break
    finally:  # an error (a failed save, a non-finite loss) stops the data workers too
        bar.close()
        batches.close()
        loader.close()
    draw_curves()
    ckpt.wait()
    ckpt.close()
    writer.close()
    if config.eval.get("calibrate", False) and not interrupted:
        _calibrate(config, workdir, dp)
    if compiles_after_first is not None:
        recompiles = compile_count() - compiles_after_first
        log.info(
            "compilations after the first step: %d (validation and calibration programs included); persistent-cache misses: %d",
            recompiles,
            cache_miss_count(),
        )
    return last_val


def _calibrate(config, workdir: str, dp: DataParallel) -> None:
    """Temperature and open-set thresholds on the validation frames (camjax.calibration); a run
    of several processes leaves it to `python -m camjax.calibrate`, which runs on one."""
    if jax.process_count() > 1:
        log.warning(
            "calibration skipped in a multi-process run: run `python -m camjax.calibrate --workdir %s`", workdir
        )
        return
    from camjax import calibration

    try:
        calibration.calibrate_run(workdir, dp, false_rejection=config.eval.false_rejection)
    except ValueError as e:  # the run itself is done and kept: it is only left uncalibrated
        log.warning("calibration skipped: %s", e)


def _encode_data_state(state):
    if isinstance(state, bytes):
        return {"bytes": state.decode("latin-1")}
    return state


def _decode_data_state(state):
    if isinstance(state, dict) and set(state) == {"bytes"}:
        return state["bytes"].encode("latin-1")
    return state
