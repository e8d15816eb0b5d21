"""The results table: one row per trial in ``results.parquet``, written atomically.

Writers take a file lock (several trials, drivers or nodes may finish at once), read the table,
replace any row with the same ``trial_id`` and publish the new file with ``os.replace``, so a kill
at any moment leaves either the old or the new table, never a torn one, and never two rows for
one trial (the next write removes a killed writer's temp file). Rows follow :mod:`bench.schema`:
a table written by older code is upgraded on read, and every new row carries every column.
"""

from __future__ import annotations

import glob
import json
import os
import tempfile
import time
from collections.abc import Iterable
from contextlib import suppress
from pathlib import Path
from typing import Any

import pandas as pd
from filelock import FileLock

from bench.errors import BenchError
from bench.schema import OK, Col, complete_row, empty_table, upgrade


class ResultsStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.lock = FileLock(str(self.path) + ".lock", timeout=600)

    def read(self) -> pd.DataFrame:
        """The table in the current schema (no rows if none yet). A corrupted table is moved
        aside, never overwritten."""
        if not self.path.exists():
            return empty_table()
        try:
            table = pd.read_parquet(self.path)
        except Exception as exc:  # pyarrow raises several types for damaged files
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            os.replace(self.path, aside)
            raise BenchError(
                f"results table {self.path} is unreadable ({type(exc).__name__}: {exc}); it was "
                f"moved to {aside}. Rerun to rebuild it, or restore it from a copy."
            ) from exc
        return upgrade(table)

    def ok_ids(self) -> set[str]:
        df = self.read()
        return set(df.loc[df[Col.status] == OK, Col.trial_id])

    def upsert(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows, replacing earlier rows of the same trials (an ``ok`` row is never replaced
        by a failed one). Columns a row lacks get their typed defaults."""
        records = [_scalar_row(complete_row(r)) for r in rows]
        if not records:
            return
        new = upgrade(pd.DataFrame(records))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.lock:
            old = self.read()
            if not old.empty:
                ok_before = set(old.loc[old[Col.status] == OK, Col.trial_id])
                new = new[(new[Col.status] == OK) | ~new[Col.trial_id].isin(ok_before)]
                old = old[~old[Col.trial_id].isin(set(new[Col.trial_id]))]
                new = upgrade(pd.concat([old, new], ignore_index=True)) if not new.empty else old
            new = new.drop_duplicates(Col.trial_id, keep="last").reset_index(drop=True)
            self._remove_stale_temps()
            self._write(new)

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
            df.to_parquet(tmp, index=False)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


def _scalar_row(row: dict[str, Any]) -> dict[str, Any]:
    """Nested values (dicts, lists) become JSON strings so every column is a plain type."""
    return {
        k: json.dumps(v, sort_keys=True, default=str) if isinstance(v, (dict, list, tuple)) else v
        for k, v in row.items()
    }
