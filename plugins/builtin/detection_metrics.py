"""Builtin part: scoring detectors against the ground truth (precision, recall, F1, ROC, per class).

Plain NumPy; scikit-learn computes the ROC curve and its area.
"""

from __future__ import annotations

from typing import Any


def flag_scores(flagged, poisoned) -> dict[str, float]:
    """Precision, recall and F1 of ``flagged`` (bool) against ``poisoned`` (bool), plus the counts."""
    import numpy as np

    flagged, poisoned = np.asarray(flagged, dtype=bool), np.asarray(poisoned, dtype=bool)
    tp = int(np.sum(flagged & poisoned))
    fp = int(np.sum(flagged & ~poisoned))
    fn = int(np.sum(~flagged & poisoned))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_positives": float(tp),
            "false_positives": float(fp), "false_negatives": float(fn)}


def per_class(flagged, y, class_names, poisoned=None) -> list[dict[str, Any]]:
    """One row per class (by the label the sample carries): samples, flagged and, with ground truth, poisoned and hits."""
    import numpy as np

    flagged, y = np.asarray(flagged, dtype=bool), np.asarray(y)
    rows = []
    for c, name in enumerate(class_names):
        members = y == c
        row: dict[str, Any] = {"class": c, "name": str(name), "samples": int(members.sum()),
                               "flagged": int((flagged & members).sum())}
        if poisoned is not None:
            p = np.asarray(poisoned, dtype=bool)
            row["poisoned"] = int((p & members).sum())
            row["flagged_poisoned"] = int((p & flagged & members).sum())
        rows.append(row)
    return rows


def roc_summary(clean_scores, triggered_scores, *, far_levels=(0.01, 0.05)) -> dict[str, Any]:
    """Detection of triggered inputs by a score that is *low* for triggered inputs (STRIP's entropy).

    Returns ``roc_auc``, ``detection_at_far_<p>`` for each false-alarm level (the largest
    detection rate whose false-alarm rate on clean inputs is at most the level, thresholds taken
    at the observed scores) and the curve itself (``fpr``, ``tpr``).
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    clean_scores, triggered_scores = np.asarray(clean_scores), np.asarray(triggered_scores)
    labels = np.concatenate([np.zeros(len(clean_scores)), np.ones(len(triggered_scores))])
    scores = -np.concatenate([clean_scores, triggered_scores])  # higher = more suspicious
    fpr, tpr, _ = roc_curve(labels, scores)
    out: dict[str, Any] = {"roc_auc": float(roc_auc_score(labels, scores)), "fpr": fpr.tolist(), "tpr": tpr.tolist()}
    for level in far_levels:
        ok = fpr <= level + 1e-12
        out[f"detection_at_far_{int(round(level * 100))}pct"] = float(tpr[ok].max()) if ok.any() else 0.0
    return out
