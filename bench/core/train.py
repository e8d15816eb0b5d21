"""The one training loop every attack and defense uses, and the evaluation helper.

Data lives on the device as uint8 NCHW tensors. Each step gathers a batch by index, augments it as
a tensor (random crop with 4-pixel zero padding, horizontal flip where the dataset allows) and
converts it to float; no per-sample Python or PIL work. Defenses and training-controlled attacks
change what happens per batch through :class:`TrainHooks`, never by copying the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from bench.core import precision, settings
from bench.core.limits import check_time_limit
from bench.core.rules import (
    FRACTION,
    boolean,
    integer,
    list_of,
    number,
    problems_of,
    ruled,
    string,
)


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation budget; presets hold one, defenses may derive others from it."""

    epochs: int = ruled(integer(0), 10)
    batch_size: int = ruled(integer(1), 256)
    lr: float = ruled(number(0.0, low_open=True), 0.1)
    momentum: float = ruled(number(0.0, 1.0), 0.9)
    weight_decay: float = ruled(number(0.0), 5e-4)
    nesterov: bool = ruled(boolean(), False)
    #: "onecycle" | "cosine" | "constant" | "multistep"
    schedule: str = ruled(string(lambda: SCHEDULES, what="schedule"), "onecycle")
    warmup_fraction: float = ruled(FRACTION, 0.2)
    label_smoothing: float = ruled(FRACTION, 0.0)
    #: "sgd" | "adam" (Adam ignores momentum and nesterov).
    optimizer: str = ruled(string(("sgd", "adam"), what="optimizer"), "sgd")
    #: Length of the schedule in epochs when it differs from ``epochs`` (0: ``epochs``): e.g.
    #: BackdoorBench's cosine with T_max 100 over GTSRB's 50 epochs, or DBD's 100 SimCLR epochs
    #: of a 1,000-epoch cosine.
    schedule_epochs: int = ruled(integer(0), 0)
    #: ``multistep``: the lr is multiplied by ``gamma`` at each of these epochs.
    milestones: tuple[int, ...] = ruled(list_of(integer(0)), ())
    gamma: float = ruled(number(0.0, low_open=True), 0.1)

    def __post_init__(self) -> None:
        object.__setattr__(self, "milestones", tuple(self.milestones))
        problems = problems_of(self)  # the rules the preset schema checks, on every budget
        if problems:
            raise ValueError("bad training budget: " + "; ".join(problems))

    def lr_factor(self, step: int, steps_per_epoch: int) -> float:
        """The schedule's multiplier of ``lr`` at optimiser step ``step`` (stepped per batch)."""
        length = (self.schedule_epochs or self.epochs) * steps_per_epoch
        return SCHEDULES[self.schedule](self, step / max(1, length), step // steps_per_epoch)


def _onecycle(config: TrainConfig, progress: float, _epoch: int) -> float:
    warmup = config.warmup_fraction
    if progress < warmup:
        return progress / warmup
    return max(0.0, (1.0 - progress) / (1.0 - warmup))


def _multistep(config: TrainConfig, _progress: float, epoch: int) -> float:
    return config.gamma ** sum(epoch >= m for m in config.milestones)


SCHEDULES: dict[str, Callable[[TrainConfig, float, int], float]] = {
    "onecycle": _onecycle,
    "cosine": lambda _c, p, _e: 0.5 * (1.0 + math.cos(math.pi * min(p, 1.0))),
    "constant": lambda _c, _p, _e: 1.0,
    "multistep": _multistep,
}


@dataclass(frozen=True)
class Augment:
    """Batched training augmentation, applied to uint8 batches before they become floats:
    random crop with ``crop_padding`` pixels of padding (``padding_mode`` "zeros" or
    "reflect"), a horizontal flip where the dataset allows one, and Cutout with one hole of
    side ``cutout`` (0: off) as the official ABL/NAB code's ``Cutout(1, length)`` cuts it: a
    centre drawn anywhere in the image, rows and columns ``[c - length // 2, c + length // 2)``
    clipped to the image, so length 3 cuts a 2 x 2 hole."""

    crop_padding: int = 4
    padding_mode: str = "zeros"
    cutout: int = 0

    def __post_init__(self) -> None:
        if self.padding_mode not in ("zeros", "reflect"):
            raise ValueError(f"padding_mode must be 'zeros' or 'reflect': {self.padding_mode!r}")
        if self.crop_padding < 0 or self.cutout < 0:
            raise ValueError("crop_padding and cutout must be >= 0")


@dataclass
class Batch:
    """One training batch: float images in [0, 1] (NCHW), labels, and dataset indices."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor
    #: Per-sample target distributions, for hooks that train on soft labels (MixMatch).
    soft_targets: torch.Tensor | None = None
    #: The model's stage maps for ``x`` from the forward that made the logits (``stage1``, ...;
    #: see ``ClassifierNet.stage_maps``), where the hooks ask for them (``wants_stages``).
    stages: dict[str, torch.Tensor] | None = None


class TrainHooks:
    """Per-batch extension points. Subclass and override what you need; defaults train plainly."""

    #: True for hooks that augment each batch themselves in ``transform_batch`` (e.g. an
    #: attacker's post-poisoning augmentation): the trainer then crops and flips nothing.
    replaces_augmentation: bool = False
    #: True for hooks whose ``loss`` needs the model's intermediate maps: the trainer then runs
    #: the forward through ``model.stage_maps`` (one pass, under the same autocast as the logits)
    #: and hands them over in ``batch.stages``.
    wants_stages: bool = False

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        """Change a batch after augmentation (training-controlled attacks poison here)."""
        return batch

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        """The scalar loss to minimise. Defenses can weight or reshape per-sample losses here.
        ``logits`` (float32) come from the model being trained, in train mode, on ``batch.x``
        under the precision's autocast; ``batch.stages`` holds that forward's stage maps when
        ``wants_stages`` is set."""
        return F.cross_entropy(logits, batch.y, label_smoothing=config.label_smoothing)

    def on_train_start(self, model: nn.Module) -> None:
        """Called once the model is in train mode (e.g. to freeze BatchNorm statistics)."""

    def epoch_indices(self, epoch: int, model: nn.Module) -> torch.Tensor | None:
        """The training indices to draw from this epoch (None: the ones ``fit`` was given).
        Must keep their count, so the schedule's length stays fixed (DBD re-splits per epoch).
        The model is put back in train mode afterwards."""
        return None

    def on_step_end(self) -> None:
        """Called after each optimiser step (e.g. to step a generator trained alongside)."""

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        """Called after each epoch (isolation epochs, logging, early stops)."""

    def should_stop(self) -> bool:
        """Checked after each epoch; True ends training early."""
        return False


@dataclass
class TrainStats:
    """What one ``fit`` did: its seconds, optimiser steps, images seen, mean loss per epoch."""

    seconds: float
    steps: int
    images: int
    epoch_losses: list[float] = field(default_factory=list)
    #: The optimiser's state at the end, to continue with it (``fit(optimizer_state=...)``).
    optimizer_state: dict | None = None


def random_crop_flip(
    images: torch.Tensor,
    pad: int,
    flip: bool,
    generator: torch.Generator,
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Batched random crop (padding ``pad``, zeros or reflected) and optional horizontal flip of
    NCHW images."""
    n, _, h, w = images.shape
    if pad > 0:
        if padding_mode == "reflect":
            padded = F.pad(images.float(), (pad, pad, pad, pad), mode="reflect").to(images.dtype)
        else:
            padded = F.pad(images, (pad, pad, pad, pad))
        dev = images.device
        dy = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (n, 1), device=dev, generator=generator)
        rows = (dy + torch.arange(h, device=dev)).view(n, 1, h, 1)
        cols = (dx + torch.arange(w, device=dev)).view(n, 1, 1, w)
        batch = torch.arange(n, device=dev).view(n, 1, 1, 1)
        chans = torch.arange(images.shape[1], device=dev).view(1, -1, 1, 1)
        images = padded[batch, chans, rows, cols]
    if flip:
        mask = torch.rand(n, device=images.device, generator=generator) < 0.5
        images = torch.where(mask.view(n, 1, 1, 1), images.flip(3), images)
    return images


def cutout(images: torch.Tensor, length: int, generator: torch.Generator) -> torch.Tensor:
    """One hole per image, zeroed, as the official ``Cutout(1, length)`` (see :class:`Augment`)."""
    n, _, h, w = images.shape
    dev = images.device
    cy = torch.randint(0, h, (n, 1, 1), device=dev, generator=generator)
    cx = torch.randint(0, w, (n, 1, 1), device=dev, generator=generator)
    rows = torch.arange(h, device=dev).view(1, h, 1)
    cols = torch.arange(w, device=dev).view(1, 1, w)
    half = length // 2
    hole = (rows >= cy - half) & (rows < cy + half) & (cols >= cx - half) & (cols < cx + half)
    return images.masked_fill(hole[:, None], 0)


def augment_batch(
    images: torch.Tensor, augment: Augment, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """``augment`` applied to a uint8 NCHW batch."""
    out = random_crop_flip(images, augment.crop_padding, flip, generator, augment.padding_mode)
    return cutout(out, augment.cutout, generator) if augment.cutout else out


def autocast(device: torch.device):
    """bf16 autocast where the precision in force says so (``bench.core.precision``), else fp32."""
    if precision.current(device) == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move a model to the device in channels_last layout (faster convolutions on CUDA with AMP,
    and measured 35-60% faster on CPU too)."""
    return model.to(device=device, memory_format=torch.channels_last)


def make_optimizer(
    model: nn.Module, config: TrainConfig, state: dict | None = None
) -> torch.optim.Optimizer:
    """The optimiser ``config`` names over ``model``'s parameters; with ``state`` (an earlier
    optimiser's ``state_dict`` over the same parameters) it continues that one's moments."""
    if config.optimizer == "adam":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov and config.momentum > 0,
        )
    if state is not None:
        fresh = [dict(g) for g in optimizer.param_groups]
        optimizer.load_state_dict(state)
        for group, settings_ in zip(optimizer.param_groups, fresh, strict=True):
            group.update({k: v for k, v in settings_.items() if k != "params"})
            group.pop("initial_lr", None)  # the new schedule starts from config.lr
    return optimizer


class Trainer:
    """SGD with a per-step schedule over uint8 tensors held on ``device``."""

    def __init__(
        self,
        device: torch.device | str = "cpu",
        crop_padding: int = 4,
        progress: Callable[[str], None] | None = None,
        compile: bool | None = None,
    ):
        self.device = torch.device(device)
        self.standard_augment = Augment(crop_padding=crop_padding)
        self.progress = progress  # receives one line per epoch (trial logs)
        #: Forward passes through ``torch.compile`` (default: ``$BENCH_COMPILE``).
        self.compile = settings.compile_models() if compile is None else compile

    def fit(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: TrainConfig,
        *,
        seed: int,
        flip: bool,
        hooks: TrainHooks | None = None,
        indices: torch.Tensor | None = None,
        augment: bool | Augment = True,
        optimizer_state: dict | None = None,
    ) -> TrainStats:
        """Train ``model`` in place on ``images[indices]`` (uint8 NCHW) for ``config.epochs``.

        ``augment``: True for the standard crop + flip, False for none, or an :class:`Augment`.
        ``optimizer_state`` continues an earlier fit's optimiser (its momentum or Adam moments,
        as official code that reuses one optimiser across phases); ``config`` still sets the
        learning rate and the other hyperparameters."""
        hooks = hooks or TrainHooks()
        if augment is True:
            augment = self.standard_augment
        if augment is False or hooks.replaces_augmentation:
            augment, flip = Augment(crop_padding=0), False
        dev = self.device
        model = prepare_model(model, dev)
        net = torch.compile(model) if self.compile else model  # shares model's parameters
        images, labels = images.to(dev), labels.to(dev)
        pool = torch.arange(len(labels), device=dev) if indices is None else indices.to(dev).long()
        gen = torch.Generator(device=dev).manual_seed(seed)
        steps_per_epoch = max(1, math.ceil(len(pool) / config.batch_size))
        optimizer = make_optimizer(model, config, optimizer_state)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: config.lr_factor(step, steps_per_epoch)
        )
        stats = TrainStats(seconds=0.0, steps=0, images=0)
        start = time.perf_counter()
        model.train()
        hooks.on_train_start(model)
        for epoch in range(config.epochs):
            chosen = hooks.epoch_indices(epoch, model)
            if chosen is not None:
                if len(chosen) != len(pool):
                    raise ValueError("epoch_indices must keep the number of training indices")
                pool = chosen.to(dev).long()
                model.train()  # choosing may have evaluated the model
            order = pool[torch.randperm(len(pool), device=dev, generator=gen)]
            loss_sum = torch.zeros((), device=dev)
            for b in range(steps_per_epoch):
                check_time_limit()
                idx = order[b * config.batch_size : (b + 1) * config.batch_size]
                x = augment_batch(images[idx], augment, flip, gen)
                x = x.float().div_(255)
                x = x.contiguous(memory_format=torch.channels_last)
                batch = hooks.transform_batch(Batch(x, labels[idx], idx), gen)
                with autocast(dev):
                    if hooks.wants_stages:
                        stages = model.stage_maps(batch.x)
                        logits = model.classify(next(reversed(stages.values())))
                        batch = replace(batch, stages=stages)
                    else:
                        logits = net(batch.x)
                loss = hooks.loss(logits.float(), batch, config)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                hooks.on_step_end()
                loss_sum += loss.detach() * len(idx)
                stats.steps += 1
                stats.images += len(idx)
            stats.epoch_losses.append(float(loss_sum) / len(pool))
            hooks.on_epoch_end(epoch, model)
            if self.progress is not None:
                self.progress(
                    f"epoch {epoch + 1}/{config.epochs} loss {stats.epoch_losses[-1]:.4f} "
                    f"({time.perf_counter() - start:.0f}s)"
                )
            if hooks.should_stop():
                break
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        stats.seconds = time.perf_counter() - start
        stats.optimizer_state = optimizer.state_dict()
        return stats


InputTransform = Callable[[torch.Tensor], torch.Tensor]


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    transform: InputTransform | None = None,
) -> torch.Tensor:
    """Float32 logits (on the CPU) for uint8 NCHW ``images``, in eval mode, no augmentation.

    ``transform`` maps uint8 batches to uint8 batches (a defense's test-time transform)."""
    dev = torch.device(device)
    # Layout changes happen outside no_grad so the model's parameters stay trainable.
    model = prepare_model(model, dev).eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            check_time_limit()
            x = images[start : start + batch_size].to(dev)
            if transform is not None:
                x = transform(x)
            x = x.float().div_(255).contiguous(memory_format=torch.channels_last)
            with autocast(dev):
                out.append(model(x).float().cpu())
    return torch.cat(out) if out else torch.empty(0)


def predict(
    model: nn.Module,
    images: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int = 1024,
    transform: InputTransform | None = None,
) -> torch.Tensor:
    """Predicted labels for uint8 NCHW ``images``."""
    logits = predict_logits(
        model, images, device=device, batch_size=batch_size, transform=transform
    )
    return logits.argmax(1) if len(logits) else torch.empty(0, dtype=torch.long)
