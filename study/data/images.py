"""One image file: read, verify, decode, convert to 8-bit RGB, perceptual hash, and (when loading) resize.

Every way a file can be bad becomes a problem line naming it; conversions become notes.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from study.data.discovery import Entry

__all__ = [
    "NEAR_DUPLICATE_HASH_SIZE",
    "NEAR_DUPLICATE_MAX_DISTANCE",
    "SMALL_IMAGE_PX",
    "FileResult",
    "inspect_file",
]

# Perceptual hash: imagehash.phash with hash_size=16 (256 bits). Measured on the 1,398-image ISIC sample:
# re-encoded, recoloured or re-cropped copies of one photo lie at Hamming distance 2-34, the closest distinct
# lesions (sharing a dermoscope's frame) at 42 and above; synthetic lesions at 52 and above. The default
# 64-bit hash cannot separate these (a recoloured copy at 6, distinct synthetic lesions at 4). Pairs at
# distance <= 38 of 256 bits are reported as near-duplicates.
NEAR_DUPLICATE_HASH_SIZE = 16
NEAR_DUPLICATE_MAX_DISTANCE = 38
SMALL_IMAGE_PX = 32  # images with a side below this are upsampled a lot: warned about
_RESAMPLING = Image.Resampling.LANCZOS
_FORMATS_BY_EXT = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}


@dataclass
class FileResult:
    entry: Entry
    nbytes: int = -1  # -1: unreadable
    digest: str | None = None  # sha256 hex of the bytes; None when unreadable
    problem: str | None = None
    conversions: list[str] = field(default_factory=list)
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: np.ndarray | None = None  # uint64 (NEAR_DUPLICATE_HASH_SIZE**2 / 64,) packed bits
    array: np.ndarray | None = None


def _content_kind(data: bytes) -> str:
    """What a file PIL cannot read holds, in words that reveal none of its content (the file may be a link
    to anything on the machine): a text file or bytes in no known format, and its size."""
    head = data[:512]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        # A character cut by the 512-byte window is still text; invalid bytes earlier are not.
        text = (
            head[: e.start].decode("utf-8")
            if e.start >= len(head) - 3 and e.reason.startswith("unexp")
            else ""
        )
    if text and all(c.isprintable() or c.isspace() for c in text):
        return f"a text file, {len(data)} bytes"
    return f"{len(data)} bytes in no image format PIL reads"


def _to_rgb(im: Image.Image, rel: str, bits16: bool) -> tuple[Image.Image, list[str]]:
    """Convert to 8-bit RGB. Returns (image, conversion notes); raises ValueError for modes not converted."""
    mode = im.mode
    if mode == "RGB":
        if bits16:
            return im, [f"{rel}: 16-bit RGB converted to 8-bit RGB (PIL keeps the high byte of each sample)"]
        return im, []
    if mode in ("1", "L"):
        note = f"{rel}: grayscale (mode {mode}) converted to RGB by repeating the channel"
        return im.convert("RGB"), [note]
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(im).astype(np.int64)
        if a.min() < 0 or a.max() > 65535:
            raise ValueError(
                f"32-bit integer pixel values outside 0..65535 (mode {mode}); export it as 8-bit RGB"
            )
        gray = np.rint(a / 257.0).astype(np.uint8)  # 65535 -> 255: full 16-bit range onto 8 bits
        note = f"{rel}: 16-bit grayscale (mode {mode}) converted to 8-bit RGB (scaled 0..65535 -> 0..255)"
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2)), [note]
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:] / 255.0
        if (alpha == 1.0).all():
            how = "alpha channel fully opaque, dropped"
        else:
            how = f"composited on black ({float((alpha < 1.0).mean()):.0%} of pixels not fully opaque)"
        rgb = Image.fromarray(np.rint(rgba[..., :3] * alpha).astype(np.uint8))
        return rgb, [f"{rel}: mode {mode} with transparency converted to RGB: {how}"]
    if mode in ("P", "CMYK", "YCbCr"):
        what = {"P": "palette", "CMYK": "CMYK (no colour profile applied)", "YCbCr": "YCbCr"}[mode]
        return im.convert("RGB"), [f"{rel}: {what} image converted to RGB"]
    raise ValueError(f"unsupported colour mode {mode}; export it as 8-bit RGB JPEG or PNG")


def inspect_file(root: Path, entry: Entry, image_size: int | None) -> FileResult:
    """Read, verify and decode one file; with image_size, also centre-crop to square and resize.

    Never raises for bad files: the reason goes to `problem`."""
    res = FileResult(entry)
    rel = entry.name  # how messages name the file
    try:
        data = (root / entry.rel).read_bytes()
    except PermissionError:
        res.problem = f"{rel}: cannot read (permission denied); fix with chmod a+r"
        return res
    except OSError as e:
        res.problem = f"{rel}: cannot read ({type(e).__name__}: {e}); re-copy or remove it"
        return res
    res.nbytes = len(data)
    res.digest = hashlib.sha256(data).hexdigest()
    if not data:
        res.problem = f"{rel}: empty file (0 bytes); re-copy it or delete it"
        return res
    try:
        with warnings.catch_warnings():
            # PIL only warns between MAX_IMAGE_PIXELS and twice that; both are refused here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as probe:
                probe.verify()  # structure and checksums (PNG CRCs) without decoding
            im = Image.open(io.BytesIO(data))
            res.width, res.height = im.size
            res.mode, res.format = im.mode, im.format or "?"
            bits16 = any(";16" in str(t.args) for t in getattr(im, "tile", []) or [])
            n_frames = getattr(im, "n_frames", 1)
            im.load()  # decodes all data: raises on truncation (LOAD_TRUNCATED_IMAGES stays False)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        res.problem = (
            f"{rel}: image too large for PIL's decompression-bomb limit ({e}); downscale it (e.g. to at most "
            "4096 px a side) before use"
        )
        return res
    except UnidentifiedImageError:
        res.problem = f"{rel}: not an image PIL can read ({_content_kind(data)}); replace it with a JPEG/PNG or remove it"
        return res
    except Exception as e:  # noqa: BLE001 — any decoder failure is a per-file problem, not a crash
        res.problem = f"{rel}: corrupt or truncated image ({type(e).__name__}: {e}); re-copy it or remove it"
        return res

    notes = res.conversions
    ext = os.path.splitext(entry.rel)[1].lower()
    if res.format != _FORMATS_BY_EXT[ext]:
        notes.append(f"{rel}: holds {res.format} data despite its {ext} extension; decoded as {res.format}")
    if n_frames > 1:
        notes.append(f"{rel}: has {n_frames} frames; only the first is used")
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception as e:  # noqa: BLE001 — a damaged EXIF block should not make the pixels unusable
        orientation = 1
        notes.append(f"{rel}: EXIF block unreadable ({type(e).__name__}); orientation not applied")
    if orientation not in (1, None):
        im = ImageOps.exif_transpose(im)
        notes.append(f"{rel}: EXIF orientation {orientation} applied (image rotated/flipped upright)")
    try:
        rgb, conv = _to_rgb(im, rel, bits16)
    except ValueError as e:
        res.problem = f"{rel}: {e}"
        return res
    notes.extend(conv)
    if min(rgb.size) < SMALL_IMAGE_PX:
        notes.append(
            f"{rel}: very small image ({res.width}x{res.height} < {SMALL_IMAGE_PX} px); upsampled when loaded"
        )
    # Imported here: only reading image files needs it; training on decoded arrays (a GPU machine with
    # nothing but the backend and the scientific stack) does not.
    import imagehash

    bits = imagehash.phash(rgb, hash_size=NEAR_DUPLICATE_HASH_SIZE).hash.reshape(-1)
    res.phash = np.packbits(bits).view(">u8").astype(np.uint64)
    if image_size is not None:
        # Centre crop to the largest square, then Lanczos: keeps the lesion's shape (asymmetry is a feature).
        fitted = ImageOps.fit(rgb, (image_size, image_size), method=_RESAMPLING, centering=(0.5, 0.5))
        res.array = np.asarray(fitted, dtype=np.uint8)
    return res
