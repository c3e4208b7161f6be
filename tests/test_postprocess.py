"""Blending modes, count-constrained balancing (vs greedy, brute force and scipy) and submission IO."""

import itertools
import os
import stat
from pathlib import Path

import numpy as np
import pytest

from camjax import postprocess as pp


def _probs(rng, *shape):
    p = rng.random(shape) + 0.01
    return p / p.sum(-1, keepdims=True)


def test_blend_modes_by_hand():
    a, b = np.array([0.5, 0.3, 0.2]), np.array([0.1, 0.6, 0.3])
    probs = np.stack([a, b])  # [models, classes]
    np.testing.assert_allclose(pp.blend(probs, 0, "mean"), (a + b) / 2)
    g = np.sqrt(a * b)
    np.testing.assert_allclose(pp.blend(probs, 0, "geometric"), g / g.sum(), rtol=1e-9)
    sq = (a**2 + b**2) / 2
    np.testing.assert_allclose(pp.blend(probs, 0, "power"), sq / sq.sum())
    cube = (a**3 + b**3) / 2
    np.testing.assert_allclose(pp.blend(probs, 0, "power", p=3.0), cube / cube.sum())
    # Weights (normalised internally), renormalisation of unnormalised inputs.
    np.testing.assert_allclose(pp.blend(probs, 0, "mean", weights=[3, 1]), 0.75 * a + 0.25 * b)
    gw = a**0.75 * b**0.25
    np.testing.assert_allclose(pp.blend(probs, 0, "geometric", weights=[3, 1]), gw / gw.sum(), rtol=1e-9)
    np.testing.assert_allclose(pp.blend(probs * 7, 0, "mean"), (a + b) / 2)
    np.testing.assert_allclose(pp.blend(probs, 0, "mean", weights=[1, 0]), a)


def test_blend_axes_and_zero_probs():
    rng = np.random.default_rng(0)
    probs = _probs(rng, 8, 4, 10)  # [views, batch, classes]
    for agg in ("mean", "geometric", "power"):
        out = pp.blend(probs, 0, agg)
        assert out.shape == (4, 10)
        np.testing.assert_allclose(out.sum(-1), 1.0)
        np.testing.assert_allclose(pp.blend(np.moveaxis(probs, 0, 1), -2, agg), out)
    # A zero probability in one view vetoes the class under the geometric mean (finite, eps).
    p = np.array([[[0.0, 1.0]], [[0.9, 0.1]]])
    out = pp.blend(p, 0, "geometric")
    assert np.isfinite(out).all() and out[0, 0] < 1e-4
    with pytest.raises(ValueError, match="non-class axis"):
        pp.blend(probs, -1)
    with pytest.raises(ValueError, match="agg"):
        pp.blend(probs, 0, "median")
    with pytest.raises(ValueError, match="weights"):
        pp.blend(probs, 0, weights=[1, 2])


def _total(lp, assign):
    return lp[np.arange(len(assign)), assign].sum()


def _check_counts(assign, groups, counts):
    for g, cnt in counts.items():
        np.testing.assert_array_equal(np.bincount(assign[groups == g], minlength=len(cnt)), cnt)


def test_balance_meets_counts():
    rng = np.random.default_rng(1)
    for _ in range(20):
        n, c = 40, 4
        lp = np.log(_probs(rng, n, c) ** 3)  # peaked, so the constraints bind
        groups = rng.integers(0, 2, n)
        best = pp.balance(lp, groups)
        for g in (0, 1):
            size = int((groups == g).sum())
            cnt = np.bincount(best[groups == g], minlength=c)
            assert cnt.sum() == size and cnt.max() - cnt.min() <= 1


def test_balance_explicit_counts_and_remainder():
    rng = np.random.default_rng(2)
    lp = np.log(_probs(rng, 12, 3))
    groups = np.array([5] * 7 + [9] * 5)
    counts = {5: [0, 2, 5], 9: [3, 1, 1]}
    _check_counts(pp.balance(lp, groups, counts), groups, counts)
    # Default: 7 = 2 + 2 + 2 + 1 leftover, given to the class with the most probability mass.
    lp2 = np.log(np.tile([[0.2, 0.5, 0.3]], (7, 1)))
    np.testing.assert_array_equal(pp.default_counts(lp2), [2, 3, 2])
    np.testing.assert_array_equal(np.bincount(pp.balance(lp2, np.zeros(7, int)), minlength=3), [2, 3, 2])
    with pytest.raises(ValueError, match="summing to the group size"):
        pp.balance(lp, groups, {5: [1, 1, 1], 9: [3, 1, 1]})
    with pytest.raises(ValueError, match="no entry for group 9"):
        pp.balance(lp, groups, {5: [0, 2, 5]})


def test_balance_finds_the_optimum_where_a_greedy_fill_does_not():
    # Filling the most confident pairs first takes C -> 2 (0.9) and A -> 0 (0.5), leaving B
    # the 0.01 of class 1; the optimum sends B -> 0 (0.45) and A -> 1 (0.1).
    p = np.array([[0.50, 0.10, 0.40], [0.45, 0.01, 0.54], [0.05, 0.05, 0.90]])
    lp, groups = np.log(p), np.zeros(3, int)
    np.testing.assert_array_equal(pp.balance(lp, groups), [1, 0, 2])
    assert _total(lp, pp.balance(lp, groups)) > _total(lp, np.array([0, 1, 2])) + 1.0


def test_balance_matches_brute_force():
    rng = np.random.default_rng(3)
    slots = [0, 0, 1, 1, 2, 2]
    for _ in range(5):
        lp = np.log(_probs(rng, 6, 3))
        brute = max(_total(lp, np.array(perm)) for perm in set(itertools.permutations(slots)))
        assert _total(lp, pp.balance(lp, np.zeros(6, int))) == pytest.approx(brute, abs=1e-12)


def test_assignment_matches_scipy_hungarian_with_ties_and_floors():
    """The min-cost flow against scipy's linear_sum_assignment on slot-replicated columns."""
    from scipy.optimize import linear_sum_assignment

    for seed in range(120):
        rng = np.random.default_rng(seed)
        n, num_classes = int(rng.integers(1, 50)), int(rng.integers(1, 8))
        lp = rng.normal(size=(n, num_classes)) * 3
        if seed % 3 == 0:
            lp = np.round(lp)  # many ties
        if seed % 5 == 0:
            lp[:, 0] = pp.LOG_PROB_FLOOR  # a class nobody wants still gets its count
        counts = rng.multinomial(n, np.ones(num_classes) / num_classes)
        slots = np.repeat(np.arange(num_classes), counts)
        r, c = linear_sum_assignment(lp[:, slots], maximize=True)
        got = pp.assign_with_counts(lp, counts)
        np.testing.assert_array_equal(np.bincount(got, minlength=num_classes), counts)
        assert _total(lp, got) == pytest.approx(lp[r, slots[c]].sum(), rel=1e-9, abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_assign_with_counts_is_exact_where_probabilities_tie_at_the_floor(seed):
    """Log-probabilities of a held-out-camera test group (120 rows, 7 classes, 161 entries at
    the 1e-12 clip; it once closed a cycle in the solver's search), then groups built like it:
    confident rows, most classes at the clip. The solver must reach scipy's optimum."""
    from scipy.optimize import linear_sum_assignment

    if seed == 0:
        z = np.load(Path(__file__).parent / "data" / "balance_negative_cycle.npz")
        lp, counts = z["lp"], z["cnt"]
    else:
        rng = np.random.default_rng(seed)
        logits = rng.normal(scale=30.0, size=(300, 7))
        probs = np.exp(logits - logits.max(1, keepdims=True))
        lp = np.log(np.clip(probs / probs.sum(1, keepdims=True), 1e-12, 1.0))
        counts = np.bincount(np.arange(300) % 7, minlength=7)
        assert (lp == np.log(1e-12)).sum() > 900  # ties at the floor
    got = pp.assign_with_counts(lp, counts)
    np.testing.assert_array_equal(np.bincount(got, minlength=lp.shape[1]), counts)
    slots = np.repeat(np.arange(lp.shape[1]), counts)
    r, c = linear_sum_assignment(lp[:, slots], maximize=True)
    assert _total(lp, got) == pytest.approx(lp[r, slots[c]].sum(), rel=1e-12)


def test_balance_handles_zero_probability():
    with np.errstate(divide="ignore"):
        lp = np.log(np.array([[1.0, 0.0], [1.0, 0.0]]))  # class 1 impossible, yet must get one row
    assign = pp.balance(lp, np.zeros(2, int))
    assert sorted(assign.tolist()) == [0, 1]


def test_submission_round_trip(tmp_path):
    path = tmp_path / "sub" / "submission.csv"
    fnames = ["img_0a1b2c3_unalt.tif", "img_ffffff0_manip.tif"]
    cams = ["iPhone-6", "Sony-NEX-7"]
    pp.write_submission(path, fnames, cams)
    assert path.read_text().splitlines()[0] == "fname,camera"
    assert pp.read_submission(path) == dict(zip(fnames, cams))
    assert [p for p in os.listdir(path.parent) if p != "submission.csv"] == []  # no temp left
    with pytest.raises(ValueError, match="2 file names but 1"):
        pp.write_submission(path, fnames, cams[:1])


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with pp.atomic_write(path) as f:
            f.write("new")
            raise RuntimeError
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["x.txt"]


def test_read_labels(tmp_path):
    path = tmp_path / "test_labels.csv"
    path.write_text("fname,camera,manipulation\na_unalt.tif,iPhone-6,none\nb_manip.tif,HTC-1-M7,jpeg70\n")
    assert pp.read_labels(path) == [("a_unalt.tif", "iPhone-6", "none"), ("b_manip.tif", "HTC-1-M7", "jpeg70")]
    path.write_text("fname,camera\na.tif,iPhone-6\n")
    with pytest.raises(ValueError, match="test_labels.csv.*header"):
        pp.read_labels(path)
    path.write_text("fname,camera,manipulation\na.tif,iPhone-6\n")
    with pytest.raises(ValueError, match="test_labels.csv:2"):
        pp.read_labels(path)
    path.write_text("fname,camera,manipulation\na.tif,iPhone-6,none\nb.tif,iPhone-6,jpeg50\n")
    with pytest.raises(ValueError, match="test_labels.csv:3.*jpeg50"):
        pp.read_labels(path)


@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_atomic_write_gives_the_mode_open_would(tmp_path, umask, expected):
    old = os.umask(umask)
    try:
        with pp.atomic_write(tmp_path / "run.json") as f:
            f.write("{}")
        with open(tmp_path / "plain.json", "w") as f:
            f.write("{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "run.json").st_mode) == expected
    assert stat.S_IMODE(os.stat(tmp_path / "plain.json").st_mode) == expected


def test_atomic_write_syncs_the_file_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        target = os.readlink(f"/proc/self/fd/{fd}")
        events.append(("fsync", "folder" if os.path.isdir(target) else os.path.basename(target)))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    with pp.atomic_write(tmp_path / "sub.csv") as f:
        f.write("fname,camera\n")
    assert len(events) == 3 and events[0][0] == "fsync" and events[0][1].startswith(".sub.csv.")
    assert events[1:] == [("replace", "sub.csv"), ("fsync", "folder")]
    assert (tmp_path / "sub.csv").read_text() == "fname,camera\n"
