"""The ranking: which defenses work, in an order the evidence can carry.

Per table (dataset, preset, ratio), each defense gets its **mean CA-bounded ASR** over the
table's attacks (:func:`bench.report.verdict.bounded_asr`: on an attack where it loses more than
the bound of clean accuracy against `none`, its ASR counts as the undefended model's). Defenses
within the bound on every attack rank first, by that score; those outside it on some attack
follow, by the same score, and are marked with how many attacks they lost the model on.
Clean-model cells (ratio 0, no backdoor) are no attack to score: they join each row as the
clean-model columns (:func:`bench.report.aggregate.clean_column`).

**Ranks are groups.** A paired bootstrap over attacks, and over seeds within each attack
(:data:`REPLICATES` draws, a fixed generator so the page is reproducible), gives the score's 95%
interval and the difference between two defenses. A defense whose difference from the first of
its group is not significant (its 95% interval reaches 0) shares that rank: "1, 1, 3" says the
second is not shown to be worse than the first. With one seed, only attacks are resampled.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd

from bench.report.aggregate import (
    COST_VS_NONE,
    D_CA,
    DER,
    FLAGS,
    GROUP,
    LABEL,
    NONE,
    RANK,
    SEED_VALUES,
    WORST_ASR,
    WORST_ATTACK,
    clean_column,
    is_clean,
)
from bench.report.verdict import DEFAULT_MAX_DROP, TOLERANCE, bounded_asr, within
from bench.schema import Col

#: Mean CA-bounded ASR over the table's attacks, and its bootstrap 95% interval.
SCORE = "bounded_asr"
SCORE_LO = "bounded_asr_lo"
SCORE_HI = "bounded_asr_hi"
#: The mean ASR's and mean CA change's bootstrap 95% intervals (the same draws as the score's).
ASR_LO, ASR_HI = "asr_lo", "asr_hi"
D_CA_LO, D_CA_HI = "d_ca_lo", "d_ca_hi"
#: Attacks on which the defense loses more clean accuracy than the bound (0: it ranks first).
OUTSIDE = "outside_bound"
#: Whether the defense shares its rank with another.
TIED = "tied"
REPLICATES = 2000
#: Each bootstrapped statistic and the columns of its interval.
INTERVALS = {
    SCORE: (SCORE_LO, SCORE_HI),
    Col.asr: (ASR_LO, ASR_HI),
    D_CA: (D_CA_LO, D_CA_HI),
}
_BOOTSTRAP_SEED = 20261204


def ranking(agg: pd.DataFrame, max_drop: float = DEFAULT_MAX_DROP) -> pd.DataFrame:
    """Per table, the defenses (the `none` baseline is not ranked) in rank groups, with what a
    mean hides: the worst-case ASR (and its attack), the mean and worst CA change against `none`,
    the attacks outside the CA bound, DER, and the cost in minutes."""
    if agg.empty:
        return pd.DataFrame()
    clean = clean_column(agg)
    defended = agg[(agg[Col.defense] != NONE) & ~is_clean(agg)].copy()
    if defended.empty:
        return pd.DataFrame()
    defended["_minutes"] = defended[Col.train_seconds].astype(float) / 60
    defended["_bounded"] = [
        bounded_asr(a, d, b, max_drop)
        for a, d, b in zip(
            defended[Col.asr].astype(float),
            defended[D_CA].astype(float),
            defended["base_asr"].astype(float),
            strict=True,
        )
    ]
    defended["_outside"] = [not within(d, max_drop) for d in defended[D_CA].astype(float)]
    worst = (
        defended.sort_values([Col.asr, Col.attack], ascending=[False, True], na_position="last")
        .groupby([*GROUP, LABEL], sort=False)
        .head(1)
        .set_index([*GROUP, LABEL])
    )
    summary = (
        defended.groupby([*GROUP, LABEL], sort=False)
        .agg(
            der=(DER, "mean"),
            ca=(Col.ca, "mean"),
            asr=(Col.asr, "mean"),
            ra=(Col.ra, "mean"),
            d_ca=(D_CA, "mean"),
            worst_d_ca=(D_CA, "min"),
            attacks=(Col.attack, "nunique"),
            minutes=("_minutes", "mean"),
            cost_vs_none=(COST_VS_NONE, "mean"),
            n_min=("n", "min"),
            n_max=("n", "max"),
            **{SCORE: ("_bounded", "mean"), OUTSIDE: ("_outside", "sum")},
            **{flag: (flag, "any") for flag in FLAGS},
        )
        .reset_index()
    )
    key = pd.MultiIndex.from_frame(summary[[*GROUP, LABEL]])
    summary[WORST_ASR] = worst[Col.asr].reindex(key).to_numpy()
    summary[WORST_ATTACK] = worst[Col.attack].reindex(key).to_numpy()
    summary[OUTSIDE] = summary[OUTSIDE].astype(int)
    by_table = dict(tuple(summary.groupby(GROUP, sort=True)))
    tables = [
        _rank_table(by_table[k], cells, max_drop) for k, cells in defended.groupby(GROUP, sort=True)
    ]
    ranked = pd.concat(tables, ignore_index=True)
    return ranked.merge(clean, on=[Col.dataset, Col.preset, LABEL], how="left")


def _rank_table(summary: pd.DataFrame, cells: pd.DataFrame, max_drop: float) -> pd.DataFrame:
    """One table's defenses in order, with rank groups and score intervals."""
    summary = summary.assign(_tier=(summary[OUTSIDE] > 0).astype(int))
    summary = summary.sort_values(
        ["_tier", SCORE, WORST_ASR, Col.ca, LABEL],
        ascending=[True, True, True, False, True],
        na_position="last",
    ).reset_index(drop=True)
    replicates = _bootstrap(cells, list(summary[LABEL]), max_drop)
    draws = replicates[SCORE]
    with warnings.catch_warnings():  # a label without a score has all-NaN draws: NaN bounds
        warnings.simplefilter("ignore", RuntimeWarning)
        for name, (lo, hi) in INTERVALS.items():
            values = replicates[name]
            summary[lo] = np.nanpercentile(values, 2.5, axis=1) if values.size else math.nan
            summary[hi] = np.nanpercentile(values, 97.5, axis=1) if values.size else math.nan
    ranks, leader = [], 0
    for i in range(len(summary)):
        if i and _same_group(summary, draws, leader, i):
            ranks.append(ranks[leader])
            continue
        leader = i
        ranks.append(i + 1)
    summary[RANK] = ranks
    summary[TIED] = summary[RANK].duplicated(keep=False)
    return summary.drop(columns="_tier")


def _same_group(summary: pd.DataFrame, draws: np.ndarray, leader: int, i: int) -> bool:
    """Whether defense ``i`` is not shown to be worse than its group's first (same tier, and the
    95% interval of the paired score difference reaches 0)."""
    if summary.loc[i, "_tier"] != summary.loc[leader, "_tier"]:
        return False
    if math.isnan(summary.loc[i, SCORE]) or math.isnan(summary.loc[leader, SCORE]):
        return False
    diff = draws[i] - draws[leader]
    diff = diff[~np.isnan(diff)]
    return bool(diff.size) and float(np.percentile(diff, 2.5)) <= 1e-12


def _bootstrap(cells: pd.DataFrame, labels: list[str], max_drop: float) -> dict[str, np.ndarray]:
    """Replicates of each label's mean CA-bounded ASR (``SCORE``), mean ASR and mean CA change:
    attacks resampled with replacement, and within each attack the seeds (paired: every label
    draws the same attacks and seed positions). Each (labels, REPLICATES); NaN where a label has
    none of the drawn attacks."""
    attacks = sorted(cells[Col.attack].unique())
    if not attacks or not labels:
        return {name: np.empty((len(labels), 0)) for name in INTERVALS}
    rng = np.random.default_rng(_BOOTSTRAP_SEED)
    per_cell = {(r[LABEL], r[Col.attack]): _seed_array(r[SEED_VALUES]) for _, r in cells.iterrows()}
    widest = max((len(v) for v in per_cell.values()), default=1) or 1
    seed_u = rng.random((REPLICATES, len(attacks), widest))
    attack_draw = rng.integers(0, len(attacks), size=(REPLICATES, len(attacks)))
    out = {name: np.full((len(labels), REPLICATES), math.nan) for name in INTERVALS}
    for li, label in enumerate(labels):
        stats = {name: np.full((REPLICATES, len(attacks)), math.nan) for name in INTERVALS}
        for ai, attack in enumerate(attacks):
            values = per_cell.get((label, attack))
            if values is None or not len(values):
                continue
            n = len(values)
            pick = np.minimum((seed_u[:, ai, :n] * n).astype(int), n - 1)
            asr, d_ca, base = (values[pick, k].mean(axis=1) for k in range(3))
            inside = -d_ca <= max_drop + TOLERANCE  # verdict.within, vectorised
            stats[SCORE][:, ai] = np.where(inside, asr, np.maximum(asr, base))
            stats[Col.asr][:, ai] = asr
            stats[D_CA][:, ai] = d_ca
        for name, stat in stats.items():
            drawn = np.take_along_axis(stat, attack_draw, axis=1)
            with warnings.catch_warnings():  # an all-NaN replicate is expected, and NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                out[name][li] = np.nanmean(drawn, axis=1)
    return out


def _seed_array(text: object) -> np.ndarray:
    """A cell's per-seed (asr, d_ca, base_asr) rows; seeds with a missing value are left out."""
    try:
        values = json.loads(str(text)) if text else {}
    except ValueError:
        values = {}
    rows = [v for _, v in sorted(values.items()) if all(x is not None for x in v)]
    return np.asarray(rows, dtype=float).reshape(-1, 3)
