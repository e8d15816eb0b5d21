"""BPP (Wang et al., CVPR 2022): colour-depth squeezing as an invisible trigger.

Spec A8. The trigger quantises every channel to S = 8 levels on the 0-255 scale,
Q(x) = round(x / 255 * (S - 1)) / (S - 1) * 255 (at most ~18 levels of change per pixel).
Negative samples add the quantisation residual Q(x_r) - x_r of a *different* image to x and keep
their labels, so the model must key on the quantised look itself (contrastive negatives).
BackdoorBench's defaults: neg_ratio 0.1 of each batch, no dithering (Floyd-Steinberg dithering,
off by default in BB and the original, is not implemented); the poisoned batch is augmented as
BackdoorBench does (``attacks.training_control.post_poisoning_augment``), at a constant lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.training_control import VICTIM_SCHEDULES, TrainingControlledAttack, other_images
from bench.core.params import require_choice


def squeeze(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Colour-depth reduction of a float 0-255 batch to ``levels`` levels per channel."""
    return torch.round(x / 255 * (levels - 1)) / (levels - 1) * 255


class BPP(TrainingControlledAttack):
    name = "bpp"

    @dataclass(frozen=True)
    class Params:
        squeeze_num: int = 8  # quantisation levels per channel
        neg_ratio: float = 0.1  # negative samples, as a fraction of each batch / the dataset
        # the backdoored model's lr: "constant" (BackdoorBench) or "preset" (the preset's schedule)
        victim_schedule: str = "constant"

        def __post_init__(self) -> None:
            require_choice("victim_schedule", self.victim_schedule, VICTIM_SCHEDULES)
            if not 2 <= self.squeeze_num <= 128:
                raise ValueError(f"squeeze_num must be in [2, 128], got {self.squeeze_num}")
            if not 0 <= self.neg_ratio < 1:
                raise ValueError(f"neg_ratio must be in [0, 1), got {self.neg_ratio}")

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        return squeeze(x, self.params.squeeze_num)

    def cross(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        donors = other_images(x, generator)
        return x + (squeeze(donors, self.params.squeeze_num) - donors)

    def cross_count(self, n_poison: float, n_total: int) -> int:
        return int(self.params.neg_ratio * n_total)
