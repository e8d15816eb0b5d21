"""``bench leaderboard``: the results table rendered as markdown, plots, a static page and an
aggregated export, all from the table alone."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.aggregate import DETECTION, GROUP, aggregate, ranking
from bench.schema import OK, Col


@dataclass(frozen=True)
class Rendered:
    markdown: Path
    page: Path
    exports: list[Path]
    plots: list[Path]


def pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def cell_text(row: pd.Series) -> str:
    """'CA / ASR / RA' in percent; with several seeds, ASR carries its 95% CI and n."""
    text = f"{pct(row[Col.ca])} / {pct(row[Col.asr])} / {pct(row[Col.ra])}"
    if row["n"] > 1:
        text += f" (±{pct(row['asr_ci'])}, n={row['n']})"
    return text


def ordered_defenses(labels: list[str]) -> list[str]:
    return sorted(labels, key=lambda v: (v != "none", v))


def cell_table(group: pd.DataFrame) -> pd.DataFrame:
    """Defense x attack table of a leaderboard group (aggregated rows)."""
    defenses = ordered_defenses(list(group["defense_label"].unique()))
    attacks = sorted(group[Col.attack].unique())
    table = pd.DataFrame("N/A", index=defenses, columns=[*attacks, "mean"], dtype=object)
    for _, r in group.iterrows():
        table.loc[r["defense_label"], r[Col.attack]] = cell_text(r)
    for d in defenses:
        sub = group[group["defense_label"] == d]
        ca, asr, ra = (pct(sub[c].mean()) for c in (Col.ca, Col.asr, Col.ra))
        table.loc[d, "mean"] = f"{ca} / {asr} / {ra}"
    return table


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    esc = [[str(v).replace("|", "\\|") for v in r] for r in [header, *rows]]
    return [
        "| " + " | ".join(esc[0]) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(r) + " |" for r in esc[1:]),
    ]


def _header_lines(group: pd.DataFrame) -> list[str]:
    models = ", ".join(sorted(group[Col.model].unique()))
    sources = "; ".join(sorted({s for s in group[Col.data_source] if s}))
    lines = [f"Model: {models}. Data: {sources}. Trials: {int(group['n'].sum())}."]
    if group[Col.preset].iloc[0] != "paper":
        lines.append(
            "Not comparable with published numbers: this preset trains a small model on a data "
            "subset with a reduced budget. Compare rows within this table only."
        )
    if group["reconstructed"].any():
        lines.append("(reconstructed): no official code exists; rebuilt from the paper.")
    if group["plugin"].any():
        lines.append("[plugin: ...]: a defense from a third-party package, not the harness.")
    return lines


def render_markdown(df: pd.DataFrame, agg: pd.DataFrame | None = None) -> str:
    agg = aggregate(df) if agg is None else agg
    ranks = ranking(agg)
    out = [
        "# Backdoor defense leaderboard",
        "",
        "Cells are **CA / ASR / RA** in percent (clean accuracy / attack success rate / robust "
        "accuracy), means over seeds; with several seeds the ASR's 95% confidence interval and n "
        "follow. `mean` averages over attacks. DER (defense effectiveness rating, 0-100, 50 = no "
        "change) compares each defense with `none` on the same cell; defenses are ranked by mean "
        "DER, ties broken by CA.",
        "",
    ]
    if agg.empty:
        out.append("No successful trials yet. Run `bench run --preset quick`.")
    for key, group in agg.groupby(GROUP, sort=True):
        dataset, preset, ratio = key
        out += [f"## {dataset} · preset `{preset}` · poison ratio {ratio:g}", ""]
        out += [*_header_lines(group), ""]
        table = cell_table(group)
        out += md_table(
            ["defense \\ attack", *table.columns], [[idx, *row] for idx, row in table.iterrows()]
        )
        out += ["", "Ranking:", ""]
        rk = ranks[(ranks[GROUP] == pd.Series(key, index=GROUP)).all(axis=1)]
        out += md_table(
            ["rank", Col.defense, "mean DER", "mean CA", "mean ASR", "cost vs none"],
            [
                [
                    str(r["rank"]),
                    r["defense_label"],
                    pct(r["der"]),
                    pct(r[Col.ca]),
                    pct(r[Col.asr]),
                    "–" if math.isnan(r["cost_vs_none"]) else f"{r['cost_vs_none']:.2f}x",
                ]
                for _, r in rk.iterrows()
            ],
        )
        flagged = group[group[Col.det_tpr].notna()]
        if not flagged.empty:
            out += [
                "",
                "Poisoned-sample detection (flagged training samples vs the hidden poison mask):",
                "",
            ]
            out += md_table(
                [Col.defense, Col.attack, "TPR", "FPR", "precision", "F1", "AUROC"],
                [
                    [
                        r["defense_label"],
                        r[Col.attack],
                        *(pct(r[c]) for c in DETECTION),
                    ]
                    for _, r in flagged.iterrows()
                ],
            )
        out.append("")
    failed = df[df[Col.status] != OK]
    if not failed.empty:
        out += ["## Failed trials", ""]
        out += md_table(
            ["trial", Col.dataset, Col.attack, Col.defense, Col.status, Col.error],
            [
                [
                    *(r[c] for c in (Col.trial_id, Col.dataset, Col.attack, Col.defense)),
                    r[Col.status],
                    (str(r[Col.error]).strip().splitlines() or [""])[-1],
                ]
                for _, r in failed.iterrows()
            ],
        )
        out.append("")
    return "\n".join(out)


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def render(df: pd.DataFrame, out_dir: Path, gallery: bool = True) -> Rendered:
    """Write LEADERBOARD.md, index.html, leaderboard.{csv,parquet} and plots/ under out_dir."""
    from bench import page, plots, timing

    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(df)
    md = out_dir / "LEADERBOARD.md"
    write_text_atomic(md, render_markdown(df, agg))
    exports = [out_dir / "leaderboard.csv", out_dir / "leaderboard.parquet"]
    agg.to_csv(exports[0], index=False)
    if not agg.empty:
        agg.to_parquet(exports[1], index=False)
    else:
        exports.pop()
    timing.write_timing(df, out_dir)
    plot_files = plots.render_all(df, agg, out_dir / "plots", gallery=gallery)
    html = out_dir / "index.html"
    write_text_atomic(html, page.render_page(df, agg, ranking(agg), plot_files))
    return Rendered(markdown=md, page=html, exports=exports, plots=plot_files)
