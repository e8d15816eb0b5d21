"""FP, Fine-Pruning (Liu et al., RAID 2018), as BackdoorBench's ``defense/fp.py`` runs it.

Backdoor behaviour hides in channels that clean inputs leave dormant. Fine-Pruning
  1. measures each channel of the last convolutional stage by its mean activation on clean data;
  2. prunes channels from the least active up, ``ceil(0.01 C)`` at a time, for as long as clean
     accuracy stays within ``acc_ratio`` (10%, relative) of the unpruned model's; like
     BackdoorBench it keeps the step that crossed the bound;
  3. fine-tunes the pruned model on the clean subset (BackdoorBench's FT recipe), the pruned
     channels held at zero.
Pruning zeroes channels of ``model.feature_map`` before ``model.classify`` (the model contract),
which is what BackdoorBench's mask on the inputs of the last linear layer does. BackdoorBench
measures accuracy on the clean *test* set; here on the defender's clean subset (DEVIATIONS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig, autocast
from defenses.shared import clean_finetuning


class ChannelPruned(nn.Module):
    """``model`` with some channels of its last stage held at zero (``mask`` 0)."""

    def __init__(self, model: nn.Module, mask: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mask", mask.view(1, -1, 1, 1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.classify(self.model.feature_map(x) * self.mask)


class FinePruning(Defense):
    name = "fp"
    reference_name = "fp"  # BackdoorBench's table lists it
    needs = frozenset({"backdoored_model", "clean_subset"})

    @dataclass(frozen=True)
    class Params:
        prune_step: float = 0.01  # BackdoorBench once_prune_ratio: ceil(0.01 C) channels a step
        acc_ratio: float = 0.1  # stop once clean accuracy falls by more than this, relatively
        epochs: int = 100  # fine-tuning, BackdoorBench's FT recipe
        lr: float = 0.01
        batch_size: int = 256
        weight_decay: float = 5e-4

        def __post_init__(self) -> None:
            if not 0 < self.prune_step < 1 or not 0 < self.acc_ratio < 1:
                raise ValueError("prune_step and acc_ratio must be in (0, 1)")
            if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.weight_decay < 0:
                raise ValueError("epochs >= 0, batch_size >= 1, lr > 0, weight_decay >= 0")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        return (self.params.epochs + 1) * clean_fraction

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        clean = ctx.clean_subset
        model = ctx.backdoored_model().to(ctx.device).eval()
        with ctx.stage("pruning"):
            mask = self.prune(ctx, model)
        pruned = ChannelPruned(model, mask)
        with ctx.stage("finetune"):
            if p.epochs:
                config = clean_finetuning(p.epochs, p.lr, p.batch_size, p.weight_decay)
                ctx.fit(pruned, clean.images, clean.labels, config, stream="finetune")
        return DefenseOutput(model=pruned, metrics={"pruned_channels": int((mask == 0).sum())})

    def prune(self, ctx: DefenseContext, model: nn.Module) -> torch.Tensor:
        """The channel mask (1 kept, 0 pruned) of the last stage, chosen on the clean subset."""
        p = self.params
        clean = ctx.clean_subset
        with torch.no_grad(), autocast(ctx.device):
            maps = torch.cat(
                [
                    model.feature_map(clean.images[i : i + 256].to(ctx.device).float() / 255)
                    .float()
                    .cpu()
                    for i in range(0, len(clean), 256)
                ]
            )
        labels = clean.labels.cpu()

        def accuracy(mask: torch.Tensor) -> float:
            with torch.no_grad(), autocast(ctx.device):
                logits = model.classify((maps * mask.view(1, -1, 1, 1)).to(ctx.device))
            return logits.argmax(1).cpu().eq(labels).float().mean().item()

        channels = maps.shape[1]
        order = maps.mean((0, 2, 3)).argsort()  # least active first
        step = math.ceil(channels * p.prune_step)
        mask = torch.ones(channels)
        base = accuracy(mask)
        for start in range(0, channels - 1, step):
            mask[order[start : start + step]] = 0
            if (base - accuracy(mask)) / max(base, 1e-12) >= p.acc_ratio:
                break  # BackdoorBench keeps this step (fp.py: last_net is net_pruned)
        ctx.log(
            f"fp: pruned {int((mask == 0).sum())} of {channels} channels (clean acc {base:.3f})"
        )
        return mask
