"""Where a grid's time went (TIMING.md, ``bench timing``): per-defense totals of each stage, from
the results table alone.

A trial's wall time splits into poisoning (the attack's fit and its poisoned sets), training the
undefended model (only where this trial built it; later trials of the cell load it), the
defense's own work (with the stages it reports, e.g. DBD's simclr / linear / mixmatch), and
evaluation. Summing per defense shows which one to cut first.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from bench.report.text import md_code, md_table, write_text_atomic
from bench.schema import OK, SKIPPED, Col

#: Where a trial's time went; ``backdoored_seconds`` is derived (see below).
STAGES = [Col.attack_seconds, "backdoored_seconds", Col.defense_seconds, Col.eval_seconds]


def _built_backdoored_seconds(df: pd.DataFrame) -> pd.Series:
    """Seconds spent training the undefended model, counted only in the trial that built it."""
    seconds = df[Col.backdoored_train_seconds].fillna(0.0)
    return seconds.where(df[Col.backdoored_model_cache].eq("built"), 0.0)


def _defense_stages(df: pd.DataFrame) -> pd.DataFrame:
    """One column per stage a defense reported (``stage_seconds`` JSON), NaN elsewhere."""
    parsed = [json.loads(s) if isinstance(s, str) and s else {} for s in df[Col.stage_seconds]]
    stages = pd.DataFrame(parsed, index=df.index)
    return stages.drop(columns=["load"], errors="ignore")  # ``none``'s model load: not a stage


def stage_breakdown(df: pd.DataFrame) -> pd.DataFrame:
    """Per defense: trials, total seconds per stage, its own stages, and the wall total."""
    rows = df[df[Col.status] == OK].copy()
    if rows.empty:
        return pd.DataFrame()
    rows["backdoored_seconds"] = _built_backdoored_seconds(rows)
    timed = rows[[*STAGES, Col.wall_seconds]].astype(float)
    table = pd.concat([rows[[Col.defense]], timed, _defense_stages(rows)], axis=1)
    out = table.groupby(Col.defense).sum(min_count=1)
    out.insert(0, "trials", rows.groupby(Col.defense).size())
    total = out.drop(columns="trials").sum(min_count=1).to_frame("all").T
    total.insert(0, "trials", len(rows))
    return pd.concat([out, total])


def grid_wall_seconds(df: pd.DataFrame) -> float:
    """First trial start to last trial end (what the user waited), from the rows' timestamps."""
    start = df[Col.started_at].min()  # Unix seconds
    end = df[Col.finished_at].max()
    return float(end - start) if pd.notna(start) and pd.notna(end) else math.nan


def per_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Per seed: trials, wall minutes (summed over the runs that ran the seed's trials, each from
    its first start to its last end, so a seed resumed in a later session counts the time it ran,
    not the gap), compute minutes, and the devices and precisions that ran it."""
    rows = df[df[Col.status] == OK]
    out = {}
    for seed, of_seed in rows.groupby(Col.seed, sort=True):
        runs = of_seed[Col.run].fillna("").astype(str)
        out[int(seed)] = {
            "trials": len(of_seed),
            "runs": runs.nunique(),
            "wall_min": sum(grid_wall_seconds(r) for _, r in of_seed.groupby(runs)) / 60,
            "compute_min": float(of_seed[Col.wall_seconds].astype(float).sum()) / 60,
            "devices": ", ".join(sorted(set(of_seed[Col.device].dropna().astype(str)))),
            "precisions": ", ".join(sorted(set(of_seed[Col.precision_used].dropna().astype(str)))),
        }
    return pd.DataFrame.from_dict(out, orient="index")


def _per_seed_text(df: pd.DataFrame) -> str:
    seeds = per_seed(df)
    if seeds.empty:
        return ""
    body = [
        [
            str(seed),
            str(int(r["trials"])),
            str(int(r["runs"])),
            f"{r['wall_min']:.1f}",
            f"{r['compute_min']:.1f}",
            r["devices"],
            r["precisions"],
        ]
        for seed, r in seeds.iterrows()
    ]
    header = [Col.seed, "trials", "runs", "wall min", "compute min", Col.device, Col.precision]
    return (
        "## Per seed\n\nWall minutes add up each run's span over the seed's trials (a seed "
        "resumed later does not count the gap); compute minutes sum the trials' own wall times. "
        "Compare timings only within one device.\n\n" + "\n".join(md_table(header, body)) + "\n"
    )


def _table(table: pd.DataFrame) -> list[str]:
    minutes = table.drop(columns="trials").div(60)
    header = [Col.defense, "trials", *(c.removesuffix("_seconds") for c in minutes.columns)]
    body = [
        [name, str(int(table.loc[name, "trials"]))]
        + ["" if pd.isna(v) else f"{v:.1f}" for v in minutes.loc[name]]
        for name in minutes.index
    ]
    return md_table(header, body)


def _one_run(df: pd.DataFrame, timed: bool = True) -> str:
    table = stage_breakdown(df)
    if table.empty:
        return "no successful trials\n"
    wall = (
        f"Wall time {grid_wall_seconds(df) / 60:.1f} min from the first trial's start to the last "
        "one's end, "
        if timed
        else "Rows from tables older than the `run` column, possibly from several runs (so no "
        "wall time), "
    )
    head = (
        f"{wall}{int(table.loc['all', 'trials'])} trials. Stage totals in minutes (summed "
        "over concurrent trials, so they can exceed the wall time); `backdoored` counts only "
        "trials that trained the undefended model.\n\n"
    )
    return head + "\n".join(_table(table)) + "\n"


def render_markdown(df: pd.DataFrame) -> str:
    """The breakdown as markdown tables in minutes: each seed's wall and compute time (when the
    table holds several seeds or runs), one table per run (``run`` column) with that run's wall
    time, then all rows together when the table holds several runs. Skipped cells never ran,
    so they take no part (nor make a run of their own)."""
    df = df[df[Col.status] != SKIPPED]
    runs = df[Col.run].fillna("").astype(str)
    seeds = _per_seed_text(df) if df[Col.seed].nunique() > 1 or runs.nunique() > 1 else ""
    if runs.nunique() <= 1:
        return _one_run(df) + (f"\n{seeds}" if seeds else "")
    parts = [seeds] if seeds else []
    for name, rows in df.groupby(runs, sort=True):
        title = (
            f"Run {md_code(name)} ({md_code(f'results/runs/{name}')})"
            if name
            else "Rows without a run name"
        )
        parts.append(f"## {title}\n\n{_one_run(rows, timed=bool(name))}")
    table = stage_breakdown(df)
    if not table.empty:
        parts.append(
            "## All rows\n\nEvery run together (wall times are per run, above).\n\n"
            + "\n".join(_table(table))
            + "\n"
        )
    return "\n".join(parts)


def write_timing(df: pd.DataFrame, out_dir: Path) -> Path:
    path = out_dir / "TIMING.md"
    write_text_atomic(path, "# Where the time went\n\n" + render_markdown(df))
    return path
