"""The public API for defense authors: everything a defense imports from the harness, in one place.

A defense subclasses :class:`Defense` and implements ``run(ctx)``: it receives a
:class:`DefenseContext` (the trial's poisoned data, its budget and the harness's tools) and returns
a :class:`DefenseOutput`. Training goes through ``ctx.fit`` (the one training loop), changed per
batch by :class:`TrainHooks`. The built-in defenses import nothing else from ``bench`` (a test
keeps it so), and neither need plugins. The reference, with every name below, is
``docs/plugins.md``.

Everything a context offers beyond the names in the reference (the trainer, the artifact and stage
caches) is harness plumbing behind ``ctx._harness``: it may change without notice.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from bench.core.limits import check_time_limit
from bench.core.params import Configurable, added_later, require_choice
from bench.core.seeding import seeded_rng, stream_seed
from bench.core.train import (
    Augment,
    Batch,
    TrainConfig,
    Trainer,
    TrainHooks,
    TrainStats,
    augment_batch,
    autocast,
    predict,
    predict_logits,
    prepare_model,
)
from bench.errors import PluginError

__all__ = [
    "NEEDS",
    "Augment",
    "Batch",
    "Defense",
    "DefenseContext",
    "DefenseOutput",
    "LabelledImages",
    "TrainConfig",
    "TrainHooks",
    "TrainStats",
    "added_later",
    "augment_batch",
    "autocast",
    "predict",
    "predict_logits",
    "require_choice",
]

#: Resources a defense can ask the harness for in ``Defense.needs``: the poisoned training set
#: (always given), the defender's clean subset, and the cell's undefended model.
NEEDS = frozenset({"poisoned_train", "clean_subset", "backdoored_model"})


@dataclass(frozen=True)
class LabelledImages:
    """Images with their labels, both on the CPU.

    Attributes:
        images: uint8 (N, C, H, W) images in [0, 255].
        labels: int64 (N,) class labels.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


# --------------------------------------------------------------------------- harness side


class StageCache(Protocol):
    """Builds a defense stage's result once per cell and hands it to every defense that asks for
    the same stage with the same parameters (:class:`bench.core.stages.CellStageCache`)."""

    def __call__(self, kind: str, params: Mapping[str, Any], build: Callable[[], dict]) -> dict: ...


@dataclass
class Harness:
    """The harness's side of a context (internal; built by
    :func:`bench.trial.defend.defense_context`): the trainer, what the defense's ``needs`` unlock,
    the cell's stage cache, the trial log and the stage times recorded so far."""

    trainer: Trainer
    make_model: Callable[[], nn.Module]
    defense: str = "unnamed"
    report: Callable[[str], None] = print
    clean_subset: LabelledImages | None = None
    backdoored_model: Callable[[], nn.Module] | None = None
    #: The cached backdoored model when it *is* plain training on the poisoned set with the
    #: preset's budget (static attacks); None otherwise (see ``supervised_model``).
    plain_backdoored_model: Callable[[], nn.Module] | None = None
    stage_cache: StageCache | None = None
    stage_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- the context


@dataclass(frozen=True)
class DefenseContext:
    """What a defense receives: the trial's poisoned data, its budget and the harness's tools.

    ``train`` is poisoned; which samples are is never revealed. Randomness comes from named
    streams (:meth:`rng`, ``fit(stream=...)``), so a trial reproduces its numbers and one stage's
    draws do not shift when another stage changes.

    Attributes:
        train: the poisoned training set (uint8 images and labels, on the CPU).
        num_classes: the number of classes; a model outputs (N, num_classes) logits.
        dataset: the dataset's registry name ("cifar10", "gtsrb").
        allows_flip: whether horizontal flips are a valid augmentation (False on GTSRB).
        normalization_mean: the per-channel mean in [0, 1] the model normalises with: the colour
            that is 0 inside the model.
        normalization_std: the per-channel std the model divides by: a step of 1 in the model's
            normalised space is ``std`` in pixel space (for methods whose reference code works on
            normalised tensors).
        train_config: the preset's training budget for this dataset.
        device: where training and inference run (cpu or cuda).
        seed: the trial's seed; derive randomness from it with ``rng(name)`` and
            ``fit(stream=...)``.
    """

    train: LabelledImages
    num_classes: int
    dataset: str
    allows_flip: bool
    normalization_mean: tuple[float, ...]
    train_config: TrainConfig
    device: torch.device
    seed: int
    normalization_std: tuple[float, ...] = (1.0, 1.0, 1.0)
    _harness: Harness = field(repr=False, compare=False, kw_only=True)

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"'DefenseContext' has no attribute {name!r} (docs/plugins.md)")

    # ----------------------------------------------------------------- resources

    def make_model(self) -> nn.Module:
        """A fresh model of the trial's architecture (random init from the global RNG, on the
        CPU, train mode). It takes float images in [0, 1] and follows the model contract:
        ``feature_map(x)``, ``classify(features)``, ``head``, ``replace_head(module)``."""
        return self._harness.make_model()

    @property
    def clean_subset(self) -> LabelledImages:
        """Clean training images the defender holds (needs "clean_subset"): the preset's
        ``clean_fraction`` (5%) of the training set, drawn from samples that were not
        poisoned."""
        if self._harness.clean_subset is None:
            raise PluginError(
                f"defense {self._harness.defense!r} asked for the clean subset without declaring "
                "'clean_subset' in its needs"
            )
        return self._harness.clean_subset

    def backdoored_model(self) -> nn.Module:
        """The cell's undefended model (needs "backdoored_model"): the attacker's own training
        run, trained once per cell and cached; its training is not charged to the defense. Each
        call returns a fresh copy on ``device`` in train mode."""
        if self._harness.backdoored_model is None:
            raise PluginError(
                f"defense {self._harness.defense!r} asked for the backdoored model without "
                "declaring 'backdoored_model' in its needs"
            )
        return self._harness.backdoored_model()

    def clean_split(self, val_fraction: float) -> tuple[LabelledImages, LabelledImages]:
        """The clean subset split at random (the "clean_split" stream) into ``(rest,
        held_out)``, ``round(val_fraction * n)`` images held out (at least one in each part):
        for defenses that tune a threshold on data they did not fit. The same split on every
        call."""
        clean = self.clean_subset
        n = len(clean.labels)
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if n < 2:
            raise PluginError(f"a clean subset of {n} image(s) cannot be split")
        n_held = min(n - 1, max(1, round(val_fraction * n)))
        order = torch.randperm(n, generator=self.rng("clean_split"))
        held, rest = order[:n_held].sort().values, order[n_held:].sort().values
        return (
            LabelledImages(clean.images[rest], clean.labels[rest]),
            LabelledImages(clean.images[held], clean.labels[held]),
        )

    # ----------------------------------------------------------------- training and evaluation

    def fit(
        self,
        model: nn.Module,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        config: TrainConfig | None = None,
        *,
        stream: str = "fit",
        hooks: TrainHooks | None = None,
        indices: torch.Tensor | None = None,
        augment: bool | Augment = True,
        optimizer_state: dict | None = None,
    ) -> TrainStats:
        """Train ``model`` in place with the shared trainer and return its :class:`TrainStats`.

        Defaults: the poisoned training set, the preset's budget (``train_config``), standard
        augmentation (crop with 4 px zero padding, flips where ``allows_flip``). ``stream`` names
        the seed stream of the shuffling and augmentation: give each training its own. ``indices``
        trains on a subset of ``images``; ``augment`` is True, False or an :class:`Augment`;
        ``optimizer_state`` (a previous fit's ``TrainStats.optimizer_state``) continues that
        optimiser's moments. The model ends on ``device`` in train mode."""
        if (images is None) != (labels is None):
            raise ValueError("fit: pass both images and labels, or neither (the poisoned set)")
        return self._harness.trainer.fit(
            model,
            self.train.images if images is None else images,
            self.train.labels if labels is None else labels,
            config or self.train_config,
            seed=stream_seed(self.seed, stream),
            flip=self.allows_flip,
            hooks=hooks,
            indices=indices,
            augment=augment,
            optimizer_state=optimizer_state,
        )

    def evaluate(
        self,
        model: nn.Module,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> float:
        """Accuracy in [0, 1] of ``model`` on uint8 ``images`` (eval mode, no augmentation;
        ``transform`` maps uint8 batches to uint8 batches first). The model's train/eval mode is
        left as it was."""
        was_training = model.training
        predicted = predict(model, images, device=self.device, transform=transform)
        model.train(was_training)
        return predicted.eq(labels.cpu()).float().mean().item() if len(labels) else float("nan")

    def channel_activations(
        self, model: nn.Module, images: torch.Tensor, batch_size: int = 512
    ) -> torch.Tensor:
        """(N, C) float32 on the CPU: each image's mean activation in every channel of
        ``model.feature_map`` (eval mode, no augmentation, no gradients), for pruning and
        neuron-based defenses. The model's train/eval mode is left as it was."""
        was_training = model.training
        model = prepare_model(model, self.device).eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(images), batch_size):
                check_time_limit()
                x = images[start : start + batch_size].to(self.device).float().div_(255)
                with autocast(self.device):
                    features = model.feature_map(x.contiguous(memory_format=torch.channels_last))
                out.append(features.float().mean((2, 3)).cpu())
        model.train(was_training)
        return torch.cat(out) if out else torch.empty(0)

    # ----------------------------------------------------------------- bookkeeping

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block as stage ``name``: its seconds land in the row's
        ``stage_seconds`` (added up where a name repeats) and in ``bench timing``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            stages = self._harness.stage_seconds
            stages[name] = stages.get(name, 0.0) + time.perf_counter() - start

    def rng(self, name: str, device: torch.device | str | None = None) -> torch.Generator:
        """A fresh ``torch.Generator`` (on the CPU unless ``device``) for the seed stream
        ``name``: the same draws for the same trial seed and name, independent ones for other
        names."""
        return torch.Generator(device=device or "cpu").manual_seed(stream_seed(self.seed, name))

    def log(self, message: str) -> None:
        """A line in the trial's log (the run's log file; ``bench check-defense --verbose``)."""
        self._harness.report(message)

    # ----------------------------------------------------------------- advanced: shared work

    def supervised_model(self, config: TrainConfig | None = None) -> nn.Module:
        """A fresh model trained plainly on the poisoned set with ``config`` (default: the
        preset's) and the trial's seed, as the harness trains the undefended model. Where that
        is the very computation that produced the cell's backdoored model (the preset's budget, a
        static attack), the cached model is returned instead of training it again."""
        config = config or self.train_config
        plain = self._harness.plain_backdoored_model
        if config == self.train_config and plain is not None:
            return plain()
        model = self.make_model()
        self._harness.trainer.fit(
            model,
            self.train.images,
            self.train.labels,
            config,
            seed=self.seed,
            flip=self.allows_flip,
        )
        return model

    def shared_stage(self, kind: str, params: Mapping[str, Any], build: Callable[[], dict]) -> dict:
        """The result of ``build()``, a stage other defenses of the cell may run with the same
        ``params`` (e.g. loss-guided isolation, shared by ABL and NAB): built once per cell,
        cached, and loaded by the others.

        ``params`` must name everything besides the cell (data, attack, seed) the result depends
        on, seed streams included. ``build`` runs with the global RNG seeded from the stream
        ``"shared_stage/<kind>"`` and restored afterwards, so the result and everything after it
        are the same whether it was built here or loaded. Its values must be tensors, numbers,
        strings or containers of them."""

        def seeded_build() -> dict:
            with seeded_rng(stream_seed(self.seed, f"shared_stage/{kind}")):
                return build()

        if self._harness.stage_cache is None:
            return seeded_build()
        return self._harness.stage_cache(kind, params, seeded_build)


# --------------------------------------------------------------------------- the output


@dataclass
class DefenseOutput:
    """What a defense returns. Only ``model`` is required; the harness checks everything.

    Attributes:
        model: the defended model: finite (N, num_classes) logits for float images in [0, 1].
        input_transform: a uint8 -> uint8 batch function applied to every test input before the
            model (it must keep shape, dtype and device), e.g. NAB's stamp.
        flagged: training indices (or an (N,) bool mask) the defense considers poisoned; scored
            against the hidden poison mask (det_* columns).
        scores: (N,) per-training-sample suspicion, higher = more likely poisoned (det_auroc).
        reject: a test-time rule, uint8 batch -> (N,) bool, True for inputs the defense refuses
            to classify (clean_reject_rate, bd_reject_rate).
        metrics: the defense's own figures (e.g. samples relabelled): at most 32 finite numbers
            under snake_case keys of up to 40 characters, stored as JSON in the row's
            defense_metrics and shown in the page's cell details.
        stage_seconds: extra stage times in seconds, added to those ``ctx.stage`` records.
    """

    model: nn.Module
    input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    flagged: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    reject: Callable[[torch.Tensor], torch.Tensor] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=dict)


# --------------------------------------------------------------------------- the defense


class Defense(Configurable, ABC):
    """A backdoor defense: set the class attributes below and implement :meth:`run`.

    Attributes:
        name: the registry name; it must equal the entry point's name.
        needs: what the defense asks the harness for, a frozenset drawn from :data:`NEEDS`.
        Params: a frozen dataclass of hyperparameters, each with a default; presets override
            them under ``[defenses.NAME]``.
        params: the trial's validated ``Params`` instance (set by ``__init__``).
        presets: the defense's own parameters per preset name, e.g. ``{"smoke": {"epochs": 1}}``,
            used where a preset has no ``[defenses.NAME]`` section (a section replaces them).
        reconstructed: True where no official code exists and the method is rebuilt from the
            paper (the leaderboard labels it).
        reference_name: the name published reference tables give this method (in the harness's
            vocabulary, after a reference's own renaming: "ibau"), or None where it has no
            published counterpart. ``bench reproduce`` compares a row with a published cell only
            under this name, never by the registry name alone.
        revision: the code revision, part of the trial id from 2 on. Bump it whenever a change
            alters what the defense does (its numbers), so a resumed grid reruns its rows instead
            of answering "done" from older code's; a shared stage whose computation changed also
            puts the revision into its ``shared_stage`` params. Refactors keep it.
    """

    kind: ClassVar[str] = "defense"
    needs: ClassVar[frozenset[str]] = frozenset({"poisoned_train"})
    reconstructed: ClassVar[bool] = False
    revision: ClassVar[int] = 1
    reference_name: ClassVar[str | None] = None
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}

    @abstractmethod
    def run(self, ctx: DefenseContext) -> DefenseOutput:
        """Defend: train or repair a model with ``ctx`` and return it (with optional extras)."""

    def cost_epochs(self, budget: TrainConfig, clean_fraction: float, n_train: int) -> float:
        """Roughly how much training ``run`` does, in passes over the poisoned training set
        (for ``bench run --dry-run``'s estimate; the undefended model is counted apart). The
        default: one training with the preset's budget."""
        return float(budget.epochs)
