"""Pieces several defenses share, written once: loss-guided isolation, per-sample ranking,
gradient-ascent unlearning and MixMatch-style semi-supervised fine-tuning.

All of them run through the one trainer (``ctx.fit``) as :class:`TrainHooks`; none has a
training loop of its own.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import (
    Augment,
    Batch,
    DefenseContext,
    TrainConfig,
    TrainHooks,
    augment_batch,
    autocast,
    predict_logits,
)

#: The seed stream of loss-guided isolation's training (shared by ABL and NAB, so one name).
ISOLATION_STREAM = "isolation"

# --------------------------------------------------------------------------- ranking


def per_sample_losses(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Cross-entropy of every sample, computed in batches in eval mode without augmentation."""
    logits = predict_logits(model, images, device=device)
    return F.cross_entropy(logits, labels.cpu(), reduction="none")


def prediction_entropy(
    model: nn.Module, images: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Predictive entropy -sum_c p_c log p_c of every sample (eval mode, no augmentation)."""
    log_p = F.log_softmax(predict_logits(model, images, device=device), dim=1)
    return -(log_p.exp() * log_p).sum(1)


def lowest_fraction(values: torch.Tensor, fraction: float) -> torch.Tensor:
    """Sorted indices of the ``fraction`` of samples with the lowest values (at least one)."""
    count = max(1, round(fraction * len(values)))
    return torch.argsort(values, stable=True)[:count].sort().values


def complement(indices: torch.Tensor, n: int) -> torch.Tensor:
    """Sorted indices in [0, n) that are not in ``indices``."""
    keep = torch.ones(n, dtype=torch.bool)
    keep[indices.cpu()] = False
    return torch.nonzero(keep).flatten()


def freeze_batchnorm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: running statistics stay as they are, and
    normalisation uses them (stabilises gradient ascent on a few samples)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


# --------------------------------------------------------------------------- isolation


class LossGuidedIsolation(TrainHooks):
    """ABL's isolation loss: keep the training loss floating around ``gamma``.

    ``per_sample=False`` is the official code's flooding on the batch-mean loss,
    |L - gamma| + gamma (the same gradient as batch-level LGA); ``per_sample=True`` is the paper's
    LGA, mean_i sign(l_i - gamma) * l_i, which reverses the gradient of each sample whose loss
    fell below gamma.
    """

    def __init__(self, gamma: float, per_sample: bool):
        self.gamma = gamma
        self.per_sample = per_sample

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        if self.per_sample:
            losses = F.cross_entropy(logits, batch.y, reduction="none")
            return (torch.sign(losses - self.gamma) * losses).mean()
        return (F.cross_entropy(logits, batch.y) - self.gamma).abs() + self.gamma


@dataclass
class Isolation:
    model: nn.Module  # the model trained with the isolation loss
    losses: torch.Tensor  # per-sample CE of every training sample under it
    isolated: torch.Tensor  # sorted indices of the lowest-loss fraction


def isolate_by_loss(
    ctx: DefenseContext,
    config: TrainConfig,
    *,
    gamma: float,
    per_sample: bool,
    fraction: float,
) -> Isolation:
    """Loss-guided isolation (ABL phase A, NAB's LGA detector): train a fresh model on the
    poisoned set with the flooding/LGA loss and no augmentation, then take the ``fraction`` of
    samples with the lowest loss: backdoor samples are learned first, so they sink to the bottom.

    The trained model and its losses are a shared stage: defenses of the same cell that isolate
    with the same budget (ABL and NAB in the quick preset) train it once."""
    images, labels = ctx.train.images, ctx.train.labels

    def build() -> dict:
        model = ctx.make_model()
        hooks = LossGuidedIsolation(gamma, per_sample=per_sample)
        ctx.fit(model, config=config, stream=ISOLATION_STREAM, augment=False, hooks=hooks)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        losses = per_sample_losses(model, images, labels, ctx.device)
        return {"state_dict": state, "losses": losses}

    params = {
        "config": dataclasses.asdict(config),
        "gamma": gamma,
        "per_sample": per_sample,
        "flip": ctx.allows_flip,
        "seed_stream": ISOLATION_STREAM,
    }
    stage = ctx.shared_stage("loss_guided_isolation", params, build)
    with torch.random.fork_rng(devices=[]):  # loading must not move the global RNG either
        model = ctx.make_model()
    model.load_state_dict(stage["state_dict"])
    model.to(device=ctx.device, memory_format=torch.channels_last)
    losses = stage["losses"]
    return Isolation(model, losses, lowest_fraction(losses, fraction))


# --------------------------------------------------------------------------- unlearning


class GradientAscent(TrainHooks):
    """Unlearn the (suspected poisoned) samples trained on.

    ``objective="ce"`` is plain gradient ascent on the cross-entropy (ABL's code). Its gradient
    vanishes on samples the model fits with near-certainty (loss ~ 1e-5 is common for a backdoor),
    so ascent can stall without moving the model. ``objective="unlikelihood"`` minimises
    -log(1 - p_y) instead: the same direction per sample (lower p_y) with a gradient that grows
    as p_y -> 1.

    BatchNorm: ``freeze_bn=False`` keeps the model in train mode, as the official ABL code and
    BackdoorBench do (batch statistics normalise and the running statistics move);
    ``freeze_bn=True`` holds the running statistics (backdoor-toolbox's stabiliser).

    Ascent is unbounded and very sensitive to its length; with ``stop_accuracy`` > 0 it stops
    after the first epoch at which at most that fraction of the unlearned samples
    (``images``, ``labels``) is still classified as labelled. The defender can compute this: it
    needs no ground truth. With ``images`` and ``labels`` given, the hook also records their mean
    loss before (``loss_before``) and after (``loss_after``) the ascent.
    """

    def __init__(
        self,
        objective: str = "ce",
        stop_accuracy: float = 0.0,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        device: torch.device | None = None,
        freeze_bn: bool = False,
    ):
        if objective not in ("ce", "unlikelihood"):
            raise ValueError(f"objective must be 'ce' or 'unlikelihood', not {objective!r}")
        if stop_accuracy > 0 and (images is None or labels is None):
            raise ValueError("stop_accuracy needs the images and labels being unlearned")
        self.objective = objective
        self.stop_accuracy = stop_accuracy
        self.freeze_bn = freeze_bn
        self.images, self.labels, self.device = images, labels, device or torch.device("cpu")
        self.accuracy = float("nan")
        self.loss_before = self.loss_after = float("nan")

    def _measure(self, model: nn.Module) -> float:
        """Mean CE of the unlearned samples (eval mode); sets ``accuracy``."""
        logits = predict_logits(model, self.images, device=self.device)
        labels = self.labels.cpu()
        self.accuracy = (logits.argmax(1) == labels).float().mean().item()
        return F.cross_entropy(logits, labels).item()

    def on_train_start(self, model: nn.Module) -> None:
        if self.images is not None and self.labels is not None:
            self.loss_before = self._measure(model)
            model.train()
        if self.freeze_bn:
            freeze_batchnorm(model)

    def on_epoch_end(self, epoch: int, model: nn.Module) -> None:
        if self.images is not None and self.labels is not None:
            self.loss_after = self._measure(model)
            model.train()
            if self.freeze_bn:
                freeze_batchnorm(model)

    def should_stop(self) -> bool:
        return self.stop_accuracy > 0 and self.accuracy <= self.stop_accuracy

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        if self.objective == "ce":
            return -F.cross_entropy(logits, batch.y)
        # log(1 - p_y) = logsumexp over the other classes - logsumexp over all: exact, stable,
        # and its gradient survives when p_y rounds to 1
        others = logits.scatter(1, batch.y[:, None], float("-inf"))
        return -(torch.logsumexp(others, 1) - torch.logsumexp(logits, 1)).mean()


class JointUnlearning(TrainHooks):
    """Descend on presumed-clean samples while ascending on isolated ones (ABL's paper loss,
    DLP's joint active unlearning): loss = mean_i w_i * l_i, w_i = 1 or -weight."""

    def __init__(self, isolated: torch.Tensor, n_train: int, weight: float = 1.0):
        self.isolated = torch.zeros(n_train, dtype=torch.bool)
        self.isolated[isolated] = True
        self.weight = weight

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        losses = F.cross_entropy(logits, batch.y, reduction="none")
        flagged = self.isolated.to(batch.idx.device)[batch.idx]
        weights = torch.where(flagged, -self.weight, 1.0)
        return (weights * losses).mean()


# --------------------------------------------------------------------------- semi-supervised


class MixMatch(TrainHooks):
    """MixMatch (Berthelot et al., 2019) on top of the trainer's labelled batches.

    For each labelled batch the hook draws as many unlabelled images, augments them twice,
    guesses their labels (mean softmax of both views, sharpened with ``temperature``), mixes the
    labelled and unlabelled batches with Beta(alpha, alpha) mixup, and trains with soft
    cross-entropy on the labelled part plus ``lambda_u`` (ramped up linearly) times the squared
    error on the unlabelled part. The unlabelled views are augmented with ``augment``.
    """

    def __init__(
        self,
        images: torch.Tensor,
        unlabelled: torch.Tensor,
        num_classes: int,
        *,
        flip: bool,
        temperature: float = 0.5,
        alpha: float = 0.75,
        lambda_u: float = 15.0,
        rampup_steps: int = 1,
        augment: Augment = Augment(),  # noqa: B008 (frozen)
    ):
        self.images = images
        self.unlabelled = unlabelled
        self.num_classes = num_classes
        self.flip = flip
        self.temperature = temperature
        self.alpha = alpha
        self.lambda_u = lambda_u
        self.rampup_steps = max(1, rampup_steps)
        self.augment = augment
        self.model: nn.Module | None = None
        self.n_labelled = 0
        self.step = 0

    def on_train_start(self, model: nn.Module) -> None:
        self.model = model
        self.step = 0

    def _view(self, raw: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        x = augment_batch(raw, self.augment, self.flip, gen).float().div_(255)
        return x.contiguous(memory_format=torch.channels_last)

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        assert self.model is not None, "MixMatch hooks need on_train_start"
        dev = batch.x.device
        n = len(batch.y)
        pick = torch.randint(len(self.unlabelled), (n,), device=dev, generator=generator)
        raw = self.images[self.unlabelled.to(dev)[pick]]
        u1, u2 = self._view(raw, generator), self._view(raw, generator)
        with torch.no_grad(), autocast(dev):
            guess = (
                F.softmax(self.model(u1).float(), 1) + F.softmax(self.model(u2).float(), 1)
            ) / 2
            guess = guess ** (1.0 / self.temperature)
            guess = guess / guess.sum(1, keepdim=True)
        x = torch.cat([batch.x, u1, u2])
        targets = torch.cat([F.one_hot(batch.y, self.num_classes).float(), guess, guess])
        beta = torch.distributions.Beta(self.alpha, self.alpha)
        lam = float(beta.sample())
        lam = max(lam, 1.0 - lam)
        perm = torch.randperm(len(x), device=dev, generator=generator)
        mixed = (lam * x + (1 - lam) * x[perm]).contiguous(memory_format=torch.channels_last)
        self.n_labelled = n
        return Batch(
            mixed, batch.y, batch.idx, soft_targets=lam * targets + (1 - lam) * targets[perm]
        )

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        n = self.n_labelled
        soft = batch.soft_targets
        assert soft is not None
        supervised = -(soft[:n] * F.log_softmax(logits[:n], 1)).sum(1).mean()
        unsupervised = ((F.softmax(logits[n:], 1) - soft[n:]) ** 2).mean()
        self.step += 1
        ramp = min(1.0, self.step / self.rampup_steps)
        return supervised + self.lambda_u * ramp * unsupervised


# --------------------------------------------------------------------------- clean fine-tuning


def clean_finetuning(epochs: int, lr: float, batch_size: int, weight_decay: float) -> TrainConfig:
    """BackdoorBench's post-training recipe on the clean subset (FT, FP, NAD's teacher, NC's
    unlearning): SGD momentum 0.9 without nesterov, a cosine over ``epochs`` from ``lr``, no
    warm-up; the trainer crops and flips as BackdoorBench's training transform does."""
    return TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        momentum=0.9,
        weight_decay=weight_decay,
        nesterov=False,
        schedule="cosine",
        warmup_fraction=0.0,
    )
