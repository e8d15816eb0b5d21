"""Leaderboard metrics, markdown, export and the static page (in a real headless browser)."""

from __future__ import annotations

import json
import math
import os
import re
import shutil

import pandas as pd
import pytest
import torch

from bench import metrics
from bench.report import stats
from bench.report.aggregate import aggregate, ranking, trial_table
from bench.report.markdown import cell_text
from bench.report.render import render
from bench.schema import upgrade

EVIL = "<script>window.__pwned=1</script>"


# --------------------------------------------------------------------------- metric functions


def test_der_matches_the_ft_sam_worked_example():
    # FT-SAM Table 1, BadNets with FT: CA 91.82 -> 90.29, ASR 93.79 -> 1.70 gives 95.28.
    assert stats.defense_effectiveness_rating(0.9182, 0.9379, 0.9029, 0.0170) == pytest.approx(
        0.9528, abs=1e-4
    )


@pytest.mark.parametrize(
    ("ca_def", "asr_def", "expected"),
    [
        (0.80, 0.90, 0.5),  # nothing changed
        (0.80, 0.10, 0.9),  # ASR down 80 points
        (0.70, 0.90, 0.45),  # CA down 10 points: penalised
        (0.90, 0.90, 0.5),  # CA up: not rewarded (the sign BackdoorBench got wrong once)
        (0.80, 1.00, 0.5),  # ASR up: not rewarded either way
        (0.70, 0.10, 0.85),  # both
    ],
)
def test_der_sign(ca_def, asr_def, expected):
    assert stats.defense_effectiveness_rating(0.80, 0.90, ca_def, asr_def) == pytest.approx(
        expected
    )


def test_detection_metrics_by_hand():
    mask = torch.tensor([True, True, True, False, False, False, False, False])
    counts = metrics.detection_counts(torch.tensor([0, 1, 3]), mask)
    assert counts == {"tp": 2, "fp": 1, "fn": 1, "tn": 4}
    rates = metrics.detection_rates(**counts)
    assert rates["tpr"] == pytest.approx(2 / 3) and rates["fpr"] == pytest.approx(1 / 5)
    assert rates["precision"] == pytest.approx(2 / 3) and rates["f1"] == pytest.approx(2 / 3)
    scores = torch.tensor([0.9, 0.8, 0.1, 0.7, 0.2, 0.2, 0.05, 0.3])
    # positives 0.9, 0.8, 0.1 against 5 negatives: 5 + 5 + 1 wins of 15
    assert metrics.auroc(scores, mask) == pytest.approx(11 / 15)
    assert metrics.auroc(torch.ones(8), mask) == pytest.approx(0.5)


def test_mean_and_95_ci():
    mean, half = stats.mean_ci95([0.90, 0.94])
    assert mean == pytest.approx(0.92)
    assert half == pytest.approx(12.706 * 0.02828427 / math.sqrt(2), rel=1e-4)
    assert math.isnan(stats.mean_ci95([0.5])[1])


# --------------------------------------------------------------------------- fixture table


def _row(
    defense,
    attack,
    seed,
    ca,
    asr,
    ra,
    ratio=0.1,
    package="backdoor-leaderboard",
    train=100.0,
    status="ok",
    **extra,
):
    return {
        "trial_id": f"{defense}-{attack}-{seed}-{ratio}",
        "status": status,
        "error": "",
        "dataset": "cifar10",
        "preset": "quick",
        "model": "cnn_small",
        "ratio": ratio,
        "target": 0,
        "attack": attack,
        "defense": defense,
        "seed": seed,
        "ca": ca,
        "asr": asr,
        "ra": ra,
        "defense_package": package,
        "defense_version": "1.0",
        "defense_reconstructed": defense == "dlp",
        "data_source": "archive:test",
        "train_seconds": train,
        "defense_seconds": train,
        "wall_seconds": train + 5,
        "peak_memory_mb": 900.0,
        "device": "cpu",
        "versions": "{}",
        "git_rev": "abc",
        **extra,
    }


@pytest.fixture
def table() -> pd.DataFrame:
    rows = [
        _row("none", "badnets", 0, 0.80, 0.90, 0.08),
        _row("none", "badnets", 1, 0.82, 0.94, 0.05),
        _row("none", "blended", 0, 0.81, 1.00, 0.00),
        _row(
            "abl",
            "badnets",
            0,
            0.78,
            0.10,
            0.70,
            train=150.0,
            det_tpr=0.9,
            det_fpr=0.01,
            det_precision=0.9,
            det_f1=0.9,
            det_auroc=float("nan"),
        ),
        _row(
            "abl",
            "badnets",
            1,
            0.76,
            0.06,
            0.72,
            train=150.0,
            det_tpr=0.8,
            det_fpr=0.02,
            det_precision=0.8,
            det_f1=0.8,
            det_auroc=float("nan"),
        ),
        _row("abl", "blended", 0, 0.79, 0.40, 0.50, train=150.0),
        _row("dlp", "badnets", 0, 0.70, 0.05, 0.60, train=300.0),
        _row(EVIL, "badnets", 0, 0.81, 0.95, 0.04, package="evil<pkg>&co"),
        _row("none", "badnets", 0, 0.83, 0.70, 0.20, ratio=0.05),
        _row("abl", "badnets", 0, 0.80, 0.30, 0.55, ratio=0.05),
        _row(
            "abl",
            "blended",
            9,
            float("nan"),
            float("nan"),
            float("nan"),
            status="error",
            error="Traceback ...\nRuntimeError: boom",
        ),
    ]
    return upgrade(pd.DataFrame(rows))  # as ResultsStore.read() returns it


def test_aggregate_der_ci_and_ranking(table):
    agg = aggregate(table).set_index(["ratio", "defense", "attack"])
    abl = agg.loc[(0.1, "abl", "badnets")]
    # DER per seed against that seed's none, then mean: (0.8-0.02+1)/2=0.89, (0.88-0.06+1)/2=0.91
    assert abl["der"] == pytest.approx(0.90)
    assert abl["n"] == 2 and abl["asr"] == pytest.approx(0.08)
    assert abl["asr_ci"] == pytest.approx(12.706 * math.sqrt(0.0008) / math.sqrt(2), rel=1e-4)
    assert abl["det_tpr"] == pytest.approx(0.85)
    assert abl["cost_vs_none"] == pytest.approx(1.5)
    assert agg.loc[(0.1, "none", "badnets")]["der"] == pytest.approx(0.5)
    ranks = ranking(aggregate(table))
    top = ranks[ranks["ratio"] == 0.1].sort_values("rank")
    assert list(top["defense_label"])[:2] == ["dlp (reconstructed)", "abl"]
    assert top["rank"].tolist() == [1, 2, 3, 4]


def test_markdown_and_exports_agree_with_the_table(table, tmp_path):
    out = render(table, tmp_path)
    md = out.markdown.read_text()
    agg = aggregate(table)
    for _, r in agg.iterrows():
        assert cell_text(r) in md
    assert "| abl | 80.0 (±" not in md  # cells are CA / ASR / RA, not DER
    assert "(reconstructed)" in md and "[plugin: evil&lt;pkg&gt;&amp;co 1.0]" in md
    assert "evil<pkg>" not in md and EVIL not in md
    assert "RuntimeError: boom" in md
    exported = pd.read_csv(tmp_path / "leaderboard.csv")
    assert len(exported) == len(agg) == 8
    assert {p.name for p in out.plots} >= {
        "asr_heatmap_cifar10_quick_r0.1.png",
        "ca_vs_asr_cifar10_quick_r0.1.png",
        "der_bars_cifar10_quick_r0.1.png",
        "cost_vs_der_cifar10_quick_r0.1.png",
        "asr_vs_ratio_cifar10_quick.png",
    }


def test_page_agrees_with_the_table_and_escapes_plugin_strings(table, tmp_path):
    page = render(table, tmp_path).page.read_text()
    assert EVIL not in page and "evil<pkg>" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    trials = trial_table(table)
    agg = aggregate(table)
    cells = re.findall(r'<td class="cell" data-v="([^"]*)" data-cell="(c\d+)"', page)
    assert len(cells) == len(agg)
    assert sorted(round(float(v), 6) for v, _ in cells) == sorted(round(a, 6) for a in agg["asr"])
    assert len(trials) == 10


# --------------------------------------------------------------------------- real browser


def _browser(tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_bin = shutil.which("chromedriver")
    if not chromium or not driver_bin:
        pytest.skip(
            "no chromium/chromedriver on this machine; .ci/run installs Debian's "
            "chromium and chromium-driver where apt-get is available"
        )
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # never let Selenium fetch drivers
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,1000",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_bin), options=options)


@pytest.mark.slow
def test_page_in_a_headless_browser(table, tmp_path):
    from selenium.webdriver.common.by import By

    page = render(table, tmp_path / "out").page
    driver = _browser(tmp_path)
    try:
        driver.get(page.as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
        assert driver.execute_script("return window.__pwned") is None
        board = driver.find_element(By.CSS_SELECTOR, 'section.board[data-ratio="0.1"]')

        def names():
            return [
                r.find_element(By.CSS_SELECTOR, "td.name").text
                for r in board.find_elements(By.CSS_SELECTOR, "tbody tr")
                if r.is_displayed()
            ]

        before = names()
        assert any(EVIL in n for n in before), before
        header = next(h for h in board.find_elements(By.CSS_SELECTOR, "th") if h.text == "badnets")
        header.click()  # ascending ASR
        ascending = names()
        assert ascending != before and ascending[0].startswith("dlp")
        header.click()  # descending
        assert names()[0].startswith(EVIL)
        driver.find_element(By.ID, "f-text").send_keys("abl")
        assert names() == ["abl"]
        driver.find_element(By.ID, "f-text").clear()
        driver.find_element(By.ID, "f-text").send_keys(" ")
        board.find_elements(By.CSS_SELECTOR, "td.cell")[0].click()
        details = driver.find_element(By.ID, "details")
        assert details.is_displayed() and '"trials"' in details.text
        driver.save_screenshot(str(tmp_path / "leaderboard.png"))
        assert (tmp_path / "leaderboard.png").stat().st_size > 10_000
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


# --------------------------------------------------------------------------- hostile plugin strings

HOSTILE = "evil | cell `code` <img src=x onerror=alert(1)> [link](javascript:alert(1))\n| row |"


def _pipes(line: str) -> int:
    """Cell borders of a markdown table row: pipes not escaped by a backslash."""
    count, i = 0, 0
    while i < len(line):
        if line[i] == "\\":
            i += 2
            continue
        count += line[i] == "|"
        i += 1
    return count


def _tables_keep_their_shape(text: str) -> None:
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            assert {_pipes(row) for row in block} == {_pipes(block[0])}, "\n".join(block)
            block = []


def test_plugin_strings_are_inert_in_leaderboard_and_timing_markdown(tmp_path):
    stages = json.dumps({HOSTILE: 3.0, "ok": 1.0})
    rows = [
        _row("none", "badnets", 0, 0.80, 0.90, 0.08),
        _row(
            HOSTILE,
            "badnets",
            0,
            0.79,
            0.10,
            0.70,
            package=f"pkg|{HOSTILE}",
            det_tpr=0.5,
            stage_seconds=stages,
        ),
        _row(
            HOSTILE,
            "blended",
            0,
            math.nan,
            math.nan,
            math.nan,
            status="error",
            error=f"Traceback\nValueError: {HOSTILE}",
        ),
    ]
    out = render(upgrade(pd.DataFrame(rows)), tmp_path)
    for text in (out.markdown.read_text(), (tmp_path / "TIMING.md").read_text()):
        _tables_keep_their_shape(text)  # no pipe or newline broke a row
        assert "<img" not in text and "`code`" not in text  # no HTML, no code span
        assert "](javascript" not in text  # no link
        assert "&lt;img src=x onerror=alert(1)&gt;" in text  # the text itself is kept, inert
    md = out.markdown.read_text()
    assert md.count("evil \\| cell &#96;code&#96;") >= 4  # cell, ranking, detection, failed
