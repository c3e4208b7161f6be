"""Evaluation behind `python -m camjax.evaluate`: TTA predictions, blending, balancing, scoring.

Restores the best checkpoint of each run, predicts every test file (tiled on the 8 px grid
when larger than the patch) under the requested D4 views in one model call, blends views,
tiles and models, optionally balances the class counts, and writes the submission. With
ROOT/test_labels.csv present it also scores the result (last line: weighted_accuracy=...).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import zlib

import jax
import ml_collections
import numpy as np

from camjax import assembly, calibration, plots, postprocess, steps, tta
from camjax import metrics as scoring
from camjax.cameras import MANIPULATION_NAMES, is_manipulated_from_fname
from camjax.checkpoint import Checkpointer
from camjax.data import eval_batches, manipulations, sources
from camjax.data import grid as grid_lib
from camjax.data.decode import decode_image, read_bytes
from camjax.extras import jpeg_grid, prnu
from camjax.parallel import DataParallel


@dataclasses.dataclass
class RestoredModel:
    run: assembly.Run
    config: ml_collections.ConfigDict
    built: assembly.Assembled  # its tta_predict() wraps the step for the devices
    state: steps.TrainState  # on device, replicated
    step: int
    calibration: calibration.Calibration | None = None  # DIR/calibration.json, when the run has one

    def calibrated(self, probs: np.ndarray) -> np.ndarray:
        """Blended probabilities [..., C] with the run's temperature (as they are without one)."""
        return probs if self.calibration is None else self.calibration.apply(probs)

    @property
    def model_def(self) -> steps.ModelDef:
        return self.built.model_def


def restore(workdir: str, dp: DataParallel, step: int | None = None) -> RestoredModel:
    """The best (or the given) checkpoint of a training run, placed on the devices."""
    run = assembly.Run.load(workdir)
    with open(os.path.join(workdir, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    # Shapes only: the checkpoint fills every array, so nothing is initialised (seconds per model).
    built = assembly.build_abstract(run.model_config, len(run.classes), dp, dtype=run.dtype, optim_config=config.optim)
    ckpt = Checkpointer(workdir, best_metric=config.optim.plateau.metric, read_only=True)
    step = ckpt.best_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"{workdir}: no checkpoint to evaluate")
    target = built.restore_target(jax.sharding.SingleDeviceSharding(dp.local_devices[0]))
    step, state, _ = ckpt.restore(target, step)
    ckpt.close()
    return RestoredModel(run, config, built, dp.put_state(state), step, calibration.load(workdir))


@dataclasses.dataclass
class Predictions:
    probs: np.ndarray  # [N, V, C] per file and view, tiles blended (NaN: a skipped file)
    agreement: np.ndarray  # [N] share of a file's tiles whose own answer is the file's (NaN: skipped)
    skipped: list[str]  # unreadable files, already logged
    features: np.ndarray | None = None  # [N, D] the head's input features, mean over tiles (when asked)


def predict_tiles(
    restored: RestoredModel,
    dp: DataParallel,
    batches,
    num_files: int,
    view_ids,
    *,
    agg: str,
    p: float,
    features: bool = False,
):
    """Runs the model on a stream of tile batches (`camjax.data.eval_batches`) under the views
    and blends each file's tiles, holding only the tiles of files still arriving. Returns
    (probs [N, V, C], agreement [N], features [N, D] or None); with `features` the same model
    call also returns each tile's embedding (the identity view), averaged over a file's tiles."""
    predict = restored.built.tta_predict(view_ids, features=features)
    num_classes = len(restored.run.classes)
    out = np.full((num_files, len(view_ids), num_classes), np.nan, np.float32)
    agreement = np.full(num_files, np.nan)
    embedded = None
    open_tiles: dict[int, list[tuple[np.ndarray, np.ndarray | None]]] = {}

    def close(files):
        for f in files:
            rows = open_tiles.pop(f)
            tiles = np.stack([probs for probs, _ in rows])  # [T, V, C]
            out[f] = postprocess.blend(tiles, axis=0, agg=agg, p=p)
            answer = postprocess.blend(out[f], axis=0, agg=agg, p=p).argmax()
            agreement[f] = np.mean(postprocess.blend(tiles, axis=1, agg=agg, p=p).argmax(-1) == answer)
            if embedded is not None:
                embedded[f] = np.mean([feats for _, feats in rows], axis=0)

    for batch in batches:
        inputs = dp.put_batch({"image": batch["image"], "is_manipulated": batch["is_manipulated"]})
        predicted = predict(restored.state, inputs)
        probs, feats = predicted if features else (predicted, None)
        probs = dp.fetch_per_example(probs)
        feats = dp.fetch_per_example(feats) if features else [None] * len(probs)
        if features and embedded is None:
            embedded = np.full((num_files, feats.shape[-1]), np.nan, np.float32)
        for row, feat, f, m in zip(probs, feats, batch["file_index"], batch["mask"]):
            if m > 0:
                open_tiles.setdefault(int(f), []).append((row, feat))
        # Files arrive in order: those before the batch's last file are complete.
        last = int(batch["file_index"][batch["mask"] > 0].max()) if (batch["mask"] > 0).any() else -1
        close([f for f in list(open_tiles) if f < last])
    close(list(open_tiles))
    return out, agreement, embedded


# Below this `jpeg_grid.locate_grid` confidence the pixels show no block grid (never
# JPEG-compressed, or resampled since): tiles start at the corner. A crop of a JPEG scores
# 1 (quality 75) to 4 (95), 0.14 even at 99; an uncompressed or resized image under 0.01.
GRID_CONFIDENCE = 0.05
GRID_MIN_SIDE = 64  # fewer than 8 x 8 blocks: too few to tell the grid from noise


class GridPhases:
    """The tile grid of each image, found as its tiles are cut (a `make_test_batches` phase)."""

    def __init__(self, patch: int, progress=None):
        self.patch, self.progress = patch, progress
        self.found: dict[str, dict] = {}

    def __call__(self, path: str, frame: np.ndarray, jpeg: bool) -> tuple[int, int]:
        if path not in self.found:
            h, w = frame.shape[:2]
            if jpeg:
                phase, source = (0, 0), "file"
            else:
                phase, confidence = jpeg_grid.locate_grid(frame) if min(h, w) >= GRID_MIN_SIDE else ((0, 0), 0.0)
                phase, source = (phase, "pixels") if confidence >= GRID_CONFIDENCE else ((0, 0), "none")
            if min(h - phase[0], w - phase[1]) < self.patch:
                logging.warning(
                    "%s is %dx%d, smaller than the %d px patch: answered from what fits (mirrored)",
                    path,
                    h,
                    w,
                    self.patch,
                )
            self.found[path] = {"grid_phase": list(phase), "grid_source": source, "size": [h, w]}
        if self.progress is not None:
            self.progress.update(1)
        return tuple(self.found[path]["grid_phase"])


def predict_files(
    restored: RestoredModel,
    dp: DataParallel,
    test_paths,
    view_ids,
    *,
    agg: str,
    p: float,
    batch_size: int,
    max_tiles: int | None,
    pad: bool,
    skip_bad: bool,
    read=read_bytes,
    phase=None,
    features: bool = False,
    manipulated=None,
) -> Predictions:
    """Per-file probabilities under the views, tiles blended, streaming from the files (and
    with `features`, each file's mean embedding). The model's manipulation flag is each
    file's entry of `manipulated` when given, else read from the file names."""
    batches = eval_batches.make_test_batches(
        test_paths,
        patch=restored.run.patch,
        batch_size=dp.eval_batch_size(batch_size),
        max_tiles=max_tiles,
        pad=pad,
        skip_bad=skip_bad,
        read=read,
        phase=phase,
        manipulated=manipulated,
    )
    probs, agreement, embedded = predict_tiles(
        restored, dp, batches, len(test_paths), view_ids, agg=agg, p=p, features=features
    )
    skipped = [path for path, _ in batches.skipped]  # (path, reason): already logged
    return Predictions(probs, agreement, skipped, embedded)


def validation_records(restored: RestoredModel, data_root: str | None = None):
    """(validation records, reader) of the run's dataset, or of `data_root` (challenge layout)."""
    config, run = restored.config, restored.run
    if data_root:
        index, read = sources.scan_root(data_root, val_fraction=config.data.val_fraction, seed=config.seed), read_bytes
    else:
        data = config.data.copy_and_resolve_references()
        if run.data_source == "folder":
            data.root = run.data_root
        index, read, _ = assembly.open_dataset(data, config.seed)
    if list(index.classes) != list(run.classes):
        raise ValueError(f"{data_root or run.data_root} has classes {list(index.classes)}, the run {run.classes}")
    if not index.val:
        raise ValueError(f"{data_root or run.data_root}: no validation files")
    return index.val, read


def manipulation_groups(fnames) -> np.ndarray:
    """The balancing groups of test files: 0 unaltered, 1 manipulated (from the file names)."""
    return np.array([int(bool(is_manipulated_from_fname(f))) for f in fnames])


def _score_report(pred, labels_by_fname, fnames, classes) -> dict:
    cls = {c: i for i, c in enumerate(classes)}
    rows = [labels_by_fname[f] for f in fnames]
    label = np.array([cls.get(camera, -1) for camera, _ in rows])
    manip = np.array([MANIPULATION_NAMES.index(m) for _, m in rows])
    return scoring.report(pred, label, manip, list(classes))


def prnu_merge(probs, test_paths, read, threshold: float, size: int = 512):
    """Probabilities made to agree within each sensor-noise (PRNU) cluster of the test files,
    and the cluster id of each file (-1: too small, unreadable or unscored, in no cluster)."""
    clusters = np.full(len(test_paths), -1, np.int64)
    residuals, used = prnu.residuals_of_files(test_paths, size=size, read=read)
    scored = np.isfinite(probs[used]).all(-1)
    residuals, used = residuals[scored], used[scored]
    if len(used) > 1:
        clusters[used] = prnu.cluster(prnu.pairwise_scores(residuals), threshold)
        probs = probs.copy()
        probs[used] = np.exp(prnu.merge_log_probs(np.log(np.clip(probs[used], 1e-12, 1.0)), clusters[used]))
    return probs, clusters


def _prnu_report(clusters, before, good, groups, labels, fnames, classes, threshold) -> dict:
    """Cluster purity against the true cameras, and the scores the same run had without PRNU."""
    cameras = np.array([labels[f][0] for f in fnames])
    member = clusters >= 0
    before_argmax = np.where(good, np.nan_to_num(before).argmax(-1), 0)
    before_balanced = before_argmax.copy()
    before_balanced[good] = postprocess.balance_probs(before[good], groups[good])
    return {
        "threshold": threshold,
        **prnu.purity(clusters[member], cameras[member]),
        "unbalanced_weighted_accuracy_without": _score_report(before_argmax, labels, fnames, classes)[
            "weighted_accuracy"
        ],
        "balanced_weighted_accuracy_without": _score_report(before_balanced, labels, fnames, classes)[
            "weighted_accuracy"
        ],
    }


def restore_runs(workdirs, dp: DataParallel) -> list[RestoredModel]:
    """The best checkpoint of each run, which must all name the same classes (to blend)."""
    restored = [restore(w, dp) for w in workdirs]
    classes = restored[0].run.classes
    for r, w in zip(restored, workdirs):
        if r.run.classes != classes:
            raise ValueError(f"{w} was trained on classes {r.run.classes}, {workdirs[0]} on {classes}: cannot blend")
    return restored


def prediction_settings(first: RestoredModel, agg=None, batch_size=None, max_tiles=None):
    """(agg, batch_size, max_tiles) with what is left None taken from the first run's
    `config.eval` (max_tiles 0: every tile, returned as None)."""
    configured = first.config.get("eval", {})
    agg = agg or configured.get("agg", "geometric")
    batch_size = batch_size or configured.get("batch_size", 64)
    max_tiles = (configured.get("max_tiles", 0) if max_tiles is None else max_tiles) or None
    return agg, batch_size, max_tiles


def views_of(r: RestoredModel, workdir: str, tta_name: str | None) -> tuple[int, ...]:
    """The D4 views to predict `r` under: `tta_name`, or those it trained with; views it never
    saw are warned about."""
    name = tta_name or r.run.trained_views
    unseen = tta.views_unseen(r.run.trained_views, name)
    if unseen:
        logging.warning(
            "%s trained with %r views; TTA %r adds unseen views %s (CFA/JPEG phase moves: expect a loss)",
            workdir,
            r.run.trained_views,
            name,
            [tta.D4_NAMES[k] for k in unseen],
        )
    return tta.views(name)


def shared_photo_reader(read=read_bytes):
    """`read`, with every image passed through what sharing a photo online does to it
    (`manipulations.shared_photo`), at a quality in SHARED_QUALITIES fixed by the file name."""
    low, high = manipulations.SHARED_QUALITIES

    def reader(path):
        data, name = read(path)
        quality = low + zlib.crc32(os.path.basename(path).encode()) % (high - low + 1)
        return manipulations.shared_photo(decode_image(data, name=name), quality), name

    return reader


def blend_models(restored, per_model, view_sets, agg, p, weights, views=None, calibrated=True) -> np.ndarray:
    """Each model's views blended and (unless not `calibrated`) calibrated, then the models
    blended: [N, C]. `views` names a subset of the views the models ran (a TTA subset's score)."""
    blended = []
    for r, pm, v in zip(restored, per_model, view_sets):
        if views is not None:
            pm = pm[:, [list(v).index(k) for k in views]]
        pm = postprocess.blend(pm, axis=1, agg=agg, p=p)
        blended.append(r.calibrated(pm) if calibrated else pm)
    return postprocess.blend(np.stack(blended), axis=0, agg=agg, p=p, weights=weights)


def evaluate(
    workdirs,
    *,
    data_root=None,
    tta_name=None,
    agg=None,
    p=2.0,
    weights=None,
    balance=False,
    out="submission.csv",
    batch_size=None,
    max_tiles=None,
    pad=False,
    skip_bad=False,
    prnu_threshold: float | None = None,
    shared: bool = False,
    grid: str | None = None,
) -> dict:
    """Predicts, blends, balances and writes the submission of `workdirs`' best checkpoints.

    `agg`, `batch_size` and `max_tiles` left None come from the first run's `config.eval`
    (max_tiles 0: every tile), so the CLI and the configured run agree by construction; so does
    `grid` (data.grid.TEST_GRIDS: tiles from the corner, or on the block grid each image shows). With
    `shared`, the test set is also predicted as photos shared online (`shared_photo_reader`)
    and the report compares the two.
    """
    dp = DataParallel("sharded")
    restored = restore_runs(workdirs, dp)
    configured = restored[0].config.get("eval", {})
    agg, batch_size, max_tiles = prediction_settings(restored[0], agg, batch_size, max_tiles)
    grid = grid or configured.get("grid", "corner")
    if grid not in grid_lib.TEST_GRIDS:
        raise ValueError(f"unknown grid {grid!r}; expected one of {', '.join(grid_lib.TEST_GRIDS)}")
    classes = restored[0].run.classes
    first = restored[0].run
    root, read = data_root or first.data_root, read_bytes
    if data_root is None and first.data_source == "tfds":
        from camjax.data import tfds_builder

        test_paths, read = tfds_builder.load_index(root).test, tfds_builder.BytesReader(root)
    else:
        test_paths = sources.list_test_files(root)
    fnames = [os.path.basename(p_) for p_ in test_paths]

    view_sets = [views_of(r, w, tta_name) for r, w in zip(restored, workdirs)]
    labels_path = os.path.join(root, "test_labels.csv")
    labels = None
    if os.path.exists(labels_path):
        labels = {f: (camera, m) for f, camera, m in postprocess.read_labels(labels_path)}
    # Test cameras outside the trained classes: the first run's embedding is read too, for the
    # feature-space open-set score (when its calibration fitted one).
    density = calibration.FeatureDensity.load(workdirs[0])
    embed_first = density is not None and any(camera not in classes for camera, _ in (labels or {}).values())

    def predict_all(reader, features=False):
        options = dict(agg=agg, p=p, batch_size=batch_size, max_tiles=max_tiles, pad=pad, skip_bad=skip_bad)
        options["phase"] = GridPhases(first.patch) if grid == "found" else None
        predicted = [
            predict_files(r, dp, test_paths, v, read=reader, features=features and i == 0, **options)
            for i, (r, v) in enumerate(zip(restored, view_sets))
        ]
        skipped = sorted({test_paths.index(s) for pr in predicted for s in pr.skipped})
        return [pr.probs for pr in predicted], skipped, predicted[0].features

    per_model, skipped_idx, first_features = predict_all(read, features=embed_first)
    blended = blend_models(restored, per_model, view_sets, agg, p, weights)
    clusters, before_prnu = None, blended
    if prnu_threshold is not None:
        blended, clusters = prnu_merge(blended, test_paths, read, prnu_threshold)
    good = np.isfinite(blended).all(-1)
    unbalanced = blended.argmax(-1)
    if skipped_idx:
        most_frequent = np.bincount(unbalanced[good], minlength=len(classes)).argmax()
        unbalanced[~good] = most_frequent
        logging.warning(
            "skipped %d unreadable test files, predicted %s for them: %s",
            len(skipped_idx),
            classes[most_frequent],
            ", ".join(fnames[i] for i in skipped_idx),
        )
    groups = manipulation_groups(fnames)
    balanced = unbalanced.copy()
    balanced[good] = postprocess.balance_probs(blended[good], groups[good])

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    stem = os.path.splitext(out)[0]
    chosen = balanced if balance else unbalanced
    postprocess.write_submission(f"{stem}_unbalanced.csv", fnames, [classes[i] for i in unbalanced])
    postprocess.write_submission(f"{stem}_balanced.csv", fnames, [classes[i] for i in balanced])
    postprocess.write_submission(out, fnames, [classes[i] for i in chosen])
    # Without the runs' temperatures too: benchmarks pool several runs' calibration reports.
    uncalibrated = blend_models(restored, per_model, view_sets, agg, p, weights, calibrated=False)
    np.savez_compressed(
        f"{stem}_probs.npz",
        fnames=np.array(fnames),
        classes=np.array(classes),
        probs=blended,
        probs_uncalibrated=uncalibrated,
        **{f"model{i}_views": pm for i, pm in enumerate(per_model)},
        **{f"model{i}_view_ids": np.array(v) for i, v in enumerate(view_sets)},
        **({} if clusters is None else {"prnu_clusters": clusters, "probs_before_prnu": before_prnu}),
    )

    result = {
        "out": out,
        "data_root": root,
        "workdirs": list(workdirs),
        "steps": [r.step for r in restored],
        "skipped": [fnames[i] for i in skipped_idx],
    }
    if labels is not None:
        missing = [f for f in fnames if f not in labels]
        if missing:
            raise ValueError(f"{labels_path} has no row for {len(missing)} test files, e.g. {missing[:3]}")
        # Cameras the models were not trained on are scored as "unknown" (open set); the
        # closed-set scores are those of the files of known cameras.
        known = np.array([labels[f][0] in classes for f in fnames])
        kf = [f for f, k in zip(fnames, known) if k]
        if not known.any():
            raise ValueError(f"{labels_path}: none of the test cameras is among the trained classes {classes}")

        def score(pred):
            return _score_report(pred[known], labels, kf, classes)

        report = score(chosen)
        report["unbalanced_weighted_accuracy"] = score(unbalanced)["weighted_accuracy"]
        report["balanced_weighted_accuracy"] = score(balanced)["weighted_accuracy"]
        if clusters is not None:
            report["prnu"] = _prnu_report(clusters, before_prnu, good, groups, labels, fnames, classes, prnu_threshold)
        # Each TTA subset's score, from the same predictions (views the models were run with).
        report["tta_subsets"] = {}
        for name in tta.VIEW_SETS:
            if all(set(tta.views(name)) <= set(v) for v in view_sets):
                probs = blend_models(restored, per_model, view_sets, agg, p, weights, views=tta.views(name))
                report["tta_subsets"][name] = score(probs.argmax(-1))["weighted_accuracy"]
        cls = {c: i for i, c in enumerate(classes)}
        label_ids = np.array([cls.get(labels[f][0], -1) for f in fnames])
        use = known & good
        report["calibration"] = calibration.test_report(
            uncalibrated[use],
            before_prnu[use],
            label_ids[use],
            calibrated_runs=[r.calibration is not None for r in restored],
        )
        if not known.all():
            feature_scores = None
            if first_features is not None:
                feature_scores = density.score(np.nan_to_num(first_features[good]), groups[good])
            report["open_set"] = calibration.open_set_report(
                before_prnu[good],
                known[good],
                restored[0].calibration,
                configured.get("open_set_score", "max_prob"),
                feature_scores=feature_scores,
                manipulated=groups[good] != 0,
            )
        if shared:
            per_shared, _, _ = predict_all(shared_photo_reader(read))
            shared_probs = blend_models(restored, per_shared, view_sets, agg, p, weights)
            low, high = manipulations.SHARED_QUALITIES
            report["shared_online"] = {
                "long_side": manipulations.SHARED_LONG_SIDE,
                "qualities": [low, high],
                "before": {
                    "weighted_accuracy": score(np.nan_to_num(before_prnu).argmax(-1))["weighted_accuracy"],
                    **calibration.summary(before_prnu[use], label_ids[use]),
                },
                "after": {
                    "weighted_accuracy": score(np.nan_to_num(shared_probs).argmax(-1))["weighted_accuracy"],
                    **calibration.summary(shared_probs[use], label_ids[use]),
                },
            }
        report.update(result)
        report["tta"] = [tta_name or r.run.trained_views for r in restored]
        report["agg"] = agg
        report["grid"] = grid
        report["balance"] = balance
        with postprocess.atomic_write(f"{stem}_report.json") as f:
            json.dump(report, f, indent=2)
        plots.confusion_png(
            np.array(report["confusion"]),
            classes,
            f"{stem}_confusion.png",
            title=f"weighted accuracy {report['weighted_accuracy']:.4f}",
        )
        result = report
    return result
