"""The paper's four pretext tasks (section II.B): their batch transforms, corrupted regions and registrations.

| name            | input                                   | target                    | head        |
|-----------------|-----------------------------------------|---------------------------|-------------|
| `rotation`      | rotated by a random angle in [0, 360)   | angle / 360, float32      | `angle`     |
| `rotation4`     | rotated by 0, 90, 180 or 270 degrees    | class 0..3, int64         | `rotation4` |
| `missing_patch` | one black `patch_size` square           | the original image, uint8 | `image`     |
| `corruption`    | `swap_count` swaps of two squares       | the original image, uint8 | `image`     |

`"none"` is the baseline arm of the study (no pretext phase); it is not a task. Conventions (image layout,
angles, explicit generators, inputs never modified) are the registry's (`study.tasks.registry`). Importing
this module registers the four tasks, in this order (the display order of tables and figures).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from skimage.transform import rotate as _skimage_rotate

from study.tasks.registry import (
    DEFAULT_METRICS,
    PAPER_IMAGE_SIZE,
    Batch,
    Bound,
    Param,
    PretextTask,
    Search,
    as_generator,
    check_images,
    half_image_side,
    image_side,
    register,
)

_PIXEL = np.dtype((np.void, 3))  # one RGB pixel as a single 3-byte element


# --------------------------------------------------------------------------------------------------------
# Square patches as rows of a strided view: one element = `width` consecutive pixels of one image row.
# Fancy indexing on this view moves a whole patch row (width*3 bytes) per index, so a patch over the batch
# is N*width indices rather than N*width*width pixel indices; measured faster than a per-image slice
# loop for the swaps: 1.8x at 224 px, 6x at 64 px (bench/pretext_throughput.py).


def _row_view(x: np.ndarray, width: int) -> np.ndarray:
    """View of C-contiguous uint8 `x (N, S, S, C)`: element `[n, r, c]` is the bytes of `x[n, r, c:c+width]`.

    Elements overlap in memory; writes through the view land in `x`.
    """
    n, s, _, c = x.shape
    return np.ndarray(
        (n, s, s - width + 1),
        dtype=np.dtype((np.void, width * c)),
        buffer=x,
        strides=(s * s * c, s * c, c),
    )


def _square_index(rows: np.ndarray, cols: np.ndarray, side: int) -> tuple[np.ndarray, ...]:
    """Index into `_row_view` for one square per image, top-left corners `rows, cols (N,)`."""
    n = np.arange(rows.shape[0])[:, None]
    return n, rows[:, None] + np.arange(side), cols[:, None]


def _blank_squares(x: np.ndarray, corners: np.ndarray, side: int) -> None:
    """Black out one `side`-px square per image of `x (N, S, S, 3)`, in place; `corners (N, 2)`: row, col."""
    view = _row_view(x, side)
    view[_square_index(corners[:, 0], corners[:, 1], side)] = np.zeros((), view.dtype)


def _swap_squares(x: np.ndarray, pairs: np.ndarray, side: int) -> None:
    """Swap squares in place, in order: `pairs (K, N, 4)` = (rowA, colA, rowB, colB) of disjoint squares."""
    view = _row_view(x, side)
    for swap in pairs:
        a = _square_index(swap[:, 0], swap[:, 1], side)
        b = _square_index(swap[:, 2], swap[:, 3], side)
        patch_a = view[a]  # fancy indexing copies, so the first write cannot clobber it
        view[a] = view[b]
        view[b] = patch_a


def _far_pairs(gen: np.random.Generator, shape: tuple[int, ...], m: int, side: int) -> np.ndarray:
    """Uniform ordered pairs `(p, q)` of positions in `0..m-1` with `|p - q| >= side`; shape `shape + (2,)`.

    Bijection: such a pair with p < q is (p, q - side + 1), a strictly increasing pair from
    `0..m-side`; so draw an ordered pair of distinct values there and stretch the larger one.
    """
    values = m - side + 1
    a = gen.integers(0, values, size=shape)
    b = gen.integers(0, values - 1, size=shape)
    b = b + (b >= a)  # uniform over values != a
    low, high = np.minimum(a, b), np.maximum(a, b) + side - 1
    return np.stack([np.where(a < b, low, high), np.where(a < b, high, low)], axis=-1)


def _near_pairs(gen: np.random.Generator, shape: tuple[int, ...], m: int, side: int) -> np.ndarray:
    """Uniform ordered pairs `(p, q)` of positions in `0..m-1` with `|p - q| < side`; shape `shape + (2,)`."""
    pos = np.arange(m)
    low = np.maximum(pos - side + 1, 0)
    count = np.minimum(pos + side - 1, m - 1) - low + 1
    first = gen.choice(m, size=shape, p=count / count.sum())  # weight p by its number of partners
    second = low[first] + gen.integers(0, count[first])
    return np.stack([first, second], axis=-1)


def _disjoint_square_pairs(
    gen: np.random.Generator, shape: tuple[int, ...], image_size: int, side: int
) -> np.ndarray:
    """Top-left corners of two non-overlapping `side`-px squares, uniform over all such ordered pairs.

    Returns int64 `shape + (4,)` = (rowA, colA, rowB, colB). Two squares are disjoint exactly when their
    rows or their columns are at least `side` apart, so the set splits into "rows far" (columns anything)
    and "rows near, columns far"; pick the part by its size, then draw inside it directly. Unlike
    rejection sampling this costs the same few draws however tight the image is (`side <= image_size//2`).
    """
    m = image_size - side + 1
    n_far = (m - side) * (m - side + 1)  # ordered 1-D pairs at distance >= side
    n_all = m * m
    rows_far_share = n_far * n_all / (n_far * n_all + (n_all - n_far) * n_far)
    rows_far = (gen.random(shape) < rows_far_share)[..., None]
    far = _far_pairs(gen, shape, m, side)
    near = _near_pairs(gen, shape, m, side)
    anywhere = gen.integers(0, m, size=shape + (2,))
    rows = np.where(rows_far, far, near)
    cols = np.where(rows_far, anywhere, far)
    return np.stack([rows[..., 0], cols[..., 0], rows[..., 1], cols[..., 1]], axis=-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# The paper's tasks (section II.B): parameters at 224 px, scaled to the study's image size.


def _square_side(name: str, paper_px: int, maximum: Bound, why: str, search: Search, doc: str) -> Param:
    """A square's side in pixels: the paper's value at 224 px, scaled with the image side."""
    limit = f"{why}; paper: {paper_px} px at {PAPER_IMAGE_SIZE} px"
    return Param(
        name, int, paper_px, scaled=True, minimum=1, maximum=maximum, limit=limit, search=search, doc=doc
    )


PATCH_SIZE = _square_side(
    "patch_size",
    75,
    image_side,
    "the square must fit in the image",
    Search(0.15, 0.5, relative=True),
    "side of the black square, px",
)
SWAP_COUNT = Param(
    "swap_count",
    int,
    100,
    minimum=1,
    search=Search(10, 150, log=True),
    doc="swaps per image, applied in sequence (a count: not scaled)",
)
SWAP_PATCH_SIZE = _square_side(
    "swap_patch_size",
    30,
    half_image_side,
    "two non-overlapping squares must fit side by side",
    Search(0.06, 0.25, relative=True),
    "side of the swapped squares, px",
)


def rotation_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """Rotate each image about its centre by its own angle drawn uniformly in [0, 360) degrees.

    Returns `inputs` uint8 `(N, S, S, 3)` and `targets` float32 `(N,)` = angle / 360 in [0, 1) (drawn as
    float32 first, so the angle used is exactly `360 * target`). Rotation is counter-clockwise,
    `skimage.transform.rotate(order=1 (bilinear), resize=False, preserve_range=True)`, rounded to the
    nearest integer; corners that come from outside the image are filled with constant black
    (`mode="constant", cval=0`), as a rotation matrix applied to the image leaves them empty.
    Draws: `targets = rng.random(N, dtype=float32)`.
    """
    x = check_images(images)
    ROTATION.validate(x.shape[1], **params)
    targets = as_generator(rng).random(x.shape[0], dtype=np.float32)
    return rotate_images(x, targets.astype(np.float64) * 360.0), targets


def rotate_images(images: np.ndarray, angles_deg: np.ndarray) -> np.ndarray:
    """Rotate image i of uint8 `(N, S, S, 3)` counter-clockwise by `angles_deg[i]` (N,) about its centre.

    The transform behind `rotation_batch` (bilinear, black corners, rounded back to uint8).
    """
    x = check_images(images)
    angles = np.asarray(angles_deg, dtype=np.float64).reshape(-1)
    if len(angles) != len(x):
        raise ValueError(f"angles_deg: need one angle per image ({len(x)}); got {len(angles)}")
    inputs = np.empty_like(x)
    for i, angle in enumerate(angles):
        # per image: skimage's warp takes one transform per call (~2 ms at 224 px, see the bench)
        rotated = _skimage_rotate(
            x[i], angle, resize=False, order=1, mode="constant", cval=0, clip=True, preserve_range=True
        )
        inputs[i] = np.rint(rotated)
    return inputs


def rotation4_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """RotNet: rotate each image counter-clockwise by 90 * k degrees, k uniform in {0, 1, 2, 3}.

    Returns `inputs` uint8 `(N, S, S, 3)` (`np.rot90(image, k)`) and `targets` int64 `(N,)` = k.
    Draws: `k = rng.integers(0, 4, size=N)`.
    """
    x = check_images(images)
    ROTATION4.validate(x.shape[1], **params)
    k = as_generator(rng).integers(0, 4, size=x.shape[0], dtype=np.int64)
    # Move whole 3-byte pixels (void view of shape (N, S, S)): a transposed copy of (S, S, 3) uint8 walks
    # a length-3 inner axis and measured 2-3x slower. One batched copy per k instead of a copy per image.
    pixels = x.view(_PIXEL)[..., 0]
    out = np.empty_like(pixels)
    for quarter in range(4):
        idx = np.flatnonzero(k == quarter)
        if quarter == 0:
            out[idx] = pixels[idx]
        elif quarter == 2:
            out[idx] = pixels[idx, ::-1, ::-1]  # one gather through reversed strides
        else:
            out[idx] = np.rot90(pixels[idx], quarter, axes=(1, 2))
    return out.view(np.uint8).reshape(x.shape), k


def missing_patch_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """Black out one `patch_size` square per image, at a uniform position fully inside the image.

    Returns `inputs` uint8 `(N, S, S, 3)` with the square set to (0, 0, 0) and `targets` a copy of the
    originals. Draws: top-left corners `rng.integers(0, S - patch_size + 1, size=(N, 2))` as (row, col).
    """
    x = check_images(images)
    side = MISSING_PATCH.validate(x.shape[1], **params)["patch_size"]
    corners = as_generator(rng).integers(0, x.shape[1] - side + 1, size=(x.shape[0], 2))
    inputs = x.copy()
    if x.shape[0]:
        _blank_squares(inputs, corners, side)
    return inputs, x.copy()


def corruption_batch(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> Batch:
    """Swap two `swap_patch_size` squares of each image, `swap_count` times in sequence.

    The two squares of one swap never overlap: each pair is drawn uniformly among all ordered pairs of
    disjoint squares fully inside the image (`_disjoint_square_pairs`), so every swap, and hence the whole
    corruption, permutes pixels and keeps the multiset of pixel values of each image. Later swaps may
    move pixels that earlier swaps moved, as in the paper. Returns `inputs` uint8 `(N, S, S, 3)` and
    `targets` a copy of the originals. Draws: one `_disjoint_square_pairs` call of shape
    `(swap_count, N)`.
    """
    x = check_images(images)
    checked = CORRUPTION.validate(x.shape[1], **params)
    side = checked["swap_patch_size"]
    pairs = _disjoint_square_pairs(as_generator(rng), (checked["swap_count"], x.shape[0]), x.shape[1], side)
    inputs = x.copy()
    if x.shape[0]:
        _swap_squares(inputs, pairs, side)
    return inputs, x.copy()


def missing_patch_region(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> np.ndarray:
    """The hole `missing_patch_batch` cuts with the same `rng` state: bool `(N, S, S)`, True inside it."""
    x = check_images(images)
    side = MISSING_PATCH.validate(x.shape[1], **params)["patch_size"]
    corners = as_generator(rng).integers(0, x.shape[1] - side + 1, size=(x.shape[0], 2))
    mask = np.zeros(x.shape[:3], bool)
    for i, (r, c) in enumerate(corners):
        mask[i, r : r + side, c : c + side] = True
    return mask


def corruption_region(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> np.ndarray:
    """The pixels `corruption_batch` with the same `rng` state moves: bool `(N, S, S)`, True where a pixel
    ends up holding another position's content (a pixel swapped away and back again counts as unmoved).

    Replays the swaps on an image whose pixels encode their own position (3 bytes: up to 2**24 pixels).
    """
    x = check_images(images)
    n, s = x.shape[:2]
    position = np.arange(s * s, dtype=np.uint32).reshape(1, s, s)
    coded = np.stack([(position >> shift) & 0xFF for shift in (16, 8, 0)], axis=-1).astype(np.uint8)
    moved, _ = corruption_batch(np.repeat(coded, n, axis=0), rng, **params)
    decoded = (moved[..., 0].astype(np.uint32) << 16) | (moved[..., 1].astype(np.uint32) << 8) | moved[..., 2]
    return decoded != position


ROTATION = register(
    PretextTask(
        "rotation",
        "Rotation prediction",
        "angle",
        "mse",
        make_batch=rotation_batch,
        color="#1f77b4",
        paper_table1=(("none", 88.7), ("patience3", 82.9), ("patience10", 86.7)),
        description="Rotation prediction (angle regression)",
    )
)
ROTATION4 = register(
    PretextTask(
        "rotation4",
        "4-way rotation",
        "rotation4",
        "sparse_categorical_crossentropy",
        make_batch=rotation4_batch,
        color="#17becf",
        description="Rotation classification (0/90/180/270 degrees)",
    )
)
MISSING_PATCH = register(
    PretextTask(
        "missing_patch",
        "Missing patch",
        "image",
        "mse",
        (PATCH_SIZE,),
        make_batch=missing_patch_batch,
        region=missing_patch_region,
        # Outside the hole the input is already the target: only the hole says what was learned.
        headline="region_mse",
        references=("identity", "meanfill", "biharmonic"),
        # The composite keeps the visible pixels (as the identity and mean-fill references do), so it is
        # compared on the same whole-image metrics.
        metrics=(*DEFAULT_METRICS["image"], "composite_mse", "composite_ssim"),
        reference_pairs=(
            ("region_mse", "region_mse"),
            ("mse_mean", "mse_mean"),
            ("ssim_mean", "ssim_mean"),
            ("composite_mse", "mse_mean"),
            ("composite_ssim", "ssim_mean"),
        ),
        color="#ff7f0e",
        metric_labels=(("region_mse", "MSE inside the hole"),),
        paper_table1=(("none", 88.2), ("patience3", 87.6), ("patience10", 88.3)),
        description="Missing patch (inpainting)",
    )
)
CORRUPTION = register(
    PretextTask(
        "corruption",
        "Corruption removal",
        "image",
        "mse",
        (SWAP_COUNT, SWAP_PATCH_SIZE),
        make_batch=corruption_batch,
        region=corruption_region,
        color="#2ca02c",
        metric_labels=(("region_mse", "MSE on the swapped pixels"),),
        paper_table1=(("none", 89.7), ("patience3", 90.2), ("patience10", 90.3)),
        description="Corruption removal (patch swaps)",
    )
)

# The contrastive tasks (`simclr`, `byol`) are registered in a module of their own, after the paper's four.
