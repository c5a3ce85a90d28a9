"""The phases on a dataset as the decode cache gives it (images a read-only memory map shared by the trials of
a machine): no task writes into it, and the fine-tune gathers large inputs batch by batch (no copy of a split)
with bitwise the results of gathering them up front."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from study.data import DecodedData, Split  # noqa: E402
from study.data import cache as decode_cache  # noqa: E402
from study.spec.config import TrialConfig  # noqa: E402
from study.tasks import registry, views  # noqa: E402
from study.train import batches as train_batches  # noqa: E402
from study.train import phases as training  # noqa: E402

SIZE = 32
TRIAL = TrialConfig(
    encoder="small",
    encoder_widths=(4, 8, 8, 16),
    image_size=SIZE,
    seed=3,
    threads=1,
    finetune_epochs=3,
    lr=1e-2,
    batch_size=8,
    patiences=(0, 1),
)


@pytest.fixture(scope="module", autouse=True)
def _backend_threads():
    training.configure(1)


def _split(rng: np.random.Generator, n: int, name: str) -> Split:
    labels = np.arange(n, dtype=np.int64) % 2
    base = rng.normal(150, 40, (n, SIZE, SIZE, 3)) - 50 * labels[:, None, None, None]
    return Split(
        np.clip(np.rint(base), 0, 255).astype(np.uint8), labels, [f"{name}/{i}.png" for i in range(n)]
    )


@pytest.fixture(scope="module")
def in_memory() -> DecodedData:
    rng = np.random.default_rng(11)
    return DecodedData(_split(rng, 40, "train"), _split(rng, 16, "test"), "mapped-test", "<memory>", SIZE, [])


@pytest.fixture(scope="module")
def mapped(in_memory, tmp_path_factory) -> DecodedData:
    """`in_memory` written to a decode-cache entry and loaded back: images memory-mapped, read-only."""
    entry = tmp_path_factory.mktemp("cache") / "entry"
    decode_cache._save_cache(entry, in_memory)
    data = decode_cache._load_cache(entry, "<memory>", in_memory.fingerprint, SIZE)
    assert isinstance(data.test.images.base, np.memmap) and not data.test.images.flags.writeable
    return data


@pytest.mark.parametrize("name", sorted(registry.TASKS))
def test_no_task_writes_into_the_shared_images(name, mapped):
    """`make_batch` and `region` read the test images as the pretext phase passes them (the mapped array
    itself): a task writing into its input would raise here, and would have changed every later trial's data."""
    task = registry.get_task(name)
    params = registry.resolve_params(name, SIZE, {})
    before = np.array(mapped.test.images)
    if task.step is not None:  # a two-view task: its test views come from the test images themselves
        vp = views.validate_view_params(SIZE, **dict(task.step.settings(SIZE, params).view_params))
        views.two_views(mapped.test.images, np.random.default_rng(0), **vp)
    elif task.make_batch is not None:
        task.make_batch(mapped.test.images, np.random.default_rng(0), **params)
        if task.region is not None:
            task.region(mapped.test.images, np.random.default_rng(0), **params)
    else:
        pytest.skip(f"{name} trains with a step of its own")
    np.testing.assert_array_equal(mapped.test.images, before)


def test_large_inputs_gathered_batch_by_batch_give_bitwise_the_same_finetune(in_memory, mapped, monkeypatch):
    """With every input counted as large (`KEEP_BATCHES_MAX_BYTES = 0`), the fine-tune reads its training
    batches (`RowBatches`) and evaluation batches (`GatheredBatches`) straight from the mapped dataset; its
    history, probe and weights equal those of the in-memory run that gathers them once up front."""
    reference = training.run_finetune(TRIAL, in_memory)
    used = []

    class Rows(train_batches.RowBatches):
        def __init__(self, x, *args):
            used.append(("rows", x))
            super().__init__(x, *args)

    class Gathered(train_batches.GatheredBatches):
        def __init__(self, parts, *args):
            used.append(("eval", parts[0][0]))
            super().__init__(parts, *args)

    monkeypatch.setattr(train_batches, "KEEP_BATCHES_MAX_BYTES", 0)
    monkeypatch.setattr(train_batches, "RowBatches", Rows)
    monkeypatch.setattr(train_batches, "GatheredBatches", Gathered)
    result = training.run_finetune(TRIAL, mapped)
    assert [kind for kind, _ in used] == ["rows", "eval"]
    assert all(x is mapped.train.images for _, x in used)  # the mapped array itself, not a copy of a split
    assert result.history == reference.history and result.regimes == reference.regimes
    assert {k: v for k, v in result.probe.items() if k != "probe_s"} == {
        k: v for k, v in reference.probe.items() if k != "probe_s"
    }
    for a, b in zip(result.model_weights, reference.model_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def test_gathered_batches_are_the_batches_of_the_concatenated_rows(mapped):
    rows = np.array([5, 0, 33, 7, 2, 39, 1])
    parts = [(mapped.train.images, rows), (mapped.test.images, None)]
    whole = np.concatenate([mapped.train.images[rows], mapped.test.images])
    gathered = train_batches.GatheredBatches(parts, 5)
    expected = train_batches.tensor_batches(whole, 5)
    assert len(gathered) == len(expected) == 5  # batch 1 spans both parts
    for a, b in zip(gathered, expected, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(IndexError):
        gathered[len(gathered)]
