"""How the harness is laid out, in three numbers a refactor should move (issue #26).

1. Top-level modules in ``bench/`` (``.py`` files directly in it, ``__init__`` excluded).
2. Depth of the import graph: the longest chain of project modules each importing the next
   (static, via the same ``ast`` walk as ``tests/report/test_report_layer.py``), counted in modules.
3. The files a trial's spec passes through from ``run_trial_safely`` to its row: every call into
   a project function whose arguments hold the spec (or the object resolved from it) is recorded
   with its file; "stays" are maximal runs of consecutive calls in one file. Also counted: how
   often the harness derives the cell key, a model factory or a TrainConfig from the spec.

Usage: ``python benchmarks/house_metrics.py`` (a 1-epoch BadNets/ABL trial on 1,000 CIFAR-10
images; needs ``BENCH_DATA_DIR``). ``--no-trial`` prints the static numbers only.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "report"))

from test_report_layer import import_graph  # noqa: E402

try:
    from test_report_layer import _wing
except ImportError:  # before the wings
    _wing = None


def top_level_modules() -> list[str]:
    return sorted(p.stem for p in (ROOT / "bench").glob("*.py") if p.stem != "__init__")


def import_depth(graph: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The longest chain of project modules (the graph is acyclic; a test keeps it so)."""

    @functools.cache
    def longest(node: str) -> tuple[str, ...]:
        tails = [longest(n) for n in graph.get(node, ()) if n.startswith("bench")]
        return (node, *max(tails, key=len, default=()))

    best = max((longest(n) for n in graph if n.startswith("bench")), key=len)
    return len(best), list(best)


def wing_depth(graph: dict[str, set[str]]) -> tuple[int, list[str]]:
    """The longest chain of wings (bench.core, bench.trial, ...) each importing the next."""
    wings: dict[str, set[str]] = {}
    for module, targets in graph.items():
        here = _wing(module)
        if here is None or not here[1].startswith("bench"):
            continue
        for target in targets:
            there = _wing(target)
            if there and there[1] != here[1] and there[1].startswith("bench"):
                wings.setdefault(here[1], set()).add(there[1])
    return import_depth(wings)


def trial_path(defense: str) -> tuple[list[str], dict[str, int]]:
    """Project files, in call order, of the functions a trial's spec (or its resolved form) is
    passed to, from ``run_trial_safely`` to the row."""
    os.environ.setdefault("BENCH_ARTIFACT_DIR", tempfile.mkdtemp(prefix="house-"))
    try:  # before the move into wings (for the before/after figures of issue #26)
        from bench.config import expand_grid, load_preset, with_overrides  # type: ignore

        from bench.trial import run_trial_safely  # type: ignore[attr-defined]
    except ImportError:
        from bench.grid.expand import expand_grid
        from bench.grid.presets import load_preset, with_overrides
        from bench.trial.pipeline import run_trial_safely

    spec = expand_grid(
        with_overrides(
            load_preset("quick"), datasets=["cifar10"], attacks=["badnets"], defenses=[defense]
        )
    )[0]
    small = {k: 1 for k in spec.defense_params if k.endswith("_epochs")}
    spec = dataclasses.replace(
        spec,
        data={**spec.data, "train_size": 1000, "test_size": 500},
        train={**spec.train, "epochs": 1},
        defense_params={**spec.defense_params, **small},
    )
    project = tuple(str(ROOT / p) + os.sep for p in ("bench", "attacks", "defenses"))
    carriers: list[object] = [spec]
    calls: list[str] = []
    derived = {"cell_spec": 0, "model_factory": 0, "TrainConfig (by the harness)": 0}

    def holds_spec(frame) -> bool:
        code = frame.f_code
        names = code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
        for name in names:
            value = frame.f_locals.get(name)
            if any(value is c for c in carriers):
                return True
            if type(value).__name__ in {"Cell", "ResolvedTrial", "TrialPlan"}:
                carriers.append(value)  # the spec, resolved once, carries it onward
                return True
        return False

    harness = str(ROOT / "bench") + os.sep

    def profile(frame, event, _arg):
        if event != "call":
            return
        code = frame.f_code
        if code.co_filename.startswith(project) and holds_spec(frame):
            calls.append(str(Path(code.co_filename).relative_to(ROOT)))
        caller = frame.f_back.f_code.co_filename if frame.f_back else ""
        if code.co_name in {"cell_spec", "model_factory"} and caller.startswith(harness):
            derived[code.co_name] += 1
        elif (
            code.co_name == "__init__"
            and type(frame.f_locals.get("self")).__name__ == "TrainConfig"
            and caller.startswith(harness)
        ):
            derived["TrainConfig (by the harness)"] += 1

    sys.setprofile(profile)
    try:
        row = run_trial_safely(spec)
    finally:
        sys.setprofile(None)
    assert row["status"] == "ok", row.get("error")
    return calls, derived


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-trial", action="store_true")
    parser.add_argument("--defense", default="abl")
    args = parser.parse_args()
    modules = top_level_modules()
    depth, chain = import_depth(import_graph())
    print(f"top-level modules in bench/: {len(modules)}")
    print(f"import graph depth: {depth} modules ({' -> '.join(chain)})")
    try:
        wdepth, wchain = wing_depth(import_graph())
        print(f"wing depth: {wdepth} wings ({' -> '.join(wchain)})")
    except Exception:  # before the wings existed, there is no wing map
        pass
    if args.no_trial:
        return
    calls, derived = trial_path(args.defense)
    stays = [f for i, f in enumerate(calls) if i == 0 or calls[i - 1] != f]
    print(
        f"trial spec path ({args.defense}): {len(calls)} calls, {len(stays)} stays "
        f"in {len(set(calls))} files"
    )
    print("  " + " > ".join(stays))
    print(
        "derived from the spec during the trial: "
        + ", ".join(f"{k} x{v}" for k, v in derived.items())
    )


if __name__ == "__main__":
    main()
