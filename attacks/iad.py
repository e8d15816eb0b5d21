"""Input-aware dynamic attack (IAD; Nguyen & Tran, NeurIPS 2020; ABL's "Dynamic"): a generator
draws a different trigger for every input.

Spec A7. A pattern generator G (3 -> 3 channels) and a mask generator M (3 -> 1) share one
encoder-decoder architecture (no skips). Backdoor image: x + (G(x) - x) * m(x), with
m = tanh(20 M(x) - 10) / 2 + 1/2; cross image: x + (G(x') - x) * m(x') for another image x', label
kept. Stage 1 pretrains M alone (mask norm above density 0.032 plus diversity); stage 2 trains G
jointly with a classifier through the shared trainer (CE + lambda_div * diversity; one backward,
the classifier's SGD step and G's Adam step). G and M are cached as an attack artifact.

The classifier of stage 2 is the attacker's backdoored model (Mode A), as in BackdoorBench,
which saves that ``netC``: the artifact keeps it and :meth:`InputAware.trained_victim` hands it to
the harness. The static poisoned set (Mode B) is drawn afterwards from the final G and M.
BackdoorBench's epoch accounting is kept: the joint stage runs the preset's epochs minus the
mask epochs (75 of 100 on CIFAR-10, 25 of 50 on GTSRB), at a constant lr.
Compositing happens in [0, 1] pixel space, which equals BB's normalised space because
normalisation is affine per channel. Stage 1's diversity is not scale-free: BB divides the
distance of normalised images by that of [0, 1] masks, so the images are divided by the dataset's
std here as well (revision 2; revision 1 measured them in [0, 1], a diversity weight about 4x
weaker on CIFAR-10).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from attacks.base import AttackContext
from attacks.surrogate import cpu_state
from attacks.training_control import VICTIM_SCHEDULES, TrainingControlledAttack, other_images
from bench.core import seeding
from bench.core.params import require_choice
from bench.core.train import Batch, TrainConfig, TrainHooks, random_crop_flip
from bench.errors import BenchError

EPS = 1e-7


def _block(c_in: int, c_out: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.05),
    ]
    return [*layers, nn.ReLU(inplace=True)] if relu else layers


class InputAwareGenerator(nn.Module):
    """BackdoorBench's generator: three conv-conv-pool stages, a middle conv, three
    upsample-conv-conv stages, output squashed into (0, 1)."""

    def __init__(self, out_channels: int, width: int = 32):
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.net = nn.Sequential(
            *_block(3, w1), *_block(w1, w1), nn.MaxPool2d(2),
            *_block(w1, w2), *_block(w2, w2), nn.MaxPool2d(2),
            *_block(w2, w3), *_block(w3, w3), nn.MaxPool2d(2),
            *_block(w3, w3),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *_block(w3, w3), *_block(w3, w2),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *_block(w2, w2), *_block(w2, w1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
            *_block(w1, w1), *_block(w1, out_channels, relu=False),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(x)) / (2 + EPS) + 0.5


def binarise_mask(m: torch.Tensor) -> torch.Tensor:
    return torch.tanh(20 * m - 10) / (2 + EPS) + 0.5


def distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample RMS distance over C, H, W."""
    return ((a - b) ** 2).flatten(1).mean(1).sqrt()


def diversity(x1: torch.Tensor, x2: torch.Tensor, g1: torch.Tensor, g2: torch.Tensor):
    """Different inputs must give different outputs: mean d(x1, x2) / d(g1, g2)."""
    return (distance(x1, x2) / (distance(g1, g2) + EPS)).mean()


def composite(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return x + (pattern - x) * mask


class JointGeneratorTraining(TrainHooks):
    """Stage 2 as trainer hooks: poison each batch with the (trainable) G and frozen M, add the
    diversity loss, and step G after the classifier's backward pass."""

    def __init__(
        self,
        pattern_gen: InputAwareGenerator,
        mask_gen: InputAwareGenerator,
        images: torch.Tensor,
        *,
        ratio: float,
        target: int,
        lambda_div: float,
        lr: float,
        flip: bool,
    ):
        self.g, self.m, self.images = pattern_gen, mask_gen, images
        self.ratio, self.target, self.lambda_div, self.flip = ratio, target, lambda_div, flip
        self.optimizer = torch.optim.Adam(self.g.parameters(), lr=lr, betas=(0.5, 0.9))
        self.div_loss = torch.zeros(())

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        x1 = batch.x
        n = len(x1)
        n_bd = max(1, int(self.ratio * n))
        pick = torch.randint(len(self.images), (2 * n_bd,), device=x1.device, generator=generator)
        x2 = random_crop_flip(self.images[pick], 4, self.flip, generator).float().div_(255)
        self.g.train()
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            m1 = binarise_mask(self.m(x1[:n_bd]))
            m2 = binarise_mask(self.m(x2[n_bd:]))
        g1 = self.g(x1[:n_bd])
        g2 = self.g(x2[n_bd:])
        bd = composite(x1[:n_bd], g1, m1)
        cross = composite(x1[n_bd : 2 * n_bd], g2, m2)
        self.div_loss = diversity(x1[:n_bd], x2[n_bd:], g1, g2)
        x = torch.cat([bd, cross, x1[2 * n_bd :]]).contiguous(memory_format=torch.channels_last)
        y = batch.y.clone()
        y[:n_bd] = self.target
        return Batch(x, y, batch.idx)

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        return F.cross_entropy(logits, batch.y) + self.lambda_div * self.div_loss

    def on_step_end(self) -> None:
        self.optimizer.step()


def pretrain_mask(
    mask_gen: InputAwareGenerator,
    images: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    density: float,
    lambda_norm: float,
    lambda_div: float,
    generator: torch.Generator,
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> list[float]:
    """Stage 1: M alone, on pairs of independently shuffled batches; returns epoch losses. The
    image distance is BackdoorBench's, on normalised images (``pixel_std``); the masks' is not."""
    optimizer = torch.optim.Adam(mask_gen.parameters(), lr=lr, betas=(0.5, 0.9))
    milestones = [round(epochs * 0.4), round(epochs * 0.8)]  # BB: [10, 20] of 25
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, 0.1)
    dev = images.device
    inv_std = 1 / torch.tensor(pixel_std, device=dev).view(1, -1, 1, 1)
    losses = []
    mask_gen.train()
    for _ in range(epochs):
        first = torch.randperm(len(images), device=dev, generator=generator)
        second = torch.randperm(len(images), device=dev, generator=generator)
        total = 0.0
        for start in range(0, len(images) - batch_size + 1, batch_size):
            x1 = images[first[start : start + batch_size]].float() / 255
            x2 = images[second[start : start + batch_size]].float() / 255
            m1, m2 = binarise_mask(mask_gen(x1)), binarise_mask(mask_gen(x2))
            loss = lambda_norm * F.relu(m1 - density).mean() + lambda_div * diversity(
                x1 * inv_std, x2 * inv_std, m1, m2
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(x1)
        scheduler.step()
        losses.append(total / max(1, len(images)))
    mask_gen.eval()
    return losses


class InputAware(TrainingControlledAttack):
    name = "iad"
    revision = 2  # stage 1's image distance on normalised images, as BackdoorBench's

    @dataclass(frozen=True)
    class Params:
        width: int = 32  # generator base width (BackdoorBench: 32)
        mask_epochs: int = 25  # stage 1
        generator_epochs: int = 0  # stage 2; 0: the preset's epochs minus mask_epochs (BB)
        mask_density: float = 0.032
        lambda_norm: float = 100.0
        lambda_div: float = 1.0
        lr_generator: float = 0.01
        cross_ratio: float = 1.0  # cross samples per backdoor sample
        # the joint classifier's lr: "constant" (BackdoorBench) or "preset" (the preset's schedule)
        victim_schedule: str = "constant"

        def __post_init__(self) -> None:
            require_choice("victim_schedule", self.victim_schedule, VICTIM_SCHEDULES)
            if self.width < 1 or self.mask_epochs < 0 or self.generator_epochs < 0:
                raise ValueError("width must be >= 1 and mask_epochs, generator_epochs >= 0")
            if not 0 < self.mask_density < 1:
                raise ValueError(f"mask_density must be in (0, 1), got {self.mask_density}")

    #: BackdoorBench's IAD keeps the dataset's crop and flip (no post-poisoning transform).
    post_poisoning_augmentation = False

    def __init__(self, **overrides):
        super().__init__(**overrides)
        self.g: InputAwareGenerator | None = None
        self.m: InputAwareGenerator | None = None
        self.victim: dict | None = None

    def joint_epochs(self, config: TrainConfig) -> int:
        p = self.params
        epochs = p.generator_epochs or config.epochs - p.mask_epochs
        if epochs < 1:
            raise BenchError(
                f"iad: the joint stage has no epochs left ({config.epochs} training epochs minus "
                f"{p.mask_epochs} mask epochs); set [attacks.iad] generator_epochs"
            )
        return epochs

    def fit(self, ctx: AttackContext) -> None:
        p = self.params

        def build() -> dict:
            dev = ctx.device
            g = InputAwareGenerator(3, p.width).to(dev)
            m = InputAwareGenerator(1, p.width).to(dev)
            images = ctx.images.to(dev)
            gen = seeding.generator(ctx.seed, "iad_generator", dev)
            mask_losses = pretrain_mask(
                m,
                images,
                epochs=p.mask_epochs,
                batch_size=ctx.train_config.batch_size,
                lr=p.lr_generator,
                density=p.mask_density,
                lambda_norm=p.lambda_norm,
                lambda_div=p.lambda_div,
                generator=gen,
                pixel_std=ctx.pixel_std,
            )
            for param in m.parameters():
                param.requires_grad_(False)
            hooks = JointGeneratorTraining(
                g,
                m,
                images,
                ratio=ctx.ratio,
                target=ctx.target,
                lambda_div=p.lambda_div,
                lr=p.lr_generator,
                flip=ctx.allows_flip,
            )
            config = self.victim_config(replace(ctx.train_config, epochs=epochs))
            classifier = ctx.new_model()
            stats = ctx.trainer.fit(
                classifier,
                ctx.images,
                ctx.labels,
                config,
                seed=ctx.seed,
                flip=ctx.allows_flip,
                hooks=hooks,
            )
            return {
                "pattern": cpu_state(g),
                "mask": cpu_state(m),
                "classifier": cpu_state(classifier),
                "train_seconds": torch.tensor(stats.seconds),
                "mask_losses": torch.tensor(mask_losses),
                "joint_losses": torch.tensor(stats.epoch_losses),
            }

        epochs = self.joint_epochs(ctx.train_config)
        key = {**self.describe(), "generator_epochs": epochs, "ratio": ctx.ratio}
        key.update(self.revision_key())
        value = ctx.artifact("iad_joint_training", key, build)
        self.victim = {
            "state_dict": value["classifier"],
            "train_seconds": float(value["train_seconds"]),
        }
        self.g = InputAwareGenerator(3, p.width)
        self.m = InputAwareGenerator(1, p.width)
        self.g.load_state_dict(value["pattern"])
        self.m.load_state_dict(value["mask"])
        self.g.eval().requires_grad_(False)
        self.m.eval().requires_grad_(False)

    def trained_victim(self) -> dict | None:
        return self.victim

    def _generators(self, device: torch.device) -> tuple[nn.Module, nn.Module]:
        if self.g is None or self.m is None:
            raise RuntimeError("InputAware used before fit: the generators are trained in fit()")
        return self.g.to(device), self.m.to(device)

    def _poison_with(self, x: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        g, m = self._generators(x.device)
        with torch.no_grad():
            x01, src = x / 255, source / 255
            return composite(x01, g(src), binarise_mask(m(src))) * 255

    def trigger(self, x: torch.Tensor) -> torch.Tensor:
        return self._poison_with(x, x)

    def cross(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self._poison_with(x, other_images(x, generator))

    def cross_count(self, n_poison: float, n_total: int) -> int:
        return int(self.params.cross_ratio * n_poison)
