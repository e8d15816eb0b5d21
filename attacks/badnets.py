"""BadNets (Gu et al., 2017): a small white square stamped in the bottom-right corner.

Spec A1: a 3x3 patch at rows/cols H-3..H-1 and W-3..W-1 (zero margin), all channels 255; the
stamped image replaces those pixels and keeps the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import POISON_LABEL, Attack


class BadNets(Attack):
    name = "badnets"
    label_policy = POISON_LABEL

    @dataclass(frozen=True)
    class Params:
        size: int = 3  # side of the square patch, pixels
        value: int = 255  # pixel value of the patch in every channel

        def __post_init__(self) -> None:
            if not 1 <= self.size <= 16:
                raise ValueError(f"size must be in [1, 16], got {self.size}")
            if not 0 <= self.value <= 255:
                raise ValueError(f"value must be in [0, 255], got {self.value}")

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        out = images.clone()
        s = self.params.size
        out[..., -s:, -s:] = self.params.value
        return out
