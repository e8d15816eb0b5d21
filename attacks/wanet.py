"""WaNet (Nguyen & Tran, ICLR 2021): an invisible, fixed elastic warp of the whole image.

Spec A6. A seeded 2 x k x k field of uniform noise, scaled by its mean magnitude, upsampled
bicubically to H x W, is added (times s / H) to the identity sampling grid; the backdoor image is
that grid bilinearly resampled. Noise ("cross") samples use the grid plus fresh per-sample noise
of one pixel at most and keep their labels, so the model learns this exact warp and not warps in
general. k = 4, s = 0.5, cross ratio 2 (two noise samples per backdoor sample) as in BackdoorBench.

Training-controlled: the attacker's run poisons each batch (``PerBatchPoisoning``), then augments
the whole batch as BackdoorBench does (crop with padding 5, rotation, flip; one draw per batch)
in place of the dataset's crop and flip, at a constant lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from attacks.training_control import VICTIM_SCHEDULES, TrainingControlledAttack
from bench.core.params import require_choice


def warp_grid(size: int, k: int, strength: float, rescale: float, seed: int) -> torch.Tensor:
    """The backdoor sampling grid (1 x H x W x 2, (x, y) order as ``grid_sample`` expects)."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.rand(1, 2, k, k, generator=gen) * 2 - 1
    noise = noise / noise.abs().mean()
    noise = F.interpolate(noise, size=(size, size), mode="bicubic", align_corners=True)
    noise = noise.permute(0, 2, 3, 1)
    return ((identity_grid(size) + strength * noise / size) * rescale).clamp(-1, 1)


def identity_grid(size: int) -> torch.Tensor:
    """The sampling grid that reproduces the image (1 x H x W x 2, (x, y) order)."""
    line = torch.linspace(-1, 1, size)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    return torch.stack((cols, rows), dim=2)[None]


class WaNet(TrainingControlledAttack):
    name = "wanet"

    @dataclass(frozen=True)
    class Params:
        k: int = 4  # control grid size of the warp field
        strength: float = 0.5  # s: warp strength
        grid_rescale: float = 1.0
        cross_ratio: float = 2.0  # noise samples per backdoor sample
        grid_seed: int = 0  # seed of the warp field
        # the backdoored model's lr: "constant" (BackdoorBench) or "preset" (the preset's schedule)
        victim_schedule: str = "constant"

        def __post_init__(self) -> None:
            require_choice("victim_schedule", self.victim_schedule, VICTIM_SCHEDULES)
            if not 2 <= self.k <= 32:
                raise ValueError(f"k must be in [2, 32], got {self.k}")
            if self.strength <= 0:
                raise ValueError(f"strength must be positive, got {self.strength}")
            if self.cross_ratio < 0:
                raise ValueError(f"cross_ratio must be >= 0, got {self.cross_ratio}")

    def grid(self, size: int, device: torch.device) -> torch.Tensor:
        p = self.params
        return warp_grid(size, p.k, p.strength, p.grid_rescale, p.grid_seed).to(device)

    def _sample(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid.expand(len(x), -1, -1, -1), align_corners=True)

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        return self._sample(x, self.grid(x.shape[-1], x.device))

    def cross(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        size = x.shape[-1]
        jitter = torch.rand(len(x), size, size, 2, device=x.device, generator=generator)
        grid = (self.grid(size, x.device) + (jitter * 2 - 1) / size).clamp(-1, 1)
        return F.grid_sample(x, grid, align_corners=True)

    def cross_count(self, n_poison: float, n_total: int) -> int:
        return int(self.params.cross_ratio * n_poison)
