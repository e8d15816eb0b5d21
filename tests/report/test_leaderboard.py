"""Leaderboard metrics, markdown, export and the static page (in a real headless browser)."""

from __future__ import annotations

import html
import json
import math
import os
import re
import shutil

import pandas as pd
import pytest
import torch

from bench.core import metrics
from bench.report import stats
from bench.report.aggregate import aggregate, trial_table
from bench.report.markdown import cell_text
from bench.report.page import render_page
from bench.report.ranks import ranking
from bench.report.render import render
from bench.schema import upgrade

EVIL = "<script>window.__pwned=1</script>"
EVIL_LABEL = f"{EVIL} [plugin: evil<pkg>&co 1.0]"


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
        # The lowest ASR of all, bought with 30 points of clean accuracy.
        _row("dlp", "badnets", 0, 0.50, 0.05, 0.60, train=300.0),
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
    # CA change against the seed's own none: (0.78 - 0.80 + 0.76 - 0.82) / 2
    assert abl["d_ca"] == pytest.approx(-0.04) and abl["base_ca"] == pytest.approx(0.81)
    ranks = ranking(aggregate(table))
    top = ranks[ranks["ratio"] == 0.1].sort_values("rank")
    # `none` is the baseline, not a contender: three defenses ranked. DLP has the lowest ASR
    # (5%) but loses 30 points of CA: it ranks last, outside the bound, its ASR counted as the
    # undefended model's (90%). ABL (4 points lost) ranks first.
    assert list(top["defense_label"]) == ["abl", EVIL_LABEL, "dlp (reconstructed)"]
    assert top["rank"].tolist() == [1, 2, 3] and "none" not in set(top["defense_label"])
    dlp = top.set_index("defense_label").loc["dlp (reconstructed)"]
    assert dlp["outside_bound"] == 1 and dlp["bounded_asr"] == pytest.approx(0.90)
    assert dlp["asr"] == pytest.approx(0.05)
    abl_rank = top.set_index("defense_label").loc["abl"]
    assert abl_rank["outside_bound"] == 0 and abl_rank["bounded_asr"] == pytest.approx(0.24)
    # What the mean hides: ABL's worst attack is blended (40% ASR), and its time in minutes.
    assert abl_rank["worst_asr"] == pytest.approx(0.40) and abl_rank["worst_attack"] == "blended"
    assert abl_rank["d_ca"] == pytest.approx((-0.04 + -0.02) / 2)
    assert abl_rank["minutes"] == pytest.approx(2.5)
    assert abl_rank["n_min"] == 1 and abl_rank["n_max"] == 2


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
    # Titled by what the table holds, seeds in the header, the decision view first.
    assert "## cifar10 · preset `quick` · poison ratio 0.1: static poison-label attacks" in md
    assert "1–2 seeds (cells differ) per cell" in md
    assert md.index("## Which defense?") < md.index("## cifar10")
    # Under the default 5-point bound ABL (4 points lost) beats DLP (10 points lost) on badnets.
    assert (
        "| static poison-label, 10% | badnets | abl | 8.0 ±25.4 (n=2) | -4.0 | – | 71.0 | 2.5 |"
        in md
    )
    assert "| worst-case ASR |" in md and "| 40.0 (blended) |" in md
    exported = pd.read_csv(tmp_path / "leaderboard.csv")
    assert len(exported) == len(agg) == 8
    assert {p.name for p in out.plots} >= {
        "asr_heatmap_cifar10_quick_r0.1.png",
        "ca_vs_asr_cifar10_quick_r0.1.png",
        "der_bars_cifar10_quick_r0.1.png",
        "cost_vs_asr_cifar10_quick_r0.1.png",
        "asr_vs_ratio_cifar10_quick.png",
    }


def _markdown_ranking(md: str) -> tuple[list[str], list[list[str]]]:
    """The first ranking table of a LEADERBOARD.md: header and rows, cells stripped."""
    lines = md.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith("Ranking. ")) + 2
    table = [line for line in lines[start:] if line.startswith("|")]
    table = table[: next((i for i, line in enumerate(table) if not line.strip()), len(table))]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    end = next((i for i, r in enumerate(rows[2:], 2) if len(r) != len(rows[0])), len(rows))
    return rows[0], rows[2:end]


def _page_ranking(page: str) -> tuple[list[str], list[list[str]]]:
    """The first ranking table of the page: header labels and each row's cell text."""
    table = re.search(r'<table class="lb rank" id="rk0".*?</table>', page, re.S).group(0)
    head = re.findall(r'<button type="button" class="sort">([^<]*)</button>', table)
    body = table.split("<tbody>")[1]
    rows = []
    for tr in re.findall(r"<tr[^>]*data-defense[^>]*>(.*?)</tr>", body, re.S):
        cells = re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", tr, re.S)
        rows.append([" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in cells])
    return [html.unescape(h) for h in head], rows


def test_page_and_markdown_render_one_ranking_declaration(table, tmp_path):
    """The ranking's columns, their order and its rows (the `none` baseline pinned first) come
    from one declaration, so the two renderings cannot drift (they had: 10 columns and a `none`
    row on the page, 9 and none in the markdown)."""
    from bench.report import ranking_table

    out = render(table, tmp_path)
    markdown = out.markdown.read_text()
    assert "ranked by mean DER" not in markdown  # the legend once contradicted the ranking rule
    assert "its ASR counts as the undefended model's (the CA-bounded ASR)" in markdown
    md_head, md_rows = _markdown_ranking(markdown)
    page_head, page_rows = _page_ranking(out.page.read_text())
    labels = [c.label for c in ranking_table.COLUMNS]
    assert md_head == page_head == labels and len(labels) == 14
    names = [r[1].split()[0] for r in md_rows]
    assert [n in r[1].split() for n, r in zip(names, page_rows, strict=True)] == [True] * len(names)
    assert md_rows[0][0] == page_rows[0][0] == "–" and md_rows[0][1].startswith("none")
    for md_row, page_row in zip(md_rows, page_rows, strict=True):
        for label, md_cell, page_cell in zip(labels, md_row, page_row, strict=True):
            if label != "defense":  # the page adds glyphs and badges to the name
                assert html.unescape(page_cell) == md_cell.replace("(", "").replace(")", ""), label


def test_page_agrees_with_the_table_and_escapes_plugin_strings(table, tmp_path):
    page = render(table, tmp_path).page.read_text()
    assert EVIL not in page and "evil<pkg>" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    trials = trial_table(table)
    agg = aggregate(table)
    cells = re.findall(
        r'<td class="cell" data-v="([^"]*)"><button type="button" class="open" '
        r'data-cell="(c\d+)"[^>]*>([^<]*<b>[^<]*</b>[^<]*)(<span class="ci">[^<]*</span>)?',
        page,
    )
    assert len(cells) == len(agg)
    assert sorted(round(float(v), 6) for v, *_ in cells) == sorted(round(a, 6) for a in agg["asr"])
    assert len(trials) == 10
    # Intervals only where a cell has more than one seed (abl and none on badnets at 0.1).
    assert sum(1 for *_, ci in cells if ci) == 2 == int((agg["n"] > 1).sum())
    # Self-contained and locked down: a per-page nonce, no network, no external asset.
    nonce = _nonce(page)
    assert f'<script nonce="{nonce}">' in page and "default-src 'none'" in _csp(page)
    assert page.count("<script") == 2  # the JSON data block and the nonced script
    assert nonce != _nonce(render_page(table, agg, ranking(agg), []))  # one per page
    assert not re.search(r'(src|href)="(https?:)?//', page.split('<section id="methods">')[0])
    assert not re.search(r"<(link|iframe|object|embed)\b", page)
    # The methods' papers and code are plain links; trial logs are where the runner writes them.
    assert 'href="https://arxiv.org/abs/2110.11571"' in page  # ABL
    assert 'href="https://github.com/bboylyg/ABL"' in page


def _csp(page: str) -> str:
    found = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page)
    return html.unescape(found[1])


def _nonce(page: str) -> str:
    return re.search(r"script-src 'nonce-([^']+)'", _csp(page))[1]


# --------------------------------------------------------------------------- real browser


def _browser(tmp_path, javascript: bool = True):
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
    if not javascript:  # the page's own scripts off; the driver's still run
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    return webdriver.Chrome(service=Service(driver_bin), options=options)


def _names(driver, table_id: str) -> list[str]:
    """The defense names of a table's visible rows, in order."""
    return driver.execute_script(
        "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
        ".filter(r => !r.hidden && r.dataset.defense !== undefined)"
        ".map(r => Array.from(r.querySelector('.name').childNodes)"
        ".filter(n => !(n.classList && n.classList.contains('glyph')))"
        ".map(n => n.textContent).join('').trim());",
        table_id,
    )


def _table_id(driver, kind: str, ratio: str) -> str:
    return driver.execute_script(
        "return document.querySelector('section.board[data-ratio=\"' + arguments[1] + '\"] "
        "table.' + arguments[0]).id;",
        kind,
        ratio,
    )


def _decision(driver, ratio: str = "10%") -> dict[str, str]:
    """Attack (or 'all N (mean)') -> the best defense the decision view shows for the group of
    attacks run at ``ratio``."""
    rows = driver.execute_script(
        "return Array.from(document.querySelectorAll('table.decision tbody tr')).map(r => {"
        "  if (r.classList.contains('family')) return ['', r.textContent];"
        "  const best = r.cells[1].querySelector('[data-label]');"
        "  return [r.cells[0].textContent, best ? best.dataset.label : r.cells[1].textContent];"
        "});"
    )
    found, group = {}, ""
    for attack, best in rows:
        if not attack:
            group = best
        elif f"{ratio} poison" in group:
            found[attack] = best.strip()
    return found


@pytest.mark.slow
def test_page_in_a_headless_browser(table, tmp_path):
    """The done-when of the decision-view issue, in a real Chromium: rank order by default, the
    decision view's best defense (and the bound changing it), keyboard sorting, Esc closing the
    details, the URL round-tripping filters, sorts and the bound, no page-wide horizontal
    scroll at 390 px with the details as a bottom sheet, and the injected script inert."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    page = render(table, tmp_path / "out").page
    driver = _browser(tmp_path)
    try:
        driver.get(page.as_uri())
        severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == [], severe
        assert driver.execute_script("return window.__pwned") is None

        # Rank order by default: the ranking and every cell, `none` pinned on top.
        ranking_id, matrix_id = _table_id(driver, "rank", "0.1"), _table_id(driver, "matrix", "0.1")
        # DLP has the lowest ASR but loses 30 points of CA: ranked last, and marked.
        names = _names(driver, ranking_id)
        assert names[0].startswith("none") and names[1] == "abl" and EVIL in names[2], names
        assert names[3].startswith("dlp (reconstructed)") and "loses CA" in names[3], names
        lost = driver.execute_script(
            "return Array.from(document.querySelectorAll('#' + arguments[0] + ' .badge.lost'))"
            ".map(b => b.closest('tr').dataset.defense);",
            ranking_id,
        )
        assert lost == ["dlp (reconstructed)"], lost
        matrix = _names(driver, matrix_id)
        assert matrix[:2] == ["none", "abl"] and EVIL in matrix[2], matrix
        assert matrix[3].startswith("dlp (reconstructed)"), matrix
        ranks = driver.execute_script(
            "return Array.from(document.getElementById(arguments[0]).tBodies[0].rows)"
            ".map(r => r.cells[0].textContent);",
            ranking_id,
        )
        assert ranks[:4] == ["–", "1", "2", "3"]

        # The decision view: DLP has the lowest ASR on badnets but costs 30 points of CA, so
        # under the default 5-point bound ABL (4 points) is the best; with 35 points, DLP.
        assert _decision(driver)["badnets"] == "abl"
        assert _decision(driver)["all 2 (mean)"] == "abl"  # the only one run on both attacks
        drop = driver.find_element(By.ID, "f-drop")
        drop.clear()
        drop.send_keys("35")
        assert _decision(driver)["badnets"] == "dlp (reconstructed)"
        assert "drop=35" in driver.current_url

        # Keyboard sorting: Enter on the badnets header of every cell, twice.
        header = driver.find_element(
            By.CSS_SELECTOR, f'#{matrix_id} th[data-key="asr:badnets"] button'
        )
        header.send_keys(Keys.ENTER)
        th = driver.find_element(By.CSS_SELECTOR, f'#{matrix_id} th[data-key="asr:badnets"]')
        assert th.get_attribute("aria-sort") == "ascending"
        # The focused sort button shows a focus ring (it had none: `all: unset`).
        assert driver.switch_to.active_element == header
        ring = driver.execute_script(
            "const s = getComputedStyle(document.activeElement);"
            "return [document.activeElement.matches(':focus-visible'), s.outlineStyle,"
            " parseFloat(s.outlineWidth)];"
        )
        assert ring[0] and ring[1] != "none" and ring[2] >= 2, ring
        assert _names(driver, matrix_id)[:2] == ["none", "dlp (reconstructed)"]
        header.send_keys(Keys.ENTER)
        assert th.get_attribute("aria-sort") == "descending"
        assert EVIL in _names(driver, matrix_id)[1]
        # The hostile label, shown by the script as text (details title) and never run.
        driver.find_element(
            By.CSS_SELECTOR, f"#{matrix_id} tbody tr:nth-child(2) button.open"
        ).click()
        assert EVIL in driver.find_element(By.ID, "details-title").text
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        assert driver.execute_script("return window.__pwned") is None

        # A filter keeps `none`, and says so when nothing matches.
        search = driver.find_element(By.ID, "f-text")
        search.send_keys("zzz")
        assert _names(driver, matrix_id) == ["none"]
        nomatch = driver.find_element(By.CSS_SELECTOR, f"#{matrix_id} tr.nomatch")
        assert nomatch.is_displayed() and "zzz" in nomatch.text
        search.clear()
        search.send_keys("abl")
        assert _names(driver, matrix_id) == ["none", "abl"]
        Select = pytest.importorskip("selenium.webdriver.support.select").Select
        Select(driver.find_element(By.ID, "f-ratio")).select_by_value("0.1")

        # Details: a keyboard-opened cell, Esc closes it and focus returns to the cell.
        cell = driver.find_element(
            By.CSS_SELECTOR, f"#{matrix_id} tr:not(.pinned):not([hidden]) button.open"
        )
        cell.send_keys(Keys.ENTER)
        dialog = driver.find_element(By.ID, "details")
        assert driver.execute_script("return arguments[0].open", dialog)
        assert "Per seed" in dialog.text and "results/runs/" not in dialog.text  # no run name
        assert "abl against badnets" in dialog.text and "-4.0 points" in dialog.text
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        assert not driver.execute_script("return arguments[0].open", dialog)
        assert driver.switch_to.active_element == cell

        # A plot enlarges in the same dialog, and Esc closes it too.
        driver.find_element(By.CSS_SELECTOR, "section.board:not([hidden]) button.zoom").click()
        assert driver.execute_script("return arguments[0].open", dialog)
        big = driver.find_element(By.CSS_SELECTOR, "#details img.big")
        assert big.get_attribute("src").startswith("data:image/png;base64,")
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        assert not driver.execute_script("return arguments[0].open", dialog)

        # The URL holds filters, sorts and the bound: a fresh load restores them.
        url = driver.current_url
        for part in ("q=abl", "ratio=0.1", "drop=35", f"sort.{matrix_id}=asr%3Abadnets.desc"):
            assert part in url, url
        driver.get("about:blank")
        driver.get(url)
        assert driver.find_element(By.ID, "f-text").get_attribute("value") == "abl"
        assert driver.find_element(By.ID, "f-drop").get_attribute("value") == "35"
        assert not driver.find_element(
            By.CSS_SELECTOR, 'section.board[data-ratio="0.05"]'
        ).is_displayed()
        th = driver.find_element(By.CSS_SELECTOR, f'#{matrix_id} th[data-key="asr:badnets"]')
        assert th.get_attribute("aria-sort") == "descending"
        assert _names(driver, matrix_id) == ["none", "abl"]
        assert _decision(driver)["badnets"] == "dlp (reconstructed)"

        # A phone: no horizontal page scroll (tables scroll in their own box), details as a
        # bottom sheet inside the screen.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
        )
        driver.get(page.as_uri())
        widths = driver.execute_script(
            "return [document.documentElement.scrollWidth, window.innerWidth]"
        )
        assert widths[0] <= widths[1] == 390, widths
        driver.find_element(By.CSS_SELECTOR, "table.matrix button.open").click()
        box = driver.execute_script(
            "const r = document.getElementById('details').getBoundingClientRect();"
            "return [r.left, r.right, r.bottom, r.top, window.innerHeight];"
        )
        left, right, bottom, top, height = box
        assert left == 0 and right <= 390 and abs(bottom - height) < 1 and top > 0, box
        assert driver.execute_script("return document.documentElement.scrollWidth") <= 390
        driver.switch_to.active_element.send_keys(Keys.ESCAPE)
        # Every wide table scrolls in its own box and keeps its names in view: scrolled to
        # the right, each row's name (and the name column's header) is sticky and not left of
        # the box.
        _names_stay_in_view(driver)

        assert driver.execute_script("return window.__pwned") is None
        assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
    finally:
        driver.quit()


def _names_stay_in_view(driver) -> None:
    report = driver.execute_script(
        """
        const out = [];
        document.querySelectorAll('div.scroll').forEach(box => {
          const table = box.querySelector('table');
          if (!table || box.offsetParent === null || box.scrollWidth <= box.clientWidth + 1)
            return;
          box.scrollLeft = box.scrollWidth;
          const left = box.getBoundingClientRect().left;
          const names = Array.from(table.querySelectorAll(
            'tbody th[scope=row], thead th.name')).filter(n => n.offsetParent !== null);
          const off = names.filter(n => n.getBoundingClientRect().left < left - 1.5
                                        || getComputedStyle(n).position !== 'sticky');
          out.push([table.className + '#' + table.id, names.length, off.length]);
          box.scrollLeft = 0;
        });
        return out;
        """
    )
    wide = {name.split("#")[0] for name, *_ in report}
    assert {"lb decision", "lb rank", "lb matrix"} <= wide, report
    for name, found, off in report:
        assert found and not off, (name, found, off)


def _ties_table() -> pd.DataFrame:
    """Three seeds on three attacks: `fa` and `fb` with equal means (a tie), `fc`
    clearly worse, `wreck` the lowest ASR of all at 30 points of clean accuracy."""
    rows = []
    for attack in ("badnets", "blended", "sig"):
        for seed in range(3):
            rows.append(_row("none", attack, seed, 0.80, 0.95, 0.05))
            # fa's and fb's ASRs are one set in two orders (binary fractions: equal means).
            rows.append(_row("fa", attack, seed, 0.79, 0.125 + 0.0625 * seed, 0.7))
            rows.append(_row("fb", attack, seed, 0.79, 0.25 - 0.0625 * seed, 0.7))
            rows.append(_row("fc", attack, seed, 0.79, 0.60 + 0.01 * seed, 0.3))
            rows.append(_row("wreck", attack, seed, 0.50, 0.01, 0.1))
    return upgrade(pd.DataFrame(rows))


def test_ranks_count_clean_accuracy_and_share_ties(tmp_path):
    """The CA-aware ranking, in the table and on the page: tied defenses share a rank, the
    defense with the lowest ASR but 30 points of CA lost ranks after every one that keeps it,
    marked; the bootstrap is reproducible (a fixed generator)."""
    table = _ties_table()
    agg = aggregate(table)
    ranks = ranking(agg).set_index("defense_label")
    assert ranks["rank"].to_dict() == {"fa": 1, "fb": 1, "fc": 3, "wreck": 4}
    assert ranks["tied"].to_dict() == {"fa": True, "fb": True, "fc": False, "wreck": False}
    assert ranks.loc["wreck", "outside_bound"] == 3
    assert ranks.loc["wreck", "bounded_asr"] == pytest.approx(0.95)
    lo, hi = ranks.loc["fa", ["bounded_asr_lo", "bounded_asr_hi"]]
    assert lo <= ranks.loc["fa", "bounded_asr"] <= hi and hi - lo > 0
    # The descriptive means carry intervals from the same draws.
    for mean, (lo, hi) in {"asr": ("asr_lo", "asr_hi"), "d_ca": ("d_ca_lo", "d_ca_hi")}.items():
        assert ranks.loc["fc", lo] - 1e-9 <= ranks.loc["fc", mean] <= ranks.loc["fc", hi] + 1e-9
    assert ranks.loc["fc", "asr_hi"] - ranks.loc["fc", "asr_lo"] > 0
    again = ranking(aggregate(table)).set_index("defense_label")
    assert again[["bounded_asr_lo", "bounded_asr_hi"]].equals(
        ranks[["bounded_asr_lo", "bounded_asr_hi"]]
    )
    page = tmp_path / "ties.html"
    page.write_text(render_page(table, agg, ranking(agg), []))
    md = render(table, tmp_path / "out").markdown.read_text()
    assert "| 1= | fa |" in md and "| 1= | fb |" in md and "| 4 | wreck |" in md
    assert "(tied: fb)" in md  # the decision section names the tie
    driver = _browser(tmp_path)
    try:
        driver.get(page.as_uri())
        rows = driver.execute_script(
            "return Array.from(document.querySelector('table.rank').tBodies[0].rows)"
            ".filter(r => r.dataset.defense !== undefined)"
            ".map(r => [r.cells[0].textContent, r.dataset.defense,"
            " !!r.querySelector('.badge.lost')]);"
        )
        assert rows == [
            ["–", "none", False],
            ["1=", "fa", False],
            ["1=", "fb", False],
            ["3", "fc", False],
            ["4", "wreck", True],
        ], rows
        tied = driver.execute_script(
            "return Array.from(document.querySelectorAll('table.decision .tied'))"
            ".map(t => t.textContent);"
        )
        assert tied and set(tied) == {"tied: fb"}, tied
    finally:
        driver.quit()


def test_decision_view_and_ranking_are_in_the_page_without_javascript(table, tmp_path):
    """With the page's scripts off, the decision view and the ranking are there, with the same
    picks the script draws."""
    page = render(table, tmp_path / "out").page
    driver = _browser(tmp_path, javascript=False)
    try:
        driver.get(page.as_uri())
        assert driver.execute_script("return window.__pwned") is None
        assert _decision(driver)["badnets"] == "abl"
        assert _decision(driver)["all 2 (mean)"] == "abl"
        ranking_id = _table_id(driver, "rank", "0.1")
        assert _names(driver, ranking_id)[1] == "abl"
        static = driver.execute_script(
            "return document.querySelector('table.decision tbody').innerHTML;"
        )
    finally:
        driver.quit()
    driver = _browser(tmp_path / "js")
    try:  # the script redraws the same rows at the default bound
        driver.get(page.as_uri())
        drawn = driver.execute_script(
            "return document.querySelector('table.decision tbody').innerHTML;"
        )
    finally:
        driver.quit()
    assert _visible_text(static) == _visible_text(drawn)


def _visible_text(markup: str) -> list[str]:
    return [
        " ".join(re.sub(r"<[^>]+>", " ", html.unescape(tr)).split())
        for tr in re.findall(r"<tr[^>]*>(.*?)</tr>", markup, re.S)
    ]


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
