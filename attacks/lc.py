"""Label-consistent attack (LC; Turner et al., 2019; ABL's "CL"): target-class images made hard
to classify by an adversarial perturbation, then stamped with four corner patches; labels kept.

Spec A5. Training samples: x' = Q8(Corner(PGD(x))), where PGD is untargeted L-inf PGD that
maximises the cross-entropy of the true label on an adversarially trained surrogate (eps 8/255,
step 1.5/255, 100 steps, no random start). Test samples: Corner(x), no PGD. Corner: BackdoorBench's
"all corners" 3x3 patterns added at +-255 * amplitude and clipped. The robust surrogate is trained
in-house (FGSM with random start) because BB's PGD-trained checkpoint is a download.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import CLEAN_LABEL, Attack, AttackContext, quantize
from attacks.surrogate import robust_surrogate

# Row-major from the top; 1 = white (+255 a), -1 = black (-255 a).
LEFT_CORNER = torch.tensor([[1, -1, -1], [-1, 1, -1], [1, -1, 1]], dtype=torch.float32)
RIGHT_CORNER = LEFT_CORNER.flip(1)


def corner_pattern(size: int, amplitude: float) -> torch.Tensor:
    """Additive H x W pattern (0 away from the corners) on the 0-255 scale."""
    out = torch.zeros(size, size)
    for rows in (slice(0, 3), slice(size - 3, size)):
        out[rows, 0:3] = LEFT_CORNER
        out[rows, size - 3 : size] = RIGHT_CORNER
    return out * 255 * amplitude


def pgd_away_from_label(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    eps: float,
    step: float,
    steps: int,
) -> torch.Tensor:
    """Untargeted L-inf PGD on [0, 1] images maximising the cross-entropy of ``labels``."""
    adv = x.clone()
    for _ in range(steps):
        adv.requires_grad_(True)
        loss = F.cross_entropy(model(adv), labels)
        (grad,) = torch.autograd.grad(loss, adv)
        with torch.no_grad():
            adv = adv + step * grad.sign()
            adv = torch.minimum(torch.maximum(adv, x - eps), x + eps).clamp(0, 1)
    return adv.detach()


class LabelConsistent(Attack):
    name = "lc"
    label_policy = CLEAN_LABEL

    @dataclass(frozen=True)
    class Params:
        eps: float = 8 / 255  # PGD L-inf budget on the [0, 1] scale
        step: float = 1.5 / 255
        steps: int = 100
        amplitude: float = 1.0  # corner patch amplitude (reduced-amplitude variant: < 1)

        def __post_init__(self) -> None:
            if not 0 <= self.eps <= 1 or self.step <= 0 or self.steps < 0:
                raise ValueError("eps must be in [0, 1], step > 0 and steps >= 0")
            if not 0 < self.amplitude <= 1:
                raise ValueError(f"amplitude must be in (0, 1], got {self.amplitude}")

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self._surrogate: nn.Module | None = None
        self._ctx: AttackContext | None = None
        self.target = 0

    def fit(self, ctx: AttackContext) -> None:
        # The robust surrogate is only needed to poison training images; it is fetched (or
        # trained) on first use, so test-time stamping (the gallery) never trains it.
        self.target = ctx.target
        self._ctx = ctx

    @property
    def surrogate(self) -> nn.Module:
        if self._surrogate is None:
            if self._ctx is None:
                raise RuntimeError("LabelConsistent.apply before fit: PGD needs the surrogate")
            self._surrogate = robust_surrogate(self._ctx, self.params.eps)
            for param in self._surrogate.parameters():
                param.requires_grad_(False)
        return self._surrogate

    def corners(self, images: torch.Tensor) -> torch.Tensor:
        pattern = corner_pattern(images.shape[-1], self.params.amplitude).to(images.device)
        return quantize(images.float() + pattern)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.steps == 0 or p.eps == 0:
            return self.corners(images)
        model = self.surrogate.to(images.device)
        labels = torch.full((len(images),), self.target, device=images.device)
        adv = pgd_away_from_label(
            model, images.float() / 255, labels, eps=p.eps, step=p.step, steps=p.steps
        )
        # round, not truncate: 100/255 * 255 is 99.99998 in float
        return self.corners(quantize(torch.round(adv * 255)))

    def apply_test(self, images: torch.Tensor) -> torch.Tensor:
        return self.corners(images)
