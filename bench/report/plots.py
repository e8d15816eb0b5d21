"""Leaderboard plots (matplotlib, Agg) from aggregated cells, each with a caption that says what it
shows and how to read it.

Every defense keeps one colour and one marker in every plot (:func:`styles`: the Okabe-Ito
palette, safe for colour-blind readers; `none` always grey), rows follow the ranking, intervals
are drawn only where a cell has more than one seed, and overplotting is avoided with small
multiples (one panel per attack). The attack gallery decodes datasets and fits attacks, so it is
its own command (``bench attacks gallery``, :mod:`bench.cli.gallery`).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd
from matplotlib.collections import LineCollection

from bench.report.aggregate import D_CA, DER, GROUP, LABEL, NONE, RANK, is_clean
from bench.report.ranks import OUTSIDE, SCORE, TIED, ranking
from bench.report.verdict import DEFAULT_MAX_DROP
from bench.schema import Col

#: Okabe & Ito's colour-blind-safe palette (without its yellow, too pale on white, kept last).
OKABE_ITO = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442"]
NONE_COLOUR = "#8C8C8C"
#: The built-in defenses' fixed colour and marker.
BUILTIN_STYLE = {
    "abl": ("#0072B2", "s"),
    "dbd": ("#D55E00", "^"),
    "dlp": ("#009E73", "D"),
    "nab": ("#CC79A7", "P"),
    "ibau": ("#E69F00", "v"),
}
_EXTRA_COLOURS = ["#56B4E9", "#000000", "#F0E442", *OKABE_ITO[:5]]
_EXTRA_MARKERS = ["X", "*", "h", "<", ">", "p", "H", "8", "d"]


@dataclass(frozen=True)
class Style:
    colour: str
    marker: str


@dataclass(frozen=True)
class Figure:
    """A written plot: its file, a title, a caption (what it shows, how to read it) and the
    table it belongs to (``ratio`` None: a plot across the ratios of a dataset and preset)."""

    path: Path
    title: str
    caption: str
    dataset: str
    preset: str
    ratio: float | None


def styles(agg: pd.DataFrame) -> dict[str, Style]:
    """Defense label -> its colour and marker: `none` grey, the built-ins fixed, any other
    (plugins) the remaining colours in label order, so a label looks the same in every plot."""
    out: dict[str, Style] = {}
    if agg.empty:
        return out
    pairs = agg[[LABEL, Col.defense, "plugin"]].drop_duplicates(LABEL)
    extra = []
    for label, defense, plugin in pairs.itertuples(index=False):
        if defense == NONE and not plugin:
            out[label] = Style(NONE_COLOUR, "o")
        elif defense in BUILTIN_STYLE and not plugin:
            out[label] = Style(*BUILTIN_STYLE[defense])
        else:
            extra.append(label)
    for i, label in enumerate(sorted(extra)):
        colour = _EXTRA_COLOURS[i % len(_EXTRA_COLOURS)]
        marker = _EXTRA_MARKERS[(i // len(_EXTRA_COLOURS) + i) % len(_EXTRA_MARKERS)]
        out[label] = Style(colour, marker)
    return out


def _safe(name: str) -> str:
    """A file-name part (preset names come from user files: no path separators)."""
    return re.sub(r"[^\w.-]", "_", name)


def slug(dataset: str, preset: str, ratio: float) -> str:
    return _safe(f"{dataset}_{preset}_r{ratio:g}")


def _save(fig, path: Path) -> Path:
    with warnings.catch_warnings():  # long plugin names can defeat tight_layout; harmless
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _short(label: str, width: int = 28) -> str:
    """A label that fits an axis (plugin labels carry their package)."""
    return label if len(label) <= width else label[: width - 1] + "…"


def rank_order(group: pd.DataFrame) -> list[str]:
    """Labels of one table: `none` first, then the defenses in rank order."""
    ranks = ranking(group)
    ranked = list(ranks.sort_values(RANK)[LABEL]) if len(ranks) else []
    base = sorted(set(group.loc[group[Col.defense] == NONE, LABEL]))
    rest = sorted(set(group[LABEL]) - set(ranked) - set(base))
    return [*base, *ranked, *rest]


def _row_names(group: pd.DataFrame, order: list[str]) -> list[str]:
    """Axis labels: the baseline as is, the defenses with their rank ("2=." where shared)."""
    ranks = ranking(group)
    text = (
        {r[LABEL]: f"{int(r[RANK])}{'=' if r[TIED] else ''}. " for _, r in ranks.iterrows()}
        if len(ranks)
        else {}
    )
    return [f"{text.get(lb, '')}{_short(lb)}" for lb in order]


def heatmaps(group: pd.DataFrame, title: str, path: Path) -> Path:
    """ASR and the CA drop against `none`, side by side, rows in rank order."""
    order = rank_order(group)
    attacks = sorted(group[Col.attack].unique())
    asr = group.pivot_table(index=LABEL, columns=Col.attack, values=Col.asr, dropna=False)
    drop = group.pivot_table(index=LABEL, columns=Col.attack, values=D_CA, dropna=False)
    asr = asr.reindex(index=order, columns=attacks) * 100
    drop = -drop.reindex(index=order, columns=attacks) * 100
    base = set(group.loc[group[Col.defense] == NONE, LABEL])
    drop.loc[[lb for lb in order if lb in base]] = math.nan  # the baseline loses nothing
    names = _row_names(group, order)
    panel = 0.55 * len(attacks) + 1.0
    defended = len(order) > len(base)
    fig, axes = plt.subplots(
        1,
        2 if defended else 1,
        figsize=(2.2 + (2 if defended else 1) * panel, 1.3 + 0.42 * len(order)),
        sharey=True,
        squeeze=False,
    )
    top = max(20.0, float(drop.max().max()) if drop.notna().any().any() else 0.0)
    panels = [(axes[0][0], asr, 100.0, "ASR (%)")]
    if defended:
        panels.append((axes[0][1], drop, top, "CA drop vs none (points)"))
    for ax, values, vmax, name in panels:
        data = values.to_numpy(dtype=float)
        im = ax.imshow(data.clip(0, None), vmin=0, vmax=vmax, cmap="YlOrBr", aspect="auto")
        ax.set_xticks(range(len(attacks)), attacks, rotation=45, ha="right")
        ax.set_yticks(range(len(order)), names)
        ax.set_title(name, fontsize=10)
        for i in range(data.shape[0]):
            for j in range(data.shape[1]):
                v = data[i, j]
                if math.isnan(v):
                    continue
                dark = max(v, 0) > 0.6 * vmax
                text = f"{v:.0f}" if round(v) != 0 else "0"
                ax.text(
                    j,
                    i,
                    text,
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if dark else "black",
                )
        fig.colorbar(im, ax=ax, fraction=0.05, pad=0.02)
    fig.suptitle(f"{'ASR and CA drop' if defended else 'ASR'} · {title}", fontsize=11)
    return _save(fig, path)


def _panels(n: int):
    """A grid of small multiples (at most 5 a row) with room above for the title and below for
    the legend. Margins are fixed in inches (a layout engine costs more than the drawing)."""
    cols = min(5, n)
    rows = math.ceil(n / cols)
    width, height = 0.8 + 2.45 * cols, 1.5 + 2.2 * rows
    fig, axes = plt.subplots(
        rows, cols, figsize=(width, height), sharex=True, sharey=True, squeeze=False
    )
    fig.subplots_adjust(
        left=0.65 / width,
        right=1 - 0.15 / width,
        top=1 - 0.55 / height,
        bottom=0.95 / height,
        wspace=0.12,
        hspace=0.35,
    )
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig, axes


def _finish(fig, title: str, labels: list[str], style: dict[str, Style], path: Path) -> Path:
    fig.suptitle(title, fontsize=11, y=1 - 0.12 / fig.get_figheight(), va="top")
    handles = [
        plt.Line2D([], [], ls="", marker=style[lb].marker, color=style[lb].colour, ms=7)
        for lb in labels
    ]
    fig.legend(
        handles,
        [_short(lb) for lb in labels],
        loc="lower center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=min(len(labels), 6),
        fontsize=8,
        frameon=False,
    )
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ca_vs_asr(group: pd.DataFrame, title: str, path: Path, style: dict[str, Style]) -> Path:
    """One panel per attack: `none` and every defense at (ASR, CA), a line from `none` to each."""
    attacks = sorted(group[Col.attack].unique())
    order = rank_order(group)
    fig, axes = _panels(len(attacks))
    ca = 100 * group[Col.ca].astype(float)
    low = max(0.0, math.floor((ca.min() - 5) / 10) * 10) if ca.notna().any() else 0.0
    for ax, attack in zip(axes.flat, attacks, strict=False):
        cells = group[group[Col.attack] == attack].set_index(LABEL)
        base = cells[cells[Col.defense] == NONE]
        shown = [lb for lb in order if lb in cells.index]
        xs = 100 * cells.loc[shown, Col.asr].to_numpy(dtype=float)
        ys = 100 * cells.loc[shown, Col.ca].to_numpy(dtype=float)
        if len(base):
            x0, y0 = 100 * base[Col.asr].iloc[0], 100 * base[Col.ca].iloc[0]
            spokes = [[(x0, y0), (x, y)] for x, y in zip(xs, ys, strict=True)]
            ax.add_collection(LineCollection(spokes, colors="#BBBBBB", linewidths=0.8, zorder=1))
        for label, x, y in zip(shown, xs, ys, strict=True):
            s = style[label]
            ax.plot(
                [x],
                [y],
                ls="",
                marker=s.marker,
                color=s.colour,
                ms=7,
                mec="white",
                mew=0.5,
                zorder=3,
            )
        ax.set_title(attack, fontsize=10)
        ax.set_xlim(-5, 105)
        ax.set_ylim(low, 100)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("ASR (%)")
    for ax in axes[:, 0]:
        ax.set_ylabel("CA (%)")
    return _finish(fig, f"CA vs ASR · {title}", order, style, path)


def der_strip(group: pd.DataFrame, title: str, path: Path, style: dict[str, Style]) -> Path:
    """DER per defense in rank order: one small marker per attack, a bar at the mean."""
    order = [
        lb
        for lb in rank_order(group)
        if lb not in set(group.loc[group[Col.defense] == NONE, LABEL])
    ]
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.5 * len(order)))
    for i, label in enumerate(order):
        cells = group[group[LABEL] == label]
        s = style[label]
        y = len(order) - 1 - i
        ders = 100 * cells[DER].astype(float)
        ax.scatter(
            ders,
            [y] * len(cells),
            color=s.colour,
            marker=s.marker,
            s=28,
            alpha=0.75,
            zorder=3,
            edgecolor="white",
            linewidth=0.4,
        )
        with_ci = cells[(cells["n"] > 1) & cells["der_ci"].notna()]
        if len(with_ci):
            ax.errorbar(
                100 * with_ci[DER],
                [y] * len(with_ci),
                xerr=100 * with_ci["der_ci"],
                fmt="none",
                ecolor=s.colour,
                elinewidth=0.8,
                capsize=2,
            )
        mean = ders.mean()
        if not math.isnan(mean):
            ax.plot([mean, mean], [y - 0.32, y + 0.32], color=s.colour, lw=3, zorder=4)
            ax.annotate(f"{mean:.0f}", (mean, y + 0.32), fontsize=8, ha="center", va="bottom")
    ax.axvline(50, color=NONE_COLOUR, lw=1, ls="--")
    ax.set_yticks(range(len(order)), [f"{i + 1}. {_short(lb)}" for i, lb in enumerate(order)][::-1])
    ax.set_xlim(0, 100)
    ax.set_ylim(-0.6, len(order) - 0.3)
    ax.set_xlabel("DER (50 = no change, higher is better)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(f"DER · {title}", fontsize=11)
    return _save(fig, path)


def cost_vs_asr(group: pd.DataFrame, title: str, path: Path, style: dict[str, Style]) -> Path:
    return _save(cost_figure(group, title, style), path)


def cost_figure(group: pd.DataFrame, title: str, style: dict[str, Style]):
    """The ranking's score (mean CA-bounded ASR) against minutes to a defended model, `none`'s
    training time as a dashed line; a hollow marker is a defense that loses the model (more CA
    than the bound) on some attack. Labels are placed where they cover no marker or label."""
    ranks = ranking(group)
    minutes = group.assign(_min=group[Col.train_seconds].astype(float) / 60)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    base = minutes[minutes[Col.defense] == NONE]["_min"].mean()
    if not math.isnan(base):
        ax.axvline(base, color=NONE_COLOUR, lw=1, ls="--")
        ax.annotate(
            "none (training alone)",
            (base, 1),
            fontsize=8,
            color="#555555",
            xytext=(3, 0),
            textcoords="offset points",
        )
    points = ranks.dropna(subset=[SCORE, "minutes"]) if len(ranks) else ranks
    xy = []
    for _, r in points.iterrows():
        x, y, s = r["minutes"], 100 * r[SCORE], style[r[LABEL]]
        lost = int(r[OUTSIDE]) > 0
        ax.scatter(
            x,
            y,
            s=60,
            zorder=3,
            marker=s.marker,
            edgecolors=s.colour,
            facecolors="none" if lost else s.colour,
            linewidths=1.5,
        )
        xy.append((x, y, _short(r[LABEL]) + (" (loses CA)" if lost else "")))
    span = max([p[0] for p in xy] + [base if not math.isnan(base) else 0.0, 1e-9])
    ax.set_xlim(0, 1.25 * span)
    ax.set_ylim(0, 100)
    ax.set_xlabel("minutes to a defended model (mean per attack)")
    ax.set_ylabel("mean CA-bounded ASR (lower is better)")
    ax.grid(alpha=0.3)
    ax.set_title(f"Cost vs CA-bounded ASR · {title}", fontsize=11)
    with warnings.catch_warnings():  # the layout first: labels are placed in its pixels
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout()
    _place_labels(ax, xy)
    return fig


#: Where a label may go around its marker, in points: right, left, above, below, diagonals.
_SPOTS = ((7, -3), (-7, -3), (0, 8), (0, -14), (7, 7), (-7, 7), (7, -13), (-7, -13))


def _place_labels(ax, points: list[tuple[float, float, str]]) -> None:
    """Annotate each point at the first spot whose text box covers no marker and no label
    already placed (estimated in display pixels); else the least covered spot."""
    fig = ax.figure
    to_px = ax.transData.transform
    scale = fig.dpi / 72
    markers = [to_px((x, y)) for x, y, _ in points]
    taken: list[tuple[float, float, float, float]] = [
        (mx - 6 * scale, my - 6 * scale, mx + 6 * scale, my + 6 * scale) for mx, my in markers
    ]
    renderer = fig.canvas.get_renderer()
    for t in ax.texts:  # text already there (the baseline's note)
        b = t.get_window_extent(renderer)
        taken.append((b.x0, b.y0, b.x1, b.y1))
    frame = ax.get_window_extent()
    for (x, y, text), (mx, my) in zip(points, markers, strict=True):
        width, height = 4.6 * scale * len(text), 9 * scale

        def box(dx: float, dy: float, mx=mx, my=my, width=width, height=height):
            left = mx + dx * scale - (width if dx < 0 else width / 2 if dx == 0 else 0)
            bottom = my + dy * scale
            return (left, bottom, left + width, bottom + height)

        def cover(b) -> float:
            out = sum(
                max(0.0, min(b[2], t[2]) - max(b[0], t[0]))
                * max(0.0, min(b[3], t[3]) - max(b[1], t[1]))
                for t in taken
            )
            outside = b[0] < frame.x0 or b[2] > frame.x1 or b[1] < frame.y0 or b[3] > frame.y1
            return out + (1e6 if outside else 0.0)

        dx, dy = min(_SPOTS, key=lambda d: (cover(box(*d)) > 0, cover(box(*d))))
        taken.append(box(dx, dy))
        ax.annotate(
            text,
            (x, y),
            fontsize=8,
            xytext=(dx, dy),
            textcoords="offset points",
            ha="right" if dx < 0 else "center" if dx == 0 else "left",
            va="bottom",
        )


def common_attacks(table: pd.DataFrame) -> list[str]:
    """Attacks run at every ratio of a dataset and preset (the only ones a ratio plot may
    compare: a mean over different attack sets per ratio is not a trend)."""
    ratios = set(table[Col.ratio])
    per_attack = table.groupby(Col.attack)[Col.ratio].agg(set)
    return sorted(a for a, rs in per_attack.items() if rs == ratios)


def asr_vs_ratio(
    table: pd.DataFrame, attacks: list[str], title: str, path: Path, style: dict[str, Style]
) -> Path:
    """One panel per attack run at every ratio: ASR against the poison ratio per defense."""
    fig, axes = _panels(len(attacks))
    labels = rank_order(table)
    for ax, attack in zip(axes.flat, attacks, strict=False):
        cells = table[table[Col.attack] == attack]
        for label in labels:
            curve = cells[cells[LABEL] == label].sort_values(Col.ratio)
            if curve.empty:
                continue
            s = style[label]
            ax.plot(
                100 * curve[Col.ratio],
                100 * curve[Col.asr],
                color=s.colour,
                marker=s.marker,
                ms=5,
                lw=1.2,
            )
        ax.set_title(attack, fontsize=10)
        ax.set_ylim(-5, 105)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("poison ratio (%)")
    for ax in axes[:, 0]:
        ax.set_ylabel("ASR (%)")
    return _finish(fig, f"ASR vs poison ratio · {title}", labels, style, path)


HEATMAP_CAPTION = (
    "Left: ASR of each defense (row) against each attack (column), in percent; lower is better. "
    "Right: clean accuracy lost against the undefended model (none) of the same seed, in "
    "points; lower is better, and a negative number means CA rose. Rows in rank order."
)
BASELINE_CAPTION = (
    "ASR of the undefended model (none) against each attack, in percent: how well each attack "
    "works here. No defense ran on this table."
)
CA_VS_ASR_CAPTION = (
    "One panel per attack. Each marker is a defense at (ASR, CA); the grey circle is no defense "
    "and a thin line joins it to each defense, so the line shows what the defense changed. The "
    "best place is the top-left corner: high clean accuracy, low attack success."
)
DER_CAPTION = (
    "DER per defense, rows in rank order: each small marker is one attack, the thick bar (with "
    "its value) the mean over attacks, which the ranking uses. 50 (dashed) means no change; "
    "higher is better. Whiskers, where drawn, are 95% intervals over seeds (cells with one seed "
    "have none)."
)
COST_CAPTION = (
    "The ranking's score, the mean CA-bounded ASR (an attack on which the defense loses more "
    "than {bound} points of clean accuracy counts at the undefended model's ASR), against the "
    "minutes to a defended model (the defense's own work plus the undefended model it starts "
    "from; waits for other trials excluded). Hollow: loses the model on some attack. The "
    "dashed line is training without a defense. Down and to the left is better. "
    "Hardware: {device}."
)
RATIO_CAPTION = (
    "ASR against the poison ratio, one panel per attack that ran at every ratio ({attacks}); "
    "one line per defense; lower is better. Attacks run at only some ratios are left out, so "
    "every point of a line comes from the same attack."
)


#: File-name prefixes of the plots :func:`render_all` writes (others in the folder are not ours).
PREFIXES = (
    "asr_heatmap_",
    "ca_vs_asr_",
    "der_bars_",
    "cost_vs_asr_",
    "asr_vs_ratio_",
    "cost_vs_der_",  # written before the ranking counted clean accuracy: removed as stale
)


def remove_stale(plot_dir: Path, written: list[Figure]) -> list[Path]:
    """Delete plots an earlier render wrote that this one did not (a table that no longer
    exists, a ratio plot no longer drawn): a stale plot would contradict the tables."""
    keep = {f.path.name for f in written}
    stale = [
        p for p in plot_dir.glob("*.png") if p.name.startswith(PREFIXES) and p.name not in keep
    ]
    for p in stale:
        p.unlink()
    return stale


def render_all(
    agg: pd.DataFrame, plot_dir: Path, style: dict[str, Style] | None = None
) -> list[Figure]:
    """Every plot of the aggregated cells into ``plot_dir``; returns the figures written."""
    plot_dir.mkdir(parents=True, exist_ok=True)
    written: list[Figure] = []
    if agg.empty:
        return written
    style = styles(agg) if style is None else style
    agg = agg[~is_clean(agg)]  # the clean model is a column of the tables, not an attack
    for (dataset, preset, ratio), group in agg.groupby(GROUP, sort=True):
        title = f"{dataset} · {preset} · {100 * ratio:g}% poison"
        s = slug(dataset, preset, ratio)
        key = (str(dataset), str(preset), float(ratio))

        def add(path: Path, name: str, caption: str, key=key, title=title) -> None:
            written.append(Figure(path, f"{name} · {title}", caption, *key))

        defended = bool((group[Col.defense] != NONE).any())
        add(
            heatmaps(group, title, plot_dir / f"asr_heatmap_{s}.png"),
            "ASR and CA drop" if defended else "ASR without a defense",
            HEATMAP_CAPTION if defended else BASELINE_CAPTION,
        )
        if defended:
            add(
                ca_vs_asr(group, title, plot_dir / f"ca_vs_asr_{s}.png", style),
                "CA vs ASR",
                CA_VS_ASR_CAPTION,
            )
            add(der_strip(group, title, plot_dir / f"der_bars_{s}.png", style), "DER", DER_CAPTION)
            devices = "; ".join(sorted({d for d in group[Col.device] if d})) or "not recorded"
            add(
                cost_vs_asr(group, title, plot_dir / f"cost_vs_asr_{s}.png", style),
                "Cost vs CA-bounded ASR",
                COST_CAPTION.format(device=devices, bound=f"{100 * DEFAULT_MAX_DROP:g}"),
            )
    for (dataset, preset), table in agg.groupby([Col.dataset, Col.preset], sort=True):
        attacks = common_attacks(table) if table[Col.ratio].nunique() > 1 else []
        if not attacks:
            continue
        path = plot_dir / f"asr_vs_ratio_{_safe(f'{dataset}_{preset}')}.png"
        title = f"{dataset} · {preset}"
        asr_vs_ratio(table[table[Col.attack].isin(attacks)], attacks, title, path, style)
        caption = RATIO_CAPTION.format(attacks=", ".join(attacks))
        written.append(
            Figure(path, f"ASR vs poison ratio · {title}", caption, str(dataset), str(preset), None)
        )
    return written
