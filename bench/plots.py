"""Leaderboard plots (matplotlib, Agg): heatmap, CA-vs-ASR with arrows from `none`, DER bars,
cost vs DER, ASR vs poison ratio, and the attack gallery."""

from __future__ import annotations

import logging
import math
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
import torch

from bench.aggregate import GROUP
from bench.schema import Col

log = logging.getLogger("bench.plots")


def slug(dataset: str, preset: str, ratio: float) -> str:
    return f"{dataset}_{preset}_r{ratio:g}"


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


def gallery_specs(df: pd.DataFrame, datasets: list[str]) -> list:
    """One trial spec per (attack, dataset) for the gallery, taken from the results so the
    gallery finds the artifacts those trials built; datasets without results reuse another
    dataset's spec (artifact-free attacks render, the others show "not built")."""
    import dataclasses
    import json

    from bench.config import TrialSpec

    specs = []
    for _, rows in df.groupby(Col.attack, sort=True):
        by_dataset = {r[Col.dataset]: r[Col.spec] for _, r in rows.iterrows() if r.get(Col.spec)}
        if not by_dataset:
            continue
        fallback = TrialSpec.from_dict(json.loads(next(iter(by_dataset.values()))))
        for dataset in datasets:
            if dataset in by_dataset:
                specs.append(TrialSpec.from_dict(json.loads(by_dataset[dataset])))
            else:
                specs.append(dataclasses.replace(fallback, dataset=dataset))
    return specs


def attack_gallery(specs: list, path: Path, build: bool = False) -> Path | None:
    """For each attack and dataset: a clean test image, its triggered version and the amplified
    difference. ``specs`` holds one trial spec per (attack, dataset); attacks that need trained
    artifacts use the cached ones (built first only when ``build`` is True)."""
    from attacks.base import ArtifactMissing
    from bench import registry
    from bench.cell import attack_context
    from bench.data import load_dataset
    from bench.errors import BenchError

    if not specs:
        return None
    attacks = sorted({s.attack for s in specs})
    datasets = sorted({s.dataset for s in specs})
    loaded = {}
    for name in datasets:
        try:
            loaded[name] = load_dataset(name)
        except BenchError as exc:
            log.warning("attack gallery: %s skipped (%s)", name, exc)
    datasets = [d for d in datasets if d in loaded]
    if not datasets:
        return None
    fig, axes = plt.subplots(
        len(attacks),
        3 * len(datasets),
        figsize=(1.6 * 3 * len(datasets), 1.7 * len(attacks) + 0.4),
        squeeze=False,
    )
    cpu = torch.device("cpu")
    for spec in specs:
        if spec.dataset not in loaded:
            continue
        i, j = attacks.index(spec.attack), datasets.index(spec.dataset)
        budget = spec.data_budget()
        data = loaded[spec.dataset].subset(budget.train_size, budget.test_size, budget.subset_seed)
        x = data.test_x[data.test_y != spec.target][:1]
        cells = axes[i, 3 * j : 3 * j + 3]
        try:
            attack = registry.create("attack", spec.attack, dict(spec.attack_params))
            attack.fit(attack_context(spec, data, cpu, build_artifacts=build))
            stamped = attack.apply_test(x)
        except ArtifactMissing:
            for ax in cells:
                ax.axis("off")
            cells[1].text(0.5, 0.5, f"{spec.attack}\n(not built)", ha="center", va="center")
            continue
        diff = (stamped.float() - x.float()).abs()
        linf = int(diff.max())
        amplified = (diff / max(1.0, diff.max().item()) * 255).to(torch.uint8)
        captions = (f"{spec.dataset} clean", spec.attack, f"|diff| (L∞={linf})")
        for ax, img, caption in zip(cells, (x, stamped, amplified), captions, strict=True):
            ax.imshow(img[0].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(caption, fontsize=7)
            ax.axis("off")
    fig.suptitle("Attack gallery: clean, triggered, amplified difference", fontsize=9)
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)


def render_all(
    df: pd.DataFrame, agg: pd.DataFrame, plot_dir: Path, gallery: bool = True
) -> list[Path]:
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
                    plot_dir / f"asr_vs_ratio_{dataset}_{preset}.png",
                )
            )
    if gallery:
        path = attack_gallery(gallery_specs(df, ["cifar10", "gtsrb"]), plot_dir / "attacks.png")
        if path is not None:
            written.append(path)
    return written
