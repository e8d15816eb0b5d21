"""The defense protocol: what a defense receives (:class:`DefenseContext`) and returns.

A defense never sees the poison mask. It gets the poisoned training set, optionally a clean
subset, a model factory, the shared trainer and the preset's budget, and returns the model to
evaluate, plus an optional test-time input transform and optional flagged training indices.

Training-time defenses see the static poisoned set (Mode B in the attack spec; for
training-controlled attacks, the backdoor and cross samples the attack exports). The backdoored
model (``ctx.backdoored_model()``) is the attacker's own training run (Mode A): for WaNet, IAD
and BPP that is the per-batch poisoning loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from bench.params import Configurable
from bench.stages import seeded_rng
from bench.train import Augment, InputTransform, TrainConfig, Trainer, TrainHooks

#: Resources a defense can ask the harness for.
NEEDS = frozenset({"poisoned_train", "clean_subset", "backdoored_model"})


class StageCache(Protocol):
    """Builds a defense stage's result once per cell and hands it to every defense that asks for
    the same stage with the same parameters (:class:`bench.stages.CellStageCache`)."""

    def __call__(self, kind: str, params: Mapping[str, Any], build: Callable[[], dict]) -> dict: ...


@dataclass(frozen=True)
class LabelledImages:
    images: torch.Tensor  # uint8 NCHW
    labels: torch.Tensor


@dataclass
class DefenseContext:
    """Everything a defense may use. ``train`` is poisoned; which samples is not revealed."""

    train: LabelledImages
    num_classes: int
    allows_flip: bool
    make_model: Callable[[], nn.Module]
    trainer: Trainer
    train_config: TrainConfig
    device: torch.device
    seed: int
    #: Clean training images the defender is assumed to hold (only if the defense needs them).
    clean_subset: LabelledImages | None = None
    #: Loads the backdoored (undefended) model from the artifact cache, training it once.
    load_backdoored_model: Callable[[], nn.Module] | None = None
    name: str = "defense"
    log: Callable[[str], None] = print
    #: The dataset's registry name (for per-dataset defaults such as DBD's lambda_u).
    dataset: str = ""
    #: Shares stages that several defenses compute identically; None: every stage is built here.
    stage_cache: StageCache | None = None
    #: The cached backdoored model when it *is* plain training on ``train`` with
    #: ``train_config`` (static attacks); None otherwise. Used by :meth:`supervised_model`.
    plain_backdoored_model: Callable[[], nn.Module] | None = None
    #: The per-channel mean (in [0, 1]) the model normalises its input with: the colour that is
    #: 0 in normalised space (0 for datasets that are not normalised, such as GTSRB).
    normalization_mean: tuple[float, ...] = (0.0, 0.0, 0.0)

    def backdoored_model(self) -> nn.Module:
        """The model plain training on the poisoned set produces (trained once, then cached)."""
        if self.load_backdoored_model is None:
            raise RuntimeError(
                f"defense {self.name!r} asked for the backdoored model without declaring "
                "'backdoored_model' in its needs"
            )
        return self.load_backdoored_model()

    def supervised_model(self, config: TrainConfig | None = None) -> nn.Module:
        """A fresh model trained on the poisoned set with ``config`` (default: the preset's).

        When that is exactly the computation that produced the backdoored model (same recipe,
        seed and data, a static attack), the cached backdoored model is returned instead of
        training the same weights again."""
        config = config or self.train_config
        if config == self.train_config and self.plain_backdoored_model is not None:
            return self.plain_backdoored_model()
        return self.train_model(config=config)

    def shared_stage(self, kind: str, params: Mapping[str, Any], build: Callable[[], dict]) -> dict:
        """The result of ``build()``, a stage other defenses may run with the same ``params``
        (e.g. loss-guided isolation, shared by ABL and NAB): built once per cell and cached.

        ``params`` must name everything besides the cell (data, attack, seed) that the result
        depends on. ``build`` runs with the global RNG seeded from the trial's seed and restored
        afterwards, so the result and everything after it are the same whether it was built here
        or loaded."""

        def seeded_build() -> dict:
            with seeded_rng(self.seed + 1):
                return build()

        if self.stage_cache is None:
            return seeded_build()
        return self.stage_cache(kind, params, seeded_build)

    def require_clean_subset(self) -> LabelledImages:
        if self.clean_subset is None:
            raise RuntimeError(
                f"defense {self.name!r} asked for the clean subset without declaring "
                "'clean_subset' in its needs"
            )
        return self.clean_subset

    def train_model(
        self,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        config: TrainConfig | None = None,
        hooks: TrainHooks | None = None,
        augment: bool | Augment = True,
    ) -> nn.Module:
        """A fresh model trained with the shared trainer (defaults: the poisoned set, budget,
        standard augmentation)."""
        model = self.make_model()
        self.trainer.fit(
            model,
            self.train.images if images is None else images,
            self.train.labels if labels is None else labels,
            config or self.train_config,
            seed=self.seed,
            flip=self.allows_flip,
            hooks=hooks,
            augment=augment,
        )
        return model


@dataclass
class DefenseOutput:
    model: nn.Module
    input_transform: InputTransform | None = None
    flagged: torch.Tensor | None = None  # training indices the defense considers poisoned
    #: Optional per-training-sample suspicion (higher = more likely poisoned), for AUROC.
    scores: torch.Tensor | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)
    #: Optional test-time rejection rule: True for inputs the defense refuses to classify. The
    #: harness reports the rejection rates of clean and triggered test inputs.
    reject: Callable[[torch.Tensor], torch.Tensor] | None = None


class Defense(Configurable, ABC):
    """A backdoor defense. Subclasses set ``name``, ``needs``, ``Params`` and implement ``run``."""

    kind: ClassVar[str] = "defense"
    needs: ClassVar[frozenset[str]] = frozenset({"poisoned_train"})
    #: True where no official code exists and the method is reconstructed from the paper.
    reconstructed: ClassVar[bool] = False

    @abstractmethod
    def run(self, ctx: DefenseContext) -> DefenseOutput:
        """Produce the defended model."""

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        """Roughly how much training ``run`` does, in passes over the poisoned training set
        (for ``bench run --dry-run``'s estimate; the undefended model is counted apart). The
        default: one training with the preset's budget."""
        return float(budget.epochs)
