"""NAD, Neural Attention Distillation (Li et al., ICLR 2021), as BackdoorBench's ``defense/nad.py``
runs it.

  1. teacher: a copy of the backdoored model fine-tuned on the clean subset (``te_epochs``, SGD
     lr 0.01, cosine);
  2. student: the backdoored model trained on the clean subset with cross-entropy plus, for each
     distilled stage, beta times the distance between the student's and the teacher's attention
     maps, a(F) = normalise(mean_c |F_c|^p), at a constant lr 0.01 (BackdoorBench's
     ``adjust_learning_rate`` for its 10 epochs).
BackdoorBench distils layer3 (beta 500), layer4 (1,000) and the pooled features (1,000) of
PreAct-ResNet-18. An attention map of 1 x 1 pixel normalises to 1 for every input, so the third
term is always zero and is left out. The two others are the last two stages of every built-in
model (8 and 4 px at 32 px input, as layer3 and layer4), and the attention loss is a mean over
pixels, so BackdoorBench's betas carry over by spatial size: the rule for every preset.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import (
    Batch,
    Defense,
    DefenseContext,
    DefenseOutput,
    TrainConfig,
    TrainHooks,
    autocast,
)
from defenses.shared import clean_finetuning


def attention(features: torch.Tensor, p: float) -> torch.Tensor:
    """NAD's attention map: the channel mean of |F|^p, flattened and L2-normalised per sample."""
    return F.normalize(features.float().abs().pow(p).mean(1).flatten(1), dim=1)


class AttentionDistillation(TrainHooks):
    """Cross-entropy plus beta * mean((a_student - a_teacher)^2) on each named stage."""

    wants_stages = True

    def __init__(self, teacher: nn.Module, betas: dict[str, float], p: float):
        self.teacher, self.betas, self.p = teacher.eval(), betas, p

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        with torch.no_grad(), autocast(batch.x.device):  # as the student's forward
            taught = self.teacher.stage_maps(batch.x)
        loss = F.cross_entropy(logits, batch.y)
        for stage, beta in self.betas.items():
            a_student = attention(batch.stages[stage], self.p)
            a_teacher = attention(taught[stage], self.p)
            loss = loss + beta * (a_student - a_teacher).pow(2).mean()
        return loss


class NAD(Defense):
    name = "nad"
    reference_name = "nad"  # BackdoorBench's table lists it
    needs = frozenset({"backdoored_model", "clean_subset"})

    @dataclass(frozen=True)
    class Params:
        te_epochs: int = 10  # teacher fine-tuning and student distillation alike
        lr: float = 0.01
        batch_size: int = 256
        weight_decay: float = 5e-4
        beta_second_last: float = 500.0  # BackdoorBench beta1, on layer3
        beta_last: float = 1000.0  # beta2, on layer4
        p: float = 2.0

        def __post_init__(self) -> None:
            if self.te_epochs < 1 or self.batch_size < 1 or self.lr <= 0 or self.p <= 0:
                raise ValueError("te_epochs and batch_size >= 1, lr and p > 0")
            if min(self.beta_second_last, self.beta_last, self.weight_decay) < 0:
                raise ValueError("betas and weight_decay must be >= 0")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        return 3 * self.params.te_epochs * clean_fraction  # teacher; student (+ teacher forward)

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        clean = ctx.clean_subset
        student = ctx.backdoored_model()
        with ctx.stage("teacher"):
            teacher = copy.deepcopy(student)
            tune = clean_finetuning(p.te_epochs, p.lr, p.batch_size, p.weight_decay)
            ctx.fit(teacher, clean.images, clean.labels, tune, stream="teacher")
        with ctx.stage("distillation"):
            with torch.no_grad():  # the stage names, from one image in eval mode
                probe = clean.images[:1].to(ctx.device).float() / 255
                stages = list(student.to(ctx.device).eval().stage_maps(probe))
            betas = {stages[-2]: p.beta_second_last, stages[-1]: p.beta_last}
            constant = TrainConfig(
                epochs=p.te_epochs, lr=p.lr, batch_size=p.batch_size, momentum=0.9,
                weight_decay=p.weight_decay, schedule="constant",
            )  # fmt: skip
            hooks = AttentionDistillation(teacher, betas, p.p)
            ctx.fit(student, clean.images, clean.labels, constant, stream="student", hooks=hooks)
        return DefenseOutput(model=student)
