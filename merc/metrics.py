"""Classification metrics with scikit-learn's definitions (computed in numpy), over real (unpadded)
utterances only.

``classification_metrics`` gives accuracy, weighted F1 (``f1_score(average="weighted")``, as every
reference repo reports) and per-class F1, all in percent. ``mosei_scores`` gives CMU-MOSEI's
binary per-emotion scores and its 2-/7-class sentiment scores from regression outputs.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from merc.data.format import IGNORE_INDEX


def accuracy_score(y_true, y_pred) -> float:
    """Fraction of equal entries (scikit-learn's ``accuracy_score``)."""
    y, p = np.asarray(y_true), np.asarray(y_pred)
    return float(np.average(y == p))


def f1_score(y_true, y_pred, *, labels: Sequence | None = None, average: str | None = None,
             zero_division: float = 0.0):
    """F1 with scikit-learn's definitions, in numpy: per class ``2 tp / (n_true + n_pred)``
    (``zero_division`` where a class is neither true nor predicted); ``average`` None (per class,
    in ``labels`` order), "macro" (their mean) or "weighted" (weighted by true support); the
    classes are ``labels``, else every value in ``y_true`` or ``y_pred``.

    Not scikit-learn's own: importing sklearn (and scipy.stats with it) costs ~1.7 s, which every
    sweep trial process paid in its first evaluation. ``tests/test_metrics_sklearn.py`` pins the
    values to scikit-learn's."""
    y, p = np.asarray(y_true).ravel(), np.asarray(y_pred).ravel()
    if y.shape != p.shape:
        raise ValueError(f"f1_score: y_true has {y.size} entries, y_pred {p.size}")
    if average not in (None, "macro", "weighted"):
        raise ValueError(f"f1_score: average must be None, 'macro' or 'weighted', got {average!r}")
    classes = np.asarray(labels) if labels is not None else np.union1d(y, p)
    yt = y[:, None] == classes[None, :]
    yp = p[:, None] == classes[None, :]
    tp = (yt & yp).sum(0).astype(np.float64)
    true, pred = yt.sum(0), yp.sum(0)
    denom = (true + pred).astype(np.float64)
    f = np.divide(2.0 * tp, denom, out=np.full(len(classes), float(zero_division)),
                  where=denom > 0)
    if average is None:
        return f
    if average == "macro":
        return float(np.average(f)) if len(f) else float(zero_division)
    return float(np.average(f, weights=true)) if true.sum() > 0 else float(zero_division)


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                           label_names: Sequence[str] | None = None) -> dict[str, float]:
    labels, preds = np.asarray(labels), np.asarray(preds)
    keep = labels != IGNORE_INDEX
    y, p = labels[keep], preds[keep]
    if len(y) == 0:
        raise ValueError("no labelled utterances to score")
    names = list(label_names or [str(c) for c in range(num_classes)])
    per_class = f1_score(y, p, labels=list(range(num_classes)), average=None, zero_division=0)
    out = {"acc": 100.0 * accuracy_score(y, p),
           "wf1": 100.0 * f1_score(y, p, average="weighted", zero_division=0),
           "mf1": 100.0 * f1_score(y, p, average="macro", zero_division=0)}
    out.update({f"f1_{n}": 100.0 * float(f) for n, f in zip(names, per_class)})
    return out


def majority_wf1(train_labels: np.ndarray, eval_labels: np.ndarray) -> float:
    """Weighted F1 (percent) of always predicting the train split's majority class."""
    tr = train_labels[train_labels != IGNORE_INDEX]
    ev = eval_labels[eval_labels != IGNORE_INDEX]
    maj = np.bincount(tr).argmax()
    return 100.0 * f1_score(ev, np.full_like(ev, maj), average="weighted", zero_division=0)


def mosei_scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Sentiment scores on [-3, 3] regression outputs: 2-class acc/F1 on non-zero truth
    (the MulT/GCNet convention) and 7-class accuracy on rounded, clipped values."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    nz = truth != 0
    b_t, b_p = truth[nz] > 0, pred[nz] > 0
    p7 = np.clip(np.round(pred), -3, 3)
    t7 = np.clip(np.round(truth), -3, 3)
    return {"acc2": 100.0 * accuracy_score(b_t, b_p),
            "f1_2": 100.0 * f1_score(b_t, b_p, average="weighted", zero_division=0),
            "acc7": 100.0 * float(np.mean(p7 == t7)),
            "mae": float(np.mean(np.abs(pred - truth)))}


def mosei_emotion_scores(probs: np.ndarray, truth: np.ndarray,
                         names: Sequence[str]) -> dict[str, float]:
    """MOSEI's six emotions as binary tasks: presence = intensity > 0; per emotion weighted
    accuracy-style scores (acc and weighted F1) as in the multi-label MOSEI literature."""
    out = {}
    for k, n in enumerate(names):
        t, p = np.asarray(truth)[:, k] > 0, np.asarray(probs)[:, k] > 0.5
        out[f"acc_{n}"] = 100.0 * accuracy_score(t, p)
        out[f"wf1_{n}"] = 100.0 * f1_score(t, p, average="weighted", zero_division=0)
    return out
