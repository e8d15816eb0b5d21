"""Blended (Chen et al., 2017): a fixed key image alpha-blended over the whole picture.

Spec A2: x' = Q8((1 - alpha) * x + alpha * K) with alpha = 0.2 at train and test time. BackdoorBench
uses a Hello Kitty photo as K; offline we use the spec's documented substitute, one *fixed*,
seeded uniform-noise key K in U{0..255}^(3xHxW) (Chen et al.'s random-pattern variant). The same
key is used for every image; ``key_seed`` is recorded in each result row.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import POISON_LABEL, Attack, quantize


def noise_key(shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """The seeded uniform-noise key image (uint8, CHW), identical on every device."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.int64).to(torch.uint8)


class Blended(Attack):
    name = "blended"
    label_policy = POISON_LABEL

    @dataclass(frozen=True)
    class Params:
        alpha: float = 0.2  # blend weight of the key at train and test time
        key_seed: int = 0  # seed of the uniform-noise key image

        def __post_init__(self) -> None:
            if not 0.0 < self.alpha <= 1.0:
                raise ValueError(f"alpha must be in (0, 1], got {self.alpha}")

    def key(self, shape: tuple[int, int, int], device: torch.device) -> torch.Tensor:
        return noise_key(shape, self.params.key_seed).to(device)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        a = self.params.alpha
        key = self.key(tuple(images.shape[1:]), images.device).float()
        return quantize((1.0 - a) * images.float() + a * key)
