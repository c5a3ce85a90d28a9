"""Properties of the pretext metrics (study/tasks/metrics.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from study.tasks.metrics import image_metrics, rotation4_metrics, rotation_metrics

# ---------------------------------------------------------------- rotation


def test_rotation_metrics_plain_and_circular():
    target = np.array([0.01, 0.5, 0.02])
    pred = np.array([0.99, 0.5, 1.02])
    m = rotation_metrics(target, pred)
    assert set(m) == {"mse", "aad", "aad_deg", "aad_circ", "aad_circ_deg", "sd_deg", "sd_circ_deg"}
    assert m["aad"] == pytest.approx((0.98 + 0 + 1.0) / 3)
    assert m["aad_circ"] == pytest.approx((0.02 + 0 + 0) / 3)  # 1.02 is taken modulo 1
    assert m["mse"] == pytest.approx((0.98**2 + 1.0) / 3)
    errors_deg = np.array([0.98, 0.0, 1.0]) * 360
    assert m["sd_deg"] == pytest.approx(np.sqrt(np.mean((errors_deg - errors_deg.mean()) ** 2)))


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(np.float64, st.integers(1, 30), elements=st.floats(0, 1, exclude_max=True)),
    st.data(),
)
def test_rotation_metric_properties(target, data):
    pred = data.draw(hnp.arrays(np.float64, len(target), elements=st.floats(-2, 3)))
    m = rotation_metrics(target, pred)
    assert m["aad_deg"] == pytest.approx(360 * m["aad"])
    assert m["aad_circ_deg"] == pytest.approx(360 * m["aad_circ"])
    assert 0 <= m["aad_circ"] <= 0.5 + 1e-12 and m["sd_circ_deg"] <= 180 + 1e-9
    assert m["mse"] >= m["aad"] ** 2 - 1e-12  # Jensen: mean of squares >= square of mean
    if np.all((pred >= 0) & (pred < 1)):
        assert m["aad_circ"] <= m["aad"] + 1e-12
    same = rotation_metrics(target, target)
    assert all(v == 0 for v in same.values())


def test_rotation_metrics_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        rotation_metrics(np.array([1.0]), np.array([0.5]))
    with pytest.raises(ValueError, match="same length"):
        rotation_metrics(np.array([0.1, 0.2]), np.array([0.5]))


# ---------------------------------------------------------------- rotation4


def test_rotation4_metrics():
    labels = np.array([0, 1, 2, 3])
    m = rotation4_metrics(labels, np.eye(4))
    assert m["accuracy"] == 1.0 and m["loss"] < 1e-6
    uniform = rotation4_metrics(labels, np.full((4, 4), 0.25))
    assert uniform["loss"] == pytest.approx(math.log(4))
    shifted = rotation4_metrics(labels, np.roll(np.eye(4), 1, axis=1))
    assert shifted["accuracy"] == 0.0
    assert shifted["loss"] == pytest.approx(-math.log(1e-7 / (1 + 3e-7)), rel=1e-6)


@pytest.mark.parametrize(
    "labels, probs, match",
    [
        (np.array([0, 4]), np.full((2, 4), 0.25), "0..3"),
        (np.array([0, 1]), np.full((2, 3), 1 / 3), r"\(N, 4\)"),
        (np.array([0, 1]), np.full((2, 4), 1.0), "softmax"),
    ],
)
def test_rotation4_bad_input(labels, probs, match):
    with pytest.raises(ValueError, match=match):
        rotation4_metrics(labels, probs)


# ---------------------------------------------------------------- images


def images(n=3, size=16, seed=0):
    return np.random.default_rng(seed).integers(20, 230, size=(n, size, size, 3), dtype=np.uint8)


def test_identical_images_score_perfectly():
    x = images()
    m = image_metrics(x, x)
    assert m["mse_mean"] == 0.0 and m["mse_sd"] == 0.0
    assert m["ssim_mean"] == pytest.approx(1.0) and m["ssim_sd"] == pytest.approx(0.0, abs=1e-12)


def test_mse_is_per_image_on_0_255_then_population_sd():
    x = images(2)
    rec = x.astype(np.float64)
    rec[1] += 10  # second image off by 10 everywhere -> per-image MSE 0 and 100
    m = image_metrics(x, rec)
    assert m["mse_mean"] == pytest.approx(50.0) and m["mse_sd"] == pytest.approx(50.0)


def test_uint8_and_float_reconstructions_agree_and_ssim_falls_with_noise():
    x = images(4, 24)
    rng = np.random.default_rng(1)
    ssims = []
    for sigma in (2, 10, 40):
        noisy = np.clip(x + rng.normal(0, sigma, x.shape), 0, 255)
        as_uint8 = np.rint(noisy).astype(np.uint8)
        assert image_metrics(x, as_uint8) == pytest.approx(image_metrics(x, as_uint8.astype(np.float32)))
        ssims.append(image_metrics(x, noisy)["ssim_mean"])
    assert ssims[0] > ssims[1] > ssims[2]


@pytest.mark.parametrize(
    ("n", "height", "width", "win_size"), [(40, 32, 32, 7), (7, 5, 5, 5), (3, 9, 7, 7), (5, 8, 11, 3)]
)
def test_ssim_of_a_mosaic_is_skimages_ssim_of_each_image(monkeypatch, n, height, width, win_size):
    from skimage.metrics import structural_similarity

    from study.tasks import metrics

    rng = np.random.default_rng(n)
    a = rng.uniform(0, 255, (n, height, width, 3))
    b = np.clip(a + rng.normal(0, 30, a.shape), 0, 255)
    b[0] = a[0]  # an exact reconstruction among them
    one_by_one = [
        structural_similarity(x, y, channel_axis=-1, data_range=255.0, win_size=win_size)
        for x, y in zip(a, b)
    ]
    np.testing.assert_allclose(metrics.ssim_per_image(a, b, win_size), one_by_one, rtol=0, atol=1e-12)
    monkeypatch.setattr(metrics, "MOSAIC_PIXELS", 2 * height * width)  # mosaics of 2 images and a last of 1
    np.testing.assert_allclose(metrics.ssim_per_image(a, b, win_size), one_by_one, rtol=0, atol=1e-12)


@pytest.mark.parametrize("size", [3, 4, 5, 6])
def test_small_images_use_a_window_that_fits(size):
    x = images(2, size)
    assert image_metrics(x, x)["ssim_mean"] == pytest.approx(1.0)
    assert image_metrics(x, 255 - x)["ssim_mean"] < 0.5


@pytest.mark.parametrize(
    "orig, rec, match",
    [
        (images().astype(np.float32), images(), "uint8"),
        (images(), images(size=8), "shape"),
        (images(), images().astype(np.float64) + 300, r"\[0, 255\]"),
        (images(size=2), images(size=2), "3x3"),
        (images(), images().astype(np.int16), "uint8 or float"),
    ],
)
def test_image_metrics_bad_input(orig, rec, match):
    with pytest.raises(ValueError, match=match):
        image_metrics(orig, rec)
