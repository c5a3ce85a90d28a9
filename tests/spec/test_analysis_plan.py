"""The declared primary analysis (`[analysis]` of a study file): filled in and checked when the study is
resolved, before any trial, and recorded with the study."""

from __future__ import annotations

import json

import pytest

from study.spec.config import ConfigError
from study.spec.presets import AnalysisPlan, StudyPreset
from study.spec.resolve import resolve_study
from study.spec.studyfile import to_toml


def _file(tmp_path, text: str) -> str:
    path = tmp_path / "study.toml"
    path.write_text('preset = "smoke"\n' + text)
    return str(path)


def test_defaults_are_the_longest_patience_and_the_smallest_fraction(tmp_path):
    assert resolve_study("demo").analysis == AnalysisPlan(primary_regime="patience10", primary_fraction=1.0)
    plan = resolve_study(config=_file(tmp_path, "label_fractions = [0.1, 0.5, 1.0]\n")).analysis
    assert (plan.primary_regime, plan.primary_fraction) == ("patience2", 0.1)


def test_a_study_file_declares_it_and_the_study_record_keeps_it(tmp_path):
    text = '[analysis]\nprimary_regime = "none"\nequivalence_margin = 0.03\nmetric = "test_balanced_accuracy"\n'
    study = resolve_study(config=_file(tmp_path, text))
    assert study.analysis == AnalysisPlan(
        metric="test_balanced_accuracy", primary_regime="none", primary_fraction=1.0, equivalence_margin=0.03
    )
    assert StudyPreset.from_dict(study.to_dict()).analysis == study.analysis
    again = tmp_path / "again.toml"
    again.write_text(to_toml(study, shipped="smoke"))
    assert resolve_study(config=str(again)).analysis == study.analysis


def test_planned_looks_are_declared_recorded_and_written_back(tmp_path):
    study = resolve_study(config=_file(tmp_path, "[analysis]\nlooks = [2, 4, 6]\n"))
    assert study.analysis.looks == (2, 4, 6)
    assert StudyPreset.from_dict(json.loads(json.dumps(study.to_dict()))).analysis == study.analysis
    again = tmp_path / "again.toml"
    again.write_text(to_toml(study, shipped="smoke"))
    assert resolve_study(config=str(again)).analysis.looks == (2, 4, 6)
    assert resolve_study("smoke").analysis.looks == ()  # no planned looks: one analysis


def test_a_study_record_without_a_declaration_reads_as_the_defaults():
    record = resolve_study("smoke").to_dict()
    del record["analysis"]
    assert StudyPreset.from_dict(record).analysis == AnalysisPlan()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('primary_regime = "patience10"', r"analysis.primary_regime: 'patience10' is not a regime of this study"),
        ("primary_fraction = 0.5", r"analysis.primary_fraction: 0.5 is not a label fraction"),
        ('metric = "auc"', r"analysis.metric: 'auc' is not a results metric"),
        ("equivalence_margin = 0", r"analysis.equivalence_margin: must be a positive number"),
        ("equivalence_margin = nan", r"analysis.equivalence_margin: must be a positive number"),
        ("alpha = 0.7", r"analysis.alpha: must lie in \(0, 0.5\)"),
        ("margin = 0.02", r"analysis.margin: unknown analysis setting"),
        ('equivalence_margin = "small"', r"analysis.equivalence_margin: expected a number"),
        ("looks = [4, 2]", r"analysis.looks: must increase, e.g. \[10, 20, 30\]; got \[4, 2\]"),
        ("looks = [1, 2]", r"analysis.looks: each must be a seed count from 2 to 2000 \(got 1 in \[1, 2\]\)"),
        ("looks = [2, 2]", r"analysis.looks: \[2, 2\] lists a look twice"),
        ("looks = [4, 8]", r"analysis.looks: the 2 seeds the study runs must be one of its looks \[4, 8\]"),
        (f"looks = {list(range(2, 44, 2))}", r"analysis.looks: at most 20 looks; got 21"),
        ("looks = 4", r"analysis.looks: expected a list"),
    ],
)
def test_bad_declarations_are_refused_before_any_trial(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        resolve_study(config=_file(tmp_path, f"[analysis]\n{text}\n"))
