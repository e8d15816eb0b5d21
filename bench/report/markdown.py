"""``LEADERBOARD.md``: per table (dataset, preset, ratio) the defense x attack cells, the ranking
and detection metrics, with a note or footnote for everything that weakens a comparison
(superseded versions, baselines from another revision, dirty trees, cells left out).

Every string that can come from a plugin, a preset or a traceback goes through
:func:`~bench.report.text.md_escape`.
"""

from __future__ import annotations

import pandas as pd

from bench.report import decision, ranking_table
from bench.report.aggregate import (
    BASELINE_GIT_REV,
    BASELINE_OTHER_REV,
    CLEAN_RATIO,
    DETECTION,
    DIRTY,
    GROUP,
    LABEL,
    NO_BASELINE,
    NONE,
    REASON,
    SUPERSEDED_TRIALS,
    SUPERSEDED_VERSIONS,
    aggregate,
    in_table,
    ordered_defenses,
    skipped_cells,
    trial_table,
)
from bench.report.details import points
from bench.report.naming import dataset_name, holds, seeds_text
from bench.report.protocol import protocol
from bench.report.ranking_table import MARKS, marks
from bench.report.ranks import ranking
from bench.report.text import md_code, md_escape, md_table, pct
from bench.schema import ERROR, TIMEOUT, Col

#: Cell markers, each explained by a footnote under its table.
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")

INTRO = (
    "Cells are **CA / ASR / RA** in percent (clean accuracy / attack success rate / robust "
    "accuracy), means over seeds; with several seeds the ASR's 95% confidence interval and n "
    "follow. `mean` averages over attacks. DER (defense effectiveness rating, 0-100, 50 = no "
    "change) compares each trial with the `none` trial of the same spec (all but the defense) "
    "and seed; it is shown beside the worst-case ASR over the table's attacks and the CA "
    "change against `none` (points), and orders nothing: how defenses rank is said under each "
    "ranking (the CA-bounded ASR). Minutes: to a "
    "defended model (the defense's own work plus the undefended model it starts from, lock "
    "waits excluded); cost vs none: those seconds over the undefended model's, same device. "
    "Each cell shows one parameter version (the latest); rows that differ in anything but the "
    "seed are never pooled."
)


def cell_text(row: pd.Series) -> str:
    """'CA / ASR / RA' in percent; with several seeds, ASR carries its 95% CI and n."""
    text = f"{pct(row[Col.ca])} / {pct(row[Col.asr])} / {pct(row[Col.ra])}"
    if row["n"] > 1:
        text += f" (±{pct(row['asr_ci'])}, n={row['n']})"
    return text


def _superscript(i: int) -> str:
    return str(i).translate(_SUPERSCRIPT)


def _cells(group: pd.DataFrame, skipped: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    """Header and rows (escaped) of a table's defense x attack cells; a left-out cell reads
    N/A with the number of its reason (footnotes from :func:`_left_out_notes`)."""
    reasons = list(dict.fromkeys(skipped[REASON]))
    labels_of = (
        {d: sorted(set(g[LABEL])) for d, g in group.groupby(Col.defense)} if len(group) else {}
    )
    measured = {(r[LABEL], r[Col.attack]): r for _, r in group.iterrows()}
    left_out: dict[tuple[str, str], str] = {}
    for _, s in skipped.iterrows():
        for label in labels_of.get(s[Col.defense], [s[Col.defense]]):
            left_out[label, s[Col.attack]] = "N/A" + _superscript(reasons.index(s[REASON]) + 1)
    defenses = ordered_defenses([label for label, _ in [*measured, *left_out]])
    attacks = sorted({a for _, a in [*measured, *left_out]})
    rows = []
    for d in defenses:
        cells = []
        for a in attacks:
            if (d, a) in measured:
                r = measured[d, a]
                cells.append(cell_text(r) + marks(r))
            else:
                cells.append(left_out.get((d, a), "N/A"))
        sub = group[group[LABEL] == d] if len(group) else group
        mean = (
            " / ".join(pct(sub[c].mean()) for c in (Col.ca, Col.asr, Col.ra)) if len(sub) else "–"
        )
        rows.append([md_escape(d), *cells, mean])
    header = ["defense \\ attack", *(md_escape(a) for a in attacks), "mean"]
    return header, rows


def _header_lines(group: pd.DataFrame, skipped: pd.DataFrame, trials: pd.DataFrame) -> list[str]:
    models = ", ".join(sorted(group[Col.model].unique())) if len(group) else "–"
    sources = "; ".join(sorted({s for s in group[Col.data_source] if s})) if len(group) else "–"
    n = int(group["n"].sum()) if len(group) else 0
    seeds = seeds_text(group["n"]) if len(group) else "no seeds"
    lines = [
        f"Model: {md_escape(models)}. Data: {md_escape(sources)}. Trials: {n} ({seeds} per cell)."
    ]
    found = protocol(trials)
    if found.lines:
        facts = "; ".join(f"{k}: {v}" for k, v in found.lines)
        lines.append(f"Protocol: {md_escape(facts)}.")
    references = set(group[Col.reference] if len(group) else []) | set(skipped[Col.reference])
    named = sorted(references - {""})
    if named:
        which = ", ".join(md_code(r) for r in named)
        lines.append(
            f"Protocol: follows the published reference {which}; the reproduction section "
            "(`bench reproduce`) compares its cells with the published numbers."
        )
    if "" in references:
        some = "Rows without a reference are n" if named else "N"
        lines.append(
            f"{some}ot comparable with published numbers: the preset follows no published "
            "protocol (its rows name no `reference`). Compare rows within this table only."
        )
    if len(group) and group["reconstructed"].any():
        lines.append("(reconstructed): no official code exists; rebuilt from the paper.")
    if len(group) and group["plugin"].any():
        lines.append("\\[plugin: ...\\]: a defense from a third-party package, not the harness.")
    return lines


def _where(rows: pd.DataFrame) -> str:
    """'abl on badnets, blended; dbd on sig' (escaped)."""
    parts = []
    for label, g in rows.groupby(LABEL, sort=True):
        attacks = ", ".join(md_escape(a) for a in sorted(g[Col.attack].unique()))
        parts.append(f"{md_escape(label)} on {attacks}")
    return "; ".join(parts)


def _flag_notes(group: pd.DataFrame) -> list[str]:
    notes = []
    other = group[group[BASELINE_OTHER_REV]]
    if len(other):
        pairs = []
        for (rev, base), g in other.groupby([Col.git_rev, BASELINE_GIT_REV], sort=True):
            pairs.append(f"{_where(g)} (at {md_escape(rev)}; `none` at {md_escape(base)})")
        notes.append(
            f"{MARKS[BASELINE_OTHER_REV]} Scored against a `none` trial from another code "
            f"revision (no `none` from the same revision): {'; '.join(pairs)}."
        )
    dirty = group[group[DIRTY]]
    if len(dirty):
        revs = ", ".join(md_escape(r) for r in sorted(set(dirty[Col.git_rev])))
        notes.append(
            f"{MARKS[DIRTY]} From a working tree with uncommitted changes (or scored against a "
            f"baseline from one), so the code is not recoverable from git: {_where(dirty)} "
            f"({revs})."
        )
    missing = group[group[NO_BASELINE]]
    if len(missing):
        notes.append(
            f"{MARKS[NO_BASELINE]} No `none` trial with the same spec and seed, so no DER or "
            f"cost: {_where(missing)}."
        )
    return notes


def _superseded_note(group: pd.DataFrame) -> list[str]:
    old = group[group[SUPERSEDED_VERSIONS] > 0]
    if old.empty:
        return []
    versions, trials = int(old[SUPERSEDED_VERSIONS].sum()), int(old[SUPERSEDED_TRIALS].sum())
    return [
        f"Superseded: {versions} older parameter version(s) ({trials} trial(s)) of "
        f"{len(old)} cell(s) are not pooled with the numbers above, which show each cell's "
        f"latest version: {_where(old)}."
    ]


def _left_out_notes(skipped: pd.DataFrame) -> list[str]:
    notes = []
    for i, reason in enumerate(dict.fromkeys(skipped[REASON]), start=1):
        cells = skipped[skipped[REASON] == reason]
        attacks = ", ".join(md_escape(a) for a in sorted(cells[Col.attack].unique()))
        notes.append(f"N/A{_superscript(i)} Left out of the grid ({attacks}): {md_escape(reason)}")
    return notes


def _ranking_table(group: pd.DataFrame, rk: pd.DataFrame) -> list[str]:
    """The ranking as :mod:`bench.report.ranking_table` declares it (the page renders the same
    declaration): the pinned baseline, then the defenses."""
    rows = []
    for r in ranking_table.table_rows(group, rk):
        cells = []
        for c in ranking_table.COLUMNS:
            text = md_escape(c.text(r))
            if c.key == ranking_table.NAME:
                text += marks(r) + (" (no defense)" if r[ranking_table.IS_BASELINE] else "")
            elif aside := c.aside(r):
                text += f" ({md_escape(aside)})"
            cells.append(text)
        rows.append(cells)
    return md_table([md_escape(c.label) for c in ranking_table.COLUMNS], rows, escape=False)


def _detection_table(group: pd.DataFrame) -> list[str]:
    flagged = group[group[Col.det_tpr].notna()]
    if flagged.empty:
        return []
    return [
        "",
        "Poisoned-sample detection (flagged training samples vs the hidden poison mask):",
        "",
        *md_table(
            [Col.defense, Col.attack, "TPR", "FPR", "precision", "F1", "AUROC"],
            [
                [r[LABEL], r[Col.attack], *(pct(r[c]) for c in DETECTION)]
                for _, r in flagged.iterrows()
            ],
        ),
    ]


def _section(
    key: tuple,
    group: pd.DataFrame,
    skipped: pd.DataFrame,
    ranks: pd.DataFrame,
    trials: pd.DataFrame,
):
    dataset, preset, ratio = key
    title = f"## {md_escape(dataset)} · preset {md_code(preset)} · poison ratio {ratio:g}"
    if len(group):
        title += f": {md_escape(holds(group, ratio))}"
    out = [title, ""]
    out += [*_header_lines(group, skipped, trials), ""]
    header, rows = _cells(group, skipped)
    out += md_table(header, rows, escape=False)
    notes = _left_out_notes(skipped)
    if len(group):
        notes += [*_flag_notes(group), *_superseded_note(group)]
    if notes:
        out += ["", *(f"{n}  " for n in notes[:-1]), notes[-1]]
    if len(group) and ratio == CLEAN_RATIO:
        out += ["", ranking_table.CLEAN_NOTE]
        out += _detection_table(group)
    elif len(group):
        rk = in_table(ranks, key)
        if rk.empty:
            out += [
                "",
                "Only the undefended baseline (`none`) ran on this table: nothing to rank. Its "
                "cells show how well each attack works without a defense.",
            ]
        else:
            out += ["", f"Ranking. {ranking_table.INTRO}", "", *_ranking_table(group, rk)]
        out += _detection_table(group)
    out.append("")
    return out


def _tied(labels: list[str]) -> str:
    return f" (tied: {', '.join(labels)})" if labels else ""


def decision_section(agg: pd.DataFrame, max_drop: float = decision.DEFAULT_MAX_DROP) -> list[str]:
    """'Which defense?': per dataset and preset, the best defense per attack and per family
    under the CA-drop bound (:mod:`bench.report.decision`)."""
    bound = f"{100 * max_drop:g}"
    out = [
        "## Which defense?",
        "",
        f"Per attack, the defense with the lowest ASR among those losing at most {bound} points "
        "of clean accuracy against `none` of the same seed (ties: the smaller loss, then the "
        "faster); per family (`all`), the defense within the bound on every attack of the "
        "family with the lowest mean ASR, and its worst attack. Tied: defenses the pick is not "
        "told apart from (95% intervals overlap; with one seed, ASR within "
        f"{100 * decision.NO_INTERVAL_RESOLUTION:g} points). The page (`index.html`) lets "
        "you change the bound.",
        "",
    ]
    for board in decision.boards(agg):
        cells = agg[
            (agg[Col.dataset] == board[Col.dataset]) & (agg[Col.preset] == board[Col.preset])
        ]
        out.append(
            f"### {md_escape(dataset_name(board[Col.dataset]))} · preset "
            f"{md_code(board[Col.preset])} ({seeds_text(cells['n'])})"
        )
        out.append("")
        if not board["defended"]:
            out += ["No defense ran here (only `none`): nothing to choose from.", ""]
            continue
        rows = []
        for g in board["groups"]:
            group = f"{g['family']}, {100 * g[Col.ratio]:g}%"
            if len(g["attacks"]) > 1:
                f = decision.family_best(g, max_drop)
                rows.append(
                    [group, f"all {len(g['attacks'])}"]
                    + (
                        [
                            f["label"] + _tied(f["ties"]),
                            f"{pct(f['mean_asr'])} (worst {pct(f['worst_asr'])}, "
                            f"{f['worst_attack']})",
                            points(f["mean_d_ca"]),
                            points(f["clean_d_ca"]),
                            "",
                            _minutes(f["minutes"]),
                        ]
                        if f
                        else [f"none within {bound} points on every attack", "", "", "", "", ""]
                    )
                    + [""]
                )
            for a in g["attacks"]:
                o = decision.best(a, max_drop)
                base = a[NONE]
                none = f"{pct(base[Col.ca])} / {pct(base[Col.asr])}" if base else "–"
                if o:
                    cells_ = [
                        o["label"] + _tied([t["label"] for t in decision.ties(a, max_drop)]),
                        pct(o[Col.asr])
                        + (
                            f" ±{pct(o['asr_ci'])} (n={o['n']})"
                            if o["n"] > 1 and o["asr_ci"] is not None
                            else ""
                        ),
                        points(o["d_ca"]),
                        points(o["clean_d_ca"]),
                        pct(o[Col.ra]),
                        _minutes(o["minutes"]),
                    ]
                else:
                    cells_ = [f"none within {bound} points", "", "", "", "", ""]
                rows.append([group, a[Col.attack], *cells_, none])
        out += md_table(
            [
                "family",
                Col.attack,
                "best defense",
                "ASR",
                "CA change",
                "CA change, clean model",
                "RA",
                "minutes",
                "none: CA / ASR",
            ],
            rows,
        )
        out.append("")
    return out


def _minutes(m: float | None) -> str:
    return "–" if m is None else f"{m:.1f}"


def render_markdown(
    df: pd.DataFrame, agg: pd.DataFrame | None = None, reproduction: str = ""
) -> str:
    """The whole of LEADERBOARD.md; ``reproduction`` is the section
    :func:`bench.report.reproduce.render_markdown` wrote ('' for none)."""
    agg = aggregate(df) if agg is None else agg
    skipped = skipped_cells(df)
    ranks = ranking(agg)
    out = ["# Backdoor defense leaderboard", "", INTRO, ""]
    if agg.empty:
        out += ["No successful trials yet. Run `bench run --preset quick`.", ""]
    else:
        out += decision_section(agg)
    trials = trial_table(df)
    keys = set()
    for table in (agg, skipped):
        if len(table):
            keys |= set(table[GROUP].itertuples(index=False, name=None))
    for key in sorted(keys):
        out += _section(
            key, in_table(agg, key), in_table(skipped, key), ranks, in_table(trials, key)
        )
    if reproduction:
        out += [reproduction.rstrip("\n"), ""]
    failed = df[df[Col.status].isin([ERROR, TIMEOUT])]
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
