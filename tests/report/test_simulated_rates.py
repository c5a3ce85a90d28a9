"""Simulated rates in the report (issue 26, defect 7): each with its Monte-Carlo interval and only the digits
the number of simulated studies supports."""

from __future__ import annotations

import re

import pytest
from fixtures_results import make_results, write_run_dir
from statsmodels.stats.proportion import proportion_confint

from study.report import formatting as F
from study.report import simulate as S
from study.report.write import write_report

pytestmark = pytest.mark.usefixtures("private_simulation_cache")


def test_a_rate_from_4000_studies_is_not_printed_to_a_tenth_of_a_percent():
    # 3.3 % from 4,000 studies: the 95 % Monte-Carlo interval is 2.8-3.9 %, so the tenth is noise.
    text = F.sim_rate(0.033, 4000)
    low, high = proportion_confint(132, 4000, alpha=0.05, method="wilson")
    assert text == f"3 % (Monte-Carlo 95 % interval {100 * low:.1f}\u2013{100 * high:.1f} %)"
    assert F.sim_rate(0.0332, 1_000_000).startswith("3.3 % (")  # a million studies support the tenth
    assert F.sim_rate(0.0, 20000) == "0 % (Monte-Carlo 95 % interval 0\u20130.019 %)"
    assert F.sim_rate(float("nan"), 4000) == F.NA


def test_mc_interval_is_wilson_and_brackets_the_rate():
    low, high = S.mc_interval(0.1, 20000)
    assert (low, high) == pytest.approx(proportion_confint(2000, 20000, alpha=0.05, method="wilson"))
    assert low < 0.1 < high and high - low < 0.01


def test_the_report_states_studywise_rates_with_their_monte_carlo_interval(tmp_path):
    run = write_run_dir(tmp_path / "run", make_results(n_seeds=9, noise_sd=0.02))
    md, _ = write_report(run, family="study")
    text = md.read_text()
    rates = S.null_rejection_rates(9, 3, 3)
    assert rates["n_sim"] == S.N_SIM_NULL >= 20000
    assert f"{S.N_SIM_NULL:,} null studies" in text
    assert f"{F.sim_rate(rates['studywise_study'], rates['n_sim'])} with this family" in text
    assert (
        f"false-positive rate {F.sim_rate(rates['studywise_regime'], rates['n_sim'])} for this design" in text
    )
    # No simulated study-wise rate is printed to 0.1 % (20,000 studies do not support it at these rates).
    assert not re.search(r"\d\.\d % with (this family|Holm)", text)
    # The default (primary) family states the primary family's rate and the secondary family's.
    text = write_report(run)[0].read_text()
    secondary = S.null_rejection_rates(9, 3, 2)["studywise_study"]
    assert f"{F.sim_rate(rates['familywise_regime'], rates['n_sim'])} in the primary family" in text
    assert f"{F.sim_rate(secondary, rates['n_sim'])} in the secondary family" in text
