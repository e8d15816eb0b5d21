"""Leaderboard plots (matplotlib, Agg) from aggregated cells: heatmap, CA-vs-ASR with arrows from
`none`, DER bars, cost vs DER, ASR vs poison ratio. (The attack gallery decodes datasets and fits
attacks, so it is its own command: ``bench attacks gallery``, :mod:`bench.gallery`.)"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from bench.report.aggregate import GROUP
from bench.schema import Col


def _safe(name: str) -> str:
    """A file-name part (preset names come from user files: no path separators)."""
    return re.sub(r"[^\w.-]", "_", name)


def slug(dataset: str, preset: str, ratio: float) -> str:
    return _safe(f"{dataset}_{preset}_r{ratio:g}")


def _save(fig, path: Path) -> Path:
    with warnings.catch_warnings():  # long plugin names can defeat tight_layout; harmless
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _defense_order(labels) -> list[str]:
    return sorted(set(labels), key=lambda v: (v != "none", v))


def asr_heatmap(group: pd.DataFrame, title: str, path: Path) -> Path:
    asr = group.pivot_table(index="defense_label", columns=Col.attack, values=Col.asr)
    asr = asr.reindex(_defense_order(asr.index))
    fig, ax = plt.subplots(figsize=(2.8 + 0.9 * asr.shape[1], 1.6 + 0.45 * asr.shape[0]))
    im = ax.imshow(100 * asr.to_numpy(dtype=float), vmin=0, vmax=100, cmap="Reds", aspect="auto")
    ax.set_xticks(range(asr.shape[1]), asr.columns, rotation=45, ha="right")
    ax.set_yticks(range(asr.shape[0]), asr.index)
    for i in range(asr.shape[0]):
        for j in range(asr.shape[1]):
            v = asr.iat[i, j]
            if not math.isnan(v):
                ax.text(
                    j,
                    i,
                    f"{100 * v:.0f}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if v > 0.6 else "black",
                )
    fig.colorbar(im, ax=ax, label="ASR (%)")
    ax.set_title(f"ASR · {title}")
    return _save(fig, path)


def ca_vs_asr(group: pd.DataFrame, title: str, path: Path) -> Path:
    """Each (defense, attack) point, with an arrow from the same attack's `none` point."""
    fig, ax = plt.subplots(figsize=(6.5, 5))
    base = group[group[Col.defense] == "none"].set_index(Col.attack)
    label_points = len(group) <= 30  # beyond that, labels become noise (and slow to lay out)
    for i, (label, sub) in enumerate(
        sorted(group.groupby("defense_label"), key=lambda kv: (kv[0] != "none", kv[0]))
    ):
        colour = f"C{i % 10}"
        xs, ys = 100 * sub[Col.asr].to_numpy(), 100 * sub[Col.ca].to_numpy()
        ax.scatter(xs, ys, color=colour, s=30, zorder=3, label=label)
        if label_points:
            for x, y, attack in zip(xs, ys, sub[Col.attack], strict=True):
                ax.annotate(attack, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        if (sub[Col.defense] != "none").all():
            known = sub[sub[Col.attack].isin(base.index)]
            start = base.loc[known[Col.attack]]
            x0, y0 = 100 * start[Col.asr].to_numpy(), 100 * start[Col.ca].to_numpy()
            ax.quiver(
                x0,
                y0,
                100 * known[Col.asr].to_numpy() - x0,
                100 * known[Col.ca].to_numpy() - y0,
                angles="xy",
                scale_units="xy",
                scale=1,
                color=colour,
                alpha=0.5,
                width=0.003,
            )
    ax.set_xlabel("ASR (%), lower is better")
    ax.set_ylabel("CA (%), higher is better")
    ax.set_xlim(-3, 103)
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(title="defense (arrows start at none)", fontsize=7, title_fontsize=7)
    ax.set_title(f"CA vs ASR · {title}")
    return _save(fig, path)


def der_bars(group: pd.DataFrame, title: str, path: Path) -> Path:
    defended = group[group[Col.defense] != "none"]
    attacks = sorted(group[Col.attack].unique())
    defenses = _defense_order(defended["defense_label"])
    fig, ax = plt.subplots(figsize=(2.5 + 0.9 * len(attacks) * max(1, len(defenses)) ** 0.5, 4))
    width = 0.8 / max(1, len(defenses))
    for i, d in enumerate(defenses):
        sub = defended[defended["defense_label"] == d].set_index(Col.attack).reindex(attacks)
        xs = [j + i * width for j in range(len(attacks))]
        ax.bar(xs, 100 * sub["der"], width, label=d, yerr=100 * sub["der_ci"].fillna(0), capsize=2)
    ax.axhline(50, color="grey", lw=1, ls="--")
    ax.set_xticks(
        [j + width * (len(defenses) - 1) / 2 for j in range(len(attacks))],
        attacks,
        rotation=45,
        ha="right",
    )
    ax.set_ylim(0, 100)
    ax.set_ylabel("DER (50 = no change)")
    if defenses:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_title(f"DER · {title}")
    return _save(fig, path)


def cost_vs_der(group: pd.DataFrame, title: str, path: Path) -> Path:
    summary = group.groupby("defense_label").agg(der=("der", "mean"), cost=("cost_vs_none", "mean"))
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, r in summary.iterrows():
        ax.scatter(r["cost"], 100 * r["der"], s=40)
        ax.annotate(
            label,
            (r["cost"], 100 * r["der"]),
            fontsize=7,
            xytext=(4, 3),
            textcoords="offset points",
        )
    ax.set_xlabel("training time relative to none (x)")
    ax.set_ylabel("mean DER")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.set_title(f"cost vs DER · {title}")
    return _save(fig, path)


def asr_vs_ratio(table: pd.DataFrame, title: str, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, sub in table.groupby("defense_label"):
        curve = sub.groupby(Col.ratio)[Col.asr].mean().sort_index()
        ax.plot(100 * curve.index, 100 * curve.to_numpy(), marker="o", label=label)
    ax.set_xlabel("poison ratio (%)")
    ax.set_ylabel("mean ASR over attacks (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"ASR vs poison ratio · {title}")
    return _save(fig, path)


def render_all(agg: pd.DataFrame, plot_dir: Path) -> list[Path]:
    """Every plot of the aggregated cells into ``plot_dir``; returns the files written."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if agg.empty:
        return written
    for (dataset, preset, ratio), group in agg.groupby(GROUP, sort=True):
        title = f"{dataset} · {preset} · ratio {ratio:g}"
        s = slug(dataset, preset, ratio)
        written.append(asr_heatmap(group, title, plot_dir / f"asr_heatmap_{s}.png"))
        written.append(ca_vs_asr(group, title, plot_dir / f"ca_vs_asr_{s}.png"))
        if (group[Col.defense] != "none").any():
            written.append(der_bars(group, title, plot_dir / f"der_bars_{s}.png"))
            written.append(cost_vs_der(group, title, plot_dir / f"cost_vs_der_{s}.png"))
    for (dataset, preset), table in agg.groupby([Col.dataset, Col.preset], sort=True):
        if table[Col.ratio].nunique() > 1:
            written.append(
                asr_vs_ratio(
                    table,
                    f"{dataset} · {preset}",
                    plot_dir / f"asr_vs_ratio_{_safe(f'{dataset}_{preset}')}.png",
                )
            )
    return written
