"""Learning-free pretext references, corrupted-region masks, the learned verdict and the linear probe."""

from __future__ import annotations

import numpy as np
import pytest

from study.tasks import metrics, references
from study.tasks import registry as pretext
from study.train.probe import linear_probe


def _images(n=6, size=32, seed=0):
    """Smooth random images (a gradient plus a blob), so that interpolation-style fills do something."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        base = rng.uniform(60, 200, 3)
        img = base + 40 * xx[..., None] * rng.uniform(-1, 1, 3) + 30 * yy[..., None] * rng.uniform(-1, 1, 3)
        out.append(np.clip(img, 0, 255))
    return np.rint(np.stack(out)).astype(np.uint8)


@pytest.mark.parametrize(
    "task, params",
    [("missing_patch", {"patch_size": 11}), ("corruption", {"swap_count": 30, "swap_patch_size": 4})],
)
def test_region_is_exactly_the_pixels_the_batch_changes(task, params):
    x = _images()
    t = pretext.get_task(task)
    inputs, targets = t.make_batch(x, np.random.default_rng(5), **params)
    mask = t.region(x, np.random.default_rng(5), **params)
    changed = (inputs != targets).any(axis=-1)
    assert mask.shape == x.shape[:3] and mask.dtype == bool
    # every changed pixel is in the region; a region pixel that looks unchanged must hold an equal colour
    assert not (changed & ~mask).any()
    assert changed[mask].mean() > 0.9
    if task == "missing_patch":
        assert (mask.sum(axis=(1, 2)) == 11 * 11).all()


def test_corruption_region_counts_moved_pixels_even_when_colours_are_equal():
    # A flat image: swaps change no value, yet the moved pixels are the corrupted region.
    x = np.full((2, 16, 16, 3), 100, np.uint8)
    mask = pretext.get_task("corruption").region(x, 3, swap_count=5, swap_patch_size=4)
    assert mask.any(axis=(1, 2)).all()


def test_region_mse_mean_fill_and_composite():
    orig = np.zeros((1, 4, 4, 3), np.uint8)
    orig[0, :2] = 200
    mask = np.zeros((1, 4, 4), bool)
    mask[0, 0, 0] = True
    inputs = orig.copy()
    inputs[0, 0, 0] = 0
    assert metrics.region_mse(orig, inputs, mask)[0] == pytest.approx(200.0**2)
    filled = metrics.mean_fill(inputs, mask)
    # mean of the 15 visible pixels: 7 at 200, 8 at 0
    assert filled[0, 0, 0, 0] == round(7 * 200 / 15)
    assert (filled[~mask] == inputs[~mask]).all()
    out = np.full_like(orig, 50)
    comp = metrics.composite(inputs, out, mask)
    assert comp[0, 0, 0, 0] == 50 and (comp[~mask] == inputs[~mask]).all()
    with pytest.raises(ValueError, match="at least one pixel"):
        metrics.region_mse(orig, inputs, np.zeros_like(mask))


def test_biharmonic_fill_beats_mean_fill_on_smooth_images():
    x = _images(4)
    t = pretext.get_task("missing_patch")
    inputs, _ = t.make_batch(x, 1, patch_size=8)
    mask = t.region(x, 1, patch_size=8)
    bh = metrics.region_mse(x, metrics.biharmonic_fill(inputs, mask), mask).mean()
    mf = metrics.region_mse(x, metrics.mean_fill(inputs, mask), mask).mean()
    assert bh < mf


def test_best_constant_rotation_is_computed_not_assumed():
    # Targets bunched near 0.1: the best circular constant is near 0.1, and scores far below 90 degrees.
    target = np.array([0.08, 0.1, 0.12, 0.1])
    const = metrics.best_constant_rotation(target)
    assert const["aad_circ"] == pytest.approx(0.1, abs=1e-3)
    assert const["mse"] == pytest.approx(target.mean())
    # Uniform targets: the best constant scores about 90 degrees (0.25 of the circle).
    uniform = (np.arange(720) + 0.5) / 720
    scores = references.pretext_scores(pretext.get_task("rotation"), uniform, np.full(720, 0.3))
    assert scores["ref_constant_aad_circ_deg"] == pytest.approx(90.0, abs=0.5)
    assert scores["headline"] == "aad_circ_deg" and scores["ref_name"] == "constant"


def test_rotation_verdict_follows_the_model_against_the_constant():
    rng = np.random.default_rng(0)
    target = rng.random(200)
    task = pretext.get_task("rotation")
    good = references.pretext_scores(task, target, (target + rng.normal(0, 0.02, 200)) % 1)
    chance = references.pretext_scores(task, target, rng.random(200))
    assert good["learned"] and good["ratio"] < 0.2
    assert not chance["learned"] and chance["ratio"] > 1


def test_rotation4_references_are_chance_and_majority():
    labels = np.tile([0, 0, 0, 1, 2, 3, 0, 0], 10)
    probs = np.eye(4)[labels] * 0.9 + 0.025
    scores = references.pretext_scores(pretext.get_task("rotation4"), labels, probs)
    assert scores["ref_chance_accuracy"] == 0.25 and scores["ref_majority_accuracy"] == 5 / 8
    assert scores["ref_accuracy"] == 5 / 8 and scores["ref_name"] == "majority"
    assert scores["learned"]  # accuracy 1.0 beats the majority class on 30 of 80 images
    # 3 images better than the majority class is not enough evidence
    few = references.pretext_scores(pretext.get_task("rotation4"), labels[:8], probs[:8])
    assert few["accuracy"] > few["ref_accuracy"] and not few["learned"]
    always_zero = np.tile([0.97, 0.01, 0.01, 0.01], (80, 1))
    assert not references.pretext_scores(pretext.get_task("rotation4"), labels, always_zero)["learned"]


def test_image_verdict_identity_is_unbeatable_by_copying_the_input():
    x = _images()
    task = pretext.get_task("corruption")
    params = {"swap_count": 40, "swap_patch_size": 4}
    inputs, targets = task.make_batch(x, 2, **params)
    region = task.region(x, 2, **params)
    copy = references.pretext_scores(task, targets, inputs, inputs, region)
    assert copy["headline"] == "mse_mean" and copy["ref_name"] == "identity"
    assert copy["mse_mean"] == pytest.approx(copy["ref_identity_mse_mean"]) and not copy["learned"]
    perfect = references.pretext_scores(task, targets, targets, inputs, region)
    assert perfect["learned"] and perfect["ratio"] == 0.0 and perfect["region_mse"] == 0.0


def test_missing_patch_scores_hole_composite_and_classical_reference():
    x = _images(8)
    task = pretext.get_task("missing_patch")
    inputs, targets = task.make_batch(x, 4, patch_size=10)
    region = task.region(x, 4, patch_size=10)
    # A "model" that blurs the whole image: bad outside the hole, fair inside.
    blurred = np.broadcast_to(x.mean(axis=(1, 2), keepdims=True), x.shape).astype(np.uint8)
    s = references.pretext_scores(task, targets, blurred, inputs, region, biharmonic_max=3)
    assert s["headline"] == "region_mse"
    assert s["ref_name"] == "meanfill"  # black hole (identity) is far worse than the mean colour
    assert s["ref_region_mse"] == s["ref_meanfill_region_mse"] < s["ref_identity_region_mse"]
    # The composite keeps the visible pixels: its whole-image error is only the hole's share.
    assert s["composite_mse"] < s["mse_mean"]
    assert s["biharmonic_n"] == 3 and s["biharmonic_seconds"] >= 0
    assert isinstance(s["beats_classical"], bool) and isinstance(s["learned"], bool)
    assert "ref_biharmonic_region_mse" in s and "ref_region_mse" in s


def test_verdict_needs_a_trivial_reference_for_the_headline():
    with pytest.raises(ValueError, match="no trivial reference"):
        references.verdict({"mse_mean": 1.0, "ref_biharmonic_mse_mean": 2.0}, "mse_mean")


def test_linear_probe_finds_signal_and_chooses_c_on_validation():
    rng = np.random.default_rng(0)

    def split(n):
        y = rng.integers(0, 2, n)
        x = rng.normal(0, 1, (n, 8))
        x[:, 0] += 2.0 * y  # one informative feature
        return x, y

    informative = linear_probe(split(200), split(100), split(100))
    assert informative["probe_auc"] > 0.85 and informative["probe_c"] > 0
    noise = lambda n: (rng.normal(0, 1, (n, 8)), rng.integers(0, 2, n))  # noqa: E731
    uninformative = linear_probe(noise(200), noise(100), noise(100))
    assert 0.3 < uninformative["probe_auc"] < 0.7
    one_class = linear_probe((rng.normal(size=(10, 3)), np.zeros(10)), split(10), split(10))
    assert np.isnan(one_class["probe_auc"])


def test_a_hair_better_than_the_constant_is_not_learned():
    """Rotation at chance beats the constant's mean by noise now and then: the paired test says no."""
    rng = np.random.default_rng(1)
    target = rng.random(200)
    task = pretext.get_task("rotation")
    s = references.pretext_scores(task, target, rng.random(200))
    const = metrics.best_constant_rotation(target)["aad_circ"]
    # nudge the model a hair below the constant's mean error: still no evidence of learning
    nudged = np.where(np.arange(200) < 3, target, np.full(200, const))
    n = references.pretext_scores(task, target, nudged)
    assert n["aad_circ_deg"] < n["ref_aad_circ_deg"]
    assert n["learned_p"] > references.LEARNED_ALPHA and n["learned"] is False
    assert 0 <= s["learned_p"] <= 1
    clear = references.pretext_scores(task, target, (target + rng.normal(0, 0.05, 200)) % 1)
    assert clear["learned"] and clear["learned_p"] < 1e-6


def test_a_model_that_collapsed_to_any_constant_is_never_learned():
    """The reference is the best constant on the test targets, so no constant prediction beats it, however
    the paired test's power over 200 strongly correlated per-image errors."""
    rng = np.random.default_rng(3)
    task = pretext.get_task("rotation")
    for _ in range(50):
        target = rng.random(200)
        c = rng.random()
        s = references.pretext_scores(task, target, np.full(200, c) + rng.normal(0, 1e-3, 200))
        assert not s["learned"]
        assert s["ref_constant_aad_circ_deg"] < 90  # in-sample optimum: optimistic, hence conservative
    labels = rng.integers(0, 4, 80)
    for k in range(4):
        probs = np.tile(np.eye(4)[k] * 0.9 + 0.025, (80, 1))
        assert not references.pretext_scores(pretext.get_task("rotation4"), labels, probs)["learned"]
