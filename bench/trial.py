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

from attacks.base import AttackContext, poison_test_set, poison_train_set
from bench import metrics, registry, versions
from bench.config import TrialSpec
from bench.data import load_dataset
from bench.models import build_model
from bench.train import Trainer, predict
from defenses.base import DefenseContext, LabelledImages

log = logging.getLogger("bench.trial")


def pick_device(gpus: float) -> torch.device:
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also insist on deterministic kernels (same seed, same numbers)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


def run_trial(
    spec: TrialSpec, *, device: torch.device, report: Callable[[str], None] = log.info
) -> dict[str, Any]:
    """Execute ``spec`` and return its metrics (the caller adds bookkeeping columns)."""
    t0 = time.perf_counter()
    seed_everything(spec.seed, device)
    budget = spec.data_budget()
    data = load_dataset(spec.dataset).subset(
        budget.train_size, budget.test_size, budget.subset_seed
    )
    info = data.info
    report(
        f"data {spec.dataset}: {len(data.train_y)} train / {len(data.test_y)} test ({data.source})"
    )

    attack = registry.create("attack", spec.attack, dict(spec.attack_params))
    defense = registry.create("defense", spec.defense, dict(spec.defense_params))
    t_attack = time.perf_counter()
    attack.fit(
        AttackContext(data.train_x, data.train_y, info.num_classes, spec.target, device, spec.seed)
    )
    poisoned = poison_train_set(
        attack,
        data.train_x,
        data.train_y,
        spec.ratio,
        spec.target,
        seed=spec.seed,
        device=device,
        exclude_target=spec.exclude_target_from_poison,
    )
    bd_test = poison_test_set(attack, data.test_x, data.test_y, spec.target, device)
    attack_seconds = time.perf_counter() - t_attack
    report(f"attack {spec.attack}: {int(poisoned.poison_mask.sum())} poisoned samples")

    def make_model() -> torch.nn.Module:
        return build_model(spec.model, info.num_classes, info.mean, info.std)

    ctx = DefenseContext(
        train=LabelledImages(poisoned.images, poisoned.labels),
        num_classes=info.num_classes,
        allows_flip=info.allows_flip,
        make_model=make_model,
        trainer=Trainer(device, progress=report),
        train_config=spec.train_config(),
        device=device,
        seed=spec.seed,
        log=report,
    )
    t_defense = time.perf_counter()
    output = defense.run(ctx)
    defense_seconds = time.perf_counter() - t_defense

    t_eval = time.perf_counter()
    transform = output.input_transform
    clean_pred = predict(output.model, data.test_x, device=device, transform=transform)
    bd_pred = predict(output.model, bd_test.images, device=device, transform=transform)
    row = {
        "ca": metrics.clean_accuracy(clean_pred, data.test_y),
        "asr": metrics.attack_success_rate(bd_pred, spec.target),
        "ra": metrics.robust_accuracy(bd_pred, bd_test.true_labels),
        "n_train": len(data.train_y),
        "n_test": len(data.test_y),
        "n_poison": int(poisoned.poison_mask.sum()),
        "data_source": data.source,
        "attack_seconds": attack_seconds,
        "defense_seconds": defense_seconds,
        "eval_seconds": time.perf_counter() - t_eval,
        "train_seconds": sum(output.stage_seconds.values()),
        "stage_seconds": json.dumps(output.stage_seconds, sort_keys=True),
    }
    if any(math.isnan(row[k]) for k in ("ca", "asr", "ra")):
        raise RuntimeError(f"evaluation produced NaN metrics: {row}")
    row["wall_seconds"] = time.perf_counter() - t0
    report(f"done: CA {row['ca']:.4f} ASR {row['asr']:.4f} RA {row['ra']:.4f}")
    return row


def run_trial_safely(
    spec: TrialSpec,
    *,
    gpus: float = 0.0,
    threads: int | None = None,
    report: Callable[[str], None] = log.info,
) -> dict[str, Any]:
    """Run a trial and return its complete result row, ``status`` ``ok`` or ``error``."""
    if threads:
        torch.set_num_threads(max(1, int(threads)))
    device = pick_device(gpus)
    started = time.time()
    t0 = time.perf_counter()
    try:
        row = {"status": "ok", "error": "", **run_trial(spec, device=device, report=report)}
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
