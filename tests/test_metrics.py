"""Metrics against hand computations, the JSON report, and the PNG plots."""

import json

import numpy as np
import pytest
from PIL import Image

from camjax import metrics, plots
from camjax.cameras import MANIPULATION_NAMES

# 4 unaltered (3 right) and 5 manipulated (2 right) examples, 3 classes.
LABEL = np.array([0, 1, 2, 2, 0, 1, 2, 0, 1])
PRED = np.array([0, 1, 2, 0, 0, 2, 1, 1, 1])
MANIP_ID = np.array([0, 0, 0, 0, 1, 3, 3, 8, 1])  # none, jpeg70, resize0.5, gamma1.2


def test_accuracy_and_weighted_accuracy_by_hand():
    assert metrics.accuracy(PRED, LABEL) == pytest.approx(5 / 9)
    # 0.7 * 3/4 + 0.3 * 2/5 = 0.525 + 0.12
    assert metrics.weighted_accuracy(PRED, LABEL, MANIP_ID != 0) == pytest.approx(0.645)
    # One empty half: the score is the other half's accuracy.
    assert metrics.weighted_accuracy(PRED[:4], LABEL[:4], np.zeros(4)) == pytest.approx(0.75)
    assert metrics.weighted_accuracy(PRED[4:], LABEL[4:], np.ones(5)) == pytest.approx(0.4)
    assert np.isnan(metrics.accuracy([], []))
    with pytest.raises(ValueError, match="1-D of one length"):
        metrics.accuracy(PRED, LABEL[:3])


def test_confusion_and_per_class_by_hand():
    cm = metrics.confusion_matrix(PRED, LABEL, 4)
    manual = np.zeros((4, 4), int)
    for t, p in zip(LABEL, PRED):
        manual[t, p] += 1
    np.testing.assert_array_equal(cm, manual)
    assert cm[2, 1] == 1 and cm[0, 1] == 1 and cm.sum() == 9
    # Recall: class 0: 2/3, class 1: 2/3, class 2: 1/3, class 3: no examples.
    np.testing.assert_allclose(metrics.per_class_accuracy(PRED, LABEL, 4), [2 / 3, 2 / 3, 1 / 3, np.nan])
    with pytest.raises(ValueError, match="class ids"):
        metrics.confusion_matrix(PRED, LABEL, 2)


def test_per_manipulation_accuracy():
    out = metrics.per_manipulation_accuracy(PRED, LABEL, MANIP_ID)
    assert out == pytest.approx({"none": 0.75, "jpeg70": 1.0, "resize0.5": 0.0, "gamma1.2": 0.0})
    assert list(out) == [n for n in MANIPULATION_NAMES if n in out]


def test_report_is_json_serialisable():
    rep = metrics.report(PRED, LABEL, MANIP_ID, ["a", "b", "c", "d"])
    rep = json.loads(json.dumps(rep, allow_nan=False))
    assert rep["count"] == 9
    assert rep["weighted_accuracy"] == pytest.approx(0.645)
    assert rep["acc_unalt"] == pytest.approx(0.75) and rep["acc_manip"] == pytest.approx(0.4)
    assert rep["per_class"]["d"] is None and rep["per_class"]["c"] == pytest.approx(1 / 3)
    assert rep["per_manipulation"]["jpeg70"] == 1.0
    assert rep["confusion"][2] == [1, 1, 1, 0]  # true class 2 predicted as 2, 0 and 1
    # Validation without manipulated examples: acc_manip is None, the score is acc_unalt.
    rep = metrics.report(PRED[:4], LABEL[:4], np.zeros(4, int), ["a", "b", "c"])
    assert rep["acc_manip"] is None and rep["weighted_accuracy"] == pytest.approx(0.75)


def _check_png(path, wider_than_tall):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        w, h = im.size
    assert w > 100 and h > 100 and (w > h) == wider_than_tall
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_confusion_png(tmp_path):
    cm = metrics.confusion_matrix(PRED, LABEL, 4)
    path = tmp_path / "confusion.png"
    plots.confusion_png(cm, ["HTC-1-M7", "iPhone-4s", "iPhone-6", "Sony-NEX-7"], path, title="test")
    _check_png(path, wider_than_tall=True)  # colour bar on the right
    with pytest.raises(ValueError, match="expected \\(3, 3\\)"):
        plots.confusion_png(cm, ["a", "b", "c"], path)


def test_curves_png(tmp_path):
    log = tmp_path / "metrics.jsonl"
    lines = []
    for step in range(0, 200, 20):
        rec = {"step": step, "train/loss": 2.0 / (1 + step), "train/accuracy": step / 400}
        rec["lr"] = 1e-4 * 0.5 ** (step // 100)
        if step % 100 == 0:
            rec.update({"val/accuracy": step / 300, "val/weighted_accuracy": step / 350})
        lines.append(json.dumps(rec))
    log.write_text("\n".join(lines) + '\n{"step": 200, "train/lo')  # truncated last line
    assert len(plots.read_metrics(log)) == 10
    path = tmp_path / "curves.png"
    plots.curves_png(log, path)
    _check_png(path, wider_than_tall=True)
    # Only a loss key: still a plot; a corrupt line in the middle is an error naming the file.
    log.write_text('{"step": 1, "train/loss": 1.0}\n{"step": 2, "train/loss": 0.5}\n')
    plots.curves_png(log, path)
    _check_png(path, wider_than_tall=True)
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(ValueError, match="metrics.jsonl:2"):
        plots.curves_png(log, path)
