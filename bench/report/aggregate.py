"""From trial rows to leaderboard cells: one parameter version per cell, each trial scored against
its own baseline, seed means with 95% confidence intervals, and the flags that say where a
comparison is weaker than it looks.

A leaderboard cell is (dataset, preset, ratio, defense label, attack). Rules:

- **No pooling across parameter versions.** Rows that differ in anything but the seed (another
  ``config_id``: a changed default, another model or budget) are never averaged. Each cell shows
  its latest version (by ``finished_at``); older ones are *superseded* and counted.
- **n counts distinct seeds.**
- **Each trial is scored against its own baseline**: the ``none`` trial with the same spec except
  the defense fields (:data:`DEFENSE_FIELDS`) and the same seed, preferably from the same code
  revision. A baseline from another revision is used but flagged (``baseline_other_rev``); rows
  from a working tree with uncommitted changes are flagged (``dirty``); a trial with no such
  baseline gets no DER or cost (``no_baseline``).

Everything here is computed from the results table alone, so any tool can recompute it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from bench.report.catalog import BUILTIN_PACKAGE
from bench.report.stats import defense_effectiveness_rating, mean_ci95
from bench.schema import OK, SKIPPED, SPEC_COLUMNS, Col

#: One leaderboard table.
GROUP = [Col.dataset, Col.preset, Col.ratio]
#: Derived columns (not in the results table).
LABEL = "defense_label"
DER = "der"
#: CA minus the baseline's CA (negative: the defense costs clean accuracy), and the baseline's
#: own CA and ASR, all from the seed-matched `none` trial.
D_CA = "d_ca"
BASE_CA = "base_ca"
BASE_ASR = "base_asr"
COST_VS_NONE = "cost_vs_none"
VERSION = "version"
BASELINE_GIT_REV = "baseline_git_rev"
#: Flags (booleans per trial; per cell: any of its trials).
BASELINE_OTHER_REV = "baseline_other_rev"
DIRTY = "dirty"
NO_BASELINE = "no_baseline"
FLAGS = (BASELINE_OTHER_REV, DIRTY, NO_BASELINE)
#: Per cell: each seed's (ASR, CA change, baseline ASR), as JSON, so a ranking's bootstrap can
#: resample seeds from the aggregated table alone.
SEED_VALUES = "seed_values"
#: Per cell: older parameter versions left out, and their trials.
SUPERSEDED_VERSIONS = "superseded_versions"
SUPERSEDED_TRIALS = "superseded_trials"
#: A leaderboard cell.
CELL = [*GROUP, LABEL, Col.attack]
#: The spec fields that say which defense ran; every other spec field is shared with the
#: trial's `none` baseline.
DEFENSE_FIELDS = (Col.defense, Col.defense_params, Col.clean_fraction, Col.defense_revision)
#: The resolved precision joins the spec: a bf16 trial's baseline is a bf16 `none` trial.
BASELINE_KEY = [
    *(c for c in SPEC_COLUMNS if c not in (*DEFENSE_FIELDS, Col.seed)),
    Col.precision_used,
]
DIRTY_SUFFIX = "-dirty"
METRICS = [Col.ca, Col.asr, Col.ra, DER, D_CA]
DETECTION = [Col.det_tpr, Col.det_fpr, Col.det_precision, Col.det_f1, Col.det_auroc]
COST = [Col.defense_seconds, Col.train_seconds, Col.wall_seconds, Col.peak_memory_mb]
BASELINE = [BASE_CA, BASE_ASR]
#: The label of the undefended baseline (the built-in `none`).
NONE = "none"
#: The ratio of the clean-model cells (an attack that poisons nothing, ``clean``, runs at 0):
#: what each defense costs when there is no backdoor. They are no attack to rank against, so
#: the report shows them as a column of their own (:func:`clean_column`).
CLEAN_RATIO = 0.0
CLEAN_D_CA = "clean_d_ca"
CLEAN_FPR = "clean_fpr"
CLEAN_N = "clean_n"


def is_clean(table: pd.DataFrame) -> pd.Series:
    """Which rows are clean-model cells (no sample poisoned)."""
    return table[Col.ratio].astype(float) == CLEAN_RATIO


def clean_column(agg: pd.DataFrame) -> pd.DataFrame:
    """Per (dataset, preset, defense label): the CA change a defense causes on a model trained
    without poisoning (against `none` on that clean model, same seeds), the share of clean
    training samples it flags as poison (its false-positive rate; NaN where it flags none) and
    the seeds behind them."""
    cells = agg[is_clean(agg) & (agg[Col.defense] != NONE)]
    columns = [Col.dataset, Col.preset, LABEL, CLEAN_D_CA, CLEAN_FPR, CLEAN_N]
    if cells.empty:
        return pd.DataFrame(columns=columns)
    return (
        cells.groupby([Col.dataset, Col.preset, LABEL], sort=True)
        .agg(
            **{CLEAN_D_CA: (D_CA, "mean"), CLEAN_FPR: (Col.det_fpr, "mean"), CLEAN_N: ("n", "min")}
        )
        .reset_index()[columns]
    )


def defense_label(name: str, package: str | None, version: str | None, reconstructed: bool) -> str:
    """How a defense appears in tables: plugins carry their package, reconstructions say so."""
    label = name + (" (reconstructed)" if reconstructed else "")
    if package and package != BUILTIN_PACKAGE:
        label += f" [plugin: {package} {version}]" if version else f" [plugin: {package}]"
    return label


def ordered_defenses(labels: Iterable[str]) -> list[str]:
    """Labels in table order: `none` first, then alphabetical."""
    return sorted(set(labels), key=lambda v: (v != "none", v))


def in_table(table: pd.DataFrame, key: tuple) -> pd.DataFrame:
    """The rows of ``table`` that belong to one leaderboard table (``key``: :data:`GROUP`)."""
    if table.empty:
        return table
    return table[(table[GROUP] == pd.Series(key, index=GROUP)).all(axis=1)]


def is_dirty(git_rev: object) -> bool:
    return isinstance(git_rev, str) and git_rev.endswith(DIRTY_SUFFIX)


def _keys(rows: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """One string per row joining ``columns``' values (spec JSON columns are canonical)."""
    parts = [[str(v) for v in rows[c]] for c in columns]
    return ["\x1f".join(values) for values in zip(*parts, strict=True)] if parts else []


def _versions(rows: pd.DataFrame) -> list[str]:
    """The row's version: its parameter version (``config_id``, or for rows written without
    one a hash of the spec columns without the seed) and the precision it resolved to, so rows
    of one spec that ran at bf16 on one machine and fp32 on another are never pooled (`auto`
    resolves per machine): the latest precision's rows are shown, the others superseded."""
    rest = [c for c in SPEC_COLUMNS if c != Col.seed]
    derived = (hashlib.sha256(k.encode()).hexdigest()[:16] for k in _keys(rows, rest))
    config = [c if c else d for c, d in zip(rows[Col.config_id], derived, strict=True)]
    used = rows[Col.precision_used].fillna("").astype(str)
    return [f"{c}@{u}" if u else c for c, u in zip(config, used, strict=True)]


def _labelled(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.copy()
    reconstructed = rows[Col.defense_reconstructed].fillna(False).astype(bool)
    package = rows[Col.defense_package].replace("", BUILTIN_PACKAGE)
    rows["plugin"] = package != BUILTIN_PACKAGE
    rows["reconstructed"] = reconstructed
    rows[LABEL] = [
        defense_label(n, p, v, bool(r))
        for n, p, v, r in zip(
            rows[Col.defense], package, rows[Col.defense_version], reconstructed, strict=True
        )
    ]
    return rows


@dataclass(frozen=True)
class Versions:
    """The ``ok`` trials split by parameter version: those the leaderboard shows (the latest
    version of each cell, one row per seed) and the older ones it leaves out."""

    current: pd.DataFrame
    superseded: pd.DataFrame
    everything: pd.DataFrame  # every ok trial (baselines may come from any version)


def split_versions(df: pd.DataFrame) -> Versions:
    ok = _labelled(df[df[Col.status] == OK])
    if ok.empty:
        return Versions(ok, ok, ok)
    ok[VERSION] = _versions(ok)
    cell = _keys(ok, CELL)
    stamp = ok[Col.finished_at].astype(float).fillna(-math.inf).tolist()
    latest: dict[str, tuple[float, str]] = {}
    for c, v, s in zip(cell, ok[VERSION], stamp, strict=True):
        latest[c] = max(latest.get(c, (-math.inf, "")), (s, v))
    is_current = pd.Series(
        [v == latest[c][1] for c, v in zip(cell, ok[VERSION], strict=True)], index=ok.index
    )
    # One row per seed (a table merged from several stores may repeat a trial: keep the latest).
    order = pd.Series(stamp, index=ok.index).sort_values(kind="stable").index
    current = ok.loc[order][is_current.loc[order]].drop_duplicates([*CELL, Col.seed], keep="last")
    return Versions(current.sort_index(), ok[~is_current], ok)


def _score(trials: pd.DataFrame, everything: pd.DataFrame) -> pd.DataFrame:
    """DER, cost and flags of each trial against its `none` baseline (see the module doc)."""
    trials = trials.copy()
    base = everything[everything[Col.defense] == "none"]
    stamp = base[Col.finished_at].astype(float).fillna(-math.inf)
    candidates: dict[tuple[str, str], list[tuple[float, pd.Series]]] = {}
    for key, (_, row), s in zip(_keys(base, BASELINE_KEY), base.iterrows(), stamp, strict=True):
        candidates.setdefault((key, str(row[Col.seed])), []).append((s, row))
    ders, costs, revs, other_rev, dirty, missing = [], [], [], [], [], []
    base_ca, base_asr = [], []
    for key, (_, row) in zip(_keys(trials, BASELINE_KEY), trials.iterrows(), strict=True):
        found = candidates.get((key, str(row[Col.seed])), [])
        # Same revision first, then the most recent.
        best = max(found, key=lambda c: (c[1][Col.git_rev] == row[Col.git_rev], c[0]), default=None)
        ref = None if best is None else best[1]
        if ref is None:
            base_ca.append(math.nan)
            base_asr.append(math.nan)
            ders.append(math.nan)
            costs.append(math.nan)
            revs.append("")
            other_rev.append(False)
            dirty.append(is_dirty(row[Col.git_rev]))
            missing.append(True)
            continue
        base_ca.append(float(ref[Col.ca]))
        base_asr.append(float(ref[Col.asr]))
        ders.append(
            defense_effectiveness_rating(ref[Col.ca], ref[Col.asr], row[Col.ca], row[Col.asr])
        )
        costs.append(_cost(row, ref))
        revs.append(ref[Col.git_rev])
        other_rev.append(ref[Col.git_rev] != row[Col.git_rev])
        dirty.append(is_dirty(row[Col.git_rev]) or is_dirty(ref[Col.git_rev]))
        missing.append(False)
    trials[DER] = ders
    trials[BASE_CA] = base_ca
    trials[BASE_ASR] = base_asr
    trials[D_CA] = trials[Col.ca].astype(float) - trials[BASE_CA]
    trials[COST_VS_NONE] = costs
    trials[BASELINE_GIT_REV] = revs
    trials[BASELINE_OTHER_REV] = other_rev
    trials[DIRTY] = dirty
    trials[NO_BASELINE] = missing
    return trials


def _cost(row: pd.Series, ref: pd.Series) -> float:
    """Seconds to a defended model over seconds to the undefended one.

    Both sides are ``train_seconds``: the defense's own work plus the training of the undefended
    model it starts from (wherever that was built), never time spent waiting for another
    trial's artifacts (``wait_seconds``). Seconds measured on different devices are not
    compared."""
    base = ref[Col.train_seconds]
    if not base or math.isnan(base) or row[Col.device] != ref[Col.device]:
        return math.nan
    return float(row[Col.train_seconds]) / float(base)


def seed_values(trials: pd.DataFrame) -> str:
    """One cell's per-seed ASR, CA change and baseline ASR: ``{"seed": [asr, d_ca, base_asr]}``
    (JSON; a missing value is null)."""

    def num(x: object) -> float | None:
        x = float(x)  # type: ignore[arg-type]
        return None if math.isnan(x) else round(x, 6)

    return json.dumps(
        {
            str(r[Col.seed]): [num(r[Col.asr]), num(r[D_CA]), num(r[BASE_ASR])]
            for _, r in trials.sort_values(Col.seed).iterrows()
        },
        sort_keys=True,
    )


def trial_table(df: pd.DataFrame) -> pd.DataFrame:
    """The trials the leaderboard shows (latest parameter version per cell, one per seed) with
    labels, DER, cost relative to `none` and flags: one row per trial."""
    versions = split_versions(df)
    if versions.current.empty:
        return versions.current
    return _score(versions.current, versions.everything)


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """One row per leaderboard cell: seed count, means and 95% CI half-widths, flags, and the
    superseded versions left out."""
    versions = split_versions(df)
    if versions.current.empty:
        return pd.DataFrame()
    trials = _score(versions.current, versions.everything)
    old = versions.superseded
    old_by_cell = {k: g for k, g in old.groupby(CELL, sort=False, dropna=False)} if len(old) else {}
    rows = []
    for key, g in trials.groupby(CELL, sort=True, dropna=False):
        row = dict(zip(CELL, key, strict=True))
        older = old_by_cell.get(key, old.iloc[:0])
        defended = g[g[Col.defense] != "none"]
        row.update(
            {
                Col.defense: g[Col.defense].iloc[0],
                "plugin": bool(g["plugin"].iloc[0]),
                "reconstructed": bool(g["reconstructed"].iloc[0]),
                Col.defense_package: g[Col.defense_package].iloc[0],
                Col.defense_version: g[Col.defense_version].iloc[0],
                Col.defense_reference_name: g[Col.defense_reference_name].iloc[0],
                Col.model: ", ".join(sorted(g[Col.model].unique())),
                Col.data_source: "; ".join(sorted(g[Col.data_source].dropna().unique())),
                Col.device: "; ".join(sorted(g[Col.device].dropna().unique())),
                Col.reference: g[Col.reference].iloc[0],
                Col.attack_mode: g[Col.attack_mode].iloc[0],
                Col.attack_package: g[Col.attack_package].iloc[0],
                Col.attack_version: g[Col.attack_version].iloc[0],
                Col.config_id: g[VERSION].iloc[0].split("@")[0],
                Col.precision_used: g[Col.precision_used].iloc[0],
                "n": int(g[Col.seed].nunique()),
                "seeds": ",".join(str(s) for s in sorted(g[Col.seed].unique())),
            }
        )
        for m in METRICS:
            values = [v for v in g[m] if not math.isnan(v)]
            row[m], row[f"{m}_ci"] = mean_ci95(values)
        for col in [*DETECTION, *COST, COST_VS_NONE, *BASELINE]:
            row[col] = g[col].astype(float).mean()
        row[SEED_VALUES] = seed_values(g)
        row[Col.versions] = g[Col.versions].iloc[-1]
        row[Col.git_rev] = ", ".join(sorted(g[Col.git_rev].unique()))
        row[BASELINE_GIT_REV] = ", ".join(sorted(set(defended[BASELINE_GIT_REV]) - {""}))
        row[BASELINE_OTHER_REV] = bool(defended[BASELINE_OTHER_REV].any())
        row[DIRTY] = bool(g[DIRTY].any())
        row[NO_BASELINE] = bool(defended[NO_BASELINE].any())
        row[SUPERSEDED_VERSIONS] = int(older[VERSION].nunique()) if len(older) else 0
        row[SUPERSEDED_TRIALS] = len(older)
        rows.append(row)
    return pd.DataFrame(rows)


#: Why a cell is missing from the leaderboard (a ``skipped`` row's ``error``).
REASON = "reason"


def skipped_cells(df: pd.DataFrame) -> pd.DataFrame:
    """Cells the grid left out (``skipped`` rows) and that no ``ok`` trial fills: one row per
    (table, defense, attack) with the reason."""
    skipped = df[df[Col.status] == SKIPPED]
    columns = [*GROUP, Col.defense, Col.attack, Col.reference, REASON]
    if skipped.empty:
        return pd.DataFrame(columns=columns)
    keys = [*GROUP, Col.defense, Col.attack]
    measured = set(_keys(df[df[Col.status] == OK], keys))
    left_out = skipped[[k not in measured for k in _keys(skipped, keys)]]
    out = left_out[[*keys, Col.reference]].assign(
        **{
            Col.reference: left_out[Col.reference].fillna(""),
            REASON: left_out[Col.error].fillna("").astype(str).str.strip(),
        }
    )
    return out.drop_duplicates(keys).sort_values(keys).reset_index(drop=True)


#: Ranking columns beyond the means: the worst case over a table's attacks, cost, seeds (the
#: ranking itself is :func:`bench.report.ranks.ranking`).
WORST_ASR = "worst_asr"
WORST_ATTACK = "worst_attack"
WORST_D_CA = "worst_d_ca"
MINUTES = "minutes"
RANK = "rank"
