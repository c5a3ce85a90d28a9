"""The primary verdicts of a study analysed in looks (declared `looks`, or `study extend` after the fact): the
run's results cut at each look's seeds, tested and decided by `study.looks`; numbers and codes only.

A run's looks are its seed counts: the study's own seeds, then each extension's (`manifest.json` "looks",
written by the driver); a study that declares looks but was never extended has had one look. Seeds run in
ascending order, so the first n seeds of the paired table are those of the look at n seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from study import analysis as A
from study.io.files import UnsafeFileError, read_json
from study.looks import Sequential, look_tests, sequential_verdicts
from study.spec.presets import AnalysisPlan
from study.stats import tie_tolerance


@dataclass(frozen=True)
class RunLooks:
    """`arms` (m,) the SSL arms of the primary cell, in the order of `sequential`'s comparisons."""

    arms: tuple[str, ...]
    sequential: Sequential

    @property
    def any_open(self) -> bool:
        return bool(np.any(self.sequential.open))


def look_sizes(manifest: dict[str, Any] | None, plan: AnalysisPlan, n_seeds: int) -> list[int] | None:
    """Seeds at each look of a run: the manifest's record of its looks, else one look at `n_seeds` when the
    study declares looks; None for a study analysed once (the fixed design)."""
    recorded = (manifest or {}).get("looks") or []
    sizes = [int(x["seeds"]) for x in recorded if isinstance(x, dict) and "seeds" in x]
    if len(sizes) > 1 or (sizes and plan.looks):
        return sizes
    return [n_seeds] if plan.looks else None


def not_run_by_design(manifest: dict[str, Any] | None) -> dict[str, set[int]]:
    """Arm -> the seeds it did not run because its comparison was decided at an earlier look (the manifest's
    looks: each names the arms it ran and the seeds it added)."""
    looks = [x for x in (manifest or {}).get("looks") or [] if isinstance(x, dict)]
    arms = {str(a) for x in looks for a in x.get("arms") or []}
    out: dict[str, set[int]] = {}
    for look in looks:
        ran = {str(a) for a in look.get("arms") or []}
        for arm in arms - ran:
            out.setdefault(arm, set()).update(int(s) for s in look.get("added") or [])
    return out


def run_looks(df: pd.DataFrame, plan: AnalysisPlan, pairing: A.Pairing, sizes: list[int]) -> RunLooks | None:
    """The sequential verdicts of the primary cell's comparisons over looks of `sizes` seeds; None when the
    table has no primary cell or fewer seeds than its last look."""
    cell = (float(plan.primary_fraction or A.DEFAULT_LABEL_FRACTION), plan.primary_regime)
    if cell not in pairing.seeds or len(pairing.arms) < 2 or len(pairing.seeds[cell]) < sizes[-1]:
        return None
    matrix, _, arms = A.paired_matrix(
        df,
        pairing.metric,
        cell[1],
        label_fraction=cell[0] if pairing.several_fractions else None,
        pairing=pairing,
    )
    d = (matrix[:, 1:] - matrix[:, :1]).T  # (m, n): arm - baseline, seeds ascending
    p_w, favours, p_t = look_tests(
        d,
        np.asarray(sizes),
        plan.equivalence_margin,
        orientation=A.orientation(pairing.metric),
        tol=tie_tolerance(matrix[np.isfinite(matrix)]),
    )
    seq = sequential_verdicts(sizes, p_w, favours, p_t, plan.alpha, looks=plan.looks)
    return RunLooks(arms=tuple(arms[1:]), sequential=seq)


def apply_looks(verdicts: pd.DataFrame, looks: RunLooks) -> pd.DataFrame:
    """The verdict table with the sequential verdicts in place of the one-look ones and `look` (the look that
    decided each; 0 while undecided) beside them."""
    out = verdicts.copy()
    by_arm = dict(zip(looks.arms, zip(looks.sequential.verdict, looks.sequential.look)))
    primary = out["primary"].astype(bool) if "primary" in out else pd.Series(True, index=out.index)
    out["look"] = np.nan
    for i in out.index[primary]:
        if out.at[i, "arm"] in by_arm:
            out.at[i, "verdict"], out.at[i, "look"] = by_arm[out.at[i, "arm"]]
    return out


def looks_table(looks: RunLooks) -> pd.DataFrame:
    """One row per look: seeds, comparisons decided there, cumulative alpha spent (superiority; equivalence)."""
    s = looks.sequential
    return pd.DataFrame(
        {
            "look": np.arange(1, s.seeds.size + 1),
            "seeds": s.seeds,
            "decided": s.decided,
            "alpha_spent": s.alpha_spent,
            "alpha_spent_equivalence": s.alpha_spent_equivalence,
        }
    )


def seeds_to_extend(verdicts: pd.DataFrame, declared: tuple[int, ...], n_now: int) -> int | None:
    """Seeds in all that `study extend` should ask for next: the next declared look, else the most that the
    undecided comparisons' planning figures need (`seeds_equivalence`, else `seeds_80_max`), at least one more
    than now (twice now when no figure exists); None when every comparison is decided or the looks are spent."""
    undecided = verdicts[verdicts["verdict"] == "undecided"] if len(verdicts) else verdicts
    if undecided.empty:
        return None
    if declared:
        later = [n for n in declared if n > n_now]
        return later[0] if later else None

    def finite(col: str) -> pd.Series:  # a planning column, NaN where absent or not finite
        values = undecided.get(col, pd.Series(np.nan, index=undecided.index)).astype(float)
        return values.where(np.isfinite(values))

    need = finite("seeds_equivalence").fillna(finite("seeds_80_max")).dropna().tolist()
    return max(n_now + 1, int(np.ceil(max(need)))) if need else 2 * n_now


def extend_hint(run_dir: Path, run_uri: str) -> str | None:
    """The one command that would extend an undecided study (from the report's comparisons.csv and the
    manifest), or None."""
    try:
        comp = pd.read_csv(run_dir / "comparisons.csv")
        manifest = read_json(run_dir / "manifest.json")
        declared = tuple(
            int(n) for n in ((manifest.get("config") or {}).get("analysis") or {}).get("looks") or ()
        )
    except (OSError, ValueError, UnsafeFileError, AttributeError, TypeError):
        return None
    if "primary" not in comp or "verdict" not in comp:
        return None
    primary = comp[comp["primary"].astype(str).str.lower() == "true"]
    if primary.empty:
        return None
    n_now = int(primary["n"].max())
    seeds = seeds_to_extend(primary, declared, n_now)
    if seeds is None:
        return None
    open_ = int((primary["verdict"] == "undecided").sum())
    return (
        f"Undecided: {open_} of {len(primary)} primary comparison(s). More seeds as a new look "
        f"(finished trials are kept): study extend {run_uri} --seeds {seeds}"
    )
