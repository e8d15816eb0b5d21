"""SIG (Barni et al., ICIP 2019): a horizontal sinusoid added to target-class images, labels kept.

Spec A4: v(i, j) = delta * sin(2 pi j f / W) for every row i and channel, x' = Q8(x + v), with
delta = 40 (0-255 scale) and f = 6 at train and test time. Clean-label: only target-class images
are poisoned, so the ratio can be at most the target class's share of the training set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from attacks.base import CLEAN_LABEL, Attack, quantize


def sinusoid(width: int, delta: float, frequency: float, device: torch.device) -> torch.Tensor:
    """The signal as one row of ``width`` values, broadcast over rows and channels."""
    j = torch.arange(width, device=device, dtype=torch.float32)
    return delta * torch.sin(2 * math.pi * j * frequency / width)


class SIG(Attack):
    name = "sig"
    label_policy = CLEAN_LABEL

    @dataclass(frozen=True)
    class Params:
        delta: float = 40.0  # amplitude on the 0-255 scale
        frequency: float = 6.0  # periods across the image width

        def __post_init__(self) -> None:
            if not 0 < self.delta <= 255:
                raise ValueError(f"delta must be in (0, 255], got {self.delta}")
            if self.frequency <= 0:
                raise ValueError(f"frequency must be positive, got {self.frequency}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        v = sinusoid(images.shape[-1], self.params.delta, self.params.frequency, images.device)
        return quantize(images.float() + v)
