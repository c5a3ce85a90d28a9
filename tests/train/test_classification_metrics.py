"""Properties of the classification metrics (study/train/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy.stats import mannwhitneyu

from study.train.metrics import classification_metrics

CLASSIFICATION_KEYS = {
    "soft_accuracy",
    "accuracy",
    "balanced_accuracy",
    "auc",
    "sensitivity",
    "specificity",
    "f1",
    "loss",
}


@st.composite
def labels_and_probs(draw, min_size=2, max_size=40):
    n = draw(st.integers(min_size, max_size))
    y = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 1)))
    # multiples of 1/64: ties are common, and 1 - p is exact (so flipping cannot create ties)
    k = draw(hnp.arrays(np.int64, n, elements=st.integers(0, 64)))
    return y, k / 64.0


# ---------------------------------------------------------------- classification


def test_classification_keys_and_perfect_and_inverted_predictions():
    y = np.array([0, 0, 1, 1, 1])
    perfect = classification_metrics(y, y.astype(float))
    assert set(perfect) == CLASSIFICATION_KEYS
    for key in CLASSIFICATION_KEYS - {"loss"}:
        assert perfect[key] == 1.0, key
    assert perfect["loss"] < 1e-6
    inverted = classification_metrics(y, 1.0 - y)
    assert inverted["auc"] == 0.0 and inverted["accuracy"] == 0.0 and inverted["soft_accuracy"] == 0.0
    assert inverted["f1"] == 0.0 and inverted["loss"] == pytest.approx(-math.log(1e-7), rel=1e-6)


def test_soft_accuracy_is_the_papers_formula_and_threshold_is_strict():
    y = np.array([0, 1, 1, 0])
    p = np.array([0.2, 0.5, 0.9, 0.6])
    m = classification_metrics(y, p)
    assert m["soft_accuracy"] == pytest.approx(1 - (0.2 + 0.5 + 0.1 + 0.6) / 4)
    # p == 0.5 is predicted benign (Keras' BinaryAccuracy uses p > threshold)
    assert m["sensitivity"] == 0.5 and m["specificity"] == 0.5 and m["accuracy"] == 0.5
    assert m["f1"] == pytest.approx(2 * 1 / (2 * 1 + 1 + 1))


def test_constant_predictions_give_auc_one_half():
    m = classification_metrics(np.array([0, 1, 0, 1, 1]), np.full(5, 0.3))
    assert m["auc"] == 0.5


def test_one_class_makes_class_dependent_metrics_nan():
    m = classification_metrics(np.zeros(4, int), np.array([0.1, 0.2, 0.7, 0.4]))
    assert math.isnan(m["auc"]) and math.isnan(m["sensitivity"]) and math.isnan(m["balanced_accuracy"])
    assert m["specificity"] == 0.75 and m["accuracy"] == 0.75
    assert m["f1"] == 0.0  # one false positive, no positives: 0 / (0 + 1 + 0)
    none_predicted = classification_metrics(np.zeros(3, int), np.zeros(3))
    assert none_predicted["f1"] == 0.0  # 0/0 -> 0 by the documented convention


@settings(max_examples=80, deadline=None)
@given(labels_and_probs())
def test_classification_properties(data):
    y, p = data
    m = classification_metrics(y, p)
    for key in CLASSIFICATION_KEYS - {"loss"}:
        assert math.isnan(m[key]) or 0.0 <= m[key] <= 1.0
    assert m["loss"] >= 0
    pos, neg = p[y == 1], p[y == 0]
    if len(pos) and len(neg):
        # AUC = P(pos > neg) + P(tie)/2 by brute force, and scipy's Mann-Whitney U / (n1 n0)
        diff = pos[:, None] - neg[None, :]
        brute = np.mean((diff > 0) + 0.5 * (diff == 0))
        assert m["auc"] == pytest.approx(brute, abs=1e-12)
        assert m["auc"] == pytest.approx(mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg)), abs=1e-12)
        assert m["balanced_accuracy"] == pytest.approx((m["sensitivity"] + m["specificity"]) / 2)
        # relabelling benign <-> malignant with p -> 1 - p keeps AUC and swaps sensitivity/specificity
        # (away from the threshold, where p > 0.5 is not symmetric)
        if not np.any(p == 0.5):
            flipped = classification_metrics(1 - y, 1 - p)
            assert flipped["auc"] == pytest.approx(m["auc"])
            assert flipped["sensitivity"] == pytest.approx(m["specificity"])
    assert m["accuracy"] == pytest.approx(np.mean((p > 0.5) == (y == 1)))


@pytest.mark.parametrize(
    "y, p, match",
    [
        (np.array([0, 2]), np.array([0.1, 0.2]), "y_true"),
        (np.array([0, 1]), np.array([0.1, 1.2]), "sigmoid"),
        (np.array([0, 1]), np.array([0.1, np.nan]), "finite"),
        (np.array([0, 1]), np.array([[0.1], [0.2]]), r"ravel"),
        (np.array([0, 1, 1]), np.array([0.1, 0.2]), "same length"),
        (np.array([], int), np.array([]), "non-empty"),
    ],
)
def test_classification_bad_input(y, p, match):
    with pytest.raises(ValueError, match=match):
        classification_metrics(y, p)
