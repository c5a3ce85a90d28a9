"""Hostile `study data` input (issue #27): `synth` bounds its arguments before creating OUT, replaces only a
folder whose synth.json it wrote itself, and leaves nothing half-written; `check` never reads a labels CSV
that is a symlink out of its folder (so nothing of a foreign file is printed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study import cli
from study.data import synth
from study.data.synth import MARKER_NAME, synthetic_dataset, write_dataset

SMALL = ["--n-train", "20", "--n-test", "10", "--size", "16"]


def _synth(capsys, out: Path, *args: str) -> tuple[int, list[str]]:
    code = cli.main(["data", "synth", str(out), *args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--size", "100000"], "--size must be an integer >= 16 and <= 1024 pixels, got 100000"),
        (["--n-train", "1000000"], "--n-train must be an integer >= 2 (one image per class) and <= 100000"),
        (
            ["--n-train", "5000", "--size", "1024"],
            "over the limit of 4 GiB; lower --n-train, --n-test or --size",
        ),
        (["--malignant-fraction", "0.01"], "--malignant-fraction must be in [0.05, 0.95]"),
        (["--malignant-fraction", "0.99"], "--malignant-fraction must be in [0.05, 0.95]"),
    ],
)
def test_synth_arguments_out_of_bounds_are_refused_before_out_exists(args, message, tmp_path, capsys):
    """Defaults otherwise (400 train, 100 test: 0.01 leaves 4 malignant training images, which the class count
    alone accepted); the README's bad-input table says `--malignant-fraction 0.01` is refused."""
    out = tmp_path / "out"
    code, err = _synth(capsys, out, *args)
    assert code == cli.EXIT_BAD_CONFIG and len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_the_bounds_of_the_fraction_are_accepted(tmp_path, capsys):
    args = ["--n-train", "40", "--n-test", "20", "--size", "16", "--malignant-fraction", "0.05"]
    code, _ = _synth(capsys, tmp_path / "out", *args)
    assert (
        code == 0 and json.loads((tmp_path / "out" / MARKER_NAME).read_text())["malignant_fraction"] == 0.05
    )


@pytest.mark.parametrize(
    "marker",
    ["{}", "[]", '{"generator": "study.data.synth"}', "not json", "link"],
)
def test_a_synth_json_synth_did_not_write_does_not_make_a_folder_replaceable(marker, tmp_path, capsys):
    out = tmp_path / "out"
    (out / "train" / "benign").mkdir(parents=True)
    (out / "train" / "benign" / "mine.jpg").write_bytes(b"the user's image")
    if marker == "link":  # a valid marker elsewhere, linked in
        write_dataset(tmp_path / "real", 6, 4, 16, seed=0)
        (out / MARKER_NAME).symlink_to(tmp_path / "real" / MARKER_NAME)
    else:
        (out / MARKER_NAME).write_text(marker)
    code, err = _synth(capsys, out, *SMALL)
    assert code == cli.EXIT_BAD_CONFIG and len(err) == 1 and "pass --overwrite" in err[0], err
    assert (out / "train" / "benign" / "mine.jpg").read_bytes() == b"the user's image"
    code, _ = _synth(capsys, out, *SMALL, "--overwrite")  # asked for: replaced
    assert code == 0 and not (out / "train" / "benign" / "mine.jpg").exists()


def test_a_folder_synth_wrote_is_replaced_without_overwrite(tmp_path, capsys):
    out = tmp_path / "out"
    assert _synth(capsys, out, *SMALL)[0] == 0
    assert _synth(capsys, out, *SMALL, "--seed", "3")[0] == 0
    assert json.loads((out / MARKER_NAME).read_text())["seed"] == 3


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_write_leaves_nothing_half_written(existing, tmp_path, monkeypatch):
    out = tmp_path / "out"
    if existing:
        out.mkdir()

    def fail(*a, **kw):
        raise MemoryError

    monkeypatch.setattr(synth, "render_lesions", fail)
    with pytest.raises(MemoryError):
        write_dataset(out, 6, 4, 16, seed=0)
    assert (list(out.iterdir()) == []) if existing else not out.exists()


def test_a_cached_synthetic_dataset_with_a_planted_marker_is_not_used(tmp_path):
    path = synthetic_dataset(tmp_path, 6, 4, 16, seed=2)
    (path / MARKER_NAME).write_text("{}")
    with pytest.raises(ValueError, match="has no valid synth.json"):
        synthetic_dataset(tmp_path, 6, 4, 16, seed=2)


def _labels_csv(root: Path) -> str:
    rows = ["image,target,split"]
    for p in sorted(root.rglob("*.jpg")):
        rel = p.relative_to(root)
        rows.append(f"{rel.as_posix()},{int(rel.parts[1] == 'malignant')},{rel.parts[0]}")
    return "\n".join(rows) + "\n"


def test_a_labels_csv_linked_to_a_file_outside_its_folder_is_not_read(tiny_dataset_copy, tmp_path, capsys):
    secret = tmp_path / "private.txt"
    secret.write_text("SECRET-FIRST-LINE,do not print\nrow,1\n")
    link = tiny_dataset_copy / "labels.csv"
    link.symlink_to(secret)
    assert cli.main(["data", "check", str(link)]) == cli.EXIT_BAD_DATA
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "SECRET" not in text and "do not print" not in text
    (line,) = [x for x in text.splitlines() if "symlink" in x]
    assert "outside its folder" in line and str(secret) in line
    # a link within the dataset folder is the user's own file: read as usual
    link.unlink()
    (tiny_dataset_copy / "real.csv").write_text(_labels_csv(tiny_dataset_copy))
    link.symlink_to(tiny_dataset_copy / "real.csv")
    assert cli.main(["data", "check", str(link)]) == 0, capsys.readouterr().out
