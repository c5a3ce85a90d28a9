"""Pretext tasks: numpy batch transforms that turn unlabelled images into (input, target) training pairs.

The four tasks of the paper (section II.B), registered by name in `TASKS`:

| name            | input                                   | target                    | head        |
|-----------------|-----------------------------------------|---------------------------|-------------|
| `rotation`      | rotated by a random angle in [0, 360)   | angle / 360, float32      | `angle`     |
| `rotation4`     | rotated by 0, 90, 180 or 270 degrees    | class 0..3, int64         | `rotation4` |
| `missing_patch` | one black `patch_size` square           | the original image, uint8 | `image`     |
| `corruption`    | `swap_count` swaps of two squares       | the original image, uint8 | `image`     |

`"none"` is the baseline arm of the study (no pretext phase); it is not a task here.

Conventions: images are `uint8` arrays of shape `(N, S, S, 3)` (RGB, channels-last); sizes are in pixels;
angles are counter-clockwise as the image is displayed (row 0 at the top), the convention of both
`skimage.transform.rotate` and `np.rot90`. Every transform takes an explicit `numpy.random.Generator` (or an
integer seed) and draws from nothing else, so a batch is a pure function of `(images, rng state, params)`.
Transforms never modify their input; targets are fresh arrays.

Adding a task is one definition plus its test. Colorization (predict the colours of a grey image):

>>> import numpy as np
>>> def colorization_batch(images, rng, **params):
...     x = check_images(images)
...     validate_colorization(x.shape[1], **params)
...     grey = np.rint(x @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)
...     return np.repeat(grey[..., None], 3, axis=-1), x.copy()
>>> validate_colorization = params_validator("colorization", required=())
>>> task = register(PretextTask(
...     name="colorization", title="Colorization", head="image", loss="mse", params=(),
...     make_batch=colorization_batch, validate=validate_colorization))
>>> inputs, targets = get_task("colorization").make_batch(np.zeros((2, 8, 8, 3), np.uint8), rng=0)
>>> inputs.shape, targets.dtype
((2, 8, 8, 3), dtype('uint8'))

An image task should also pass `region=` (a function returning the bool `(N, S, S)` mask of the pixels its
transform changes, drawn from the same rng state), so that the report scores the corrupted region on its own;
`headline` and `references` (see `study.references`) default by head. Then add, in `tests/test_pretext.py`, a
property that could fail, e.g. that the three channels of every input are
equal while the targets equal the images. The head and loss come from the fixed sets `HEADS` / `LOSSES`,
so the models and the trainable need no change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.transform import rotate as _skimage_rotate

HEADS = ("angle", "rotation4", "image")
LOSSES = ("mse", "sparse_categorical_crossentropy")
PARAM_NAMES = ("patch_size", "swap_count", "swap_patch_size")

# Paper values (section II.B), defined at 224 px; `default_params` scales the sizes to other image sizes.
PAPER_IMAGE_SIZE = 224
PAPER_PATCH_SIZE = 75
PAPER_SWAP_PATCH_SIZE = 30
PAPER_SWAP_COUNT = 100

Batch = tuple[np.ndarray, np.ndarray]

# Per head: the headline metric of `study.references.verdict` and the references computed for it.
DEFAULT_HEADLINE = {"angle": "aad_circ_deg", "rotation4": "accuracy", "image": "mse_mean"}
DEFAULT_REFERENCES = {"angle": ("constant",), "rotation4": ("chance", "majority"), "image": ("identity",)}

_PIXEL = np.dtype((np.void, 3))  # one RGB pixel as a single 3-byte element


@dataclass(frozen=True)
class PretextTask:
    """One registered pretext task.

    `make_batch(images, rng, **params) -> (inputs, targets)`: `images` uint8 `(N, S, S, 3)`, `rng` a
    `numpy.random.Generator` or an integer seed; `inputs` uint8 `(N, S, S, 3)`; `targets` by head:
    `angle` -> float32 `(N,)` angle/360 in [0, 1), `rotation4` -> int64 `(N,)` in 0..3, `image` -> uint8
    `(N, S, S, 3)` originals. `validate(image_size, **params)` raises `ValueError` (message ends with the
    fix) and returns the checked parameters as a dict of ints.
    """

    name: str
    title: str
    head: str
    loss: str
    params: tuple[str, ...]
    make_batch: Callable[..., Batch]
    validate: Callable[..., dict[str, int]]
    # Image tasks: `region(images, rng, **params) -> bool (N, S, S)`, the pixels `make_batch` with the same
    # rng state corrupts (scored on their own: a model can copy the visible pixels and learn nothing else).
    region: Callable[..., np.ndarray] | None = None
    # The metric that decides whether the pretext learned, and the learning-free references it is scored
    # against (`study.references`); None: the head's defaults (`DEFAULT_HEADLINE`, `DEFAULT_REFERENCES`).
    headline: str | None = None
    references: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.headline is None:
            object.__setattr__(self, "headline", DEFAULT_HEADLINE.get(self.head))
        if self.references is None:
            object.__setattr__(self, "references", DEFAULT_REFERENCES.get(self.head, ()))
        if not isinstance(self.name, str) or not self.name.isidentifier():
            raise ValueError(f"task name must be a Python identifier such as 'jigsaw'; got {self.name!r}")
        if self.head not in HEADS:
            raise ValueError(f"task {self.name!r}: head must be one of {HEADS}; got {self.head!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"task {self.name!r}: loss must be one of {LOSSES}; got {self.loss!r}")
        if not isinstance(self.params, tuple) or not set(self.params) <= set(PARAM_NAMES):
            raise ValueError(
                f"task {self.name!r}: params must be a tuple drawn from {PARAM_NAMES}; got {self.params!r}"
            )
        if not callable(self.make_batch) or not callable(self.validate):
            raise ValueError(f"task {self.name!r}: make_batch and validate must be callables")
        if self.region is not None and not callable(self.region):
            raise ValueError(f"task {self.name!r}: region must be a callable or None")


TASKS: dict[str, PretextTask] = {}


def register(task: PretextTask) -> PretextTask:
    """Add `task` to `TASKS` and return it; a name already registered (or `"none"`) raises `ValueError`."""
    if not isinstance(task, PretextTask):
        raise ValueError(f"register expects a PretextTask; got {type(task).__name__}")
    if task.name == "none":
        raise ValueError("'none' names the baseline arm; choose another task name")
    if task.name in TASKS:
        raise ValueError(f"pretext task {task.name!r} is already registered; choose another name")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> PretextTask:
    """The registered task called `name`; `ValueError` listing the known tasks otherwise."""
    known = ", ".join(TASKS)
    if name == "none":
        raise ValueError(
            f"'none' is the baseline arm (no pretext phase), not a pretext task; known tasks: {known}"
        )
    if name not in TASKS:
        raise ValueError(f"unknown pretext task {name!r}; known tasks: {known}")
    return TASKS[name]


def default_params(task_name: str, image_size: int) -> dict[str, int]:
    """The paper's parameters for `task_name`, scaled from 224 px to `image_size` px.

    `patch_size` (75 px at 224) and `swap_patch_size` (30 px at 224) scale linearly with the image side,
    rounded half up, at least 1; `swap_count` stays 100 (a count, not a size). Only the parameters the task
    uses are returned (`{}` for the rotation tasks and for the `"none"` baseline arm). The result is
    validated, so an image too small for the task raises `ValueError`.
    Examples: 64 px -> patch_size 21, swap_patch_size 9; 224 px -> 75 and 30.
    """
    size = _check_image_size(image_size)
    if task_name == "none":
        return {}
    task = get_task(task_name)
    paper = {
        "patch_size": _scale_from_paper(PAPER_PATCH_SIZE, size),
        "swap_count": PAPER_SWAP_COUNT,
        "swap_patch_size": _scale_from_paper(PAPER_SWAP_PATCH_SIZE, size),
    }
    params = {name: paper[name] for name in task.params}
    task.validate(size, **params)
    return params


def _scale_from_paper(paper_pixels: int, image_size: int) -> int:
    # Integer round-half-up of paper_pixels * image_size / 224 (Python's round() would round 0.5 to even).
    return max(1, (2 * paper_pixels * image_size + PAPER_IMAGE_SIZE) // (2 * PAPER_IMAGE_SIZE))


# --------------------------------------------------------------------------------------------------------
# Helpers for task authors: input checks shared by every task.


def check_images(images: Any) -> np.ndarray:
    """`images` as a C-contiguous uint8 `(N, S, S, 3)` array (N may be 0); `ValueError` otherwise."""
    if not isinstance(images, np.ndarray):
        raise ValueError(
            f"images must be a numpy uint8 array of shape (N, S, S, 3); got {type(images).__name__}; "
            "convert with np.asarray(images, dtype=np.uint8)"
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"images must have dtype uint8 (0-255); got {images.dtype}; convert with "
            "np.clip(np.rint(images), 0, 255).astype(np.uint8) (undo model preprocessing first)"
        )
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"images must have shape (N, S, S, 3) (RGB, channels-last); got {images.shape}; "
            "for one image pass images[None]"
        )
    if images.shape[1] != images.shape[2] or images.shape[1] == 0:
        raise ValueError(f"images must be non-empty squares (N, S, S, 3); got {images.shape}; resize first")
    return np.ascontiguousarray(images)


def as_generator(rng: Any) -> np.random.Generator:
    """`rng` itself if it is a `numpy.random.Generator`, `np.random.default_rng(rng)` for an integer seed."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool) and rng >= 0:
        return np.random.default_rng(int(rng))
    raise ValueError(
        f"rng must be a numpy.random.Generator or a non-negative integer seed; got {rng!r}; derive one per "
        "epoch with np.random.default_rng([seed, stream, epoch])"
    )


def params_validator(task_name: str, required: tuple[str, ...]) -> Callable[..., dict[str, int]]:
    """A `validate(image_size, **params) -> dict[str, int]` for a task using the parameters `required`.

    Rules: every required parameter is present and not None; parameters the task does not use must be
    absent or None (a value there is a likely mix-up, e.g. `patch_size` given to `corruption`); sizes and
    counts are integers >= 1; `patch_size <= image_size`; `swap_patch_size <= image_size // 2`, because
    two squares that never overlap must fit side by side.
    """
    unknown_required = set(required) - set(PARAM_NAMES)
    if unknown_required:
        raise ValueError(f"task {task_name!r}: unknown parameter(s) {sorted(unknown_required)}")

    def validate(image_size: int, **params: Any) -> dict[str, int]:
        size = _check_image_size(image_size)
        unused = sorted(k for k, v in params.items() if k not in required and v is not None)
        if unused:
            raise ValueError(
                f"task {task_name!r} does not use parameter(s) {unused}; pass only {list(required) or 'none'}"
            )
        checked: dict[str, int] = {}
        for name in required:
            value = params.get(name)
            if value is None:
                raise ValueError(
                    f"task {task_name!r} needs {name}; pass {name}=... "
                    f"(default_params({task_name!r}, {size}) gives the paper's value scaled to {size} px)"
                )
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer (pixels or a count); got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1; got {value}; use a positive {name}")
            checked[name] = int(value)
        if checked.get("patch_size", 0) > size:
            raise ValueError(
                f"patch_size={checked['patch_size']} is larger than the {size}-px image; use at most {size} "
                f"(paper: 75 px at 224 px)"
            )
        if checked.get("swap_patch_size", 0) > size // 2:
            raise ValueError(
                f"swap_patch_size={checked['swap_patch_size']} leaves no room for two non-overlapping "
                f"squares in a {size}-px image; use at most {size // 2} (paper: 30 px at 224 px)"
            )
        return checked

    return validate


def _check_image_size(image_size: Any) -> int:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer number of pixels; got {image_size!r}")
    return int(image_size)


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
# The paper's tasks.

_validate_rotation = params_validator("rotation", required=())
_validate_rotation4 = params_validator("rotation4", required=())
_validate_missing_patch = params_validator("missing_patch", required=("patch_size",))
_validate_corruption = params_validator("corruption", required=("swap_count", "swap_patch_size"))


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
    _validate_rotation(x.shape[1], **params)
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
    _validate_rotation4(x.shape[1], **params)
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
    side = _validate_missing_patch(x.shape[1], **params)["patch_size"]
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
    checked = _validate_corruption(x.shape[1], **params)
    side = checked["swap_patch_size"]
    pairs = _disjoint_square_pairs(as_generator(rng), (checked["swap_count"], x.shape[0]), x.shape[1], side)
    inputs = x.copy()
    if x.shape[0]:
        _swap_squares(inputs, pairs, side)
    return inputs, x.copy()


def missing_patch_region(images: np.ndarray, rng: np.random.Generator | int, **params: Any) -> np.ndarray:
    """The hole `missing_patch_batch` cuts with the same `rng` state: bool `(N, S, S)`, True inside it."""
    x = check_images(images)
    side = _validate_missing_patch(x.shape[1], **params)["patch_size"]
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


register(
    PretextTask(
        "rotation",
        "Rotation prediction (angle regression)",
        "angle",
        "mse",
        (),
        rotation_batch,
        _validate_rotation,
    )
)
register(
    PretextTask(
        "rotation4",
        "Rotation classification (0/90/180/270 degrees)",
        "rotation4",
        "sparse_categorical_crossentropy",
        (),
        rotation4_batch,
        _validate_rotation4,
    )
)
register(
    PretextTask(
        "missing_patch",
        "Missing patch (inpainting)",
        "image",
        "mse",
        ("patch_size",),
        missing_patch_batch,
        _validate_missing_patch,
        region=missing_patch_region,
        # Outside the hole the input is already the target: only the hole says what was learned.
        headline="region_mse",
        references=("identity", "meanfill", "biharmonic"),
    )
)
register(
    PretextTask(
        "corruption",
        "Corruption removal (patch swaps)",
        "image",
        "mse",
        ("swap_count", "swap_patch_size"),
        corruption_batch,
        _validate_corruption,
        region=corruption_region,
    )
)
