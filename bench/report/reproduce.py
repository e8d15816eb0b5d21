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
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.report import references
from bench.report.aggregate import LABEL, aggregate
from bench.report.references import KEY, Reference
from bench.report.text import md_code, md_escape, md_table, pct
from bench.schema import OK, Col

#: (|dCA|, |dASR|) bounds, in fractions, of a reproduced and of a close cell.
REPRODUCED = (0.02, 0.05)
CLOSE = (0.05, 0.10)
#: A defense succeeds (the backdoor is removed) when the ASR is below this.
SUCCESS_ASR = 0.20
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
    #: ``agrees`` (False where ``collapsed``: such a cell is no verdict, counted apart).
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
    if agg.empty:
        return []
    published = reference.table.drop(columns=[Col.model])
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
            )
        order = [Col.dataset, Col.ratio, Col.attack, Col.defense, LABEL]
        found = found.sort_values(order).reset_index(drop=True)
        out.append(
            Comparison(reference, str(preset), bool(comparable), found, len(cells) - len(found))
        )
    return out


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
    if len(base):
        works = int((~base["ours_succeeds"]).sum())
        published = int((~base["published_succeeds"]).sum())
        lines.append(
            f"Without a defense the attack works (ASR at least {100 * SUCCESS_ASR:.0f}%) in "
            f"{works} of {len(base)} cells here and in {published} of them published."
        )
    yes = {True: "succeeds", False: "fails"}
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
    ]
    title = f"Preset {c.preset} against {c.reference.name}: verdict agreement"
    return Table(title, lines, header, rows)


def tables(reproduction: Reproduction) -> list[Table]:
    return [_numeric(c) if c.comparable else _agreement(c) for c in reproduction.comparisons]


HEADING = "Reproduction against published numbers"


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
            head = "".join(f"<th>{esc(h)}</th>" for h in t.header)
            body = "".join(
                "<tr>" + "".join(f"<td>{esc(str(v))}</td>" for v in r) + "</tr>" for r in t.rows
            )
            parts.append(
                f'<div class="scroll"><table class="lb repro"><thead><tr>{head}</tr></thead>'
                f"<tbody>{body}</tbody></table></div>"
            )
    parts.append("</section>")
    return "".join(parts)
