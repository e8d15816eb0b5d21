"""From trial rows to leaderboard numbers: DER against the `none` baseline, seed means with 95%
confidence intervals, detection and cost summaries, and the per-table ranking.

Everything here is computed from the results table alone, so any tool can recompute it.
"""

from __future__ import annotations

import math

import pandas as pd

from bench import metrics
from bench.store import OK

#: One leaderboard table.
GROUP = ["dataset", "preset", "ratio"]
#: Trials that share a `none` baseline (same poisoned data, same model, same budget).
CELL = ["dataset", "preset", "model", "ratio", "attack", "target"]
BUILTIN_PACKAGE = "backdoor-leaderboard"
METRICS = ["ca", "asr", "ra", "der"]
DETECTION = ["det_tpr", "det_fpr", "det_precision", "det_f1", "det_auroc"]
COST = ["defense_seconds", "train_seconds", "wall_seconds", "peak_memory_mb"]


def _column(df: pd.DataFrame, name: str, default: object = None) -> pd.Series:
    """A column, or a constant for tables written before the column existed."""
    return df[name] if name in df else pd.Series(default, index=df.index, dtype=object)


def defense_label(name: str, package: str | None, version: str | None, reconstructed: bool) -> str:
    """How a defense appears in tables: plugins carry their package, reconstructions say so."""
    label = name + (" (reconstructed)" if reconstructed else "")
    if package and package != BUILTIN_PACKAGE:
        label += f" [plugin: {package} {version}]" if version else f" [plugin: {package}]"
    return label


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """Successful trials with labels, DER and cost relative to `none` (one row per trial)."""
    if df.empty or "status" not in df:
        return pd.DataFrame()
    ok = df[df["status"] == OK].copy()
    if ok.empty:
        return ok
    reconstructed = _column(ok, "defense_reconstructed", False).fillna(False).astype(bool)
    ok["plugin"] = _column(ok, "defense_package", BUILTIN_PACKAGE).fillna(BUILTIN_PACKAGE) != (
        BUILTIN_PACKAGE
    )
    ok["reconstructed"] = reconstructed
    ok["defense_label"] = [
        defense_label(n, p, v, bool(r))
        for n, p, v, r in zip(
            ok["defense"],
            _column(ok, "defense_package"),
            _column(ok, "defense_version"),
            reconstructed,
            strict=True,
        )
    ]
    for col in DETECTION + COST:
        if col not in ok:
            ok[col] = math.nan
    base = ok[ok["defense"] == "none"]
    by_seed = base.groupby([*CELL, "seed"])[["ca", "asr", "train_seconds"]].mean()
    by_cell = base.groupby(CELL)[["ca", "asr", "train_seconds"]].mean()
    ders, costs = [], []
    for _, row in ok.iterrows():
        cell = tuple(row[c] for c in CELL)
        ref = None
        if (*cell, row["seed"]) in by_seed.index:
            ref = by_seed.loc[(*cell, row["seed"])]
        elif cell in by_cell.index:
            ref = by_cell.loc[cell]
        if ref is None:
            ders.append(math.nan)
            costs.append(math.nan)
            continue
        ders.append(
            metrics.defense_effectiveness_rating(ref["ca"], ref["asr"], row["ca"], row["asr"])
        )
        costs.append(
            row["train_seconds"] / ref["train_seconds"] if ref["train_seconds"] else math.nan
        )
    ok["der"] = ders
    ok["cost_vs_none"] = costs
    return ok


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (table, defense, attack): seed count, means and 95% CI half-widths."""
    trials = trial_table(df)
    if trials.empty:
        return pd.DataFrame()
    keys = [*GROUP, "defense_label", "attack"]
    rows = []
    for key, g in trials.groupby(keys, sort=True):
        row = dict(zip(keys, key, strict=True))
        row.update(
            defense=g["defense"].iloc[0],
            plugin=bool(g["plugin"].iloc[0]),
            reconstructed=bool(g["reconstructed"].iloc[0]),
            defense_package=_column(g, "defense_package").iloc[0],
            defense_version=_column(g, "defense_version").iloc[0],
            model=", ".join(sorted(g["model"].unique())),
            data_source="; ".join(sorted(_column(g, "data_source", "").dropna().unique())),
            device="; ".join(sorted(_column(g, "device", "").dropna().unique())),
            n=len(g),
            seeds=",".join(str(s) for s in sorted(g["seed"])),
        )
        for m in METRICS:
            values = [v for v in g[m] if not math.isnan(v)]
            row[m], row[f"{m}_ci"] = metrics.mean_ci95(values)
        for col in [*DETECTION, *COST, "cost_vs_none"]:
            row[col] = g[col].astype(float).mean()
        row["versions"] = _column(g, "versions", "").iloc[-1]
        row["git_rev"] = _column(g, "git_rev", "").iloc[-1]
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
            ca=("ca", "mean"),
            asr=("asr", "mean"),
            ra=("ra", "mean"),
            attacks=("attack", "nunique"),
            cost_vs_none=("cost_vs_none", "mean"),
        )
        .reset_index()
    )
    summary = summary.sort_values(
        [*GROUP, "der", "ca"], ascending=[True] * len(GROUP) + [False, False]
    )
    summary["rank"] = summary.groupby(GROUP).cumcount() + 1
    return summary.reset_index(drop=True)
