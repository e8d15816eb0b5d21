"""Tools for plugin authors: ``bench check-defense`` and ``bench new-defense``."""

from __future__ import annotations

import dataclasses
import re
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import registry
from bench.config import expand_grid, load_preset, with_overrides
from bench.errors import BenchError
from bench.schema import Col


def check_defense(
    name: str, params: dict[str, Any] | None = None, out: Callable[[str], None] = print
) -> bool:
    """Run a defense through every check and a smoke trial on real data; True if all pass."""
    ok = True

    def step(label: str, fn: Callable[[], Any]) -> Any:
        nonlocal ok
        try:
            value = fn()
        except Exception as exc:
            ok = False
            out(f"  FAIL  {label}: {exc}")
            if not isinstance(exc, BenchError):
                out("        " + traceback.format_exc().strip().replace("\n", "\n        "))
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
    cls = step("imports, subclasses defenses.base.Defense, has name/needs/Params/run", entry.load)
    if cls is None:
        return False
    out(
        f"        needs: {', '.join(sorted(cls.needs))}; defaults: "
        f"{dataclasses.asdict(cls.Params())}"
    )
    if step("parameters validate", lambda: cls(**(params or {}))) is None:
        return False
    preset = with_overrides(
        load_preset("smoke"), datasets=["cifar10"], attacks=["badnets"], defenses=[name]
    )
    spec = expand_grid(dataclasses.replace(preset, defense_params={name: params or {}}))[0]
    from bench.trial import run_trial

    lines: list[str] = []
    row = step(
        "smoke trial on 1,000 real CIFAR-10 images (BadNets 10%): model outputs, "
        "input transform, flagged indices, finite metrics",
        lambda: run_trial(spec, device=torch.device("cpu"), report=lines.append),
    )
    if row is not None:
        ca, asr, ra, flagged = (row[c] for c in (Col.ca, Col.asr, Col.ra, Col.n_flagged))
        out(
            f"        CA {ca:.3f}  ASR {asr:.3f}  RA {ra:.3f}  "
            f"flagged {flagged if flagged >= 0 else '-'}  "
            f"defense {row[Col.defense_seconds]:.1f}s  (smoke numbers mean nothing)"
        )
    out("all checks passed" if ok else "fix the FAIL lines above, then run this again")
    return ok


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

_TEMPLATE_MODULE = '''"""The {name} defense (describe the method and cite the paper here)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

from defenses.base import Defense, DefenseContext, DefenseOutput


class {cls}(Defense):
    name = "{name}"
    # Ask for what you need: "poisoned_train" (always given), "clean_subset", "backdoored_model".
    needs = frozenset({{"poisoned_train"}})

    @dataclass(frozen=True)
    class Params:
        # Every hyperparameter has a default; presets override them under [defenses.{name}].
        epochs_scale: float = 1.0  # training epochs relative to the preset's budget

        def __post_init__(self) -> None:
            if self.epochs_scale <= 0:
                raise ValueError(f"epochs_scale must be > 0, got {{self.epochs_scale}}")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        start = time.perf_counter()
        # Replace this with the defense. The starting point trains plainly on the poisoned set
        # with the shared trainer (ctx.trainer / ctx.train_model); pass TrainHooks to change the
        # loss per batch, ctx.backdoored_model() for post-training defenses.
        budget = ctx.train_config
        epochs = max(1, round(budget.epochs * self.params.epochs_scale))
        model = ctx.train_model(config=dataclasses.replace(budget, epochs=epochs))
        return DefenseOutput(
            model=model,
            input_transform=None,  # or a uint8 -> uint8 batch function applied at test time
            flagged=None,  # or a tensor of training indices you consider poisoned
            stage_seconds={{"train": time.perf_counter() - start}},
        )
'''

_TEMPLATE_README = """# bench-{dist}

A defense plugin for backdoor-leaderboard.

```bash
pip install -e .                       # registers the '{name}' defense
bench check-defense {name}             # smoke trial on real data; fix what it reports
bench run --preset quick --defenses none,{name}
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
