"""The clean-model column: every defense also runs on a model trained without poisoning (the
`clean` attack poisons nothing and runs once per seed at ratio 0); the leaderboard shows what
each defense costs there (CA change against `none` on the clean model, clean samples flagged)
beside its ranking and its decision-view pick, and never ranks defenses on it."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from attacks.clean import Clean
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.report import decision
from bench.report.aggregate import aggregate
from bench.report.markdown import render_markdown
from bench.report.ranking_table import CLEAN_NOTE
from bench.report.ranks import ranking
from bench.report.render import render
from bench.schema import upgrade
from bench.trial.poisoning import ground_truth, poison_train_set


def test_the_grid_runs_the_clean_model_once_per_seed_at_ratio_zero(cifar10):
    preset = with_overrides(
        load_preset("smoke"),
        attacks=["badnets", "clean"],
        defenses=["none", "abl"],
        ratios=[0.1, 0.05],
        seeds=[0, 1],
    )
    specs = expand_grid(preset)
    clean = [s for s in specs if s.attack == "clean"]
    assert {s.ratio for s in clean} == {0.0}
    assert sorted((s.seed, s.defense) for s in clean) == [
        (0, "abl"), (0, "none"), (1, "abl"), (1, "none"),
    ]  # fmt: skip
    assert len(specs) - len(clean) == 2 * 2 * 2  # badnets: ratios x seeds x defenses
    assert "clean" in load_preset("quick").grid.attacks  # part of the default grid


def test_the_clean_attack_changes_no_image_and_no_label(cifar10):
    data = cifar10.subset(500, 100, seed=0)
    attack = Clean()
    truth = ground_truth(attack, data.train_y, 0.0, 0, seed=3)
    assert not truth.poison_mask.any() and truth.cross_mask is None
    poisoned = poison_train_set(
        attack, data.train_x, data.train_y, 0.0, 0, seed=3, device=torch.device("cpu")
    )
    assert torch.equal(poisoned.images, data.train_x)
    assert torch.equal(poisoned.labels, data.train_y)
    assert torch.equal(attack.apply_test(data.test_x), data.test_x)


def _row(defense, attack, ca, asr, *, ratio=0.1, seed=0, **extra):
    return {
        "trial_id": f"{defense}-{attack}-{ratio}-{seed}",
        "status": "ok",
        "dataset": "cifar10",
        "preset": "quick",
        "model": "vgg5",
        "ratio": ratio,
        "target": 0,
        "attack": attack,
        "defense": defense,
        "seed": seed,
        "ca": ca,
        "asr": asr,
        "ra": 0.5,
        "train_seconds": 60.0,
        "git_rev": "abc",
        **extra,
    }


@pytest.fixture
def with_clean() -> pd.DataFrame:
    rows = []
    for attack in ("badnets", "blended"):
        rows.append(_row("none", attack, 0.80, 0.95))
        rows.append(_row("abl", attack, 0.78, 0.05))
        rows.append(_row("ibau", attack, 0.79, 0.10))
    # On the clean model: ABL costs 6 points and flags 1% of clean samples; I-BAU costs 1.
    rows.append(_row("none", "clean", 0.82, 0.02, ratio=0.0))
    rows.append(_row("abl", "clean", 0.76, 0.02, ratio=0.0, det_fpr=0.01, det_tpr=float("nan")))
    rows.append(_row("ibau", "clean", 0.81, 0.02, ratio=0.0))
    return upgrade(pd.DataFrame(rows))


def test_ranking_and_decision_carry_the_clean_column_and_rank_only_attacks(with_clean):
    agg = aggregate(with_clean)
    ranks = ranking(agg)
    assert set(ranks["ratio"]) == {0.1}  # no ranking of the clean model itself
    by = ranks.set_index("defense_label")
    assert by.loc["abl", "clean_d_ca"] == pytest.approx(-0.06)
    assert by.loc["abl", "clean_fpr"] == pytest.approx(0.01)
    assert by.loc["ibau", "clean_d_ca"] == pytest.approx(-0.01)
    assert pd.isna(by.loc["ibau", "clean_fpr"])  # flags nothing
    # The clean cells do not enter the score: the ranking is the one without them.
    without = ranking(aggregate(with_clean[with_clean["attack"] != "clean"]))
    assert list(without["defense_label"]) == list(ranks["defense_label"])
    assert without["bounded_asr"].tolist() == ranks["bounded_asr"].tolist()
    (board,) = decision.boards(agg)
    attacks = [a["attack"] for g in board["groups"] for a in g["attacks"]]
    assert "clean" not in attacks
    best = decision.best(board["groups"][0]["attacks"][0])
    assert best["label"] == "abl" and best["clean_d_ca"] == pytest.approx(-0.06)


def test_markdown_and_page_show_the_clean_model(with_clean, tmp_path):
    md = render_markdown(with_clean)
    assert "| CA change, clean model | clean flagged |" in md
    assert "| 1 | abl | 5.0 [" in md and "| -6.0 | 1.0 |" in md
    clean = md.split("poison ratio 0: clean model (no poison)")[1].split("\n## ")[0]
    assert CLEAN_NOTE in clean and "Ranking." not in clean
    assert "| CA change, clean model | RA |" in md  # the decision view's column
    out = render(with_clean, tmp_path)
    page = out.page.read_text()
    assert "clean model (no poison)" in page and "CA change, clean model" in page
    assert not any("r0." in p.name and "_r0.png" in p.name for p in out.plots)
    assert not [p for p in out.plots if p.name.endswith("_r0.png")]  # no plots of it
    assert dataclasses.is_dataclass(out)
