"""The reporting layer: everything ``bench leaderboard``, ``bench timing`` and ``bench reproduce``
show, computed from a results table (and, for reproduction, a reference table) and nothing else.

No module here imports torch, a dataset, the registry or the trial machinery, so a results table
renders on any machine, offline, without the data it was measured on (a test keeps it so).

- :mod:`~bench.report.text`: markdown helpers (escaping, tables, atomic writes).
- :mod:`~bench.report.stats`: DER and confidence intervals.
- :mod:`~bench.report.aggregate`: trial rows to leaderboard cells (versions, baselines, flags).
- :mod:`~bench.report.decision`: the best defense per attack and family under a CA-drop bound.
- :mod:`~bench.report.catalog` (attack families, the methods' papers and code),
  :mod:`~bench.report.naming` (titles), :mod:`~bench.report.protocol` (a table's protocol),
  :mod:`~bench.report.details` (a cell's details): what the outputs say about a table.
- :mod:`~bench.report.references` and :mod:`~bench.report.reproduce`: published numbers beside ours.
- :mod:`~bench.report.markdown`, :mod:`~bench.report.plots`, :mod:`~bench.report.page` (with
  :mod:`~bench.report.page_assets`, its style and script), :mod:`~bench.report.timing`: the
  outputs; :mod:`~bench.report.render` writes them all.
"""
