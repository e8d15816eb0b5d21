"""A defense's threat model: what the defender must hold and when the defense acts.

Read from what the defense asks the harness for (:data:`bench.api.NEEDS`): the poisoned
training set means the defender trains the model (it acts *during* training); a backdoored
model means it receives one already trained (it acts *after*); a clean subset means it holds
clean, correctly labelled images the attacker never touched. Defenses that need clean data and
those that need none are not on equal footing, so the page and ``bench list`` say which is which.

Plain text only (callers escape); no defense code is imported (the report layer loads no torch):
the built-ins' needs are listed here, and a test keeps them equal to their classes'.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from bench.report.aggregate import LABEL, NONE
from bench.schema import Col

POISONED_TRAIN = "poisoned_train"
CLEAN_SUBSET = "clean_subset"
BACKDOORED_MODEL = "backdoored_model"

#: The built-in defenses' ``needs``, as their classes declare them.
BUILTIN_NEEDS: dict[str, frozenset[str]] = {
    "abl": frozenset({POISONED_TRAIN}),
    "dbd": frozenset({POISONED_TRAIN}),
    "dlp": frozenset({POISONED_TRAIN}),
    "nab": frozenset({POISONED_TRAIN, CLEAN_SUBSET}),
    "ibau": frozenset({BACKDOORED_MODEL, CLEAN_SUBSET}),
    "ft": frozenset({BACKDOORED_MODEL, CLEAN_SUBSET}),
    "fp": frozenset({BACKDOORED_MODEL, CLEAN_SUBSET}),
    "nad": frozenset({BACKDOORED_MODEL, CLEAN_SUBSET}),
    "nc": frozenset({BACKDOORED_MODEL, CLEAN_SUBSET}),
    "anp": frozenset({BACKDOORED_MODEL, CLEAN_SUBSET}),
    "clp": frozenset({BACKDOORED_MODEL}),
}


@dataclass(frozen=True)
class ThreatModel:
    """What a defense assumes, from its declared needs."""

    needs: frozenset[str]

    @property
    def clean_data(self) -> bool:
        return CLEAN_SUBSET in self.needs

    @property
    def trains(self) -> bool:
        """The defender controls training (it holds the poisoned set and trains on it)."""
        return POISONED_TRAIN in self.needs

    @property
    def acts(self) -> str:
        return "during training" if self.trains else "after training"

    def lines(self, clean: str = "") -> list[tuple[str, str]]:
        """The card, as (what, value); ``clean`` says how much clean data where it is known."""
        if self.clean_data:
            held = (
                clean
                or "a clean subset of the training set (the preset's clean_fraction, 5% by default)"
            )
        else:
            held = "none"
        return [
            ("clean data", held),
            (
                "poisoned training set",
                "held: the defender trains on it" if self.trains else "not needed",
            ),
            (
                "training",
                "the defender trains the model (acts during training)"
                if self.trains
                else "receives the trained, possibly backdoored model (acts after training)",
            ),
        ]

    def text(self, clean: str = "") -> str:
        return "; ".join(f"{k}: {v}" for k, v in self.lines(clean))


def for_defense(name: str, needs: Iterable[str] | None = None) -> ThreatModel | None:
    """A defense's threat model from its needs, or the built-in's; None when neither is known
    (a plugin seen only in the results)."""
    if needs is not None:
        return ThreatModel(frozenset(needs))
    known = BUILTIN_NEEDS.get(name)
    return ThreatModel(known) if known is not None else None


def clean_text(rows: pd.DataFrame) -> str:
    """How much clean data the rows' defense was given, e.g. '1,000 images (5% of the training
    set)'; '' where none or not recorded."""
    fractions = sorted({float(f) for f in rows[Col.clean_fraction].dropna() if f > 0})
    sizes = sorted({int(n) for n in rows[Col.n_clean_subset].dropna() if n > 0})
    if not fractions and not sizes:
        return ""
    share = ", ".join(f"{100 * f:g}%" for f in fractions)
    count = "/".join(f"{n:,}" for n in sizes)
    if count and share:
        return f"{count} clean images ({share} of the training set)"
    return f"{count} clean images" if count else f"{share} of the training set"


def clean_need(trials: pd.DataFrame) -> str:
    """One sentence for a board: which defenses were given clean data (how much) and which
    none, e.g. 'ibau, nab: 1,000 clean images (5% of the training set); abl, dlp: none'."""
    defended = trials[trials[Col.defense] != NONE]
    if defended.empty:
        return ""
    groups: dict[str, list[str]] = {}
    for label, rows in defended.groupby(LABEL, sort=True):
        groups.setdefault(clean_text(rows) or "none", []).append(str(label))
    order = sorted(groups, key=lambda k: (k == "none", k))
    return "; ".join(f"{', '.join(groups[k])}: {k}" for k in order)
