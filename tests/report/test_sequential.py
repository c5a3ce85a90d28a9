"""The verdicts of a run analysed in looks (`study.report.sequential`): looks from the manifest, the
sequential verdicts on the run's own table, the command that would extend an undecided study."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
from fixtures_results import make_results

from study import analysis as A
from study.report import sequential as SQ
from study.spec.presets import AnalysisPlan

PLAN = AnalysisPlan(primary_regime="none", primary_fraction=1.0, equivalence_margin=0.02)


def _table(n: int, effect: float) -> tuple[pd.DataFrame, A.Pairing]:
    df = make_results(n_seeds=n, effects={"rotation": effect, "missing_patch": 0.0}, regimes={"none": 0})
    return df, A.check_pairing(df, "test_auc")


def test_look_sizes_come_from_the_manifest_or_the_declaration():
    two = {"looks": [{"seeds": 4}, {"seeds": 8}]}
    assert SQ.look_sizes(two, PLAN, 8) == [4, 8]
    assert SQ.look_sizes({"looks": [{"seeds": 8}]}, PLAN, 8) is None  # one look, none declared: fixed design
    assert SQ.look_sizes(None, PLAN, 8) is None
    declared = dataclasses.replace(PLAN, looks=(8, 16))
    assert SQ.look_sizes(None, declared, 8) == [8]


def test_a_large_effect_is_decided_at_the_first_look_and_keeps_its_verdict():
    df, pairing = _table(16, 0.08)
    seq = SQ.run_looks(df, PLAN, pairing, [8, 16])
    assert seq is not None and seq.arms[0] in ("rotation", "missing_patch")
    verdict = dict(zip(seq.arms, seq.sequential.verdict))
    look = dict(zip(seq.arms, seq.sequential.look))
    assert verdict["rotation"] == "better" and look["rotation"] == 1
    # The same data analysed once (one look at 16): no stricter than the two looks.
    once = SQ.run_looks(df, PLAN, pairing, [16])
    assert dict(zip(once.arms, once.sequential.verdict))["rotation"] == "better"


def test_no_looks_when_the_table_has_fewer_seeds_than_the_last_look():
    df, pairing = _table(6, 0.0)
    assert SQ.run_looks(df, PLAN, pairing, [4, 8]) is None


def test_apply_looks_replaces_the_primary_verdicts_and_says_at_which_look():
    df, pairing = _table(16, 0.08)
    seq = SQ.run_looks(df, PLAN, pairing, [8, 16])
    verdicts = pd.DataFrame({"arm": list(seq.arms), "primary": True, "verdict": "undecided", "n": 16})
    out = SQ.apply_looks(verdicts, seq)
    assert list(out["verdict"]) == list(seq.sequential.verdict)
    assert list(out["look"]) == [float(x) for x in seq.sequential.look]
    table = SQ.looks_table(seq)
    assert list(table["seeds"]) == [8, 16] and table["alpha_spent"].is_monotonic_increasing


@pytest.mark.parametrize(
    "verdict, eq, s80, declared, n_now, expected",
    [
        (["better", "worse"], [np.nan, np.nan], [np.nan, np.nan], (), 8, None),  # all decided
        (["undecided", "better"], [30.0, np.nan], [np.nan, np.nan], (), 8, 30),  # equivalence planning
        (["undecided"], [np.nan], [12.0], (), 8, 12),  # superiority planning
        (["undecided"], [np.nan], [np.nan], (), 8, 16),  # no figure: twice the seeds
        (["undecided"], [5.0], [np.nan], (), 8, 9),  # at least one more seed
        (["undecided"], [30.0], [np.nan], (4, 8, 12), 8, 12),  # the next declared look
        (["undecided"], [30.0], [np.nan], (4, 8), 8, None),  # the declared looks are spent
    ],
)
def test_seeds_to_extend(verdict, eq, s80, declared, n_now, expected):
    v = pd.DataFrame({"verdict": verdict, "seeds_equivalence": eq, "seeds_80_max": s80})
    assert SQ.seeds_to_extend(v, declared, n_now) == expected


def test_a_closed_arm_is_paired_on_the_seeds_it_ran_and_the_report_counts_the_arms(tmp_path):
    """An arm whose comparison was decided at look 1 runs no seeds of look 2: the table is still paired (its
    missing seeds are dropped pairwise, not a pairing error), its comparison keeps n = 8, the others have 16,
    and the report's looks table counts the arms each look ran."""
    from fixtures_results import write_run_dir

    from study.report.write import write_report

    df = make_results(n_seeds=16, effects={"rotation": 0.2, "missing_patch": 0.0, "corruption": 0.0})
    df = df[~((df["arm"] == "rotation") & (df["seed"] >= 8))]
    arms = ["baseline", "rotation", "missing_patch", "corruption"]
    manifest = {
        "looks": [
            {"look": 1, "seeds": 8, "added": list(range(8)), "arms": arms},
            {
                "look": 2,
                "seeds": 16,
                "added": list(range(8, 16)),
                "arms": [a for a in arms if a != "rotation"],
            },
        ]
    }
    assert SQ.not_run_by_design(manifest) == {"rotation": set(range(8, 16))}
    with pytest.raises(A.PairingError, match="rotation"):
        A.check_pairing(df, "test_auc")
    pairing = A.check_pairing(df, "test_auc", SQ.not_run_by_design(manifest))
    assert len(next(iter(pairing.seeds.values()))) == 16
    run = write_run_dir(tmp_path / "run", df, manifest=manifest)
    write_report(run)
    comp = pd.read_csv(run / "comparisons.csv")
    primary = comp[comp["primary"]].set_index("arm")
    assert primary.loc["rotation", "n"] == 8 and primary.loc["missing_patch", "n"] == 16
    assert primary.loc["rotation", "verdict"] == "better" and primary.loc["rotation", "look"] == 1
    report = (run / "report.md").read_text()
    assert "| Look | Seeds | Arms run | Decided here |" in report and "\n| 2 | 16 | 3 |" in report
