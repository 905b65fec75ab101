"""merc.metrics computes F1 and accuracy in numpy (a trial no longer imports scikit-learn, ~1.7 s
per trial process); the values must be scikit-learn's, to the last bit."""
import numpy as np
import pytest
from sklearn import metrics as skm

from merc import metrics as mm
from merc.data.format import IGNORE_INDEX


def _cases():
    rng = np.random.default_rng(0)
    for n, c in [(1, 2), (7, 3), (200, 6), (1000, 4)]:
        y = rng.integers(0, c, n)
        yield y, rng.integers(0, c, n)                     # random
        yield y, y.copy()                                  # perfect
        yield y, np.full(n, c - 1)                         # one class predicted
    yield np.array([0, 0, 1]), np.array([2, 2, 2])         # a class only predicted
    yield np.array([1, 1, 1]), np.array([1, 1, 1])         # one class only
    yield np.array([True, False, True]), np.array([True, True, False])   # booleans (MOSEI)


@pytest.mark.parametrize("case", list(_cases()), ids=lambda c: f"n{len(c[0])}")
def test_same_values_as_sklearn(case):
    y, p = case
    assert mm.accuracy_score(y, p) == skm.accuracy_score(y, p)
    for avg in ("weighted", "macro"):
        assert mm.f1_score(y, p, average=avg, zero_division=0) == \
            skm.f1_score(y, p, average=avg, zero_division=0), avg
    labels = list(range(int(max(y.max(), p.max())) + 2))   # one label never seen: zero_division
    np.testing.assert_array_equal(
        mm.f1_score(y, p, labels=labels, average=None, zero_division=0),
        skm.f1_score(y, p, labels=labels, average=None, zero_division=0))


def test_classification_metrics_ignores_padding_like_sklearn():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 300)
    y[::7] = IGNORE_INDEX
    p = rng.integers(0, 6, 300)
    out = mm.classification_metrics(y, p, 6)
    keep = y != IGNORE_INDEX
    assert out["wf1"] == 100.0 * skm.f1_score(y[keep], p[keep], average="weighted",
                                              zero_division=0)
    assert out["acc"] == 100.0 * skm.accuracy_score(y[keep], p[keep])


def test_bad_arguments_name_what_was_found():
    with pytest.raises(ValueError, match="y_true has 3 entries, y_pred 2"):
        mm.f1_score([0, 1, 1], [0, 1], average="macro")
    with pytest.raises(ValueError, match="average must be .* got 'micro'"):
        mm.f1_score([0, 1], [0, 1], average="micro")
