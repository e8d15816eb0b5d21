"""Published reference numbers in the product, and `bench reproduce` beside them."""

from __future__ import annotations

import hashlib

import pandas as pd
import pytest

from bench.cli import main
from bench.errors import BenchError
from bench.report import references, reproduce
from bench.report.markdown import render_markdown
from bench.schema import upgrade

BB = references.DEFAULT


def test_the_shipped_reference_is_intact_and_speaks_our_names():
    ref = references.load(BB)
    table = ref.table
    assert ref.name == BB and "BackdoorBench" in ref.title and "b98eab46d547" in ref.source
    assert len(table) == 1100  # 1,110 rows less the ten "-1" placeholders (TrojanNN x FP)
    assert {"badnets", "iad"} <= set(table["attack"]) and not {"badnet", "inputaware"} & set(
        table["attack"]
    )
    assert {"none", "ibau", "abl", "dbd"} <= set(table["defense"])
    assert not {"no defense", "i-bau"} & set(table["defense"])
    assert {"lira", "blind"} <= set(table["attack"]) and "fp" in set(table["defense"])  # unmapped
    assert set(table["model"]) == {"preact_resnet18"}
    cell = table.set_index(["dataset", "attack", "defense", "ratio"]).loc[
        ("cifar10", "badnets", "abl", 0.1)
    ]
    assert cell["ca"] == pytest.approx(0.8332) and cell["asr"] == 0.0
    shipped = references.packaged_dir().joinpath(f"{BB}.csv").read_bytes()
    source = references.packaged_dir().joinpath(f"{BB}.toml").read_text()
    assert hashlib.sha256(shipped).hexdigest() in source  # the sidecar pins the bytes


def _write(path, rows, header="dataset,model,attack,defense,ratio,ca,asr,ra"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_a_user_reference_is_a_csv_with_a_name_and_bad_ones_say_why(tmp_path):
    user = tmp_path / "references"
    _write(user / "mine.csv", ["cifar10,cnn_small,bn,none,0.1,0.9,0.95,0.03"])
    (user / "mine.toml").write_text('title = "my run"\n[names.attack]\nbn = "badnets"\n')
    mine = references.load("mine", user)
    assert mine.title == "my run" and mine.table["attack"].tolist() == ["badnets"]
    assert set(references.available(user)) == {BB, "mine"}
    by_path = references.load(str(user / "mine.csv"))
    assert by_path.name == "mine" and by_path.table["attack"].tolist() == ["badnets"]

    with pytest.raises(BenchError, match=r"unknown reference 'nope'.*backdoorbench"):
        references.load("nope", user)
    bad = _write(tmp_path / "cols.csv", ["cifar10,none,0.1,0.9"], header="dataset,defense,r,ca")
    with pytest.raises(BenchError, match=r"lacks the columns \['model', 'attack'"):
        references.load(str(bad))
    pct = _write(tmp_path / "pct.csv", ["cifar10,m,badnets,none,0.1,91.3,95.0,4.7"])
    with pytest.raises(BenchError, match="fractions in \\[0, 1\\] \\(percent given\\?\\)"):
        references.load(str(pct))
    twice = _write(tmp_path / "twice.csv", ["cifar10,m,badnets,none,0.1,0.9,0.9,0.1"] * 2)
    with pytest.raises(BenchError, match="2 rows for repeated cells"):
        references.load(str(twice))
    changed = _write(tmp_path / "pinned.csv", ["cifar10,m,badnets,none,0.1,0.9,0.9,0.1"])
    (tmp_path / "pinned.toml").write_text('sha256 = "0000"\n')
    with pytest.raises(BenchError, match="does not match the sha256"):
        references.load(str(changed))


@pytest.mark.parametrize(
    ("d_ca", "d_asr", "expected"),
    [
        (0.0, 0.0, "reproduced"),
        (-0.02, 0.05, "reproduced"),  # the bounds are inclusive
        (0.021, 0.0, "close"),
        (0.0, -0.051, "close"),
        (0.05, 0.10, "close"),
        (0.051, 0.0, "differs"),
        (0.0, 0.11, "differs"),
    ],
)
def test_verdict_bounds(d_ca, d_asr, expected):
    assert reproduce.verdict(d_ca, d_asr) == expected


def _cell(defense, attack, ca, asr, *, preset, reference, ratio=0.1, seed=0):
    return {
        "trial_id": f"{preset}-{defense}-{attack}-{ratio}-{seed}",
        "status": "ok",
        "dataset": "cifar10",
        "preset": preset,
        "model": "preact_resnet18" if reference else "cnn_small",
        "ratio": ratio,
        "attack": attack,
        "defense": defense,
        "seed": seed,
        "ca": ca,
        "asr": asr,
        "ra": 0.1,
        "reference": reference,
        "git_rev": "abc",
        "finished_at": 1.0,
    }


@pytest.fixture
def paper(tmp_path):
    """A paper-preset table (reference named) with cells at known distances from BackdoorBench's
    (CIFAR-10, 10%: none/badnets CA 91.32 ASR 95.03; abl/badnets CA 83.32 ASR 0.00; ibau/blended
    CA 87.00 ASR 50.53) and one cell BackdoorBench does not have (NAB)."""
    rows = [
        _cell("none", "badnets", 0.9232, 0.9203, preset="paper", reference=BB),  # +1.0, -3.0
        _cell("none", "badnets", 0.9032, 0.9803, preset="paper", reference=BB, seed=1),  # mean
        _cell("abl", "badnets", 0.7932, 0.0800, preset="paper", reference=BB),  # -4.0, +8.0
        _cell("ibau", "blended", 0.7700, 0.5053, preset="paper", reference=BB),  # -10.0
        _cell("nab", "badnets", 0.90, 0.05, preset="paper", reference=BB),
    ]
    df = upgrade(pd.DataFrame(rows))
    df.to_parquet(tmp_path / "results.parquet", index=False)
    return df


def test_a_comparable_preset_gets_the_numeric_reproduction_table(paper, tmp_path, capsys):
    (comparison,) = reproduce.compare(paper, references.load(BB))
    assert comparison.comparable and comparison.unmatched == 1  # nab
    verdicts = comparison.cells.set_index(["defense", "attack"])["verdict"].to_dict()
    assert verdicts == {
        ("none", "badnets"): "reproduced",  # seeds averaged: CA 91.32 (+0.0), ASR 95.03 (+0.0)
        ("abl", "badnets"): "close",
        ("ibau", "blended"): "differs",
    }
    assert main(["reproduce", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "Reference: backdoorbench-preactresnet18, BackdoorBench's published" in out
    assert "Comparable: preset paper follows this reference's protocol" in out
    assert "3 cells compared: 1 reproduced, 1 close, 1 differs; 1 cells have no published" in out
    assert "| cifar10 | 0.1 | badnets | abl | 1 | 79.3 / 83.3 | -4.0 | 8.0 / 0.0 | +8.0 |" in out
    assert "| cifar10 | 0.1 | badnets | none | 2 | 91.3 / 91.3 | +0.0 |" in out
    assert "verdict agreement" not in out


def test_a_preset_of_its_own_protocol_gets_verdict_agreement(tmp_path, capsys):
    rows = [
        _cell("none", "badnets", 0.72, 0.93, preset="quick", reference=""),
        _cell("abl", "badnets", 0.66, 0.05, preset="quick", reference=""),  # both succeed
        _cell("ibau", "blended", 0.59, 0.00, preset="quick", reference=""),  # published fails
        _cell("dbd", "wanet", 0.46, 0.50, preset="quick", reference=""),  # published succeeds
        _cell("nab", "wanet", 0.67, 0.45, preset="quick", reference=""),  # not published
        _cell("abl", "trojannn", 0.53, 0.00, preset="quick", reference=""),  # published CA 11.1
        _cell("none", "trojannn", 0.70, 1.00, preset="quick", reference=""),
    ]
    df = upgrade(pd.DataFrame(rows))
    df.to_parquet(tmp_path / "results.parquet", index=False)
    (comparison,) = reproduce.compare(df, references.load(BB))
    assert not comparison.comparable and comparison.unmatched == 1
    assert main(["reproduce", "--results-dir", str(tmp_path), "--reference", BB]) == 0
    out = capsys.readouterr().out
    assert "Not comparable: preset quick does not follow this reference's protocol" in out
    assert "3 defended cells compared, 1 agree (33%); 1 cells have no published counterpart." in out
    # BackdoorBench's ABL on TrojanNN collapsed (CA 11.1%, every input the target): not a verdict
    assert "Left out: 1 cell(s) where a model's clean accuracy is below 20%" in out
    assert "abl on cifar10 trojannn at 0.1: CA 53.0 / 11.1" in out
    assert "| trojannn | abl | 0.0 / 100.0 | succeeds | fails | left out (collapsed) |" in out
    assert "the attack works (ASR at least 20%) in 2 of 2 cells here and in 2 of them" in out
    # CA-aware: ABL on TrojanNN loses 17 points here and 82 published: it fails on both sides,
    # so the cell agrees (ASR-only, it was left out). Where our none is missing: left out.
    assert (
        "CA-aware: a defense works when its ASR is below 20% and it loses at most 10 points "
        "of clean accuracy against no defense (ours against our none, published against "
        "published); 2 defended cells compared, 2 agree (100%); 2 left out" in out
    )
    assert (
        "| succeeds | fails | left out (collapsed) | -17.0 / -82.3 | fails | fails | yes |" in out
    )
    assert "| succeeds | succeeds | yes | -6.0 / -8.0 | works | works | yes |" in out
    assert (
        "| 0.0 / 50.5 | succeeds | fails | no | – / -6.5 | fails | fails | left out (no none) |"
        in out
    )
    assert (
        "Agreement by defense (ASR-only; CA-aware): abl 1/1; 2/2, dbd 0/1; 0/0, ibau 0/1; 0/0."
        in out
    )
    assert "| cifar10 | 0.1 | blended | ibau | 0.0 / 50.5 | succeeds | fails | no |" in out
    assert "| cifar10 | 0.1 | badnets | abl | 5.0 / 0.0 | succeeds | succeeds | yes |" in out
    assert "reproduced" not in out and "dCA" not in out  # no numeric comparison
    # The leaderboard carries the same section.
    md = render_markdown(df, reproduction=reproduce.render_markdown(
        reproduce.default_reproduction(df, None)))  # fmt: skip
    assert "## Reproduction against published numbers" in md and "1 agree (33%)" in md


def test_a_missing_reference_is_reported_not_fatal_in_the_leaderboard(paper):
    df = paper.assign(reference="someone-elses-table")
    result = reproduce.default_reproduction(df, None)
    assert result.comparisons == [] and "someone-elses-table" in result.missing
    text = reproduce.render_markdown(result)
    assert "Reference `someone-elses-table` named by the results is not available" in text


def test_a_defense_meets_a_published_cell_only_under_the_name_it_declares():
    """A plugin that happens to be called "nad" is not BackdoorBench's NAD unless its class
    declares ``reference_name = "nad"``; the built-in does, and rows from before the column
    (built-in package) keep their own names."""
    ours = _cell("nad", "badnets", 0.80, 0.10, preset="quick", reference="")
    plugin = {**ours, "trial_id": "p", "defense_package": "bench-nad", "defense_version": "0.1"}
    builtin = {**ours, "defense_reference_name": "nad"}
    declared = {**plugin, "trial_id": "d", "defense_reference_name": "nad"}
    reference = references.load(BB)

    def matched(row) -> int:
        table = upgrade(
            pd.DataFrame([row, _cell("none", "badnets", 0.8, 0.9, preset="quick", reference="")])
        )
        return sum(
            len(c.cells[c.cells["defense"] == "nad"]) for c in reproduce.compare(table, reference)
        )

    assert matched(plugin) == 0  # a bare name never matches
    assert matched(declared) == 1 and matched(builtin) == 1
    old = {k: v for k, v in builtin.items() if k != "defense_reference_name"}
    assert upgrade(pd.DataFrame([old]))["defense_reference_name"].tolist() == ["nad"]
    assert upgrade(pd.DataFrame([plugin]))["defense_reference_name"].tolist() == [""]
