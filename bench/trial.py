"""One trial: poison the data, run the defense, evaluate CA / ASR / RA, and build the result row.

This is what a Ray worker executes. :func:`run_trial_safely` never raises: a failing trial becomes
a row with status ``error`` and its traceback, so one bad trial never sinks the grid.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from attacks.base import AttackContext
from bench import checks, metrics, registry, versions
from bench.artifacts import ArtifactCache
from bench.config import TrialSpec
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.limits import TrialTimeout, time_limit
from bench.models import build_model
from bench.poisoning import PoisonedTrainSet, cell_spec, poisoned_sets
from bench.stages import CellStageCache, seeded_rng
from bench.train import TrainConfig, Trainer, TrainHooks, predict
from defenses.base import DefenseContext, LabelledImages

log = logging.getLogger("bench.trial")


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also insist on deterministic kernels (same seed, same numbers)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def clean_subset_indices(poison_mask: torch.Tensor, fraction: float, seed: int) -> torch.Tensor:
    """round(fraction * N) training indices drawn from the samples that were *not* poisoned."""
    pool = torch.nonzero(~poison_mask).flatten()
    count = min(len(pool), round(fraction * len(poison_mask)))
    gen = torch.Generator().manual_seed(seed + 7919)  # independent of the poison draw
    return pool[torch.randperm(len(pool), generator=gen)[:count]].sort().values


def model_factory(spec: TrialSpec, data: Dataset) -> Callable[[], nn.Module]:
    info = data.info

    def make_model() -> nn.Module:
        return build_model(spec.model, info.num_classes, info.mean, info.std)

    return make_model


def attack_context(
    spec: TrialSpec,
    data: Dataset,
    device: torch.device,
    report: Callable[[str], None] = log.info,
    build_artifacts: bool = True,
) -> AttackContext:
    """What the trial's attack may use to prepare itself (shared with the attack gallery, so
    both find the same cached artifacts)."""
    return AttackContext(
        images=data.train_x,
        labels=data.train_y,
        num_classes=data.info.num_classes,
        target=spec.target,
        device=device,
        seed=spec.seed,
        ratio=spec.ratio,
        make_model=model_factory(spec, data),
        model_name=spec.model,
        train_config=spec.train_config(),
        allows_flip=data.info.allows_flip,
        build_artifacts=build_artifacts,
        log=report,
    )


class BackdooredModelLoader:
    """Loads the undefended model of a trial's cell from the artifact cache (training it once).

    This is the attacker's own training run (Mode A, spec 2.7): plain training on the static
    poisoned set, or, for a training-controlled attack, training on the clean split with the
    attack poisoning every batch through its hooks."""

    def __init__(
        self,
        spec: TrialSpec,
        data: Dataset,
        poisoned: PoisonedTrainSet,
        make_model: Callable[[], nn.Module],
        trainer: Trainer,
        device: torch.device,
        attack_hooks: TrainHooks | None = None,
    ):
        self.spec, self.data, self.poisoned = spec, data, poisoned
        self.make_model, self.trainer, self.device = make_model, trainer, device
        self.attack_hooks = attack_hooks
        self.cache_status = ""
        self.train_seconds = math.nan

    def artifact_spec(self) -> dict[str, Any]:
        return cell_spec(self.spec, self.data)

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
            TrainConfig(**self.spec.train),
            seed=self.spec.seed,
            flip=self.data.info.allows_flip,
            hooks=self.attack_hooks,
        )
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        return {"state_dict": state, "train_seconds": stats.seconds}

    def __call__(self) -> nn.Module:
        # The model must not depend on which trial of the cell builds it, and building must not
        # move the global RNG (what runs next sees the same state, built or loaded): train under
        # the state every trial's defense starts from, then restore the caller's.
        with seeded_rng(self.spec.seed + 1):
            fetched = ArtifactCache().get_or_build(
                "backdoored_model", self.artifact_spec(), self._build
            )
        self.cache_status = "hit" if fetched.hit else "built"
        self.train_seconds = float(fetched.value["train_seconds"])
        model = self.make_model()
        model.load_state_dict(fetched.value["state_dict"])
        return model.to(self.device)


def run_trial(
    spec: TrialSpec, *, device: torch.device, report: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Execute ``spec`` and return its metrics (the caller adds bookkeeping columns)."""
    t0 = time.perf_counter()
    seed_everything(spec.seed, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    budget = spec.data_budget()
    data = load_dataset(spec.dataset).subset(
        budget.train_size, budget.test_size, budget.subset_seed
    )
    info = data.info
    report(
        f"data {spec.dataset}: {len(data.train_y)} train / {len(data.test_y)} test ({data.source})"
    )

    attack_entry = registry.get_entry("attack", spec.attack)
    defense_entry = registry.get_entry("defense", spec.defense)
    attack = attack_entry.load()(**spec.attack_params)
    defense = defense_entry.load()(**spec.defense_params)
    who = f"defense {spec.defense!r} ({defense_entry.package})"

    t_attack = time.perf_counter()
    attack_ctx = attack_context(spec, data, device, report)
    attack.fit(attack_ctx)
    sets = poisoned_sets(spec, data, attack, device, attack_entry.version)
    poisoned, bd_test = sets.train, sets.test
    seed_everything(spec.seed + 1, device)  # the same RNG state whether the sets were cached
    attack_seconds = time.perf_counter() - t_attack
    n_cross = 0 if poisoned.cross_mask is None else int(poisoned.cross_mask.sum())
    report(
        f"attack {spec.attack}: {int(poisoned.poison_mask.sum())} poisoned samples, "
        f"{n_cross} cross samples ({attack_seconds:.1f}s)"
    )

    make_model = model_factory(spec, data)
    trainer = Trainer(device, progress=report)
    loader = BackdooredModelLoader(
        spec,
        data,
        poisoned,
        make_model,
        trainer,
        device,
        attack_hooks=attack.training_hooks(spec.ratio, spec.target),
    )
    stage_cache = CellStageCache(cell_spec(spec, data))
    clean = None
    if "clean_subset" in defense.needs:
        idx = clean_subset_indices(poisoned.poison_mask, spec.clean_fraction, spec.seed)
        if len(idx) == 0:
            raise BenchError(
                f"defense {spec.defense!r} needs a clean subset, but clean_fraction "
                f"{spec.clean_fraction} of {len(poisoned.labels)} images selects none; set "
                "[grid] clean_fraction in the preset (default 0.05)"
            )
        clean = LabelledImages(data.train_x[idx], data.train_y[idx])
    ctx = DefenseContext(
        train=LabelledImages(poisoned.images, poisoned.labels),
        num_classes=info.num_classes,
        allows_flip=info.allows_flip,
        make_model=make_model,
        trainer=trainer,
        train_config=spec.train_config(),
        device=device,
        seed=spec.seed,
        clean_subset=clean,
        load_backdoored_model=loader if "backdoored_model" in defense.needs else None,
        name=spec.defense,
        log=report,
        dataset=spec.dataset,
        stage_cache=stage_cache,
        plain_backdoored_model=loader if loader.attack_hooks is None else None,
    )
    t_defense = time.perf_counter()
    output = defense.run(ctx)
    defense_wall = time.perf_counter() - t_defense
    built_here = loader.train_seconds if loader.cache_status == "built" else 0.0
    defense_seconds = max(0.0, defense_wall - built_here)

    probe = data.test_x[:8]
    checks.check_model(output.model, info.num_classes, probe, device, who)
    if output.input_transform is not None:
        checks.check_input_transform(output.input_transform, probe, device, who)
    flagged = (
        checks.check_flagged(output.flagged, len(poisoned.labels), who)
        if output.flagged is not None
        else None
    )
    detection = detection_columns(flagged, output.scores, poisoned.poison_mask, who)

    t_eval = time.perf_counter()
    transform = output.input_transform
    clean_pred = predict(output.model, data.test_x, device=device, transform=transform)
    bd_pred = predict(output.model, bd_test.images, device=device, transform=transform)
    scores = {
        "ca": metrics.clean_accuracy(clean_pred, data.test_y),
        "asr": metrics.attack_success_rate(bd_pred, spec.target),
        "ra": metrics.robust_accuracy(bd_pred, bd_test.true_labels),
    }
    checks.check_metrics(scores, who)
    rejection = {"clean_reject_rate": math.nan, "bd_reject_rate": math.nan}
    if output.reject is not None:
        rejection = {
            "clean_reject_rate": checks.check_rejections(output.reject, data.test_x, who),
            "bd_reject_rate": checks.check_rejections(output.reject, bd_test.images, who),
        }
    cross_acc = math.nan
    if bd_test.cross_images is not None and bd_test.cross_labels is not None:
        cross_pred = predict(output.model, bd_test.cross_images, device=device, transform=transform)
        cross_acc = metrics.clean_accuracy(cross_pred, bd_test.cross_labels)
    backdoored_seconds = loader.train_seconds
    row = {
        **scores,
        "n_train": len(data.train_y),
        "n_test": len(data.test_y),
        "cross_acc": cross_acc,
        **rejection,
        "n_poison": int(poisoned.poison_mask.sum()),
        "n_cross": n_cross,
        "attack_mode": "training-controlled" if attack.controls_training else "static",
        "attack_artifacts": json.dumps(
            [{"kind": k, "cache": c, "seconds": round(t, 2)} for k, c, t in attack_ctx.artifact_log]
        ),
        "defense_artifacts": json.dumps(stage_cache.log),
        "n_clean_subset": 0 if clean is None else len(clean.labels),
        **detection,
        "peak_memory_mb": peak_memory_mb(device),
        "data_source": data.source,
        "attack_package": attack_entry.package,
        "attack_version": attack_entry.version,
        "defense_package": defense_entry.package,
        "defense_version": defense_entry.version,
        "defense_reconstructed": bool(defense.reconstructed),
        "backdoored_model_cache": loader.cache_status,
        "poisoned_sets_cache": sets.cache,
        "backdoored_train_seconds": backdoored_seconds,
        "attack_seconds": attack_seconds,
        "defense_seconds": defense_seconds,
        "train_seconds": defense_seconds
        + (0.0 if math.isnan(backdoored_seconds) else backdoored_seconds),
        "eval_seconds": time.perf_counter() - t_eval,
        "stage_seconds": json.dumps(output.stage_seconds, sort_keys=True),
        "wall_seconds": time.perf_counter() - t0,
    }
    report(f"done: CA {scores['ca']:.4f} ASR {scores['asr']:.4f} RA {scores['ra']:.4f}")
    return row


def run_trial_safely(
    spec: TrialSpec,
    *,
    gpus: float = 0.0,
    threads: int | None = None,
    report: Callable[[str], None] = log.info,
    time_limit_s: float = 0.0,
) -> dict[str, Any]:
    """Run a trial and return its complete result row, ``status`` ``ok``, ``error`` or
    ``timeout`` (past ``time_limit_s`` seconds; 0 means no limit)."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    device = pick_device(gpus)
    started = time.time()
    t0 = time.perf_counter()
    try:
        with time_limit(time_limit_s):
            row = {"status": "ok", "error": "", **run_trial(spec, device=device, report=report)}
    except TrialTimeout as exc:
        report(f"trial stopped: {exc}")
        row = {
            "status": "timeout",
            "error": f"{exc}\n{traceback.format_exc()}",
            "wall_seconds": time.perf_counter() - t0,
        }
    except Exception as exc:  # one failing trial must never sink the grid
        report(f"trial failed: {type(exc).__name__}: {exc}")
        row = {
            "status": "error",
            "error": traceback.format_exc(),
            "wall_seconds": time.perf_counter() - t0,
        }
    return {
        "trial_id": spec.trial_id,
        **flatten_spec(spec),
        **row,
        "device": device_name(device),
        "node": socket.gethostname(),
        "pid": os.getpid(),
        "started_at": started,
        "finished_at": time.time(),
        "versions": versions.package_versions(),
        "git_rev": versions.git_revision(),
        "python": platform.python_version(),
    }


def detection_columns(
    flagged: torch.Tensor | None, scores: torch.Tensor | None, mask: torch.Tensor, who: str
) -> dict[str, float]:
    """Detection metrics of flagged samples (and AUROC of scores) against the hidden mask."""
    nan = math.nan
    cols = {f"det_{k}": nan for k in ("tp", "fp", "fn", "tn", "tpr", "fpr", "precision", "f1")}
    cols["det_auroc"] = nan
    cols["n_flagged"] = -1
    if flagged is not None:
        counts = metrics.detection_counts(flagged, mask)
        cols.update({f"det_{k}": float(v) for k, v in counts.items()})
        cols.update({f"det_{k}": v for k, v in metrics.detection_rates(**counts).items()})
        cols["n_flagged"] = len(flagged)
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu().flatten()
        if scores.shape != mask.shape or not torch.isfinite(scores.double()).all():
            raise checks.PluginError(
                f"{who}: scores must hold one finite value per training sample "
                f"({len(mask)}), got shape {tuple(scores.shape)}"
            )
        cols["det_auroc"] = metrics.auroc(scores, mask)
    return cols


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory of this trial, or the worker process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def flatten_spec(spec: TrialSpec) -> dict[str, Any]:
    """Spec fields as table columns; nested parameters as canonical JSON strings."""
    flat = {
        k: json.dumps(v, sort_keys=True) if isinstance(v, dict) else v
        for k, v in spec.to_dict().items()
    }
    return {**flat, "spec": spec.canonical()}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
