"""PRNU matching on planted sensor patterns: fingerprints, NCC/PCE against numpy, device clusters."""

import numpy as np
import pytest
from PIL import Image

from camjax import evaluator
from camjax.extras import prnu

SIZE = 128


def pattern(seed, strength=0.03):
    return np.random.default_rng(seed).normal(0, strength, (SIZE, SIZE)).astype(np.float32)


def photo(k, seed, noise=2.0):
    """A smooth random scene seen through the gain pattern k, with sensor noise, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:SIZE, :SIZE].astype(np.float32)
    scene = 110 + 50 * np.sin(x / rng.uniform(9, 30) + rng.uniform(0, 6)) * np.cos(y / rng.uniform(9, 30))
    scene += rng.uniform(-30, 30) * (x + y) / (2 * SIZE)
    grey = scene * (1 + k) + rng.normal(0, noise, k.shape)
    return np.repeat(np.clip(np.round(grey), 0, 255).astype(np.uint8)[..., None], 3, -1)


def ncc(a, b):
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def test_fingerprint_recovers_a_planted_pattern():
    devices = [pattern(s) for s in (1, 2, 3)]
    prints = np.stack([prnu.fingerprint(photo(k, 100 * d + i) for i in range(8)) for d, k in enumerate(devices)])
    for d, k in enumerate(devices):
        assert ncc(prints[d], k) > 0.5
        assert abs(ncc(prints[d], devices[(d + 1) % 3])) < 0.05
    queries = [photo(k, 1000 + d) for d, k in enumerate(devices)]
    z = prnu.fingerprint_scores(queries, prints)
    assert np.all(np.diag(z) > 20)
    off = z[~np.eye(3, dtype=bool)]
    assert np.all(np.abs(off) < 4.5)  # about N(0, 1) for another device


def test_fingerprint_rejects_mixed_shapes_and_no_images():
    with pytest.raises(ValueError, match="one shape"):
        prnu.fingerprint([photo(pattern(0), 0), photo(pattern(0), 1)[:64]])
    with pytest.raises(ValueError, match="at least one image"):
        prnu.fingerprint([])


def test_zero_mean_and_residual_shape():
    w = prnu.zero_mean(np.random.default_rng(0).normal(3, 1, (32, 48)))
    for dy in (0, 1):
        for dx in (0, 1):
            sub = w[dy::2, dx::2]
            np.testing.assert_allclose(sub.mean(0), 0, atol=1e-5)
            np.testing.assert_allclose(sub.mean(1), 0, atol=1e-5)
    assert prnu.residual(photo(pattern(0), 0)).shape == (SIZE, SIZE)
    with pytest.raises(ValueError, match="at least 16x16"):
        prnu.residual(np.zeros((8, 8, 3), np.uint8))


def test_wiener_dft_suppresses_a_periodic_grid_but_keeps_white_noise():
    rng = np.random.default_rng(0)
    white = rng.normal(0, 1, (SIZE, SIZE)).astype(np.float32)
    grid = np.zeros((SIZE, SIZE), np.float32)
    grid[::8, :] += 3.0
    grid[:, ::8] += 3.0
    out = prnu.wiener_dft(white + grid)
    assert ncc(out, grid) < 0.3 * ncc(white + grid, grid)
    assert ncc(out, white) > 0.8


def test_correlate_equals_a_numpy_reference():
    rng = np.random.default_rng(0)
    a = prnu.standardise(rng.normal(size=(5, 16, 16)), np.float32)
    b = prnu.standardise(rng.normal(size=(7, 16, 16)), np.float32)
    b[3] = np.rot90(a[1], -1)  # a[1] is b[3] turned once counter-clockwise
    scores, best = prnu.correlate(a, b, chunk=3)  # chunks of 3: padding on both sides
    ref = np.stack([[[ncc(x, np.rot90(y, k)) for y in b] for x in a] for k in range(4)]) * 16
    np.testing.assert_allclose(scores, ref.max(0), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(best, ref.argmax(0))
    assert best[1, 3] == 1 and scores[1, 3] == pytest.approx(16, rel=1e-4)
    unrotated, _ = prnu.correlate(a, b, rotations=(0,))
    np.testing.assert_allclose(unrotated, ref[0], rtol=1e-4, atol=1e-4)


def test_pce_finds_a_planted_shift():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(SIZE, SIZE)).astype(np.float32)
    b = np.roll(a, (5, -7), axis=(0, 1)) + rng.normal(0, 1, a.shape).astype(np.float32)
    other = rng.normal(size=(SIZE, SIZE)).astype(np.float32)
    value, shift = prnu.pce(prnu.standardise(a[None]), prnu.standardise(np.stack([b, other])))
    assert value[0, 0] > 1000 and value[0, 1] < 60
    assert tuple(shift[0, 0]) == (-5, 7)
    np.testing.assert_allclose(np.roll(b, tuple(shift[0, 0]), axis=(0, 1)) - a, np.roll(b, (-5, 7), (0, 1)) - a)
    # Against numpy's FFT on the same pair.
    xc = np.real(np.fft.ifft2(np.fft.fft2(a) * np.conj(np.fft.fft2(b))))
    peak = np.unravel_index(xc.argmax(), xc.shape)
    yy, xx = np.ogrid[:SIZE, :SIZE]
    near = (np.abs((yy - peak[0] + SIZE // 2) % SIZE - SIZE // 2) <= 5) & (
        np.abs((xx - peak[1] + SIZE // 2) % SIZE - SIZE // 2) <= 5
    )
    sa, sb = (prnu.standardise(v[None], np.float32)[0] for v in (a, b))
    xc = np.real(np.fft.ifft2(np.fft.fft2(sa) * np.conj(np.fft.fft2(sb))))
    ref = xc.max() ** 2 / (xc[~near] ** 2).mean()
    assert value[0, 0] == pytest.approx(ref, rel=1e-3)


def planted_patches(devices=4, per_device=6, seed=0):
    """Patches of several devices, each turned by a random number of quarter turns."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for d in range(devices):
        k = pattern(50 + d, strength=0.02)
        for i in range(per_device):
            images.append(np.rot90(photo(k, 10_000 * d + i), int(rng.integers(4))))
            labels.append(d)
    return images, np.array(labels)


def test_device_clusters_are_pure_and_complete():
    images, labels = planted_patches()
    residuals = prnu.standardise(np.stack([prnu.residual(im) for im in images]))
    scores = prnu.pairwise_scores(residuals, chunk=8)
    same = labels[:, None] == labels[None]
    assert scores[same & ~np.eye(len(labels), dtype=bool)].min() > 3 * scores[~same].max()
    clusters = prnu.cluster(scores, threshold=8.0)
    stats = prnu.purity(clusters, labels)
    assert stats["purity"] == 1.0 and stats["clusters"] == 4 and stats["clustered"] == len(labels)


def test_merge_log_probs_sums_each_cluster_and_keeps_singletons():
    log_probs = np.log(np.array([[0.6, 0.4], [0.3, 0.7], [0.9, 0.1], [0.5, 0.5]]))
    merged = prnu.merge_log_probs(log_probs, np.array([0, 0, 1, 0]))
    expected = np.log([0.6 * 0.3 * 0.5, 0.4 * 0.7 * 0.5])
    expected -= np.logaddexp.reduce(expected)
    for row in (0, 1, 3):
        np.testing.assert_allclose(merged[row], expected)
    np.testing.assert_allclose(merged[2], log_probs[2])
    with pytest.raises(ValueError, match="cluster ids"):
        prnu.merge_log_probs(log_probs, np.zeros(3))


def test_evaluator_prnu_merge_makes_device_clusters_agree(tmp_path):
    images, labels = planted_patches(devices=2, per_device=4, seed=1)
    paths = []
    for i, im in enumerate(images):
        paths.append(str(tmp_path / f"img_{i:07x}_unalt.tif"))
        Image.fromarray(np.ascontiguousarray(im)).save(paths[-1])
    paths.append(str(tmp_path / "img_fffffff_unalt.tif"))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(paths[-1])  # too small: in no cluster
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), len(paths))
    merged, clusters = evaluator.prnu_merge(probs, paths, prnu.read_bytes, threshold=8.0, size=SIZE)
    assert clusters[-1] == -1 and len(set(clusters[:4])) == 1 and len(set(clusters[4:8])) == 1
    assert clusters[0] != clusters[4]
    np.testing.assert_allclose(merged[:4], np.repeat(merged[:1], 4, 0), rtol=1e-6)
    product = probs[:4].prod(0)
    np.testing.assert_allclose(merged[0], product / product.sum(), rtol=1e-6)
    np.testing.assert_allclose(merged[-1], probs[-1])
    np.testing.assert_allclose(merged.sum(-1), 1, rtol=1e-6)


@pytest.mark.parametrize("rotations", [(0,), (0, 1), (0, 1, 2, 3)])
def test_pairwise_scores_compute_half_and_equal_both_directions(rotations):
    """Only blocks on and above the diagonal are computed; the result equals the full matrix
    symmetrised both ways (chunks that do not divide N included)."""
    rng = np.random.default_rng(3)
    residuals = prnu.standardise(rng.standard_normal((11, 16, 16)).astype(np.float32))
    full, _ = prnu.correlate(residuals, residuals, rotations=rotations, chunk=4)
    expected = np.maximum(full, full.T)
    np.fill_diagonal(expected, 0.0)
    got = prnu.pairwise_scores(residuals, rotations=rotations, chunk=4)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    assert (got == got.T).all() and (np.diag(got) == 0).all()
