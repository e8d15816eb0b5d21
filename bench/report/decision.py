"""The decision view: which defense to use against an attack, and against a family of attacks,
given how much clean accuracy one can afford to lose.

Per (dataset, preset) and per attack and poison ratio, the *best* defense is the one with the
lowest ASR among those whose clean accuracy is at most ``max_drop`` below the seed-matched `none`
baseline's (ties: the smaller CA drop, then the cheaper). Per family (static poison-label,
clean-label, training-controlled) and ratio, the best defense is the one that stays within the
bound on every attack of the family and has the lowest mean ASR over them; its worst attack is
shown beside the mean. A defense without a baseline (no DER, so no CA drop) is never chosen.

The page lets the reader change the bound, so this module produces plain data (fractions, the
options of each attack sorted best first) that the page's script filters with the same rule;
:func:`best` and :func:`family_best` are that rule in Python, for LEADERBOARD.md and the tests.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.report import catalog
from bench.report.aggregate import (
    CLEAN_D_CA,
    D_CA,
    DER,
    LABEL,
    NONE,
    clean_column,
    is_clean,
)
from bench.report.verdict import DEFAULT_MAX_DROP
from bench.report.verdict import within as _within_bound
from bench.schema import Col

__all__ = ["DEFAULT_MAX_DROP", "best", "boards", "family_best", "ties", "within"]
#: Two picks with one seed (no interval) closer than this in ASR are not told apart.
NO_INTERVAL_RESOLUTION = 0.02


def _num(x: Any) -> float | None:
    """A JSON-safe float (None for NaN / missing)."""
    if x is None or x is pd.NA:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def _option(r: pd.Series, on_clean: dict[str, float | None] | None = None) -> dict[str, Any]:
    minutes = _num(r[Col.train_seconds])
    return {
        "label": str(r[LABEL]),
        Col.defense: str(r[Col.defense]),
        Col.ca: _num(r[Col.ca]),
        Col.asr: _num(r[Col.asr]),
        "asr_ci": _num(r["asr_ci"]),
        Col.ra: _num(r[Col.ra]),
        "d_ca": _num(r[D_CA]),
        "der": _num(r[DER]),
        "n": int(r["n"]),
        "minutes": None if minutes is None else minutes / 60,
        Col.device: str(r[Col.device]),
        "memory_mb": _num(r[Col.peak_memory_mb]),
        "clean_d_ca": (on_clean or {}).get(str(r[LABEL])),
    }


def _sort_key(o: dict[str, Any]) -> tuple:
    big = math.inf
    return (
        big if o[Col.asr] is None else o[Col.asr],
        big if o["d_ca"] is None else -o["d_ca"],
        big if o["minutes"] is None else o["minutes"],
        o["label"],
    )


def boards(agg: pd.DataFrame) -> list[dict[str, Any]]:
    """One board per (dataset, preset): groups per (family, ratio), each with its attacks, the
    `none` baseline of each and every defense's option, best (lowest ASR) first."""
    if agg.empty:
        return []
    out = []
    clean = clean_column(agg).set_index([Col.dataset, Col.preset, LABEL])[CLEAN_D_CA].to_dict()
    for (dataset, preset), table in agg.groupby([Col.dataset, Col.preset], sort=True):
        on_clean = {lb: _num(v) for (d, p, lb), v in clean.items() if (d, p) == (dataset, preset)}
        table = table[~is_clean(table)]
        if table.empty:
            continue
        table = table.assign(
            _family=[
                catalog.family(a, m, p)
                for a, m, p in zip(
                    table[Col.attack],
                    table[Col.attack_mode],
                    table[Col.attack_package],
                    strict=True,
                )
            ]
        )
        groups = []
        for (family, ratio), rows in sorted(
            table.groupby(["_family", Col.ratio], sort=False),
            key=lambda kv: (catalog.FAMILIES.index(kv[0][0]), -kv[0][1]),
        ):
            attacks = []
            for attack, cells in rows.groupby(Col.attack, sort=True):
                base = cells[cells[Col.defense] == NONE]
                options = sorted(
                    (_option(r, on_clean) for _, r in cells[cells[Col.defense] != NONE].iterrows()),
                    key=_sort_key,
                )
                attacks.append(
                    {
                        Col.attack: str(attack),
                        "none": _option(base.iloc[0]) if len(base) else None,
                        "options": options,
                    }
                )
            groups.append({"family": family, Col.ratio: float(ratio), "attacks": attacks})
        defended = bool((table[Col.defense] != NONE).any())
        out.append(
            {
                Col.dataset: str(dataset),
                Col.preset: str(preset),
                "defended": defended,
                "groups": groups,
            }
        )
    return out


def within(option: dict[str, Any], max_drop: float) -> bool:
    """Whether an option's CA drop against `none` is within the bound (unknown: not within)."""
    return _within_bound(option["d_ca"], max_drop)


def separated(asr: float, ci: float | None, other: float, other_ci: float | None) -> bool:
    """Whether two ASRs are told apart: their 95% intervals do not overlap, or, where either has
    one seed (no interval), they differ by more than :data:`NO_INTERVAL_RESOLUTION`."""
    if ci is None or other_ci is None:
        return abs(asr - other) > NO_INTERVAL_RESOLUTION + 1e-12
    return abs(asr - other) > ci + other_ci + 1e-12


def ties(attack: dict[str, Any], max_drop: float = DEFAULT_MAX_DROP) -> list[dict[str, Any]]:
    """The options within the bound that the best one is not told apart from (best excluded)."""
    top = best(attack, max_drop)
    if top is None:
        return []
    return [
        o
        for o in attack["options"]
        if o is not top
        and within(o, max_drop)
        and o[Col.asr] is not None
        and not separated(o[Col.asr], o["asr_ci"], top[Col.asr], top["asr_ci"])
    ]


def best(attack: dict[str, Any], max_drop: float = DEFAULT_MAX_DROP) -> dict[str, Any] | None:
    """The best defense against one attack under the bound (None: no defense stays within it)."""
    return next((o for o in attack["options"] if within(o, max_drop)), None)


def family_best(group: dict[str, Any], max_drop: float = DEFAULT_MAX_DROP) -> dict[str, Any] | None:
    """The defense with the lowest mean ASR over a family's attacks among those within the
    bound on every one of them, with its worst attack and mean CA change and cost."""
    attacks = group["attacks"]
    per_label: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for a in attacks:
        for o in a["options"]:
            per_label.setdefault(o["label"], []).append((a[Col.attack], o))
    found = []
    for label, got in per_label.items():
        if len(got) < len(attacks) or not all(within(o, max_drop) for _, o in got):
            continue
        if any(o[Col.asr] is None for _, o in got):
            continue
        worst_attack, worst = max(got, key=lambda ao: (ao[1][Col.asr], ao[0]))
        minutes = [o["minutes"] for _, o in got if o["minutes"] is not None]
        cis = [o["asr_ci"] for _, o in got]
        found.append(
            {
                "label": label,
                "mean_asr": sum(o[Col.asr] for _, o in got) / len(got),
                "asr_ci": None if None in cis else sum(cis) / len(cis),
                "worst_asr": worst[Col.asr],
                "worst_attack": worst_attack,
                "mean_d_ca": sum(o["d_ca"] for _, o in got) / len(got),
                "clean_d_ca": got[0][1]["clean_d_ca"],
                "minutes": sum(minutes) / len(minutes) if minutes else None,
            }
        )
    found.sort(key=lambda f: (f["mean_asr"], -f["mean_d_ca"], f["label"]))
    if not found:
        return None
    top = found[0]
    top["ties"] = [
        f["label"]
        for f in found[1:]
        if not separated(f["mean_asr"], f["asr_ci"], top["mean_asr"], top["asr_ci"])
    ]
    return top
