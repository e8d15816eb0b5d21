"""FT, fine-tuning: the first baseline every backdoor defense must beat. Spec: BackdoorBench's
``defense/ft.py`` (its reference implementation; FT has no paper of its own).

Post-training: the backdoored model is trained further on the defender's clean subset with the
ordinary recipe (BackdoorBench: 100 epochs, SGD lr 0.01, cosine, batch 256, crop and flip). Clean
gradients pull the model toward clean behaviour; a backdoor survives where those gradients never
touch the trigger's features, which is what the stronger defenses address.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig
from defenses.shared import clean_finetuning


class FineTuning(Defense):
    name = "ft"
    reference_name = "ft"  # BackdoorBench's table lists it
    needs = frozenset({"backdoored_model", "clean_subset"})

    @dataclass(frozen=True)
    class Params:
        epochs: int = 100  # BackdoorBench config/defense/ft/*.yaml
        lr: float = 0.01
        batch_size: int = 256
        weight_decay: float = 5e-4

        def __post_init__(self) -> None:
            if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
                raise ValueError("epochs and batch_size must be >= 1, lr > 0, weight_decay >= 0")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        return self.params.epochs * clean_fraction

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        clean = ctx.clean_subset
        model = ctx.backdoored_model()
        with ctx.stage("finetune"):
            config = clean_finetuning(p.epochs, p.lr, p.batch_size, p.weight_decay)
            ctx.fit(model, clean.images, clean.labels, config, stream="finetune")
        return DefenseOutput(model=model)
