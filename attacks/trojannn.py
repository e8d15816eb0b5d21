"""TrojanNN (Liu et al., NDSS 2018) through BackdoorBench's pipeline: a patch optimised to excite
the neurons a clean model's classifier relies on most, then put on poisoned training images:
stamped by default (TrojanNN's semantics), or added with BackdoorBench's uint8 wrap-around
(``application = "add_wrap"``, the paper preset's).

Spec A3. On a clean surrogate of the victim architecture (trained in-house), score each input unit
j of the final linear layer by sum_k |W[k, j]| and take the top 2. Starting from the mask image
(1 inside, 0 outside), take 1000 signed-gradient steps of 0.1 on sum_j (a_j(T * M) - 100)^2,
projecting onto |T - T0|_inf <= 0.3 and [0, 1]. The offline mask is the spec's procedural square
(10 x 10 at rows/cols 20-29 at 32 px). Stamp semantics (default): x' = (1 - M) x + M T;
``application`` "add_clip" (I-BAU) and "add_wrap" (BackdoorBench's uint8 wrap-around) are the
spec's alternatives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import POISON_LABEL, Attack, AttackContext, quantize
from attacks.surrogate import clean_surrogate, final_linear, penultimate_features
from bench.core.params import require_choice


def square_mask(size: int, side: int, margin: int) -> torch.Tensor:
    """1 x 1 x H x W mask: a ``side`` square ending ``margin`` pixels before the bottom-right."""
    mask = torch.zeros(1, 1, size, size)
    end = size - margin
    mask[..., end - side : end, end - side : end] = 1
    return mask


def optimise_trigger(
    model: torch.nn.Module,
    mask: torch.Tensor,
    neurons: torch.Tensor,
    *,
    target_value: float,
    iterations: int,
    step: float,
    bound: float,
) -> tuple[torch.Tensor, float]:
    """TrojanNN's activation maximisation; returns the trigger in [0, 1] (1x3xHxW), final loss."""
    start = mask.expand(1, 3, -1, -1).clone()
    trigger = start.clone()
    loss_value = float("inf")
    for _ in range(iterations):
        trigger.requires_grad_(True)
        acts = penultimate_features(model, trigger * mask)[:, neurons]
        loss = ((acts - target_value) ** 2).sum()
        loss_value = loss.item()
        if loss_value < 1e-3:
            break
        (grad,) = torch.autograd.grad(loss, trigger)
        with torch.no_grad():
            trigger = trigger - step * grad.sign()
            trigger = torch.minimum(torch.maximum(trigger, start - bound), start + bound)
            trigger = trigger.clamp(0, 1)
    return (trigger.detach() * mask), loss_value


class TrojanNN(Attack):
    name = "trojannn"
    label_policy = POISON_LABEL

    @dataclass(frozen=True)
    class Params:
        mask_side: int = 10  # square mask side at 32 px (scaled with the image size)
        mask_margin: int = 2  # pixels between the square and the bottom-right corner at 32 px
        num_neurons: int = 2
        target_value: float = 100.0
        iterations: int = 1000
        step: float = 0.1
        bound: float = 0.3  # L-inf distance from the initial mask image
        application: str = "stamp"  # "stamp" | "add_clip" | "add_wrap"

        def __post_init__(self) -> None:
            require_choice("application", self.application, ("stamp", "add_clip", "add_wrap"))
            if not 1 <= self.mask_side <= 32 or not 0 <= self.mask_margin <= 32 - self.mask_side:
                raise ValueError("the mask must fit in a 32 px image")
            if self.num_neurons < 1 or self.iterations < 1:
                raise ValueError("num_neurons and iterations must be >= 1")

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.pattern: torch.Tensor | None = None  # uint8 1x3xHxW, zero outside the mask
        self.mask: torch.Tensor | None = None  # float 1x1xHxW

    def fit(self, ctx: AttackContext) -> None:
        p = self.params
        size = ctx.images.shape[-1]
        scale = size / 32

        def build() -> dict:
            model = clean_surrogate(ctx)
            for param in model.parameters():
                param.requires_grad_(False)
            weights = final_linear(model).weight.detach().abs().sum(0)
            neurons = torch.topk(weights, p.num_neurons).indices.sort().values
            mask = square_mask(size, round(p.mask_side * scale), round(p.mask_margin * scale))
            trigger, loss = optimise_trigger(
                model,
                mask.to(ctx.device),
                neurons,
                target_value=p.target_value,
                iterations=p.iterations,
                step=p.step,
                bound=p.bound,
            )
            pattern = (trigger.cpu() * 255).to(torch.uint8)  # x255 then truncation, as via PIL
            return {"pattern": pattern, "mask": mask, "neurons": neurons.cpu(), "loss": loss}

        params = {k: v for k, v in self.describe().items() if k != "application"}
        value = ctx.artifact("trojannn_trigger", params, build)
        self.pattern, self.mask = value["pattern"], value["mask"]

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        if self.pattern is None or self.mask is None:
            raise RuntimeError("TrojanNN.apply before fit: the trigger is optimised in fit()")
        pattern = self.pattern.to(images.device).float()
        mask = self.mask.to(images.device)
        x = images.float()
        if self.params.application == "stamp":
            return quantize((1 - mask) * x + mask * pattern)
        if self.params.application == "add_clip":
            return quantize(x + pattern)
        return ((x + pattern).to(torch.int64) % 256).to(torch.uint8)  # BB: uint8 wrap-around
