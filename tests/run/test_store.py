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
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".lock") == [
        "results.journal.jsonl",
        "results.parquet",
    ]


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
    assert names == ["other.parquet.x.tmp", "results.journal.jsonl", "results.parquet"]


# --------------------------------------------------------------------------- the journal


def test_a_table_overwritten_with_garbage_is_rebuilt_from_the_journal(tmp_path):
    """Before: a plugin overwriting results.parquet mid-run left a table rebuilt with one row;
    every earlier row survived only in the .corrupt copy."""
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a"), _row("b", "error")])
    store.path.write_bytes(b"overwritten by a hostile plugin")
    assert sorted(store.read()["trial_id"]) == ["a", "b"]  # a reader sees every row
    store.upsert([_row("c")])
    df = store.read()
    assert sorted(df["trial_id"]) == ["a", "b", "c"]
    assert df.set_index("trial_id").loc["b", "status"] == "error"
    assert len(list(tmp_path.glob("results.parquet.corrupt-*"))) == 1  # kept, as before


def test_a_table_replaced_by_a_valid_foreign_one_is_read_from_the_journal(tmp_path):
    import pandas as pd

    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a", ca=0.7), _row("b", ca=0.8)])
    pd.DataFrame([{"trial_id": "fake", "status": "ok", "ca": 1.0}]).to_parquet(store.path)
    assert sorted(store.read()["trial_id"]) == ["a", "b"]
    store.upsert([_row("c")])
    df = store.read().set_index("trial_id")
    assert sorted(df.index) == ["a", "b", "c"] and df.loc["a", "ca"] == 0.7


def test_a_torn_journal_line_costs_only_its_own_row(tmp_path):
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([_row("a")])
    with open(store.journal, "a") as f:
        f.write('{"trial_id": "torn", "sta')  # a writer killed mid-append
    store.upsert([_row("b")])
    store.path.unlink()
    assert sorted(store.read()["trial_id"]) == ["a", "b"]


def test_a_table_from_before_the_journal_is_journalled_by_the_next_write(tmp_path):
    import pandas as pd

    path = tmp_path / "results.parquet"
    pd.DataFrame([_row("old", ca=0.3)]).to_parquet(path)
    store = ResultsStore(path)
    store.upsert([_row("new")])
    path.write_bytes(b"damaged")
    df = store.read().set_index("trial_id")
    assert sorted(df.index) == ["new", "old"] and df.loc["old", "ca"] == 0.3


def test_the_journal_keeps_the_schema_types(tmp_path):
    store = ResultsStore(tmp_path / "results.parquet")
    store.upsert([{"trial_id": "a", "status": "error", "error": "boom"}])  # counts unknown
    store.path.unlink()
    df = store.read()
    assert df["n_train"].isna().all() and str(df["n_train"].dtype) == "Int64"
    assert '"<NA>"' not in store.journal.read_text()


# --------------------------------------------------------------------------- pending rows


def _pending(run_dir, trial_id, row):
    import json

    path = run_dir / "pending" / f"{trial_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(row))
    return path


def test_a_pending_row_of_an_unknown_count_merges(tmp_path):
    """Before: an error row kept pending held ``"n_train": "<NA>"``, and every later write to the
    directory failed with "results column 'n_train' does not hold Int64"."""
    from bench.run.recording import merge_pending, record_row

    results = tmp_path / "results"
    run_dir = results / "runs" / "r1"
    # as older code wrote it (json.dumps(default=str) of pd.NA) ...
    _pending(run_dir, "old", {"trial_id": "old", "status": "error", "n_train": "<NA>"})
    # ... and as a pending write does now
    import json

    from bench.store import plain_row

    text = json.dumps(plain_row({"trial_id": "new", "status": "error", "ca": float("nan")}))
    assert "null" in text and "NaN" not in text
    (run_dir / "pending" / "new.json").write_text(text)
    store = ResultsStore(results / "results.parquet")
    assert merge_pending(store, results / "runs") == 2
    record_row({"trial_id": "next", "status": "ok", "ca": 0.5}, store.path, run_dir)
    assert sorted(store.read()["trial_id"]) == ["new", "next", "old"]


def test_a_pending_row_that_cannot_merge_is_set_aside_and_blocks_nothing(tmp_path, caplog):
    from bench.run.recording import merge_pending

    results = tmp_path / "results"
    run_dir = results / "runs" / "r1"
    bad = _pending(run_dir, "bad", {"trial_id": "bad", "status": "ok", "n_train": "lots"})
    alien = _pending(run_dir, "alien", {"trial_id": "alien", "status": "ok", "colour": "red"})
    torn = run_dir / "pending" / "torn.json"
    torn.write_text('{"trial_id": "to')
    _pending(run_dir, "good", {"trial_id": "good", "status": "ok", "ca": 0.5})
    store = ResultsStore(results / "results.parquet")
    assert merge_pending(store, results / "runs") == 1
    assert list(store.read()["trial_id"]) == ["good"]
    for path in (bad, alien, torn):
        assert not path.exists() and path.with_name(path.name + ".rejected").exists()
    assert "set aside" in caplog.text
    store.upsert([_row("later")])  # the directory is not blocked
    assert merge_pending(store, results / "runs") == 0
