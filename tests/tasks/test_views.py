"""Augmented views for SimCLR / BYOL (`study.tasks.views`): reproducibility, exactness of each step, validation."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.filters import gaussian
from skimage.transform import resize

from study.data import synth
from study.tasks import views

SIZE = 32


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(3)
    return synth.render_lesions(rng.random(24) < 0.4, SIZE, rng)


def _pixels(x: np.ndarray) -> np.ndarray:
    """Each image's pixels as sorted 3-byte values: (N, S*S)."""
    flat = np.ascontiguousarray(x).view(np.dtype((np.void, 3)))[..., 0].reshape(len(x), -1)
    return np.sort(flat, axis=1)


def _dihedral(image: np.ndarray) -> list[np.ndarray]:
    return [np.rot90(f, k) for f in (image, image[:, ::-1]) for k in range(4)]


def test_shapes_dtypes_and_inputs_untouched(images):
    before = images.copy()
    v1, v2 = views.two_views(images, np.random.default_rng([0, 31, 0]))
    assert v1.shape == v2.shape == images.shape
    assert v1.dtype == v2.dtype == np.uint8
    np.testing.assert_array_equal(images, before)
    e1, e2 = views.two_views(images[:0], 0)
    assert e1.shape == e2.shape == (0, SIZE, SIZE, 3)


def test_bitwise_reproducible_and_different_across_seeds_and_epochs(images):
    def run(*key):
        return views.two_views(images, np.random.default_rng(list(key)))

    a1, a2 = run(5, 31, 2)
    b1, b2 = run(5, 31, 2)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    for other in (run(6, 31, 2), run(5, 31, 3), run(5, 33, 2)):
        assert np.mean(np.any(other[0] != a1, axis=(1, 2, 3))) > 0.9
    # an integer seed is the generator it names
    np.testing.assert_array_equal(
        views.two_views(images, 9)[1], views.two_views(images, np.random.default_rng(9))[1]
    )
    # one view: the first of two_views with the same generator state
    np.testing.assert_array_equal(views.augment(images, 9), views.two_views(images, 9)[0])


def test_the_two_views_of_an_image_differ(images):
    v1, v2 = views.two_views(images, 1)
    differ = np.any(v1 != v2, axis=(1, 2, 3))
    assert differ.all()
    # and they differ a lot, not by a rounding step
    assert np.mean(np.abs(v1.astype(int) - v2.astype(int))) > 5


def test_all_steps_off_gives_the_images(images):
    v1, v2 = views.two_views(images, 4, **views.IDENTITY_PARAMS)
    np.testing.assert_array_equal(v1, images)
    np.testing.assert_array_equal(v2, images)


def test_flip_and_quarter_turns_only_move_pixels(images):
    params = {**views.IDENTITY_PARAMS, "flip_p": 0.5, "rotate90": True}
    v1, v2 = views.two_views(images, 8, **params)
    for v in (v1, v2):
        np.testing.assert_array_equal(_pixels(v), _pixels(images))
        for out, image in zip(v, images):
            assert any(np.array_equal(out, d) for d in _dihedral(image))
    # all eight transforms occur, not just the identity
    seen = {
        next(i for i, d in enumerate(_dihedral(image)) if np.array_equal(out, d))
        for out, image in zip(v1, images)
    }
    assert len(seen) >= 5


def test_crop_resize_is_skimage_bilinear_resize_of_the_crop(images):
    boxes = views.crop_boxes(len(images), SIZE, 2, (0.05, 1.0), (0.4, 2.5))
    assert (boxes[:, 2] < SIZE).any() and (boxes[:, 2] != boxes[:, 3]).any()
    out = views.crop_resize(images, boxes)
    assert out.dtype == np.float32 and out.shape == images.shape
    for i, (top, left, h, w) in enumerate(boxes):
        crop = images[i, top : top + h, left : left + w].astype(np.float64)
        ref = resize(crop, (SIZE, SIZE), order=1, mode="edge", anti_aliasing=False, preserve_range=True)
        np.testing.assert_allclose(out[i], ref, atol=1e-3)
    # another output size, and a whole-image box is the image
    np.testing.assert_allclose(views.crop_resize(images[:2], [[0, 0, SIZE, SIZE]] * 2), images[:2])
    small = views.crop_resize(images[:1], [[4, 2, 10, 20]], out_size=20)
    ref = resize(images[0, 4:14, 2:22].astype(float), (20, 20), order=1, mode="edge", anti_aliasing=False)
    np.testing.assert_allclose(small[0], ref, atol=1e-3)
    with pytest.raises(ValueError, match="inside the images"):
        views.crop_resize(images[:1], [[30, 0, 8, 8]])


def test_crop_boxes_follow_scale_and_ratio():
    boxes = views.crop_boxes(4000, 64, 0, (0.2, 0.6), (0.5, 2.0))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 64).all() and (left + w <= 64).all()
    area = h * w / 64**2
    # whole-pixel sides move the area a little off the range
    assert area.min() > 0.17 and area.max() < 0.65
    ratio = w / h
    assert ratio.min() > 0.45 and ratio.max() < 2.2
    assert ratio.min() < 0.6 and ratio.max() > 1.7  # the range is used, not just its middle
    # positions cover the image: both ends are reached
    assert top.min() == 0 and (top + h).max() == 64
    full = views.crop_boxes(5, 32, 0, (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_array_equal(full, [[0, 0, 32, 32]] * 5)
    # no try fits (a ratio of 20 at full area): the whole image
    np.testing.assert_array_equal(views.crop_boxes(3, 32, 0, (0.9, 1.0), (20.0, 30.0)), [[0, 0, 32, 32]] * 3)


def test_saturation_and_hue_keep_grey_images_and_change_coloured_ones(images):
    params = {**views.IDENTITY_PARAMS, "jitter_p": 1.0, "brightness": 0.0, "contrast": 0.0}
    params.update(saturation=0.8, hue=0.3)
    grey = np.repeat(images[..., :1], 3, axis=-1)
    np.testing.assert_array_equal(views.augment(grey, 0, **params), grey)
    out = views.augment(images, 0, **params).astype(np.float64)
    assert np.mean(np.abs(out - images)) > 3
    # luma is kept (up to rounding and clipping)
    luma = np.array([0.299, 0.587, 0.114])
    assert np.median(np.abs(out @ luma - images.astype(np.float64) @ luma)) < 1.0


def test_brightness_and_contrast_factors(images):
    base = {**views.IDENTITY_PARAMS, "jitter_p": 1.0, "saturation": 0.0, "hue": 0.0}
    dim = views.augment(images, 0, **base, brightness=0.5, contrast=0.0).astype(np.float64)
    ratio = dim.sum(axis=(1, 2, 3)) / images.astype(np.float64).sum(axis=(1, 2, 3))
    assert 0.45 < ratio.min() and ratio.max() < 1.55 and ratio.std() > 0.05
    flat = views.augment(images, 0, **base, brightness=0.0, contrast=0.5).astype(np.float64)
    sd_ratio = flat.std(axis=(1, 2, 3)) / images.std(axis=(1, 2, 3))
    assert 0.45 < sd_ratio.min() and sd_ratio.max() < 1.55 and sd_ratio.std() > 0.05


def test_blur_smooths_and_its_draws_do_not_move_the_other_steps(images):
    base = {**views.IDENTITY_PARAMS, "blur_p": 1.0, "blur_sigma": (1.0, 1.5)}
    blurred = views.augment(images, 0, **base).astype(np.float64)

    def roughness(x):
        return np.mean(np.abs(np.diff(x, axis=1)))

    assert roughness(blurred) < 0.8 * roughness(images.astype(np.float64))
    # scipy's kernel below 0.125 px is the identity (skipped in views): checked here, not assumed
    probe = images[0].astype(np.float32)
    np.testing.assert_array_equal(
        gaussian(probe, sigma=0.124, mode="nearest", channel_axis=-1, preserve_range=True), probe
    )
    # blur on (with a kernel that does nothing) vs off: the same draws for everything else
    a = views.two_views(images, 7, blur_sigma=(1.0, 1.5))
    b = views.two_views(images, 7, blur_p=1.0, blur_sigma=(0.01, 0.1))
    c = views.two_views(images, 7, blur_p=0.0)
    np.testing.assert_array_equal(b[0], c[0])
    np.testing.assert_array_equal(b[1], c[1])
    assert np.any(a[0] != c[0])
    # the default at 32 px (SimCLR's range scaled down, up to 0.29 px) changes nothing once rounded
    np.testing.assert_array_equal(views.two_views(images, 7)[0], c[0])


def test_default_params_scale_with_size_and_strength():
    p224 = views.default_view_params(224)
    assert p224["blur_sigma"] == pytest.approx((0.1, 2.0))
    p32 = views.default_view_params(32)
    assert p32["blur_sigma"] == pytest.approx((0.1 * 32 / 224, 2.0 * 32 / 224))
    strong = views.default_view_params(32, strength=2.0)
    assert strong["brightness"] == pytest.approx(0.8) and strong["hue"] == pytest.approx(0.04)
    assert views.default_view_params(32, strength=5.0)["brightness"] == 0.9  # capped
    assert set(p32) == set(views.PARAM_NAMES)
    off = views.default_view_params(32, strength=0)
    assert off["jitter_p"] == 0.0 and off["brightness"] == 0.0 and p32["jitter_p"] == 0.8
    # a partial dict is completed with the defaults
    assert views.validate_view_params(32, flip_p=0.0) == {**p32, "flip_p": 0.0}


@pytest.mark.parametrize(
    "params, match",
    [
        ({"crop_size": 3}, "unknown view parameter"),
        ({"crop_scale": (0.5, 0.2)}, "crop_scale"),
        ({"crop_scale": (0.0, 1.0)}, "crop_scale"),
        ({"crop_scale": 0.5}, "pair"),
        ({"crop_ratio": (-1, 2)}, "crop_ratio"),
        ({"flip_p": 1.5}, "flip_p"),
        ({"jitter_p": "high"}, "jitter_p"),
        ({"brightness": 1.0}, "brightness"),
        ({"hue": 0.7}, "hue"),
        ({"blur_sigma": (2.0, 1.0)}, "blur_sigma"),
        ({"rotate90": 1}, "rotate90"),
        ({"blur_p": float("nan")}, "blur_p"),
    ],
)
def test_bad_params_raise_with_the_fix(images, params, match):
    with pytest.raises(ValueError, match=match) as info:
        views.two_views(images, 0, **params)
    assert "use" in str(info.value).rsplit(";", 1)[-1] or "pass" in str(info.value).rsplit(";", 1)[-1]


def test_bad_images_and_rng_raise(images):
    with pytest.raises(ValueError, match="uint8"):
        views.two_views(images.astype(np.float32), 0)
    with pytest.raises(ValueError, match="rng"):
        views.two_views(images, -1)
    with pytest.raises(ValueError, match="strength"):
        views.default_view_params(32, strength=-0.5)
