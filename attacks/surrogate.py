"""Models an attack trains for itself, in-house and offline (spec section 4).

TrojanNN and LF share one clean surrogate of the victim architecture; LC uses an adversarially
trained one. Both are trained by the shared trainer on the attack's training split with the
preset's budget and cached as attack artifacts, so a grid builds each once per (data, model,
budget, seed).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import AttackContext
from bench.core.train import Batch, TrainHooks


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def _restore(ctx: AttackContext, value: dict) -> nn.Module:
    model = ctx.new_model()
    model.load_state_dict(value["state_dict"])
    return model.to(ctx.device).eval()


def clean_surrogate(ctx: AttackContext) -> nn.Module:
    """The victim architecture trained on the clean split (eval mode, on ``ctx.device``)."""

    def build() -> dict:
        model = ctx.new_model()
        stats = ctx.trainer.fit(
            model, ctx.images, ctx.labels, ctx.train_config, seed=ctx.seed, flip=ctx.allows_flip
        )
        return {"state_dict": cpu_state(model), "train_seconds": stats.seconds}

    return _restore(ctx, ctx.artifact("clean_surrogate", {}, build))


class FastAdversarialTraining(TrainHooks):
    """FGSM with a random start (Wong et al., 2020, "fast is better than free"): each batch is
    replaced by its one-step adversarial version within an L-inf ball of ``eps``."""

    def __init__(self, eps: float, step: float):
        self.eps, self.step = eps, step
        self.model: nn.Module | None = None

    def on_train_start(self, model: nn.Module) -> None:
        self.model = model

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        assert self.model is not None
        x = batch.x
        noise = torch.rand(x.shape, device=x.device, generator=generator)
        delta = ((noise * 2 - 1) * self.eps).requires_grad_(True)
        loss = F.cross_entropy(self.model((x + delta).clamp(0, 1)), batch.y)
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta + self.step * grad.sign()).clamp(-self.eps, self.eps)
        x_adv = (x + delta).clamp(0, 1).detach().contiguous(memory_format=torch.channels_last)
        return Batch(x_adv, batch.y, batch.idx, batch.soft_targets)


def robust_surrogate(ctx: AttackContext, eps: float) -> nn.Module:
    """The victim architecture adversarially trained (FGSM-RS, step 1.25 eps) on the clean split.

    The spec's substitute for BackdoorBench's downloaded PGD-trained ResNet-18. A lower peak
    learning rate keeps FGSM training from catastrophic overfitting."""
    config = replace(ctx.train_config, lr=min(ctx.train_config.lr, 0.05))

    def build() -> dict:
        model = ctx.new_model()
        stats = ctx.trainer.fit(
            model,
            ctx.images,
            ctx.labels,
            config,
            seed=ctx.seed,
            flip=ctx.allows_flip,
            hooks=FastAdversarialTraining(eps, 1.25 * eps),
        )
        return {"state_dict": cpu_state(model), "train_seconds": stats.seconds}

    value = ctx.artifact("robust_surrogate", {"eps": eps, "method": "fgsm-rs"}, build)
    return _restore(ctx, value)


def final_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last ``nn.Linear`` of the model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("the model has no linear classifier layer")
    return linears[-1]


def penultimate_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The input of the final linear layer for batch ``x`` (gradients flow)."""
    captured: list[torch.Tensor] = []
    handle = final_linear(model).register_forward_hook(
        lambda _m, inputs, _out: captured.append(inputs[0])
    )
    try:
        model(x)
    finally:
        handle.remove()
    return captured[0]
