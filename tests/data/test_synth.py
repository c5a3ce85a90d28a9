"""Synthetic lesions: determinism, shapes, a real but imperfect class difference, dataset writing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy.stats import mannwhitneyu

from study.data import synth
from study.data.synth import MARKER_NAME, bayes_auc_bound, render_lesions, synthetic_dataset, write_dataset


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(size=n) < 0.5


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.jpg"))}


# ---------------------------------------------------------------------------------------------- render


@pytest.mark.parametrize("size", [16, 33, 64])
def test_render_shape_dtype_and_range(size: int) -> None:
    imgs = render_lesions(_labels(7), size, np.random.default_rng(1))
    assert imgs.shape == (7, size, size, 3)
    assert imgs.dtype == np.uint8
    assert imgs.std() > 5  # not a blank canvas


def test_render_same_state_same_images_and_different_seed_differs() -> None:
    labels = _labels(12)
    a = render_lesions(labels, 32, np.random.default_rng(5))
    b = render_lesions(labels, 32, np.random.default_rng(5))
    c = render_lesions(labels, 32, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)
    # every image changes with the seed, not just a few pixels of noise
    assert all(np.abs(a[i].astype(int) - c[i].astype(int)).mean() > 2 for i in range(len(labels)))


def test_render_does_not_touch_global_numpy_state() -> None:
    np.random.seed(0)
    before = np.random.get_state()[1].copy()
    render_lesions(_labels(3), 16, np.random.default_rng(0))
    np.testing.assert_array_equal(np.random.get_state()[1], before)


def test_same_scene_at_any_resolution() -> None:
    labels = _labels(6)
    big = render_lesions(labels, 64, np.random.default_rng(9)).astype(np.float32)
    small = render_lesions(labels, 32, np.random.default_rng(9)).astype(np.float32)
    other = render_lesions(labels, 32, np.random.default_rng(10)).astype(np.float32)
    pooled = big.reshape(6, 32, 2, 32, 2, 3).mean(axis=(2, 4))  # 64 px -> 32 px by 2x2 averaging
    same = np.abs(pooled - small).mean()
    assert same < 8 and same < 0.3 * np.abs(other - small).mean()


def test_render_empty_batch() -> None:
    assert render_lesions(np.zeros(0, bool), 20, np.random.default_rng(0)).shape == (0, 20, 20, 3)


@pytest.mark.parametrize(
    "labels, size, rng, match",
    [
        (np.array([0, 1]), 32, np.random.default_rng(0), "bool"),
        (np.zeros((2, 2), bool), 32, np.random.default_rng(0), "1-D"),
        (np.zeros(2, bool), 8, np.random.default_rng(0), "size"),
        (np.zeros(2, bool), 32.0, np.random.default_rng(0), "size"),
        (np.zeros(2, bool), 32, 0, "Generator"),
    ],
)
def test_render_rejects_bad_arguments(labels, size, rng, match) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        render_lesions(labels, size, rng)


def _simple_features(imgs: np.ndarray) -> dict[str, np.ndarray]:
    """Crude hand-made features: lesion area, lesion darkness, colour spread inside the lesion."""
    x = imgs.astype(np.float32)
    gray = x.mean(-1)
    skin = np.median(gray.reshape(len(x), -1), axis=1)
    mask = gray < 0.8 * skin[:, None, None]
    area = mask.mean(axis=(1, 2))
    dark = np.array([-(g[m].mean()) if m.any() else -255.0 for g, m in zip(gray, mask)])
    spread = np.array([xi[m].std(0).mean() if m.sum() > 2 else 0.0 for xi, m in zip(x, mask)])
    return {"area": area, "darkness": dark, "colour_spread": spread}


def _auc(feature: np.ndarray, labels: np.ndarray) -> float:
    u = mannwhitneyu(feature[labels], feature[~labels]).statistic
    return float(u / (labels.sum() * (~labels).sum()))


def test_classes_differ_like_melanoma_but_overlap() -> None:
    labels = _labels(400, seed=3)
    feats = _simple_features(render_lesions(labels, 48, np.random.default_rng(11)))
    aucs = {name: _auc(f, labels) for name, f in feats.items()}
    # Malignant: larger, darker, more colours — each cue is real...
    assert aucs["area"] > 0.65, aucs
    assert aucs["darkness"] > 0.6, aucs
    assert aucs["colour_spread"] > 0.52, aucs
    # ...but no single cue separates the classes.
    assert max(aucs.values()) < 0.9, aucs
    assert feats["area"][labels].mean() > feats["area"][~labels].mean()


def test_bayes_bound_is_informative_but_below_one() -> None:
    assert 0.75 < bayes_auc_bound() < 0.98
    assert bayes_auc_bound(0.0) == pytest.approx(0.5)
    assert bayes_auc_bound(1.0) < bayes_auc_bound(2.0)


# ---------------------------------------------------------------------------------------------- write


def test_write_dataset_layout_counts_and_marker(tmp_path: Path) -> None:
    counts = write_dataset(tmp_path / "d", n_train=20, n_test=10, size=24, seed=1, malignant_fraction=0.3)
    assert counts == {"train": {"benign": 14, "malignant": 6}, "test": {"benign": 7, "malignant": 3}}
    for split, by_class in counts.items():
        for cls, n in by_class.items():
            files = sorted((tmp_path / "d" / split / cls).iterdir())
            assert len(files) == n
            assert all(f.suffix == ".jpg" for f in files)
            with Image.open(files[0]) as im:
                assert (im.format, im.mode, im.size) == ("JPEG", "RGB", (24, 24))
    marker = json.loads((tmp_path / "d" / MARKER_NAME).read_text())
    assert marker["counts"] == counts and marker["seed"] == 1


def test_write_dataset_is_byte_identical_for_a_seed(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", 12, 6, 24, seed=3)
    write_dataset(tmp_path / "b", 12, 6, 24, seed=3)
    write_dataset(tmp_path / "c", 12, 6, 24, seed=4)
    a, b, c = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[k] != c[k] for k in a)


def test_test_split_size_does_not_change_train_images(tmp_path: Path) -> None:
    write_dataset(tmp_path / "a", 12, 6, 24, seed=3)
    write_dataset(tmp_path / "b", 12, 10, 24, seed=3)
    train = lambda root: {k: v for k, v in _files(root).items() if k.startswith("train/")}  # noqa: E731
    assert train(tmp_path / "a") == train(tmp_path / "b")


def test_write_dataset_refuses_foreign_non_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty.*overwrite=True"):
        write_dataset(out, 6, 4, 16, seed=0)
    assert (out / "precious.txt").read_text() == "keep me"
    write_dataset(out, 6, 4, 16, seed=0, overwrite=True)
    assert (out / "precious.txt").exists() and (out / MARKER_NAME).exists()


def test_write_dataset_replaces_previous_synthetic_output_without_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "d"
    write_dataset(out, 20, 10, 16, seed=0)
    counts = write_dataset(out, 6, 4, 16, seed=0)  # a previous synth output: allowed without overwrite
    n_files = len(list(out.rglob("*.jpg")))
    assert n_files == sum(n for split in counts.values() for n in split.values()) == 10


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_train": 1}, "n_train"),
        ({"n_test": 0}, "n_test"),
        ({"size": 8}, "size"),
        ({"seed": -1}, "seed"),
        ({"malignant_fraction": 0.0}, "malignant_fraction"),
        ({"malignant_fraction": 1.2}, "malignant_fraction"),
        ({"n_train": 3, "malignant_fraction": 0.1}, "each class needs at least 2"),
        ({"n_train": 4, "malignant_fraction": 0.3}, "each class needs at least 2"),
    ],
)
def test_write_dataset_validates_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"n_train": 10, "n_test": 10, "size": 16, "seed": 0} | kwargs
    with pytest.raises(ValueError, match=match):
        write_dataset(tmp_path / "d", **args)
    assert not (tmp_path / "d").exists()  # nothing half-written


def test_synthetic_dataset_generates_once_then_reuses(tmp_path: Path, monkeypatch) -> None:
    first = synthetic_dataset(tmp_path, 6, 4, 16, seed=2)
    before = _files(first)
    assert (first / MARKER_NAME).is_file() and len(before) == 10

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although the dataset was cached")

    monkeypatch.setattr(synth, "write_dataset", fail)
    second = synthetic_dataset(tmp_path, 6, 4, 16, seed=2)
    assert second == first and _files(second) == before
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp folders left behind


def test_synthetic_dataset_parameters_give_separate_folders(tmp_path: Path) -> None:
    a = synthetic_dataset(tmp_path, 6, 4, 16, seed=2)
    b = synthetic_dataset(tmp_path, 6, 4, 16, seed=3)
    assert a != b and _files(a) != _files(b)


def test_synthetic_dataset_refuses_damaged_folder(tmp_path: Path) -> None:
    path = synthetic_dataset(tmp_path, 6, 4, 16, seed=2)
    (path / MARKER_NAME).unlink()
    with pytest.raises(ValueError, match="delete that folder"):
        synthetic_dataset(tmp_path, 6, 4, 16, seed=2)
