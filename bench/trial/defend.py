"""Running a trial's defense on its poisoned cell: the defense's context, its output checked
against the contract, and the time it took: its own work only, without training the undefended
model (booked apart) and without waiting for artifacts other trials hold (``wait_seconds``)."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.api import Defense, DefenseContext, DefenseOutput, Harness, LabelledImages
from bench.core import lockwait, seeding
from bench.core.train import TrainConfig, Trainer
from bench.errors import BenchError
from bench.grid import checks
from bench.trial.backdoored import BackdooredModelLoader
from bench.trial.cell import PoisonedCell
from bench.trial.resolved import ResolvedTrial

#: What ``DefenseOutput.metrics`` may hold: keys and how many.
METRIC_KEY = re.compile(r"[a-z][a-z0-9_]{0,39}")
MAX_METRICS = 32

log = logging.getLogger("bench.trial")


def clean_subset_indices(poison_mask: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """round(fraction * N) training indices drawn from the samples that were *not* poisoned."""
    pool = torch.nonzero(~poison_mask).flatten()
    count = min(len(pool), round(fraction * len(poison_mask)))
    gen = seeding.generator(seed, "clean_subset")  # independent of the poison draw
    return pool[torch.randperm(len(pool), generator=gen)[:count]].sort().values


def clean_subset(trial: ResolvedTrial, cell: PoisonedCell) -> LabelledImages:
    """The clean training images a defense that needs them is assumed to hold."""
    spec = trial.spec
    idx = clean_subset_indices(cell.ground_truth().poison_mask, spec.clean_fraction, spec.seed)
    if len(idx) == 0:
        raise BenchError(
            f"defense {spec.defense!r} needs a clean subset, but clean_fraction "
            f"{spec.clean_fraction} of {len(cell.train.labels)} images selects none; set "
            "[grid] clean_fraction in the preset (default 0.05)"
        )
    return LabelledImages(cell.data.train_x[idx], cell.data.train_y[idx])


@dataclass(frozen=True)
class DefenseRun:
    """A defense's checked output and what it cost."""

    output: DefenseOutput
    flagged: torch.Tensor | None  # validated training indices, if the defense flags samples
    seconds: float  # the defense's own work: no undefended-model training, no lock waits
    wait_seconds: float  # blocked on artifacts another process was building
    loader: BackdooredModelLoader
    stage_log: list[dict]  # shared stages looked up: kind, built/hit, seconds
    n_clean_subset: int

    def stage_seconds(self) -> str:
        return json.dumps(self.output.stage_seconds, sort_keys=True)

    def defense_metrics(self) -> str:
        return json.dumps(self.output.metrics, sort_keys=True)

    def stage_artifacts(self) -> str:
        return json.dumps(self.stage_log)


def run_defense(trial: ResolvedTrial, cell: PoisonedCell) -> DefenseRun:
    """Run the trial's defense on the cell's poisoned training set and check what it returns."""
    spec, defense, device, who = trial.spec, trial.defense, trial.device, trial.who
    data, poisoned = cell.data, cell.train
    trainer = Trainer(device, progress=trial.report)
    loader = BackdooredModelLoader(
        trial,
        poisoned,
        trainer,
        attack_hooks=cell.attack.training_hooks(spec.ratio, spec.target, data.info),
        attack_config=cell.attack.victim_config(trial.train_config),
        trained=cell.attack.trained_victim(),
    )
    clean = clean_subset(trial, cell) if "clean_subset" in defense.needs else None
    ctx = defense_context(
        LabelledImages(poisoned.images, poisoned.labels),
        num_classes=data.info.num_classes,
        make_model=trial.make_model,
        device=device,
        seed=spec.seed,
        train_config=trial.train_config,
        dataset=spec.dataset,
        allows_flip=data.info.allows_flip,
        normalization_mean=tuple(data.info.mean),
        normalization_std=tuple(data.info.std),
        defense=spec.defense,
        report=trial.report,
        trainer=trainer,
        clean_subset=clean,
        backdoored_model=loader if "backdoored_model" in defense.needs else None,
        plain_backdoored_model=loader if loader.attack_hooks is None else None,
        stage_cache=trial.stage_cache,
    )
    output, seconds, waited = timed_run(defense, ctx, loader)
    if not isinstance(output, DefenseOutput):
        raise checks.PluginError(
            f"{who}: run must return a DefenseOutput, got {type(output).__name__}"
        )
    output = dataclasses.replace(
        output,
        stage_seconds={**ctx._harness.stage_seconds, **output.stage_seconds},
        metrics=check_defense_metrics(output.metrics, who),
    )

    probe = data.test_x[:8]
    checks.check_model(output.model, data.info.num_classes, probe, device, who)
    if output.input_transform is not None:
        checks.check_input_transform(output.input_transform, probe, device, who)
    flagged = (
        checks.check_flagged(output.flagged, len(poisoned.labels), who)
        if output.flagged is not None
        else None
    )
    n_clean = 0 if clean is None else len(clean.labels)
    return DefenseRun(output, flagged, seconds, waited, loader, trial.stage_cache.log, n_clean)


def defense_context(
    train: LabelledImages,
    *,
    num_classes: int,
    make_model: Callable[[], nn.Module],
    device: torch.device,
    seed: int = 0,
    train_config: TrainConfig | None = None,
    dataset: str = "",
    allows_flip: bool = True,
    normalization_mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    normalization_std: tuple[float, ...] = (1.0, 1.0, 1.0),
    defense: str = "unnamed",
    report: Callable[[str], None] = log.info,
    trainer: Trainer | None = None,
    clean_subset: LabelledImages | None = None,
    backdoored_model: Callable[[], nn.Module] | None = None,
    plain_backdoored_model: Callable[[], nn.Module] | None = None,
    stage_cache: Any = None,
) -> DefenseContext:
    """A defense's context: the public fields, and the harness behind them (the trainer, the
    resources the defense's needs unlock, the cell's stage cache). Trials and tests build
    contexts here."""
    harness = Harness(
        trainer=trainer or Trainer(device, progress=report),
        make_model=make_model,
        defense=defense,
        report=report,
        clean_subset=clean_subset,
        backdoored_model=backdoored_model,
        plain_backdoored_model=plain_backdoored_model,
        stage_cache=stage_cache,
    )
    return DefenseContext(
        train=train,
        num_classes=num_classes,
        dataset=dataset,
        allows_flip=allows_flip,
        normalization_mean=normalization_mean,
        normalization_std=normalization_std,
        train_config=train_config or TrainConfig(),
        device=device,
        seed=seed,
        _harness=harness,
    )


def check_defense_metrics(metrics: Any, who: str) -> dict[str, float]:
    """``DefenseOutput.metrics``: at most :data:`MAX_METRICS` finite numbers under short
    snake_case keys (they become JSON in the row and the page)."""
    if not isinstance(metrics, dict):
        raise checks.PluginError(f"{who}: metrics must be a dict, got {type(metrics).__name__}")
    if len(metrics) > MAX_METRICS:
        raise checks.PluginError(
            f"{who}: metrics holds {len(metrics)} entries; report at most {MAX_METRICS}"
        )
    out = {}
    for key, value in metrics.items():
        if not isinstance(key, str) or not METRIC_KEY.fullmatch(key):
            raise checks.PluginError(
                f"{who}: metric key {key!r} must be snake_case: a lowercase letter, then up to "
                "39 lowercase letters, digits or '_'"
            )
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise checks.PluginError(
                f"{who}: metric {key!r} must be a number, got {type(value).__name__}"
            )
        if not math.isfinite(value):
            raise checks.PluginError(f"{who}: metric {key!r} is {value}; report finite numbers")
        out[key] = value
    return out


def timed_run(
    defense: Defense, ctx: DefenseContext, loader: BackdooredModelLoader
) -> tuple[DefenseOutput, float, float]:
    """``defense.run(ctx)``, the seconds of the defense's own work and the seconds it waited.

    Its own work is its wall time less the undefended model's training when this trial built
    it, and less the time blocked on an artifact lock another process held (a post-training
    defense that starts while its cell's ``none`` trial still trains the model waits for it)."""
    with lockwait.counting() as waited:
        start = time.perf_counter()
        output = defense.run(ctx)
        wall = time.perf_counter() - start
    return output, max(0.0, wall - loader.built_seconds - waited.seconds), waited.seconds
