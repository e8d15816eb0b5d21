"""ANP, Adversarial Neuron Pruning (Wu and Wang, NeurIPS 2021), as the official code and
BackdoorBench's ``defense/anp.py`` run it.

Backdoor neurons are the ones whose small perturbation most easily changes the model's output.
Every BatchNorm neuron k gets a mask m_k in [0, 1] (its BN weight is scaled by m_k) and, while
perturbed, multiplicative noise: weight x (m_k + delta_k), bias x (1 + xi_k), |delta|, |xi| <=
eps. Per clean batch, in train mode as the official code:
  1. noise: drawn uniformly in [-eps, eps], then ``steps`` SGD steps ascending the loss
     (lr eps / steps), clipped back into [-eps, eps];
  2. mask: one SGD step (momentum 0.9) on alpha * CE(unperturbed) + (1 - alpha) * CE(perturbed),
     then m clipped to [0, 1].
Then neurons whose mask falls below a threshold are pruned (BN weight zero, bias kept, as the
official mask does): the largest threshold on the grid 0, 0.05, ... 0.9 whose clean accuracy
stays within ``acc_ratio`` (relative) of the unpruned model's (BackdoorBench: on the test set;
here on the clean subset, DEVIATIONS.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig


class NoisyNeurons(nn.Module):
    """A BatchNorm layer with ANP's per-neuron mask and noise (official ``NoisyBatchNorm2d``)."""

    def __init__(self, bn: nn.BatchNorm2d):
        super().__init__()
        self.bn = bn
        c = bn.num_features
        self.mask = nn.Parameter(torch.ones(c, device=bn.weight.device))
        self.noise = nn.Parameter(torch.zeros(c, device=bn.weight.device))
        self.noise_bias = nn.Parameter(torch.zeros(c, device=bn.weight.device))
        self.perturbed = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale, shift = self.mask, torch.ones_like(self.mask)
        if self.perturbed:
            scale, shift = self.mask + self.noise, shift + self.noise_bias
        bn = self.bn
        return F.batch_norm(
            x, bn.running_mean, bn.running_var, bn.weight * scale, bn.bias * shift,
            bn.training, bn.momentum if bn.momentum is not None else 0.1, bn.eps,
        )  # fmt: skip


def with_noisy_neurons(model: nn.Module) -> list[NoisyNeurons]:
    """Wrap every BatchNorm2d of ``model`` in place; returns the wrappers in module order."""
    wrapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                noisy = NoisyNeurons(child)
                setattr(parent, name, noisy)
                wrapped.append(noisy)
    return wrapped


class ANP(Defense):
    name = "anp"
    reference_name = "anp"  # BackdoorBench's table lists it
    needs = frozenset({"backdoored_model", "clean_subset"})

    @dataclass(frozen=True)
    class Params:
        iterations: int = 2000  # BackdoorBench nb_iter
        batch_size: int = 256
        eps: float = 0.4  # anp_eps
        steps: int = 1  # anp_steps
        alpha: float = 0.2  # anp_alpha: weight of the unperturbed loss
        mask_lr: float = 0.01  # BackdoorBench's lr (the official code: 0.2)
        threshold_max: float = 0.9  # pruning_max
        threshold_step: float = 0.05  # pruning_step
        acc_ratio: float = 0.1

        def __post_init__(self) -> None:
            if min(self.iterations, self.batch_size, self.steps) < 1:
                raise ValueError("iterations, batch_size and steps must be >= 1")
            if self.eps < 0 or not 0 <= self.alpha <= 1 or self.mask_lr <= 0:
                raise ValueError("eps >= 0, alpha in [0, 1], mask_lr > 0")
            if not 0 < self.threshold_step <= self.threshold_max < 1:
                raise ValueError("need 0 < threshold_step <= threshold_max < 1")
            if not 0 < self.acc_ratio < 1:
                raise ValueError("acc_ratio must be in (0, 1)")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        return 3 * self.params.iterations * self.params.batch_size / max(n_train, 1)

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        model = ctx.backdoored_model().to(ctx.device)
        with ctx.stage("masks"):  # on a copy: its BatchNorm statistics move in train mode
            masks = self.optimise_masks(ctx, copy.deepcopy(model))
        with ctx.stage("pruning"):
            threshold, pruned = self.prune(ctx, model, masks)
        ctx.log(f"anp: pruned {pruned} neurons below mask {threshold:.2f}")
        return DefenseOutput(
            model=model, metrics={"pruned_neurons": pruned, "threshold": threshold}
        )

    def optimise_masks(self, ctx: DefenseContext, model: nn.Module) -> list[torch.Tensor]:
        """ANP's minimax over masks and noise on the clean subset, in train mode as the official
        code (which then prunes a fresh copy of the checkpoint: ``model`` is spent)."""
        p = self.params
        clean = ctx.clean_subset
        layers = with_noisy_neurons(model)
        for q in model.parameters():
            q.requires_grad_(False)
        masks = [layer.mask for layer in layers]
        noises = [t for layer in layers for t in (layer.noise, layer.noise_bias)]
        for t in masks + noises:
            t.requires_grad_(True)
        mask_opt = torch.optim.SGD(masks, lr=p.mask_lr, momentum=0.9)
        noise_opt = torch.optim.SGD(noises, lr=p.eps / p.steps)
        gen = ctx.rng("batches")  # drawn with replacement, as its sampler
        noise_gen = ctx.rng("noise", device=ctx.device)
        model.train()

        def perturb(on: bool) -> None:
            for layer in layers:
                layer.perturbed = on

        for _ in range(p.iterations):
            idx = torch.randint(len(clean), (p.batch_size,), generator=gen)
            x = clean.images[idx].to(ctx.device).float() / 255
            y = clean.labels[idx].to(ctx.device)
            if p.eps > 0:
                with torch.no_grad():
                    for t in noises:
                        t.uniform_(-p.eps, p.eps, generator=noise_gen)
                perturb(True)
                for _ in range(p.steps):
                    noise_opt.zero_grad(set_to_none=True)
                    (-F.cross_entropy(model(x), y)).backward()
                    noise_opt.step()
                    with torch.no_grad():
                        for t in noises:
                            t.clamp_(-p.eps, p.eps)
            mask_opt.zero_grad(set_to_none=True)
            robust = F.cross_entropy(model(x), y) if p.eps > 0 else torch.zeros(())
            perturb(False)
            natural = F.cross_entropy(model(x), y)
            (p.alpha * natural + (1 - p.alpha) * robust).backward()
            mask_opt.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0, 1)
        return [m.detach().clone() for m in masks]

    def prune(
        self, ctx: DefenseContext, model: nn.Module, masks: list[torch.Tensor]
    ) -> tuple[float, int]:
        """Zero the BN weight of neurons whose mask is below the largest threshold that keeps
        clean accuracy within ``acc_ratio``; returns (threshold, neurons pruned)."""
        p = self.params
        clean = ctx.clean_subset
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        original = [bn.weight.detach().clone() for bn in bns]

        def apply(threshold: float) -> int:
            with torch.no_grad():
                for bn, weight, mask in zip(bns, original, masks, strict=True):
                    bn.weight.copy_(torch.where(mask < threshold, 0.0, weight))
            return sum(int((mask < threshold).sum()) for mask in masks)

        base = ctx.evaluate(model, clean.images, clean.labels)
        chosen = 0.0
        steps = round(p.threshold_max / p.threshold_step)
        for i in range(1, steps + 1):
            threshold = i * p.threshold_step
            apply(threshold)
            if (base - ctx.evaluate(model, clean.images, clean.labels)) / max(
                base, 1e-12
            ) >= p.acc_ratio:
                break
            chosen = threshold
        return chosen, apply(chosen)
