"""A leaderboard cell's details, as the page shows them on click: readable numbers (percent,
minutes, ISO dates), one row per seed, the trial logs, the parameters, the published number
where a reference has one, and every other recorded field with its meaning.

Everything here is plain text in a JSON-able dict; the page's script puts it in the document
with ``textContent`` only, so nothing in it is ever markup.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import Any

import pandas as pd

from bench.report.aggregate import (
    BASE_ASR,
    BASE_CA,
    BASELINE_GIT_REV,
    BASELINE_OTHER_REV,
    D_CA,
    DER,
    DIRTY,
    LABEL,
    NO_BASELINE,
    NONE,
)
from bench.report.protocol import json_object, params_text
from bench.report.text import pct
from bench.schema import BY_NAME, Col

#: Fields the details show elsewhere (or that only repeat others): left out of "all fields".
_SHOWN = {
    Col.spec,
    Col.error,
    Col.ca,
    Col.asr,
    Col.ra,
    Col.seed,
    Col.attack,
    Col.defense,
    Col.dataset,
    Col.preset,
    Col.ratio,
    Col.attack_params,
    Col.defense_params,
}
#: Columns holding Unix seconds.
_TIMES = {Col.started_at, Col.finished_at}


def is_missing(x: Any) -> bool:
    if x is None or x is pd.NA:
        return True
    return isinstance(x, float) and math.isnan(x)


def points(x: Any) -> str:
    """A change of a fraction in percentage points, signed: '-1.2'; '–' when unknown."""
    if is_missing(x):
        return "–"
    text = f"{100 * float(x):+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text


def minutes(seconds: Any) -> str:
    if is_missing(seconds):
        return "–"
    m = float(seconds) / 60
    return f"{m:.1f} min" if m < 100 else f"{m:,.0f} min"


def memory(mb: Any) -> str:
    if is_missing(mb):
        return "–"
    return f"{float(mb) / 1024:.1f} GB" if float(mb) >= 1024 else f"{float(mb):.0f} MB"


def iso(seconds: Any) -> str:
    """Unix seconds as an ISO date and time in UTC."""
    if is_missing(seconds):
        return "–"
    return datetime.fromtimestamp(float(seconds), UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def log_path(run: Any, trial_id: Any) -> str:
    """Where the trial's log is, relative to the results directory's parent."""
    if is_missing(run) or not run:
        return "–"
    return f"results/runs/{run}/trials/{trial_id}.log"


def _value(name: str, value: Any) -> str:
    """One recorded field as text: dates in ISO, JSON laid out as 'key: value' lines."""
    if is_missing(value) or value == "":
        return ""
    if name in _TIMES:
        return iso(value)
    if isinstance(value, str) and value[:1] in "{[":
        try:
            parsed = json.loads(value)
        except ValueError:
            return value
        if isinstance(parsed, dict):
            return "\n".join(f"{k}: {json.dumps(v)}" for k, v in parsed.items()) or "{}"
        return json.dumps(parsed)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _fields(trial: pd.Series, recorded: list[str]) -> list[list[str]]:
    """[field, value] for every non-empty column of the results table (``recorded``) not shown
    elsewhere, including columns this schema does not know (a newer table's, e.g. a defense's
    own metrics). What a field means is in :func:`meanings`, once per page."""
    rows = []
    for name in recorded:
        if name in _SHOWN:
            continue
        text = _value(name, trial.get(name))
        if text:
            rows.append([name, text])
    return rows


def meanings(recorded: list[str]) -> dict[str, str]:
    """Column -> what it means (from the schema), for the columns a page shows."""
    return {name: BY_NAME[name].meaning for name in recorded if name in BY_NAME}


SEED_HEADER = [
    Col.seed,
    "CA",
    "ASR",
    "RA",
    "CA change",
    "DER",
    "defense (min)",
    "total (min)",
    "finished",
    "revision",
    "log",
]


def _seed_row(t: pd.Series) -> list[str]:
    return [
        str(t[Col.seed]),
        pct(t[Col.ca]),
        pct(t[Col.asr]),
        pct(t[Col.ra]),
        points(t[D_CA]),
        pct(t[DER]),
        minutes(t[Col.defense_seconds]).removesuffix(" min"),
        minutes(t[Col.train_seconds]).removesuffix(" min"),
        iso(t[Col.finished_at]),
        str(t[Col.git_rev]) or "–",
        log_path(t[Col.run], t[Col.trial_id]),
    ]


def _flags(cell: pd.Series) -> list[str]:
    notes = []
    if cell[BASELINE_OTHER_REV]:
        notes.append(
            f"† Scored against a `none` trial from another code revision "
            f"({cell[BASELINE_GIT_REV]}; this cell: {cell[Col.git_rev]})."
        )
    if cell[DIRTY]:
        notes.append(
            "‡ From a working tree with uncommitted changes (or scored against a baseline from "
            "one): the code is not recoverable from git."
        )
    if cell[NO_BASELINE]:
        notes.append("§ No `none` trial with the same spec and seed: no DER and no CA change.")
    return notes


def cell_details(
    cell: pd.Series,
    trials: pd.DataFrame,
    recorded: list[str],
    published: str = "",
) -> dict[str, Any]:
    """The details of one aggregated cell (an :func:`~bench.report.aggregate.aggregate` row)
    and its trials (:func:`~bench.report.aggregate.trial_table` rows, one per seed);
    ``recorded``: the results table's columns; ``published``: the reference's numbers."""
    n = int(cell["n"])
    ratio = float(cell[Col.ratio])
    facts = [
        ["clean accuracy (CA)", f"{pct(cell[Col.ca])}%" + _ci(cell, Col.ca)],
        ["attack success (ASR)", f"{pct(cell[Col.asr])}%" + _ci(cell, Col.asr)],
        ["robust accuracy (RA)", f"{pct(cell[Col.ra])}%" + _ci(cell, Col.ra)],
    ]
    if cell[Col.defense] != NONE:
        facts += [
            ["CA change vs none", f"{points(cell[D_CA])} points (none: {pct(cell[BASE_CA])}%)"],
            ["ASR of none", f"{pct(cell[BASE_ASR])}%"],
            ["DER", pct(cell[DER]) + _ci(cell, DER) + " (50 = no change)"],
        ]
    facts += [
        ["time to a defended model", minutes(cell[Col.train_seconds])],
        ["of which the defense", minutes(cell[Col.defense_seconds])],
        ["hardware", str(cell[Col.device]) or "–"],
        ["peak memory", memory(cell[Col.peak_memory_mb])],
    ]
    if not is_missing(cell[Col.det_tpr]):
        facts.append(
            [
                "poison detection",
                f"TPR {pct(cell[Col.det_tpr])}, FPR {pct(cell[Col.det_fpr])}, precision "
                f"{pct(cell[Col.det_precision])}, F1 {pct(cell[Col.det_f1])}"
                + (
                    "" if is_missing(cell[Col.det_auroc]) else f", AUROC {pct(cell[Col.det_auroc])}"
                ),
            ]
        )
    if published:
        facts.append(["published", published])
    first = trials.iloc[0] if len(trials) else None
    params = []
    if first is not None:
        attack_params = params_text(json_object(first[Col.attack_params]))
        defense_params = params_text(json_object(first[Col.defense_params]))
        params = [
            ["attack parameters", attack_params or "defaults (not recorded)"],
            ["defense parameters", defense_params or "none"],
            [
                "clean data given to the defense",
                f"{100 * float(first[Col.clean_fraction]):g}% of the training set"
                if not is_missing(first[Col.clean_fraction]) and first[Col.clean_fraction] > 0
                else "none",
            ],
            ["parameter version (config_id)", str(cell[Col.config_id])],
        ]
    return {
        "title": f"{cell[LABEL]} against {cell[Col.attack]}",
        "subtitle": (
            f"{cell[Col.dataset]} · preset {cell[Col.preset]} · {100 * ratio:g}% poison · "
            f"{n} seed{'s' if n != 1 else ''}"
        ),
        "facts": facts,
        "notes": _flags(cell),
        "seeds": {
            "header": SEED_HEADER,
            "rows": [_seed_row(t) for _, t in trials.iterrows()],
        },
        "params": params,
        "fields": [
            {Col.seed: str(t[Col.seed]), "rows": _fields(t, recorded)} for _, t in trials.iterrows()
        ],
    }


def _ci(cell: pd.Series, metric: str) -> str:
    """' ± 1.2' where the cell has several seeds (a 95% interval), else ''."""
    half = cell.get(f"{metric}_ci", math.nan)
    return "" if cell["n"] <= 1 or is_missing(half) else f" ± {pct(half)}"
