"""Bad input: each case gets a clear, specific error and a non-zero exit, and the results table
that was already there is left exactly as it was (a corrupted one is moved aside, never lost).

A corrupted dataset cache is not an error: it is rebuilt (tests/core/test_data.py)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main

PRESET_OK = """
[preset]
name = "custom"
[grid]
datasets = ["cifar10"]
attacks = ["badnets"]
defenses = ["none"]
ratios = [0.1]
seeds = [0]
[data]
train_size = 1000
test_size = 200
[train]
epochs = 1
"""


@pytest.fixture
def results(tmp_path) -> Path:
    """A results dir holding a valid table with one row."""
    out = tmp_path / "results"
    out.mkdir()
    pd.DataFrame([{"trial_id": "keep-me", "status": "ok", "ca": 0.5}]).to_parquet(
        out / "results.parquet", index=False
    )
    return out


def _preset(tmp_path: Path, text: str) -> str:
    path = tmp_path / "preset.toml"
    path.write_text(text)
    return str(path)


def _isolate_data(monkeypatch, tmp_path):
    from bench.core import settings

    monkeypatch.setattr(settings, "default_data_dirs", lambda: [])
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_OFFLINE", "1")


def _case_env(name, monkeypatch, tmp_path):
    if name == "missing data directory":
        monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "no-such-dir"))
    elif name == "no data anywhere, offline":
        _isolate_data(monkeypatch, tmp_path)
    elif name == "corrupted archive":
        _isolate_data(monkeypatch, tmp_path)
        bad = tmp_path / "bad-data"
        bad.mkdir()
        (bad / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b\x08 not really gzip")
        monkeypatch.setenv("BENCH_DATA_DIR", str(bad))


RUN = ["run", "--preset", "smoke"]

# (name, argv after "bench", preset text or None, expected message fragment)
CASES = [
    ("unknown attack", [*RUN, "--attacks", "badnet"], None, "Did you mean 'badnets'"),
    ("unknown defense", [*RUN, "--defenses", "abll"], None, "unknown defense 'abll'"),
    ("typo after all (attacks)", [*RUN, "--attacks", "all,badnet"], None, "Did you mean 'badnets'"),
    ("typo after all (defenses)", [*RUN, "--defenses", "all,ablx"], None, "unknown defense 'ablx'"),
    (
        "unknown dataset",
        [*RUN, "--datasets", "cifar11"],
        None,
        "unknown dataset 'cifar11'. Did you mean 'cifar10'",
    ),
    ("unknown preset", ["run", "--preset", "quik"], None, "Did you mean 'quick'"),
    ("ratio above 1", [*RUN, "--ratios", "1.5"], None, "poison ratio must be in (0, 1), got 1.5"),
    ("ratio zero", [*RUN, "--ratios", "0"], None, "poison ratio must be in (0, 1), got 0.0"),
    ("ratio not a number", [*RUN, "--ratios", "ten"], None, "expected comma-separated floats"),
    ("negative seed", [*RUN, "--seeds", "-1"], None, "seeds must be non-negative integers"),
    ("empty axis", [*RUN, "--attacks", ","], None, "the grid axis 'attacks' is empty"),
    ("negative cpus", [*RUN, "--cpus-per-trial", "-1"], None, "--cpus-per-trial must be > 0"),
    (
        "gpus without a GPU",
        [*RUN, "--gpus-per-trial", "1"],
        None,
        "--gpus-per-trial 1.0 asked for, but",
    ),
    (
        "unreachable address",
        [*RUN, "--address", "127.0.0.1:9"],
        None,
        "cannot reach a Ray cluster at --address 127.0.0.1:9",
    ),
    ("malformed address", [*RUN, "--address", "nohost"], None, "--address must be host:port"),
    (
        "ratio beyond the eligible pool",
        [*RUN, "--ratios", "0.95"],
        None,
        "the maximum possible ratio here is 0.9070",
    ),
    (
        "target out of range",
        None,
        PRESET_OK.replace("seeds = [0]", "seeds = [0]\ntarget = 10"),
        "target class 10 is out of range for cifar10",
    ),
    (
        "unknown preset key",
        None,
        PRESET_OK.replace("epochs = 1", "epochs = 1\nepohcs = 2"),
        "unknown key(s) ['epohcs'] in [train]",
    ),
    ("unknown preset section", None, PRESET_OK + "\n[extra]\nx = 1\n", "unknown section(s)"),
    ("unreadable preset", None, PRESET_OK + "\n[grid\n", "cannot read preset file"),
    ("unknown model", None, PRESET_OK + '\n[models]\ndefault = "vgg99"\n', "unknown model 'vgg99'"),
    (
        "unknown attack parameter",
        None,
        PRESET_OK + "\n[attacks.badnets]\ncolor = 1\n",
        "attack 'badnets': unknown parameter(s) ['color']",
    ),
    (
        "wrong parameter type",
        None,
        PRESET_OK + '\n[attacks.badnets]\nsize = "big"\n',
        "parameter 'size' must be int",
    ),
    (
        "invalid parameter value",
        None,
        PRESET_OK + "\n[attacks.badnets]\nsize = 40\n",
        "size must be in [1, 16]",
    ),
    (
        "bad training budget",
        None,
        PRESET_OK.replace("epochs = 1", 'epochs = 1\nschedule = "x"'),
        "unknown schedule 'x'",
    ),
    ("missing preset file", ["run", "--preset", "missing.toml"], None, "does not exist"),
    ("missing data directory", RUN, None, "BENCH_DATA_DIR="),
    ("no data anywhere, offline", RUN, None, "Set BENCH_DATA_DIR to a directory holding"),
    ("corrupted archive", RUN, None, "truncated or corrupted"),
    (
        "check-defense with bad JSON",
        ["check-defense", "none", "--params", "{oops"],
        None,
        "--params must be a JSON object",
    ),
    ("new-defense with a bad name", ["new-defense", "Bad-Name"], None, "must be lowercase"),
]


@pytest.mark.parametrize(("name", "argv", "preset", "message"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_clearly(
    name, argv, preset, message, results, tmp_path, monkeypatch, capsys
):
    _case_env(name, monkeypatch, tmp_path)
    monkeypatch.chdir(tmp_path)
    if preset is not None:
        argv = ["run", "--preset", _preset(tmp_path, preset)]
    before = (results / "results.parquet").read_bytes()
    if argv[0] == "run":
        argv = [*argv, "--results-dir", str(results)]
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors
        code = exc.code
    err = capsys.readouterr().err
    assert code != 0
    assert message in err, err
    assert (results / "results.parquet").read_bytes() == before
    assert not (results / "runs").exists(), "nothing may start for bad input"


def test_corrupted_results_table_is_moved_aside_not_overwritten(results, capsys):
    table = results / "results.parquet"
    table.write_bytes(b"PAR1 torn write")
    assert main([*RUN, "--results-dir", str(results)]) == 2
    assert "unreadable" in capsys.readouterr().err
    aside = list(results.glob("results.parquet.corrupt-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"PAR1 torn write"


@pytest.mark.parametrize("command", ["leaderboard", "timing", "reproduce"])
def test_readers_of_a_missing_results_dir_exit_2_alike(command, tmp_path, capsys):
    missing = tmp_path / "no-such-results"
    assert main([command, "--results-dir", str(missing)]) == 2
    assert f"no results to show: {missing} does not exist" in capsys.readouterr().err
    assert not missing.exists(), "a reader creates nothing"
