"""Training-controlled attacks (WaNet, IAD, BPP): the attacker poisons each batch on the fly.

Spec 2.4 and A6-A8. In every batch of B samples the first floor(ratio * B) get the backdoor
trigger and the target label, the next few get the attack's cross/noise/negative transform and
keep their labels, the rest stay clean (batches are already shuffled, so "first" is random).
WaNet and BPP then augment the whole poisoned batch as BackdoorBench's ``PostTensorTransform``
does, instead of the dataset's crop and flip (:func:`post_poisoning_augment`); IAD keeps the
dataset's augmentation. BackdoorBench trains all three victims at a constant lr (its MultiStepLR
milestones lie past the last epoch): ``victim_schedule = "constant"``.
The same attack also exports a static poisoned set (Mode B, spec 2.7) through
:func:`bench.trial.poisoning.poison_train_set`, so training-time defenses see a fixed dataset.
"""

from __future__ import annotations

import dataclasses
import math
from abc import abstractmethod
from typing import ClassVar

import torch
import torch.nn.functional as F

from attacks.base import POISON_LABEL, Attack, quantize
from bench.core.train import Batch, TrainConfig, TrainHooks
from bench.data import DatasetInfo

#: ``victim_schedule`` values: BackdoorBench's constant lr, or the preset's schedule.
VICTIM_SCHEDULES = ("constant", "preset")


def post_poisoning_augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    fill: torch.Tensor,
    flip: bool,
    crop_padding: int = 5,
    crop_p: float = 0.8,
    degrees: float = 10.0,
    rotate_p: float = 0.5,
) -> torch.Tensor:
    """BackdoorBench's WaNet/BPP ``PostTensorTransform`` on a float batch in [0, 1]: random crop
    with padding 5 (p 0.8), rotation within +-10 degrees (p 0.5, nearest), horizontal flip
    (p 0.5, where the dataset allows). Each operation draws *one* setting for the whole batch,
    as torchvision transforms do on a batch tensor. Padding and corners take ``fill`` (the
    colour that is 0 in the normalised space BackdoorBench augments in)."""
    n, c, h, w = x.shape
    dev = x.device
    fill = fill.to(dev, x.dtype).view(1, c, 1, 1)

    def draw() -> float:
        return float(torch.rand((), device=dev, generator=generator))

    if draw() < crop_p:
        pad = crop_padding
        padded = F.pad(x - fill, (pad, pad, pad, pad)) + fill
        dy, dx = (
            int(v) for v in torch.randint(0, 2 * pad + 1, (2,), generator=generator, device=dev)
        )
        x = padded[:, :, dy : dy + h, dx : dx + w]
    if draw() < rotate_p:
        angle = math.radians((2 * draw() - 1) * degrees)
        cos, sin = math.cos(angle), math.sin(angle)
        theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], device=dev, dtype=x.dtype)
        grid = F.affine_grid(theta.expand(n, 2, 3), [n, c, h, w], align_corners=False)
        x = F.grid_sample(x - fill, grid, mode="nearest", align_corners=False) + fill
    if flip and draw() < 0.5:
        x = x.flip(3)
    return x


class TrainingControlledAttack(Attack):
    """An attack defined by a float trigger and a float cross transform on [0, 255] images."""

    label_policy = POISON_LABEL
    controls_training = True
    has_cross = True
    #: The attacker augments each poisoned batch itself (WaNet, BPP), instead of the dataset's
    #: crop and flip.
    post_poisoning_augmentation: ClassVar[bool] = True

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

    def training_hooks(self, ratio: float, target: int, info: DatasetInfo) -> TrainHooks:
        return PerBatchPoisoning(self, ratio, target, info)

    def victim_config(self, config: TrainConfig) -> TrainConfig:
        if self.params.victim_schedule == "constant":
            return dataclasses.replace(config, schedule="constant")
        return config


def other_images(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """For each image, a different image of the same batch (a random cyclic shift)."""
    n = len(x)
    if n < 2:
        return x
    shift = int(torch.randint(1, n, (1,), device=x.device, generator=generator))
    return x.roll(shift, dims=0)


class PerBatchPoisoning(TrainHooks):
    """Poisons each training batch as the attacker's loop does (BackdoorBench's protocol), then
    augments it if the attack does so itself."""

    def __init__(
        self, attack: TrainingControlledAttack, ratio: float, target: int, info: DatasetInfo
    ):
        self.attack, self.ratio, self.target = attack, ratio, target
        self.replaces_augmentation = attack.post_poisoning_augmentation
        self.flip = info.allows_flip
        self.fill = torch.tensor(info.mean)

    def counts(self, batch_size: int, generator: torch.Generator, device: torch.device):
        expected = self.ratio * batch_size
        n_bd = math.floor(expected)
        if n_bd == 0:  # BB's generalize_to_lower_pratio: one sample with probability ratio * B
            n_bd = int(torch.rand((), device=device, generator=generator).item() < expected)
        n_cross = min(self.attack.cross_count(n_bd, batch_size), batch_size - n_bd)
        return n_bd, n_cross

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        n_bd, n_cross = self.counts(len(batch.y), generator, batch.x.device)
        x, y = batch.x, batch.y
        if n_bd + n_cross > 0:
            x255 = x * 255
            parts = [
                self.attack.trigger(x255[:n_bd]),
                self.attack.cross(x255[n_bd : n_bd + n_cross], generator),
            ]
            head = torch.cat(parts).clamp(0, 255).div(255)
            x = torch.cat([head, x[n_bd + n_cross :]])
            y = y.clone()
            y[:n_bd] = self.target
        if self.replaces_augmentation:
            x = post_poisoning_augment(x, generator, fill=self.fill, flip=self.flip)
        x = x.contiguous(memory_format=torch.channels_last)
        return Batch(x, y, batch.idx, batch.soft_targets)
