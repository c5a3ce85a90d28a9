"""One resolution step (study.spec.resolve): preset or file, then --set, then flags; label-fraction grids; the
data table of a study file; ImageNet weights checked on the driver before any trial starts."""

from __future__ import annotations

import re
import textwrap
import urllib.error

import pytest

from study import cli
from study.search_spaces import grid_space
from study.spec import studyfile
from study.spec.config import ConfigError
from study.spec.presets import get_preset
from study.spec.resolve import Flags, apply_flags, resolve_study, validate_study


def _write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_flags_override_set_which_overrides_the_file_which_overrides_the_preset(tmp_path, tiny_dataset):
    path = _write(tmp_path, 'preset = "smoke"\nseeds = 5\n[trial]\nfinetune_epochs = 7\nlr = 0.01\n')
    study = resolve_study(None, path, ["seeds=4", "trial.lr=0.002"], Flags(seeds=3, data=str(tiny_dataset)))
    smoke = get_preset("smoke")
    assert study.seeds == (0, 1, 2)  # flag over --set over file
    assert study.base.lr == 0.002  # --set over file
    assert study.base.finetune_epochs == 7  # file over preset
    assert study.base.pretext_epochs == smoke.base.pretext_epochs  # preset where nothing else spoke
    assert study.base.data_path == str(tiny_dataset.resolve())
    with pytest.raises(ConfigError, match="--seeds"):
        resolve_study("smoke", flags=Flags(seeds=0))


def test_label_fractions_make_a_grid_paired_by_seed_in_tunes_order():
    from ray.tune.search.variant_generator import generate_variants

    from study.spec.config import trial_config_from

    study = get_preset("smoke").replace(label_fractions=(0.25, 1.0))
    validate_study(study)
    space = grid_space(study)
    assert "label_fraction" not in space
    assert space["subset"]["grid_search"] == [{"label_fraction": 0.25}, {"label_fraction": 1.0}]
    tune_order = [trial_config_from(v) for _, v in generate_variants(space)]
    assert tune_order == study.trial_configs()
    # Every arm and seed of the first fraction comes before the next fraction (its pretexts then hit the cache).
    fractions = [t.label_fraction for t in tune_order]
    assert fractions == sorted(fractions) and len(tune_order) == 2 * len(study.arms) * len(study.seeds)
    # Without a grid, nothing about the param space changes.
    assert "subset" not in grid_space(get_preset("smoke"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("label_fractions = [0.2, 0.2]", "lists a fraction twice"),
        ("label_fractions = [0.0, 1.0]", r"must be in \(0, 1\]"),
        ("label_fractions = [1.5]", r"must be in \(0, 1\]"),
        ("label_fractions = []", "give a list of fractions"),
        ('label_fractions = "0.2"', "give a list of fractions"),
        ('label_fractions = ["a"]', "expected a number"),
        ("label_fractions = [0.2, 1.0]\n[trial]\nlabel_fraction = 0.5", "in one place"),
    ],
)
def test_bad_label_fractions_are_rejected_before_ray_starts(tmp_path, text, message, cli_error):
    path = _write(tmp_path, 'preset = "smoke"\n' + text + "\n")
    assert re.search(message, cli_error(["--config", str(path)]))


def test_label_fractions_are_sorted_round_trip_and_reject_search(tmp_path):
    path = _write(tmp_path, 'preset = "smoke"\nlabel_fractions = [1.0, 0.1, 0.3]\n')
    study = resolve_study(None, path)
    assert study.label_fractions == (0.1, 0.3, 1.0)
    again = studyfile.resolve(
        config=_write(tmp_path, studyfile.to_toml(study, shipped="smoke"), "again.toml")
    )
    assert again.label_fractions == study.label_fractions
    with pytest.raises(ConfigError, match="search"):
        resolve_study("search", sets=["label_fractions=[0.5, 1.0]"])


def test_a_data_table_names_a_labels_csv_its_images_and_malignant_classes(tmp_path):
    csv = tmp_path / "meta.csv"
    csv.write_text("image_id,dx\n")
    (tmp_path / "imgs").mkdir()
    path = _write(
        tmp_path,
        f"""\
        preset = "smoke"
        [data]
        path = "{csv}"
        images = "{tmp_path / "imgs"}"
        malignant = ["mel", "bcc"]
        """,
    )
    study = resolve_study(None, path)
    assert study.base.data_path == str(csv) and study.base.data_images == str(tmp_path / "imgs")
    assert study.base.data_malignant == ("mel", "bcc")
    again = studyfile.resolve(
        config=_write(tmp_path, studyfile.to_toml(study, shipped="smoke"), "again.toml")
    )
    assert again.base == study.base
    assert resolve_study("smoke", sets=[f'data="{csv}"', 'data.malignant="mel"']).base.data_malignant == (
        "mel",
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ('[data]\nimages = "x"', 'give the dataset as path = "DIR"'),
        ('[data]\npath = "{csv}"\nlabels = "y"', r"data.labels: unknown data setting"),
        ('[data]\npath = "{folder}"\nmalignant = ["mel"]', "apply to a labels CSV"),
        ('data = "{folder}/nothing.txt"', "neither a dataset folder nor a .csv"),
        ('[trial]\ndata_path = "{csv}"', "the dataset is a study setting"),
        ("[data]\npath = 3", "expected a quoted string"),
    ],
)
def test_bad_data_settings_are_rejected_naming_the_key(tmp_path, text, message, cli_error):
    csv = tmp_path / "meta.csv"
    csv.write_text("image_id,target\n")
    path = _write(tmp_path, 'preset = "smoke"\n' + text.format(csv=csv, folder=tmp_path) + "\n")
    assert re.search(message, cli_error(["--config", str(path)]))


def test_imagenet_weights_missing_offline_stop_the_cli_before_ray_in_one_line(tmp_path, monkeypatch, capsys):
    """weights = "imagenet" with no file and no network: exit 2 with one line, before any trial or Ray."""
    from study.train import models

    def offline(*args, **kw):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    monkeypatch.setattr(models.keras.utils, "get_file", offline)
    argv = ["run", "--preset", "smoke", "--storage", str(tmp_path / "runs"), "--name", "inet"]
    sets = ['trial.encoder="resnet50"', "trial.encoder_stride=32", 'trial.weights="imagenet"']
    code = cli.main(argv + [x for s in sets for x in ("--set", s)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == cli.EXIT_BAD_CONFIG, err
    assert len(err) == 1 and models.IMAGENET_NOTOP_FILE in err[0] and "weights='random'" in err[0]
    assert not (tmp_path / "runs" / "inet").exists()


def test_flags_reject_what_the_study_cannot_use():
    demo = get_preset("demo")
    with pytest.raises(ConfigError, match="fractional"):
        apply_flags(demo, gpus_per_trial=0.5)
    with pytest.raises(ConfigError, match="--asha"):
        apply_flags(demo, asha=True)


def test_relative_paths_in_a_study_file_become_absolute(tmp_path, monkeypatch):
    """Trials run in Ray's trial folders, not where `study` was started: every path is made absolute."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.h5").write_bytes(b"")
    path = _write(
        tmp_path,
        'preset = "smoke"\ndata = "data"\n[trial]\nencoder = "resnet50"\nencoder_stride = 32\nweights = "imagenet"\nweights_path = "w.h5"\ncache_dir = "cache"\n',
    )
    base = studyfile.resolve(None, path).base
    assert base.data_path == str(tmp_path / "data")
    assert base.weights_path == str(tmp_path / "w.h5") and base.cache_dir == str(tmp_path / "cache")


def test_a_label_fraction_study_round_trips_through_its_run_record():
    """`study resume` rebuilds the study from study.json: label fractions and CSV settings included."""
    import json

    from study.spec.presets import StudyPreset

    study = get_preset("smoke").replace(label_fractions=(0.2, 1.0))
    study = study.replace(base=study.base.replace(data_path="/d/meta.csv", data_malignant=("mel",)))
    assert StudyPreset.from_dict(json.loads(json.dumps(study.to_dict(), default=str))) == study
