"""Augmented views for the contrastive (SimCLR) and bootstrap (BYOL) pretext tasks, in numpy.

`two_views(images, rng, **params)` gives two independent augmentations of every image; `augment` gives one.
Each view is, in this fixed order (docs SSL.md, "SimCLR and BYOL"):

1. horizontal flip with probability `flip_p`, then rotation by k x 90 degrees counter-clockwise, k uniform
   in 0..3, when `rotate90` (dermoscopy has no canonical orientation); exact pixel moves (`np.rot90`);
2. random resized crop: an integer box of area `crop_scale` x image area and aspect ratio (w / h) in
   `crop_ratio` (log-uniform), at a uniform position, resized back to S x S by bilinear interpolation
   (`crop_resize`: the numbers of `skimage.transform.resize(crop, (S, S), order=1, mode="edge")`, for the
   whole batch at once; the crop never shrinks an axis, so no anti-aliasing is needed). Boxes are drawn as
   torchvision's `RandomResizedCrop` draws them: 10 tries per image, the first that fits wins; none
   fitting -> the whole image. (Cropping after the flip and turn rather than before gives the same
   distribution of views when `crop_ratio` is symmetric, r <-> 1/r, as the default is; it lets the turns
   move uint8 pixels.)
3. with probability `jitter_p`, colour jitter suited to dermoscopy, where colour is diagnostic: brightness
   (multiply by a factor in [1 - brightness, 1 + brightness]), contrast (blend with the image's mean luma,
   factor in [1 - contrast, 1 + contrast]), then saturation and a mild hue shift together in YIQ
   (`skimage.color.rgb2yiq` / `yiq2rgb` as 3 x 3 matrices): chroma (I, Q) scaled by a factor in
   [1 - saturation, 1 + saturation] (the same as blending with the luma grey, torchvision's saturation) and
   rotated by an angle in [-hue, hue] turns, luma kept. Clipped to 0..255 after each of the three. (A YIQ
   rotation, not HSV: HSV via `skimage.color.rgb2hsv` / `hsv2rgb` cost twice the whole rest of a view
   here; for the mild default shift of +-0.02 turn (7 degrees) the two agree closely.)
4. with probability `blur_p`, Gaussian blur with a standard deviation uniform in `blur_sigma` pixels
   (`skimage.filters.gaussian`, edge pixels repeated, truncated at 4 SD; a SD under 0.125 px has a
   one-tap kernel there and is skipped).

Pixels stay float32 in 0..255 between the steps and are rounded once at the end (`np.rint`, clipped).

Defaults (`default_view_params(image_size, strength)`): crop_scale (0.2, 1.0), crop_ratio (3/4, 4/3),
flip_p 0.5, rotate90 True, jitter_p 0.8, brightness 0.4, contrast 0.4, saturation 0.2, hue 0.02 (the four
jitter strengths times `strength`), blur_p 0.5, blur_sigma SimCLR's (0.1, 2.0) px at 224 px scaled to the
image side (at 32 px: 0.014-0.29 px, which changes no pixel once rounded: SimCLR leaves blur out at
CIFAR's 32 px; at 64 px up to 0.57 px).
A parameter left out takes its default for the images' size.

Randomness: every draw comes from the given `numpy.random.Generator` (or an integer seed), in a fixed
schedule that does not depend on the parameter values (per view: crop tries, crop positions, flips,
quarter turns, jitter coins and factors, blur coins and sigmas), so `two_views(x, default_rng([seed,
stream, epoch]))` is bitwise reproducible and switching one step off leaves the others' draws unchanged.
Inputs are never modified.

Cost, measured on this project's 2-core machine (numpy 2.4, scikit-image 0.26, shared with other jobs), one
`two_views` call with the defaults (both views): 32 px, 300 images ~0.12 s (0.4 ms per image); 64 px, 300
images ~0.26 s (0.85 ms per image). A SimCLR training step of the small encoder (widths 16-128, batch 32,
1 TensorFlow thread) costs ~1.9 ms per image at 32 px and ~5-6 ms at 64 px, so making the views costs
about a fifth (32 px) to a sixth (64 px) of training them, and `study.train.contrastive` makes the next
epoch's views in a background thread while the current epoch trains. (With HSV colour jitter the views cost
about 60 % of the training at 32 px.)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from skimage.color import rgb2yiq, yiq2rgb
from skimage.filters import gaussian

from study.tasks.registry import as_generator, check_images

#: SimCLR's blur sigma range at ImageNet's 224 px (Chen et al. 2020, appendix A); scaled to the image side.
PAPER_IMAGE_SIZE = 224
PAPER_BLUR_SIGMA = (0.1, 2.0)
#: torchvision's RandomResizedCrop: tries per image before falling back to the whole image.
CROP_TRIES = 10

#: Colour jitter strengths at `strength=1` (dermoscopy: mild hue, stronger brightness/contrast).
JITTER_AT_STRENGTH_1 = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.02}

PARAM_NAMES = (
    "crop_scale",
    "crop_ratio",
    "flip_p",
    "rotate90",
    "jitter_p",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "blur_p",
    "blur_sigma",
)

#: Parameters that switch every step off: the views are then exact copies of the images.
IDENTITY_PARAMS: dict[str, Any] = {
    "crop_scale": (1.0, 1.0),
    "crop_ratio": (1.0, 1.0),
    "flip_p": 0.0,
    "rotate90": False,
    "jitter_p": 0.0,
    "blur_p": 0.0,
}

_PIXEL = np.dtype((np.void, 3))  # one RGB pixel as a single 3-byte element
# Rec. 601 luma weights, for the grey level that contrast blends towards (as torchvision's rgb_to_grayscale).
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)
# YIQ (luma Y = _LUMA, chroma I, Q) as matrices acting on row-vector RGB pixels, taken from skimage.color.
_YIQ_FROM_RGB = rgb2yiq(np.eye(3)[None])[0]
_RGB_FROM_YIQ = yiq2rgb(np.eye(3)[None])[0]


def default_view_params(image_size: int, strength: float = 1.0) -> dict[str, Any]:
    """The default view parameters for `image_size`-px images (see the module docstring).

    `strength` (>= 0) scales the four colour-jitter strengths, like SimCLR's colour-distortion strength;
    brightness and contrast are capped at 0.9 (a factor of 0 would black the image out), saturation at 1
    and hue at 0.5. `strength=0` turns colour jitter off (`jitter_p` 0; the random draws stay the same, so
    crops, flips, turns and blur equal those at any other strength). Returns a new, validated dict with every
    name of `PARAM_NAMES`.
    """
    size = _check_size(image_size)
    if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating, np.integer)):
        raise ValueError(f"strength must be a number >= 0; got {strength!r}; use e.g. strength=1.0")
    if not (math.isfinite(strength) and strength >= 0):
        raise ValueError(f"strength must be a finite number >= 0; got {strength!r}; use e.g. strength=1.0")
    scale = size / PAPER_IMAGE_SIZE
    caps = {"brightness": 0.9, "contrast": 0.9, "saturation": 1.0, "hue": 0.5}
    params: dict[str, Any] = {
        "crop_scale": (0.2, 1.0),
        "crop_ratio": (3 / 4, 4 / 3),
        "flip_p": 0.5,
        "rotate90": True,
        "jitter_p": 0.8 if strength > 0 else 0.0,
        **{k: min(caps[k], float(v) * float(strength)) for k, v in JITTER_AT_STRENGTH_1.items()},
        "blur_p": 0.5,
        "blur_sigma": (PAPER_BLUR_SIGMA[0] * scale, PAPER_BLUR_SIGMA[1] * scale),
    }
    return validate_view_params(size, **params)


def validate_view_params(image_size: int, **params: Any) -> dict[str, Any]:
    """All view parameters for `image_size`-px images: `params` checked, the missing ones defaulted.

    Raises `ValueError` (the message ends with the fix) for an unknown name or a value out of range.
    Returns a new dict: pairs as tuples of floats, probabilities and strengths as floats, `rotate90` bool.
    """
    size = _check_size(image_size)
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if unknown:
        raise ValueError(f"unknown view parameter(s) {unknown}; use only {list(PARAM_NAMES)}")
    given = {k: v for k, v in params.items() if v is not None}
    out: dict[str, Any] = {}
    defaults = None
    for name in PARAM_NAMES:
        if name not in given:
            if defaults is None:
                defaults = default_view_params(size)
            out[name] = defaults[name]
            continue
        value = given[name]
        if name in ("crop_scale", "crop_ratio", "blur_sigma"):
            out[name] = _check_range(name, value)
        elif name == "rotate90":
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"rotate90 must be True or False; got {value!r}; use rotate90=True")
            out[name] = bool(value)
        else:
            out[name] = _check_number(name, value)
    lo, hi = out["crop_scale"]
    if not 0 < lo <= hi <= 1:
        raise ValueError(
            f"crop_scale={out['crop_scale']} must satisfy 0 < min <= max <= 1 (fractions of the image area); "
            "use e.g. crop_scale=(0.2, 1.0)"
        )
    lo, hi = out["crop_ratio"]
    if not 0 < lo <= hi:
        raise ValueError(
            f"crop_ratio={out['crop_ratio']} must satisfy 0 < min <= max (width / height); "
            "use e.g. crop_ratio=(0.75, 1.333)"
        )
    lo, hi = out["blur_sigma"]
    if not 0 < lo <= hi:
        raise ValueError(
            f"blur_sigma={out['blur_sigma']} must satisfy 0 < min <= max (pixels); use e.g. "
            f"blur_sigma={default_view_params(size)['blur_sigma']} (SimCLR's range scaled to {size} px)"
        )
    limits = {
        "flip_p": (0.0, 1.0, "a probability"),
        "jitter_p": (0.0, 1.0, "a probability"),
        "blur_p": (0.0, 1.0, "a probability"),
        "brightness": (0.0, 0.99, "a factor of 1 - brightness must stay > 0"),
        "contrast": (0.0, 0.99, "a factor of 1 - contrast must stay > 0"),
        "saturation": (0.0, 1.0, "saturation factors lie in [1 - s, 1 + s]"),
        "hue": (0.0, 0.5, "a shift of half a turn reaches every hue"),
    }
    for name, (low, high, why) in limits.items():
        if not low <= out[name] <= high:
            raise ValueError(
                f"{name}={out[name]!r} must lie in [{low}, {high}] ({why}); use e.g. "
                f"{name}={default_view_params(size)[name]!r}"
            )
    return out


def two_views(
    images: np.ndarray, rng: np.random.Generator | int, **params: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Two independent augmentations of every image: `(v1, v2)`, each uint8 `(N, S, S, 3)`.

    `images`: uint8 `(N, S, S, 3)` RGB (N may be 0); `rng`: a `numpy.random.Generator` or an integer seed,
    the only source of randomness (view 1's draws, then view 2's); `params`: see `validate_view_params`.
    `v1[i]` and `v2[i]` are views of `images[i]`.
    """
    x = check_images(images)
    checked = validate_view_params(x.shape[1], **params)
    gen = as_generator(rng)
    return _augment(x, gen, checked), _augment(x, gen, checked)


def augment(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> np.ndarray:
    """One augmentation of every image: uint8 `(N, S, S, 3)`; arguments as `two_views` (view 1 of
    `two_views` with the same `rng` state)."""
    x = check_images(images)
    checked = validate_view_params(x.shape[1], **params)
    return _augment(x, as_generator(rng), checked)


def crop_boxes(
    n: int,
    image_size: int,
    rng: np.random.Generator | int,
    crop_scale: tuple[float, float],
    crop_ratio: tuple[float, float],
) -> np.ndarray:
    """Random resized crop boxes, int64 `(n, 4)` = (top, left, height, width), inside `image_size` squares.

    Per box, `CROP_TRIES` tries of area `U(crop_scale) * S**2` and aspect ratio `w / h =
    exp(U(log crop_ratio))`; sides rounded to whole pixels; the first try with both sides in 1..S wins, else
    the whole image. Position uniform among the placements inside the image. Draws: `random((n, tries))`
    twice, then `random((n, 2))`, whatever the parameters.
    """
    gen = as_generator(rng)
    s = int(image_size)
    area = s * s * (crop_scale[0] + (crop_scale[1] - crop_scale[0]) * gen.random((n, CROP_TRIES)))
    log_lo, log_hi = math.log(crop_ratio[0]), math.log(crop_ratio[1])
    ratio = np.exp(log_lo + (log_hi - log_lo) * gen.random((n, CROP_TRIES)))
    w = np.rint(np.sqrt(area * ratio)).astype(np.int64)
    h = np.rint(np.sqrt(area / ratio)).astype(np.int64)
    fits = (w >= 1) & (w <= s) & (h >= 1) & (h <= s)
    first = np.argmax(fits, axis=1)
    rows = np.arange(n)
    any_fit = fits[rows, first]
    h = np.where(any_fit, h[rows, first], s)
    w = np.where(any_fit, w[rows, first], s)
    pos = gen.random((n, 2))
    top = np.minimum(np.floor(pos[:, 0] * (s - h + 1)).astype(np.int64), s - h)
    left = np.minimum(np.floor(pos[:, 1] * (s - w + 1)).astype(np.int64), s - w)
    return np.stack([top, left, h, w], axis=1)


def crop_resize(images: np.ndarray, boxes: np.ndarray, out_size: int | None = None) -> np.ndarray:
    """Crop box i of image i and resize it to `out_size` (default S) by bilinear interpolation.

    `images`: uint8 or float `(N, S, S, C)`; `boxes`: int `(N, 4)` = (top, left, height, width), inside the
    image. Returns float32 `(N, out, out, C)` in the input's units. Pixel centres map as in
    `skimage.transform.resize(images[i, top:top+h, left:left+w], (out, out), order=1, mode="edge",
    anti_aliasing=False)` (the crop's edge pixels are repeated outside it), for all images at once.
    """
    x = np.asarray(images)
    b = np.asarray(boxes, np.int64)
    n, s = x.shape[0], x.shape[1]
    out = s if out_size is None else int(out_size)
    if b.shape != (n, 4):
        raise ValueError(f"boxes must have shape ({n}, 4) (top, left, height, width); got {b.shape}")
    top, left, h, w = b.T
    if np.any(h < 1) or np.any(w < 1) or np.any(top < 0) or np.any(left < 0):
        raise ValueError("boxes must have sides >= 1 and non-negative corners; draw them with crop_boxes")
    if np.any(top + h > x.shape[1]) or np.any(left + w > x.shape[2]):
        raise ValueError("boxes must lie inside the images; draw them with crop_boxes")
    centres = (np.arange(out, dtype=np.float64) + 0.5) / out  # output pixel centres, as fractions

    def axis(start: np.ndarray, length: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.clip(centres[None, :] * length[:, None] - 0.5, 0.0, (length - 1)[:, None])
        low = np.floor(pos).astype(np.int64)
        high = np.minimum(low + 1, (length - 1)[:, None])
        return start[:, None] + low, start[:, None] + high, (pos - low).astype(np.float32)

    r0, r1, fr = axis(top, h)
    c0, c1, fc = axis(left, w)
    x = np.ascontiguousarray(x)
    s2, c = x.shape[2], x.shape[3]
    # Rows first, moving whole image rows (one void element each), then columns, moving whole pixels.
    row_view = x.reshape(n, s, s2 * c).view(np.dtype((np.void, s2 * c * x.itemsize)))[..., 0]
    idx = np.arange(n)[:, None]

    def rows_at(r: np.ndarray) -> np.ndarray:
        return row_view[idx, r].view(x.dtype).reshape(n, out, s2, c).astype(np.float32)

    lo = rows_at(r0)
    rows = lo + fr[:, :, None, None] * (rows_at(r1) - lo)
    pixel_view = rows.reshape(n, out, s2 * c).view(np.dtype((np.void, c * 4)))
    i3, ri = np.arange(n)[:, None, None], np.arange(out)[None, :, None]

    def cols_at(col: np.ndarray) -> np.ndarray:
        return pixel_view[i3, ri, col[:, None, :]].view(np.float32).reshape(n, out, out, c)

    lo = cols_at(c0)
    return lo + fc[:, None, :, None] * (cols_at(c1) - lo)


# --------------------------------------------------------------------------------------------------------
def _augment(x: np.ndarray, gen: np.random.Generator, p: dict[str, Any]) -> np.ndarray:
    n, s = x.shape[0], x.shape[1]
    # The whole draw schedule first, independent of the parameter values.
    boxes = crop_boxes(n, s, gen, p["crop_scale"], p["crop_ratio"])
    flip = gen.random(n) < p["flip_p"]
    quarter = gen.integers(0, 4, size=n)
    jitter = gen.random(n) < p["jitter_p"]
    factors = gen.random((n, 4))
    blur = gen.random(n) < p["blur_p"]
    sigma_u = gen.random(n)
    if n == 0:
        return x.copy()

    turned = _flip_rotate(x, flip, quarter if p["rotate90"] else np.zeros(n, np.int64))
    whole = (boxes[:, 2] == s) & (boxes[:, 3] == s)
    out = turned.astype(np.float32)
    if not np.all(whole):
        out[~whole] = crop_resize(turned[~whole], boxes[~whole])
    if np.any(jitter):
        out[jitter] = _colour_jitter(out[jitter], factors[jitter], p)
    if np.any(blur):
        lo, hi = p["blur_sigma"]
        sigmas = lo + (hi - lo) * sigma_u
        for i in np.flatnonzero(blur & (sigmas >= 0.125)):  # smaller: scipy's kernel is [1.0]
            out[i] = gaussian(
                out[i], sigma=float(sigmas[i]), mode="nearest", channel_axis=-1, preserve_range=True
            )
    return np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8)


def _flip_rotate(x: np.ndarray, flip: np.ndarray, quarter: np.ndarray) -> np.ndarray:
    """uint8 `(N, S, S, 3)`: image i flipped left-right where `flip[i]`, then turned by `quarter[i]` x 90
    degrees counter-clockwise (`np.rot90`); exact, moving whole 3-byte pixels."""
    pixels = np.ascontiguousarray(x).view(_PIXEL)[..., 0]
    out = pixels.copy()
    if np.any(flip):
        out[flip] = out[flip, :, ::-1]
    for k in (1, 2, 3):
        idx = np.flatnonzero(quarter == k)
        if len(idx):
            out[idx] = np.rot90(out[idx], k, axes=(1, 2))
    return out.view(np.uint8).reshape(x.shape)


def _colour_jitter(x: np.ndarray, u: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Brightness, contrast, then saturation and hue, on float32 `(M, S, S, 3)` in 0..255; `u (M, 4)`
    uniforms in [0, 1), one column per step. Clipped to 0..255 after each of the three steps."""

    def factor(col: int, strength: float) -> np.ndarray:
        return (1.0 - strength + 2.0 * strength * u[:, col]).astype(np.float32)

    y = np.clip(x * factor(0, p["brightness"])[:, None, None, None], 0.0, 255.0)
    if p["contrast"] > 0:
        grey = np.mean(y @ _LUMA, axis=(1, 2))[:, None, None, None]
        y = np.clip(grey + factor(1, p["contrast"])[:, None, None, None] * (y - grey), 0.0, 255.0)
    if p["saturation"] > 0 or p["hue"] > 0:
        y = np.clip(np.matmul(y.reshape(len(y), -1, 3), _chroma_matrices(u, p)).reshape(y.shape), 0.0, 255.0)
    return y


def _chroma_matrices(u: np.ndarray, p: dict[str, Any]) -> np.ndarray:
    """Per image the float32 `(3, 3)` matrix (row-vector pixels) that scales the chroma of YIQ by the
    saturation factor and rotates it by the hue shift, keeping the luma: `(M, 3, 3)`."""
    sat = 1.0 - p["saturation"] + 2.0 * p["saturation"] * u[:, 2]
    angle = 2.0 * np.pi * p["hue"] * (2.0 * u[:, 3] - 1.0)
    c, s = sat * np.cos(angle), sat * np.sin(angle)
    chroma = np.zeros((len(u), 3, 3))
    chroma[:, 0, 0] = 1.0
    chroma[:, 1, 1], chroma[:, 1, 2], chroma[:, 2, 1], chroma[:, 2, 2] = c, s, -s, c
    return (_YIQ_FROM_RGB @ chroma @ _RGB_FROM_YIQ).astype(np.float32)


def _check_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer number of pixels; got {image_size!r}")
    return int(image_size)


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number; got {value!r}; pass e.g. {name}=0.5")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value!r}; pass e.g. {name}=0.5")
    return value


def _check_range(name: str, value: Any) -> tuple[float, float]:
    try:
        lo, hi = value
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a pair (min, max); got {value!r}; pass e.g. {name}=(0.2, 1.0)"
        ) from None
    return _check_number(name, lo), _check_number(name, hi)
