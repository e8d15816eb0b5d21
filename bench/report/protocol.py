"""The protocol behind a table, read from its rows: model, data, training recipe, target class,
precision, each attack's parameters and each defense's assumptions (clean data it is given, its
parameters). A number means little without these, so every table carries them.

Values are plain text (callers escape them); a fact that differs between rows lists each value.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from bench.report.aggregate import LABEL, NONE
from bench.schema import Col


def json_object(text: object) -> dict:
    """A JSON column's object ({} when empty, unreadable or not an object)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _distinct(values: Iterable[object]) -> list[str]:
    out = []
    for v in values:
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)) or v == "":
            continue
        text = f"{v:,}" if isinstance(v, int) else str(v)
        if text not in out:
            out.append(text)
    return out


def _one_or_all(values: Iterable[object], missing: str = "not recorded") -> str:
    found = _distinct(values)
    return "; ".join(found) if found else missing


def _number(v: object) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def params_text(params: dict) -> str:
    """``{"alpha": 0.2, "key_seed": 0}`` as ``alpha 0.2, key_seed 0``; '' for none."""
    parts = []
    for k, v in sorted(params.items()):
        shown = json.dumps(v) if isinstance(v, dict | list) else _number(v)
        parts.append(f"{k} {shown}")
    return ", ".join(parts)


def recipe(train: dict) -> str:
    """A training recipe in one line: '7 epochs, batch 128, SGD (nesterov, momentum 0.9) lr 0.1,
    onecycle schedule, weight decay 0.0005'."""
    if not train:
        return "not recorded"
    parts = []
    if "epochs" in train:
        parts.append(f"{train['epochs']} epochs")
    if "batch_size" in train:
        parts.append(f"batch {train['batch_size']}")
    optimizer = str(train.get("optimizer", "sgd")).upper().replace("ADAM", "Adam")
    extras = []
    if optimizer == "SGD":
        if train.get("nesterov"):
            extras.append("nesterov")
        if "momentum" in train:
            extras.append(f"momentum {_number(train['momentum'])}")
    opt = optimizer + (f" ({', '.join(extras)})" if extras else "")
    if "lr" in train:
        opt += f" lr {_number(train['lr'])}"
    parts.append(opt)
    if "schedule" in train:
        parts.append(f"{train['schedule']} schedule")
    if train.get("weight_decay"):
        parts.append(f"weight decay {_number(train['weight_decay'])}")
    if train.get("label_smoothing"):
        parts.append(f"label smoothing {_number(train['label_smoothing'])}")
    return ", ".join(parts)


@dataclass(frozen=True)
class Protocol:
    """A table's protocol: a one-line summary and every fact as (what, value)."""

    summary: list[str]
    lines: list[tuple[str, str]]


def protocol(trials: pd.DataFrame) -> Protocol:
    """The protocol of the trials of one table (:func:`~bench.report.aggregate.trial_table`
    rows), in reading order."""
    if trials.empty:
        return Protocol([], [])
    model = _one_or_all(trials[Col.model])
    sizes = _sizes(trials)
    recipes = _distinct(recipe(json_object(t)) for t in trials[Col.train])
    epochs = _distinct(json_object(t).get("epochs") for t in trials[Col.train])
    targets = _one_or_all(int(t) for t in trials[Col.target].dropna())
    precision = _one_or_all(trials[Col.precision_used], "fp32 (not recorded)")
    summary = [
        model,
        "; ".join(sizes) or "data size not recorded",
        f"{'/'.join(epochs)} epochs" if epochs else "epochs not recorded",
        f"target class {targets}",
        precision,
    ]
    lines = [
        ("architecture", model),
        ("images", "; ".join([*sizes, *_distinct(trials[Col.data_source])]) or "not recorded"),
        ("training (undefended model)", "; ".join(recipes) or "not recorded"),
        ("target class", targets),
        ("numeric precision", precision),
        ("seeds", ", ".join(str(int(s)) for s in sorted(trials[Col.seed].dropna().unique()))),
        ("hardware", _one_or_all(trials[Col.device])),
        ("code revision", _one_or_all(sorted(set(trials[Col.git_rev])))),
    ]
    for attack, rows in trials.groupby(Col.attack, sort=True):
        params = _distinct(params_text(json_object(p)) for p in rows[Col.attack_params])
        lines.append((f"attack {attack}", "; ".join(params) or "defaults (not recorded)"))
    defended = trials[trials[Col.defense] != NONE]
    for label, rows in defended.groupby(LABEL, sort=True):
        lines.append((f"defense {label}", _defense(rows)))
    return Protocol(summary, lines)


def _sizes(trials: pd.DataFrame) -> list[str]:
    return _distinct(
        f"{int(a):,} training / {int(b):,} test images"
        for a, b in zip(trials[Col.n_train], trials[Col.n_test], strict=True)
        if pd.notna(a) and pd.notna(b)
    )


def _defense(rows: pd.DataFrame) -> str:
    """A defense's assumptions: the clean data it is given, then its parameters."""
    fractions = sorted({float(f) for f in rows[Col.clean_fraction].dropna()})
    subsets = _distinct(int(n) for n in rows[Col.n_clean_subset].dropna() if n > 0)
    if any(fractions):
        clean = ", ".join(f"{100 * f:g}%" for f in fractions)
        clean = f"clean data: {clean} of the training set"
        if subsets:
            clean += f" ({', '.join(subsets)} images)"
    else:
        clean = "no clean data"
    params = _distinct(params_text(json_object(p)) for p in rows[Col.defense_params])
    return clean + ("; parameters: " + "; ".join(params) if any(params) else "")
