"""How sure a trained model is, and when to say "none of the known cameras".

A network trained with cross-entropy is over- or under-confident; blending views and tiles
moves its confidence again. So the temperature is fitted on what `evaluate` and `predict`
actually output: each held-out validation frame is cut like a challenge test image (a 512
px centre crop on the grid, under each of the nine manipulations), tiled, predicted under the
run's views and blended; one temperature T then rescales the blended log-probabilities
(p ** (1 / T), renormalised), minimising their negative log-likelihood. The same samples set
the open-set thresholds: the value of each open-set score below which 5% (by default) of
known-camera images fall. All of it is stored with the run (DIR/calibration.json) and read
back by `evaluate` and `predict`. The same samples' embeddings (the head's input features)
give a Gaussian per known camera and manipulation, with one covariance for the unaltered and
one for the manipulated samples (DIR/feature_density.npz), whose distance score `evaluate`
reports beside the probability scores when the test set holds cameras the run was not
trained on.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import numpy as np
from scipy import optimize, stats

from camjax import postprocess
from camjax.cameras import MANIPULATIONS
from camjax.data import eval_batches, grid

log = logging.getLogger(__name__)

CALIBRATION_FILE = "calibration.json"
ECE_BINS = 15
TEST_SIZE = 512  # the challenge's test images: 512 x 512 centre crops of a camera's frame
FALSE_REJECTION = 0.05  # the share of known-camera images the default threshold calls unknown


def _log(probs: np.ndarray) -> np.ndarray:
    return np.log(np.clip(np.asarray(probs, np.float64), postprocess.GEOMETRIC_EPS, 1.0))


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """`probs` ** (1 / temperature), renormalised over the last axis (T > 1 softens)."""
    z = _log(probs) / temperature
    z -= z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def nll(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes."""
    return float(-np.mean(_log(probs)[np.arange(len(labels)), labels]))


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Per equal-width confidence bin of the top class: samples, mean confidence, accuracy."""
    confidence = np.asarray(probs).max(-1)
    correct = np.asarray(probs).argmax(-1) == labels
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct, bins) / count

    def listed(values):  # JSON has no NaN: an empty bin is None
        return [None if np.isnan(v) else float(v) for v in values]

    return {"count": count.tolist(), "confidence": listed(mean_conf), "accuracy": listed(accuracy)}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of the top class: the count-weighted mean |accuracy - confidence| over the bins."""
    r = reliability(probs, labels, bins)
    count = np.array(r["count"])
    gap = np.abs(np.array(r["accuracy"], float) - np.array(r["confidence"], float))
    gap = np.nan_to_num(gap)  # empty bins weigh nothing
    return float((count * gap).sum() / max(count.sum(), 1))


def ece_if_calibrated(probs: np.ndarray, bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> dict:
    """The ECE that a perfectly calibrated model with these confidences would show on this many
    samples: labels drawn from `probs` themselves, ECE measured, over `draws` draws (median and
    90th percentile).

    ECE is biased upward on small sets (every bin's accuracy is a binomial estimate), so a
    measured ECE means little without it: on 240 test images at accuracy ~0.8 this floor is
    ~0.06 (benchmarks/RESULTS.md), above the 0.05 a calibration target might ask for.
    """
    probs = np.asarray(probs, np.float64)
    if not len(probs):
        return {"median": float("nan"), "q90": float("nan"), "draws": 0}
    rng = np.random.default_rng(seed)
    cumulative = np.cumsum(probs / probs.sum(-1, keepdims=True), -1)
    values = []
    for _ in range(draws):
        u = rng.random((len(probs), 1))
        labels = np.minimum((cumulative < u).sum(-1), probs.shape[-1] - 1)
        values.append(expected_calibration_error(probs, labels, bins))
    return {"median": float(np.median(values)), "q90": float(np.quantile(values, 0.9)), "draws": draws}


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of `scale(probs, T)`, searched over log T in [-4, 4]."""
    result = optimize.minimize_scalar(
        lambda log_t: nll(scale(probs, float(np.exp(log_t))), labels), bounds=(-4.0, 4.0), method="bounded"
    )
    return float(np.exp(result.x))


def summary(probs: np.ndarray, labels: np.ndarray) -> dict:
    return {
        "ece": expected_calibration_error(probs, labels),
        "nll": nll(probs, labels),
        "accuracy": float(np.mean(probs.argmax(-1) == labels)),
    }


# Open-set scores: higher means "more like a known camera". Each takes calibrated probabilities.
def _max_prob(probs):
    return probs.max(-1)


def _neg_entropy(probs):
    return (probs * _log(probs)).sum(-1)


def _margin(probs):
    top2 = np.sort(probs, -1)[..., -2:]
    return top2[..., 1] - top2[..., 0]


OPEN_SET_SCORES = {"max_prob": _max_prob, "neg_entropy": _neg_entropy, "margin": _margin}


def open_set_scores(probs: np.ndarray) -> dict[str, np.ndarray]:
    return {name: fn(np.asarray(probs, np.float64)) for name, fn in OPEN_SET_SCORES.items()}


FEATURE_SCORE = "feature_distance"  # the open-set score read from the embedding, not the probabilities
FEATURE_FILE = "feature_density.npz"
VERDICT_SCORES = (*OPEN_SET_SCORES, FEATURE_SCORE)  # what `eval.open_set_score` may name


def oas_covariance(x: np.ndarray) -> tuple[np.ndarray, float]:
    """The Oracle Approximating Shrinkage estimate of the covariance of centred rows `x` [N, D]
    (Chen et al. 2010, as scikit-learn's `OAS`): the sample covariance pulled towards a scaled
    identity by a closed-form amount, so a few hundred samples of a 256-dimensional embedding
    still give an invertible, well-conditioned matrix. Returns (covariance, shrinkage)."""
    n, d = x.shape
    emp = x.T @ x / n
    mu = np.trace(emp) / d
    alpha = np.mean(emp**2)
    den = (n + 1.0) * (alpha - mu**2 / d)
    shrinkage = 1.0 if den == 0 else min((alpha + mu**2) / den, 1.0)
    return (1.0 - shrinkage) * emp + shrinkage * mu * np.eye(d), float(shrinkage)


@dataclasses.dataclass
class FeatureDensity:
    """A Gaussian per known camera and manipulation in the embedding, the feature-space
    open-set score (after Lee et al. 2018, one mean per component, shared shrunk covariances).

    The embedding of a camera's patches is not one cluster: each manipulation moves it (a
    resize or a second JPEG rewrites the traces the network reads), so one mean per camera
    sits between clusters, and an unknown camera's unaltered patch can be nearer to it than
    a known camera's manipulated one. So there is one mean per (camera, manipulation) seen in
    the fit, and the unaltered and the manipulated samples each get their own covariance (the
    spread of a second JPEG's traces is not that of a camera's own). A test image is scored
    against the components of its own group, which its file name gives as it gives the model's
    flag: minus the squared Mahalanobis distance to the nearest. The groups' scores are then
    put on one scale (`standardise`): 0 at the median of the group's cross-fitted validation
    scores, -1 at their `false_rejection` quantile, so one threshold asks the same of both."""

    means: np.ndarray  # [K, D] one per (camera, manipulation) component
    group_of_mean: np.ndarray  # [K] 0: unaltered, 1: manipulated
    precisions: np.ndarray  # [G, D, D] per group present in the fit (index: `groups`)
    groups: np.ndarray  # [G] the groups fitted, ascending
    shrinkage: np.ndarray  # [G]
    centre: np.ndarray  # [G] subtracted from a group's raw score
    spread: np.ndarray  # [G] divides it

    @classmethod
    def fit(cls, features: np.ndarray, labels: np.ndarray, manipulations: np.ndarray | None = None) -> FeatureDensity:
        """Component means of the (label, manipulation id) pairs present; `manipulations` None:
        every sample unaltered (one group, one mean per camera). Unstandardised (centre 0,
        spread 1) until `standardise`."""
        features, labels = np.asarray(features, np.float64), np.asarray(labels)
        manipulations = np.zeros(len(labels), np.int64) if manipulations is None else np.asarray(manipulations)
        sample_group = (manipulations != 0).astype(np.int64)
        means, group_of_mean, precisions, shrinkage = [], [], [], []
        groups = np.unique(sample_group)
        for g in groups:
            rows = sample_group == g
            keys = labels[rows] * (int(manipulations.max()) + 1) + manipulations[rows]
            present = np.unique(keys)
            group_means = np.stack([features[rows][keys == k].mean(0) for k in present])
            residuals = features[rows] - group_means[np.searchsorted(present, keys)]
            if not residuals.any():  # one sample per component: no spread around the means to read
                log.warning(
                    "one validation sample per camera and manipulation: feature distances use the overall spread"
                )
                residuals = features[rows] - features[rows].mean(0)
                if not residuals.any():
                    residuals = np.eye(features.shape[1])
            covariance, shrunk = oas_covariance(residuals)
            means.append(group_means)
            group_of_mean += [g] * len(present)
            precisions.append(np.linalg.inv(covariance))
            shrinkage.append(shrunk)
        ones = np.ones(len(groups))
        return cls(
            np.concatenate(means),
            np.array(group_of_mean),
            np.stack(precisions),
            groups,
            np.array(shrinkage),
            0 * ones,
            ones,
        )

    def _group_index(self, manipulated) -> np.ndarray:
        """Each image's fitted group: its own, or the only one fitted."""
        wanted = np.asarray(manipulated, np.int64).astype(bool).astype(np.int64)
        return (
            np.searchsorted(self.groups, wanted).clip(0, len(self.groups) - 1) if len(self.groups) > 1 else 0 * wanted
        )

    def raw(self, features: np.ndarray, manipulated) -> np.ndarray:
        """-min over the image's group's components of the squared Mahalanobis distance."""
        features = np.asarray(features, np.float64)
        index = self._group_index(manipulated)
        out = np.full(len(features), np.nan)
        for i, g in enumerate(self.groups):
            rows = index == i
            if rows.any():
                diff = features[rows][:, None, :] - self.means[self.group_of_mean == g][None]  # [N, K_g, D]
                out[rows] = -np.einsum("ncd,de,nce->nc", diff, self.precisions[i], diff).min(-1)
        return out

    def score(self, features: np.ndarray, manipulated) -> np.ndarray:
        """The standardised score (higher: more like a known camera; -1: the threshold's quantile)."""
        return self.on_scale(self.raw(features, manipulated), manipulated)

    def on_scale(self, raw_scores: np.ndarray, manipulated) -> np.ndarray:
        """Raw scores of images in groups `manipulated`, standardised."""
        index = self._group_index(manipulated)
        return (np.asarray(raw_scores, np.float64) - self.centre[index]) / self.spread[index]

    def standardise(self, raw_scores: np.ndarray, manipulated, false_rejection: float = FALSE_REJECTION):
        """Sets each group's centre and spread from `raw_scores` (cross-fitted, see
        `cross_fitted_scores`) of samples of known cameras: median -> 0, quantile -> -1."""
        index = self._group_index(manipulated)
        for i in range(len(self.groups)):
            group_scores = np.asarray(raw_scores)[index == i]
            if len(group_scores):
                self.centre[i], self.spread[i] = open_set_scale(group_scores, false_rejection)
        return self

    def save(self, workdir: str) -> str:
        path = os.path.join(workdir, FEATURE_FILE)
        with postprocess.atomic_write(path, "wb") as f:
            np.savez(f, **dataclasses.asdict(self))
        return path

    @classmethod
    def load(cls, workdir: str) -> FeatureDensity | None:
        path = os.path.join(workdir, FEATURE_FILE)
        if not os.path.exists(path):
            return None
        with np.load(path) as z:
            if "groups" not in z:  # stored by camjax before the per-manipulation components
                log.warning("%s: a density from an older camjax (one mean per camera); refit it with calibrate", path)
                return None
            return cls(**{f.name: z[f.name] for f in dataclasses.fields(cls)})


def open_set_scale(known_scores: np.ndarray, false_rejection: float = FALSE_REJECTION) -> tuple[float, float]:
    """(centre, spread) that put scores on the verdict's scale: the known cameras' samples'
    median at 0 and their `false_rejection` quantile at -1, the threshold."""
    median, low = float(np.median(known_scores)), float(np.quantile(known_scores, false_rejection))
    return median, max(median - low, 1e-12 * max(abs(median), 1.0))


def density_scores(features, labels, manipulations, query, query_manipulated) -> np.ndarray:
    """Raw `FeatureDensity` scores of `query` under a density fitted on the other arguments:
    the shipped open-set score, in the signature `cross_fitted_scores` fits any score by."""
    return FeatureDensity.fit(features, labels, manipulations).raw(query, query_manipulated)


def cross_fitted_scores(
    features: np.ndarray,
    labels: np.ndarray,
    frames: np.ndarray,
    manipulations: np.ndarray | None = None,
    folds: int = 5,
    score=density_scores,
) -> np.ndarray:
    """Each sample's raw `FeatureDensity` score under a density fitted without its frame
    (or that of `score(features, labels, manipulations, query_features, query_manipulated)`,
    another open-set score fitted and applied the same way).

    A threshold read from the samples the means were fitted on is an in-sample quantile: new
    photos of the same cameras sit farther from the means, and far more than the asked-for
    share of them is rejected. Here every frame's samples (its manipulated copies together:
    they are near-duplicates) are scored by a density fitted on the other folds; each
    camera's frames go round-robin over the folds, so every fold leaves some of every camera
    with at least two frames in the fit. With one frame per camera there is nothing to hold
    out: the in-sample scores are returned, with a warning."""
    features, labels, frames = np.asarray(features, np.float64), np.asarray(labels), np.asarray(frames)
    manipulations = np.zeros(len(labels), np.int64) if manipulations is None else np.asarray(manipulations)
    manipulated = manipulations != 0
    fold_of_frame = {}
    for label in np.unique(labels):
        for i, frame in enumerate(np.unique(frames[labels == label])):
            fold_of_frame[frame] = i % folds
    fold = np.array([fold_of_frame[f] for f in frames])
    if (fold == 0).all():
        log.warning("one validation frame per camera: the feature_distance threshold is in-sample (too strict)")
        return score(features, labels, manipulations, features, manipulated)
    scores = np.full(len(labels), np.nan)
    for k in np.unique(fold):
        held = fold == k
        scores[held] = score(features[~held], labels[~held], manipulations[~held], features[held], manipulated[held])
    return scores


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(score of a known image > score of an unknown one), ties counted half (Mann-Whitney)."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return float("nan")
    ranks = stats.rankdata(np.concatenate([known, unknown]))  # ties get their mean rank
    return float((ranks[: len(known)].sum() - len(known) * (len(known) + 1) / 2) / (len(known) * len(unknown)))


@dataclasses.dataclass
class Calibration:
    temperature: float = 1.0
    thresholds: dict = dataclasses.field(default_factory=dict)  # open-set score name -> threshold
    false_rejection: float = FALSE_REJECTION
    samples: int = 0
    step: int = -1  # the checkpoint it was fitted on
    before: dict = dataclasses.field(default_factory=dict)  # ece, nll, accuracy on the samples
    after: dict = dataclasses.field(default_factory=dict)
    reliability_before: dict = dataclasses.field(default_factory=dict)
    reliability_after: dict = dataclasses.field(default_factory=dict)

    def apply(self, probs: np.ndarray) -> np.ndarray:
        return scale(probs, self.temperature)

    def unknown(self, probs: np.ndarray, score: str = "max_prob") -> np.ndarray:
        """True where a calibrated prediction falls below the threshold: no known camera."""
        if score not in self.thresholds:
            raise ValueError(f"no threshold for open-set score {score!r}; calibrated: {sorted(self.thresholds)}")
        return OPEN_SET_SCORES[score](np.asarray(probs, np.float64)) < self.thresholds[score]

    def save(self, workdir: str) -> str:
        path = os.path.join(workdir, CALIBRATION_FILE)
        with postprocess.atomic_write(path) as f:
            json.dump(dataclasses.asdict(self), f, indent=2)
        return path


def load(workdir: str) -> Calibration | None:
    """The run's calibration, or None for a run that has none (an identity, T = 1)."""
    path = os.path.join(workdir, CALIBRATION_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return Calibration(**json.load(f))


def fit(probs: np.ndarray, labels: np.ndarray, *, step: int = -1, false_rejection: float = FALSE_REJECTION):
    """The temperature and open-set thresholds for blended validation `probs` [N, C]."""
    temperature = fit_temperature(probs, labels)
    calibrated = scale(probs, temperature)
    thresholds = {
        name: float(np.quantile(score, false_rejection)) for name, score in open_set_scores(calibrated).items()
    }
    return Calibration(
        temperature=temperature,
        thresholds=thresholds,
        false_rejection=false_rejection,
        samples=len(labels),
        step=step,
        before=summary(probs, labels),
        after=summary(calibrated, labels),
        reliability_before=reliability(probs, labels),
        reliability_after=reliability(calibrated, labels),
    )


def test_report(uncalibrated: np.ndarray, calibrated: np.ndarray, labels: np.ndarray, *, calibrated_runs) -> dict:
    """ECE, NLL and accuracy of test predictions of known cameras, without and with the runs'
    temperatures, the reliability diagrams of both, and the ECE a perfectly calibrated model
    with the calibrated confidences would show on this many images (`ece_if_calibrated`)."""
    return {
        "runs_calibrated": list(calibrated_runs),
        "before": summary(uncalibrated, labels),
        "after": summary(calibrated, labels),
        "ece_if_calibrated": ece_if_calibrated(calibrated),
        "reliability_before": reliability(uncalibrated, labels),
        "reliability_after": reliability(calibrated, labels),
    }


def open_set_report(
    probs: np.ndarray,
    known: np.ndarray,
    calibration: Calibration | None,
    score: str,
    feature_scores=None,
    manipulated=None,
) -> dict:
    """Known-vs-unknown camera separation of every open-set score (AUROC), and the false
    rejections of known cameras and false acceptances of unknown ones at the run's thresholds.
    `feature_scores` [N] are the `FeatureDensity` scores of the same images, when the run has one.

    With `manipulated` [N] (the test file names' flag), the same for the unaltered and the
    manipulated images apart (`by_group`, each group that has both known and unknown cameras): a
    resize or a second JPEG rewrites the traces that tell cameras apart, so the two are different
    questions, and a photo an examiner receives straight from a camera is the first."""
    known = np.asarray(known, bool)
    scores = open_set_scores(probs)
    if feature_scores is not None:
        scores[FEATURE_SCORE] = np.asarray(feature_scores, np.float64)
    out = {"score": score, **_separation(scores, known, calibration)}
    if manipulated is not None:
        manipulated = np.asarray(manipulated, bool)
        out["by_group"] = {
            name: _separation({k: v[rows] for k, v in scores.items()}, known[rows], calibration)
            for name, rows in (("unaltered", ~manipulated), ("manipulated", manipulated))
            if known[rows].any() and not known[rows].all()
        }
    return out


def _separation(scores: dict, known: np.ndarray, calibration: Calibration | None) -> dict:
    out = {"known": int(known.sum()), "unknown": int((~known).sum()), "auroc": {}}
    for name, values in scores.items():
        out["auroc"][name] = auroc(values[known], values[~known])
        if calibration is not None and name in calibration.thresholds:
            below = values < calibration.thresholds[name]
            out.setdefault("false_rejection", {})[name] = float(below[known].mean())
            out.setdefault("false_acceptance", {})[name] = float((~below[~known]).mean())
    return out


def test_like_samples(records, read, data_config, size: int = TEST_SIZE, crops: int = 1, unaltered_crops: int = 1):
    """Each validation frame cut like a challenge test image: the `size` centre crop on the
    crop grid (and `crops` - 1 more, tiling the frame) under every manipulation, then unaltered
    crops only from the tiling's next origins up to `unaltered_crops` per frame. Returns
    (images, is_manipulated, manipulation ids, labels, the index of each sample's record);
    unreadable files are skipped and logged.

    Under every manipulation one sample in nine is unaltered, while half of a challenge test set
    is: the unaltered group's feature density and threshold (fitted per group) would rest on one
    sample per frame, and the temperature on a mix unlike the test's."""
    images, flags, manipulation_ids, labels, frames = [], [], [], [], []
    for index, rec in enumerate(records):
        loaded = eval_batches.load_or_skip(rec.path, 0, read)
        if loaded is None:
            continue
        frame, jpeg = loaded
        h, w = frame.shape[:2]
        step = grid.crop_step(data_config.crop_step, jpeg)
        side = min(size, h // step * step, w // step * step)
        for i, (top, left) in enumerate(grid.eval_origins(h, w, side, step, max(crops, unaltered_crops))):
            for m in MANIPULATIONS if i < crops else MANIPULATIONS[:1]:  # id 0: unaltered
                images.append(eval_batches.manipulated_at(frame, top, left, side, m))
                flags.append(float(m.id != 0))
                manipulation_ids.append(m.id)
                labels.append(rec.label)
                frames.append(index)
    arrays = (np.array(manipulation_ids, np.int64), np.array(labels, np.int64), np.array(frames, np.int64))
    return images, np.array(flags, np.float32), *arrays


def test_like_predictions(restored, dp, where: str = ""):
    """The run's validation frames cut like test images (`test_like_samples`), predicted as
    `evaluate` predicts (the views it trained with, config.eval's tiles and blend). Returns
    (blended probs [N, C], embeddings [N, D], labels, frame indices, manipulation ids)."""
    from camjax import evaluator, tta

    records, read = evaluator.validation_records(restored)
    configured = restored.config.get("eval", {})
    images, flags, manipulation_ids, labels, frames = test_like_samples(
        records,
        read,
        restored.config.data,
        crops=configured.get("calibration_crops", 1),
        unaltered_crops=configured.get("calibration_unaltered_crops", 1),
    )
    if not len(labels):
        raise ValueError(f"{where}: no readable validation frame to calibrate on")
    agg = configured.get("agg", "geometric")
    batches = eval_batches.make_image_batches(
        images,
        flags,
        patch=restored.run.patch,
        batch_size=dp.eval_batch_size(configured.get("batch_size", 64)),
        max_tiles=configured.get("max_tiles", 0) or None,
    )
    probs, _, features = evaluator.predict_tiles(
        restored, dp, batches, len(images), tta.views(restored.run.trained_views), agg=agg, p=2.0, features=True
    )
    return postprocess.blend(probs, axis=1, agg=agg), features, labels, frames, manipulation_ids


def calibrate_run(workdir: str, dp=None, *, false_rejection: float = FALSE_REJECTION) -> Calibration:
    """Fits the run's best checkpoint on its validation frames as `evaluate` predicts them
    (`test_like_predictions`) and stores the result."""
    from camjax import evaluator
    from camjax.parallel import DataParallel

    dp = dp or DataParallel("sharded")
    restored = evaluator.restore(workdir, dp)
    probs, features, labels, frames, manipulation_ids = test_like_predictions(restored, dp, workdir)
    finite = np.isfinite(probs).all(-1) & np.isfinite(features).all(-1)
    if not finite.any():
        raise ValueError(f"{workdir}: the model's validation predictions are not finite: nothing to calibrate")
    probs, labels, features = probs[finite], labels[finite], features[finite]
    frames, manipulation_ids = frames[finite], manipulation_ids[finite]
    result = fit(probs, labels, step=restored.step, false_rejection=false_rejection)
    # The feature-space scale and threshold are read from scores of frames the density did not see.
    oof = cross_fitted_scores(features, labels, frames, manipulation_ids)
    manipulated = manipulation_ids != 0
    density = FeatureDensity.fit(features, labels, manipulation_ids).standardise(oof, manipulated, false_rejection)
    result.thresholds[FEATURE_SCORE] = float(np.quantile(density.on_scale(oof, manipulated), false_rejection))
    density.save(workdir)
    result.save(workdir)
    log.info(
        "calibration on %d validation samples: T=%.3f, ECE %.4f -> %.4f, NLL %.4f -> %.4f",
        result.samples,
        result.temperature,
        result.before["ece"],
        result.after["ece"],
        result.before["nll"],
        result.after["nll"],
    )
    return result
