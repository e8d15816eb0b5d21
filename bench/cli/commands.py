"""The ``bench`` commands, one function each: ``cmd_<name>(args) -> exit code``. Each imports
what it needs when it runs, so ``bench leaderboard`` loads no torch, Ray or dataset code."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
from pathlib import Path

from bench.core import settings
from bench.errors import BenchError

log = logging.getLogger("bench")


def _results_dir(args: argparse.Namespace) -> Path:
    return Path(args.results_dir) if args.results_dir else settings.results_dir()


def cmd_run(args: argparse.Namespace) -> int:
    from bench.grid.expand import expand_grid
    from bench.grid.presets import load_preset, with_overrides
    from bench.run import devices
    from bench.run.driver import choose_executor, run_grid
    from bench.run.plan import estimate, format_plan, plan_grid
    from bench.run.preflight import (
        check_file_size_limit,
        check_free_space,
        check_resources,
        check_results_dir,
        disk_places,
    )
    from bench.store import ResultsStore

    preset = with_overrides(
        load_preset(args.preset),
        precision=args.precision,
        datasets=args.datasets,
        attacks=args.attacks,
        defenses=args.defenses,
        ratios=args.ratios,
        seeds=args.seeds,
    )
    overrides = {
        "cpus_per_trial": args.cpus_per_trial,
        "gpus_per_trial": args.gpus_per_trial,
        "max_concurrent_trials": args.max_concurrent,
        "trial_timeout_s": args.trial_timeout,
        "retries": args.retries,
    }
    resources = dataclasses.replace(
        preset.resources, **{k: v for k, v in overrides.items() if v is not None}
    )
    # The cheap checks first: a bad flag is refused at once, before any data is loaded.
    if not math.isfinite(resources.trial_timeout_s) or (
        min(resources.trial_timeout_s, resources.retries, resources.max_concurrent_trials) < 0
    ):
        raise BenchError("--trial-timeout, --retries and --max-concurrent must be finite and >= 0")
    resources = devices.choose(
        resources,
        gpus_flag=args.gpus_per_trial,
        cpus_flag=args.cpus_per_trial,
        address=args.address,
        requested=preset.precision,
    )
    executor = args.executor if args.dry_run else choose_executor(args.executor, args.address)
    try:
        check_resources(args.address, resources.cpus_per_trial, resources.gpus_per_trial)
    except BenchError as exc:
        if not args.dry_run:
            raise
        # A dry run plans a grid for other hardware too (the paper preset on a laptop).
        log.warning("resources: %s (a real run stops here)", exc)
        resources = dataclasses.replace(resources, gpus_per_trial=0.0)
    if not args.dry_run:  # before the data is decoded into the cache: nothing written yet
        check_file_size_limit()
        check_free_space(disk_places(_results_dir(args), executor))
    specs = expand_grid(preset)
    if args.compile:
        os.environ[settings.COMPILE_ENV] = "1"  # forwarded to the workers with every BENCH_*
    plan = plan_grid(specs, preset.grid.left_out)
    if not plan.runnable:
        reasons = "; ".join(sorted({s.reason for s in plan.skipped}))
        raise BenchError(f"nothing to run: every cell of the grid is left out ({reasons})")
    for skipped in plan.skipped:
        s = skipped.spec
        log.info("left out: %s / %s / ratio %g: %s", s.dataset, s.attack, s.ratio, skipped.reason)
    log.info("preset %s: %d trials (%s)", preset.name, len(plan.runnable), preset.description)
    results_dir = _results_dir(args)
    if args.dry_run:
        import torch

        device = torch.device("cuda" if resources.gpus_per_trial > 0 else "cpu")
        from bench.grid.sources import settings_lines

        done = ResultsStore(results_dir / "results.parquet").ok_ids()
        print("\n".join(settings_lines(preset, plan.runnable)))
        print(format_plan(plan, estimate(plan.runnable, resources, device), resources, done))
        return 0
    check_results_dir(results_dir)
    summary = run_grid(
        plan.runnable,
        resources,
        results_dir=results_dir,
        address=args.address,
        skipped=[(s.spec, s.reason) for s in plan.skipped],
        executor=executor,
    )
    if summary.errors:
        log.error(
            "%d trial(s) failed; their rows hold the traceback (bench leaderboard lists "
            "them). Rerun the same command to retry only those.",
            summary.errors,
        )
    if summary.pending:
        log.error(
            "%d finished trial(s) could not be written to %s; their rows are kept in %s and "
            "are merged into the table by the next write or run (fix the directory, then rerun).",
            summary.pending,
            results_dir / "results.parquet",
            summary.run_dir / "pending" if summary.run_dir else results_dir / "runs",
        )
    if summary.not_run:
        log.error(
            "%d trial(s) did not run (interrupted); rerun the same command to run only those.",
            summary.not_run,
        )
    return 3 if summary.errors or summary.not_run or summary.pending else 0


def _results_table(args: argparse.Namespace):
    """The results table's rows, or a clear error when there is none (nothing is created)."""
    from bench.store import ResultsStore

    out = _results_dir(args)
    table = out / "results.parquet"
    if not table.is_file():
        where = "does not exist" if not out.exists() else "holds no results.parquet"
        raise BenchError(
            f"no results to show: {out} {where}. Run `bench run` first, or pass --results-dir "
            f"(or set ${settings.RESULTS_DIR_ENV}) to where a run wrote its results."
        )
    df = ResultsStore(table).read()
    if df.empty:
        raise BenchError(f"no results to show: {table} has no rows yet. Run `bench run` first.")
    return out, df


def cmd_leaderboard(args: argparse.Namespace) -> int:
    """Render everything from the results table alone (no dataset, model or registry)."""
    from bench.core.versions import git_revision
    from bench.report.render import render

    out, df = _results_table(args)
    rendered = render(df, out, code_revision=git_revision())
    print(f"wrote {rendered.markdown} and {len(rendered.plots)} plots in {out / 'plots'}")
    if rendered.gallery is None:
        print("no plots/attacks.png to embed (`bench attacks gallery` renders it)")
    return 0


def cmd_timing(args: argparse.Namespace) -> int:
    from bench.report.timing import write_timing

    out, df = _results_table(args)
    print(write_timing(df, out).read_text(), end="")
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Print our cells beside a published reference's (the leaderboard has the same section)."""
    from bench.report import references, reproduce

    out, df = _results_table(args)  # a missing table exits 2, as leaderboard and timing do
    user_dir = out / "references"
    if args.reference:
        reference = references.load(args.reference, user_dir)
        result = reproduce.Reproduction(reproduce.compare(df, reference))
    else:
        result = reproduce.default_reproduction(df, user_dir)
    text = reproduce.render_markdown(result)
    if not result.comparisons and not result.missing:
        text = f"No successful trials in {out / 'results.parquet'}: nothing to compare.\n"
    elif not any(len(c.cells) for c in result.comparisons):
        names = ", ".join(sorted({c.reference.name for c in result.comparisons}))
        text += (
            f"\nNo cell of {out / 'results.parquet'} has a published counterpart in {names} "
            "(same dataset, attack, defense and poison ratio).\n"
        )
    print(text, end="")
    return 0


def cmd_attacks_gallery(args: argparse.Namespace) -> int:
    """Render the gallery from a preset's trial specs, building attack artifacts as needed."""
    from bench.cli.gallery import attack_gallery
    from bench.grid.expand import expand_grid
    from bench.grid.presets import load_preset, with_overrides

    preset = with_overrides(
        load_preset(args.preset), datasets=args.datasets, attacks=args.attacks, defenses=["none"]
    )
    specs = {(s.attack, s.dataset): s for s in expand_grid(preset)}
    out = Path(args.out) if args.out else _results_dir(args) / "plots" / "attacks.png"
    path = attack_gallery(list(specs.values()), out, build=True)
    if path is None:
        raise BenchError("no dataset could be loaded for the gallery (see the warnings above)")
    print(f"wrote {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from bench.core.models import model_names
    from bench.data import DATASETS
    from bench.grid import registry
    from bench.grid.presets import builtin_presets

    for kind in ("attack", "defense"):
        print(f"{kind}s:")
        for name, entry in sorted(registry.entries(kind).items()):
            try:
                cls = entry.load()
                extra = []
                if kind == "attack":
                    extra.append(cls.label_policy)
                else:
                    extra.append("needs " + ", ".join(sorted(cls.needs)))
                    if cls.reconstructed:
                        extra.append("reconstructed")
                detail = "; ".join(extra)
            except BenchError as exc:
                detail, cls = f"BROKEN: {exc}", None
            print(f"  {name:<12} {entry.package} {entry.version}  ({detail})")
            if kind == "defense" and cls is not None and name != "none":
                _print_card(name, cls, entry.builtin)
    print("datasets: " + ", ".join(sorted(DATASETS)))
    print("models:   " + ", ".join(model_names()))
    print("presets:  " + ", ".join(builtin_presets()))
    return 0


def _print_card(name: str, cls, builtin: bool) -> None:
    """A defense's threat model card under its line: what the defender holds, when it acts,
    its paper and official code."""
    from bench.report import catalog, threat

    for what, value in threat.for_defense(name, cls.needs).lines():
        print(f"      {what + ':':<23}{value}")
    method = catalog.DEFENSES.get(name)
    if method is not None and builtin:
        print(f"      {'paper:':<23}{method.cite}, {method.paper}")
        print(f"      {'official code:':<23}{method.code or method.note or 'none published'}")


def cmd_perf(args: argparse.Namespace) -> int:
    import torch

    from bench.cli.perf import measure

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {args.device}, {torch.get_num_threads()} threads, batch {args.batch_size}")
    print(
        f"{'model':<18}{'fp32 limit':>12}{'bf16 limit':>12}{'loop':>14}{'of best limit':>15}"
        "  (images/s)"
    )
    for name in args.models:
        steps = args.steps or (20 if "cnn" in name else 4)
        r = measure(
            name,
            batch_size=args.batch_size,
            steps=steps,
            repeats=args.repeats,
            device=args.device,
            compile=args.compile,
            loop_precision=args.precision,
        )
        best = r.best_limit[0]
        loop = f"{r.loop_img_s:.0f} {r.loop_precision}"
        print(
            f"{name:<18}{r.limits['fp32']:>12.0f}{r.limits['bf16']:>12.0f}{loop:>14}"
            f"{100 * r.share:>9.1f}% of {best}",
            flush=True,
        )
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    import time

    from bench.data import load_dataset

    for name in args.datasets:
        start = time.perf_counter()
        ds = load_dataset(name)
        print(
            f"{name}: {len(ds.train_y)} train / {len(ds.test_y)} test images from {ds.source} "
            f"({time.perf_counter() - start:.1f}s)"
        )
    return 0


def cmd_check_defense(args: argparse.Namespace) -> int:
    import json

    from bench.cli.plugins import check_defense

    try:
        params = json.loads(args.params) if args.params else {}
    except json.JSONDecodeError as exc:
        raise BenchError(f"--params must be a JSON object: {exc}") from exc
    if not isinstance(params, dict):
        raise BenchError("--params must be a JSON object, e.g. '{\"epochs\": 5}'")
    if not math.isfinite(args.trial_timeout) or args.trial_timeout < 0:
        raise BenchError("--trial-timeout must be a finite number of seconds >= 0")
    passed = check_defense(
        args.name, params, verbose=args.show_log, time_limit_s=args.trial_timeout
    )
    return 0 if passed else 1


def cmd_new_defense(args: argparse.Namespace) -> int:
    from bench.cli.plugins import scaffold_defense

    root = scaffold_defense(args.name, Path(args.dir))
    print(f"created {root}\nnext: pip install -e {root} && bench check-defense {args.name}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    """Everything the harness caches: decoded datasets and artifacts (models, attack state)."""
    from bench.core.artifacts import ArtifactCache
    from bench.data import clear_dataset_cache, dataset_cache_entries, dataset_cache_root

    cache = ArtifactCache()
    entries = cache.entries()
    datasets = dataset_cache_entries()

    def mib(sizes) -> str:
        return f"{sum(sizes) / 2**20:.1f} MiB"

    if args.action == "ls":
        for name, path, size in datasets:
            print(f"{'dataset ' + name:<18} {size / 2**20:8.1f} MiB  {path.name}")
        for kind, path, size in entries:
            print(f"{kind:<18} {size / 2**20:8.1f} MiB  {path.name}")
        print(f"{len(datasets)} decoded datasets in {dataset_cache_root()}")
        print(f"{len(entries)} artifacts in {cache.root}")
    elif args.action == "du":
        print(
            f"{mib(s for *_, s in datasets)} in {len(datasets)} decoded datasets "
            f"({dataset_cache_root()})"
        )
        print(f"{mib(s for *_, s in entries)} in {len(entries)} artifacts ({cache.root})")
    else:
        removed = clear_dataset_cache()
        names = ", ".join(p.name for p in removed)
        print(
            f"removed {len(removed)} decoded datasets ({mib(s for *_, s in datasets)}) from "
            f"{dataset_cache_root()}" + (f": {names}" if names else "")
        )
        print(
            f"removed {cache.clear()} artifacts ({mib(s for *_, s in entries)}) from {cache.root}"
        )
    return 0
