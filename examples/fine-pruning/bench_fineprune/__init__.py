"""Fine-Pruning (Liu, Dolan-Gavitt and Garg, RAID 2018): prune dormant channels, then fine-tune.

Backdoor behaviour hides in neurons that clean inputs leave dormant. Fine-Pruning ranks the
channels of the backdoored model's last convolutional layer by their mean activation on clean
data, prunes them from the least active on, in steps, as long as accuracy on a held-out part of
the clean data stays within ``max_accuracy_drop`` of the unpruned model's, then fine-tunes the
pruned model on the clean data. Written from the public API only (bench.api, docs/plugins.md):
the model contract's ``feature_map`` / ``classify`` split gives the channels, no hooks needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig


class ChannelPruned(nn.Module):
    """``model`` with the channels of its last feature map where ``keep`` is False held at 0."""

    def __init__(self, model: nn.Module, keep: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mask", keep.float().view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.model.feature_map(x) * self.mask)


class FinePruning(Defense):
    name = "fineprune"
    needs = frozenset({"backdoored_model", "clean_subset"})
    presets: ClassVar = {"smoke": {"finetune_epochs": 1, "prune_step": 0.25}}

    @dataclass(frozen=True)
    class Params:
        max_accuracy_drop: float = 0.04  # the paper's 4% on held-out clean data
        prune_step: float = 0.05  # fraction of the channels pruned per step
        val_fraction: float = 0.2  # of the clean subset, held out to measure the drop
        finetune_epochs: int = 20
        finetune_lr: float = 0.01
        batch_size: int = 128

        def __post_init__(self) -> None:
            if not 0 <= self.max_accuracy_drop < 1 or not 0 < self.prune_step <= 1:
                raise ValueError("max_accuracy_drop must be in [0, 1), prune_step in (0, 1]")
            if not 0 < self.val_fraction < 1 or self.finetune_epochs < 0:
                raise ValueError("val_fraction must be in (0, 1) and finetune_epochs >= 0")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        model = ctx.backdoored_model()
        rest, held_out = ctx.clean_split(p.val_fraction)
        with ctx.stage("prune"):
            order = ctx.channel_activations(model, rest.images).mean(0).argsort()  # dormant first
            channels = len(order)
            step = max(1, round(p.prune_step * channels))
            keep = torch.ones(channels, dtype=torch.bool)
            base = ctx.evaluate(model, held_out.images, held_out.labels)
            accuracy, pruned = base, 0
            for count in range(step, channels, step):  # always keep at least one channel
                trial = keep.clone()
                trial[order[:count]] = False
                acc = ctx.evaluate(ChannelPruned(model, trial), held_out.images, held_out.labels)
                if acc < base - p.max_accuracy_drop:
                    break
                keep, accuracy, pruned = trial, acc, count
        ctx.log(f"fineprune: pruned {pruned}/{channels} channels; held-out accuracy {accuracy:.3f}")
        defended = ChannelPruned(model, keep)
        if p.finetune_epochs:
            config = TrainConfig(epochs=p.finetune_epochs, batch_size=p.batch_size,
                                 lr=p.finetune_lr, schedule="cosine")  # fmt: skip
            with ctx.stage("finetune"):
                clean = ctx.clean_subset
                ctx.fit(defended, clean.images, clean.labels, config, stream="finetune")
        metrics = {"channels": channels, "pruned": pruned, "held_out_accuracy_before": base,
                   "held_out_accuracy_pruned": accuracy}  # fmt: skip
        return DefenseOutput(model=defended, metrics=metrics)
