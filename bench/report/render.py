"""``bench leaderboard``: the results table rendered as LEADERBOARD.md, TIMING.md, a static page,
plots and an aggregated export, all from the table alone (no dataset, no model, no registry).

The attack gallery is not built here (it decodes datasets and fits attacks: ``bench attacks
gallery``); an existing ``plots/attacks.png`` is embedded in the page.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from bench.report import markdown, page, plots, reproduce, timing
from bench.report.aggregate import LABEL, REASON, aggregate, skipped_cells
from bench.report.ranks import ranking
from bench.report.text import write_text_atomic
from bench.schema import Col

GALLERY = "attacks.png"
#: Export column of a cell the grid left out: the reason ('' for a measured cell).
LEFT_OUT = "left_out"


@dataclass(frozen=True)
class Rendered:
    markdown: Path
    page: Path
    exports: list[Path]
    plots: list[Path]
    gallery: Path | None  # the existing gallery the page embeds, if any


def export_table(agg: pd.DataFrame, skipped: pd.DataFrame) -> pd.DataFrame:
    """The aggregated cells, then the cells left out (no metrics, the reason in ``left_out``)."""
    left_out = skipped.rename(columns={REASON: LEFT_OUT}).assign(**{LABEL: skipped[Col.defense]})
    if agg.empty:
        return left_out
    measured = agg.assign(**{LEFT_OUT: ""})
    if left_out.empty:
        return measured
    # Nullable dtypes, so counts stay integers and flags booleans beside the empty rows.
    dtypes = {
        c: "Int64" if pd.api.types.is_integer_dtype(t) else "boolean"
        for c, t in measured.dtypes.items()
        if pd.api.types.is_integer_dtype(t) or pd.api.types.is_bool_dtype(t)
    }
    table = pd.concat([measured, left_out], ignore_index=True)
    return table.astype(dtypes)


def render(
    df: pd.DataFrame,
    out_dir: Path,
    references_dir: Path | None = None,
    code_revision: str = "",
) -> Rendered:
    """Write LEADERBOARD.md, TIMING.md, index.html, leaderboard.{csv,parquet} and plots/ under
    ``out_dir``. ``references_dir``: user references beside the shipped ones (default
    ``out_dir/references``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    agg = aggregate(df)
    skipped = skipped_cells(df)
    reproduction = reproduce.default_reproduction(
        df, references_dir if references_dir is not None else out_dir / "references"
    )
    md = out_dir / "LEADERBOARD.md"
    write_text_atomic(
        md, markdown.render_markdown(df, agg, reproduce.render_markdown(reproduction))
    )
    table = export_table(agg, skipped)
    exports = [out_dir / "leaderboard.csv", out_dir / "leaderboard.parquet"]
    table.to_csv(exports[0], index=False)
    if not table.empty:
        table.to_parquet(exports[1], index=False)
    else:
        exports.pop()
    timing_md = timing.write_timing(df, out_dir)
    plot_dir = out_dir / "plots"
    style = plots.styles(agg)
    figures = plots.render_all(agg, plot_dir, style)
    plots.remove_stale(plot_dir, figures)
    gallery = plot_dir / GALLERY
    gallery = gallery if gallery.is_file() else None
    html = out_dir / "index.html"
    downloads = [md, *exports, timing_md, out_dir / "results.parquet"]
    write_text_atomic(
        html,
        page.render_page(
            df,
            agg,
            ranking(agg),
            figures,
            style=style,
            gallery=gallery,
            skipped=skipped,
            reproduction=reproduction,
            downloads=[p.name for p in downloads if p.is_file()],
            code_revision=code_revision,
        ),
    )
    return Rendered(
        markdown=md,
        page=html,
        exports=exports,
        plots=[f.path for f in figures],
        gallery=gallery,
    )
