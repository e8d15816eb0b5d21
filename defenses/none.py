"""No defense: plain training on the poisoned set. The baseline every defense is compared with."""

from __future__ import annotations

import time

from defenses.base import Defense, DefenseContext, DefenseOutput


class NoDefense(Defense):
    name = "none"

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        start = time.perf_counter()
        model = ctx.train_model()
        return DefenseOutput(model=model, stage_seconds={"train": time.perf_counter() - start})
