"""No defense: plain training on the poisoned set. The baseline every defense is compared with.

Its model *is* the backdoored model, so it goes through the artifact cache: post-training
defenses of the same cell reuse it instead of training it again.
"""

from __future__ import annotations

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig


class NoDefense(Defense):
    name = "none"
    reference_name = "none"  # BackdoorBench's "no defense"
    needs = frozenset({"poisoned_train", "backdoored_model"})

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        return 0.0  # the backdoored model, counted once per cell

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        with ctx.stage("load"):
            model = ctx.backdoored_model()
        return DefenseOutput(model=model)
