"""The leaderboard as a decision tool: best defense per attack and family under a CA-drop bound,
tables titled by what they hold, no misleading ratio plot, fixed plot styles, the protocol and
the methods' links, readable details (no browser here; test_leaderboard.py drives one)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pandas as pd
import pytest

from bench.report import catalog, decision, plots
from bench.report.aggregate import aggregate, trial_table
from bench.report.details import cell_details
from bench.report.markdown import render_markdown
from bench.report.naming import table_title
from bench.report.protocol import protocol, recipe
from bench.report.ranks import ranking
from bench.report.render import render
from bench.schema import upgrade

ROOT = Path(__file__).resolve().parents[2]


def _row(defense, attack, ca, asr, *, ratio=0.1, seed=0, dataset="cifar10", **extra):
    return {
        "trial_id": f"{dataset}-{defense}-{attack}-{ratio}-{seed}",
        "status": "ok",
        "dataset": dataset,
        "preset": "quick",
        "model": "cnn_small",
        "ratio": ratio,
        "target": 0,
        "attack": attack,
        "defense": defense,
        "seed": seed,
        "ca": ca,
        "asr": asr,
        "ra": 0.5,
        "train_seconds": 600.0,
        "defense_seconds": 300.0,
        "device": "cpu",
        "git_rev": "abc",
        "finished_at": 1.7e9,
        **extra,
    }


@pytest.fixture
def quick_like() -> pd.DataFrame:
    """The committed quick grid's shape: poison-label attacks at 10%, clean-label ones at 5%,
    and a second dataset where only `none` ran."""
    rows = []
    for attack, ratio in (("badnets", 0.1), ("blended", 0.1), ("wanet", 0.1), ("sig", 0.05)):
        rows.append(_row("none", attack, 0.80, 0.95, ratio=ratio))
        # abl: the lowest ASR everywhere but 12 points of CA lost.
        rows.append(_row("abl", attack, 0.68, 0.01, ratio=ratio, clean_fraction=0.0))
        # ibau: within any bound (2 points), a high ASR on blended only.
        rows.append(
            _row(
                "ibau",
                attack,
                0.78,
                0.90 if attack == "blended" else 0.05,
                ratio=ratio,
                clean_fraction=0.05,
                n_clean_subset=1000,
            )
        )
    rows.append(_row("none", "badnets", 0.90, 0.9, dataset="gtsrb"))
    return upgrade(pd.DataFrame(rows))


def test_the_best_defense_is_the_lowest_asr_within_the_ca_drop_bound(quick_like):
    boards = {b["dataset"]: b for b in decision.boards(aggregate(quick_like))}
    cifar = boards["cifar10"]
    groups = {(g["family"], g["ratio"]): g for g in cifar["groups"]}
    assert list(groups) == [
        ("static poison-label", 0.1),
        ("clean-label", 0.05),
        ("training-controlled", 0.1),
    ]
    static = groups["static poison-label", 0.1]
    badnets = next(a for a in static["attacks"] if a["attack"] == "badnets")
    assert [o["label"] for o in badnets["options"]] == ["abl", "ibau"]  # lowest ASR first
    assert decision.best(badnets)["label"] == "ibau"  # abl loses 12 points: out at 5
    assert decision.best(badnets, max_drop=0.15)["label"] == "abl"
    assert decision.best(badnets, max_drop=0.01) is None
    # The family: ibau is the only one within 5 points on both; its worst attack is blended.
    family = decision.family_best(static)
    assert family["label"] == "ibau" and family["worst_attack"] == "blended"
    assert family["mean_asr"] == pytest.approx((0.05 + 0.90) / 2)
    assert family["worst_asr"] == pytest.approx(0.90)
    assert family["mean_d_ca"] == pytest.approx(-0.02)
    assert family["minutes"] == pytest.approx(10.0)
    assert decision.family_best(static, max_drop=0.15)["label"] == "abl"
    # A dataset where no defense ran says so instead of ranking `none`.
    assert not boards["gtsrb"]["defended"]


def test_a_defense_without_a_baseline_is_never_chosen():
    rows = [
        _row("none", "badnets", 0.80, 0.95),
        _row("abl", "badnets", 0.80, 0.01, train='{"epochs": 9}'),  # another spec: no baseline
        _row("ibau", "badnets", 0.79, 0.30),
    ]
    board = decision.boards(aggregate(upgrade(pd.DataFrame(rows))))[0]
    badnets = board["groups"][0]["attacks"][0]
    assert badnets["options"][0]["label"] == "abl" and badnets["options"][0]["d_ca"] is None
    assert decision.best(badnets, max_drop=1.0)["label"] == "ibau"


def test_tables_are_titled_by_what_they_hold_and_none_alone_is_not_ranked(quick_like, tmp_path):
    agg = aggregate(quick_like)
    five = agg[agg["ratio"] == 0.05]
    ten = agg[(agg["ratio"] == 0.1) & (agg["dataset"] == "cifar10")]
    assert table_title("cifar10", "quick", 0.05, five) == (
        "CIFAR-10 · preset quick · clean-label attacks at 5% poison"
    )
    assert table_title("cifar10", "quick", 0.1, ten).endswith(
        "static poison-label and training-controlled attacks at 10% poison"
    )
    ranks = ranking(agg)
    assert set(ranks["dataset"]) == {"cifar10"}  # gtsrb holds only none: nothing ranked
    md = render_markdown(quick_like)
    assert "## gtsrb · preset `quick` · poison ratio 0.1: static poison-label attacks" in md
    assert "Only the undefended baseline (`none`) ran on this table: nothing to rank" in md
    page = render(quick_like, tmp_path).page.read_text()
    assert "GTSRB · preset quick · static poison-label attacks at 10% poison" in page
    assert page.count("there is nothing to rank") == 1
    assert "No defense ran here (only <code>none</code>)" in page


def test_ratio_plots_compare_only_attacks_run_at_every_ratio(quick_like, tmp_path):
    agg = aggregate(quick_like)
    assert plots.common_attacks(agg[agg["dataset"] == "cifar10"]) == []
    names = {f.path.name for f in plots.render_all(agg, tmp_path / "a")}
    assert not any(n.startswith("asr_vs_ratio") for n in names)  # not a sweep: no ratio plot
    assert "ca_vs_asr_gtsrb_quick_r0.1.png" not in names  # only none there: nothing to compare
    (tmp_path / "a" / "der_bars_cifar10_quick_r0.2.png").write_bytes(b"stale")  # a gone table
    sweep = pd.concat(
        [
            quick_like,
            upgrade(
                pd.DataFrame(
                    [
                        _row("none", "badnets", 0.8, 0.9, ratio=0.05),
                        _row("abl", "badnets", 0.7, 0.1, ratio=0.05),
                    ]
                )
            ),
        ],
        ignore_index=True,
    )
    (tmp_path / "a" / "attacks.png").write_bytes(b"gallery")  # not ours: never removed
    figures = plots.render_all(aggregate(sweep), tmp_path / "a")
    plots.remove_stale(tmp_path / "a", figures)
    left = {p.name for p in (tmp_path / "a").iterdir()}
    assert left == {f.path.name for f in figures} | {"attacks.png"}
    ratio = [f for f in figures if f.path.name.startswith("asr_vs_ratio")]
    assert len(ratio) == 1 and ratio[0].ratio is None
    assert "(badnets)" in ratio[0].caption  # says which attacks the lines come from
    assert all(f.caption and f.title for f in figures)


def test_every_defense_keeps_one_colour_and_marker_and_none_is_grey(quick_like):
    plugin = _row("finetune", "badnets", 0.79, 0.2, defense_package="bench-finetune")
    agg = aggregate(pd.concat([quick_like, upgrade(pd.DataFrame([plugin]))], ignore_index=True))
    style = plots.styles(agg)
    assert style["none"] == plots.Style(plots.NONE_COLOUR, "o")
    assert style["abl"] == plots.Style(*plots.BUILTIN_STYLE["abl"])
    label = next(lb for lb in style if lb.startswith("finetune"))
    used = {(s.colour, s.marker) for lb, s in style.items() if lb != label}
    assert (style[label].colour, style[label].marker) not in used
    # A table without abl does not shift anyone's colour: the style is per label, not position.
    assert plots.styles(agg[agg["defense"] != "abl"])["ibau"] == style["ibau"]
    assert all(s.colour in (*plots.OKABE_ITO, plots.NONE_COLOUR) for s in style.values())


def test_families_and_links_cover_every_builtin():
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]
    for name in set(entry_points["bench.attacks"]) - {"clean"}:  # no attack: the clean model
        assert catalog.family(name) in catalog.FAMILIES[:3], name
        assert catalog.ATTACKS[name].paper.startswith("https://"), name
    for name in set(entry_points["bench.defenses"]) - {"none"}:
        method = catalog.DEFENSES[name]
        assert method.paper.startswith("https://") and (method.code or method.note), name
    assert catalog.family("sig") == catalog.CLEAN_LABEL
    assert catalog.family("mine", "training-controlled", "pkg") == catalog.TRAINING_CONTROLLED
    assert catalog.family("mine", "static", "pkg") == catalog.OTHER
    assert catalog.family("badnets", "static", "other-pkg") == catalog.OTHER  # not the built-in


def test_protocol_and_details_are_readable(quick_like):
    train = {
        "epochs": 7,
        "batch_size": 128,
        "lr": 0.1,
        "momentum": 0.9,
        "nesterov": True,
        "schedule": "onecycle",
        "weight_decay": 5e-4,
    }
    assert recipe(train) == (
        "7 epochs, batch 128, SGD (nesterov, momentum 0.9) lr 0.1, onecycle schedule, "
        "weight decay 0.0005"
    )
    table = quick_like.assign(
        train=json.dumps(train),
        n_train=20000,
        n_test=10000,
        attack_params='{"alpha": 0.2}',
        run="2026-01-01T00-00-00",
        defense_metrics='{"relabelled": 12}',  # a column this schema does not define
    )
    trials = trial_table(table)
    found = protocol(trials[trials["ratio"] == 0.1])
    assert found.summary[:3] == ["cnn_small", "20,000 training / 10,000 test images", "7 epochs"]
    lines = dict(found.lines)
    assert lines["attack blended"] == "alpha 0.2"
    assert lines["defense ibau"] == "clean data: 5% of the training set (1,000 images)"
    assert lines["defense abl"] == "no clean data"
    agg = aggregate(table)
    cell = agg[(agg["ratio"] == 0.1) & (agg["defense"] == "ibau") & (agg["attack"] == "badnets")]
    cell = cell.iloc[0]
    seeds = trials[(trials["defense"] == "ibau") & (trials["attack"] == "badnets")]
    shown = cell_details(cell, seeds, list(table.columns), "ref: CA 90.0 / ASR 1.0 / RA 80.0")
    facts = dict(shown["facts"])
    assert facts["CA change vs none"] == "-2.0 points (none: 80.0%)"
    assert facts["time to a defended model"] == "10.0 min" and facts["published"].startswith("ref")
    (row,) = shown["seeds"]["rows"]
    assert row[-1] == "results/runs/2026-01-01T00-00-00/trials/cifar10-ibau-badnets-0.1-0.log"
    assert row[-3] == "2023-11-14 22:13:20 UTC"  # finished_at, in ISO
    fields = dict(shown["fields"][0]["rows"])
    assert fields["defense_metrics"] == "relabelled: 12"
    assert "spec" not in fields and "ca" not in fields  # shown elsewhere


def test_cost_plot_labels_cover_no_marker_and_no_other_label():
    """Crowded points (same minutes, scores a point apart): every label is placed clear of
    every marker and of every other label (a label used to hide under a marker)."""
    rows = []
    for attack in ("badnets", "blended"):
        rows.append(_row("none", attack, 0.80, 0.95, train_seconds=600.0))
        for i, defense in enumerate(("abl", "ibau", "nab", "dlp", "ft", "fp")):
            rows.append(_row(defense, attack, 0.79, 0.10 + 0.01 * i, train_seconds=600.0 + 3 * i))
    agg = aggregate(upgrade(pd.DataFrame(rows)))
    fig = plots.cost_figure(agg, "crowded", plots.styles(agg))
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t for t in ax.texts if "none (training" not in t.get_text()]
        boxes = [t.get_window_extent(renderer) for t in labels]
        markers = [ax.transData.transform(off) for c in ax.collections for off in c.get_offsets()]
        assert len(labels) == 6 and len(markers) == 6
        for box, text in zip(boxes, labels, strict=True):
            for mx, my in markers:
                inside = box.x0 - 4 < mx < box.x1 + 4 and box.y0 - 4 < my < box.y1 + 4
                assert not inside, (text.get_text(), box, (mx, my))
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert not a.overlaps(b), (a, b)
    finally:
        plots.plt.close(fig)
