"""Tools for plugin authors: ``bench check-defense`` and ``bench new-defense``."""

from __future__ import annotations

import dataclasses
import json
import re
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from bench.errors import BenchError
from bench.grid import registry
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.run.isolation import TAIL_HEADER, TAIL_PREFIX
from bench.schema import OK, Col


class SmokeTrialFailed(Exception):
    """The smoke trial ended in an error or timeout row; ``details`` is the row's error."""

    def __init__(self, error: str):
        lines = error.strip().splitlines() or ["no message"]
        super().__init__(lines[-1])
        # The log lines a dead trial's error starts with are shown with the trial's log.
        while lines and (lines[0] == TAIL_HEADER or lines[0].startswith(TAIL_PREFIX)):
            lines.pop(0)
        self.details = "\n".join(lines)


def check_defense(
    name: str,
    params: dict[str, Any] | None = None,
    out: Callable[[str], None] = print,
    verbose: bool = False,
    *,
    isolated: bool = True,
    time_limit_s: float = 0.0,
) -> bool:
    """Run a defense through every check and a smoke trial on real data; True if all pass.

    ``verbose`` prints the smoke trial's log (``ctx.log`` lines, epochs) as it runs; otherwise
    only a failing trial's last log lines are shown. ``isolated`` runs the smoke trial in a
    child process (:mod:`bench.run.isolation`), so a defense that crashes the interpreter, exits or
    is killed gets a FAIL line too, and ``time_limit_s`` (0: none) bounds it; a child only sees
    defenses registered through installed entry points, so ``isolated=False`` runs one that is
    registered in this process only (tests) here."""
    ok = True

    def step(label: str, fn: Callable[[], Any]) -> Any:
        nonlocal ok
        try:
            value = fn()
        except Exception as exc:
            ok = False
            out(f"  FAIL  {label}: {exc}")
            details = getattr(exc, "details", None)
            if details is None and not isinstance(exc, BenchError):
                details = traceback.format_exc().strip()
            if details and details != str(exc):
                out("        " + details.replace("\n", "\n        "))
            return None
        out(f"  ok    {label}")
        return value

    out(f"checking defense {name!r}")
    entry = step(
        "registered in the 'bench.defenses' entry-point group",
        lambda: registry.get_entry("defense", name),
    )
    if entry is None:
        return False
    out(f"        package {entry.package} {entry.version}, target {entry.target}")
    cls = step("imports, subclasses bench.api.Defense, has name/needs/Params/run", entry.load)
    if cls is None:
        return False
    out(
        f"        needs: {', '.join(sorted(cls.needs))}; defaults: "
        f"{dataclasses.asdict(cls.Params())}"
    )
    if step("parameters validate", lambda: cls(**(params or {}))) is None:
        return False
    if step("per-preset budgets (presets) validate", lambda: check_presets(cls)) is None:
        return False
    preset = with_overrides(
        load_preset("smoke"), datasets=["cifar10"], attacks=["badnets"], defenses=[name]
    )
    if params:
        preset = dataclasses.replace(preset, defense_params={**preset.defense_params, name: params})
    spec = expand_grid(preset)[0]
    out(f"        smoke-trial parameters: {json.dumps(dict(spec.defense_params), sort_keys=True)}")
    lines: list[str] = []

    def report(line: str) -> None:
        lines.append(line)
        if verbose:
            out(f"        | {line}")

    def smoke_trial() -> dict[str, Any]:
        if not isolated:
            from bench.trial.pipeline import run_trial

            return run_trial(spec, device=torch.device("cpu"), report=report)
        from bench.run.isolation import run_isolated

        row = run_isolated(spec, report=report, log_failures=False, time_limit_s=time_limit_s)
        if row[Col.status] != OK:
            raise SmokeTrialFailed(row[Col.error])
        return row

    row = step(
        "smoke trial on 1,000 real CIFAR-10 images (BadNets 10%): model outputs, "
        "input transform, flagged indices, metrics",
        smoke_trial,
    )
    if row is None and not verbose and lines:
        out("        the trial log's last lines (all of it: --verbose):")
        out("\n".join(f"        | {line}" for line in lines[-12:]))
    if row is not None:
        ca, asr, ra, flagged = (row[c] for c in (Col.ca, Col.asr, Col.ra, Col.n_flagged))
        out(
            f"        CA {ca:.3f}  ASR {asr:.3f}  RA {ra:.3f}  "
            f"flagged {flagged if flagged >= 0 else '-'}  "
            f"defense {row[Col.defense_seconds]:.1f}s  (smoke numbers mean nothing)"
        )
        out(f"        stages {row[Col.stage_seconds]}  metrics {row[Col.defense_metrics]}")
    out("all checks passed" if ok else "fix the FAIL lines above, then run this again")
    return ok


def check_presets(cls: type) -> Mapping[str, Any]:
    """``presets`` maps preset names to parameter dicts that validate like a preset's section;
    returns it."""
    presets = getattr(cls, "presets", {})
    if not isinstance(presets, Mapping):
        raise BenchError(f"presets must map preset names to parameters, got {presets!r}")
    for preset, params in presets.items():
        if not isinstance(preset, str) or not isinstance(params, Mapping):
            raise BenchError(f"presets[{preset!r}] must map parameter names to values")
        try:
            cls(**dict(params))
        except BenchError as exc:
            raise BenchError(f"presets[{preset!r}]: {exc}") from exc
    return presets


_TEMPLATE_PYPROJECT = """[build-system]
requires = ["setuptools>=68"]
build-backend = "setuptools.build_meta"

[project]
name = "bench-{dist}"
version = "0.1.0"
description = "The {name} defense for backdoor-leaderboard"
requires-python = ">=3.11"
dependencies = ["backdoor-leaderboard", "torch"]

[project.entry-points."bench.defenses"]
{name} = "{module}:{cls}"

[tool.setuptools]
packages = ["{module}"]
"""

_TEMPLATE_MODULE = '''"""The {name} defense (describe the method and cite the paper here).

The public API is bench.api; its reference is docs/plugins.md in backdoor-leaderboard.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.api import Defense, DefenseContext, DefenseOutput


class {cls}(Defense):
    name = "{name}"
    # Ask for what you need: "poisoned_train" (always given), "clean_subset", "backdoored_model".
    needs = frozenset({{"poisoned_train"}})
    # Bump whenever a change alters what the defense computes (not for refactors): the trial id
    # holds it, so a resumed grid reruns your rows instead of keeping older code's numbers.
    revision = 1
    # The name published reference tables give this method (e.g. "nad" for BackdoorBench's NAD),
    # or None: bench reproduce compares your rows with published cells only under this name.
    reference_name = None
    # Your budgets for the harness's presets (tune them), used where a preset has no
    # [defenses.{name}] section of its own.
    presets = {{"smoke": {{"epochs_scale": 1.0}}, "quick": {{"epochs_scale": 1.0}}}}

    @dataclass(frozen=True)
    class Params:
        # Every hyperparameter has a default; presets override them under [defenses.{name}].
        epochs_scale: float = 1.0  # training epochs relative to the preset's budget

        def __post_init__(self) -> None:
            if self.epochs_scale <= 0:
                raise ValueError(f"epochs_scale must be > 0, got {{self.epochs_scale}}")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        # Replace this with the defense. The starting point trains a fresh model plainly on the
        # poisoned set with the shared trainer; pass hooks=TrainHooks subclasses to ctx.fit to
        # change the loss per batch, use ctx.backdoored_model() for post-training defenses.
        budget = ctx.train_config
        epochs = max(1, round(budget.epochs * self.params.epochs_scale))
        with ctx.stage("train"):  # its seconds land in the row's stage_seconds
            model = ctx.make_model()
            stats = ctx.fit(model, config=dataclasses.replace(budget, epochs=epochs))
        ctx.log(f"{name}: trained {{epochs}} epochs")
        return DefenseOutput(
            model=model,
            input_transform=None,  # or a uint8 -> uint8 batch function applied at test time
            flagged=None,  # or a tensor of training indices you consider poisoned
            metrics={{"final_loss": stats.epoch_losses[-1]}},  # your own figures, in the row
        )
'''

_TEMPLATE_README = """# bench-{dist}

A defense plugin for backdoor-leaderboard.

```bash
pip install -e .                       # registers the '{name}' defense
bench check-defense {name} --verbose   # smoke trial on real data; fix what it reports
bench run --preset quick --attacks badnets --defenses none,{name} --datasets cifar10
bench leaderboard
```
"""


def scaffold_defense(name: str, directory: Path) -> Path:
    """Write a minimal, working defense package for ``name`` into ``directory``."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise BenchError(
            f"defense name {name!r} must be lowercase letters, digits and '_' "
            "(a valid Python identifier starting with a letter)"
        )
    if name in registry.entries("defense"):
        raise BenchError(
            f"a defense named {name!r} is already registered "
            f"(by {registry.entries('defense')[name].package}); pick another name"
        )
    root = Path(directory) / f"bench-{name.replace('_', '-')}"
    if root.exists():
        raise BenchError(f"{root} already exists; remove it or choose another --dir")
    module = f"bench_{name}"
    cls = "".join(part.capitalize() for part in name.split("_")) + "Defense"
    (root / module).mkdir(parents=True)
    fields = {"name": name, "module": module, "cls": cls, "dist": name.replace("_", "-")}
    (root / "pyproject.toml").write_text(_TEMPLATE_PYPROJECT.format(**fields))
    (root / module / "__init__.py").write_text(_TEMPLATE_MODULE.format(**fields))
    (root / "README.md").write_text(_TEMPLATE_README.format(**fields))
    return root
