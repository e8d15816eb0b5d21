"""The results table: one row per trial in ``results.parquet``, written atomically.

Writers take a file lock (several trials, drivers or nodes may finish at once), read the table,
replace any row with the same ``trial_id`` and publish the new file with ``os.replace``, so a kill
at any moment leaves either the old or the new table, never a torn one, and never two rows for
one trial (the next write removes a killed writer's temp file). Rows follow :mod:`bench.schema`:
a table written by older code is upgraded on read, and every new row carries every column.

Every row written is first appended to a journal beside the table (``results.journal.jsonl``,
one JSON object a line, in the schema's types), and the table records the journal's length it
reflects. A table that is unreadable, or whose recorded length is not the journal's (a crash
between the two writes; a plugin or a person that replaced the file), is rebuilt from the
journal with nothing lost: the journal, not the table, is the record.
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from filelock import FileLock

from bench.errors import BenchError
from bench.schema import BY_NAME, OK, STR, Col, complete_row, empty_table, upgrade

log = logging.getLogger(__name__)

#: Parquet key-value metadata: the journal's length in bytes that the table reflects.
JOURNAL_BYTES_KEY = b"bench.journal_bytes"


class ResultsStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.journal = self.path.with_name(self.path.stem + ".journal.jsonl")
        self.lock = FileLock(str(self.path) + ".lock", timeout=600)

    def read(self) -> pd.DataFrame:
        """The table in the current schema (no rows if none yet). A corrupted table is moved
        aside, never overwritten; where the journal holds rows the table lacks, they are read
        from the journal (the next write stores the rebuilt table)."""
        return self._current()

    def ok_ids(self) -> set[str]:
        df = self.read()
        return set(df.loc[df[Col.status] == OK, Col.trial_id])

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows, replacing earlier rows of the same trials (an ``ok`` row is never replaced
        by a failed one). Columns a row lacks get their typed defaults."""
        records = [store_record(r) for r in rows]
        if not records:
            return
        new = upgrade(pd.DataFrame(records))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            old = self._current()
            if not self.journal.exists() and not old.empty:  # a table from before the journal
                self._append_journal([plain_row(r) for r in old.to_dict("records")])
            if not old.empty:
                ok_before = set(old.loc[old[Col.status] == OK, Col.trial_id])
                new = new[(new[Col.status] == OK) | ~new[Col.trial_id].isin(ok_before)]
                old = old[~old[Col.trial_id].isin(set(new[Col.trial_id]))]
                new = upgrade(pd.concat([old, new], ignore_index=True)) if not new.empty else old
            new = new.drop_duplicates(Col.trial_id, keep="last").reset_index(drop=True)
            self._append_journal(records)
            self._remove_stale_temps()
            self._write(new)

    # ----------------------------------------------------------------------- table and journal

    def _current(self) -> pd.DataFrame:
        """The table, or the journal's rows where the table is missing, damaged or stale."""
        journal_bytes = self.journal.stat().st_size if self.journal.exists() else None
        if not self.path.exists():
            return self._replay() if journal_bytes else empty_table()
        try:
            table = pd.read_parquet(self.path)
            recorded = pq.read_metadata(self.path).metadata or {}
        except Exception as exc:  # pyarrow raises several types for damaged files
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            if journal_bytes:
                log.warning(
                    "results table %s is unreadable (%s: %s); moved to %s and rebuilt from %s",
                    self.path, type(exc).__name__, exc, aside, self.journal,
                )  # fmt: skip
                return self._replay()
            raise BenchError(
                f"results table {self.path} is unreadable ({type(exc).__name__}: {exc}); it was "
                f"moved to {aside}. Rerun to rebuild it, or restore it from a copy."
            ) from exc
        if (
            journal_bytes is not None
            and recorded.get(JOURNAL_BYTES_KEY) != str(journal_bytes).encode()
        ):
            log.warning(
                "results table %s does not reflect its journal %s (a write was interrupted, or "
                "the file was replaced); its rows are read from the journal",
                self.path, self.journal,
            )  # fmt: skip
            return self._replay()
        return upgrade(table)

    def _replay(self) -> pd.DataFrame:
        """The journal's rows under the table's rule: an ``ok`` row replaces any earlier row of
        its trial, a failed one only a failed one. A torn last line (a killed writer) is
        skipped."""
        rows: dict[str, dict[str, Any]] = {}
        with open(self.journal, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    trial = row[Col.trial_id]
                except (ValueError, KeyError, TypeError):
                    continue
                earlier = rows.get(trial)
                if earlier is None or row.get(Col.status) == OK or earlier[Col.status] != OK:
                    rows.pop(trial, None)
                    rows[trial] = row
        if not rows:
            return empty_table()
        return upgrade(pd.DataFrame([typed_row(r) for r in rows.values()]))

    def _append_journal(self, records: list[dict[str, Any]]) -> None:
        """Append rows to the journal, on a line each (after a torn line, on a fresh one)."""
        text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in records)
        with open(self.journal, "ab+") as f:
            if f.seek(0, os.SEEK_END):
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    text = "\n" + text
            f.write(text.encode())
            f.flush()
            os.fsync(f.fileno())

    def _remove_stale_temps(self) -> None:
        """Delete the temp files of writers killed mid-write (SIGKILL, the OOM killer). Only the
        lock's holder writes, so while it is held none of them is in use."""
        for stale in self.path.parent.glob(f"{glob.escape(self.path.name)}.*.tmp"):
            with suppress(FileNotFoundError):
                stale.unlink()

    def _write(self, df: pd.DataFrame) -> None:
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        try:
            journal = self.journal.stat().st_size if self.journal.exists() else None
            table = pa.Table.from_pandas(df, preserve_index=False)
            if journal is not None:
                meta = {**(table.schema.metadata or {}), JOURNAL_BYTES_KEY: str(journal).encode()}
                table = table.replace_schema_metadata(meta)
            pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def store_record(row: dict[str, Any]) -> dict[str, Any]:
    """A row as the table and the journal store it: every column, nested values as JSON text,
    missing values as None. Raises ValueError for a column the schema does not define."""
    return plain_row(_scalar_row(complete_row(row)))


def _scalar_row(row: dict[str, Any]) -> dict[str, Any]:
    """Nested values (dicts, lists) become JSON strings so every column is a plain type."""
    return {
        k: json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else v
        for k, v in row.items()
    }


def _plain_value(value: Any) -> Any:
    """A JSON-ready value: missing values (``pd.NA``, NaN, None) become null, numpy scalars
    Python ones; reading null back gives each column's typed missing value."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def plain_row(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _plain_value(v) for k, v in row.items()}


#: How missing values were spelled by older code that wrote rows with ``default=str``.
_MISSING_SPELLINGS = frozenset({"<NA>", "NaN", "nan", "None", "NaT", ""})


def typed_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row read from JSON, with missing values spelled as text (``"<NA>"``, as pending rows of
    older code hold them) in non-text columns turned back into missing values."""
    out = dict(row)
    for name, value in row.items():
        column = BY_NAME.get(name)
        if (
            column is not None
            and column.dtype != STR
            and isinstance(value, str)
            and (value in _MISSING_SPELLINGS)
        ):
            out[name] = None
    return out
