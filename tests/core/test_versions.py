"""The code revision a row records: '-dirty' means uncommitted code, never generated results."""

import subprocess

from bench.core import versions


def _git(repo, *args):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


def test_a_run_writing_the_committed_results_does_not_mark_its_rows_dirty(tmp_path, monkeypatch):
    """Before: with results/results.parquet committed, the first row a run wrote made every later
    trial of the same run record '<rev>-dirty' (the table itself was the uncommitted change)."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "results.parquet").write_bytes(b"rows")
    (tmp_path / "code.py").write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    monkeypatch.setattr(versions, "PROJECT_ROOT", tmp_path)

    def revision() -> str:
        versions.git_revision.cache_clear()
        return versions.git_revision()

    (tmp_path / "results" / "results.parquet").write_bytes(b"more rows")
    assert revision() != "unknown" and not revision().endswith("-dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert revision().endswith("-dirty")
    versions.git_revision.cache_clear()
