"""Defense stages shared between the defenses of one cell.

Several defenses open with the same computation: ABL's isolation and NAB's detection are both
loss-guided isolation on the poisoned set, and with equal budgets they train the same model to
the same per-sample losses. :class:`CellStageCache` builds such a stage once per cell (dataset,
attack, ratio, seed, data and training budget) through the artifact cache, so the second defense
loads it instead of training it again; the row records every lookup (``defense_artifacts``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from bench.core.artifacts import ArtifactCache


class CellStageCache:
    """A :class:`bench.api.StageCache` keyed by one cell's artifact spec."""

    def __init__(self, cell: Mapping[str, Any]):
        self.cell = dict(cell)
        #: One entry per lookup: kind, "hit" or "built", seconds (for the result row).
        self.log: list[dict[str, Any]] = []

    def __call__(self, kind: str, params: Mapping[str, Any], build: Callable[[], dict]) -> dict:
        start = time.perf_counter()
        spec = {"cell": self.cell, "params": dict(params)}
        fetched = ArtifactCache().get_or_build(f"stage_{kind}", spec, build)
        self.log.append(
            {
                "kind": kind,
                "cache": "hit" if fetched.hit else "built",
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        return fetched.value
