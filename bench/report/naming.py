"""How tables and groups are named, shared by the page and LEADERBOARD.md: a table is titled by
what it holds (its attack families and poison ratio), and every header says how many seeds."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from bench.report import catalog
from bench.schema import Col

#: How a dataset is named in titles.
DATASET_NAMES = {"cifar10": "CIFAR-10", "gtsrb": "GTSRB"}


def dataset_name(name: str) -> str:
    return DATASET_NAMES.get(name, name)


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def seeds_text(ns: Iterable[int]) -> str:
    """'1 seed', '3 seeds' or '1–3 seeds (cells differ)' from the cells' seed counts."""
    found = sorted({int(n) for n in ns})
    if not found:
        return "no seeds"
    if len(found) == 1:
        return plural(found[0], Col.seed)
    return f"{found[0]}–{found[-1]} seeds (cells differ)"


def families(cells: pd.DataFrame) -> list[str]:
    """The attack family of each row (aggregated cells or trials)."""
    return [
        catalog.family(a, m, p)
        for a, m, p in zip(
            cells[Col.attack], cells[Col.attack_mode], cells[Col.attack_package], strict=True
        )
    ]


def families_phrase(found: Iterable[str]) -> str:
    """'clean-label attacks', 'static poison-label and training-controlled attacks'."""
    names = [f for f in catalog.FAMILIES if f in set(found)]
    if len(names) <= 1:
        return (names[0] if names else catalog.OTHER) + " attacks"
    return ", ".join(names[:-1]) + " and " + names[-1] + " attacks"


def holds(cells: pd.DataFrame, ratio: float) -> str:
    """What a table holds: 'clean-label attacks at 5% poison' (ratio 0: the clean model)."""
    if ratio == 0:
        return "clean model (no poison): each defense without a backdoor"
    return f"{families_phrase(families(cells))} at {100 * ratio:g}% poison"


def table_title(dataset: str, preset: str, ratio: float, cells: pd.DataFrame) -> str:
    """'CIFAR-10 · preset quick · clean-label attacks at 5% poison'."""
    return f"{dataset_name(dataset)} · preset {preset} · {holds(cells, ratio)}"


def short_title(dataset: str, preset: str, ratio: float, n_presets: int) -> str:
    """'CIFAR-10 5%' (with the preset when there are several)."""
    parts = [dataset_name(dataset), *([preset] if n_presets > 1 else []), f"{100 * ratio:g}%"]
    return " ".join(parts)
