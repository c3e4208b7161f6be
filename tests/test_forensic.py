"""Calibration, open-set scores, photos shared online and `camjax.predict` (issue: forensic use)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from camjax_testdata import REPO, make_challenge_tree, repo_config, texture, write_test_labels
from PIL import Image
from sklearn.calibration import calibration_curve
from sklearn.metrics import roc_auc_score
from test_train_evaluate import tiny_config

from camjax import calibration, config_checks, evaluator, trainer
from camjax.data import manipulations, sources
from camjax.data.decode import decode_image

CLASSES = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")
TRAINED = CLASSES[:2]  # Sony-NEX-7 is held out: the test set's unknown camera


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def overconfident(n=4000, classes=5, sharpen=3.0, seed=0):
    """Labels drawn from softmax(z), predictions softmax(sharpen * z): the right temperature is `sharpen`."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, classes))
    labels = np.array([rng.choice(classes, p=p) for p in softmax(z)])
    return softmax(sharpen * z), labels


def test_fitted_temperature_undoes_overconfidence():
    probs, labels = overconfident()
    t = calibration.fit_temperature(probs, labels)
    assert 2.7 < t < 3.3
    after = calibration.scale(probs, t)
    np.testing.assert_array_equal(after.argmax(-1), probs.argmax(-1))  # a temperature never changes the answer
    assert calibration.nll(after, labels) < calibration.nll(probs, labels)
    assert (
        calibration.expected_calibration_error(after, labels)
        < 0.03
        < calibration.expected_calibration_error(probs, labels)
    )
    np.testing.assert_allclose(calibration.scale(probs, 1.0), probs, rtol=1e-6, atol=1e-9)


def test_ece_matches_scikit_learns_reliability_curve():
    probs, labels = overconfident(seed=1)
    confidence, correct = probs.max(-1), (probs.argmax(-1) == labels).astype(float)
    accuracy, mean_conf = calibration_curve(correct, confidence, n_bins=15, strategy="uniform")
    counts = np.histogram(confidence, bins=np.linspace(0, 1, 16))[0]
    reference = np.sum(counts[counts > 0] * np.abs(accuracy - mean_conf)) / len(labels)
    assert calibration.expected_calibration_error(probs, labels) == pytest.approx(reference, abs=1e-9)


def test_ece_of_a_calibrated_model_is_sampling_noise_that_shrinks_with_the_set():
    """`ece_if_calibrated` is what a calibrated model measures: labels drawn from the
    calibrated probabilities land inside its spread, an overconfident model far above it,
    and 100x the images give ~1/10 the floor (binomial noise per bin)."""
    probs, labels = overconfident(n=240, seed=2)  # 240: the synthetic test set's size
    calibrated = calibration.scale(probs, 3.0)  # the true temperature
    small = calibration.ece_if_calibrated(calibrated)
    large = calibration.ece_if_calibrated(np.tile(calibrated, (100, 1)), draws=20)
    assert 0.03 < small["median"] <= small["q90"] and large["median"] < small["median"] / 5
    assert calibration.expected_calibration_error(calibrated, labels) < small["q90"] * 1.5
    assert calibration.expected_calibration_error(probs, labels) > 2 * small["q90"]


def test_auroc_matches_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    known, unknown = np.round(rng.normal(1, 1, 300), 1), np.round(rng.normal(0, 1, 200), 1)  # many ties
    reference = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[known, unknown])
    assert calibration.auroc(known, unknown) == pytest.approx(reference, abs=1e-12)


def test_open_set_report_judges_unaltered_and_manipulated_images_apart():
    """Feature scores that part known from unknown cameras on the unaltered images and not on
    the manipulated ones: the pooled AUROC hides both, the groups show each (against
    scikit-learn), and a group without unknown cameras is left out rather than scored as 0.5."""
    rng = np.random.default_rng(3)
    known = np.r_[np.ones(60), np.zeros(40)].astype(bool)
    manipulated = np.tile([False, True], 50)
    scores = np.where(manipulated, rng.normal(0, 1, 100), np.where(known, 3.0, -3.0) + rng.normal(0, 0.1, 100))
    probs = rng.dirichlet(np.ones(4), 100)
    c = calibration.fit(probs[known], rng.integers(0, 4, 60))
    c.thresholds[calibration.FEATURE_SCORE] = -1.0
    r = calibration.open_set_report(probs, known, c, calibration.FEATURE_SCORE, scores, manipulated)
    assert set(r["by_group"]) == {"unaltered", "manipulated"}
    for name, rows in (("unaltered", ~manipulated), ("manipulated", manipulated)):
        g = r["by_group"][name]
        assert (g["known"], g["unknown"]) == ((known & rows).sum(), (~known & rows).sum())
        reference = roc_auc_score(known[rows], scores[rows])
        assert g["auroc"][calibration.FEATURE_SCORE] == pytest.approx(reference, abs=1e-12)
        assert g["false_rejection"]["max_prob"] == pytest.approx(
            np.mean(probs[known & rows].max(-1) < c.thresholds["max_prob"])
        )
    assert r["by_group"]["unaltered"]["auroc"][calibration.FEATURE_SCORE] == 1.0
    assert r["auroc"][calibration.FEATURE_SCORE] < 0.9  # the pooled figure, dragged down by the manipulated half
    assert r["by_group"]["unaltered"]["false_acceptance"][calibration.FEATURE_SCORE] == 0.0
    only_known_manipulated = calibration.open_set_report(probs, known, c, "max_prob", scores, manipulated & known)
    assert set(only_known_manipulated["by_group"]) == {"unaltered"}
    assert "by_group" not in calibration.open_set_report(probs, known, c, "max_prob", scores)


def test_thresholds_reject_the_asked_share_of_known_images():
    probs, labels = overconfident(seed=2)
    c = calibration.fit(probs, labels, false_rejection=0.1)
    rejected = c.unknown(c.apply(probs), "max_prob").mean()
    assert rejected == pytest.approx(0.1, abs=0.005)
    with pytest.raises(ValueError, match="no threshold"):
        c.unknown(probs, "energy")


def test_a_photo_shared_online_is_a_smaller_jpeg():
    big = texture(1500, 3000, 0)
    shared = manipulations.shared_photo(big, 80)
    assert shared[:3] == b"\xff\xd8\xff"
    assert decode_image(shared).shape == (1024, 2048, 3)
    small = texture(512, 512, 1)
    assert decode_image(manipulations.shared_photo(small, 80)).shape == (512, 512, 3)  # never scaled up


def test_keep_classes_relabels_and_keeps_the_test_files(tmp_path):
    root = make_challenge_tree(tmp_path, classes=CLASSES, per_class=2)
    index = sources.scan_root(root, val_fraction=0.0, seed=0)
    kept = sources.keep_classes(index, ("Sony-NEX-7", "HTC-1-M7"))
    assert kept.classes == ("HTC-1-M7", "Sony-NEX-7")  # the dataset's order
    assert {(r.class_name, r.label) for r in kept.train} == {("HTC-1-M7", 0), ("Sony-NEX-7", 1)}
    assert kept.test == index.test
    with pytest.raises(ValueError, match="Nikon"):
        sources.keep_classes(index, ("Nikon",))


def test_outliers_join_training_only_and_are_sampled_as_one_more_class(tmp_path):
    from camjax.data import train_loader

    root = make_challenge_tree(tmp_path / "data", classes=CLASSES, per_class=4)
    other = make_challenge_tree(tmp_path / "other", classes=("Nikon-D70", "Canon-Ixus70"), per_class=6, seed=7)
    index = sources.keep_classes(sources.scan_root(root, val_fraction=0.25, seed=0), TRAINED)
    exposed = sources.add_outliers(index, other)
    added = exposed.train[len(index.train) :]
    assert exposed.train[: len(index.train)] == index.train and exposed.val == index.val
    assert len(added) == 12 and {r.label for r in added} == {sources.OUTLIER}
    assert {r.class_name for r in added} == {"outlier:Nikon-D70", "outlier:Canon-Ixus70"}
    np.testing.assert_array_equal(
        sources.class_counts(exposed.train, exposed.num_classes), sources.class_counts(index.train, index.num_classes)
    )
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'none'}: no train/ folder"):
        sources.add_outliers(index, tmp_path / "none")
    with pytest.raises(ValueError, match="files are the dataset's own"):
        sources.add_outliers(index, root)
    # Class-balanced sampling draws the outliers as one more class: 1 in len(TRAINED) + 1 files.
    data = repo_config("configs/camnet.py:quick").data
    plan = train_loader._TrainPlan(exposed.train, data, seed=0, shard_index=0, views=(0,), group=1)
    drawn = plan.labels[np.concatenate([plan.order(epoch) for epoch in range(20)])]
    share = np.mean(drawn == sources.OUTLIER)
    assert abs(share - 1 / (len(TRAINED) + 1)) < 0.01
    assert len(index.train) / len(exposed.train) < 0.5  # unbalanced, they would be most of the files


def test_oas_shrinkage_matches_scikit_learn():
    from sklearn.covariance import OAS

    x = np.random.default_rng(4).normal(size=(60, 40)) @ np.diag(np.linspace(0.1, 3.0, 40))
    x = x - x.mean(0)
    covariance, shrinkage = calibration.oas_covariance(x)
    reference = OAS(assume_centered=True).fit(x)
    assert shrinkage == pytest.approx(reference.shrinkage_, rel=1e-9)
    np.testing.assert_allclose(covariance, reference.covariance_, rtol=1e-9, atol=1e-12)


def test_feature_density_scores_its_own_cameras_above_an_unseen_one():
    """Three known cameras as Gaussian clusters in 32 dimensions, fitted on 30 samples each (fewer
    than the dimensions per class: the shrinkage keeps the precision finite); fresh samples of
    the known cameras outscore samples of a fourth cluster, and a sample at a class mean scores 0."""
    rng = np.random.default_rng(5)
    centres = rng.normal(scale=3.0, size=(4, 32))

    def draw(c, n):
        return centres[c] + rng.normal(size=(n, 32))

    labels = np.repeat(np.arange(3), 30)
    density = calibration.FeatureDensity.fit(np.concatenate([draw(c, 30) for c in range(3)]), labels)
    assert np.isfinite(density.precisions).all() and 0 < density.shrinkage[0] < 1
    unaltered = np.zeros(150)
    known = density.score(np.concatenate([draw(c, 50) for c in range(3)]), unaltered)
    unknown = density.score(draw(3, 50), unaltered[:50])
    assert calibration.auroc(known, unknown) > 0.99
    assert density.score(density.means[1:2], [0])[0] == pytest.approx(0.0, abs=1e-9)


def clustered_cameras(rng, cameras=4, manipulations=3, frames=6, dim=24):
    """Embeddings with a cluster per (camera, manipulation): manipulation 0 unaltered, the
    others manipulated, each a shift shared by every camera plus a camera-specific part; nine
    near-duplicate copies of each frame would be overkill here, so one sample per frame and
    manipulation. Returns a sampler and the fitted-set arrays."""
    shift = rng.normal(scale=6.0, size=(manipulations, dim))
    own = rng.normal(scale=1.5, size=(cameras, manipulations, dim))
    noise = np.array([1.0] + [1.5] * (manipulations - 1))  # a second JPEG spreads the traces more

    def draw(camera, m, n):
        return shift[m] + own[camera, m] + noise[m] * rng.normal(size=(n, dim))

    return draw


def test_feature_density_has_a_component_per_camera_and_manipulation():
    """Each camera's embedding is a cluster per manipulation. The density with a component per
    (camera, manipulation) and a covariance per group separates an unknown camera from the
    known ones, unaltered and manipulated alike, far better than one mean per camera does (a
    mean between the clusters, a covariance stretched over all of them)."""
    rng = np.random.default_rng(7)
    draw = clustered_cameras(rng)
    known_cams, unknown_cam, manips = (0, 1, 2), 3, (0, 1, 2)
    feats, labels, m_ids = [], [], []
    for c in known_cams:
        for m in manips:
            feats.append(draw(c, m, 12))
            labels += [c] * 12
            m_ids += [m] * 12
    feats, labels, m_ids = np.concatenate(feats), np.array(labels), np.array(m_ids)
    components = calibration.FeatureDensity.fit(feats, labels, m_ids)
    per_camera = calibration.FeatureDensity.fit(feats, labels)
    assert components.means.shape[0] == 9 and list(components.groups) == [0, 1]
    assert list(components.group_of_mean) == [0] * 3 + [1] * 6

    by_component, by_camera = [], []
    for m in manips:
        known = np.concatenate([draw(c, m, 40) for c in known_cams])
        unknown = draw(unknown_cam, m, 40)
        flag = np.full(40, m != 0)
        for density, out in ((components, by_component), (per_camera, by_camera)):
            out.append(calibration.auroc(density.score(known, np.tile(flag, 3)), density.score(unknown, flag)))
    assert min(by_component) > 0.95 and np.mean(by_component) > np.mean(by_camera) + 0.05, (by_component, by_camera)


def test_standardised_groups_reject_the_asked_share_of_new_frames_in_each():
    """Unaltered and manipulated samples (one component each per camera against two, another
    spread): standardised by cross-fitted scores, each group's quantile sits at -1 and its
    median at 0, and new known-camera frames of every manipulation are rejected at about the
    asked-for 5% under that one threshold."""
    rng = np.random.default_rng(8)
    draw = clustered_cameras(rng, cameras=3, manipulations=3)
    feats, labels, m_ids, frames = [], [], [], []
    for c in range(3):
        for f in range(10):
            for m in range(3):
                feats.append(draw(c, m, 1))
                labels.append(c)
                m_ids.append(m)
                frames.append(c * 10 + f)
    feats, labels, m_ids, frames = np.concatenate(feats), np.array(labels), np.array(m_ids), np.array(frames)
    oof = calibration.cross_fitted_scores(feats, labels, frames, m_ids)
    density = calibration.FeatureDensity.fit(feats, labels, m_ids).standardise(oof, m_ids != 0, 0.05)
    np.testing.assert_allclose(np.quantile(density.on_scale(oof, m_ids != 0)[m_ids == 0], 0.05), -1.0)
    np.testing.assert_allclose(np.median(density.on_scale(oof, m_ids != 0)[m_ids != 0]), 0.0, atol=1e-12)
    for m in range(3):
        fresh = np.concatenate([draw(c, m, 300) for c in range(3)])
        flag = np.full(len(fresh), m != 0)
        rejected = (density.score(fresh, flag) < -1.0).mean()
        assert 0.01 < rejected < 0.15, (m, rejected)


def test_cross_fitted_threshold_keeps_its_false_rejection_on_new_frames():
    """Three cameras, six frames each, nine near-duplicate samples per frame (its manipulated
    copies). The 5% quantile of the samples' own scores rejects every new frame of a known
    camera; the quantile of scores from densities fitted without the scored frame stays near
    the asked-for 5%."""
    rng = np.random.default_rng(6)
    centres = rng.normal(scale=4.0, size=(3, 24))

    def frames(c, n):
        per_frame = centres[c] + rng.normal(size=(n, 24))
        return np.repeat(per_frame, 9, axis=0) + 0.1 * rng.normal(size=(9 * n, 24))

    features = np.concatenate([frames(c, 6) for c in range(3)])
    labels, frame_ids = np.repeat(np.arange(3), 54), np.repeat(np.arange(18), 9)
    density = calibration.FeatureDensity.fit(features, labels)
    new_frames = np.concatenate([frames(c, 200) for c in range(3)])
    fresh = density.raw(new_frames, np.zeros(len(new_frames)))
    in_sample = np.quantile(density.raw(features, np.zeros(len(labels))), 0.05)
    cross_fitted = np.quantile(calibration.cross_fitted_scores(features, labels, frame_ids), 0.05)
    assert (fresh < in_sample).mean() > 0.5
    assert (fresh < cross_fitted).mean() < 0.15
    first = np.isin(frame_ids, (0, 6, 12))  # one frame per camera: nothing to hold out, in-sample scores
    one_each = calibration.cross_fitted_scores(features[first], labels[first], frame_ids[first])
    in_sample_first = density.fit(features[first], labels[first]).raw(features[first], np.zeros(first.sum()))
    np.testing.assert_allclose(one_each, in_sample_first)


def test_config_check_names_a_bad_open_set_score():
    c = repo_config("configs/camnet.py:quick")
    c.eval.open_set_score = "energy"
    c.eval.false_rejection = 1.5
    c.eval.calibration_crops = 0
    c.eval.calibration_unaltered_crops = 0
    with pytest.raises(config_checks.ConfigError) as e:
        config_checks.validate(c, shapes=False)
    assert "eval.open_set_score='energy'" in str(e.value) and "eval.false_rejection=1.5" in str(e.value)
    assert "eval.calibration_crops=0: expected an integer >= 1" in str(e.value)
    assert "eval.calibration_unaltered_crops=0: expected an integer >= 1" in str(e.value)
    c = repo_config("configs/camnet.py:quick")
    c.data.root = c.data.outliers = "data/cameras"
    c.outlier_loss_weight = 0.0
    c.data.source, c.data.tfds_dir = "tfds", "data/tfds"
    with pytest.raises(config_checks.ConfigError) as e:
        config_checks.validate(c, shapes=False)
    assert "outlier_loss_weight=0.0: expected a weight > 0 for data.outliers" in str(e.value)
    assert "data.outliers='data/cameras' is data.root" in str(e.value)
    assert "data.outliers (a folder of other cameras' photos) needs data.source='folder'" in str(e.value)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = make_challenge_tree(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=5, test_per_class=2)
    write_test_labels(root, CLASSES)
    return root


@pytest.fixture(scope="module")
def trained(root, tmp_path_factory):
    # Trained with outlier exposure, so the whole chain (calibration, evaluate, predict) runs
    # on a model that has seen photos of a camera that is none of its classes.
    other = make_challenge_tree(tmp_path_factory.mktemp("other"), classes=("Nikon-D70",), per_class=3, seed=7)
    c = tiny_config(root, **{"data.classes": TRAINED, "data.outliers": str(other)})
    workdir = tmp_path_factory.mktemp("run")
    trainer.train_and_evaluate(c, str(workdir))
    return workdir


def test_calibration_crops_add_crops_after_the_centre_one_under_every_manipulation(root):
    """`eval.calibration_crops = 3`: each frame's centre crop, as one crop gives it, then two
    more from the tiling of the frame, every one under each of the nine manipulations and
    counted as its frame's (the cross-fitted scores leave whole frames out)."""
    import types

    from camjax.data.decode import read_bytes

    paths = sorted((root / "train" / CLASSES[0]).iterdir())[:2]
    records = [types.SimpleNamespace(path=str(p), label=i) for i, p in enumerate(paths)]
    data = repo_config("configs/camnet.py:quick").data
    one = calibration.test_like_samples(records, read_bytes, data, size=64, crops=1)
    three = calibration.test_like_samples(records, read_bytes, data, size=64, crops=3)
    n = len(calibration.MANIPULATIONS)
    assert len(one[0]) == 2 * n and len(three[0]) == 6 * n
    assert list(three[4]) == [0] * 3 * n + [1] * 3 * n and list(three[3]) == list(three[4])
    assert list(three[2]) == [m.id for m in calibration.MANIPULATIONS] * 6
    for frame in range(2):
        for m in range(n):  # the first crop is the one-crop sample
            np.testing.assert_array_equal(three[0][3 * n * frame + m], one[0][n * frame + m])
        others = [three[0][3 * n * frame + k * n] for k in (1, 2)]  # unaltered, crops 2 and 3
        assert not any(np.array_equal(o, one[0][n * frame]) for o in others)
    # `eval.calibration_unaltered_crops = 4`: after the three crops under every manipulation,
    # the tiling's fourth origin unaltered only; the same unaltered crops as four crops would cut.
    more = calibration.test_like_samples(records, read_bytes, data, size=64, crops=3, unaltered_crops=4)
    four = calibration.test_like_samples(records, read_bytes, data, size=64, crops=4)
    assert len(more[0]) == 2 * (3 * n + 1) and list(more[4]) == [0] * (3 * n + 1) + [1] * (3 * n + 1)
    assert list(more[2]) == ([m.id for m in calibration.MANIPULATIONS] * 3 + [0]) * 2
    assert list(more[1]) == [float(i != 0) for i in more[2]]
    for frame in range(2):
        np.testing.assert_array_equal(more[0][(3 * n + 1) * frame + 3 * n], four[0][4 * n * frame + 3 * n])
        assert not np.array_equal(more[0][(3 * n + 1) * frame + 3 * n], more[0][(3 * n + 1) * frame])
    fewer = calibration.test_like_samples(records, read_bytes, data, size=64, crops=3, unaltered_crops=2)
    assert len(fewer[0]) == len(three[0])  # never fewer unaltered crops than crops


def test_training_stores_a_calibration_that_evaluate_reports(trained, tmp_path):
    stored = json.load(open(trained / calibration.CALIBRATION_FILE))
    # 2 classes x 1 validation frame each (val_fraction 0.1 of 5, at least one) x 9 manipulations
    assert stored["samples"] == 18 and stored["temperature"] > 0
    assert set(stored["thresholds"]) == {*calibration.OPEN_SET_SCORES, calibration.FEATURE_SCORE}
    assert stored["after"]["nll"] <= stored["before"]["nll"] + 1e-9
    density = calibration.FeatureDensity.load(str(trained))
    # a component per trained camera and manipulation: 2 unaltered, 2 x 8 manipulated; a covariance per group
    assert density.means.shape[0] == 18 and list(density.group_of_mean).count(0) == 2
    assert density.precisions.shape == (2, density.means.shape[1], density.means.shape[1])

    r = evaluator.evaluate([str(trained)], out=str(tmp_path / "sub.csv"), shared=True)
    o = r["open_set"]
    assert (o["known"], o["unknown"]) == (4, 2)  # 6 test files, every third one a Sony
    assert set(o["auroc"]) == {*calibration.OPEN_SET_SCORES, calibration.FEATURE_SCORE}
    assert 0.0 <= o["false_rejection"]["max_prob"] <= 1.0
    assert 0.0 <= o["false_acceptance"][calibration.FEATURE_SCORE] <= 1.0
    assert r["calibration"]["runs_calibrated"] == [True]
    assert r["calibration"]["ece_if_calibrated"]["median"] > 0  # 4 images: a floor far above any target
    assert sum(r["confusion"][0]) + sum(r["confusion"][1]) == 4  # closed-set scores: known cameras only
    assert set(r["shared_online"]) == {"long_side", "qualities", "before", "after"}
    # Unaltered and manipulated apart: the Sony has one test file of each.
    assert {g: (v["known"], v["unknown"]) for g, v in o["by_group"].items()} == {
        "unaltered": (2, 1),
        "manipulated": (2, 1),
    }
    assert json.load(open(tmp_path / "sub_report.json"))["open_set"] == o


def feature_distance_run(trained, tmp_path) -> Path:
    """A copy of the trained run whose verdict is `feature_distance`."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained, run)
    config = json.load(open(run / "config.json"))
    config["eval"]["open_set_score"] = calibration.FEATURE_SCORE
    json.dump(config, open(run / "config.json", "w"))
    return run


def test_predict_gives_the_feature_distance_verdict_when_the_run_asks_for_it(trained, tmp_path):
    """`eval.open_set_score = "feature_distance"`: predict scores each image by the stored
    density on the embedding of the same model call, against the calibrated threshold."""
    from camjax import predict
    from camjax.parallel import DataParallel

    run = feature_distance_run(trained, tmp_path)
    photo = tmp_path / "photo.png"
    Image.fromarray(manipulations.jpeg_compress(texture(96, 96, 8), 90)).save(photo)
    answers, problems = predict.predict_images([str(run)], [str(photo)])
    assert problems == [] and len(answers) == 1
    answer = answers[0]
    threshold = json.load(open(run / calibration.CALIBRATION_FILE))["thresholds"][calibration.FEATURE_SCORE]
    assert answer["open_set_threshold"] == threshold
    assert answer["verdict"] == ("unknown" if answer["open_set_score"] < threshold else "known")

    dp = DataParallel("sharded")
    restored = evaluator.restore(str(run), dp)
    view_ids = evaluator.views_of(restored, str(run), None)
    agg, batch_size, max_tiles = evaluator.prediction_settings(restored, None, None, None)
    direct = evaluator.predict_files(
        restored,
        dp,
        [str(photo)],
        view_ids,
        agg=agg,
        p=2.0,
        batch_size=batch_size,
        max_tiles=max_tiles,
        pad=True,
        skip_bad=True,
        phase=evaluator.GridPhases(restored.run.patch),
        features=True,
    )
    expected = calibration.FeatureDensity.load(str(run)).score(direct.features, [0])[0]  # photo.png: unaltered
    assert answer["open_set_score"] == pytest.approx(expected, rel=1e-5) and expected <= 0


def test_predict_reads_a_photo_as_manipulated_when_told_or_when_its_name_says_so(trained, tmp_path):
    """`manipulated=True` gives a photo the model's flag and open-set group that a `_manip`
    file name gives it, and `manipulated=False` those of an unaltered photo, whatever the name."""
    from camjax import predict

    run = feature_distance_run(trained, tmp_path)
    image = Image.fromarray(manipulations.jpeg_compress(texture(96, 96, 9), 90))
    for name in ("shot.png", "shot_manip.png"):
        image.save(tmp_path / name)

    def answer(name, manipulated=None):
        answers, problems = predict.predict_images([str(run)], [str(tmp_path / name)], manipulated=manipulated)
        assert problems == []
        return answers[0]

    plain, named = answer("shot.png"), answer("shot_manip.png")
    told, told_not = answer("shot.png", True), answer("shot_manip.png", False)
    assert [a["manipulated"] for a in (plain, named, told, told_not)] == [False, True, True, False]
    assert [a["manipulated_from"] for a in (plain, told, told_not)] == ["file name", "--manipulated", "--nomanipulated"]
    for got, want in ((told, named), (told_not, plain)):
        assert [t["camera"] for t in got["top"]] == [t["camera"] for t in want["top"]]
        np.testing.assert_allclose([t["probability"] for t in got["top"]], [t["probability"] for t in want["top"]])
        assert got["open_set_score"] == pytest.approx(want["open_set_score"], rel=1e-5)
    # The flag reaches the model and the density: the two readings of one photo differ.
    assert plain["open_set_score"] != pytest.approx(named["open_set_score"], rel=1e-5)
    assert "read as manipulated" in predict.table([told], []) and "read as manipulated" not in predict.table(
        [plain], []
    )


def test_evaluate_on_the_found_grid_reads_an_unaligned_crop_as_its_aligned_twin(trained, tmp_path):
    """A test image cut 1 row and 3 columns off the JPEG grid, tiled on the grid its pixels
    show, gives exactly the probabilities of the aligned crop tiled from its corner."""
    decoded = manipulations.jpeg_compress(texture(700, 700, 7), 90)
    # The unaligned crop starts 1 row and 3 columns before the grid: cut there, it is the aligned
    # one, 16 x 16 tiles of 32 px (a larger crop would be tiled 17 x 17, overlapping).
    crops = {"aligned": decoded[8:520, 8:520], "unaligned": decoded[7:520, 5:520]}
    probs = {}
    for name, crop in crops.items():
        (tmp_path / name / "test").mkdir(parents=True)
        Image.fromarray(crop).save(tmp_path / name / "test" / "img_0000001_unalt.tif")
        grid = "corner" if name == "aligned" else "found"
        out = tmp_path / name / "sub.csv"
        evaluator.evaluate([str(trained)], data_root=str(tmp_path / name), out=str(out), grid=grid, max_tiles=0)
        probs[name] = np.load(tmp_path / name / "sub_probs.npz")["probs"]
    np.testing.assert_allclose(probs["unaligned"], probs["aligned"], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown grid 'centre'"):
        evaluator.evaluate(
            [str(trained)], data_root=str(tmp_path / "aligned"), out=str(tmp_path / "x.csv"), grid="centre"
        )


def test_predict_finds_the_grid_of_an_unaligned_crop_and_lists_bad_files(trained, tmp_path):
    photos = tmp_path / "photos"
    (photos / "deeper").mkdir(parents=True)
    decoded = manipulations.jpeg_compress(texture(700, 700, 3), 90)
    Image.fromarray(decoded[1:513, 3:515]).save(photos / "crop.png")  # 1 row, 3 columns off the grid
    Image.fromarray(texture(600, 800, 4)).save(photos / "deeper" / "photo.jpg", quality=92)
    Image.fromarray(texture(20, 20, 5)).save(photos / "deeper" / "tiny.png")
    Image.fromarray(texture(300, 300, 6)).save(photos / "deeper" / "never.png")
    (photos / "deeper" / "broken.jpg").write_bytes(b"\xff\xd8\xffnot really")
    out = tmp_path / "answers.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "camjax.predict",
            "--workdir",
            str(trained),
            str(photos),
            str(tmp_path / "missing.tif"),
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.load(open(out))
    answers = {Path(a["path"]).name: a for a in result["answers"]}
    assert set(answers) == {"crop.png", "photo.jpg", "tiny.png", "never.png"}
    assert (answers["crop.png"]["grid_phase"], answers["crop.png"]["grid_source"]) == ([7, 5], "pixels")
    assert (answers["photo.jpg"]["grid_phase"], answers["photo.jpg"]["grid_source"]) == ([0, 0], "file")
    assert answers["never.png"]["grid_source"] == answers["tiny.png"]["grid_source"] == "none"  # no grid to find
    for a in answers.values():
        assert a["camera"] in TRAINED and a["verdict"] in ("known", "unknown")
        assert sum(t["probability"] for t in a["top"]) == pytest.approx(1.0, abs=1e-6)  # two classes, both listed
        assert 0.0 < a["tiles_agreeing"] <= 1.0
    reasons = {Path(n["path"]).name: n["reason"] for n in result["not_answered"]}
    assert set(reasons) == {"broken.jpg", "missing.tif"}
    assert "smaller than the 32 px patch" in proc.stderr
