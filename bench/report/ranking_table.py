"""The ranking table, declared once: its columns (label, sort key, help text), each cell's text
and its rows (the undefended baseline pinned first, then the ranked defenses). The page and the
markdown both render this declaration, so the two cannot drift apart.

A cell is plain text plus an optional aside (the worst attack beside the worst-case ASR); each
renderer escapes and decorates it (the page adds glyphs, badges and sort values, the markdown
footnote markers)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from bench.report.aggregate import (
    BASELINE_OTHER_REV,
    CLEAN_D_CA,
    CLEAN_FPR,
    COST_VS_NONE,
    D_CA,
    DER,
    DIRTY,
    GROUP,
    LABEL,
    MINUTES,
    NO_BASELINE,
    NONE,
    RANK,
    WORST_ASR,
    WORST_ATTACK,
    WORST_D_CA,
)
from bench.report.details import is_missing, points
from bench.report.naming import seeds_text
from bench.report.ranks import (
    ASR_HI,
    ASR_LO,
    D_CA_HI,
    D_CA_LO,
    OUTSIDE,
    SCORE,
    SCORE_HI,
    SCORE_LO,
    TIED,
)
from bench.report.text import pct
from bench.report.verdict import DEFAULT_MAX_DROP
from bench.schema import Col

#: Footnote markers of a flagged cell or ranking row (explained under each table).
MARKS = {BASELINE_OTHER_REV: "†", DIRTY: "‡", NO_BASELINE: "§"}
#: Set on the pinned baseline row: it has no rank and no change against itself.
IS_BASELINE = "is_baseline"
#: The ranking's name column (the renderers decorate it: glyph, marks, badges).
NAME = Col.defense


@dataclass(frozen=True)
class RankColumn:
    """One column: its header, the ranking frame's column it sorts by, what it means, whether it
    is numeric, and its cell text (with an optional aside) for a row."""

    label: str
    key: str
    help: str
    numeric: bool
    text: Callable[[pd.Series], str]
    aside: Callable[[pd.Series], str] = lambda _row: ""


def _minutes(row: pd.Series) -> str:
    return "–" if is_missing(row[MINUTES]) else f"{row[MINUTES]:.1f}"


def _cost(row: pd.Series) -> str:
    return "–" if is_missing(row[COST_VS_NONE]) else f"{row[COST_VS_NONE]:.2f}×"


def _rank(row: pd.Series) -> str:
    if row.get(IS_BASELINE, False):
        return "–"
    return f"{int(row[RANK])}=" if bool(row.get(TIED, False)) else str(int(row[RANK]))


def _with_interval(row: pd.Series, key: str, fmt, lo: str, hi: str) -> str:
    """A mean over the table's attacks with its bootstrap interval ("12.0 [4.1, 20.3]"); the
    baseline's, or one without replicates, alone."""
    if is_missing(row.get(key)):
        return "–"
    if row.get(IS_BASELINE, False) or is_missing(row.get(lo)):
        return fmt(row[key])
    return f"{fmt(row[key])} [{fmt(row[lo])}, {fmt(row[hi])}]"


def _score(row: pd.Series) -> str:
    return _with_interval(row, SCORE, pct, SCORE_LO, SCORE_HI)


def bound_text(row: pd.Series) -> str:
    if row.get(IS_BASELINE, False):
        return "–"
    lost, of = int(row[OUTSIDE]), int(row["attacks"])
    return f"kept on {of}/{of}" if not lost else f"lost on {lost}/{of}"


BOUND_POINTS = f"{100 * DEFAULT_MAX_DROP:g}"

COLUMNS: tuple[RankColumn, ...] = (
    RankColumn("rank", RANK, "=: shares the rank, not separated by the bootstrap", True, _rank),
    RankColumn(Col.defense, NAME, "", False, lambda r: str(r[LABEL])),
    RankColumn(
        "CA-bounded ASR",
        SCORE,
        f"mean over attacks of the ASR, counted as the undefended model's where more than "
        f"{BOUND_POINTS} points of CA are lost; [95% bootstrap interval]",
        True,
        _score,
    ),
    RankColumn(
        "CA bound",
        OUTSIDE,
        f"attacks on which clean accuracy stays within {BOUND_POINTS} points of none's",
        True,
        bound_text,
    ),
    RankColumn(
        "worst-case ASR",
        WORST_ASR,
        "the highest ASR over this table's attacks",
        True,
        lambda r: pct(r[WORST_ASR]),
        aside=lambda r: str(r[WORST_ATTACK]),
    ),
    RankColumn(
        "mean ASR",
        Col.asr,
        "[95% bootstrap interval over attacks and seeds]",
        True,
        lambda r: _with_interval(r, Col.asr, pct, ASR_LO, ASR_HI),
    ),
    RankColumn(
        "mean CA change",
        D_CA,
        "against none of the same seed, in points [95% bootstrap interval]",
        True,
        lambda r: _with_interval(r, D_CA, points, D_CA_LO, D_CA_HI),
    ),
    RankColumn("worst CA change", WORST_D_CA, "", True, lambda r: points(r[WORST_D_CA])),
    RankColumn(
        "CA change, clean model",
        CLEAN_D_CA,
        "on a model trained without poisoning, against none on it (same seeds): what the "
        "defense costs when there is no backdoor",
        True,
        lambda r: points(r.get(CLEAN_D_CA)),
    ),
    RankColumn(
        "clean flagged",
        CLEAN_FPR,
        "share of the clean model's training samples the defense flags as poison (its "
        "false-positive rate); – where it flags none or did not run there",
        True,
        lambda r: "–" if is_missing(r.get(CLEAN_FPR)) else pct(r[CLEAN_FPR]),
    ),
    RankColumn(
        "mean DER", DER, "defense effectiveness rating, 50 = no change", True, lambda r: pct(r[DER])
    ),
    RankColumn("minutes", MINUTES, "to a defended model, mean per attack", True, _minutes),
    RankColumn("× none", COST_VS_NONE, "time relative to training without a defense", True, _cost),
    RankColumn("seeds", "n_min", "", True, lambda r: seeds_text([r["n_min"], r["n_max"]])),
)

#: Under a clean-model table (ratio 0) in place of a ranking.
CLEAN_NOTE = (
    "No backdoor here: each defense ran on a model trained without poisoning, so the CA change "
    "against none is what it costs for nothing, and a flagged sample is a false positive (the "
    "ASR column only counts clean non-target images landing in the target class). Defenses "
    "are not ranked on it; these numbers join each ranking as its clean-model columns."
)

INTRO = (
    f"A defense that loses more than {BOUND_POINTS} points of clean accuracy against no defense "
    "(same seed) on an attack does not work there: its ASR counts as the undefended model's "
    "(the CA-bounded ASR). Defenses that keep clean accuracy on every attack rank first, by "
    "mean CA-bounded ASR over this table's attacks; those that lose it somewhere follow, marked "
    "in the CA bound column. A rank with = is shared: a paired bootstrap over attacks and seeds "
    "does not separate that defense from the first of its group. The undefended baseline (none) "
    "is pinned first, unranked."
)


def baseline_rows(group: pd.DataFrame) -> pd.DataFrame:
    """The pinned `none` rows of one table (one per label), in the ranking's columns: its
    worst-case and mean ASR, its minutes; no rank, DER or change against itself."""
    base = group[group[Col.defense] == NONE]
    rows = []
    for label, b in base.groupby(LABEL, sort=True):
        worst = b.sort_values([Col.asr, Col.attack], ascending=[False, True]).iloc[0]
        rows.append(
            {
                **{k: b.iloc[0][k] for k in GROUP},
                LABEL: label,
                IS_BASELINE: True,
                RANK: float("nan"),
                SCORE: float("nan"),
                OUTSIDE: float("nan"),
                DER: float("nan"),
                WORST_ASR: worst[Col.asr],
                WORST_ATTACK: worst[Col.attack],
                Col.asr: b[Col.asr].mean(),
                D_CA: float("nan"),
                WORST_D_CA: float("nan"),
                CLEAN_D_CA: float("nan"),
                CLEAN_FPR: float("nan"),
                MINUTES: b[Col.train_seconds].astype(float).mean() / 60,
                COST_VS_NONE: 1.0,
                "n_min": int(b["n"].min()),
                "n_max": int(b["n"].max()),
            }
        )
    return pd.DataFrame(rows)


def table_rows(group: pd.DataFrame, ranks: pd.DataFrame) -> list[pd.Series]:
    """The ranking's rows for one table: the baseline first, then the defenses by rank."""
    ranked = ranks.assign(**{IS_BASELINE: False})
    return [r for _, r in baseline_rows(group).iterrows()] + [r for _, r in ranked.iterrows()]


def rank_texts(ranks: pd.DataFrame) -> dict[str, str]:
    """Each ranked label's rank as the tables show it ("2=" where shared)."""
    return {str(r[LABEL]): _rank(r) for _, r in ranks.iterrows()}


def marks(row: pd.Series) -> str:
    """The footnote markers of a cell or a ranking row: '' when nothing is flagged."""
    found = "".join(mark for flag, mark in MARKS.items() if bool(row.get(flag, False)))
    return f" {found}" if found else ""
