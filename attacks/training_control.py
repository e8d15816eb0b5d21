"""Training-controlled attacks (WaNet, IAD, BPP): the attacker poisons each batch on the fly.

Spec 2.4 and A6-A8. In every batch of B samples the first floor(ratio * B) get the backdoor
trigger and the target label, the next few get the attack's cross/noise/negative transform and
keep their labels, the rest stay clean (batches are already shuffled, so "first" is random).
The same attack also exports a static poisoned set (Mode B, spec 2.7) through
:func:`bench.poisoning.poison_train_set`, so training-time defenses see a fixed dataset.
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch

from attacks.base import POISON_LABEL, Attack, quantize
from bench.train import Batch, TrainHooks


class TrainingControlledAttack(Attack):
    """An attack defined by a float trigger and a float cross transform on [0, 255] images."""

    label_policy = POISON_LABEL
    controls_training = True
    has_cross = True

    @abstractmethod
    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        """The backdoor transform of a float NCHW batch on the 0-255 scale (not yet clipped)."""

    @abstractmethod
    def cross(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The cross transform of a float NCHW batch on the 0-255 scale (not yet clipped)."""

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return quantize(self.trigger(images.float()))

    def apply_cross(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return quantize(self.cross(images.float(), generator))

    def training_hooks(self, ratio: float, target: int) -> TrainHooks:
        return PerBatchPoisoning(self, ratio, target)


def other_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each image, a different image of the same batch (a random cyclic shift)."""
    n = len(x)
    if n < 2:
        return x
    shift = int(torch.randint(1, n, (1,), device=x.device, generator=generator))
    return x.roll(shift, dims=0)


class PerBatchPoisoning(TrainHooks):
    """Poisons each training batch as the attacker's loop does (BackdoorBench's protocol)."""

    def __init__(self, attack: TrainingControlledAttack, ratio: float, target: int):
        self.attack, self.ratio, self.target = attack, ratio, target

    def counts(self, batch_size: int, generator: torch.Generator, device: torch.device):
        expected = self.ratio * batch_size
        n_bd = math.floor(expected)
        if n_bd == 0:  # BB's generalize_to_lower_pratio: one sample with probability ratio * B
            n_bd = int(torch.rand((), device=device, generator=generator).item() < expected)
        n_cross = min(self.attack.cross_count(n_bd, batch_size), batch_size - n_bd)
        return n_bd, n_cross

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        n_bd, n_cross = self.counts(len(batch.y), generator, batch.x.device)
        if n_bd + n_cross == 0:
            return batch
        x255 = batch.x * 255
        parts = [
            self.attack.trigger(x255[:n_bd]),
            self.attack.cross(x255[n_bd : n_bd + n_cross], generator),
        ]
        head = torch.cat(parts).clamp(0, 255).div(255)
        x = torch.cat([head, batch.x[n_bd + n_cross :]])
        y = batch.y.clone()
        y[:n_bd] = self.target
        x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, batch.idx, batch.soft_targets)
