"""The results store: atomic upserts, skip-by-id, no duplicates, corrupted tables moved aside."""

import pytest

from bench.errors import BenchError
from bench.store import ResultsStore


def _row(trial_id, status="ok", ca=0.5):
    return {"trial_id": trial_id, "status": status, "ca": ca, "error": ""}


def test_upsert_replaces_rows_of_the_same_trial(tmp_path):
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a", "error"), _row("b")])
    store.upsert([_row("a"), _row("c")])
    df = store.read()
    assert sorted(df["trial_id"]) == ["a", "b", "c"]
    assert store.ok_ids() == {"a", "b", "c"}


def test_an_ok_row_is_never_replaced_by_a_failure(tmp_path):
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a", ca=0.9)])
    store.upsert([_row("a", "error", ca=0.0)])
    df = store.read()
    assert len(df) == 1 and df.iloc[0]["status"] == "ok" and df.iloc[0]["ca"] == 0.9


def test_duplicate_rows_in_one_batch_collapse(tmp_path):
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a", ca=0.1), _row("a", ca=0.2)])
    assert len(store.read()) == 1


def test_corrupted_table_is_moved_aside_not_overwritten(tmp_path):
    path = tmp_path / "results.parquet"
    path.write_bytes(b"definitely not parquet")
    with pytest.raises(BenchError, match="unreadable"):
        ResultsStore(path).read()
    aside = list(tmp_path.glob("results.parquet.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"definitely not parquet"
    assert not path.exists()


def test_no_temp_files_left_behind(tmp_path):
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a")])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == ["results.parquet"]


def test_a_writer_killed_mid_write_leaves_no_temp_file_after_the_next_write(tmp_path):
    """Before: a worker killed between creating its temp table and publishing it left
    ``results.parquet.<random>.tmp`` for good (seen after a killed driver's rerun)."""
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a")])
    (tmp_path / "results.parquet.k1ll3d.tmp").write_bytes(b"half a table")
    (tmp_path / "other.parquet.x.tmp").write_bytes(b"not ours")
    store.upsert([_row("b")])
    assert sorted(store.read()["trial_id"]) == ["a", "b"]
    names = sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock")
    assert names == ["other.parquet.x.tmp", "results.parquet"]
