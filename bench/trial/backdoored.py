"""The undefended model of a trial's cell, trained once and loaded from the artifact cache."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from bench.core.artifacts import ArtifactCache
from bench.core.seeding import seeded_rng
from bench.core.train import TrainConfig, Trainer, TrainHooks
from bench.trial.poisoning import PoisonedData
from bench.trial.resolved import ResolvedTrial


class BackdooredModelLoader:
    """Loads the undefended model of a trial's cell from the artifact cache (training it once).

    This is the attacker's own training run (Mode A, spec 2.7): plain training on the static
    poisoned set, or, for a training-controlled attack, training on the clean split with the
    attack poisoning every batch through its hooks."""

    def __init__(
        self,
        trial: ResolvedTrial,
        poisoned: PoisonedData,
        trainer: Trainer,
        attack_hooks: TrainHooks | None = None,
        attack_config: TrainConfig | None = None,
        trained: dict[str, Any] | None = None,
    ):
        self.trial, self.data, self.poisoned = trial, trial.data, poisoned
        self.make_model, self.trainer, self.device = trial.make_model, trainer, trial.device
        self.attack_hooks = attack_hooks
        #: The attacker's recipe (the preset's unless the attack changes it).
        self.config = attack_config or trial.train_config
        #: The model the attack's own fitting trained (IAD), used instead of training one.
        self.trained = trained
        #: "built" or "hit" once loaded ("from the attack" for a model the attack trained); ""
        #: while the defense has not asked for the model.
        self.cache_status = ""
        #: Seconds the model's training took (in whichever trial built it).
        self.train_seconds = math.nan

    def artifact_spec(self) -> dict[str, Any]:
        return self.trial.cell_key

    def _build(self) -> dict[str, Any]:
        model = self.make_model()
        if self.attack_hooks is None:
            images, labels = self.poisoned.images, self.poisoned.labels
        else:
            images, labels = self.data.train_x, self.data.train_y
        stats = self.trainer.fit(
            model,
            images,
            labels,
            self.config,
            seed=self.trial.spec.seed,
            flip=self.data.info.allows_flip,
            hooks=self.attack_hooks,
        )
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return {"state_dict": state, "train_seconds": stats.seconds}

    @property
    def built_seconds(self) -> float:
        """Seconds this trial spent training the model (0 unless it built it)."""
        return self.train_seconds if self.cache_status == "built" else 0.0

    def __call__(self) -> nn.Module:
        if self.trained is not None:  # trained with the attack's artifact (attack_seconds)
            self.cache_status, value = "from the attack", self.trained
        else:
            # The model must not depend on which trial of the cell builds it, and building must
            # not move the global RNG (what runs next sees the same state, built or loaded):
            # train under the state every trial's defense starts from, then restore the caller's.
            with seeded_rng(self.trial.seed("after_cell")):
                fetched = ArtifactCache().get_or_build(
                    "backdoored_model", self.artifact_spec(), self._build
                )
            self.cache_status, value = ("hit" if fetched.hit else "built"), fetched.value
        self.train_seconds = float(value["train_seconds"])
        with torch.random.fork_rng(devices=[]):  # the same RNG state whichever branch ran
            model = self.make_model()
        model.load_state_dict(value["state_dict"])
        return model.to(self.device)
