"""NAB, Non-Adversarial Backdoor (Liu et al., ICCV 2023, "Beating Backdoor Attack at Its Own
Game"). Spec: defenses.md section 4.

The defender plants a backdoor of its own: samples suspected of being poisoned get a small
stamp and a pseudo label, so the stamp learns to *undo* the attacker's trigger. Every test input
is stamped. Steps (official code, VD variant):
1. detect: train from scratch with the flooding loss, no augmentation; flag the 5% of samples
   with the lowest loss (the shared loss-guided isolation: with ABL's isolation budget, the same
   run as ABL's, built once per cell);
2. pseudo-label: train a model on the clean subset the harness provides (verified data, VD);
   the pseudo label of a flagged sample is its prediction on the *stamped* image;
3. counter-poison: flagged samples whose pseudo label differs from their label are stamped and
   relabelled; the rest stay as they are;
4. train from scratch on the processed set with the preset's recipe (so CA compares with
   ``none``);
5. test: stamp every input. Optional rejection rule: an input is rejected when its prediction
   changes with the stamp (reported as clean / backdoor rejection rates).

The stamp is the top-left 2x2 patch set to 0 in normalised space, i.e. the dataset's mean colour
(spec 4.3), computed here from the training images.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from bench.params import require_choice
from bench.train import TrainConfig, predict
from defenses.base import Defense, DefenseContext, DefenseOutput
from defenses.shared import isolate_by_loss


def make_stamp(images: torch.Tensor, size: int):
    """The defender's trigger: a ``size`` x ``size`` top-left patch of the mean colour."""
    mean = images.float().mean(dim=(0, 2, 3)).round().to(torch.uint8)

    def stamp(x: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        out[:, :, :size, :size] = mean.to(x.device).view(1, -1, 1, 1)
        return out

    return stamp


class NAB(Defense):
    name = "nab"
    needs = frozenset({"poisoned_train", "clean_subset"})

    @dataclass(frozen=True)
    class Params:
        detection_fraction: float = 0.05
        detection_epochs: int = 20
        detection_lr: float = 0.1
        detection_batch_size: int = 64
        # The official detector's lr is 0.5 * (1 + cos(pi * e / 100)) * 0.1 over 20 epochs, so it
        # only falls from 0.1 to 0.09: "constant" is the closer match (and, with ABL's isolation
        # budget, lets NAB reuse ABL's isolation run); "cosine" decays to 0 over the epochs.
        detection_schedule: str = "constant"
        gamma: float = 0.5  # flooding level
        pseudo_label_epochs: int = 100  # VD model on the clean subset
        pseudo_label_lr: float = 0.01
        pseudo_label_batch_size: int = 64
        stamp_size: int = 2
        weight_decay: float = 1e-4

        def __post_init__(self) -> None:
            require_choice("detection_schedule", self.detection_schedule, ("constant", "cosine"))
            if not 0 < self.detection_fraction < 0.5:
                raise ValueError("detection_fraction must be in (0, 0.5)")
            if min(self.detection_epochs, self.pseudo_label_epochs, self.stamp_size) < 1:
                raise ValueError("epochs and stamp_size must be >= 1")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        images, labels = ctx.train.images, ctx.train.labels
        clean = ctx.require_clean_subset()
        stamp = make_stamp(images, p.stamp_size)
        stages: dict[str, float] = {}

        start = time.perf_counter()
        detection = TrainConfig(
            epochs=p.detection_epochs,
            batch_size=p.detection_batch_size,
            lr=p.detection_lr,
            weight_decay=p.weight_decay,
            schedule=p.detection_schedule,
        )
        found = isolate_by_loss(
            ctx, detection, gamma=p.gamma, per_sample=False, fraction=p.detection_fraction
        )
        flagged = found.isolated
        stages["detection"] = time.perf_counter() - start

        start = time.perf_counter()
        vd = TrainConfig(
            epochs=p.pseudo_label_epochs,
            batch_size=p.pseudo_label_batch_size,
            lr=p.pseudo_label_lr,
            weight_decay=p.weight_decay,
            schedule="cosine",
        )
        labeller = ctx.train_model(clean.images, clean.labels, vd)
        pseudo = predict(labeller, stamp(images[flagged]), device=ctx.device)
        differs = pseudo != labels[flagged]
        relabel = flagged[differs]
        stages["pseudo_label"] = time.perf_counter() - start
        ctx.log(
            f"nab: flagged {len(flagged)}, stamped and relabelled {len(relabel)} "
            f"(pseudo label = given label for {len(flagged) - len(relabel)})"
        )

        start = time.perf_counter()
        processed = images.clone()
        processed[relabel] = stamp(images[relabel])
        new_labels = labels.clone()
        new_labels[relabel] = pseudo[differs]
        model = ctx.train_model(processed, new_labels, ctx.train_config)
        stages["train"] = time.perf_counter() - start

        def reject(x: torch.Tensor) -> torch.Tensor:
            plain = predict(model, x, device=ctx.device)
            return plain != predict(model, stamp(x), device=ctx.device)

        return DefenseOutput(
            model=model,
            input_transform=stamp,
            flagged=flagged,
            scores=-found.losses,
            stage_seconds=stages,
            reject=reject,
        )
