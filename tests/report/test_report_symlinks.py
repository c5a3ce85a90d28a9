"""`study report` writes only inside the run dir: a symlink at an output's name is replaced, never written
through, and `figures/` is never followed out of the run (issue 16)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fixtures_results import make_results, write_run_dir

from study import cli
from study.io import files
from study.report.write import write_report

OUTPUTS = (
    "summary.csv",
    "comparisons.csv",
    "excluded.csv",
    "friedman.csv",
    "probe.csv",
    "pretext_rotation.csv",
    "report.md",
    "report.html",
)


@pytest.fixture(autouse=True)
def _private_simulation_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STUDY_CACHE_DIR", str(tmp_path / "sim-cache"))


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def linked_run(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """A run dir whose figures/ and every table/report name are symlinks into an outside folder holding
    files with the report's own names (which a report that follows links would delete or overwrite)."""
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=3), example_tasks=("missing_patch",))
    outside = tmp_path / "outside"
    (outside / "pictures").mkdir(parents=True)
    for name in ("forest.png", "paired_seeds.png", "examples_missing_patch.png", "holiday.png"):
        (outside / "pictures" / name).write_bytes(b"not the report's: " + name.encode())
    (run / "figures").symlink_to(outside / "pictures", target_is_directory=True)
    for name in OUTPUTS:
        (outside / name).write_text(f"precious {name}\n")
        (run / name).symlink_to(outside / name)
    return run, outside, _snapshot(outside)


def _assert_real_outputs(run: Path) -> None:
    for name in OUTPUTS:
        assert not (run / name).is_symlink() and (run / name).is_file(), name
    assert "precious" not in (run / "summary.csv").read_text()
    fig = run / "figures"
    assert fig.is_dir() and not fig.is_symlink()
    pngs = sorted(p.name for p in fig.iterdir())
    assert "forest.png" in pngs and "examples_missing_patch.png" in pngs, pngs
    assert "holiday.png" not in pngs  # the outside folder was not written into or copied
    assert all((fig / n).read_bytes().startswith(b"\x89PNG") for n in pngs)


def test_report_replaces_symlinks_and_leaves_their_targets_untouched(linked_run):
    run, outside, before = linked_run
    write_report(run)
    assert _snapshot(outside) == before  # nothing outside the run deleted or overwritten
    _assert_real_outputs(run)
    assert "figures/forest.png" in (run / "report.md").read_text()


def test_study_report_command_on_a_run_dir_with_symlinks(linked_run, capsys):
    run, outside, before = linked_run
    assert cli.main(["report", str(run)]) == 0, capsys.readouterr().err
    assert _snapshot(outside) == before
    _assert_real_outputs(run)


def test_stale_figure_links_are_unlinked_and_other_files_kept(tmp_path):
    """Inside a real figures/: an earlier report's figure names go (a symlink among them as a link, its target
    stays); files the report does not draw are kept."""
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=3))
    target = tmp_path / "elsewhere.png"
    target.write_bytes(b"keep me")
    fig = run / "figures"
    fig.mkdir()
    (fig / "mean_ranks.png").symlink_to(target)
    (fig / "examples_corruption.png").write_bytes(b"stale")  # no corruption examples in this run
    (fig / "notes.txt").write_text("mine")
    write_report(run)
    assert target.read_bytes() == b"keep me"
    assert not (fig / "examples_corruption.png").exists()
    assert (fig / "notes.txt").read_text() == "mine"
    assert not (fig / "mean_ranks.png").is_symlink() and (fig / "mean_ranks.png").is_file()


def test_a_dangling_label_efficiency_link_is_removed_not_followed(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=3))
    target = tmp_path / "outside.csv"
    target.write_text("precious\n")
    (run / "label_efficiency.csv").symlink_to(target)
    write_report(run)  # one label fraction: the table must not linger
    assert not os.path.lexists(run / "label_efficiency.csv")
    assert target.read_text() == "precious\n"


@pytest.mark.parametrize("name", ["summary.csv", "report.html", "figures"])
def test_a_folder_or_file_in_an_outputs_place_is_one_line(name, tmp_path, capsys):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=3))
    if name == "figures":
        (run / name).write_text("a file, not the figures folder")
    else:
        (run / name).mkdir()
        (run / name / "inside.txt").write_text("mine")
    assert cli.main(["report", str(run)]) == cli.EXIT_BAD_DATA
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("study: results error: ") and name in err[0], err
    assert "move it out of the run dir" in err[0]
    assert (run / name).exists()  # nothing of the user's removed


def test_write_replacing_keeps_the_umask_mode_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("precious")
    link = tmp_path / "out.txt"
    link.symlink_to(target)
    old = os.umask(0o022)
    try:
        files.write_replacing(link, lambda f: f.write(b"new"))
    finally:
        os.umask(old)
    assert target.read_text() == "precious" and link.read_bytes() == b"new" and not link.is_symlink()
    assert link.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError):
        files.write_replacing(link, lambda f: (_ for _ in ()).throw(RuntimeError("boom")))
    assert link.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt", "outside.txt"]
