"""DBD, Decoupling-Based backdoor Defense (Huang et al., ICLR 2022). Spec: defenses.md section 6.

End-to-end supervised training lets poisoned samples cluster by their (wrong) target label;
self-supervised features keep them near their true class. DBD therefore decouples training:
1. SimCLR on the training images without labels (NT-Xent, temperature 0.5, projection head,
   the official augmentations batched on the device; ``defenses.ssl``); plain SGD, cosine;
2. the backbone's weights frozen (its BatchNorm statistics still move, as in the official
   train-mode warm-up), a linear head trained with the symmetric cross-entropy
   SCE = alpha CE + beta RCE; per-sample SCE then ranks the data;
3. MixMatch fine-tuning of the whole model (the shared hook), labelled = the lowest-loss 50%,
   unlabelled = the rest, the split recomputed at the start of every epoch; the stage-2 Adam
   continues (one optimiser for both stages, as the official code), reflect-padded crops.

The final model is the last epoch's (no selection on test accuracy). lambda_u defaults to the
spec's per-dataset value: 15 on CIFAR-10, 6 elsewhere (BackdoorBench's ImageNet config for
GTSRB). The low-credibility half of the last split is reported as ``flagged``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import (
    Augment,
    Batch,
    Defense,
    DefenseContext,
    DefenseOutput,
    TrainConfig,
    TrainHooks,
    predict_logits,
)
from defenses.shared import MixMatch, complement, lowest_fraction
from defenses.ssl import Contrastive, SimCLRHooks

#: The official warm-up and MixMatch crop: RandomCrop(32, padding=4, padding_mode="reflect").
REFLECT_CROP = Augment(padding_mode="reflect")


def symmetric_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, alpha: float = 0.1, beta: float = 1.0
) -> torch.Tensor:
    """Per-sample SCE (Wang et al., 2019): alpha * CE + beta * RCE, with
    RCE = -sum_c p_c log(clamp(onehot_c, 1e-4, 1)) (robust to noisy labels)."""
    ce = F.cross_entropy(logits, labels, reduction="none")
    p = F.softmax(logits, 1).clamp(min=1e-7, max=1.0)
    onehot = F.one_hot(labels, logits.shape[1]).float().clamp(min=1e-4, max=1.0)
    rce = -(p * onehot.log()).sum(1)
    return alpha * ce + beta * rce


def sce_losses(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, device
) -> torch.Tensor:
    """Per-sample SCE of every training sample (eval mode, no augmentation)."""
    return symmetric_cross_entropy(predict_logits(model, images, device=device), labels.cpu())


class LinearProbe(TrainHooks):
    """Stage 2: only the head learns. The backbone's weights are frozen, but the model is in
    train mode, so its BatchNorm layers normalise with batch statistics and their running
    statistics move, as in the official warm-up (``model.train()`` around a no-grad backbone)."""

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        return symmetric_cross_entropy(logits, batch.y).mean()


class ResplitMixMatch(MixMatch):
    """MixMatch whose labelled/unlabelled split is recomputed from SCE at every epoch start.

    With ``samples_per_epoch`` an epoch is that many labelled draws (the official epoch is 1024
    iterations of 64, about 2.6 passes over CIFAR-10's labelled half) rather than one pass."""

    def __init__(
        self,
        images,
        labels,
        labelled_fraction: float,
        device,
        samples_per_epoch: int = 0,
        generator: torch.Generator | None = None,
        **kw,
    ):
        self.all_images, self.all_labels = images, labels
        self.labelled_fraction, self.device = labelled_fraction, device
        self.samples_per_epoch = samples_per_epoch
        #: Draws the random remainder of a tiled epoch.
        self.generator = generator or torch.Generator().manual_seed(0)
        self.labelled = torch.empty(0, dtype=torch.long)
        self.fit_accuracies: list[float] = []  # of the given labels, at every split
        super().__init__(images, torch.empty(0, dtype=torch.long), **kw)

    def split(self, model: nn.Module) -> torch.Tensor:
        logits = predict_logits(model, self.all_images, device=self.device)
        labels = self.all_labels.cpu()
        self.fit_accuracies.append(logits.argmax(1).eq(labels).float().mean().item())
        losses = symmetric_cross_entropy(logits, labels)
        self.labelled = lowest_fraction(losses, self.labelled_fraction)
        self.unlabelled = complement(self.labelled, len(self.all_labels)).to(self.images.device)
        return self.epoch_pool()

    def epoch_pool(self) -> torch.Tensor:
        """The labelled indices one epoch draws from: each once, or tiled (whole copies, then a
        random remainder) to ``samples_per_epoch``."""
        n = self.samples_per_epoch
        if n <= 0:
            return self.labelled
        copies, rest = divmod(n, len(self.labelled))
        extra = torch.randperm(len(self.labelled), generator=self.generator)[:rest]
        return torch.cat([self.labelled.repeat(copies), self.labelled[extra]])

    def epoch_indices(self, epoch: int, model: nn.Module) -> torch.Tensor | None:
        return None if epoch == 0 else self.split(model)  # epoch 0 uses the caller's split


#: lambda_u where ``lambda_u`` is 0: the official CIFAR-10 value, 6 (BackdoorBench's ImageNet
#: config, which it uses for GTSRB) on every other dataset.
LAMBDA_U = {"cifar10": 15.0}


class DBD(Defense):
    name = "dbd"
    reference_name = "dbd"  # BackdoorBench's table lists it
    needs = frozenset({"poisoned_train"})

    @dataclass(frozen=True)
    class Params:
        # Stage 1: SimCLR. The official fine-tuning loads the epoch-100 checkpoint of a
        # 1000-epoch cosine run (spec 6.4); we run ``simclr_epochs`` with a cosine schedule
        # over ``simclr_schedule_epochs`` to reproduce that learning-rate state.
        simclr_epochs: int = 100
        simclr_schedule_epochs: int = 1000
        simclr_batch_size: int = 512
        simclr_lr: float = 0.4
        simclr_weight_decay: float = 1e-4
        temperature: float = 0.5
        projection_dim: int = 128
        # Stage 2: linear head with SCE
        warmup_epochs: int = 10
        warmup_lr: float = 2e-3
        warmup_batch_size: int = 128
        sce_alpha: float = 0.1
        sce_beta: float = 1.0
        # Stage 3: MixMatch
        labelled_fraction: float = 0.5  # epsilon
        semi_epochs: int = 190
        semi_iterations: int = 1024  # per epoch, as the official code; 0: one labelled pass
        semi_lr: float = 2e-3
        semi_batch_size: int = 64
        mixmatch_temperature: float = 0.5
        mixmatch_alpha: float = 0.75
        lambda_u: float = 0.0  # 0: the spec's per-dataset value (15 CIFAR-10, 6 otherwise)

        def __post_init__(self) -> None:
            if min(self.simclr_epochs, self.warmup_epochs, self.semi_epochs) < 1:
                raise ValueError("every DBD stage needs at least one epoch")
            if self.semi_iterations < 0:
                raise ValueError("semi_iterations must be >= 0 (0: one pass per epoch)")
            if self.simclr_schedule_epochs < self.simclr_epochs:
                raise ValueError("simclr_schedule_epochs must be >= simclr_epochs")
            if not 0 < self.labelled_fraction < 1:
                raise ValueError("labelled_fraction must be in (0, 1)")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        p = self.params
        per_epoch = p.labelled_fraction  # labelled draws per MixMatch epoch, as a fraction of N
        if p.semi_iterations:
            per_epoch = p.semi_iterations * p.semi_batch_size / n_train
        # SimCLR: two views per image; warm-up: head only; MixMatch ~3.5 passes per labelled
        # draw plus the split's loss pass every epoch
        return (
            2 * p.simclr_epochs + 0.4 * p.warmup_epochs + p.semi_epochs * (3.5 * per_epoch + 0.35)
        )

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        with ctx.stage("simclr"):
            contrastive = self.pretrain(ctx)
        with ctx.stage("linear"):
            classifier, optimizer_state = self.fit_linear_head(ctx, contrastive)
        with ctx.stage("mixmatch"):
            hooks = self.finetune(ctx, classifier, optimizer_state)
        losses = sce_losses(classifier, ctx.train.images, ctx.train.labels, ctx.device)
        flagged = complement(hooks.labelled, len(ctx.train.labels))
        fits = hooks.fit_accuracies  # of the labels: the probe's, then at each later split
        metrics = {"probe_fit_accuracy": fits[0], "last_split_fit_accuracy": fits[-1]}
        return DefenseOutput(classifier, flagged=flagged, scores=losses, metrics=metrics)

    def pretrain(self, ctx: DefenseContext) -> Contrastive:
        """Stage 1: SimCLR on the training images, labels unused."""
        p = self.params
        contrastive = Contrastive(ctx.make_model(), p.projection_dim)
        simclr = TrainConfig(
            epochs=p.simclr_epochs,
            schedule_epochs=p.simclr_schedule_epochs,
            batch_size=p.simclr_batch_size,
            lr=p.simclr_lr,
            weight_decay=p.simclr_weight_decay,
            schedule="cosine",
        )
        hooks = SimCLRHooks(p.temperature, ctx.allows_flip)
        ctx.fit(contrastive, config=simclr, stream="simclr", augment=False, hooks=hooks)
        return contrastive

    def fit_linear_head(
        self, ctx: DefenseContext, contrastive: Contrastive
    ) -> tuple[nn.Module, dict | None]:
        """Stage 2: a fresh linear head on the frozen backbone, trained with SCE. Returns the
        classifier with every parameter trainable again, and the state of the Adam optimiser
        that stage 3 continues (the official code uses one Adam over the whole model for
        both)."""
        p = self.params
        classifier = contrastive.backbone
        classifier.replace_head(nn.Linear(contrastive.feature_dim, ctx.num_classes))
        head = classifier.head
        for param in classifier.parameters():
            param.requires_grad_(False)
        for param in head.parameters():
            param.requires_grad_(True)
        warmup = TrainConfig(
            epochs=p.warmup_epochs,
            batch_size=p.warmup_batch_size,
            lr=p.warmup_lr,
            weight_decay=0.0,
            optimizer="adam",
            schedule="constant",
        )
        stats = ctx.fit(
            classifier, config=warmup, stream="linear_probe", hooks=LinearProbe(),
            augment=REFLECT_CROP,
        )  # fmt: skip
        for param in classifier.parameters():
            param.requires_grad_(True)
        return classifier, stats.optimizer_state

    def split_hooks(self, ctx: DefenseContext) -> ResplitMixMatch:
        """Stage 3's MixMatch hooks (they also compute the SCE split)."""
        p = self.params
        n_labelled = max(1, round(p.labelled_fraction * len(ctx.train.labels)))
        per_epoch = p.semi_iterations * p.semi_batch_size or n_labelled
        steps = p.semi_epochs * math.ceil(per_epoch / p.semi_batch_size)
        return ResplitMixMatch(
            ctx.train.images.to(ctx.device),
            ctx.train.labels,
            p.labelled_fraction,
            ctx.device,
            samples_per_epoch=p.semi_iterations * p.semi_batch_size,
            generator=ctx.rng("mixmatch_epochs"),
            num_classes=ctx.num_classes,
            flip=ctx.allows_flip,
            temperature=p.mixmatch_temperature,
            alpha=p.mixmatch_alpha,
            lambda_u=p.lambda_u or LAMBDA_U.get(ctx.dataset, 6.0),
            rampup_steps=steps,
            augment=REFLECT_CROP,
        )

    def finetune(
        self, ctx: DefenseContext, classifier: nn.Module, optimizer_state: dict | None = None
    ) -> ResplitMixMatch:
        """Stage 3: MixMatch on the whole model, the split recomputed every epoch."""
        p = self.params
        hooks = self.split_hooks(ctx)
        semi = TrainConfig(
            epochs=p.semi_epochs,
            batch_size=p.semi_batch_size,
            lr=p.semi_lr,
            weight_decay=0.0,
            optimizer="adam",
            schedule="constant",
        )
        first = hooks.split(classifier)
        probe = hooks.fit_accuracies[-1]
        ctx.log(f"dbd: the linear probe on SimCLR features fits {probe:.3f} of labels")
        ctx.fit(
            classifier, config=semi, stream="mixmatch", hooks=hooks, indices=first,
            augment=REFLECT_CROP, optimizer_state=optimizer_state,
        )  # fmt: skip
        return hooks
