"""The page's stylesheet and script (inlined into ``index.html``; the script runs under the
page's CSP nonce).

The script never parses markup: it reads the page's JSON data block and builds elements with
``textContent``. It sorts tables (header buttons, so the keyboard works; ``aria-sort`` says the
order; the `none` row stays on top), filters them (the `none` row always visible, a "no match"
row when a filter leaves nothing), keeps filters, sorts and the CA-drop bound in the URL's
fragment (so a view can be shared and survives a reload), fills the decision view for the
current bound, and shows a cell's details or an enlarged plot in a modal dialog (Esc closes it;
a bottom sheet on a phone).
"""

CSS = """
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1400px;
padding:16px 24px 48px;color:#1d2330;background:#fafbfc}
h1{margin:4px 0 6px;font-size:28px}h2{margin:36px 0 4px;font-size:21px}
h3{margin:22px 0 4px;font-size:17px}
a{color:#0b57a8}a:focus-visible,button:focus-visible,input:focus-visible,select:focus-visible,
summary:focus-visible{outline:3px solid #0072B2;outline-offset:1px}
.lede{margin:0 0 6px;max-width:75em}.meta,.sub,.note,.muted{color:#545b69}
.sub{margin:0 0 8px}.note{margin:6px 0 10px;max-width:80em}.muted{font-weight:normal}
nav{margin:6px 0 0;line-height:1.9}
code{font-size:90%;background:#eef1f5;padding:0 3px;border-radius:3px}
.warn{background:#fff4d6;border-left:4px solid #E69F00;padding:8px 12px;max-width:80em}
.controls{display:flex;gap:10px 20px;flex-wrap:wrap;align-items:center;margin:10px 0 0;
padding:8px 12px;background:#fff;border:1px solid #dde1e7;border-radius:6px}
.controls label{white-space:nowrap}
details.glossary{margin:0 0 4px;max-width:80em;color:#545b69}details.glossary p{margin:4px 0}
.controls input[type=number]{width:4.5em}.controls input[type=search]{width:11em}
select,input{font:inherit;padding:2px 4px}
@media (min-width:800px){.controls{position:sticky;top:0;z-index:5;box-shadow:0 2px 6px #0001}
[id]{scroll-margin-top:5rem}}
.scroll{overflow-x:auto;max-width:100%;margin:6px 0 4px;-webkit-overflow-scrolling:touch}
table.lb{border-collapse:collapse;background:#fff;box-shadow:0 1px 2px #0002}
table.lb caption{caption-side:top;text-align:left;color:#545b69;padding:2px 0 6px;
max-width:80em}
.lb th,.lb td{border:1px solid #dde1e7;padding:5px 9px;text-align:right;white-space:nowrap;
vertical-align:top}
.lb thead th{background:#eef1f5;font-weight:600}
.lb th.name{text-align:left;font-weight:normal;white-space:normal;min-width:9em;max-width:22em;
overflow-wrap:break-word;position:sticky;left:0;background:#fff;z-index:1}
.lb tr.pinned th.name,.lb tr.pinned td{background:#f3f4f6}
.lb td.na{color:#8a909c}
button.sort{all:unset;cursor:pointer;display:block;width:100%}
th[aria-sort=ascending] button.sort:after{content:" ▲";font-size:80%}
th[aria-sort=descending] button.sort:after{content:" ▼";font-size:80%}
button.open{all:unset;cursor:pointer;border-radius:3px;padding:0 2px}
button.sort:focus-visible,button.zoom:focus-visible{outline:3px solid #0072B2;
outline-offset:-3px}
button.open:hover{background:#fff4d6}button.open:focus-visible{outline:3px solid #0072B2}
.ci{color:#545b69;font-size:85%}sup.mark{color:#b3541e;font-weight:bold;margin-left:2px}
.glyph{display:inline-block;width:1.2em;text-align:center;margin-right:3px}
.badge{font-size:11px;padding:1px 6px;border-radius:8px;margin-left:4px;white-space:nowrap}
.plugin{background:#e3ecff;color:#1a3f8f}.badge.lost{background:#ffe0e0;color:#9b1c1c}
.tied{display:block;font-size:12px;color:#545b69;white-space:normal;max-width:14em}.recon{background:#ffe9d6;color:#8a4300}
.lb.plain th,.lb.plain td{text-align:left;white-space:normal;min-width:6em}
.lb.methods{margin-bottom:12px}.lb.methods th[scope=row]{font-weight:600}
.lb.methods td{max-width:60em;overflow-wrap:break-word}
table.decision td,table.decision th{white-space:nowrap}
table.decision thead th{text-align:right}table.decision thead th:nth-child(-n+2){text-align:left}
table.decision td.base{color:#545b69}
table.decision td.works,b.works{color:#a3470f;font-weight:600}
table.decision .worst{display:block;font-size:12px;font-weight:normal;color:#545b69;
white-space:normal;max-width:8em;margin-left:auto}
table.decision tr.family th{background:#eef1f5;text-align:left;white-space:normal;
font-weight:normal}
table.decision tr.family .fam{font-weight:600}
table.decision tr.summary td,table.decision tr.summary th{background:#f7f9fc;font-weight:600}
table.decision th[scope=row]{text-align:left;font-weight:normal}
.lb tbody th[scope=row]{position:sticky;left:0;background:#fff;z-index:1}
.lb thead th.name,.lb:not(.rank):not(.matrix) thead th:first-child{position:sticky;left:0;
z-index:2}
table.decision td.best{text-align:left}
.decide{margin:10px 0 18px}
ul.facts{margin:2px 0 6px;padding-left:20px;max-width:80em;color:#545b69}
dl.card{display:grid;grid-template-columns:max-content 1fr;gap:0 10px;margin:6px 0 0;
font-size:13px}dl.card dt{color:#545b69}dl.card dd{margin:0}
details.protocol,details.detection{margin:6px 0 10px;max-width:80em}
details summary{cursor:pointer}
details.protocol dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:8px 0;
background:#fff;border:1px solid #dde1e7;padding:8px 12px}
details.protocol dt{color:#545b69}details.protocol dd{margin:0;overflow-wrap:anywhere}
ul.notes{color:#545b69;padding-left:20px;max-width:80em;margin:6px 0}
.plots{display:flex;flex-wrap:wrap;gap:16px;margin-top:14px;align-items:flex-start}
figure{margin:0;background:#fff;padding:8px;box-shadow:0 1px 2px #0002;max-width:100%;
display:table}
figure img{display:block;max-width:100%;height:auto}
figcaption{display:table-caption;caption-side:bottom;font-size:13px;color:#545b69;
background:#fff;padding:4px 8px 8px;box-shadow:0 1px 2px #0002}
button.zoom{all:unset;cursor:zoom-in;display:block;max-width:100%}
pre{white-space:pre-wrap;overflow-wrap:anywhere;font-size:12px;max-width:80em}
dialog#details{border:0;padding:0;margin:0 0 0 auto;height:100%;max-height:100%;
width:min(680px,100%);max-width:100%;box-shadow:-4px 0 18px #0003}
dialog#details.figure{width:min(1400px,100%)}
dialog#details::backdrop{background:#0004}
.sheet{padding:14px 18px 24px;position:relative}
#details-close{position:sticky;top:0;float:right;font-size:22px;line-height:1;border:1px solid
#ccd;background:#fff;border-radius:6px;padding:2px 10px;cursor:pointer}
#details h2{margin:4px 40px 2px 0;font-size:19px;overflow-wrap:anywhere}
#details h3{font-size:15px;margin:16px 0 4px}
#details table.kv{width:100%}
#details table.kv th{text-align:left;font-weight:normal;color:#545b69;white-space:normal;width:12em}
#details table.kv td{text-align:left;white-space:pre-wrap;overflow-wrap:anywhere}
#details img.big{max-width:none}
@media (max-width:700px){
 body{padding:8px 12px 40px;font-size:14px}h1{font-size:21px;margin:2px 0}h2{font-size:18px;
 margin-top:24px}.lede{font-size:13px}nav{font-size:13px;line-height:1.7}
 .controls{display:grid;grid-template-columns:1fr 1fr;gap:6px 10px;font-size:13px}
 .controls label.wide{grid-column:1/-1}.controls select{max-width:7.5em}
 .controls input[type=search]{width:100%}
 .controls label{display:flex;align-items:center;gap:4px;white-space:normal}
 dialog#details{margin:auto 0 0 0;width:100%;height:auto;max-height:82vh;
  border-radius:14px 14px 0 0;box-shadow:0 -4px 18px #0003}
 .plots{gap:10px}figure{padding:4px}
 .lb th,.lb td{padding:4px 6px;font-size:13px}.lb th.name{min-width:8em}
 details.protocol dl{grid-template-columns:1fr}
}
"""

JS = r"""
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('data').textContent);
  const $ = (s, r) => (r || document).querySelector(s);
  const $$ = (s, r) => Array.from((r || document).querySelectorAll(s));
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = text;
    if (cls) e.className = cls;
    return e;
  }
  const missing = x => x === null || x === undefined;
  const pct = x => missing(x) ? '–' : (100 * x).toFixed(1);
  function pts(x) {
    if (missing(x)) return '–';
    const v = (100 * x).toFixed(1);
    if (v === '0.0' || v === '-0.0') return '0.0';
    return (v.startsWith('-') ? '' : '+') + v;
  }
  function asrCell(x) {
    const c = el('td', pct(x));
    if (!missing(x) && x >= data.works) {
      c.className = 'works';
      c.title = 'the backdoor still works: ASR of ' + Math.round(100 * data.works) + '% or more';
    }
    return c;
  }
  const mins = m => missing(m) ? '–' : (m < 100 ? m.toFixed(1) : Math.round(m).toString());
  const ratioKey = r => String(r);
  const ratioPct = r => String(Math.round(r * 10000) / 100) + '%';

  const defaults = {dataset: '', preset: '', ratio: '', q: '', drop: data.drop};
  const state = Object.assign({sort: {}}, defaults);

  // ------------------------------------------------------------------ sorting
  function sortTable(table, key, dir) {
    const ths = $$(':scope > thead > tr > th', table);
    const th = ths.find(h => h.dataset.key === key);
    if (!th) return false;
    const idx = ths.indexOf(th);
    const numeric = th.dataset.sort === 'num';
    ths.forEach(h => h.setAttribute('aria-sort', 'none'));
    th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
    const body = table.tBodies[0];
    const rows = Array.from(body.rows);
    const pinned = rows.filter(r => r.classList.contains('pinned'));
    const tail = rows.filter(r => r.classList.contains('nomatch'));
    const rest = rows.filter(r => !pinned.includes(r) && !tail.includes(r));
    function value(r) {
      const c = r.children[idx];
      const v = c.dataset.v !== undefined ? c.dataset.v : c.textContent.trim().toLowerCase();
      if (!numeric) return v;
      const f = parseFloat(v);
      return isNaN(f) ? null : f;
    }
    const sign = dir === 'asc' ? 1 : -1;
    rest.sort((a, b) => {
      const x = value(a), y = value(b);
      if (x === null || y === null) return x === y ? 0 : (x === null ? 1 : -1);
      return (x < y ? -1 : x > y ? 1 : 0) * sign;
    });
    pinned.concat(rest, tail).forEach(r => body.appendChild(r));
    return true;
  }

  // ------------------------------------------------------------------ URL state
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const k of ['dataset', 'preset', 'ratio', 'q']) state[k] = p.get(k) || '';
    const drop = parseFloat(p.get('drop'));
    state.drop = isNaN(drop) || drop < 0 ? data.drop : drop;
    state.sort = {};
    for (const [k, v] of p) {
      if (!k.startsWith('sort.')) continue;
      const i = v.lastIndexOf('.');
      if (i > 0) state.sort[k.slice(5)] = [v.slice(0, i), v.slice(i + 1)];
    }
  }
  function writeHash() {
    const p = new URLSearchParams();
    for (const k of ['dataset', 'preset', 'ratio', 'q']) if (state[k]) p.set(k, state[k]);
    if (state.drop !== data.drop) p.set('drop', String(state.drop));
    for (const [t, kd] of Object.entries(state.sort)) p.set('sort.' + t, kd[0] + '.' + kd[1]);
    const h = p.toString();
    const url = location.href.split('#')[0] + (h ? '#' + h : '');
    try { history.replaceState(null, '', url); } catch (e) { location.hash = h; }
  }

  // ------------------------------------------------------------------ filters
  const fits = (value, wanted) => !wanted || value === wanted;
  function applyFilters() {
    $$('section.board').forEach(s => {
      s.hidden = !(fits(s.dataset.dataset, state.dataset) && fits(s.dataset.preset, state.preset)
                   && fits(s.dataset.ratio, state.ratio));
    });
    $$('div.decide').forEach(d => {
      d.hidden = !(fits(d.dataset.dataset, state.dataset) && fits(d.dataset.preset, state.preset));
    });
    const q = state.q.trim().toLowerCase();
    $$('table.lb').forEach(t => {
      if (!t.tBodies.length) return;
      let candidates = 0, shown = 0;
      Array.from(t.tBodies[0].rows).forEach(r => {
        if (r.dataset.defense === undefined) return;
        if (r.classList.contains('pinned')) { r.hidden = false; return; }
        candidates += 1;
        const hit = !q || r.dataset.defense.includes(q);
        r.hidden = !hit;
        if (hit) shown += 1;
      });
      const none = $(':scope > tr.nomatch', t.tBodies[0]);
      if (none) {
        none.hidden = !(candidates && !shown);
        none.firstElementChild.textContent = 'No defense matches “' + state.q.trim() + '”.';
      }
    });
  }

  // ------------------------------------------------------------------ decision view
  const within = (o, drop) => !missing(o.d_ca) && -o.d_ca <= drop / 100 + 1e-9;
  const best = (a, drop) => a.options.find(o => within(o, drop)) || null;
  // As decision.separated: 95% intervals that do not overlap, or with one seed a gap wider
  // than the page's resolution.
  function separated(x, xci, y, yci) {
    if (missing(xci) || missing(yci)) return Math.abs(x - y) > data.resolution + 1e-12;
    return Math.abs(x - y) > xci + yci + 1e-12;
  }
  function ties(a, drop, top) {
    return a.options.filter(o => o !== top && within(o, drop) && !missing(o.asr)
                            && !separated(o.asr, o.asr_ci, top.asr, top.asr_ci))
                    .map(o => o.label);
  }
  function tiedNote(labels) {
    return labels.length ? el('span', 'tied: ' + labels.join(', '), 'tied') : null;
  }
  function familyBest(g, drop) {
    const per = {};
    g.attacks.forEach(a => a.options.forEach(o => {
      (per[o.label] = per[o.label] || []).push([a.attack, o]);
    }));
    const found = [];
    for (const [label, got] of Object.entries(per)) {
      if (got.length < g.attacks.length) continue;
      if (!got.every(([, o]) => within(o, drop) && !missing(o.asr))) continue;
      let worst = got[0];
      got.forEach(ao => {
        const [attack, o] = ao;
        if (o.asr > worst[1].asr || (o.asr === worst[1].asr && attack > worst[0])) worst = ao;
      });
      const m = got.map(([, o]) => o.minutes).filter(x => !missing(x));
      const cis = got.map(([, o]) => o.asr_ci);
      found.push({label: label, mean_asr: got.reduce((s, [, o]) => s + o.asr, 0) / got.length,
                  asr_ci: cis.some(missing) ? null : cis.reduce((s, x) => s + x, 0) / cis.length,
                  worst_asr: worst[1].asr, worst_attack: worst[0],
                  mean_d_ca: got.reduce((s, [, o]) => s + o.d_ca, 0) / got.length,
                  clean_d_ca: got[0][1].clean_d_ca,
                  minutes: m.length ? m.reduce((s, x) => s + x, 0) / m.length : null});
    }
    found.sort((x, y) => x.mean_asr - y.mean_asr || y.mean_d_ca - x.mean_d_ca
                         || (x.label < y.label ? -1 : x.label > y.label ? 1 : 0));
    if (!found.length) return null;
    const top = found[0];
    top.ties = found.slice(1).filter(f => !separated(f.mean_asr, f.asr_ci, top.mean_asr,
                                                     top.asr_ci)).map(f => f.label);
    return top;
  }
  function nameNode(label, cell) {
    const wrap = cell ? el('button', null, 'open') : el('span');
    if (cell) { wrap.type = 'button'; wrap.dataset.cell = cell; }
    wrap.dataset.label = label;
    const st = data.styles[label];
    if (st) {
      const g = el('span', st[1], 'glyph');
      g.style.color = st[0];
      g.setAttribute('aria-hidden', 'true');
      wrap.appendChild(g);
    }
    wrap.appendChild(document.createTextNode(label));
    return wrap;
  }
  function td(text, cls) { return el('td', text, cls); }
  function renderDecision() {
    const drop = state.drop;
    $$('.bound').forEach(s => { s.textContent = String(drop); });
    $$('div.decide').forEach((div, i) => {
      const b = data.boards[i];
      const tbody = $('tbody', div);
      if (!tbody || !b) return;
      tbody.replaceChildren();
      b.groups.forEach(g => {
        if (state.ratio && ratioKey(g.ratio) !== state.ratio) return;
        const head = el('tr', null, 'family');
        const th = el('th');
        th.colSpan = 8;
        th.scope = 'colgroup';
        th.title = data.families[g.family] || '';
        th.appendChild(el('span', g.family + ' attacks', 'fam'));
        th.appendChild(el('span', ' · ' + ratioPct(g.ratio) + ' poison', 'muted'));
        head.appendChild(th);
        tbody.appendChild(head);
        if (g.attacks.length > 1) {
          const f = familyBest(g, drop);
          const tr = el('tr', null, 'summary');
          const h = el('th', 'all ' + g.attacks.length + ' (mean)');
          h.scope = 'row';
          h.title = 'the best defense against every attack of the family (means)';
          tr.appendChild(h);
          const cell = td(null, 'best');
          tr.appendChild(cell);
          if (f) {
            cell.appendChild(nameNode(f.label, null));
            const tf = tiedNote(f.ties);
            if (tf) cell.appendChild(tf);
            const asr = asrCell(f.mean_asr);
            const worst = 'worst ' + pct(f.worst_asr) + ' ' + f.worst_attack;
            asr.appendChild(el('span', worst, 'worst'));
            tr.appendChild(asr);
            tr.appendChild(td(pts(f.mean_d_ca)));
            tr.appendChild(td(pts(f.clean_d_ca)));
            tr.appendChild(td(''));
            tr.appendChild(td(mins(f.minutes)));
          } else {
            const text = 'none within ' + drop + ' points on every attack';
            cell.appendChild(el('span', text, 'muted'));
            cell.colSpan = 6;
          }
          tr.appendChild(td(''));
          tbody.appendChild(tr);
        }
        g.attacks.forEach(a => {
          const tr = el('tr');
          const h = el('th', a.attack);
          h.scope = 'row';
          tr.appendChild(h);
          const o = best(a, drop);
          const cell = td(null, 'best');
          tr.appendChild(cell);
          if (o) {
            cell.appendChild(nameNode(o.label, o.cell));
            const to = tiedNote(ties(a, drop, o));
            if (to) cell.appendChild(to);
            const a_ = asrCell(o.asr);
            if (o.n > 1 && !missing(o.asr_ci)) {
              a_.appendChild(el('span', ' ±' + pct(o.asr_ci) + ' n=' + o.n, 'ci'));
            }
            tr.appendChild(a_);
            tr.appendChild(td(pts(o.d_ca)));
            tr.appendChild(td(pts(o.clean_d_ca)));
            tr.appendChild(td(pct(o.ra)));
            const m = td(mins(o.minutes));
            if (!b.device) m.title = o.device;
            tr.appendChild(m);
          } else {
            const low = a.options[0];
            cell.appendChild(el('span', 'none within ' + drop + ' points', 'muted'));
            if (low) {
              cell.appendChild(el('span', ' (lowest ASR: ', 'muted'));
              cell.appendChild(nameNode(low.label, low.cell));
              const text = ' ' + pct(low.asr) + ', CA ' + pts(low.d_ca) + ')';
              cell.appendChild(el('span', text, 'muted'));
            }
            cell.colSpan = 6;
          }
          tr.appendChild(td(a.none ? pct(a.none.ca) + ' / ' + pct(a.none.asr) : '–', 'base'));
          tbody.appendChild(tr);
        });
      });
    });
  }

  // ------------------------------------------------------------------ details dialog
  const dialog = $('#details');
  let opener = null;
  function kv(rows) {
    const t = el('table', null, 'lb kv');
    const body = t.createTBody();
    rows.forEach(([k, v]) => {
      const tr = body.insertRow();
      const th = el('th', k);
      th.scope = 'row';
      tr.appendChild(th);
      tr.appendChild(el('td', v));
    });
    return t;
  }
  function grid(header, rows) {
    const wrap = el('div', null, 'scroll');
    const t = el('table', null, 'lb');
    const hr = t.createTHead().insertRow();
    header.forEach(h => { const th = el('th', h); th.scope = 'col'; hr.appendChild(th); });
    const body = t.createTBody();
    rows.forEach(r => {
      const tr = body.insertRow();
      r.forEach(v => tr.appendChild(el('td', v)));
    });
    wrap.appendChild(t);
    return wrap;
  }
  function show(title, sub, fill, wide, from) {
    opener = from || null;
    $('#details-title').textContent = title;
    $('#details-sub').textContent = sub;
    const body = $('#details-body');
    body.replaceChildren();
    fill(body);
    dialog.classList.toggle('figure', !!wide);
    if (!dialog.open) dialog.showModal();
    dialog.scrollTop = 0;
    $('#details-close').focus();
  }
  function openCell(id, from) {
    const d = data.cells[id];
    if (!d) return;
    show(d.title, d.subtitle, body => {
      body.appendChild(kv(d.facts));
      d.notes.forEach(n => body.appendChild(el('p', n, 'note')));
      body.appendChild(el('h3', 'Per seed'));
      body.appendChild(grid(d.seeds.header, d.seeds.rows));
      if (d.params.length) {
        body.appendChild(el('h3', 'Parameters'));
        body.appendChild(kv(d.params));
      }
      d.fields.forEach(f => {
        const det = el('details');
        det.appendChild(el('summary', 'Every recorded field, seed ' + f.seed));
        const t = kv(f.rows);
        Array.from(t.tBodies[0].rows).forEach((tr, i) => {
          tr.title = data.meanings[f.rows[i][0]] || '';
        });
        det.appendChild(t);
        body.appendChild(det);
      });
    }, false, from);
  }
  function openFigure(button) {
    const img = $('img', button);
    show(img.alt, 'full size; scroll to see all of it', body => {
      const big = el('img', null, 'big');
      big.src = img.src;
      big.alt = img.alt;
      body.appendChild(big);
    }, true, button);
  }
  dialog.addEventListener('close', () => { if (opener) opener.focus(); opener = null; });
  dialog.addEventListener('click', e => { if (e.target === dialog) dialog.close(); });
  $('#details-close').addEventListener('click', () => dialog.close());

  // ------------------------------------------------------------------ events
  document.addEventListener('click', e => {
    const sort = e.target.closest('button.sort');
    if (sort) {
      const th = sort.closest('th'), table = th.closest('table');
      const dir = th.getAttribute('aria-sort') === 'ascending' ? 'desc' : 'asc';
      if (sortTable(table, th.dataset.key, dir) && table.id) {
        state.sort[table.id] = [th.dataset.key, dir];
        writeHash();
      }
      return;
    }
    const open = e.target.closest('button.open');
    if (open) { openCell(open.dataset.cell, open); return; }
    const zoom = e.target.closest('button.zoom');
    if (zoom) openFigure(zoom);
  });
  const controls = {dataset: '#f-dataset', preset: '#f-preset', ratio: '#f-ratio', q: '#f-text'};
  function toControls() {
    for (const [k, s] of Object.entries(controls)) {
      const c = $(s);
      c.value = state[k];
      if (c.value !== state[k]) { state[k] = ''; c.value = ''; }
    }
    $('#f-drop').value = String(state.drop);
  }
  for (const [k, s] of Object.entries(controls)) {
    const update = () => {
      if (state[k] === $(s).value) return;
      state[k] = $(s).value;
      applyFilters();
      renderDecision();
      writeHash();
    };
    $(s).addEventListener('input', update);
    $(s).addEventListener('change', update);
  }
  $('#f-drop').addEventListener('input', () => {
    const v = parseFloat($('#f-drop').value);
    if (isNaN(v) || v < 0) return;
    state.drop = v;
    renderDecision();
    writeHash();
  });
  $('form.controls').addEventListener('submit', e => e.preventDefault());
  function restore() {
    readHash();
    toControls();
    for (const [t, kd] of Object.entries(state.sort)) {
      const table = document.getElementById(t);
      const dir = kd[1] === 'desc' ? 'desc' : 'asc';
      if (!table || !sortTable(table, kd[0], dir)) delete state.sort[t];
    }
    applyFilters();
    renderDecision();
  }
  window.addEventListener('hashchange', restore);
  restore();
})();
"""
