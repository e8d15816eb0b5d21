"""From trial rows to leaderboard numbers: DER against the `none` baseline, seed means with 95%
confidence intervals, detection and cost summaries, and the per-table ranking.

Everything here is computed from the results table alone, so any tool can recompute it.
"""

from __future__ import annotations

import math

import pandas as pd

from bench import metrics
from bench.schema import OK, Col

#: One leaderboard table.
GROUP = [Col.dataset, Col.preset, Col.ratio]
#: Trials that share a `none` baseline (same poisoned data, same model, same budget).
CELL = [Col.dataset, Col.preset, Col.model, Col.ratio, Col.attack, Col.target]
BUILTIN_PACKAGE = "backdoor-leaderboard"
METRICS = [Col.ca, Col.asr, Col.ra, "der"]
DETECTION = [Col.det_tpr, Col.det_fpr, Col.det_precision, Col.det_f1, Col.det_auroc]
COST = [Col.defense_seconds, Col.train_seconds, Col.wall_seconds, Col.peak_memory_mb]


def defense_label(name: str, package: str | None, version: str | None, reconstructed: bool) -> str:
    """How a defense appears in tables: plugins carry their package, reconstructions say so."""
    label = name + (" (reconstructed)" if reconstructed else "")
    if package and package != BUILTIN_PACKAGE:
        label += f" [plugin: {package} {version}]" if version else f" [plugin: {package}]"
    return label


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """Successful trials with labels, DER and cost relative to `none` (one row per trial)."""
    ok = df[df[Col.status] == OK].copy()
    if ok.empty:
        return ok
    reconstructed = ok[Col.defense_reconstructed].fillna(False).astype(bool)
    package = ok[Col.defense_package].replace("", BUILTIN_PACKAGE)
    ok["plugin"] = package != BUILTIN_PACKAGE
    ok["reconstructed"] = reconstructed
    ok["defense_label"] = [
        defense_label(n, p, v, bool(r))
        for n, p, v, r in zip(
            ok[Col.defense], package, ok[Col.defense_version], reconstructed, strict=True
        )
    ]
    base = ok[ok[Col.defense] == "none"]
    baseline = [Col.ca, Col.asr, Col.train_seconds]
    by_seed = base.groupby([*CELL, Col.seed])[baseline].mean()
    by_cell = base.groupby(CELL)[baseline].mean()
    ders, costs = [], []
    for _, row in ok.iterrows():
        cell = tuple(row[c] for c in CELL)
        ref = None
        if (*cell, row[Col.seed]) in by_seed.index:
            ref = by_seed.loc[(*cell, row[Col.seed])]
        elif cell in by_cell.index:
            ref = by_cell.loc[cell]
        if ref is None:
            ders.append(math.nan)
            costs.append(math.nan)
            continue
        ders.append(
            metrics.defense_effectiveness_rating(
                ref[Col.ca], ref[Col.asr], row[Col.ca], row[Col.asr]
            )
        )
        base_seconds = ref[Col.train_seconds]
        costs.append(row[Col.train_seconds] / base_seconds if base_seconds else math.nan)
    ok["der"] = ders
    ok["cost_vs_none"] = costs
    return ok


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, defense, attack): seed count, means and 95% CI half-widths."""
    trials = trial_table(df)
    if trials.empty:
        return pd.DataFrame()
    keys = [*GROUP, "defense_label", Col.attack]
    rows = []
    for key, g in trials.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        row.update(
            {
                Col.defense: g[Col.defense].iloc[0],
                "plugin": bool(g["plugin"].iloc[0]),
                "reconstructed": bool(g["reconstructed"].iloc[0]),
                Col.defense_package: g[Col.defense_package].iloc[0],
                Col.defense_version: g[Col.defense_version].iloc[0],
                Col.model: ", ".join(sorted(g[Col.model].unique())),
                Col.data_source: "; ".join(sorted(g[Col.data_source].dropna().unique())),
                Col.device: "; ".join(sorted(g[Col.device].dropna().unique())),
                "n": len(g),
                "seeds": ",".join(str(s) for s in sorted(g[Col.seed])),
            }
        )
        for m in METRICS:
            values = [v for v in g[m] if not math.isnan(v)]
            row[m], row[f"{m}_ci"] = metrics.mean_ci95(values)
        for col in [*DETECTION, *COST, "cost_vs_none"]:
            row[col] = g[col].astype(float).mean()
        row[Col.versions] = g[Col.versions].iloc[-1]
        row[Col.git_rev] = g[Col.git_rev].iloc[-1]
        rows.append(row)
    return pd.DataFrame(rows)


def ranking(agg: pd.DataFrame) -> pd.DataFrame:
    """Per table: defenses ranked by mean DER over attacks, ties broken by mean CA."""
    if agg.empty:
        return pd.DataFrame()
    summary = (
        agg.groupby([*GROUP, "defense_label"], sort=False)
        .agg(
            der=("der", "mean"),
            ca=(Col.ca, "mean"),
            asr=(Col.asr, "mean"),
            ra=(Col.ra, "mean"),
            attacks=(Col.attack, "nunique"),
            cost_vs_none=("cost_vs_none", "mean"),
        )
        .reset_index()
    )
    summary = summary.sort_values(
        [*GROUP, "der", Col.ca], ascending=[True] * len(GROUP) + [False, False]
    )
    summary["rank"] = summary.groupby(GROUP).cumcount() + 1
    return summary.reset_index(drop=True)
