"""Synthetic dermoscopy-like lesions, so the study runs (and is tested) without real images.

Each image is a pigmented lesion on skin, drawn procedurally with numpy: skin tone and texture, a lesion whose
border is a polar radius modulated by random harmonics, colour regions inside it, hair strands, vignetting,
an illumination gradient, sometimes a dermoscope's dark circular frame, and sensor noise.

Malignant lesions differ the way melanoma does (ABCD rule): more Asymmetry (low-order harmonics, elongation),
irregular Borders (high-order harmonics), more Colours (black, blue-grey, red, dark-brown regions) and a
larger Diameter. Every class feature is driven by one latent severity `s` per image, drawn from N(0, 1) for
benign and N(CLASS_SEPARATION, 1) for malignant, plus independent per-feature noise; nuisance features (skin,
hair, light, position, noise) ignore the class. Since the image carries information about the class only
through `s`, no classifier beats the AUC of `s` itself, `bayes_auc_bound()` = Phi(separation / sqrt 2)
(0.96 for the default); the per-feature noise and the nuisances put a small CNN below that. Measured: a
4-block CNN (16-128 filters, Adam 1e-3, no augmentation) trained on 600 images at 64 px reached test AUC 0.6
after 15 epochs and 0.89 after 40; trained on 1,200 images it reached 0.85 after 15 epochs. Crude single
features (lesion area, darkness, colour spread) give AUCs of about 0.6-0.83.

Coordinates are normalised to [-1, 1] across the image and the scene parameters do not depend on the size,
so an image at 64 px and one at 224 px from the same generator state show the same scene (only the pixel
noise differs).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy.special import expit

# The class-count rule and size bounds are the study's (its validation checks synth_n_train / synth_n_test
# and image_size with them).
from study.spec.config import MAX_IMAGE_SIZE, MAX_SYNTH_IMAGES, SYNTH_MALIGNANT_FRACTION, synth_size_problem
from study.spec.config import synth_class_counts as _class_counts

__all__ = [
    "CLASS_SEPARATION",
    "MARKER_NAME",
    "SYNTH_VERSION",
    "bayes_auc_bound",
    "is_synth_marker",
    "render_lesions",
    "synthetic_dataset",
    "write_dataset",
]

# Bump when the rendered pixels change, so cached synthetic datasets (synthetic_dataset) are regenerated.
SYNTH_VERSION = 1
# Distance between the class means of the latent severity, in SDs of the within-class spread.
CLASS_SEPARATION = 2.5
# Written last by write_dataset: its presence marks a complete synthetic dataset that may be replaced.
MARKER_NAME = "synth.json"
MIN_SIZE = 16
MAX_SIZE = MAX_IMAGE_SIZE
#: The share of malignant images `write_dataset` accepts: rarer classes give AUCs from a handful of images.
MALIGNANT_FRACTION_RANGE = (0.05, 0.95)
#: The largest `synth.json` read back (a marker written by `write_dataset` is a few hundred bytes).
MAX_MARKER_BYTES = 64 * 1024
DEFAULT_MALIGNANT_FRACTION = SYNTH_MALIGNANT_FRACTION  # share of malignant images when a caller gives none
JPEG_QUALITY = 95

_N_HARMONICS = 16  # border harmonics k = 1..16: 1-3 shape the outline (asymmetry), 4-16 make it ragged
_N_COLOUR_SLOTS = 4  # at most this many extra colour regions per lesion
_N_HAIRS = 5
_N_ANGLES = 1024  # border radius table resolution: 16 harmonics are smooth at this sampling
_COARSE = 13  # coarse grid for colour regions (blobs about a quarter of a lesion wide)
_FINE = 40  # grid for texture (pigment granularity, skin pores), about a pixel at 64 px
# Work in chunks of about 2**20 pixels so memory stays bounded at 224 px; the chunk size depends only on
# the image size, so output is a function of (generator state, labels, size) alone.
_CHUNK_PIXELS = 2**20

# RGB in [0, 255]
_SKIN_LIGHT = np.array([238, 205, 190], np.float32)
_SKIN_DARK = np.array([196, 142, 110], np.float32)
_BROWN_LIGHT = np.array([186, 128, 86], np.float32)
_BROWN_DARK = np.array([74, 40, 26], np.float32)
# Colours of extra regions; melanoma shows more of them at once.
_PALETTE = np.array(
    [
        [40, 28, 26],  # black
        [112, 118, 140],  # blue-grey veil
        [178, 62, 66],  # red
        [78, 42, 28],  # dark brown
        [214, 196, 196],  # white/pink regression
    ],
    np.float32,
)
_HAIR = np.array([44, 32, 26], np.float32)


def bayes_auc_bound(separation: float = CLASS_SEPARATION) -> float:
    """AUC of the latent severity, Phi(separation / sqrt(2)): no classifier of the images can beat it."""
    return 0.5 * (1.0 + math.erf(separation / 2.0))


def _draw_params(malignant: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-image scene parameters, shape (N, ...); class features depend on the latent severity `s`."""
    n = malignant.shape[0]
    f32 = np.float32

    def noise(*shape: int) -> np.ndarray:
        return rng.standard_normal((n, *shape)).astype(f32)

    s = (noise() + CLASS_SEPARATION * malignant).astype(f32)
    p: dict[str, np.ndarray] = {"s": s}

    # --- class features (each its own noise, so any single one overlaps between classes) ---
    # Diameter: radius as a fraction of the half-width.
    p["r0"] = np.clip(0.36 * np.exp(0.13 * s + 0.13 * noise()), 0.12, 0.8).astype(f32)
    # Asymmetry: elongation and low-order harmonics (k = 1..3).
    asym = np.minimum(0.05 * np.exp(0.45 * s + 0.35 * noise()), 0.2)
    p["aspect"] = (1.0 + np.abs(0.5 * asym + 0.06 * noise())).astype(f32)
    # Border irregularity: high-order harmonics (k = 4..16) with 1/k fall-off.
    ragged = np.minimum(0.012 * np.exp(0.5 * s + 0.35 * noise()), 0.06)
    k = np.arange(1, _N_HARMONICS + 1, dtype=f32)
    weights = np.where(k <= 3, asym[:, None], ragged[:, None] * 4.0 / k).astype(f32)
    amp = weights * np.abs(noise(_N_HARMONICS))
    phase = rng.uniform(0, 2 * np.pi, (n, _N_HARMONICS)).astype(f32)
    p["harm"] = (amp * np.exp(1j * phase)).astype(np.complex64)
    # Colours: darker base pigment, more extra colour regions.
    p["darkness"] = expit(1.0 * s - 1.0 + 0.5 * noise()).astype(f32)
    n_extra = np.clip(np.rint(0.9 * s - 0.2 + 0.6 * noise()), 0, _N_COLOUR_SLOTS)
    p["slot_on"] = (np.arange(_N_COLOUR_SLOTS)[None, :] < n_extra[:, None]).astype(f32)
    p["slot_colour"] = _PALETTE[rng.integers(0, len(_PALETTE), (n, _N_COLOUR_SLOTS))]
    p["slot_thresh"] = rng.uniform(0.2, 1.1, (n, _N_COLOUR_SLOTS)).astype(f32)
    p["slot_opacity"] = rng.uniform(0.45, 0.85, (n, _N_COLOUR_SLOTS)).astype(f32)
    p["slot_field"] = noise(_N_COLOUR_SLOTS, _COARSE, _COARSE)

    # --- nuisance features (independent of the class) ---
    p["centre"] = np.clip(0.08 * noise(2), -0.2, 0.2).astype(f32)
    p["angle"] = rng.uniform(0, np.pi, n).astype(f32)
    p["edge"] = rng.uniform(0.004, 0.025, n).astype(f32)
    p["opacity"] = rng.uniform(0.8, 1.0, n).astype(f32)
    p["shade"] = (0.1 + 0.15 * noise()).astype(f32)  # >0: darker centre, <0: lighter centre
    p["texture_amp"] = rng.uniform(0.06, 0.2, n).astype(f32)
    p["texture_field"] = noise(_FINE, _FINE)
    p["skin"] = (
        _SKIN_LIGHT + rng.uniform(0, 1, (n, 1)).astype(f32) * (_SKIN_DARK - _SKIN_LIGHT) + 6.0 * noise(3)
    ).astype(f32)
    p["skin_field"] = noise(_FINE, _FINE)
    has_hair = rng.uniform(0, 1, n) < 0.3
    n_hair = np.where(has_hair, rng.integers(1, _N_HAIRS + 1, n), 0)
    p["hair_on"] = (np.arange(_N_HAIRS)[None, :] < n_hair[:, None]).astype(f32)
    p["hair_point"] = rng.uniform(-1, 1, (n, _N_HAIRS, 2)).astype(f32)
    p["hair_angle"] = rng.uniform(0, np.pi, (n, _N_HAIRS)).astype(f32)
    p["hair_bend"] = (0.5 * noise(_N_HAIRS)).astype(f32)
    p["hair_width"] = rng.uniform(0.004, 0.01, (n, _N_HAIRS)).astype(f32)
    p["hair_opacity"] = rng.uniform(0.4, 0.85, (n, _N_HAIRS)).astype(f32)
    p["vignette"] = rng.uniform(0.0, 0.35, n).astype(f32)
    p["gradient"] = rng.uniform(0.0, 0.15, n).astype(f32)
    p["gradient_angle"] = rng.uniform(0, 2 * np.pi, n).astype(f32)
    has_frame = rng.uniform(0, 1, n) < 0.12
    p["frame_radius"] = np.where(has_frame, rng.uniform(0.95, 1.25, n), np.inf).astype(f32)
    p["noise_sd"] = rng.uniform(1.5, 5.0, n).astype(f32)
    return p


def _upsampler(size: int, grid: int) -> np.ndarray:
    """(size, grid) Gaussian interpolation weights: a coarse (grid, grid) field G becomes U @ G @ U.T."""
    centres = np.linspace(-1.2, 1.2, grid, dtype=np.float32)
    x = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    h = centres[1] - centres[0]
    w = np.exp(-0.5 * ((x[:, None] - centres[None, :]) / h) ** 2)
    # Normalise so the upsampled field keeps roughly unit variance wherever it is evaluated.
    return (w / np.sqrt((w**2).sum(axis=1, keepdims=True))).astype(np.float32)


def _smooth(fields: np.ndarray, up: np.ndarray) -> np.ndarray:
    """(..., g, g) coarse fields -> (..., S, S) smooth fields."""
    return up @ fields @ up.T


def _render_chunk(p: dict[str, np.ndarray], size: int, rng: np.random.Generator) -> np.ndarray:
    n = p["s"].shape[0]
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1
    X, Y = c[None, None, :], c[None, :, None]
    col = lambda a: a[:, None, None]  # noqa: E731  (N,) -> (N, 1, 1) for broadcasting over pixels
    pixel = 2.0 / size  # one pixel in normalised units

    # Lesion shape: rotated, elongated polar frame; border R(theta) = r0 (1 + sum_k Re(c_k e^{ik theta})).
    # R depends on the angle only, so it is tabulated on _N_ANGLES angles per image and looked up per pixel:
    # much cheaper than evaluating the harmonics at every pixel.
    dx, dy = X - col(p["centre"][:, 0]), Y - col(p["centre"][:, 1])
    ca, sa = col(np.cos(p["angle"])), col(np.sin(p["angle"]))
    stretch = col(np.sqrt(p["aspect"]))
    u = (dx * ca + dy * sa) / stretch
    v = (-dx * sa + dy * ca) * stretch
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)  # [-pi, pi]
    table_angles = np.linspace(-np.pi, np.pi, _N_ANGLES, endpoint=False, dtype=np.float32)
    k = np.arange(1, _N_HARMONICS + 1, dtype=np.float32)
    waves = np.exp(1j * k[:, None] * table_angles[None, :]).astype(np.complex64)  # (K, A)
    table = p["r0"][:, None] * np.clip(1.0 + (p["harm"] @ waves).real, 0.35, 1.8)  # (N, A)
    idx = np.rint((theta + np.pi) * (_N_ANGLES / (2 * np.pi))).astype(np.intp) % _N_ANGLES
    border = np.take_along_axis(table, idx.reshape(n, -1), axis=1).reshape(r.shape)
    edge = col(np.maximum(p["edge"], 0.7 * pixel))
    alpha = expit((border - r) / edge) * col(p["opacity"])

    # Lesion colour: base brown by darkness, radial shading, granular texture, then extra colour regions.
    darkness = p["darkness"][:, None]
    base = _BROWN_LIGHT + darkness * (_BROWN_DARK - _BROWN_LIGHT)
    rel = np.minimum(r / border, 1.0)
    shade = 1.0 - col(p["shade"]) * (1.0 - rel)
    texture = 1.0 + col(p["texture_amp"]) * _smooth(p["texture_field"], _upsampler(size, _FINE))
    lesion = base[:, None, None, :] * (shade * texture)[..., None]
    up = _upsampler(size, _COARSE)
    for m in range(_N_COLOUR_SLOTS):
        on = np.flatnonzero(p["slot_on"][:, m])  # only lesions that use this slot: most use few
        if on.size == 0:
            continue
        region = _smooth(p["slot_field"][on, m], up)
        w = expit((region - col(p["slot_thresh"][on, m])) / 0.12) * col(p["slot_opacity"][on, m])
        lesion[on] += w[..., None] * (p["slot_colour"][on, m, None, None, :] - lesion[on])

    skin_texture = 1.0 + 0.025 * _smooth(p["skin_field"], _upsampler(size, _FINE))
    img = p["skin"][:, None, None, :] * skin_texture[..., None]
    img += alpha[..., None] * (lesion - img)

    # Hair: thin dark quadratic curves, soft across their width (anti-aliased at low resolution).
    for h in range(_N_HAIRS):
        on = np.flatnonzero(p["hair_on"][:, h])  # most images have no hair
        if on.size == 0:
            continue
        ha, hb = col(np.cos(p["hair_angle"][on, h])), col(np.sin(p["hair_angle"][on, h]))
        hx, hy = X - col(p["hair_point"][on, h, 0]), Y - col(p["hair_point"][on, h, 1])
        along = hx * ha + hy * hb
        across = -hx * hb + hy * ha - col(p["hair_bend"][on, h]) * along**2
        width = col(np.maximum(p["hair_width"][on, h], 0.5 * pixel))
        strand = np.exp(-0.5 * (across / width) ** 2) * col(p["hair_opacity"][on, h])
        img[on] += strand[..., None] * (_HAIR - img[on])

    # Illumination: vignetting, a linear gradient, and sometimes the dermoscope's dark circular frame.
    rc2 = X**2 + Y**2
    ga = p["gradient_angle"]
    light = (1.0 - col(p["vignette"]) * rc2 / 2.0) * (
        1.0 + col(p["gradient"]) * (X * col(np.cos(ga)) + Y * col(np.sin(ga)))
    )
    light *= expit((col(p["frame_radius"]) - np.sqrt(rc2)) / 0.03)
    img *= light[..., None]
    img += col(p["noise_sd"])[..., None] * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_lesions(malignant: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one synthetic lesion image per label.

    malignant: bool (N,), True = malignant. size: image side in pixels (>= 16). rng: the only randomness used.
    Returns uint8 (N, size, size, 3) RGB. The same generator state, labels and size give identical images.
    """
    malignant = np.asarray(malignant)
    if malignant.ndim != 1 or malignant.dtype != np.bool_:
        raise ValueError(
            f"render_lesions: malignant must be a 1-D bool array, got dtype {malignant.dtype} shape "
            f"{malignant.shape}; pass e.g. labels.astype(bool)"
        )
    if not isinstance(size, (int, np.integer)) or size < MIN_SIZE:
        raise ValueError(f"render_lesions: size must be an integer >= {MIN_SIZE} pixels, got {size!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"render_lesions: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    size = int(size)
    n = malignant.shape[0]
    out = np.empty((n, size, size, 3), np.uint8)
    if n == 0:
        return out
    params = _draw_params(malignant, rng)
    chunk = max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, n, chunk):
        part = {k: v[start : start + chunk] for k, v in params.items()}
        out[start : start + chunk] = _render_chunk(part, size, rng)
    return out


# ----------------------------------------------------------------------------------------------------------
# Writing datasets


def _validate_args(n_train: Any, n_test: Any, size: Any, seed: Any, malignant_fraction: Any) -> None:
    """Every argument within its bounds, before anything is created or allocated."""
    for name, value in (("n_train", n_train), ("n_test", n_test)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, np.integer))
            or not 2 <= value <= MAX_SYNTH_IMAGES
        ):
            raise ValueError(
                f"write_dataset: {name} must be an integer >= 2 (one image per class) and <= "
                f"{MAX_SYNTH_IMAGES}, got {value!r}"
            )
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(
            f"write_dataset: size must be an integer >= {MIN_SIZE} and <= {MAX_SIZE} pixels, got {size!r}"
        )
    problem = synth_size_problem(n_train, n_test, size)
    if problem is not None:
        raise ValueError(f"write_dataset: {problem}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"write_dataset: seed must be a non-negative integer, got {seed!r}")
    if not isinstance(malignant_fraction, (int, float)) or not 0.0 < malignant_fraction < 1.0:
        raise ValueError(
            f"write_dataset: malignant_fraction must be a number in (0, 1), got {malignant_fraction!r}"
        )


def _check_fraction(malignant_fraction: float) -> None:
    low, high = MALIGNANT_FRACTION_RANGE
    if not low <= malignant_fraction <= high:
        raise ValueError(
            f"write_dataset: malignant_fraction must be in [{low}, {high}] (a rarer class leaves the AUC to a "
            f"handful of images), got {malignant_fraction!r}"
        )


def is_synth_marker(path: Path) -> bool:
    """Whether `path` is a `synth.json` that `write_dataset` wrote: a regular file (not a link), small, holding
    the generator's name, version and counts. Only such a marker makes a folder a synthetic dataset whose
    split folders may be replaced (an empty `{}` or a planted file does not)."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_MARKER_BYTES:
            return False
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return (
        isinstance(marker, dict)
        and marker.get("generator") == "study.data.synth"
        and isinstance(marker.get("version"), int)
        and isinstance(marker.get("counts"), dict)
    )


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Make `out` ready for writing: create it, or clear the split folders of a previous dataset."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"write_dataset: {out} exists and is not a directory; choose another output path")
    if not out.exists():
        out.mkdir(parents=True)
        return
    entries = list(out.iterdir())
    if not entries:
        return
    if not is_synth_marker(out / MARKER_NAME) and not overwrite:
        found = (
            "a synth.json this tool did not write" if (out / MARKER_NAME).exists() else f"no {MARKER_NAME}"
        )
        raise ValueError(
            f"write_dataset: {out} is not empty and is not a synthetic dataset written earlier ({found}); "
            "choose an empty or new directory, or pass overwrite=True to replace its train/ and test/ folders"
        )
    # Only the split folders and the marker are ours to replace; anything else in `out` is left alone.
    for entry in entries:
        if entry.name.lower() in ("train", "test") and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.name.lower() in ("train", "test"):
            raise ValueError(
                f"write_dataset: {entry} is a file or symlink where a split folder goes; remove it by hand"
            )
    (out / MARKER_NAME).unlink(missing_ok=True)


def write_dataset(
    out: Path | str,
    n_train: int,
    n_test: int,
    size: int,
    seed: int,
    malignant_fraction: float = 0.35,
    overwrite: bool = False,
) -> dict[str, dict[str, int]]:
    """Write a synthetic dataset as JPEG files (quality 95) in `out/{train,test}/{benign,malignant}/*.jpg`.

    Each split has round(n * malignant_fraction) malignant images and the rest benign; train and test are
    drawn from separate streams of `seed`, so n_test does not change the train images. The same arguments
    give byte-identical files. `out` must be new, empty, or a synthetic dataset written earlier (its split
    folders are replaced); otherwise pass overwrite=True to replace its train/ and test/ folders.
    A `synth.json` marker with the parameters and counts is written last.

    Returns counts {"train": {"benign": n, "malignant": n}, "test": {...}}.
    """
    _validate_args(n_train, n_test, size, seed, malignant_fraction)
    out = Path(out)
    counts = {
        split: dict(zip(("benign", "malignant"), _class_counts(int(n), malignant_fraction, split)))
        for split, n in (("train", n_train), ("test", n_test))
    }
    _check_fraction(malignant_fraction)  # after the class counts, whose message names the images a class gets
    created = not out.exists()
    _prepare_out(out, overwrite)
    try:
        _write_images(out, counts, size, seed)
    except BaseException:  # a failed or interrupted write leaves no half-written dataset behind
        _discard(out, created)
        raise
    marker = {
        "generator": "study.data.synth",
        "version": SYNTH_VERSION,
        "n_train": int(n_train),
        "n_test": int(n_test),
        "size": int(size),
        "seed": int(seed),
        "malignant_fraction": float(malignant_fraction),
        "class_separation": CLASS_SEPARATION,
        "bayes_auc_bound": round(bayes_auc_bound(), 4),
        "counts": counts,
    }
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True) + "\n")
    return counts


def _write_images(out: Path, counts: dict[str, dict[str, int]], size: int, seed: int) -> None:
    """The JPEG files of both splits (train and test from separate streams of `seed`)."""
    for stream, split in enumerate(("train", "test")):
        n_ben, n_mal = counts[split]["benign"], counts[split]["malignant"]
        labels = np.repeat(np.array([False, True]), [n_ben, n_mal])
        images = render_lesions(labels, int(size), np.random.default_rng([int(seed), stream]))
        for cls in ("benign", "malignant"):
            (out / split / cls).mkdir(parents=True, exist_ok=True)
        for i, (image, is_mal) in enumerate(zip(images, labels)):
            cls = "malignant" if is_mal else "benign"
            Image.fromarray(image).save(out / split / cls / f"{split}_{i:05d}.jpg", quality=JPEG_QUALITY)


def _discard(out: Path, created: bool) -> None:
    """Remove what a failed `write_dataset` wrote: `out` itself when it created it, else its split folders."""
    if created:
        shutil.rmtree(out, ignore_errors=True)
        return
    for split in ("train", "test"):
        if (out / split).is_dir() and not (out / split).is_symlink():
            shutil.rmtree(out / split, ignore_errors=True)


def synthetic_dataset(
    cache_dir: Path | str,
    n_train: int,
    n_test: int,
    size: int,
    seed: int,
    malignant_fraction: float = DEFAULT_MALIGNANT_FRACTION,
) -> Path:
    """Path of a synthetic dataset in `cache_dir/synth-<params>`, generated on first use and reused after.

    Generation writes into a temporary sibling folder and renames it into place, so concurrent processes
    never see a half-written dataset; when two race, the first rename wins and the loser's copy is discarded
    (both are byte-identical).
    """
    _validate_args(n_train, n_test, size, seed, malignant_fraction)
    cache_dir = Path(cache_dir)
    name = f"synth-v{SYNTH_VERSION}-train{n_train}-test{n_test}-{size}px-seed{seed}-mal{malignant_fraction:g}"
    final = cache_dir / name
    if is_synth_marker(final / MARKER_NAME):
        return final
    if final.exists():
        raise ValueError(
            f"synthetic_dataset: {final} exists but has no valid {MARKER_NAME} (not written by this function, "
            "or damaged); delete that folder and run again"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f".tmp-{name}-"))
    try:
        write_dataset(tmp, n_train, n_test, size, seed, malignant_fraction)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its identical copy first.
            if not is_synth_marker(final / MARKER_NAME):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
