"""Render the results table into ``LEADERBOARD.md`` and plots, from the table alone."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.store import OK

GROUP_KEYS = ["dataset", "preset", "ratio"]
BUILTIN_PACKAGE = "backdoor-leaderboard"


@dataclass(frozen=True)
class Rendered:
    markdown: Path
    plots: list[Path]


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _ordered(values: list[str], first: str) -> list[str]:
    return sorted(values, key=lambda v: (v != first, v))


def defense_label(
    name: str, package: str | None, version: str | None, reconstructed: bool | None
) -> str:
    """How a defense appears in tables: plugins carry their package, reconstructions say so."""
    label = name
    if reconstructed:
        label += " (reconstructed)"
    if package and package != BUILTIN_PACKAGE:
        label += f" [plugin: {package} {version or ''}]".replace(" ]", "]")
    return label


def _column(df: pd.DataFrame, name: str) -> pd.Series:
    """A column, or all-missing for tables written before the column existed."""
    return df[name] if name in df else pd.Series(None, index=df.index, dtype=object)


def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Adds ``defense_label`` (tables group by it, so a plugin never hides behind a name)."""
    df = df.copy()
    columns = zip(
        df["defense"],
        _column(df, "defense_package"),
        _column(df, "defense_version"),
        _column(df, "defense_reconstructed"),
        strict=True,
    )
    df["defense_label"] = [
        defense_label(name, pkg, version, bool(rec) if pd.notna(rec) else False)
        for name, pkg, version, rec in columns
    ]
    return df


def cell_table(group: pd.DataFrame) -> pd.DataFrame:
    """Defense x attack table of mean CA / ASR over seeds, plus a mean column."""
    means = group.groupby(["defense_label", "attack"])[["ca", "asr", "ra"]].mean()
    counts = group.groupby(["defense_label", "attack"]).size()
    defenses = _ordered(list(group["defense_label"].unique()), "none")
    attacks = sorted(group["attack"].unique())
    table = pd.DataFrame(index=defenses, columns=[*attacks, "mean"], dtype=object)
    for d in defenses:
        for a in attacks:
            if (d, a) in means.index:
                ca, asr = means.loc[(d, a), "ca"], means.loc[(d, a), "asr"]
                n = counts.loc[(d, a)]
                table.loc[d, a] = f"{_pct(ca)} / {_pct(asr)}" + (f" (n={n})" if n > 1 else "")
            else:
                table.loc[d, a] = "N/A"
        sub = means.loc[d] if d in means.index.get_level_values(0) else None
        table.loc[d, "mean"] = (
            f"{_pct(sub['ca'].mean())} / {_pct(sub['asr'].mean())}" if sub is not None else "N/A"
        )
    return table


def _markdown_table(table: pd.DataFrame, corner: str) -> str:
    header = f"| {corner} | " + " | ".join(table.columns) + " |"
    sep = "|" + "---|" * (len(table.columns) + 1)
    rows = [f"| {idx} | " + " | ".join(str(v) for v in row) + " |" for idx, row in table.iterrows()]
    return "\n".join([header, sep, *rows])


def _group_header(group: pd.DataFrame) -> list[str]:
    models = ", ".join(sorted(group["model"].unique()))
    sources = "; ".join(sorted(group["data_source"].dropna().unique()))
    comparable = bool(group.get("paper_comparable", pd.Series([False])).all())
    lines = [f"Model: {models}. Data: {sources}. Trials: {len(group)}."]
    if not comparable:
        lines.append(
            "Not comparable with published numbers: this preset trains a small model on a data "
            "subset with a reduced budget. Compare rows within this table only."
        )
    return lines


def render_markdown(df: pd.DataFrame) -> str:
    ok = with_labels(df[df["status"] == OK]) if not df.empty else df
    out = ["# Backdoor defense leaderboard", ""]
    out.append(
        "Cells are **CA / ASR** in percent (clean accuracy / attack success rate), the mean "
        "over seeds; `mean` averages over attacks. Lower ASR with unchanged CA is better."
    )
    out.append("")
    if ok.empty:
        out.append("No successful trials yet. Run `bench run --preset quick`.")
    for (dataset, preset, ratio), group in ok.groupby(GROUP_KEYS, sort=True):
        out += [f"## {dataset} · preset `{preset}` · poison ratio {ratio:g}", ""]
        out += [*_group_header(group), ""]
        out += [_markdown_table(cell_table(group), "defense \\ attack"), ""]
    failed = df[df["status"] != OK] if not df.empty else df
    if not failed.empty:
        out += [
            "## Failed trials",
            "",
            "| trial | dataset | attack | defense | error |",
            "|---|---|---|---|---|",
        ]
        for _, r in failed.iterrows():
            last = str(r["error"]).strip().splitlines()[-1:] or [""]
            out.append(
                f"| {r['trial_id']} | {r['dataset']} | {r['attack']} | {r['defense']} "
                f"| {last[0].replace('|', '/')} |"
            )
        out.append("")
    return "\n".join(out)


def _slug(dataset: str, preset: str, ratio: float) -> str:
    return f"{dataset}_{preset}_r{ratio:g}"


def render_plots(df: pd.DataFrame, plot_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plot_dir.mkdir(parents=True, exist_ok=True)
    ok = with_labels(df[df["status"] == OK]) if not df.empty else df
    written = []
    for (dataset, preset, ratio), group in ok.groupby(GROUP_KEYS, sort=True):
        slug = _slug(dataset, preset, ratio)
        asr = group.pivot_table(
            index="defense_label", columns="attack", values="asr", aggfunc="mean"
        )
        asr = asr.reindex(_ordered(list(asr.index), "none"))
        fig, ax = plt.subplots(figsize=(2.5 + 0.9 * asr.shape[1], 1.6 + 0.5 * asr.shape[0]))
        im = ax.imshow(100 * asr.to_numpy(dtype=float), vmin=0, vmax=100, cmap="Reds")
        ax.set_xticks(range(asr.shape[1]), asr.columns, rotation=45, ha="right")
        ax.set_yticks(range(asr.shape[0]), asr.index)
        for i in range(asr.shape[0]):
            for j in range(asr.shape[1]):
                v = asr.iat[i, j]
                if not math.isnan(v):
                    colour = "white" if v > 0.6 else "black"
                    ax.text(
                        j, i, f"{100 * v:.0f}", ha="center", va="center", fontsize=8, color=colour
                    )
        fig.colorbar(im, ax=ax, label="ASR (%)")
        ax.set_title(f"ASR · {dataset} · {preset} · ratio {ratio:g}")
        fig.tight_layout()
        path = plot_dir / f"asr_heatmap_{slug}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)

        means = group.groupby(["defense_label", "attack"])[["ca", "asr"]].mean().reset_index()
        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        for defense, sub in means.groupby("defense_label"):
            ax.scatter(100 * sub["asr"], 100 * sub["ca"], label=defense, s=40)
            for _, r in sub.iterrows():
                ax.annotate(
                    r["attack"],
                    (100 * r["asr"], 100 * r["ca"]),
                    fontsize=7,
                    xytext=(3, 3),
                    textcoords="offset points",
                )
        ax.set_xlabel("ASR (%)  (lower is better)")
        ax.set_ylabel("CA (%)  (higher is better)")
        ax.set_xlim(-3, 103)
        ax.set_ylim(0, 100)
        ax.set_title(f"CA vs ASR · {dataset} · {preset} · ratio {ratio:g}")
        ax.legend(title="defense", fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = plot_dir / f"ca_vs_asr_{slug}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    return written


def render(df: pd.DataFrame, out_dir: Path) -> Rendered:
    out_dir.mkdir(parents=True, exist_ok=True)
    md = out_dir / "LEADERBOARD.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(render_markdown(df))
    tmp.replace(md)
    return Rendered(markdown=md, plots=render_plots(df, out_dir / "plots"))
