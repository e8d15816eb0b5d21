"""DLP, Decoupled Learning Process (Ying & Wu, Cybersecurity 2023) -- **reconstructed**.

No official code exists and the paper's full text was not available when this was written, so
this follows the harness reconstruction in spec defenses.md section 3.2, built from the same
pieces as ABL and DBD. Every reconstructed choice is a named parameter below so it can be
corrected once the paper's details are checked. The leaderboard labels it "reconstructed".

Stages, as the paper's abstract describes them:
1. Supervised learning (SL): plain training on the whole (tampered) set for ``sl_epochs``; the
   model over-learns the backdoor and partly learns the main task.
2. Active unlearning (AU): entropy-based filtering flags the ``filter_fraction`` of samples with
   the lowest predictive entropy (over-confident fits, the suspected poison), then gradient
   ascent on them (``au_mode="ascent"``, BatchNorm frozen) or a joint descend/ascend loss
   (``au_mode="joint"``, weight ``au_weight``).
3. Active semi-supervised fine-tuning (ASSF): MixMatch on the whole model; labelled = the
   ``labelled_fraction`` of samples with the lowest loss under the AU model, unlabelled = the
   rest (the flagged samples lose their labels).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from bench.api import Defense, DefenseContext, DefenseOutput, TrainConfig, require_choice
from defenses.shared import (
    GradientAscent,
    JointUnlearning,
    MixMatch,
    complement,
    lowest_fraction,
    per_sample_losses,
    prediction_entropy,
)


class DLP(Defense):
    name = "dlp"
    needs = frozenset({"poisoned_train"})
    reconstructed = True

    @dataclass(frozen=True)
    class Params:
        # SL (reconstruction: mirrors ABL's T_te; SGD lr 0.1, wd 5e-4, standard augmentation)
        sl_epochs: int = 20
        sl_lr: float = 0.1
        # AU (reconstruction: lowest-entropy 5% flagged; ascent lr 5e-4 for 5 epochs)
        filter_fraction: float = 0.05
        au_mode: str = "ascent"  # "ascent" on flagged only | "joint" descend rest, ascend flagged
        au_weight: float = 1.0
        au_epochs: int = 5
        au_lr: float = 5e-4
        au_objective: str = "ce"  # "ce" ascent | "unlikelihood" (see defenses.shared)
        au_stop_accuracy: float = 0.0  # stop once <= this fraction of flagged keeps its label
        # ASSF (reconstruction: DBD's MixMatch settings)
        labelled_fraction: float = 0.5
        assf_epochs: int = 50
        assf_lr: float = 0.002
        assf_batch_size: int = 64
        lambda_u: float = 15.0
        temperature: float = 0.5
        mixup_alpha: float = 0.75
        rampup_fraction: float = 0.4  # of ASSF steps over which lambda_u ramps up linearly
        batch_size: int = 128
        weight_decay: float = 5e-4

        def __post_init__(self) -> None:
            require_choice("au_objective", self.au_objective, ("ce", "unlikelihood"))
            require_choice("au_mode", self.au_mode, ("ascent", "joint"))
            for name in ("filter_fraction", "labelled_fraction"):
                if not 0 < getattr(self, name) < 1:
                    raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
            if min(self.sl_epochs, self.au_epochs, self.assf_epochs) < 1:
                raise ValueError("every stage needs at least one epoch")
            if min(self.sl_lr, self.au_lr, self.assf_lr, self.temperature) <= 0:
                raise ValueError("learning rates and temperature must be positive")

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        # MixMatch: per labelled sample ~3.5 passes (its own, two unlabelled views, two guesses)
        p = self.params
        return p.sl_epochs + 0.7 + p.assf_epochs * p.labelled_fraction * 3.5

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        p = self.params
        images, labels = ctx.train.images, ctx.train.labels
        n = len(labels)

        with ctx.stage("supervised"):
            # SL is standard supervised training: the preset's recipe with DLP's epochs and lr.
            # When that equals the preset's recipe, it is the backdoored model, trained once.
            sl = dataclasses.replace(
                ctx.train_config, epochs=p.sl_epochs, lr=p.sl_lr, weight_decay=p.weight_decay
            )
            model = ctx.supervised_model(sl)

        with ctx.stage("unlearning"):
            entropy = prediction_entropy(model, images, ctx.device)
            flagged = lowest_fraction(entropy, p.filter_fraction)
            ctx.log(
                f"dlp: flagged {len(flagged)} lowest-entropy samples "
                f"(entropy <= {entropy[flagged].max():.4g})"
            )
            au = TrainConfig(
                epochs=p.au_epochs,
                batch_size=p.batch_size,
                lr=p.au_lr,
                weight_decay=0.0,
                schedule="constant",
            )
            if p.au_mode == "ascent":  # on the flagged samples only, as seen (no augmentation)
                hooks = GradientAscent(  # BN frozen, as the reconstruction specifies
                    p.au_objective,
                    p.au_stop_accuracy,
                    images[flagged],
                    labels[flagged],
                    ctx.device,
                    freeze_bn=True,
                )
                only_flagged = {"augment": False, "indices": flagged}
            else:  # descend on everything else while ascending on the flagged samples
                hooks, only_flagged = JointUnlearning(flagged, n, p.au_weight), {}
            ctx.fit(model, config=au, stream="unlearning", hooks=hooks, **only_flagged)

        with ctx.stage("semi_supervised"):
            losses = per_sample_losses(model, images, labels, ctx.device)
            losses[flagged] = float("inf")  # flagged samples are never trusted with their labels
            labelled = lowest_fraction(losses, p.labelled_fraction)
            unlabelled = complement(labelled, n)
            steps = p.assf_epochs * math.ceil(len(labelled) / p.assf_batch_size)
            mixmatch = MixMatch(
                images.to(ctx.device),
                unlabelled,
                ctx.num_classes,
                flip=ctx.allows_flip,
                temperature=p.temperature,
                alpha=p.mixup_alpha,
                lambda_u=p.lambda_u,
                rampup_steps=round(p.rampup_fraction * steps),
            )
            assf = TrainConfig(
                epochs=p.assf_epochs,
                batch_size=p.assf_batch_size,
                lr=p.assf_lr,
                weight_decay=0.0,
                optimizer="adam",
                schedule="constant",
            )
            ctx.fit(model, config=assf, stream="semi_supervised", indices=labelled, hooks=mixmatch)
        return DefenseOutput(model=model, flagged=flagged, scores=-entropy)
