"""The self-contained leaderboard page (``results/index.html``): no server, no network.

Tables are rendered here with every string escaped; plots are embedded as data URIs; a small
inline script (allowed by a per-page nonce in the Content-Security-Policy, so nothing injected
could run) sorts, filters and shows a cell's details using ``textContent`` only.
"""

from __future__ import annotations

import base64
import html
import json
import math
import secrets
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from bench.report.aggregate import GROUP, LABEL, REASON, ordered_defenses, trial_table
from bench.report.plots import slug
from bench.report.text import pct
from bench.schema import ERROR, TIMEOUT, Col

esc = html.escape


def _num(x: float) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.6g}"


def _json_for_script(obj: object) -> str:
    """JSON that cannot close its <script> element or open a comment."""
    text = json.dumps(obj, default=str, allow_nan=False, sort_keys=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _clean(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item"):
        return _clean(value.item())
    return value


def _cell_details(agg_row: pd.Series, trials: pd.DataFrame) -> dict:
    seeds = [
        {
            k: _clean(t.get(k))
            for k in (
                Col.seed,
                Col.ca,
                Col.asr,
                Col.ra,
                "der",
                Col.wall_seconds,
                Col.train_seconds,
                Col.defense_seconds,
                Col.device,
                Col.node,
                Col.git_rev,
                Col.trial_id,
                Col.started_at,
            )
        }
        for _, t in trials.iterrows()
    ]
    for seed, (_, t) in zip(seeds, trials.iterrows(), strict=True):  # the defense's own figures
        seed[Col.defense_metrics] = json.loads(t.get(Col.defense_metrics) or "{}")
    return {"summary": {k: _clean(v) for k, v in agg_row.items()}, "trials": seeds}


def _badges(row: pd.Series) -> str:
    out = []
    if row["plugin"]:
        package = esc(str(row[Col.defense_package]))
        out.append(f'<span class="badge plugin">plugin: {package}</span>')
    if row["reconstructed"]:
        out.append('<span class="badge recon">reconstructed</span>')
    return " ".join(out)


def _section(
    key: tuple,
    group: pd.DataFrame,
    ranks: pd.DataFrame,
    trials_by_cell: dict[tuple, pd.DataFrame],
    details: dict,
    plots: list[Path],
) -> str:
    dataset, preset, ratio = key
    attacks = sorted(group[Col.attack].unique())
    rank_of = dict(zip(ranks[LABEL], ranks["rank"], strict=True))
    der_of = dict(zip(ranks[LABEL], ranks["der"], strict=True))
    head = (
        '<tr><th data-sort="text">defense</th><th data-sort="num">rank</th>'
        '<th data-sort="num">mean DER</th>'
        + "".join(f'<th data-sort="num" title="sort by ASR">{esc(a)}</th>' for a in attacks)
        + "</tr>"
    )
    body = []
    for label in ordered_defenses(list(group[LABEL].unique())):
        rows = group[group[LABEL] == label].set_index(Col.attack)
        first = rows.iloc[0]
        cells = [
            f'<td class="name">{esc(label)} {_badges(first)}</td>',
            f'<td data-v="{_num(rank_of.get(label))}">{esc(str(rank_of.get(label, "")))}</td>',
            f'<td data-v="{_num(der_of.get(label))}">{pct(der_of.get(label, math.nan))}</td>',
        ]
        for a in attacks:
            if a not in rows.index:
                cells.append('<td data-v="">N/A</td>')
                continue
            r = rows.loc[a]
            cell_id = f"c{len(details)}"
            seeds = trials_by_cell.get((dataset, preset, ratio, label, a), pd.DataFrame())
            details[cell_id] = _cell_details(pd.concat([r, pd.Series({Col.attack: a})]), seeds)
            n = f", n={int(r['n'])}" if r["n"] > 1 else ""
            ca, asr, ra = pct(r[Col.ca]), pct(r[Col.asr]), pct(r[Col.ra])
            tip = f"CA {ca}  ASR {asr}  RA {ra}  DER {pct(r['der'])}{n} (click for details)"
            cells.append(
                f'<td class="cell" data-v="{_num(r[Col.asr])}" data-cell="{cell_id}" '
                f'title="{esc(tip)}">{ca} / <b>{asr}</b> / {ra}</td>'
            )
        body.append(f'<tr data-defense="{esc(label.lower())}">{"".join(cells)}</tr>')
    models = ", ".join(sorted(group[Col.model].unique()))
    sources = "; ".join(sorted({s for s in group[Col.data_source] if s}))
    named = sorted(set(group[Col.reference]) - {""})
    note = (
        f" Protocol follows the published reference {', '.join(named)}."
        if named
        else " Not comparable with published numbers (the preset follows no published protocol)."
    )
    imgs = "".join(
        f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(p.stem)}</figcaption>'
        "</figure>"
        for p in plots
    )
    return (
        f'<section class="board" data-dataset="{esc(str(dataset))}" '
        f'data-preset="{esc(str(preset))}" data-ratio="{esc(f"{ratio:g}")}">'
        f"<h2>{esc(str(dataset))} · preset {esc(str(preset))} · poison ratio {ratio:g}</h2>"
        f'<p class="note">Model {esc(models)}. Data {esc(sources)}.{esc(note)} Cells: CA / '
        "<b>ASR</b> / RA (%). Click a column to sort, a cell for its details.</p>"
        f'<table class="lb"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
        f'<div class="plots">{imgs}</div></section>'
    )


_CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#1d2330;background:#fafbfc}
h1{margin:0 0 4px}h2{margin:28px 0 6px;font-size:18px}.note{color:#556;margin:4px 0 10px}
.controls{display:flex;gap:16px;flex-wrap:wrap;margin:14px 0;align-items:center}
table.lb{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
.lb th,.lb td{border:1px solid #dde1e7;padding:5px 9px;text-align:right;white-space:nowrap}
.lb th{background:#eef1f5;cursor:pointer;user-select:none}.lb td.name{text-align:left}
.lb th.asc:after{content:" ▲"}.lb th.desc:after{content:" ▼"}
.lb td.cell{cursor:pointer}.lb td.cell:hover{background:#fff4d6}
.badge{font-size:11px;padding:1px 6px;border-radius:8px;margin-left:4px}
.plugin{background:#e3ecff;color:#1a3f8f}.recon{background:#ffe9d6;color:#8a4300}
.plots{display:flex;flex-wrap:wrap;gap:12px;margin-top:12px}
figure{margin:0;background:#fff;padding:6px;box-shadow:0 1px 2px #0002}
figure img{max-width:520px;display:block}figcaption{font-size:11px;color:#667}
#details{position:fixed;right:20px;top:20px;width:460px;max-height:85vh;overflow:auto;
background:#fff;border:1px solid #ccd;box-shadow:0 4px 16px #0003;padding:12px}
#details pre{white-space:pre-wrap;font-size:12px}
"""

_JS = """
(function(){
  const cells = JSON.parse(document.getElementById('cells').textContent);
  function sortTable(th){
    const table = th.closest('table'), idx = Array.from(th.parentNode.children).indexOf(th);
    const numeric = th.dataset.sort === 'num', asc = !th.classList.contains('asc');
    table.querySelectorAll('th').forEach(h => h.classList.remove('asc','desc'));
    th.classList.add(asc ? 'asc' : 'desc');
    const body = table.tBodies[0], rows = Array.from(body.rows);
    const key = r => { const c = r.children[idx];
      if (!numeric) return c.textContent.trim().toLowerCase();
      const v = parseFloat(c.dataset.v); return isNaN(v) ? Infinity : v; };
    rows.sort((a,b) => { const x = key(a), y = key(b);
      return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1); });
    rows.forEach(r => body.appendChild(r));
  }
  document.querySelectorAll('table.lb th').forEach(th =>
    th.addEventListener('click', () => sortTable(th)));
  function applyFilters(){
    const q = document.getElementById('f-text').value.trim().toLowerCase();
    const sel = {dataset: document.getElementById('f-dataset').value,
                 preset: document.getElementById('f-preset').value,
                 ratio: document.getElementById('f-ratio').value};
    document.querySelectorAll('section.board').forEach(s => {
      const show = Object.keys(sel).every(k => !sel[k] || s.dataset[k] === sel[k]);
      s.hidden = !show;
      s.querySelectorAll('tbody tr').forEach(r => {
        r.hidden = q !== '' && !r.dataset.defense.includes(q); });
    });
  }
  ['f-text','f-dataset','f-preset','f-ratio'].forEach(id =>
    document.getElementById(id).addEventListener('input', applyFilters));
  const panel = document.getElementById('details');
  document.querySelectorAll('td.cell').forEach(td => td.addEventListener('click', () => {
    const d = cells[td.dataset.cell];
    document.getElementById('details-title').textContent =
      d.summary.defense_label + ' vs ' + d.summary.attack;
    document.getElementById('details-body').textContent = JSON.stringify(d, null, 2);
    panel.hidden = false;
  }));
  document.getElementById('details-close').addEventListener('click', () => panel.hidden = true);
})();
"""


def _options(values) -> str:
    return '<option value="">all</option>' + "".join(
        f'<option value="{esc(v)}">{esc(v)}</option>' for v in values
    )


def _left_out(skipped: pd.DataFrame) -> str:
    if skipped.empty:
        return ""
    items = "".join(
        f"<li>{esc(str(r[Col.dataset]))} · {esc(str(r[Col.preset]))} · ratio {r[Col.ratio]:g} · "
        f"{esc(str(r[Col.defense]))} vs {esc(str(r[Col.attack]))}: {esc(str(r[REASON]))}</li>"
        for _, r in skipped.iterrows()
    )
    return f'<h2>Cells left out of the grid</h2><ul class="note">{items}</ul>'


def render_page(
    df: pd.DataFrame,
    agg: pd.DataFrame,
    ranks: pd.DataFrame,
    plot_files: list[Path],
    *,
    gallery: Path | None = None,
    skipped: pd.DataFrame | None = None,
    reproduction: str = "",
) -> str:
    """The page. ``gallery``: an existing attack gallery image to embed; ``skipped``: cells
    left out (:func:`~bench.report.aggregate.skipped_cells`); ``reproduction``: the reproduction
    section as HTML (:func:`bench.report.reproduce.render_html`)."""
    nonce = secrets.token_urlsafe(16)
    trials = trial_table(df)
    details: dict[str, dict] = {}
    by_cell = dict(tuple(trials.groupby([*GROUP, LABEL, Col.attack]))) if len(trials) else {}
    sections = []
    if not agg.empty:
        for key, group in agg.groupby(GROUP, sort=True):
            rk = ranks[(ranks[GROUP] == pd.Series(key, index=GROUP)).all(axis=1)]
            mine = [p for p in plot_files if slug(*key) in p.stem]
            sections.append(_section(key, group, rk, by_cell, details, mine))
    n_failed = int(df[Col.status].isin([ERROR, TIMEOUT]).sum())
    datasets = sorted(agg[Col.dataset].unique()) if not agg.empty else []
    presets = sorted(agg[Col.preset].unique()) if not agg.empty else []
    ratios = sorted({f"{r:g}" for r in agg[Col.ratio]}) if not agg.empty else []
    gallery_html = (
        f'<h2>Attack gallery</h2><figure><img alt="attack gallery" src="data:image/png;base64,'
        f'{base64.b64encode(gallery.read_bytes()).decode()}"></figure>'
        if gallery is not None
        else ""
    )
    csp = (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'nonce-{nonce}'"
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{esc(csp)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Backdoor defense leaderboard</title><style>{_CSS}</style></head><body>
<h1>Backdoor defense leaderboard</h1>
<p class="note">Generated {esc(generated)} from {len(trials)} successful trials
({n_failed} failed). DER: defense effectiveness rating against <code>none</code> on the same cell
(50 = no change, higher is better). Defenses are ranked by mean DER, ties broken by CA.</p>
<div class="controls">
<label>Dataset <select id="f-dataset">{_options(datasets)}</select></label>
<label>Preset <select id="f-preset">{_options(presets)}</select></label>
<label>Ratio <select id="f-ratio">{_options(ratios)}</select></label>
<label>Defense <input id="f-text" type="search" placeholder="filter by name"></label>
</div>
{"".join(sections) or "<p>No successful trials yet.</p>"}
{_left_out(skipped if skipped is not None else pd.DataFrame())}
{reproduction}
{gallery_html}
<div id="details" hidden><button id="details-close" style="float:right">close</button>
<h3 id="details-title"></h3><pre id="details-body"></pre></div>
<script type="application/json" id="cells">{_json_for_script(details)}</script>
<script nonce="{nonce}">{_JS}</script>
</body></html>
"""
