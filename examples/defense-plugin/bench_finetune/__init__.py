"""Fine-tuning (FT): continue training the backdoored model on a small clean subset.

The simplest post-training defense, and the usual first baseline in backdoor papers (BackdoorBench
"FT"): clean gradients overwrite part of what the poisoned samples taught the network. It needs
the backdoored model and the defender's clean data, which the harness provides.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from bench.train import TrainConfig
from defenses.base import Defense, DefenseContext, DefenseOutput


class FineTune(Defense):
    name = "finetune"
    needs = frozenset({"backdoored_model", "clean_subset"})

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
        model = ctx.backdoored_model()
        clean = ctx.require_clean_subset()
        p = self.params
        config = TrainConfig(
            epochs=p.epochs,
            batch_size=p.batch_size,
            lr=p.lr,
            weight_decay=p.weight_decay,
            schedule="cosine",
            warmup_fraction=0.0,
        )
        start = time.perf_counter()
        ctx.trainer.fit(
            model, clean.images, clean.labels, config, seed=ctx.seed, flip=ctx.allows_flip
        )
        return DefenseOutput(model=model, stage_seconds={"finetune": time.perf_counter() - start})
