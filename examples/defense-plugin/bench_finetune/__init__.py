"""Fine-tuning (FT): continue training the backdoored model on a small clean subset.

The simplest post-training defense, and the usual first baseline in backdoor papers (BackdoorBench
"FT"): clean gradients overwrite part of what the poisoned samples taught the network. It needs
the backdoored model and the defender's clean data, which the harness provides. Written against
the public API (bench.api; reference: docs/plugins.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig


class FineTune(Defense):
    name = "finetune"
    needs = frozenset({"backdoored_model", "clean_subset"})
    presets: ClassVar = {"smoke": {"epochs": 1}}  # the smoke preset checks plumbing, in seconds

    @dataclass(frozen=True)
    class Params:
        epochs: int = 10
        lr: float = 0.01
        batch_size: int = 128
        weight_decay: float = 5e-4

        def __post_init__(self) -> None:
            if self.epochs < 1:
                raise ValueError(f"epochs must be >= 1, got {self.epochs}")
            if not 0 < self.lr < 1:
                raise ValueError(f"lr must be in (0, 1), got {self.lr}")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        model = ctx.backdoored_model()  # loaded (or trained once) outside the defense's clock
        clean = ctx.clean_subset
        p = self.params
        config = TrainConfig(
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            weight_decay=p.weight_decay,
            schedule="cosine",
        )
        with ctx.stage("finetune"):
            ctx.fit(model, clean.images, clean.labels, config, stream="finetune")
        return DefenseOutput(model=model)
