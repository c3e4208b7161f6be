"""The run report: saliency maps in checkable cases, PCA, and the page rendered in headless Chromium."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from camjax_testdata import make_challenge_tree
from conftest import require_reference
from test_train_evaluate import tiny_config

from camjax import models, report, steps, trainer
from camjax.extras import saliency

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("HTC-1-M7", "iPhone-4s", "Sony-NEX-7")


# --- saliency -------------------------------------------------------------------------------


def test_gradient_x_input_of_a_linear_score_is_w_times_x():
    rng = np.random.default_rng(0)
    w = jnp.asarray(rng.normal(size=(5, 4, 3)), jnp.float32)
    x = jnp.asarray(rng.normal(size=(2, 5, 4, 3)), jnp.float32)
    got = saliency.gradient_x_input(lambda v: (v * w).sum(axis=(1, 2, 3)), x)
    np.testing.assert_allclose(got, w * x, rtol=1e-6)
    # Its sum is the score itself (completeness of a linear score without bias).
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), (w * x).sum(axis=(1, 2, 3)), rtol=1e-5)


def test_grad_cam_of_a_pooled_linear_head():
    """score = mean-pooled features . v: every position's gradient is v / (h w), so the map is
    relu(features . v) / (h w)."""
    rng = np.random.default_rng(1)
    fmap = jnp.asarray(rng.normal(size=(3, 4, 6, 5)), jnp.float32)
    v = jnp.asarray(rng.normal(size=5), jnp.float32)
    cam = saliency.grad_cam(lambda f: f, lambda f: f.mean(axis=(1, 2)) @ v, fmap)
    expected = np.maximum(np.einsum("bhwc,c->bhw", fmap, v), 0) / (4 * 6)
    assert cam.shape == (3, 4, 6)
    np.testing.assert_allclose(cam, expected, rtol=1e-5, atol=1e-7)
    assert (np.asarray(cam) >= 0).all() and (np.asarray(cam) == 0).any()  # the ReLU cut negatives


def test_grad_cam_upsamples_to_the_patch():
    maps = jnp.asarray([[[0.0, 1.0], [2.0, 3.0]]])
    up = saliency.upsample(maps, (8, 8))
    assert up.shape == (1, 8, 8)
    np.testing.assert_allclose(up.mean(), maps.mean(), rtol=1e-6)
    assert up[0, 0, 0] < up[0, -1, -1]


@pytest.fixture(scope="module")
def small_classifier():
    # The trained fixture's architecture: in one process the initialisers compile once.
    model = models.create(tiny_config("unused").model, len(CLASSES), seed=0)
    model_def, state = steps.init_state(model, optax.sgd(0.1), "tf", 0)
    return model, model_def, state


def test_feature_map_and_pool_compose_to_features(small_classifier):
    model, _, _ = small_classifier
    model.eval()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, 32, 32, 3)), jnp.float32)
    fmap = model.feature_map(x)
    assert fmap.shape == (2, 4, 4, 16)  # stem 4, then one stride-2 stage: 32 / 8
    np.testing.assert_allclose(model.features_from(x, fmap), model.features(x), rtol=1e-6)
    # the pooled map comes first; the JPEG trace's features (camnet's default) follow it
    np.testing.assert_allclose(model.pool(fmap), model.features(x)[:, : fmap.shape[-1]], rtol=1e-6)
    assert model.features(x).shape[-1] == fmap.shape[-1] + model.jpeg_trace.width


def test_classifier_saliency_agrees_with_the_model(small_classifier):
    """The maps explain the logit that `steps.predict_logits` computes: gradient x input equals
    the gradient of that logit (through preprocessing) times the preprocessed input."""
    _, model_def, state = small_classifier
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
    flags = np.array([0.0, 1.0, 0.0], np.float32)
    targets = np.array([0, 2, 1], np.int32)
    maps = jax.jit(saliency.classifier_saliency, static_argnums=0)(
        model_def, state.params, state.model_state, images, flags, targets
    )
    assert maps["grad_x_input"].shape == maps["grad_cam"].shape == (3, 32, 32)
    assert (np.asarray(maps["grad_cam"]) >= 0).all() and np.isfinite(maps["grad_cam"]).all()

    def logit(raw):
        out = steps.predict_logits(state.params, state.model_state, raw, flags, model_def=model_def)
        return out[jnp.arange(3), targets].sum()

    raw = jnp.asarray(images, jnp.float32)
    grad_pre = jax.jit(jax.grad(logit))(raw) * 127.5  # 'tf' preprocessing: x = raw / 127.5 - 1
    expected = (grad_pre * (raw / 127.5 - 1.0)).sum(-1)
    np.testing.assert_allclose(maps["grad_x_input"], expected, rtol=1e-4, atol=1e-6)


def test_pca_matches_the_covariance_eigenvectors():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 6)) @ np.diag([5.0, 3.0, 1.0, 0.5, 0.2, 0.1]) + 7.0
    points, ratio = report.pca_2d(x)
    evals, evecs = np.linalg.eigh(np.cov(x, rowvar=False))
    order = np.argsort(evals)[::-1][:2]
    expected = (x - x.mean(0)) @ evecs[:, order]
    np.testing.assert_allclose(np.abs(points), np.abs(expected), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(ratio, evals[order] / evals.sum(), rtol=1e-6)


# --- the page -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = make_challenge_tree(tmp_path_factory.mktemp("data"), classes=CLASSES, per_class=5, test_per_class=1)
    workdir = tmp_path_factory.mktemp("run")
    trainer.train_and_evaluate(tiny_config(root), str(workdir))
    return workdir


_CHECK_IMAGES = """<script>window.addEventListener('load', () => {
  const imgs = [...document.images];
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-loaded', imgs.filter(i => i.complete && i.naturalWidth > 0).length);
});</script>"""


def images_loaded(html_path: Path, tmp_path: Path) -> tuple[int, int]:
    """(images, images that decoded) on the page in headless Chromium."""
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    require_reference(browser is not None, "Chromium on PATH (Debian: apt-get install chromium)")
    page = tmp_path / f"{html_path.stem}_check.html"
    page.write_text(html_path.read_text().replace("</body>", _CHECK_IMAGES + "</body>"))
    cmd = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-images="(\d+)" data-loaded="(\d+)"', r.stdout)
    assert m, f"no result in Chromium's DOM (rc {r.returncode}): {r.stderr[-1500:]}"
    return int(m.group(1)), int(m.group(2))


def test_the_image_check_sees_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<html><body><img src='data:image/png;base64,iVBORw0KGgo='><img src='data:image/png;base64,'></body></html>"
    )
    assert images_loaded(page, tmp_path) == (2, 0)


def test_report_cli_writes_a_self_contained_page(trained, tmp_path):
    out = tmp_path / "page" / "report.html"
    r = subprocess.run(
        [sys.executable, "-m", "camjax.report", "--workdir", str(trained), "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == f"wrote {out}"
    page = out.read_text()
    for heading in ("Training curves", "Scores", "Most confident mistakes", "Calibration", "Saliency", "Feature space"):
        assert f"<h2>{heading}</h2>" in page, heading
    assert "validation set:" in page  # no evaluation report in the workdir
    srcs = re.findall(r"<img src='([^']*)'", page)
    assert len(srcs) == 8 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(src|href)\s*=\s*['\"]?(https?:|//)|url\(|@import|<link|<script", page)
    assert images_loaded(out, tmp_path) == (8, 8)


def test_report_scores_come_from_the_evaluation_report(trained, tmp_path):
    """An evaluate report in the workdir feeds the scores section; validation still feeds the rest."""
    per_class = dict(zip(CLASSES, (1.0, 0.25, None)))
    fake = {
        "weighted_accuracy": 0.4321,
        "per_class": per_class,
        "per_manipulation": {"none": 0.5},
        "confusion": [[2, 0, 0], [1, 1, 2], [0, 0, 0]],
    }
    (trained / "submission_report.json").write_text(json.dumps(fake))
    other = dict(fake, per_class={"a": 1.0, "b": 1.0, "c": 1.0})  # another class list: ignored
    (trained / "other_report.json").write_text(json.dumps(other))
    try:
        path = report.write_report(trained, out=tmp_path / "r.html", per_class=1, mistakes=4)
    finally:
        (trained / "submission_report.json").unlink()
        (trained / "other_report.json").unlink()
    page = path.read_text()
    assert path == tmp_path / "r.html"
    assert "test set, from submission_report.json" in page and "0.4321" in page


def test_report_names_a_directory_that_is_not_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "metrics.jsonl"))):
        report.write_report(tmp_path)
