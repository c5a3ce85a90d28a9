"""Bad input through the `study` command: `study data check DIR` and `study run --data DIR` (README's table).

One planted defect per case, in a private copy of the tiny dataset. The commands run in-process
(`study.cli.main`): bad data is rejected before Ray starts, and an uncaught exception would fail the test, so
"no traceback" is checked by construction as well as on the output. `study run` is stopped where Ray would
start (`runner.init_ray` replaced), so a case that wrongly passes the check never launches a study.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image
from test_data import _png16_rgb, run_as_nobody, world_readable_copy

from study.cli import main
from study.run import runner


def _permissions_enforced() -> bool:
    """False as root (or with CAP_DAC_OVERRIDE): a file with mode 000 stays readable."""
    fd, path = tempfile.mkstemp()
    os.close(fd)
    try:
        os.chmod(path, 0)
        with open(path, "rb"):
            return False
    except PermissionError:
        return True
    finally:
        os.unlink(path)


PERMISSIONS_ENFORCED = _permissions_enforced()


def _pattern(seed: int) -> np.ndarray:
    """A coarse random (32, 32) pattern in [0, 1): planted images are not near-duplicates of anything."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.uniform(size=(4, 4)), np.ones((8, 8)))


def _png_chunk(tag: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height 8-bit grey pixels (as a decompression bomb does)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


# ------------------------------------------------------------------------------------------- planting
# Each planter changes the dataset at `root`; the case says what must be reported. Sources are the generator's
# own files (`train_00000.jpg`, ...), so planters can be combined in one folder without affecting each other.


def _originals(root: Path, split: str, cls: str) -> list[Path]:
    return sorted((root / split / cls).glob(f"{split}_*.jpg"))


def _truncated_jpeg(root: Path) -> None:
    raw = _originals(root, "train", "malignant")[0].read_bytes()
    (root / "train" / "malignant" / "cut.jpg").write_bytes(raw[: len(raw) // 2])


def _zero_byte(root: Path) -> None:
    (root / "train" / "benign" / "empty.jpg").write_bytes(b"")


def _text_as_jpeg(root: Path) -> None:
    (root / "train" / "benign" / "notes.jpg").write_text("these are my notes, not a picture\n")


def _huge(root: Path) -> None:
    # 20000 x 20000 = 4e8 pixels: over twice PIL's default limit (89.5 Mpx), so PIL refuses it on open.
    (root / "train" / "benign" / "huge.png").write_bytes(_huge_png_header(20000, 20000))


def _empty_class(root: Path) -> None:
    for f in _originals(root, "test", "benign"):
        f.unlink()


def _missing_test(root: Path) -> None:
    shutil.rmtree(root / "test")


def _unexpected_class(root: Path) -> None:
    (root / "train" / "melanoma").mkdir()
    shutil.copy(_originals(root, "train", "malignant")[0], root / "train" / "melanoma" / "m.jpg")


def _symlink_loop_dir(root: Path) -> None:
    (root / "train" / "benign" / "loop").symlink_to(root / "train")


def _symlink_loop_file(root: Path) -> None:
    (root / "train" / "benign" / "self.jpg").symlink_to(root / "train" / "benign" / "self.jpg")


def _unreadable(root: Path) -> None:
    locked = root / "train" / "benign" / "locked.png"
    Image.fromarray((255 * _pattern(7)).astype(np.uint8)).save(locked)
    locked.chmod(0)


def _leak(root: Path) -> None:
    shutil.copy(_originals(root, "train", "benign")[0], root / "test" / "malignant" / "leaked.jpg")


def _conflict(root: Path) -> None:
    shutil.copy(_originals(root, "train", "benign")[1], root / "train" / "malignant" / "conflict.jpg")


def _rgba(root: Path) -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (200 * _pattern(1)).astype(np.uint8)[..., None]
    rgba[:, :16, 3] = 255  # left half opaque, right half transparent
    Image.fromarray(rgba, "RGBA").save(root / "train" / "benign" / "alpha.png")


def _grayscale(root: Path) -> None:
    Image.fromarray((60 + 120 * _pattern(2)).astype(np.uint8), "L").save(
        root / "train" / "malignant" / "gray.jpg"
    )


def _gray16(root: Path) -> None:
    Image.fromarray((30000 + 35535 * _pattern(3)).astype(np.uint16)).save(
        root / "train" / "benign" / "deep16.png"
    )


def _rgb16(root: Path) -> None:
    half = (0x8000 * _pattern(4)).astype(np.uint16)
    (root / "train" / "malignant" / "deep48.png").write_bytes(
        _png16_rgb(np.repeat(half[..., None], 3, axis=2))
    )


def _palette(root: Path) -> None:
    img = Image.fromarray((255 * _pattern(5)).astype(np.uint8)).convert("RGB").convert("P")
    img.save(root / "test" / "malignant" / "palette.png")


def _tiny(root: Path) -> None:
    # 8 x 8 px: smaller than the smoke/demo missing-patch size (11 px at 32 px) as well as SMALL_IMAGE_PX.
    blocks = np.random.default_rng(6).integers(0, 255, (4, 4, 3), dtype=np.uint8)
    Image.fromarray(np.kron(blocks, np.ones((2, 2, 1), np.uint8))).save(
        root / "train" / "malignant" / "tiny.png"
    )


def _dangling_symlink(root: Path) -> None:
    (root / "train" / "benign" / "gone.jpg").symlink_to(root / "train" / "benign" / "deleted.jpg")


def _nested_folder(root: Path) -> None:
    nested = root / "train" / "benign" / "more"
    nested.mkdir()
    shutil.copy(_originals(root, "train", "benign")[0], nested / "again.jpg")


def _class_is_a_file(root: Path) -> None:
    shutil.rmtree(root / "test" / "benign")
    (root / "test" / "benign").write_text("a file where a class folder goes\n")


def _split_is_a_file(root: Path) -> None:
    shutil.rmtree(root / "test")
    (root / "test").write_text("a file where a split folder goes\n")


def _one_training_image(root: Path) -> None:
    for f in _originals(root, "train", "malignant")[1:]:
        f.unlink()


def _link_to_outside_text(root: Path) -> None:
    secret = root.parent / "private.txt"  # outside the dataset folder, as /etc/os-release would be
    secret.write_text("PRIVATE_KEY=do-not-print-me\n")
    (root / "train" / "benign" / "x.png").symlink_to(secret)


def _link_to_outside_image(root: Path) -> None:
    store = root.parent / "store"
    store.mkdir()
    Image.fromarray((255 * _pattern(8)).astype(np.uint8)).convert("RGB").save(store / "lesion.png")
    (root / "train" / "benign" / "linked.png").symlink_to(store / "lesion.png")


@dataclass(frozen=True)
class Case:
    plant: Callable[[Path], None]
    problem: bool  # True: unusable (exit 1); False: a warning, the data stays usable (exit 0)
    names: str  # the file or folder the line must name
    says: tuple[str, ...]  # what the line must also say: the reason and the fix
    # Image counts per (split, class) relative to the clean copy: where the planted files are labelled.
    delta: dict[tuple[str, str], int] = field(default_factory=dict)
    zero: tuple[tuple[str, str], ...] = ()  # (split, class) counts that must be 0 after planting
    marks: tuple = ()
    exact: dict[tuple[str, str], int] = field(default_factory=dict)  # (split, class) counts after planting
    never: tuple[str, ...] = ()  # text that must appear nowhere in the output (file contents, wrong causes)
    conversion: bool = True  # a warning case: the warning is a conversion applied when decoding
    alone: bool = False  # cannot be planted together with the other cases (it removes what they use)


CASES = {
    "corrupt-jpeg": Case(
        _truncated_jpeg,
        True,
        "train/malignant/cut.jpg",
        ("corrupt or truncated", "re-copy it or remove it"),
        {("train", "malignant"): 1},
    ),
    "zero-byte": Case(
        _zero_byte, True, "train/benign/empty.jpg", ("0 bytes", "delete it"), {("train", "benign"): 1}
    ),
    "text-named-jpg": Case(
        _text_as_jpeg,
        True,
        "train/benign/notes.jpg",
        ("not an image", "a text file, 34 bytes", "remove it"),
        {("train", "benign"): 1},
        never=("these are my notes",),  # described, never quoted
    ),
    "huge-image": Case(
        _huge, True, "train/benign/huge.png", ("decompression-bomb", "downscale"), {("train", "benign"): 1}
    ),
    "empty-class-folder": Case(
        _empty_class, True, "test/benign/", ("holds no", "add images"), zero=(("test", "benign"),)
    ),
    "missing-test-split": Case(
        _missing_test,
        True,
        "test/",
        ("missing split folder", "create"),
        zero=(("test", "benign"), ("test", "malignant")),
    ),
    "unexpected-class-name": Case(
        _unexpected_class,
        True,
        "train/melanoma/",
        ("benign/", "malignant/", "labels are never guessed", "rename"),
    ),
    "symlink-loop-folder": Case(
        _symlink_loop_dir, True, "train/benign/loop/", ("nested folder", "remove it")
    ),
    "symlink-loop-file": Case(
        _symlink_loop_file, True, "train/benign/self.jpg", ("looping symlink", "remove it")
    ),
    "unreadable-file": Case(
        _unreadable,
        True,
        "train/benign/locked.png",
        ("permission denied", "chmod"),
        {("train", "benign"): 1},
        marks=(
            pytest.mark.skipif(
                not PERMISSIONS_ENFORCED, reason="root reads files whatever their permissions"
            ),
        ),
    ),
    "duplicate-train-test": Case(
        _leak,
        True,
        "test/malignant/leaked.jpg",
        ("byte-identical", "train/benign/", "leakage", "remove it"),
        {("test", "malignant"): 1},
    ),
    "duplicate-across-classes": Case(
        _conflict,
        True,
        "train/malignant/conflict.jpg",
        ("byte-identical", "train/benign/", "conflicting labels"),
        {("train", "malignant"): 1},
    ),
    "png-with-alpha": Case(
        _rgba,
        False,
        "train/benign/alpha.png",
        ("transparency", "composited on black"),
        {("train", "benign"): 1},
    ),
    "grayscale": Case(
        _grayscale,
        False,
        "train/malignant/gray.jpg",
        ("grayscale", "converted to RGB"),
        {("train", "malignant"): 1},
    ),
    "16-bit-gray-png": Case(
        _gray16, False, "train/benign/deep16.png", ("16-bit", "8-bit RGB"), {("train", "benign"): 1}
    ),
    "16-bit-rgb-png": Case(
        _rgb16, False, "train/malignant/deep48.png", ("16-bit RGB", "8-bit RGB"), {("train", "malignant"): 1}
    ),
    "palette-png": Case(
        _palette, False, "test/malignant/palette.png", ("palette", "RGB"), {("test", "malignant"): 1}
    ),
    "smaller-than-patch": Case(
        _tiny,
        False,
        "train/malignant/tiny.png",
        ("very small", "8x8", "upsampled"),
        {("train", "malignant"): 1},
    ),
    "dangling-symlink": Case(
        _dangling_symlink, True, "train/benign/gone.jpg", ("broken or looping symlink", "remove it")
    ),
    "nested-folder": Case(
        _nested_folder, True, "train/benign/more/", ("nested folder", "is not read", "move its images up")
    ),
    "class-folder-is-a-file": Case(
        _class_is_a_file,
        True,
        "test/benign",
        ("is a file, not a folder", "create the class folder test/benign/"),
        zero=(("test", "benign"),),
        never=("missing class folder",),
        alone=True,
    ),
    "split-folder-is-a-file": Case(
        _split_is_a_file,
        True,
        "test: ",
        ("is a file, not a folder", "create test/benign/ and test/malignant/"),
        zero=(("test", "benign"), ("test", "malignant")),
        never=("missing split folder",),
        alone=True,
    ),
    "one-training-image-in-a-class": Case(
        _one_training_image,
        True,
        "train/malignant/",
        (
            "only 1 malignant image in train",
            "validation would hold no malignant image",
            "add malignant images",
        ),
        exact={("train", "malignant"): 1},
        alone=True,
    ),
    "symlink-to-a-text-file-outside": Case(
        _link_to_outside_text,
        True,
        "train/benign/x.png",
        ("not an image", "a text file, 28 bytes", "remove it"),
        {("train", "benign"): 1},
        never=("PRIVATE_KEY", "do-not-print-me"),
    ),
    "symlink-to-an-image-outside": Case(
        _link_to_outside_image,
        False,
        "train/benign/linked.png",
        ("outside the dataset folder", "read as data"),
        {("train", "benign"): 1},
        conversion=False,
    ),
}
PARAMS = [pytest.param(name, case, id=name, marks=case.marks) for name, case in CASES.items()]
PROBLEMS = [p for p in PARAMS if p.values[1].problem]
WARNINGS = [p for p in PARAMS if not p.values[1].problem]

_COUNT_LINE = re.compile(r"^\s+(train|test)\s+(\d+)\s+(\d+)\s+(\d+)\s*$", re.M)


def _counts_shown(out: str) -> dict[tuple[str, str], int]:
    """The image counts table of `study data check`: {(split, class): n}."""
    rows = _COUNT_LINE.findall(out)
    assert len(rows) == 2, out
    return {(s, c): int(n) for s, b, m, _ in rows for c, n in (("benign", b), ("malignant", m))}


def _expected_counts(tiny_counts: dict, case: Case) -> dict[tuple[str, str], int]:
    expected = {
        (s, c): n + case.delta.get((s, c), 0) for s, per in tiny_counts.items() for c, n in per.items()
    }
    expected.update({key: 0 for key in case.zero})
    expected.update(case.exact)
    return expected


def _lines_naming(text: str, name: str) -> list[str]:
    return [line for line in text.splitlines() if name in line]


class _RayWouldStart(Exception):
    pass


@pytest.fixture
def no_ray(monkeypatch, tmp_path):
    """In-process `study run`: a private cache, no Ray, and a stop where the trials would start (after the
    study record is written)."""
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "cache"))

    def stop(*args, **kwargs):
        raise _RayWouldStart("the data check passed and the trials would start now")

    monkeypatch.setattr(runner, "init_ray", lambda *a, **kw: None)
    monkeypatch.setattr(runner, "tuner_configs", stop)


def _run_args(root: Path, storage: Path) -> list[str]:
    return [
        "run",
        "--preset",
        "smoke",
        "--data",
        str(root),
        "--storage",
        str(storage),
        "--name",
        "bad",
        "--no-report",
    ]


# ------------------------------------------------------------------------------------------- study data check


@pytest.mark.parametrize("name, case", PARAMS)
def test_data_check_reports_each_bad_input_as_documented(name, case, tiny_dataset_copy, tiny_counts, capsys):
    root = tiny_dataset_copy
    case.plant(root)
    code = main(["data", "check", str(root)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    assert code == (1 if case.problem else 0), out
    status = out.splitlines()[0]
    assert ("NOT USABLE" in status) == case.problem, status
    section = out.split("\nwarnings (")[0] if case.problem else out.split("\nwarnings (")[-1]
    heading = "problems (" if case.problem else "warnings ("
    assert heading in out, out
    hits = _lines_naming(section.split(heading)[-1], case.names)
    assert len(hits) == 1, (case.names, out)  # one line per defect, naming the file
    line = hits[0]
    for words in case.says:
        assert words in line, (words, line)
    if not case.problem:
        assert "problems (" not in out  # a conversion never makes the data unusable
    for text in case.never:
        assert text not in out, (text, out)
    # No label changed or guessed: every image counted under the class folder it sits in, nothing more.
    assert _counts_shown(out) == _expected_counts(tiny_counts, case)


# ------------------------------------------------------------------------------------------- study run --data


@pytest.mark.parametrize("name, case", PROBLEMS)
def test_run_stops_on_unusable_data_before_ray_starts(
    name, case, tiny_dataset_copy, tmp_path, no_ray, capsys
):
    root = tiny_dataset_copy
    case.plant(root)
    storage = tmp_path / "runs"
    code = main(_run_args(root, storage))  # _RayWouldStart propagates if the data wrongly passes the check
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "Traceback" not in out + err
    assert err.startswith("study: data error: dataset ") and "is not usable" in err, err
    hits = _lines_naming(err, case.names)
    assert len(hits) == 1, err
    assert all(words in hits[0] for words in case.says), hits[0]
    assert f"study data check {root}" in err  # where the full report is
    assert len(err.splitlines()) <= 6  # short: the problem(s) and the hint, not a report
    assert not any(text in out + err for text in case.never), out + err
    assert not (storage / "bad").exists()  # nothing started: no run directory


@pytest.mark.parametrize("name, case", WARNINGS)
def test_run_accepts_convertible_images_and_records_the_warning(
    name, case, tiny_dataset_copy, tmp_path, no_ray, capsys
):
    import json

    root = tiny_dataset_copy
    case.plant(root)
    storage = tmp_path / "runs"
    with pytest.raises(_RayWouldStart):
        main(_run_args(root, storage))
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "error" not in err
    check = json.loads((storage / "bad" / "study.json").read_text())["data_check"]
    assert check["ok"] and not check["problems"]
    (line,) = [w for w in check["warnings"] if case.names in w]
    assert all(words in line for words in case.says), line
    # a conversion is applied when the trials decode the images, and is in the report
    assert (line in check["conversions"]) == case.conversion


def test_run_shows_data_warnings_before_the_study_starts(tiny_dataset_copy, tmp_path, no_ray, capsys):
    _grayscale(tiny_dataset_copy)
    with pytest.raises(_RayWouldStart):
        main(_run_args(tiny_dataset_copy, tmp_path / "runs"))
    out, err = capsys.readouterr()
    assert "train/malignant/gray.jpg" in out + err


# ------------------------------------------------------------------------------------------- as a real process


def test_data_check_process_with_every_defect_at_once_ends_without_hanging(tiny_dataset_copy, study_env):
    """The installed command on a folder with all the defects above (symlink loops included): it ends within
    the timeout, exit 1, one line per defect, no traceback."""
    root = tiny_dataset_copy
    cases = {
        name: case
        for name, case in CASES.items()
        if name != "missing-test-split"  # the test split holds other defects
        and not case.alone
        and (name != "unreadable-file" or PERMISSIONS_ENFORCED)
    }
    for case in cases.values():
        case.plant(root)
    proc = run_cli("data", "check", str(root), env=study_env, timeout=120)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    for name, case in cases.items():
        lines = _lines_naming(proc.stdout, case.names)
        assert any(all(words in line for words in case.says) for line in lines), (name, lines)


def test_data_check_reports_an_unreadable_file_also_as_root(tiny_dataset, tiny_counts, capsys):
    """The unreadable-file case where mode 000 means nothing (root): `study data check` runs as user nobody
    in a forked child (see test_data.run_as_nobody); as another user it runs as that user."""
    import contextlib
    import io

    case = CASES["unreadable-file"]
    root = world_readable_copy(tiny_dataset)
    try:
        case.plant(root)
        main(["data", "check", str(root)])  # loads what the check needs before the child drops privileges
        capsys.readouterr()

        def check() -> tuple[int, str]:
            out = io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
                code = main(["data", "check", str(root)])
            return code, out.getvalue()

        code, out = run_as_nobody(check)
    finally:
        shutil.rmtree(root.parent)
    assert code == 1 and "NOT USABLE" in out.splitlines()[0], out
    (line,) = _lines_naming(out.split("problems (")[-1], case.names)
    assert all(words in line for words in case.says), line
    assert _counts_shown(out) == _expected_counts(tiny_counts, case)


def _near_copy(src: Path, dst: Path) -> None:
    """A resized, re-encoded copy: a near-duplicate of src (and of nothing else)."""
    with Image.open(src) as im:
        buf = io.BytesIO()
        im.resize((36, 36), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=80)
    dst.write_bytes(buf.getvalue())


def test_data_check_counts_the_near_duplicate_pairs_planted(tiny_dataset_copy, capsys):
    root = tiny_dataset_copy
    benign = _originals(root, "train", "benign")
    for i in range(3):
        _near_copy(benign[i], root / "train" / "benign" / f"copy{i}.jpg")
    _near_copy(benign[3], root / "test" / "benign" / "leak.jpg")
    assert main(["data", "check", str(root)]) == 0  # near-duplicates are warnings
    out = capsys.readouterr().out
    assert "duplicates: 0 group(s) of byte-identical files; 4 near-duplicate pair(s)" in out, out
    (same,) = _lines_naming(out, "near-duplicate pair(s) within a split with the same label")
    assert same.lstrip(" -").startswith("3 near-duplicate pair(s)")
    assert all(f"train/benign/copy{i}.jpg" in same for i in range(3))
    (leak,) = _lines_naming(out, "have a near-duplicate in train")
    assert leak.lstrip(" -").startswith("1 test image(s)") and "test/benign/leak.jpg" in leak


def test_data_check_reports_a_label_conflict_also_when_the_bytes_are_in_test_too(tiny_dataset_copy, capsys):
    root = tiny_dataset_copy
    src = _originals(root, "train", "benign")[0]
    shutil.copy(src, root / "test" / "malignant" / "leaked.jpg")
    shutil.copy(src, root / "train" / "malignant" / "conflict.jpg")
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert any("leakage" in line for line in _lines_naming(out, "leaked.jpg"))
    assert any("conflicting labels" in line for line in _lines_naming(out, "conflict.jpg")), out


# ------------------------------------------------------------------------------------------- labels CSV


def _ham_csv(root: Path) -> Path:
    """A HAM10000-style labels CSV (lesion_id, image_id, dx) next to its images/ folder, split column."""
    rows = ["lesion_id,image_id,dx,split"]
    for i in range(12):
        _image_file(root / "images" / f"ISIC_{i:07d}.jpg", 100 + i)
        dx = ["mel", "nv", "nv", "mel", "mel", "bkl", "nv", "nv", "mel", "mel", "nv", "bkl"][i]
        rows.append(f"HAM_{i // 2:03d},ISIC_{i:07d},{dx},{'test' if i >= 8 else 'train'}")
    path = root / "HAM10000_metadata.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _image_file(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((255 * _pattern(seed)).astype(np.uint8)).convert("RGB").save(path)


def test_data_check_on_a_labels_csv_needs_the_malignant_classes(tmp_path, capsys):
    path = _ham_csv(tmp_path)
    assert main(["data", "check", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "NOT USABLE" in out.splitlines()[0]
    (line,) = _lines_naming(out, "no malignant classes")
    assert "bkl" in line and "nv" in line and "--malignant mel" in line

    assert main(["data", "check", str(path), "--malignant", "mel"]) == 0
    out = capsys.readouterr().out
    assert "OK" in out.splitlines()[0]
    assert "columns: image image_id, label dx, group lesion_id, split split" in out
    assert _counts_shown(out) == {
        ("train", "benign"): 5,
        ("train", "malignant"): 3,
        ("test", "benign"): 2,
        ("test", "malignant"): 2,
    }


def test_data_check_reports_a_lesion_in_train_and_test(tmp_path, capsys):
    path = _ham_csv(tmp_path)
    lines = path.read_text().splitlines()
    lines[8] = lines[8].replace(",train", ",test")  # image 7 (lesion HAM_003) moves to test; image 6 stays
    path.write_text("\n".join(lines) + "\n")
    assert main(["data", "check", str(path), "--malignant", "mel", "--images", "images"]) == 1
    out = capsys.readouterr().out
    (line,) = _lines_naming(out, "HAM_003")
    assert "train (line 8) and test (line 9)" in line and "leakage" in line


def test_data_check_rejects_csv_options_for_a_folder(tiny_dataset, capsys):
    assert main(["data", "check", str(tiny_dataset), "--images", "pics"]) == 1
    (line,) = _lines_naming(capsys.readouterr().out, "apply only to a labels CSV")
    assert "images (data_images)" in line
