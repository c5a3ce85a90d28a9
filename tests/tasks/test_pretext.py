"""Properties of the pretext transforms and their registry (study/tasks/registry.py)."""

from __future__ import annotations

import doctest
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from skimage.transform import rotate as skimage_rotate

from study.tasks import paper
from study.tasks import registry as pretext
from study.tasks.registry import PretextTask, default_params, get_task, register


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    # values 1..255 so that a blacked-out pixel is always a change
    return np.random.default_rng(seed).integers(1, 256, size=(n, size, size, 3), dtype=np.uint8)


def unique_pixel_images(n: int, size: int) -> np.ndarray:
    """Images whose pixels are all different within an image (size <= 256), so moves are traceable."""
    ids = np.arange(size * size)
    img = np.stack([ids // 256, ids % 256, np.full_like(ids, 7)], axis=-1).reshape(size, size, 3)
    return np.repeat(img[None].astype(np.uint8), n, axis=0)


def pixel_ids(img: np.ndarray) -> np.ndarray:
    """(S, S) integer id of each RGB pixel."""
    return img.astype(np.int64) @ np.array([65536, 256, 1])


# ---------------------------------------------------------------- registry


def test_registry_holds_the_papers_tasks_with_contract_fields():
    assert set(pretext.TASKS) >= {"rotation", "rotation4", "missing_patch", "corruption"}
    expect = {
        "rotation": ("angle", "mse", ()),
        "rotation4": ("rotation4", "sparse_categorical_crossentropy", ()),
        "missing_patch": ("image", "mse", ("patch_size",)),
        "corruption": ("image", "mse", ("swap_count", "swap_patch_size")),
    }
    for name, (head, loss, params) in expect.items():
        task = get_task(name)
        assert (task.name, task.head, task.loss, task.param_names) == (name, head, loss, params)
        assert task.title


def test_none_is_the_baseline_not_a_task():
    with pytest.raises(ValueError, match="baseline"):
        get_task("none")
    assert default_params("none", 64) == {}


def test_unknown_task_lists_known_tasks():
    with pytest.raises(ValueError, match="rotation4.*missing_patch.*corruption"):
        get_task("jigsaw")


def test_register_rejects_duplicates_and_bad_definitions(monkeypatch):
    monkeypatch.setattr(pretext, "TASKS", dict(pretext.TASKS))
    with pytest.raises(ValueError, match="already registered"):
        register(get_task("rotation"))
    with pytest.raises(ValueError, match="head"):
        PretextTask("x", "X", "logits", "mse", (), lambda i, r: (i, i), lambda s: {})
    with pytest.raises(ValueError, match="params"):
        PretextTask("x", "X", "image", "mse", ("tile_count",), lambda i, r: (i, i), lambda s: {})


def test_module_docstring_example_adds_a_task(monkeypatch):
    """The docstring's recipe works as written: one definition registers a usable task."""
    monkeypatch.setattr(pretext, "TASKS", dict(pretext.TASKS))
    runner = doctest.DocTestRunner(verbose=False)
    for test in doctest.DocTestFinder().find(pretext):
        runner.run(test, clear_globs=False)  # keep the example's functions alive for the check below
    assert runner.tries > 0 and runner.failures == 0
    task = pretext.TASKS["colorization"]
    x = random_images(3, 8)
    inputs, targets = task.make_batch(x, np.random.default_rng(0), **default_params("colorization", 8))
    # its test: inputs are grey (equal channels) while targets are the colour originals
    assert np.array_equal(inputs[..., 0], inputs[..., 1]) and np.array_equal(inputs[..., 1], inputs[..., 2])
    assert np.array_equal(targets, x)


# ---------------------------------------------------------------- contract of every task


@pytest.mark.parametrize("name", ["rotation", "rotation4", "missing_patch", "corruption"])
@pytest.mark.parametrize("size", [9, 16])
def test_batch_contract_determinism_and_purity(name, size):
    task = get_task(name)
    params = default_params(name, size)
    x = random_images(6, size)
    before = x.copy()
    inputs, targets = task.make_batch(x, np.random.default_rng(3), **params)
    assert np.array_equal(x, before), "make_batch must not modify its input"
    assert inputs.dtype == np.uint8 and inputs.shape == x.shape
    if task.head == "angle":
        assert targets.dtype == np.float32 and targets.shape == (6,)
        assert np.all((targets >= 0) & (targets < 1))
    elif task.head == "rotation4":
        assert targets.dtype == np.int64 and targets.shape == (6,) and set(targets) <= {0, 1, 2, 3}
    else:
        assert targets.dtype == np.uint8 and np.array_equal(targets, x) and targets is not x
    # same seed (int or Generator) -> same batch; another seed -> another batch
    again = task.make_batch(x, 3, **params)
    assert np.array_equal(inputs, again[0]) and np.array_equal(targets, again[1])
    other = task.make_batch(x, 4, **params)
    assert not np.array_equal(inputs, other[0])


@pytest.mark.parametrize("name", ["rotation", "rotation4", "missing_patch", "corruption"])
def test_empty_batch(name):
    empty = np.zeros((0, 16, 16, 3), np.uint8)
    inputs, targets = get_task(name).make_batch(empty, 0, **default_params(name, 16))
    assert inputs.shape == (0, 16, 16, 3) and len(targets) == 0


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\(N, S, S, 3\)"),
        (np.zeros((2, 8, 8, 1), np.uint8), r"\(N, S, S, 3\)"),
        (np.zeros((2, 8, 6, 3), np.uint8), "square"),
        ([[[[0, 0, 0]]]], "numpy"),
    ],
)
def test_bad_images_raise(images, match):
    for name in [n for n, task in pretext.TASKS.items() if task.make_batch is not None]:
        with pytest.raises(ValueError, match=match):
            get_task(name).make_batch(images, 0, **default_params(name, 8))


@pytest.mark.parametrize("rng", [None, -1, 1.5, np.random.RandomState(0)])
def test_bad_rng_raises(rng):
    with pytest.raises(ValueError, match="rng"):
        get_task("rotation4").make_batch(random_images(1, 8), rng)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("missing_patch", {"patch_size": 17}, "at most 16"),
        ("missing_patch", {"patch_size": 0}, ">= 1"),
        ("missing_patch", {}, "needs patch_size"),
        ("missing_patch", {"patch_size": 4.0}, "integer"),
        ("missing_patch", {"patch_size": 4, "swap_count": 3}, "does not use"),
        ("corruption", {"swap_count": 10, "swap_patch_size": 9}, "at most 8"),
        ("corruption", {"swap_count": 0, "swap_patch_size": 3}, "swap_count must be >= 1"),
        ("corruption", {"swap_patch_size": 3}, "needs swap_count"),
        ("rotation", {"patch_size": 3}, "does not use"),
    ],
)
def test_bad_params_raise_with_the_fix(name, params, match):
    task = get_task(name)
    with pytest.raises(ValueError, match=match):
        task.validate(16, **params)
    with pytest.raises(ValueError, match=match):
        task.make_batch(random_images(1, 16), 0, **params)


def test_unused_params_may_be_none():
    # a flat TrialConfig carries None for parameters the task does not use
    get_task("rotation").validate(16, patch_size=None, swap_count=None, swap_patch_size=None)
    get_task("missing_patch").make_batch(random_images(1, 16), 0, patch_size=4, swap_count=None)


# ---------------------------------------------------------------- default_params


def test_default_params_are_the_paper_values_at_224():
    assert default_params("missing_patch", 224) == {"patch_size": 75}
    assert default_params("corruption", 224) == {"swap_count": 100, "swap_patch_size": 30}
    assert default_params("rotation", 224) == {} == default_params("rotation4", 224)


@settings(max_examples=200, deadline=None)
@given(size=st.integers(2, 2048))
def test_default_params_scale_and_stay_valid(size):
    mp = default_params("missing_patch", size)["patch_size"]
    cp = default_params("corruption", size)
    assert abs(mp - max(1, 75 * size / 224)) <= 0.5
    assert abs(cp["swap_patch_size"] - max(1, 30 * size / 224)) <= 0.5
    assert cp["swap_count"] == 100
    assert mp <= default_params("missing_patch", size + 1)["patch_size"]


def test_default_params_rejects_bad_size():
    with pytest.raises(ValueError, match="image_size"):
        default_params("missing_patch", 0)
    with pytest.raises(ValueError, match="swap_patch_size"):
        default_params("corruption", 1)


# ---------------------------------------------------------------- rotation


def test_rotation_uses_the_recorded_angle_exactly():
    x = random_images(5, 20, seed=1)
    inputs, targets = get_task("rotation").make_batch(x, np.random.default_rng(7))
    for img, out, t in zip(x, inputs, targets):
        ref = skimage_rotate(img, float(t) * 360.0, order=1, mode="constant", cval=0, preserve_range=True)
        assert np.array_equal(out, np.rint(ref).astype(np.uint8))


def test_rotation_keeps_the_inscribed_disc_and_blackens_corners():
    size = 32
    white = np.full((400, size, size, 3), 255, np.uint8)
    inputs, targets = get_task("rotation").make_batch(white, 11)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    disc = np.hypot(yy, xx) < size / 2 - 2
    assert np.all(inputs[:, disc] == 255)  # no content lost near the centre
    deg = (targets.astype(np.float64) * 360) % 90
    oblique = (deg > 20) & (deg < 70)
    assert oblique.any() and np.all(inputs[oblique, 0, 0] == 0)  # corners filled black


def test_rotation_angles_are_uniform():
    _, targets = get_task("rotation").make_batch(np.zeros((3000, 4, 4, 3), np.uint8), 5)
    assert stats.kstest(targets, "uniform").pvalue > 1e-3


# ---------------------------------------------------------------- rotation4


def test_rotation4_inputs_are_rot90_by_the_label():
    x = random_images(64, 12, seed=2)
    inputs, k = get_task("rotation4").make_batch(x, 9)
    assert set(k) == {0, 1, 2, 3}
    for img, out, label in zip(x, inputs, k):
        assert np.array_equal(out, np.rot90(img, label))
        assert np.array_equal(np.rot90(out, -label), img)


# ---------------------------------------------------------------- missing patch


@pytest.mark.parametrize("size, side", [(16, 5), (16, 16), (9, 1), (224, 75)])
def test_missing_patch_blacks_exactly_one_square(size, side):
    x = random_images(12, size, seed=side)
    inputs, _ = get_task("missing_patch").make_batch(x, 1, patch_size=side)
    for img, out in zip(x, inputs):
        black = np.all(out == 0, axis=-1)
        rows, cols = np.nonzero(black)
        assert black.sum() == side * side
        assert rows.max() - rows.min() + 1 == side and cols.max() - cols.min() + 1 == side
        assert np.array_equal(out[~black], img[~black])  # the rest is untouched


def test_missing_patch_positions_cover_the_whole_range():
    size, side = 8, 3
    x = random_images(2000, size)
    inputs, _ = get_task("missing_patch").make_batch(x, 4, patch_size=side)
    black = np.all(inputs == 0, axis=-1)
    top = black.any(axis=2).argmax(axis=1)
    left = black.any(axis=1).argmax(axis=1)
    assert set(top) == set(range(size - side + 1)) == set(left)


# ---------------------------------------------------------------- corruption


@pytest.mark.parametrize("size, side, count", [(16, 3, 50), (16, 8, 20), (10, 1, 30), (64, 9, 100)])
def test_corruption_permutes_pixels(size, side, count):
    x = unique_pixel_images(4, size)
    inputs, targets = get_task("corruption").make_batch(x, 2, swap_count=count, swap_patch_size=side)
    assert np.array_equal(targets, x)
    for img, out in zip(x, inputs):
        assert np.array_equal(np.sort(pixel_ids(out).ravel()), np.sort(pixel_ids(img).ravel()))
        assert not np.array_equal(out, img)


def test_one_swap_exchanges_two_disjoint_squares():
    size, side = 12, 4
    x = unique_pixel_images(200, size)
    inputs, _ = get_task("corruption").make_batch(x, 8, swap_count=1, swap_patch_size=side)
    ids = pixel_ids(x[0])
    for out in inputs:
        moved = pixel_ids(out) != ids
        assert moved.sum() == 2 * side * side  # all pixels of both squares moved, none elsewhere
        # the block that landed at one square is the other square, unchanged
        rows, cols = np.nonzero(moved)
        r0, c0 = rows[0], cols[0]
        block = pixel_ids(out)[r0 : r0 + side, c0 : c0 + side]
        src_r, src_c = np.argwhere(ids == block[0, 0])[0]
        assert np.array_equal(block, ids[src_r : src_r + side, src_c : src_c + side])


def _all_disjoint_pairs(size: int, side: int) -> list[tuple[int, int, int, int]]:
    m = size - side + 1
    corners = list(itertools.product(range(m), range(m)))
    return [
        (ra, ca, rb, cb)
        for (ra, ca), (rb, cb) in itertools.product(corners, corners)
        if abs(ra - rb) >= side or abs(ca - cb) >= side
    ]


@pytest.mark.parametrize("size, side", [(6, 2), (4, 2), (7, 3), (5, 1)])
def test_swap_pairs_are_uniform_over_disjoint_pairs(size, side):
    support = _all_disjoint_pairs(size, side)
    index = {pair: i for i, pair in enumerate(support)}
    n_draws = 60 * len(support)
    pairs = paper._disjoint_square_pairs(np.random.default_rng(0), (n_draws,), size, side)
    counts = np.zeros(len(support))
    for pair in map(tuple, pairs.tolist()):
        counts[index[pair]] += 1  # KeyError here = an overlapping or out-of-range pair
    assert np.all(counts > 0)
    assert stats.chisquare(counts).pvalue > 1e-3


@settings(max_examples=60, deadline=None)
@given(size=st.integers(2, 300), side_frac=st.floats(0, 1), seed=st.integers(0, 2**32 - 1))
def test_swap_pairs_disjoint_and_inside(size, side_frac, seed):
    side = max(1, int(side_frac * (size // 2)))
    pairs = paper._disjoint_square_pairs(np.random.default_rng(seed), (5, 7), size, side)
    assert pairs.shape == (5, 7, 4) and pairs.dtype == np.int64
    assert pairs.min() >= 0 and pairs.max() <= size - side
    ra, ca, rb, cb = np.moveaxis(pairs, -1, 0)
    assert np.all((np.abs(ra - rb) >= side) | (np.abs(ca - cb) >= side))


def test_rotation_by_zero_is_the_identity_and_by_90_matches_rot90():
    from study.tasks.paper import rotate_images

    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(3, 16, 16, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rotate_images(x, np.zeros(3)), x)
    np.testing.assert_array_equal(rotate_images(x, np.full(3, 360.0)), x)
    # Counter-clockwise quarter turn, as np.rot90 on the (row, col) axes.
    np.testing.assert_array_equal(rotate_images(x, np.full(3, 90.0)), np.rot90(x, 1, axes=(1, 2)))
    with pytest.raises(ValueError, match="one angle per image"):
        rotate_images(x, np.zeros(2))
