"""The ``bench`` argument parser: every command, its flags and their help."""

from __future__ import annotations

import argparse

from bench.cli.commands import (
    cmd_attacks_gallery,
    cmd_cache,
    cmd_check_defense,
    cmd_data,
    cmd_leaderboard,
    cmd_list,
    cmd_new_defense,
    cmd_perf,
    cmd_reproduce,
    cmd_run,
    cmd_timing,
)
from bench.core import settings

DESCRIPTION = "Run a grid of backdoor attacks x defenses, render the leaderboard, list components."


def _csv(kind: type = str):
    def parse(text: str) -> list:
        try:
            return [kind(v.strip()) for v in text.split(",") if v.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {kind.__name__}s: {exc}"
            ) from exc

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bench", description=DESCRIPTION)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a grid of trials (Ray Tune, or the local executor)")
    run.add_argument("--preset", default="quick", help="smoke | quick | paper, or a .toml path")
    run.add_argument("--datasets", type=_csv(), help="e.g. cifar10,gtsrb")
    run.add_argument("--attacks", type=_csv(), help="e.g. badnets,blended (or 'all')")
    run.add_argument("--defenses", type=_csv(), help="e.g. none (or 'all')")
    run.add_argument("--ratios", type=_csv(float), help="poison ratios, e.g. 0.1,0.05")
    run.add_argument("--seeds", type=_csv(int), help="e.g. 0,1,2")
    run.add_argument("--cpus-per-trial", type=float)
    run.add_argument("--gpus-per-trial", type=float, help="fractions pack trials onto a GPU")
    run.add_argument("--max-concurrent", type=int)
    run.add_argument("--trial-timeout", type=float, help="seconds; 0 = no limit")
    run.add_argument("--retries", type=int, help="extra attempts for a failed trial")
    run.add_argument("--address", help="join an existing Ray cluster (host:port)")
    run.add_argument(
        "--executor",
        choices=["auto", "ray", "local"],
        default="auto",
        help="ray: Ray Tune (local instance or --address); local: child processes on this "
        "machine, no Ray; auto (default): ray where it can be imported, else local",
    )
    run.add_argument("--results-dir", help=f"default: ${settings.RESULTS_DIR_ENV} or ./results")
    run.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16"],
        help="training/evaluation precision (default: the preset's; auto = bf16 on GPUs and on "
        "CPUs with native bf16 units, fp32 elsewhere)",
    )
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="expand the grid, run every preflight check and print the trials with an estimate "
        "of their cost, without training",
    )
    run.add_argument(
        "--compile",
        action="store_true",
        help=f"torch.compile training forward passes (sets ${settings.COMPILE_ENV}=1; for GPUs)",
    )
    run.set_defaults(fn=cmd_run)

    lb = sub.add_parser(
        "leaderboard", help="render LEADERBOARD.md, the page and plots from the results table alone"
    )
    lb.add_argument("--results-dir")
    lb.set_defaults(fn=cmd_leaderboard)

    reproduce = sub.add_parser(
        "reproduce", help="the results' cells beside a published reference's, with verdicts"
    )
    reproduce.add_argument("--results-dir")
    reproduce.add_argument(
        "--reference",
        help="a reference name (shipped, or <results dir>/references/NAME.csv) or a CSV path; "
        "default: the references the results' presets name, else backdoorbench-preactresnet18",
    )
    reproduce.set_defaults(fn=cmd_reproduce)

    timing = sub.add_parser("timing", help="per-defense, per-stage time of the results' trials")
    timing.add_argument("--results-dir")
    timing.set_defaults(fn=cmd_timing)

    attacks = sub.add_parser("attacks", help="attack tools")
    attack_sub = attacks.add_subparsers(dest="attacks_command", required=True)
    gallery = attack_sub.add_parser(
        "gallery", help="render plots/attacks.png: clean, triggered, difference per attack"
    )
    gallery.add_argument("--preset", default="quick")
    gallery.add_argument("--datasets", type=_csv(), default=["cifar10", "gtsrb"])
    gallery.add_argument("--attacks", type=_csv(), help="default: the preset's attacks")
    gallery.add_argument("--out", help="default: <results dir>/plots/attacks.png")
    gallery.add_argument("--results-dir")
    gallery.set_defaults(fn=cmd_attacks_gallery)

    ls = sub.add_parser("list", help="attacks, defenses (with their packages), datasets, models")
    ls.set_defaults(fn=cmd_list)

    perf = sub.add_parser(
        "perf", help="training-loop throughput vs the pure forward+backward limit"
    )
    perf.add_argument("--models", type=_csv(), default=["cnn_small", "preact_resnet18"])
    perf.add_argument("--batch-size", type=int, default=256)
    perf.add_argument("--steps", type=int, default=0, help="batches per measurement")
    perf.add_argument("--repeats", type=int, default=3)
    perf.add_argument("--threads", type=int, default=0)
    perf.add_argument("--device", default="auto", help="cpu, cuda or auto")
    perf.add_argument("--compile", action="store_true", help="measure the torch.compile'd model")
    perf.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="the loop's precision (default auto: what a trial would use here)",
    )
    perf.set_defaults(fn=cmd_perf)

    check = sub.add_parser("check-defense", help="validate a defense plugin with a smoke trial")
    check.add_argument("name")
    check.add_argument("--params", help="JSON object of hyperparameters")
    check.add_argument(
        "--verbose", dest="show_log", action="store_true", help="show the smoke trial's log"
    )
    check.add_argument(
        "--trial-timeout",
        type=float,
        default=0.0,
        help="seconds the smoke trial may take before it is stopped (0 = no limit)",
    )
    check.set_defaults(fn=cmd_check_defense)

    new = sub.add_parser("new-defense", help="scaffold a defense plugin package")
    new.add_argument("name")
    new.add_argument("--dir", default=".", help="where to create bench-NAME/")
    new.set_defaults(fn=cmd_new_defense)

    cache = sub.add_parser(
        "cache", help="list, size or clear the caches (decoded datasets, artifacts)"
    )
    cache.add_argument("action", choices=["ls", "du", "clear"])
    cache.set_defaults(fn=cmd_cache)

    data = sub.add_parser(
        "data", help="decode datasets into the cache and say where they came from"
    )
    data.add_argument("datasets", nargs="*", default=["cifar10", "gtsrb"])
    data.set_defaults(fn=cmd_data)
    return p
