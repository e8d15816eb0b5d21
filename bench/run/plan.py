"""What a grid will run before it runs: cells the data cannot supply, and an estimate of the cost.

``bench run`` plans every grid: a clean-label cell whose target class cannot supply the ratio
(GTSRB's class 0 holds 0.54% of the training set) is left out with its reason and recorded as a
``skipped`` row, so the leaderboard shows it as N/A instead of the grid failing. ``--dry-run``
stops after planning and prints the trial list with an estimate of what it will cost.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from attacks.base import CLEAN_LABEL
from bench.core import precision
from bench.core.models import build_model
from bench.core.train import autocast, prepare_model
from bench.data import load_dataset
from bench.errors import BenchError
from bench.grid import registry
from bench.run.devices import local_cpus
from bench.run.driver import run_order
from bench.schema import Col
from bench.spec import Resources, TrialSpec
from bench.trial.poisoning import select_poison_indices


@dataclass(frozen=True)
class Skipped:
    spec: TrialSpec
    reason: str


@dataclass
class GridPlan:
    runnable: list[TrialSpec]
    skipped: list[Skipped] = field(default_factory=list)


def plan_grid(specs: Iterable[TrialSpec], left_out: Mapping[str, str] | None = None) -> GridPlan:
    """Check every cell against the data it will use (loading each dataset once): clean-label
    cells the target class cannot supply are skipped with the reason; any other impossible
    ratio is an error. Trials of an attack or defense in ``left_out`` (the preset's
    ``[grid.left_out]``) are skipped with the reason given there."""
    plan = GridPlan([])
    labels_by_budget = {}
    policies: dict[str, str] = {}
    problems: dict[tuple, str] = {}
    left_out = left_out or {}
    for spec in specs:
        reason = left_out.get(spec.defense) or left_out.get(spec.attack)
        if reason:
            plan.skipped.append(Skipped(spec, f"left out of this preset: {reason}"))
            continue
        budget = spec.data_budget()
        key = (spec.dataset, budget)
        if key not in labels_by_budget:
            data = load_dataset(spec.dataset, budget.source, reuse=True).subset(
                budget.train_size, budget.test_size, budget.subset_seed
            )
            labels_by_budget[key] = data.train_y
        if spec.attack not in policies:
            cls = registry.get_entry("attack", spec.attack).load()
            policies[spec.attack] = cls.label_policy if getattr(cls, "poisons", True) else ""
        policy = policies[spec.attack]
        if not policy:  # poisons nothing (the clean model): no draw to check
            plan.runnable.append(spec)
            continue
        # Whether the draw is possible depends on the counts only, not on the seed: once a cell.
        check = (key, spec.ratio, spec.target, policy, spec.exclude_target_from_poison)
        if check not in problems:
            problems[check] = _draw_problem(labels_by_budget[key], spec, policy)
        if problem := problems[check]:
            where = f"{spec.dataset} / {spec.attack} ({policy}) / ratio {spec.ratio}"
            if policy != CLEAN_LABEL:
                raise BenchError(f"{where}: {problem}")
            plan.skipped.append(Skipped(spec, f"clean-label, target class too small: {problem}"))
            continue
        plan.runnable.append(spec)
    return plan


def _draw_problem(labels: torch.Tensor, spec: TrialSpec, policy: str) -> str:
    """Why the trial's poison indices cannot be drawn ("" if they can)."""
    try:
        select_poison_indices(
            labels,
            spec.ratio,
            spec.target,
            label_policy=policy,
            seed=spec.seed,
            exclude_target=spec.exclude_target_from_poison,
        )
    except BenchError as exc:
        return str(exc)
    return ""


# --------------------------------------------------------------------------- cost estimate


def training_images_per_second(model: str, num_classes: int, device: torch.device) -> float:
    """Images per second of training steps of ``model`` here (a short probe, batch 32)."""
    net = prepare_model(build_model(model, num_classes), device).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(32, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (32,), device=device)

    def step() -> None:
        with autocast(device):
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, kernel selection
    start, steps = time.perf_counter(), 0
    while steps < 1 or time.perf_counter() - start < 0.5:
        step()
        steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return 32 * steps / (time.perf_counter() - start)


@dataclass(frozen=True)
class TrialEstimate:
    spec: TrialSpec
    epochs: float  # passes over the training set, the cell's backdoored model included
    minutes: float


def estimate(
    specs: list[TrialSpec], resources: Resources, device: torch.device
) -> list[TrialEstimate]:
    """Each trial's training work in passes over its training set (the undefended model counted
    once per cell, in the first trial that needs it) and in minutes at this machine's measured
    speed, with the threads a trial gets."""
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, min(int(resources.cpus_per_trial), local_cpus())))
    speeds: dict[tuple[str, int, str], float] = {}
    sizes: dict[tuple[str, int], tuple[int, int]] = {}  # (dataset, train_size) -> (n, classes)
    cells_with_model: set[str] = set()
    costs: dict[tuple, tuple[float, bool]] = {}  # -> (epochs, needs the cell's model)
    out = []
    try:
        for spec in run_order(specs):  # the order the runner uses: `none` trains the model
            size_key = (spec.dataset, spec.data_budget().train_size)
            if size_key not in sizes:
                data = load_dataset(spec.dataset, spec.data_budget().source, reuse=True)
                n = min(size_key[1] or len(data.train_y), len(data.train_y))
                sizes[size_key] = (n, data.info.num_classes)
            n_train, num_classes = sizes[size_key]
            used = precision.resolve(spec.precision, device)
            speed_key = (spec.model, num_classes, used)
            if speed_key not in speeds:
                with precision.use_precision(used):
                    speeds[speed_key] = training_images_per_second(spec.model, num_classes, device)
            budget = spec.train_config()
            cost_key = (spec.defense, _params_key(spec.defense_params), budget, spec.clean_fraction,
                        n_train)  # fmt: skip
            if cost_key not in costs:  # once per defense setting, not per seed
                defense = registry.create("defense", spec.defense, dict(spec.defense_params))
                cost = defense.cost_epochs(budget, spec.clean_fraction, n_train)
                costs[cost_key] = (cost, "backdoored_model" in defense.needs)
            epochs, needs_model = costs[cost_key]
            cell = _cell_key(spec)
            if needs_model and cell not in cells_with_model:
                cells_with_model.add(cell)  # the first trial that needs it trains it
                epochs += budget.epochs
            out.append(TrialEstimate(spec, epochs, epochs * n_train / speeds[speed_key] / 60))
    finally:
        torch.set_num_threads(threads)
    return out


def _params_key(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _cell_key(spec: TrialSpec) -> str:
    """What a cell's poisoned data and undefended model depend on: the spec minus the defense."""
    fields = spec.to_dict()
    for name in (Col.defense, Col.defense_params, Col.clean_fraction):
        fields.pop(name, None)
    return json.dumps(fields, sort_keys=True)


def format_plan(
    plan: GridPlan, estimates: list[TrialEstimate], resources: Resources, done: set[str]
) -> str:
    """The trial list with estimates, the skipped cells with reasons, and the totals."""
    lines = [f"{'trial':<17}{Col.dataset:<9}{Col.attack:<10}{Col.ratio:>6}{Col.defense:>10}"
             f"{Col.seed:>5}{'passes':>9}{'time':>9}  status"]  # fmt: skip
    todo = [e for e in estimates if e.spec.trial_id not in done]
    for e in estimates:
        s = e.spec
        status = "done (ok row exists)" if s.trial_id in done else "to run"
        lines.append(
            f"{s.trial_id:<17}{s.dataset:<9}{s.attack:<10}{s.ratio:>6g}{s.defense:>10}"
            f"{s.seed:>5}{e.epochs:>9.1f}{_duration(e.minutes):>9}  {status}"
        )
    for sk in plan.skipped:
        s = sk.spec
        lines.append(
            f"{s.trial_id:<17}{s.dataset:<9}{s.attack:<10}{s.ratio:>6g}{s.defense:>10}"
            f"{s.seed:>5}{'':>9}{'':>9}  skipped: {sk.reason}"
        )
    minutes = sum(e.minutes for e in todo)
    slots = max(1, math.floor(max(1, torch.get_num_threads()) / resources.cpus_per_trial))
    if resources.gpus_per_trial > 0:
        slots = max(1, round(1 / resources.gpus_per_trial))
    lines.append(
        f"{len(todo)} trials to run, {len(estimates) - len(todo)} done, {len(plan.skipped)} "
        f"skipped. Estimated compute {_duration(minutes)} (attack artifacts not counted); about "
        f"{_duration(minutes / slots)} of wall time with {slots} trial(s) at once. Rough: from a "
        "short speed probe of each model here, not a measurement."
    )
    return "\n".join(lines)


def _duration(minutes: float) -> str:
    if minutes < 90:
        return f"{minutes:.1f} min"
    if minutes < 48 * 60:
        return f"{minutes / 60:.1f} h"
    return f"{minutes / 1440:.1f} d"
