"""Classification metrics of the challenge: accuracy, its weighted score, per-class and
per-manipulation breakdowns, and the confusion matrix (numpy, host side)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from camjax.cameras import MANIPULATION_NAMES, SCORE_WEIGHT_MANIP, SCORE_WEIGHT_UNALT


def _pair(pred, label) -> tuple[np.ndarray, np.ndarray]:
    pred, label = np.asarray(pred), np.asarray(label)
    if pred.shape != label.shape or pred.ndim != 1:
        raise ValueError(f"pred and label must be 1-D of one length, got {pred.shape} and {label.shape}")
    return pred, label


def accuracy(pred, label) -> float:
    """Fraction of correct predictions; NaN for an empty set."""
    pred, label = _pair(pred, label)
    return float(np.mean(pred == label)) if len(pred) else float("nan")


def weighted_accuracy(pred, label, is_manipulated) -> float:
    """0.7 * acc(unaltered) + 0.3 * acc(manipulated), the challenge score.

    When one half is empty (e.g. a validation set without manipulations) the score is the
    accuracy of the other half, so it stays comparable to plain accuracy.
    """
    pred, label = _pair(pred, label)
    manip = np.asarray(is_manipulated).astype(bool)
    if manip.shape != pred.shape:
        raise ValueError(f"is_manipulated has shape {manip.shape}, expected {pred.shape}")
    if not len(pred):
        raise ValueError("weighted_accuracy of an empty set")
    if manip.all() or not manip.any():
        return accuracy(pred, label)
    return SCORE_WEIGHT_UNALT * accuracy(pred[~manip], label[~manip]) + SCORE_WEIGHT_MANIP * accuracy(
        pred[manip], label[manip]
    )


def confusion_matrix(pred, label, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] as int64."""
    pred, label = _pair(pred, label)
    if len(pred) and (min(pred.min(), label.min()) < 0 or max(pred.max(), label.max()) >= num_classes):
        raise ValueError(f"class ids must lie in 0..{num_classes - 1}")
    flat = np.bincount(label.astype(np.int64) * num_classes + pred.astype(np.int64), minlength=num_classes**2)
    return flat.reshape(num_classes, num_classes)


def per_class_accuracy(pred, label, num_classes: int) -> np.ndarray:
    """Recall of each true class [num_classes]; NaN for a class with no examples."""
    cm = confusion_matrix(pred, label, num_classes)
    support = cm.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(cm) / support, np.nan)


def per_manipulation_accuracy(pred, label, manipulation_ids) -> dict[str, float]:
    """Accuracy per manipulation name (`cameras.MANIPULATION_NAMES`), for those present only."""
    pred, label = _pair(pred, label)
    ids = np.asarray(manipulation_ids)
    if ids.shape != pred.shape:
        raise ValueError(f"manipulation_ids has shape {ids.shape}, expected {pred.shape}")
    return {
        name: accuracy(pred[ids == i], label[ids == i]) for i, name in enumerate(MANIPULATION_NAMES) if np.any(ids == i)
    }


def format_score(x) -> str:
    """A score for people: four decimals, "n/a" where there was nothing to score (None)."""
    return "n/a" if x is None else f"{x:.4f}" if isinstance(x, float) else str(x)


def _nan_to_none(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def report(pred, label, manipulation_ids, class_names: Sequence[str]) -> dict:
    """Every metric above in one JSON-serialisable dict (NaN for an empty subset -> None).

    manipulation_ids index `cameras.MANIPULATIONS`; 0 ('none') is unaltered, the rest manipulated.
    """
    pred, label = _pair(pred, label)
    ids = np.asarray(manipulation_ids)
    manip = ids != 0
    num_classes = len(class_names)
    return {
        "count": int(len(pred)),
        "accuracy": _nan_to_none(accuracy(pred, label)),
        "weighted_accuracy": weighted_accuracy(pred, label, manip),
        "acc_unalt": _nan_to_none(accuracy(pred[~manip], label[~manip])),
        "acc_manip": _nan_to_none(accuracy(pred[manip], label[manip])),
        "per_class": {
            name: _nan_to_none(acc) for name, acc in zip(class_names, per_class_accuracy(pred, label, num_classes))
        },
        "per_manipulation": per_manipulation_accuracy(pred, label, ids),
        "confusion": confusion_matrix(pred, label, num_classes).tolist(),
    }
