"""The real ISIC sample in ../shared/data/isic9_binary, when present (a fresh clone does not have it)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from study.data import check_dataset, load_dataset

ISIC = Path(__file__).parents[2] / ".." / "shared" / "data" / "isic9_binary"

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not ISIC.is_dir(), reason=f"real sample data not found at {ISIC}"),
]


def test_check_reports_documented_counts() -> None:
    report = check_dataset(ISIC)
    assert report.ok, report.format()
    assert report.counts == {
        "train": {"benign": 973, "malignant": 358},
        "test": {"benign": 51, "malignant": 16},
    }
    assert report.size_stats["n_images"] == 1398
    assert report.duplicates["exact"] == []  # the data README says byte-identical files were dropped


def test_loads_at_64_px_and_second_load_uses_the_cache(tmp_path: Path) -> None:
    d = load_dataset(ISIC, 64, cache_dir=tmp_path)
    assert d.train.images.shape == (1331, 64, 64, 3) and d.test.images.shape == (67, 64, 64, 3)
    assert d.train.labels.sum() == 358 and d.test.labels.sum() == 16
    assert d.train.images.dtype == np.uint8 and 40 < d.train.images.mean() < 230
    start = time.perf_counter()
    again = load_dataset(ISIC, 64, cache_dir=tmp_path)
    assert time.perf_counter() - start < 5.0
    np.testing.assert_array_equal(again.test.images, d.test.images)
    assert again.fingerprint == d.fingerprint
