"""The self-contained leaderboard page (``results/index.html``): no server, no network, no
external asset.

Read top to bottom it answers the reader's question first: *which defense, against which
attack, at what cost*. The decision view (best defense per attack and per attack family under a
bound on the clean accuracy lost) comes first; then one section per table with its protocol,
the ranking (worst case and cost beside the mean) and every cell; then the reproduction against
published numbers, the failed trials, the methods' papers and code, and the attack gallery.

Tables are rendered here with every string escaped; plots are embedded as data URIs; a small
inline script (allowed by a per-page nonce in the Content-Security-Policy, so nothing injected
could run) sorts, filters, keeps the state in the URL, fills the decision view and shows a
cell's details, putting text in the document with ``textContent`` only.
"""

from __future__ import annotations

import base64
import html
import json
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from bench.report import catalog, decision, ranking_table, threat
from bench.report.aggregate import (
    BASELINE_OTHER_REV,
    CELL,
    CLEAN_RATIO,
    DER,
    DIRTY,
    GROUP,
    LABEL,
    NO_BASELINE,
    NONE,
    RANK,
    REASON,
    SUPERSEDED_TRIALS,
    SUPERSEDED_VERSIONS,
    in_table,
    is_clean,
    trial_table,
)
from bench.report.details import (
    cell_details,
    is_missing,
    log_path,
    meanings,
    minutes,
    points,
)
from bench.report.naming import (
    DATASET_NAMES,
    dataset_name,
    families,
    plural,
    seeds_text,
    short_title,
    table_title,
)
from bench.report.page_assets import CSS, JS
from bench.report.plots import Figure, Style, rank_order
from bench.report.protocol import protocol
from bench.report.ranking_table import MARKS
from bench.report.reproduce import COLLAPSED_CA, PUB, Reproduction, render_html
from bench.report.text import pct
from bench.report.verdict import SUCCESS_ASR
from bench.schema import ERROR, TIMEOUT, Col

esc = html.escape

#: Matplotlib markers as text glyphs, so a table row shows its defense's plot marker.
GLYPHS = {
    "o": "●",
    "s": "■",
    "^": "▲",
    "v": "▼",
    "D": "◆",
    "P": "✚",
    "X": "✖",
    "*": "★",
    "h": "⬢",
    "<": "◀",
    ">": "▶",
    "p": "⬟",
    "H": "⬢",
    "8": "⬣",
    "d": "◆",
}
#: Cell markers, as in LEADERBOARD.md.


def _num(x: Any) -> str:
    """A data-v sort value ('' when missing)."""
    return "" if is_missing(x) else f"{float(x):.6g}"


def _json_for_script(obj: object) -> str:
    """JSON that cannot close its <script> element or open a comment."""
    text = json.dumps(obj, default=str, allow_nan=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _glyph(label: str, style: dict[str, Style]) -> str:
    s = style.get(label)
    if s is None:
        return ""
    return (
        f'<span class="glyph" style="color:{esc(s.colour)}" aria-hidden="true">'
        f"{GLYPHS.get(s.marker, '●')}</span>"
    )


def _badges(row: pd.Series) -> str:
    out = []
    if row["plugin"]:
        package = esc(str(row[Col.defense_package]))
        out.append(f'<span class="badge plugin">plugin: {package}</span>')
    return " ".join(out)


def _marks(row: pd.Series) -> str:
    found = "".join(m for flag, m in MARKS.items() if bool(row.get(flag, False)))
    return f'<sup class="mark">{found}</sup>' if found else ""


def _th(text: str, key: str, kind: str, title: str = "", order: str = "none", cls: str = "") -> str:
    """A sortable header: a button (keyboard-operable) inside a th with aria-sort (``cls``
    "name": the header of the sticky name column)."""
    tip = f' title="{esc(title)}"' if title else ""
    klass = f' class="{cls}"' if cls else ""
    return (
        f'<th scope="col"{klass} aria-sort="{order}" data-key="{esc(key)}" '
        f'data-sort="{kind}"{tip}>'
        f'<button type="button" class="sort">{text}</button></th>'
    )


# --------------------------------------------------------------------------- one table


class _Ctx:
    """What every section needs: trials per cell, cell ids, details, styles, published."""

    def __init__(self, df, trials, style, published):
        self.recorded = [str(c) for c in df.columns]
        self.trials = trials
        self.code_revision = ""
        self.by_cell = dict(tuple(trials.groupby(CELL))) if len(trials) else {}
        self.style = style
        self.published = published
        self.details: dict[str, dict] = {}
        self.ids: dict[tuple, str] = {}

    def cell_id(self, key: tuple) -> str:
        if key not in self.ids:
            self.ids[key] = f"c{len(self.ids)}"
        return self.ids[key]


def _cell_td(ctx: _Ctx, key: tuple, r: pd.Series) -> str:
    cid = ctx.cell_id(key)
    trials = ctx.by_cell.get(key, pd.DataFrame())
    ctx.details[cid] = cell_details(r, trials, ctx.recorded, ctx.published.get(key, ""))
    n = int(r["n"])
    ca, asr, ra = pct(r[Col.ca]), pct(r[Col.asr]), pct(r[Col.ra])
    ci = f' <span class="ci">±{pct(r["asr_ci"])} n={n}</span>' if n > 1 else ""
    label = f"{key[3]} against {key[4]}: CA {ca}, ASR {asr}, RA {ra} percent. Open details."
    return (
        f'<td class="cell" data-v="{_num(r[Col.asr])}">'
        f'<button type="button" class="open" data-cell="{cid}" aria-label="{esc(label)}">'
        f"{ca} / <b>{asr}</b> / {ra}{ci}{_marks(r)}</button></td>"
    )


def _ranking_table(tid: str, group: pd.DataFrame, ranks: pd.DataFrame, ctx: _Ctx) -> str:
    """The ranking as :mod:`bench.report.ranking_table` declares it (the markdown renders the
    same declaration), with sort values, glyphs and plugin badges."""
    head = "".join(
        _th(c.label, c.key, "num" if c.numeric else "text", c.help,
            order="ascending" if c.key == RANK else "none",
            cls="name" if c.key == ranking_table.NAME else "")
        for c in ranking_table.COLUMNS
    )  # fmt: skip
    rows = []
    for r in ranking_table.table_rows(group, ranks):
        label = str(r[LABEL])
        first = group[group[LABEL] == label].iloc[0]
        baseline = bool(r[ranking_table.IS_BASELINE])
        cells = []
        for c in ranking_table.COLUMNS:
            if c.key == ranking_table.NAME:
                extra = ' <span class="muted">(no defense)</span>' if baseline else ""
                if not baseline and int(r[ranking_table.OUTSIDE]):
                    extra += (
                        f' <span class="badge lost" title="{esc(ranking_table.bound_text(r))} '
                        f'attacks">loses CA</span>'
                    )
                cells.append(
                    f'<th scope="row" class="name" data-v="{esc(label.lower())}">'
                    f"{_glyph(label, ctx.style)}{esc(label)}{_marks(r)}{extra} "
                    f"{_badges(first)}</th>"
                )
                continue
            text, aside = esc(c.text(r)), c.aside(r)
            if c.key == DER and not baseline:
                text = f"<b>{text}</b>"
            if aside:
                text += f' <span class="muted">{esc(aside)}</span>'
            value = "" if baseline and c.key == RANK else _num(r[c.key])
            cells.append(f'<td data-v="{value}">{text}</td>')
        pinned = ' class="pinned"' if baseline else ""
        rows.append(f'<tr{pinned} data-defense="{esc(label.lower())}">{"".join(cells)}</tr>')
    return (
        f'<h3>Ranking</h3><p class="note">{esc(ranking_table.INTRO)}</p>'
        f'<div class="scroll"><table class="lb rank" id="{tid}" aria-label="ranking">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
        f'<tr class="nomatch" hidden><td colspan="{len(ranking_table.COLUMNS)}">'
        "No defense matches the filter.</td></tr></tbody></table></div>"
    )


def _minutes(seconds: Any) -> str:
    return minutes(seconds).removesuffix(" min")


def _matrix_table(
    tid: str, key: tuple, group: pd.DataFrame, order: list[str], ranks: pd.DataFrame, ctx: _Ctx
) -> str:
    attacks = sorted(group[Col.attack].unique())
    rank_of = ranking_table.rank_texts(ranks)
    head = _th("rank", RANK, "num", order="ascending")
    head += _th(Col.defense, Col.defense, "text", cls="name")
    head += "".join(_th(esc(a), f"asr:{a}", "num", f"sort by ASR against {a}") for a in attacks)
    head += _th("mean", "mean", "num", "mean over attacks (sorts by mean ASR)")
    rows = []
    for label in order:
        cells = group[group[LABEL] == label]
        by_attack = {r[Col.attack]: r for _, r in cells.iterrows()}
        first = cells.iloc[0]
        pinned = first[Col.defense] == NONE
        rank = "–" if pinned else rank_of.get(label, "–")
        value = "" if pinned else rank.rstrip("=").replace("–", "")
        tds = [
            f'<td data-v="{value}">{rank}</td>',
            f'<th scope="row" class="name" data-v="{esc(label.lower())}">'
            f"{_glyph(label, ctx.style)}{esc(label)} {_badges(first)}</th>",
        ]
        for a in attacks:
            if a not in by_attack:
                tds.append('<td data-v="" class="na">N/A</td>')
                continue
            tds.append(_cell_td(ctx, (*key, label, a), by_attack[a]))
        mean = " / ".join(pct(cells[c].mean()) for c in (Col.ca, Col.asr, Col.ra))
        tds.append(f'<td data-v="{_num(cells[Col.asr].mean())}" class="mean">{mean}</td>')
        cls = ' class="pinned"' if pinned else ""
        rows.append(f'<tr{cls} data-defense="{esc(label.lower())}">{"".join(tds)}</tr>')
    cols = len(attacks) + 3
    return (
        '<h3>Every cell</h3><p class="note">CA / <b>ASR</b> / RA in percent (clean accuracy, '
        "attack success, robust accuracy); rows in rank order; a header sorts. Open a cell for "
        "its seeds, times, logs and parameters.</p>"
        f'<div class="scroll"><table class="lb matrix" id="{tid}" aria-label="every cell">'
        f"<thead><tr>{head}</tr></thead><tbody>{''.join(rows)}"
        f'<tr class="nomatch" hidden><td colspan="{cols}">No defense matches the filter.</td>'
        "</tr></tbody></table></div>"
    )


def _protocol_block(trials: pd.DataFrame) -> str:
    found = protocol(trials)
    if not found.lines:
        return ""
    summary = " · ".join(esc(v) for v in found.summary if v)
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in found.lines)
    return (
        f'<details class="protocol"><summary><b>Protocol</b>: {summary} '
        '<span class="muted">(all details)</span></summary>'
        f"<dl>{items}</dl></details>"
    )


def _notes(group: pd.DataFrame, skipped: pd.DataFrame) -> list[str]:
    """Footnotes of a table (escaped HTML): flags, superseded versions, cells left out."""
    notes = []

    def where(rows: pd.DataFrame) -> str:
        return "; ".join(
            f"{esc(label)} on {esc(', '.join(sorted(g[Col.attack].unique())))}"
            for label, g in rows.groupby(LABEL, sort=True)
        )

    other = group[group[BASELINE_OTHER_REV]]
    if len(other):
        notes.append(
            "† Scored against a <code>none</code> trial from another code revision (none from "
            f"the same revision exists): {where(other)}."
        )
    dirty = group[group[DIRTY]]
    if len(dirty):
        revs = esc(", ".join(sorted(set(dirty[Col.git_rev]))))
        notes.append(
            "‡ From a working tree with uncommitted changes (or scored against a baseline from "
            f"one), so the code is not recoverable from git: {where(dirty)} ({revs})."
        )
    missing = group[group[NO_BASELINE]]
    if len(missing):
        notes.append(
            "§ No <code>none</code> trial with the same spec and seed, so no DER, CA change or "
            f"cost: {where(missing)}."
        )
    old = group[group[SUPERSEDED_VERSIONS] > 0]
    if len(old):
        notes.append(
            f"Superseded: {int(old[SUPERSEDED_VERSIONS].sum())} older parameter version(s) "
            f"({int(old[SUPERSEDED_TRIALS].sum())} trial(s)) are not pooled with the numbers "
            f"above, which show each cell's latest version: {where(old)}."
        )
    for reason, cells in skipped.groupby(REASON, sort=False) if len(skipped) else []:
        attacks = esc(", ".join(sorted(cells[Col.attack].unique())))
        notes.append(f"N/A: left out of the grid ({attacks}): {esc(str(reason))}")
    named = sorted(set(group[Col.reference]) - {""})
    if named:
        notes.append(
            f"Protocol follows the published reference {esc(', '.join(named))}: see the "
            'reproduction section (<a href="#reproduction">below</a>).'
        )
    if "" in set(group[Col.reference]):
        notes.append(
            "Not comparable with published numbers: the preset follows no published protocol. "
            "Compare rows within this table only."
        )
    return notes


def _figures(figures: list[Figure]) -> str:
    out = []
    for f in figures:
        data = base64.b64encode(f.path.read_bytes()).decode()
        out.append(
            f'<figure><button type="button" class="zoom" aria-label="enlarge: {esc(f.title)}">'
            f'<img alt="{esc(f.title)}" src="data:image/png;base64,{data}"></button>'
            f"<figcaption><b>{esc(f.title)}.</b> {esc(f.caption)}</figcaption></figure>"
        )
    return f'<div class="plots">{"".join(out)}</div>' if out else ""


def _section(
    i: int,
    key: tuple,
    group: pd.DataFrame,
    ranks: pd.DataFrame,
    skipped: pd.DataFrame,
    figures: list[Figure],
    ctx: _Ctx,
) -> str:
    dataset, preset, ratio = key
    order = rank_order(group)
    attacks = sorted(group[Col.attack].unique())
    defended = sorted(set(group.loc[group[Col.defense] != NONE, LABEL]))
    mine = [t for k, t in ctx.by_cell.items() if k[:3] == key]
    trials = pd.concat(mine) if mine else pd.DataFrame()
    sub = (
        f"{plural(len(attacks), Col.attack)}: {', '.join(attacks)} · "
        f"{plural(len(defended), Col.defense) if defended else 'no defense'} · "
        f"{seeds_text(group['n'])}"
    )
    parts = [
        f'<section class="board" id="t{i}" data-dataset="{esc(str(dataset))}" '
        f'data-preset="{esc(str(preset))}" data-ratio="{esc(f"{ratio:g}")}">',
        f"<h2>{esc(table_title(dataset, preset, ratio, group))}</h2>",
        f'<p class="sub">{esc(sub)}</p>',
        _protocol_block(trials),
    ]
    if ratio == CLEAN_RATIO:
        parts.append(f'<p class="note">{esc(ranking_table.CLEAN_NOTE)}</p>')
    elif not defended:
        parts.append(
            '<p class="warn">Only the undefended baseline (<code>none</code>) ran on this '
            "table: there is nothing to rank. Its cells show how well each attack works "
            "without a defense.</p>"
        )
    else:
        parts.append(_ranking_table(f"rk{i}", group, ranks, ctx))
    parts.append(_matrix_table(f"mx{i}", key, group, order, in_table(ranks, key), ctx))
    notes = _notes(group, skipped)
    if notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{n}</li>" for n in notes) + "</ul>")
    parts.append(_detection(group))
    parts.append(_figures(figures))
    parts.append("</section>")
    return "".join(parts)


def _detection(group: pd.DataFrame) -> str:
    flagged = group[group[Col.det_tpr].notna()]
    if flagged.empty:
        return ""
    rows = "".join(
        f'<tr><th scope="row">{esc(str(r[LABEL]))}</th><td>{esc(str(r[Col.attack]))}</td>'
        + "".join(
            f"<td>{pct(r[c])}</td>"
            for c in (Col.det_tpr, Col.det_fpr, Col.det_precision, Col.det_f1, Col.det_auroc)
        )
        + "</tr>"
        for _, r in flagged.iterrows()
    )
    return (
        '<details class="detection"><summary>Poisoned-sample detection: training samples the '
        "defenses flagged, against the hidden poison mask</summary>"
        '<div class="scroll"><table class="lb plain"><thead><tr><th>defense</th><th>attack</th>'
        "<th>TPR</th><th>FPR</th><th>precision</th><th>F1</th><th>AUROC</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></details>"
    )


# --------------------------------------------------------------------------- decision view


def _decision(agg: pd.DataFrame, ctx: _Ctx) -> tuple[str, list[dict]]:
    """The decision view's containers (the script fills them from the returned data)."""
    boards = decision.boards(agg)
    out = []
    for b in boards:
        for g in b["groups"]:
            for a in g["attacks"]:
                for o in [a["none"], *a["options"]] if a["none"] else a["options"]:
                    o["cell"] = ctx.ids.get(
                        (b[Col.dataset], b[Col.preset], g[Col.ratio], o["label"], a[Col.attack])
                    )
        cells = agg[(agg[Col.dataset] == b[Col.dataset]) & (agg[Col.preset] == b[Col.preset])]
        devices = sorted({d for d in cells[Col.device] if d})
        b[Col.device] = devices[0] if len(devices) == 1 else ""
        title = f"{dataset_name(b[Col.dataset])} · preset {b[Col.preset]}"
        sub = f"{seeds_text(cells['n'])} · hardware: {'; '.join(devices) or 'not recorded'}"
        trials = ctx.trials
        if len(trials):
            trials = trials[
                (trials[Col.dataset] == b[Col.dataset]) & (trials[Col.preset] == b[Col.preset])
            ]
        out.append(
            f'<div class="decide" data-dataset="{esc(b[Col.dataset])}" '
            f'data-preset="{esc(b[Col.preset])}"><h3>{esc(title)}</h3>'
            f'<p class="sub">{esc(sub)}</p>{_board_facts(trials, ctx.code_revision)}'
            + (
                '<div class="scroll"><table class="lb decision" '
                'aria-label="best defense per attack"><thead><tr>'
                '<th scope="col">attack</th><th scope="col">best defense</th>'
                '<th scope="col">ASR</th><th scope="col">CA change</th>'
                '<th scope="col" title="the same defense on a model trained without poisoning, '
                'against none on it">CA change, clean model</th><th scope="col">RA</th>'
                '<th scope="col">minutes</th><th scope="col">no defense: CA / ASR</th>'
                f"</tr></thead><tbody>{_decision_body(b, decision.DEFAULT_MAX_DROP, ctx)}"
                "</tbody></table></div>"
                if b["defended"]
                else '<p class="warn">No defense ran here (only <code>none</code>): nothing '
                "to choose from.</p>"
            )
            + "</div>"
        )
    return "".join(out), boards


def _board_facts(trials: pd.DataFrame, code_revision: str = "") -> str:
    """What the picks below rest on, before the table: the data, the budget, the clean data
    each defense was given (a defense with 1,000 clean images and one with none are not on
    equal footing), and the record's code revision and precision (with the code's, where the
    record is from another)."""
    if trials.empty:
        return ""
    facts = protocol(trials)
    data = "; ".join(dict.fromkeys(str(v) for v in trials[Col.data_source].dropna() if v))
    need = threat.clean_need(trials)
    items = [
        ("images", data or "not recorded"),
        ("budget", ", ".join(facts.summary[:3])),
        *([("clean data given", need)] if need else []),
        ("record", _record_text(trials, code_revision)),
    ]
    return (
        '<ul class="facts">'
        + "".join(f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in items)
        + "</ul>"
    )


def _record_text(trials: pd.DataFrame, code_revision: str) -> str:
    revisions = sorted({str(r) for r in trials[Col.git_rev].dropna() if r})
    precisions = sorted({str(p) for p in trials[Col.precision_used].dropna() if p})
    text = (
        f"code revision {', '.join(revisions) or 'not recorded'}, "
        f"precision {', '.join(precisions) or 'not recorded'}"
    )
    if code_revision and revisions and code_revision not in revisions:
        text += (
            f"; this page was rendered by revision {code_revision}: trials whose attack or "
            "defense changed since are rerun by bench run (their revision is in the trial id)"
        )
    return text


def _works_td(asr: float | None, extra: str = "") -> str:
    """An ASR cell, orange where the backdoor survives (as the script's ``asrCell``)."""
    if asr is not None and asr >= SUCCESS_ASR:
        tip = f"the backdoor still works: ASR of {round(100 * SUCCESS_ASR)}% or more"
        return f'<td class="works" title="{esc(tip)}">{pct(asr)}{extra}</td>'
    return f"<td>{pct(asr)}{extra}</td>"


def _pick(label: str, cell: str | None, ctx: _Ctx) -> str:
    """A chosen defense's name (a button opening its cell where it has one)."""
    st = ctx.style.get(label)
    glyph = (
        f'<span class="glyph" aria-hidden="true" style="color:{esc(st.colour)}">'
        f"{GLYPHS.get(st.marker, '●')}</span>"
        if st
        else ""
    )
    if cell:
        return (
            f'<button type="button" class="open" data-cell="{esc(cell)}" '
            f'data-label="{esc(label)}">{glyph}{esc(label)}</button>'
        )
    return f'<span data-label="{esc(label)}">{glyph}{esc(label)}</span>'


def _ci_text(option: dict) -> str:
    """The ASR's 95% interval over seeds beside a pick (as the script's ``ciText``)."""
    if option["n"] > 1 and option["asr_ci"] is not None:
        return f'<span class="ci"> ±{pct(option["asr_ci"])} n={option["n"]}</span>'
    return ""


def _tied_note(labels: list[str]) -> str:
    return f'<span class="tied">tied: {esc(", ".join(labels))}</span>' if labels else ""


def _decision_body(board: dict, max_drop: float, ctx: _Ctx) -> str:
    """The decision table's rows at the default bound, in the HTML itself (readable without
    JavaScript; the script redraws the same rows when the bound or the filters change)."""
    bound = f"{100 * max_drop:g}"
    rows = []
    for g in board["groups"]:
        ratio = f"{round(g[Col.ratio] * 10000) / 100:g}%"
        rows.append(
            f'<tr class="family"><th colspan="8" scope="colgroup" '
            f'title="{esc(catalog.FAMILY_MEANING.get(g["family"], ""))}">'
            f'<span class="fam">{esc(g["family"])} attacks</span>'
            f'<span class="muted"> · {esc(ratio)} poison</span></th></tr>'
        )
        if len(g["attacks"]) > 1:
            f = decision.family_best(g, max_drop)
            head = (
                f'<th scope="row" title="the best defense against every attack of the family '
                f'(means)">all {len(g["attacks"])} (mean)</th>'
            )
            if f:
                worst = f"worst {pct(f['worst_asr'])} {f['worst_attack']}"
                body = (
                    f'<td class="best">{_pick(f["label"], None, ctx)}{_tied_note(f["ties"])}</td>'
                    + _works_td(f["mean_asr"], f'<span class="worst">{esc(worst)}</span>')
                    + f"<td>{points(f['mean_d_ca'])}</td>"
                    + f"<td>{points(f['clean_d_ca'])}</td><td></td>"
                    + f"<td>{_minutes_text(f['minutes'])}</td>"
                )
            else:
                body = (
                    f'<td class="best" colspan="6"><span class="muted">none within {bound} '
                    "points on every attack</span></td>"
                )
            rows.append(f'<tr class="summary">{head}{body}<td></td></tr>')
        for a in g["attacks"]:
            o = decision.best(a, max_drop)
            if o:
                tied = [t["label"] for t in decision.ties(a, max_drop)]
                minutes_tip = "" if board[Col.device] else f' title="{esc(o[Col.device])}"'
                body = (
                    f'<td class="best">{_pick(o["label"], o.get("cell"), ctx)}'
                    f"{_tied_note(tied)}</td>"
                    + _works_td(o[Col.asr], _ci_text(o))
                    + f"<td>{points(o['d_ca'])}</td><td>{points(o['clean_d_ca'])}</td>"
                    + f"<td>{pct(o[Col.ra])}</td>"
                    + f"<td{minutes_tip}>{_minutes_text(o['minutes'])}</td>"
                )
            else:
                low = a["options"][0] if a["options"] else None
                lowest = (
                    '<span class="muted"> (lowest ASR: </span>'
                    f"{_pick(low['label'], low.get('cell'), ctx)}"
                    f'<span class="muted"> {pct(low[Col.asr])}, CA {points(low["d_ca"])})</span>'
                    if low
                    else ""
                )
                body = (
                    f'<td class="best" colspan="6"><span class="muted">none within {bound} '
                    f"points</span>{lowest}</td>"
                )
            none = a[NONE]
            base = f"{pct(none[Col.ca])} / {pct(none[Col.asr])}" if none else "–"
            rows.append(
                f'<tr><th scope="row">{esc(a[Col.attack])}</th>{body}'
                f'<td class="base">{base}</td></tr>'
            )
    return "".join(rows)


def _minutes_text(m: float | None) -> str:
    """Minutes as the script's ``mins`` writes them."""
    if m is None:
        return "–"
    return f"{m:.1f}" if m < 100 else str(round(m))


def _family_legend(agg: pd.DataFrame) -> str:
    if agg.empty:
        return ""
    found = set(families(agg))
    items = "; ".join(
        f"<b>{esc(f)}</b>: {esc(catalog.FAMILY_MEANING[f])}" for f in catalog.FAMILIES if f in found
    )
    return f'<p class="note">Attack families. {items}.</p>'


# --------------------------------------------------------------------------- other sections


def _failed(df: pd.DataFrame) -> str:
    failed = df[df[Col.status].isin([ERROR, TIMEOUT])]
    if failed.empty:
        return (
            '<section id="failed"><h2>Failed trials</h2><p class="note">None: every trial '
            "that ran succeeded.</p></section>"
        )
    rows = []
    for _, r in failed.iterrows():
        error = str(r[Col.error]).strip()
        last = (error.splitlines() or [""])[-1]
        rows.append(
            f'<tr><th scope="row"><code>{esc(str(r[Col.trial_id]))}</code></th>'
            f"<td>{esc(dataset_name(str(r[Col.dataset])))} · {esc(str(r[Col.preset]))} · "
            f"{_pct_ratio(r[Col.ratio])}</td><td>{esc(str(r[Col.attack]))}</td>"
            f"<td>{esc(str(r[Col.defense]))}</td><td>{esc(str(r[Col.status]))}</td>"
            f"<td><details><summary>{esc(last) or 'no message'}</summary>"
            f"<pre>{esc(error)}</pre></details></td>"
            f"<td><code>{esc(log_path(r[Col.run], r[Col.trial_id]))}</code></td></tr>"
        )
    return (
        f'<section id="failed"><h2>Failed trials ({len(failed)})</h2><p class="note">Their '
        "cells are missing above; a rerun of the same command retries them. Open a message for "
        "the traceback.</p>"
        '<div class="scroll"><table class="lb plain"><thead><tr><th>trial</th><th>table</th>'
        "<th>attack</th><th>defense</th><th>status</th><th>error</th><th>log</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div></section>"
    )


def _pct_ratio(ratio: Any) -> str:
    return "–" if is_missing(ratio) else f"{100 * float(ratio):g}% poison"


def _link(url: str, text: str) -> str:
    return f'<a href="{esc(url)}" rel="noreferrer noopener">{esc(text)}</a>' if url else ""


def _methods(agg: pd.DataFrame, trials: pd.DataFrame) -> str:
    """Two small tables (attacks, defenses): each method's paper and official code, and each
    defense's threat model card (what the defender holds, when it acts)."""
    if agg.empty:
        return ""
    attacks = agg[~is_clean(agg)].drop_duplicates(Col.attack).sort_values(Col.attack)
    attack_rows = [
        _method_row(
            str(r[Col.attack]),
            catalog.family(r[Col.attack], r[Col.attack_mode], r[Col.attack_package]),
            catalog.ATTACKS.get(str(r[Col.attack])),
            str(r[Col.attack_package]),
            str(r[Col.attack_version]),
        )
        for _, r in attacks.iterrows()
    ]
    defenses = agg[agg[Col.defense] != NONE].drop_duplicates(LABEL).sort_values(LABEL)
    defense_rows = [
        _method_row(
            str(r[LABEL]),
            "",
            catalog.DEFENSES.get(str(r[Col.defense])),
            str(r[Col.defense_package]),
            str(r[Col.defense_version]),
            card=_card(str(r[Col.defense]), str(r[LABEL]), trials),
        )
        for _, r in defenses.iterrows()
    ]

    def table(name: str, rows: list[str], detail: str = "paper and official code") -> str:
        if not rows:
            return ""
        return (
            f'<div class="scroll"><table class="lb plain methods" aria-label="{name}">'
            f"<thead><tr><th>{name}</th><th>{detail}</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></div>"
        )

    return (
        '<section id="methods"><h2>Methods: papers, official code, threat models</h2>'
        '<p class="note">Plain links (nothing on this page is fetched). Where no official code '
        "exists, the harness implements the method from its paper and the method spec.</p>"
        + table("attacks", attack_rows)
        + table("defenses", defense_rows, "paper, official code and threat model")
        + "</section>"
    )


def _card(defense: str, label: str, trials: pd.DataFrame) -> str:
    """A defense's threat model card: the built-in's from its needs, a plugin's clean data from
    its rows (the rest of a plugin's is not recorded)."""
    rows = trials[trials[LABEL] == label] if len(trials) else trials
    clean = threat.clean_text(rows) if len(rows) else ""
    builtin = len(rows) and set(rows[Col.defense_package]) <= {catalog.BUILTIN_PACKAGE, ""}
    model = threat.for_defense(defense) if builtin else None
    lines = (
        model.lines(clean)
        if model
        else [("clean data", clean or "none"), ("training", "not recorded for a plugin")]
    )
    return (
        '<dl class="card">'
        + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in lines)
        + "</dl>"
    )


def _method_row(name: str, family: str, method, package: str, version: str, card: str = "") -> str:
    """A method's row: its name (and family), then its paper and code, or its plugin package,
    and (a defense) its threat model card."""
    plugin = package not in ("", catalog.BUILTIN_PACKAGE)
    head = esc(name) + (f'<br><span class="muted">{esc(family)}</span>' if family else "")
    if plugin or method is None:
        where = f"plugin package {package} {version}".strip() if plugin else "not catalogued"
        body = f'<span class="muted">{esc(where)}</span>'
    else:
        code = (
            "code: " + _link(method.code, method.code.removeprefix("https://github.com/"))
            if method.code
            else esc(method.note or "no official code")
        )
        body = (
            f'{_link(method.paper, method.title)} <span class="muted">({esc(method.cite)})'
            f"</span><br>{code}"
        )
    return f'<tr><th scope="row">{head}</th><td>{body}{card}</td></tr>'


def _published(reproduction: Reproduction | None) -> dict[tuple, str]:
    """Cell key -> 'BackdoorBench: CA 91.2 / ASR 1.3 / RA 85.0 (reproduced)'."""
    out: dict[tuple, str] = {}
    for c in reproduction.comparisons if reproduction else []:
        for _, r in c.cells.iterrows():
            key = (r[Col.dataset], r[Col.preset], r[Col.ratio], r[LABEL], r[Col.attack])
            text = (
                f"{c.reference.name}: CA {pct(r[Col.ca + PUB])} / ASR {pct(r[Col.asr + PUB])} / "
                f"RA {pct(r[Col.ra + PUB])}"
            )
            if c.comparable:
                text += f" ({r['verdict']})"
            elif r["collapsed"]:
                text += f" (another protocol; a model below {COLLAPSED_CA:.0%} CA: no verdict)"
            else:
                text += " (another protocol: only the verdict is comparable; " + (
                    "agrees)" if r["agrees"] else "disagrees)"
                )
            out[key] = text
    return out


def _options(values: Iterable[str], names: dict[str, str] | None = None) -> str:
    names = names or {}
    return '<option value="">all</option>' + "".join(
        f'<option value="{esc(v)}">{esc(names.get(v, v))}</option>' for v in values
    )


def render_page(
    df: pd.DataFrame,
    agg: pd.DataFrame,
    ranks: pd.DataFrame,
    figures: list[Figure],
    *,
    style: dict[str, Style] | None = None,
    gallery: Path | None = None,
    skipped: pd.DataFrame | None = None,
    reproduction: Reproduction | None = None,
    downloads: Iterable[str] = (),
    code_revision: str = "",
) -> str:
    """The page. ``figures``: :func:`bench.report.plots.render_all`'s; ``style``: each defense's
    plot colour and marker; ``gallery``: an existing attack gallery image to embed; ``skipped``:
    cells left out (:func:`~bench.report.aggregate.skipped_cells`); ``reproduction``: the
    published numbers; ``downloads``: files beside the page to link (names); ``code_revision``:
    the revision of the code rendering it ("" unknown), named where the record's differs."""
    nonce = secrets.token_urlsafe(16)
    style = style or {}
    skipped = skipped if skipped is not None else pd.DataFrame(columns=[*GROUP, REASON])
    trials = trial_table(df)
    ctx = _Ctx(df, trials, style, _published(reproduction))
    ctx.code_revision = code_revision
    sections, toc = [], []
    presets = sorted(agg[Col.preset].unique()) if not agg.empty else []
    if not agg.empty:
        for i, (key, group) in enumerate(agg.groupby(GROUP, sort=True)):
            mine = [f for f in figures if (f.dataset, f.preset, f.ratio) == key]
            sections.append(
                _section(i, key, group, in_table(ranks, key), in_table(skipped, key), mine, ctx)
            )
            toc.append(f'<a href="#t{i}">{esc(short_title(*key, len(presets)))}</a>')
    decide_html, boards = _decision(agg, ctx)
    sweeps = _figures([f for f in figures if f.ratio is None])
    n_failed = int(df[Col.status].isin([ERROR, TIMEOUT]).sum())
    datasets = sorted(agg[Col.dataset].unique()) if not agg.empty else []
    ratios = sorted({f"{r:g}" for r in agg[Col.ratio]}, key=float) if not agg.empty else []
    gallery_html = (
        '<section id="gallery"><h2>Attack gallery</h2><p class="note">For each attack: a clean '
        "image, the same image with the trigger, and their difference amplified.</p>"
        '<div class="plots"><figure><button type="button" class="zoom" aria-label="enlarge: '
        'attack gallery"><img alt="attack gallery" src="data:image/png;base64,'
        f'{base64.b64encode(gallery.read_bytes()).decode()}"></button></figure></div></section>'
        if gallery is not None
        else ""
    )
    csp = (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'nonce-{nonce}'; base-uri 'none'; form-action 'none'"
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    links = " · ".join(f'<a href="{esc(d)}">{esc(d)}</a>' for d in downloads)
    data = {
        "cells": ctx.details,
        "meanings": meanings(ctx.recorded),
        "boards": boards,
        "drop": 100 * decision.DEFAULT_MAX_DROP,
        "resolution": decision.NO_INTERVAL_RESOLUTION,
        "works": SUCCESS_ASR,
        "families": catalog.FAMILY_MEANING,
        "styles": {k: [v.colour, GLYPHS.get(v.marker, "●")] for k, v in style.items()},
    }
    repro_html = render_html(reproduction) if reproduction else ""
    nav = [
        '<a href="#decide">Which defense?</a>',
        *toc,
        *(['<a href="#reproduction">Reproduction</a>'] if repro_html else []),
        '<a href="#failed">Failed trials</a>',
        *(['<a href="#methods">Methods</a>'] if not agg.empty else []),
        *(['<a href="#gallery">Attack gallery</a>'] if gallery is not None else []),
    ]
    failed_link = f'<a href="#failed">{n_failed} failed</a>' if n_failed else "0 failed"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="referrer" content="no-referrer">
<title>Backdoor defense leaderboard</title><style>{CSS}</style></head><body>
<header>
<h1>Backdoor defense leaderboard</h1>
<p class="lede">Which defense stops which data-poisoning attack, and at what cost in clean
accuracy and time. <span class="meta">{len(trials)} successful trials ({failed_link}),
generated {esc(generated)}.</span></p>
<details class="glossary"><summary>How to read the numbers</summary><p>ASR: attack success
rate, triggered test images sent to the attacker's class (lower is better). CA: clean accuracy.
RA: robust accuracy, triggered images still given their true class. CA change: against the
undefended model (<code>none</code>) of the same seed, in points. DER: defense effectiveness
rating (FT-SAM), 50 = no change, higher is better; it rewards lowering ASR and penalises losing
CA. Minutes: from poisoned data to a defended model, including the undefended model a
post-training defense starts from. Percentages are means over seeds; an interval (±) is a 95%
interval and appears only where a cell has more than one seed. In the decision view, ties on ASR
go to the smaller loss of clean accuracy, then to the faster defense; a defense with no
baseline of the same seed (so no known CA change) is never chosen.</p></details>
<nav aria-label="sections">{" · ".join(nav)}{" · downloads: " + links if links else ""}</nav>
</header>
<form class="controls" role="search" aria-label="filter the tables">
<label>Dataset <select id="f-dataset">{_options(datasets, DATASET_NAMES)}</select></label>
<label>Preset <select id="f-preset">{_options(presets)}</select></label>
<label>Poison ratio <select id="f-ratio">{_options(ratios)}</select></label>
<label title="the most clean accuracy (points, against no defense) a defense may cost to be
chosen in the decision view">Max CA drop <input id="f-drop" type="number" min="0" max="100"
 step="1" value="{decision.DEFAULT_MAX_DROP * 100:g}" inputmode="decimal"> points</label>
<label class="wide">Defense <input id="f-text" type="search" placeholder="filter by name"
 autocomplete="off"></label>
</form>
<main>
<section id="decide"><h2>Which defense?</h2>
<p class="note">Best: the <b>lowest ASR</b> among defenses losing at most <b><span
class="bound">{decision.DEFAULT_MAX_DROP * 100:g}</span> points</b> of clean accuracy (the bound
is a control above); for a family, within the bound on every one of its attacks, with the worst
attack beside the mean. An ASR in <b class="works">orange</b> is {SUCCESS_ASR * 100:g}% or more:
the backdoor survives even the best choice. Open a defense for its details.</p>
{decide_html or "<p>No successful trials yet.</p>"}
{_family_legend(agg)}
</section>
{"".join(sections)}
{('<section id="sweeps"><h2>Poison-ratio sweeps</h2>' + sweeps + "</section>") if sweeps else ""}
{repro_html}
{_failed(df)}
{_methods(agg, trials)}
{gallery_html}
</main>
<dialog id="details" aria-labelledby="details-title">
<div class="sheet"><button type="button" id="details-close" aria-label="close">×</button>
<h2 id="details-title"></h2><p id="details-sub" class="sub"></p>
<div id="details-body"></div></div></dialog>
<script type="application/json" id="data">{_json_for_script(data)}</script>
<script nonce="{nonce}">{JS}</script>
</body></html>
"""
