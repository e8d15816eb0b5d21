"""``bench reproduce``: our cells beside a published reference's, cell by cell.

A cell (dataset, attack, defense, ratio) is compared two ways, depending on whether its rows'
``reference`` column names the reference (the preset declares it follows that protocol):

- **comparable**: ours beside published, the difference, and a verdict: *reproduced* (CA within
  2 points and ASR within 5, :data:`REPRODUCED`), *close* (within 5 and 10, :data:`CLOSE`), else
  *differs*;
- **not comparable** (a preset of its own protocol, e.g. quick): **verdict agreement** only: a
  defense succeeds when its ASR is below :data:`SUCCESS_ASR`; a cell agrees when ours and the
  published run both succeed or both fail. `none` cells are summed up apart (does the attack
  work at all), since a defense's verdict is what is being compared. A cell where either model's
  clean accuracy is below :data:`COLLAPSED_CA` is shown but left out of the count: that model is
  no classifier, so its ASR says nothing about the backdoor.

  Beside that ASR-only verdict, a **CA-aware** one (:func:`bench.report.verdict.works`): a
  defense works when its ASR is below :data:`SUCCESS_ASR` *and* it loses at most
  :data:`~bench.report.verdict.REPRODUCE_MAX_DROP` of clean accuracy against no defense, ours
  against our `none` of the same seeds, the published run against the published no-defense run.
  A defense that removes the backdoor by wrecking the model does not work under it, so a
  collapsed cell needs no exclusion there; a cell whose published no-defense run is missing is
  left out of that count.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report import references
from bench.report.aggregate import D_CA, LABEL, NONE, aggregate, is_clean
from bench.report.references import KEY, Reference
from bench.report.text import md_code, md_escape, md_table, pct
from bench.report.verdict import REPRODUCE_MAX_DROP, SUCCESS_ASR, works
from bench.schema import OK, Col

#: (|dCA|, |dASR|) bounds, in fractions, of a reproduced and of a close cell.
REPRODUCED = (0.02, 0.05)
CLOSE = (0.05, 0.10)
#: A defended model below this clean accuracy has collapsed (CIFAR-10's chance is 10%): its ASR
#: says nothing about the backdoor (BackdoorBench's ABL on TrojanNN at 10%: CA 11.1% and ASR 100%,
#: every input labelled the target), so its cell is left out of verdict agreement.
COLLAPSED_CA = 0.20
VERDICTS = ("reproduced", "close", "differs")
PUB = "_pub"  # suffix of the published metrics in a comparison table


def verdict(d_ca: float, d_asr: float) -> str:
    """The verdict of one comparable cell from its differences (ours - published)."""
    for name, (ca, asr) in zip(VERDICTS, (REPRODUCED, CLOSE), strict=False):
        if abs(d_ca) <= ca + 1e-9 and abs(d_asr) <= asr + 1e-9:
            return name
    return VERDICTS[-1]


def succeeds(asr: float) -> bool:
    return asr < SUCCESS_ASR


@dataclass(frozen=True)
class Comparison:
    """One preset's cells against one reference."""

    reference: Reference
    preset: str
    comparable: bool
    #: Matched cells: our aggregated columns, the published ones (suffix ``_pub``), and
    #: ``verdict`` (comparable) or ``ours_succeeds`` / ``published_succeeds`` / ``collapsed`` /
    #: ``agrees`` (False where ``collapsed``: such a cell is no verdict, counted apart), and the
    #: CA-aware ``ours_works`` / ``published_works`` / ``ca_known`` / ``agrees_ca`` (False
    #: where not ``ca_known``: the published no-defense run is missing).
    cells: pd.DataFrame
    unmatched: int  # our cells with no published counterpart


@dataclass(frozen=True)
class Reproduction:
    comparisons: list[Comparison] = field(default_factory=list)
    #: References the rows name that could not be loaded, with why.
    missing: dict[str, str] = field(default_factory=dict)


def compare(df: pd.DataFrame, reference: Reference) -> list[Comparison]:
    """Every preset's cells of ``df`` against ``reference`` (one comparison per preset)."""
    agg = aggregate(df)
    agg = agg[~is_clean(agg)]  # the clean model has no published counterpart
    if agg.empty:
        return []
    published = reference.table.drop(columns=[Col.model])
    published_none = (
        published[published[Col.defense] == NONE]
        .assign(_ratio=lambda t: t[Col.ratio].round(6))
        .rename(columns={Col.ca: "_none_ca_pub"})
        .loc[:, [Col.dataset, Col.attack, "_ratio", "_none_ca_pub"]]
        .drop_duplicates([Col.dataset, Col.attack, "_ratio"])
    )
    # A row meets a published cell under the name its defense declares (reference_name), never
    # by its bare registry name: a plugin called "nad" is not BackdoorBench's NAD unless it says so.
    ours = agg.assign(_ratio=agg[Col.ratio].round(6), _published=agg[Col.defense_reference_name])
    matched = ours.merge(
        published.rename(columns={Col.ratio: "_ratio", Col.defense: "_published"}),
        on=[*(k for k in KEY if k not in (Col.ratio, Col.defense)), "_ratio", "_published"],
        how="left",
        suffixes=("", PUB),
        indicator=True,
    )
    matched = matched.merge(published_none, on=[Col.dataset, Col.attack, "_ratio"], how="left")
    matched["_comparable"] = matched[Col.reference] == reference.name
    out = []
    for (preset, comparable), cells in matched.groupby([Col.preset, "_comparable"], sort=True):
        found = cells[cells["_merge"] == "both"].drop(
            columns=["_merge", "_ratio", "_comparable", "_published"]
        )
        if comparable:
            d_ca = found[Col.ca] - found[Col.ca + PUB]
            d_asr = found[Col.asr] - found[Col.asr + PUB]
            found = found.assign(
                d_ca=d_ca,
                d_asr=d_asr,
                verdict=[verdict(c, a) for c, a in zip(d_ca, d_asr, strict=True)],
            )
        else:
            found = found.assign(
                ours_succeeds=found[Col.asr].map(succeeds),
                published_succeeds=found[Col.asr + PUB].map(succeeds),
            )
            collapsed = (found[Col.ca] < COLLAPSED_CA) | (found[Col.ca + PUB] < COLLAPSED_CA)
            found = found.assign(
                collapsed=collapsed,
                agrees=(found["ours_succeeds"] == found["published_succeeds"]) & ~collapsed,
                **_ca_aware(found),
            )
        found = found.drop(columns=["_none_ca_pub"])
        order = [Col.dataset, Col.ratio, Col.attack, Col.defense, LABEL]
        found = found.sort_values(order).reset_index(drop=True)
        out.append(
            Comparison(reference, str(preset), bool(comparable), found, len(cells) - len(found))
        )
    return out


def _ca_aware(found: pd.DataFrame) -> dict[str, pd.Series]:
    """The CA-aware verdict's columns: each side's CA change against its own no-defense run."""
    d_ca_pub = found[Col.ca + PUB] - found["_none_ca_pub"]
    ours = [
        works(a, d, REPRODUCE_MAX_DROP) for a, d in zip(found[Col.asr], found[D_CA], strict=True)
    ]
    theirs = [
        works(a, d, REPRODUCE_MAX_DROP) for a, d in zip(found[Col.asr + PUB], d_ca_pub, strict=True)
    ]
    known = found[D_CA].notna() & d_ca_pub.notna()
    ours_s = pd.Series(ours, index=found.index, dtype=bool)
    theirs_s = pd.Series(theirs, index=found.index, dtype=bool)
    return {
        "d_ca_pub": d_ca_pub,
        "ours_works": ours_s,
        "published_works": theirs_s,
        "ca_known": known,
        "agrees_ca": (ours_s == theirs_s) & known,
    }


def default_reproduction(df: pd.DataFrame, user_dir: Path | None) -> Reproduction:
    """What the leaderboard shows: each reference the ``ok`` rows name (numbers for its preset,
    verdicts for the others), or the default reference when they name none."""
    ok = df[df[Col.status] == OK]
    names = sorted(set(ok[Col.reference]) - {""}) or ([references.DEFAULT] if len(ok) else [])
    comparisons, missing = [], {}
    for name in names:
        try:
            reference = references.load(name, user_dir)
        except BenchError as exc:
            missing[name] = str(exc)
            continue
        comparisons += compare(df, reference)
    return Reproduction(comparisons, missing)


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class Table:
    """One comparison, ready for markdown or HTML: a title, lines of text, header and rows."""

    title: str
    lines: list[str]
    header: list[str]
    rows: list[list[str]]


def _delta(x: float) -> str:
    return f"{100 * x:+.1f}"


def _side_by_side(r: pd.Series, metric: str) -> str:
    return f"{pct(r[metric])} / {pct(r[metric + PUB])}"


def _reference_line(c: Comparison) -> str:
    source = f" ({c.reference.source.rstrip('.')})" if c.reference.source else ""
    return f"Reference: {c.reference.name}, {c.reference.title}{source}."


def _settings_line(c: Comparison) -> str:
    return (
        f"Settings: preset {c.preset}'s; `bench run --preset {c.preset} --dry-run` prints where "
        "each defense's come from (the built-in `paper` preset: the reference's own runs' "
        "settings where they differ from the official code; `paper-official`: the official "
        "code's), and DEVIATIONS.md what still differs."
    )


def _numeric(c: Comparison) -> Table:
    cells = c.cells
    counts = cells["verdict"].value_counts()
    lines = [
        _reference_line(c),
        f"Comparable: preset {c.preset} follows this reference's protocol (its rows name it as "
        "their reference), so each cell is compared number for number (ours / published, "
        "difference in points). Reproduced: CA within 2 points and ASR within 5; close: CA "
        "within 5 and ASR within 10; differs: otherwise.",
        _settings_line(c),
        f"{len(cells)} cells compared: "
        + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in VERDICTS)
        + (f"; {c.unmatched} cells have no published counterpart." if c.unmatched else "."),
    ]
    header = [
        Col.dataset,
        Col.ratio,
        Col.attack,
        Col.defense,
        "n",
        "CA",
        "dCA",
        "ASR",
        "dASR",
        "RA",
    ]
    rows = [
        [
            r[Col.dataset],
            f"{r[Col.ratio]:g}",
            r[Col.attack],
            r[LABEL],
            str(r["n"]),
            _side_by_side(r, Col.ca),
            _delta(r["d_ca"]),
            _side_by_side(r, Col.asr),
            _delta(r["d_asr"]),
            _side_by_side(r, Col.ra),
            r["verdict"],
        ]
        for _, r in cells.iterrows()
    ]
    title = f"Preset {c.preset} against {c.reference.name}: reproduction"
    return Table(title, lines, [*header, "verdict"], rows)


def _agreement(c: Comparison) -> Table:
    cells = c.cells
    defended = cells[cells[Col.defense] != "none"]
    base = cells[cells[Col.defense] == "none"]
    collapsed = defended[defended["collapsed"]]
    compared = len(defended) - len(collapsed)
    agree = int(defended["agrees"].sum())
    share = f" ({100 * agree / compared:.0f}%)" if compared else ""
    left_out = "; ".join(
        f"{r[LABEL]} on {r[Col.dataset]} {r[Col.attack]} at {r[Col.ratio]:g}: "
        f"CA {_side_by_side(r, Col.ca)}"
        for _, r in collapsed.iterrows()
    )
    lines = [
        _reference_line(c),
        f"Not comparable: preset {c.preset} does not follow this reference's protocol (model, "
        "data, budget differ), so only verdicts are compared: a defense succeeds when its ASR "
        f"is below {100 * SUCCESS_ASR:.0f}%; a cell agrees when ours and the published run "
        "both succeed or both fail.",
        _settings_line(c),
        f"{compared} defended cells compared, {agree} agree{share}"
        + (f"; {c.unmatched} cells have no published counterpart." if c.unmatched else "."),
    ]
    if len(collapsed):
        lines.append(
            f"Left out: {len(collapsed)} cell(s) where a model's clean accuracy is below "
            f"{100 * COLLAPSED_CA:.0f}% (ours / published), a collapsed model whose ASR says "
            f"nothing about the backdoor: {left_out}."
        )
    known = defended[defended["ca_known"]]
    agree_ca = int(known["agrees_ca"].sum())
    share_ca = f" ({100 * agree_ca / len(known):.0f}%)" if len(known) else ""
    lines.append(
        f"CA-aware: a defense works when its ASR is below {100 * SUCCESS_ASR:.0f}% and it "
        f"loses at most {100 * REPRODUCE_MAX_DROP:g} points of clean accuracy against no "
        "defense (ours against our none, published against published); "
        f"{len(known)} defended cells compared, {agree_ca} agree{share_ca}"
        + (
            f"; {len(defended) - len(known)} left out (no no-defense run on one side)."
            if len(known) < len(defended)
            else "."
        )
    )
    by_defense = _by_defense(defended)
    if by_defense:
        lines.append("Agreement by defense (ASR-only; CA-aware): " + by_defense + ".")
    if len(base):
        works_here = int((~base["ours_succeeds"]).sum())
        published = int((~base["published_succeeds"]).sum())
        lines.append(
            f"Without a defense the attack works (ASR at least {100 * SUCCESS_ASR:.0f}%) in "
            f"{works_here} of {len(base)} cells here and in {published} of them published."
        )
    yes = {True: "succeeds", False: "fails"}
    ok = {True: "works", False: "fails"}
    rows = [
        [
            r[Col.dataset],
            f"{r[Col.ratio]:g}",
            r[Col.attack],
            r[LABEL],
            _side_by_side(r, Col.asr),
            yes[bool(r["ours_succeeds"])],
            yes[bool(r["published_succeeds"])],
            "left out (collapsed)" if r["collapsed"] else "yes" if r["agrees"] else "no",
            f"{_points(r[D_CA])} / {_points(r['d_ca_pub'])}",
            ok[bool(r["ours_works"])],
            ok[bool(r["published_works"])],
            ("yes" if r["agrees_ca"] else "no") if r["ca_known"] else "left out (no none)",
        ]
        for _, r in defended.iterrows()
    ]
    header = [
        Col.dataset,
        Col.ratio,
        Col.attack,
        Col.defense,
        "ASR ours / published",
        "ours",
        "published",
        "agree",
        "CA change ours / published",
        "ours (CA-aware)",
        "published (CA-aware)",
        "agree (CA-aware)",
    ]
    title = f"Preset {c.preset} against {c.reference.name}: verdict agreement"
    return Table(title, lines, header, rows)


def _points(x: float) -> str:
    return "–" if pd.isna(x) else _delta(x)


def _by_defense(defended: pd.DataFrame) -> str:
    """Each defense's agreement under both verdicts, e.g. ``abl 3/5; 2/6``."""
    parts = []
    for label, g in defended.groupby(LABEL, sort=True):
        counted = g[~g["collapsed"]]
        known = g[g["ca_known"]]
        parts.append(
            f"{label} {int(counted['agrees'].sum())}/{len(counted)}; "
            f"{int(known['agrees_ca'].sum())}/{len(known)}"
        )
    return ", ".join(parts)


def tables(reproduction: Reproduction) -> list[Table]:
    return [_numeric(c) if c.comparable else _agreement(c) for c in reproduction.comparisons]


HEADING = "Reproduction against published numbers"


def _html_table(t: Table) -> str:
    """A comparison table whose first column, sticky on a phone, names the cell (defense and
    attack); the other columns follow as the markdown has them."""
    esc = html.escape
    named = [t.header.index(Col.defense), t.header.index(Col.attack)]
    rest = [i for i in range(len(t.header)) if i not in named]
    head = '<th scope="col" class="name">defense · attack</th>' + "".join(
        f'<th scope="col">{esc(t.header[i])}</th>' for i in rest
    )
    body = "".join(
        f'<tr><th scope="row" class="name">{esc(str(r[named[0]]))} · {esc(str(r[named[1]]))}'
        "</th>" + "".join(f"<td>{esc(str(r[i]))}</td>" for i in rest) + "</tr>"
        for r in t.rows
    )
    return (
        f'<div class="scroll"><table class="lb repro"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table></div>"
    )


def render_markdown(reproduction: Reproduction) -> str:
    """The reproduction section of LEADERBOARD.md (and ``bench reproduce``'s output); '' when
    there is nothing to compare."""
    if not reproduction.comparisons and not reproduction.missing:
        return ""
    out = [f"## {HEADING}", ""]
    for name, why in reproduction.missing.items():
        out += [
            f"Reference {md_code(name)} named by the results is not available: {md_escape(why)}",
            "",
        ]
    for t in tables(reproduction):
        out += [f"### {md_escape(t.title)}", ""]
        out += [*(f"{md_escape(line)}  " for line in t.lines[:-1]), md_escape(t.lines[-1]), ""]
        if t.rows:
            out += [*md_table(t.header, t.rows), ""]
    return "\n".join(out)


def render_html(reproduction: Reproduction) -> str:
    """The same as a page section; every string escaped."""
    if not reproduction.comparisons and not reproduction.missing:
        return ""
    esc = html.escape
    parts = [f'<section class="repro" id="reproduction"><h2>{esc(HEADING)}</h2>']
    for name, why in reproduction.missing.items():
        parts.append(f'<p class="note">Reference {esc(name)} is not available: {esc(why)}</p>')
    for t in tables(reproduction):
        parts.append(f"<h3>{esc(t.title)}</h3>")
        parts += [f'<p class="note">{esc(line)}</p>' for line in t.lines]
        if t.rows:
            parts.append(_html_table(t))
    parts.append("</section>")
    return "".join(parts)
