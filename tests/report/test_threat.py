"""Each defense's threat model card (what the defender holds, when it acts) in `bench list` and
on the page, and the decision view's facts above its table (data, budget, clean data given)."""

from __future__ import annotations

import re

import pandas as pd

from bench.cli import main
from bench.grid import registry
from bench.report import threat
from bench.report.render import render
from bench.schema import upgrade


def test_the_builtin_needs_listed_for_the_report_are_the_classes_own():
    declared = {
        name: frozenset(entry.load().needs)
        for name, entry in registry.entries("defense").items()
        if entry.package == "backdoor-leaderboard" and name != "none"
    }
    assert declared == threat.BUILTIN_NEEDS


def test_bench_list_prints_each_defense_card(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    block = {
        m[1]: m[2]
        for m in re.finditer(r"^  (\w+) +backdoor-leaderboard.*\n((?:^      .*\n)+)", out, re.M)
    }
    assert "clean data:            none" in block["clp"]
    assert "acts after training" in block["clp"]
    assert "clean data:            a clean subset" in block["nab"]
    assert "acts during training" in block["nab"]
    assert "https://github.com/bboylyg/ABL" in block["abl"]
    assert "no official code" in block["dlp"]  # reconstructed: says so
    assert set(block) == set(threat.BUILTIN_NEEDS)  # every built-in has one, `none` has none


def _row(defense, attack, ca, asr, **extra):
    return {
        "trial_id": f"{defense}-{attack}",
        "status": "ok",
        "dataset": "cifar10",
        "preset": "quick",
        "model": "vgg5",
        "ratio": 0.1,
        "target": 0,
        "attack": attack,
        "defense": defense,
        "seed": 0,
        "ca": ca,
        "asr": asr,
        "ra": 0.5,
        "n_train": 20000,
        "n_test": 10000,
        "train": '{"epochs": 14, "batch_size": 128}',
        "data_source": "archive:cifar10-jpeg.tar.gz (JPEG export, not the official pixels)",
        "train_seconds": 60.0,
        "git_rev": "abc",
        **extra,
    }


def test_the_page_shows_cards_and_what_the_decision_rests_on(tmp_path):
    rows = []
    for attack in ("badnets", "blended"):
        rows.append(_row("none", attack, 0.80, 0.95))
        rows.append(_row("abl", attack, 0.78, 0.05))
        rows.append(_row("ibau", attack, 0.79, 0.08, clean_fraction=0.05, n_clean_subset=1000))
    page = render(upgrade(pd.DataFrame(rows)), tmp_path, code_revision="def456").page.read_text()
    decide = page.split('<section id="decide">')[1].split("</section>")[0]
    facts = decide.split('<ul class="facts">')[1].split("</ul>")[0]
    assert "<b>images</b>: archive:cifar10-jpeg.tar.gz (JPEG export" in facts
    assert "vgg5" in facts and "20,000 training" in facts and "14 epochs" in facts
    assert "ibau: 1,000 clean images (5% of the training set); abl: none" in facts
    # The record's code revision and precision, and that the code has moved on since.
    assert "<b>record</b>: code revision abc, precision" in facts
    assert "rendered by revision def456" in facts
    methods = page.split('<section id="methods">')[1]
    ibau = methods.split(">ibau<")[1].split("</tr>")[0]
    assert "<dt>clean data</dt><dd>1,000 clean images (5% of the training set)</dd>" in ibau
    assert "acts after training" in ibau
    abl = methods.split(">abl<")[1].split("</tr>")[0]
    assert "<dt>clean data</dt><dd>none</dd>" in abl and "acts during training" in abl
