"""Screenshots of the leaderboard page as a researcher sees it: desktop (1400 px), phone (390 px).

    .venv/bin/python benchmarks/page_screenshots.py RESULTS_DIR OUT_DIR [--synthetic]

Renders the page from ``RESULTS_DIR/results.parquet`` into a temporary directory (RESULTS_DIR is
only read; an existing ``plots/attacks.png`` is embedded), opens it in headless Chromium
(Debian's ``chromium`` and ``chromium-driver``) and writes six PNGs into OUT_DIR:
``page_desktop_first_screen.png`` (what a 1400 x 900 window shows first),
``page_desktop_full.png`` (the whole page), ``page_desktop_details.png`` (a cell's details
open), and the same three for a 390 x 844 phone. With
``--synthetic`` RESULTS_DIR is ignored and a synthetic grid (``render_leaderboard.py``) is used.
Nothing is fetched: the page is self-contained and the browser runs with networking off.
"""

from __future__ import annotations

import argparse
import base64
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pandas as pd

from bench.report.render import GALLERY, render
from bench.store import ResultsStore

#: (name, viewport width, height, device pixel ratio, mobile)
VIEWPORTS = [("desktop", 1400, 900, 1, False), ("phone", 390, 844, 2, True)]
#: Full-page captures stop here (a page of many tables can be very long).
MAX_HEIGHT = 16000


def chromium(profile: Path):
    """A headless Chromium driven by Debian's chromedriver; never fetches drivers or updates."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        raise SystemExit("needs chromium and chromedriver (Debian: chromium chromium-driver)")
    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def capture(driver, page: Path, out_dir: Path) -> list[Path]:
    written = []
    for name, width, height, ratio, mobile in VIEWPORTS:
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": ratio, "mobile": mobile},
        )
        driver.get(page.as_uri())
        first = out_dir / f"page_{name}_first_screen.png"
        first.write_bytes(_shot(driver, width, height))
        full_height = min(
            MAX_HEIGHT, int(driver.execute_script("return document.documentElement.scrollHeight"))
        )
        full = out_dir / f"page_{name}_full.png"
        full.write_bytes(_shot(driver, width, full_height))
        written += [first, full]
        # A cell's details, as a click opens them (side panel; bottom sheet on a phone).
        opened = driver.execute_script(
            "const b = document.querySelector('table.matrix tbody tr:not(.pinned) button.open');"
            "if (!b) return false; window.scrollTo(0, 0); b.click(); return true;"
        )
        if opened:
            details = out_dir / f"page_{name}_details.png"
            details.write_bytes(_shot(driver, width, height))
            written.append(details)
    return written


def _shot(driver, width: int, height: int) -> bytes:
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
        },
    )
    return _compact(base64.b64decode(shot["data"]))


def _compact(png: bytes) -> bytes:
    """The PNG in a 256-colour palette: a page of flat colours and text looks the same, and a
    full-page phone capture stays well under a megabyte instead of three (they are committed)."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=256).save(out, "PNG", optimize=True)
    return out.getvalue()


def synthetic():
    """``render_leaderboard.py``'s synthetic grid, three seeds, with the protocol columns a real
    run records and one failed trial."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import json

    from render_leaderboard import synthetic_table

    from bench.schema import Col

    df = synthetic_table(1080)
    df = df[df[Col.dataset] == "cifar10"].copy()
    df[Col.train] = json.dumps(
        {
            "epochs": 7,
            "batch_size": 128,
            "lr": 0.1,
            "momentum": 0.9,
            "nesterov": True,
            "schedule": "onecycle",
            "weight_decay": 5e-4,
        }
    )
    df[Col.n_train], df[Col.n_test] = 20000, 10000
    df[Col.precision_used] = "fp32"
    df[Col.attack_mode] = [
        "training-controlled" if a in ("wanet", "iad", "bpp") else "static" for a in df[Col.attack]
    ]
    df[Col.clean_fraction] = [0.05 if d in ("ibau", "nab") else 0.0 for d in df[Col.defense]]
    df[Col.run] = "2026-01-01T00-00-00"
    df[Col.finished_at] = 1.767e9 + df.index.to_numpy() * 60.0
    failed = df.iloc[[0]].assign(
        **{
            Col.status: "error",
            Col.trial_id: "failed0",
            Col.error: "Traceback ...\nRuntimeError: out of memory",
        }
    )
    return pd.concat([df, failed], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--synthetic", action="store_true", help="a synthetic grid instead")
    args = parser.parse_args()
    if args.synthetic:
        df = synthetic()
    else:
        df = ResultsStore(args.results_dir / "results.parquet").read()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        site = Path(tmp) / "site"
        gallery = args.results_dir / "plots" / GALLERY
        if gallery.is_file():
            (site / "plots").mkdir(parents=True)
            shutil.copy(gallery, site / "plots" / GALLERY)
        page = render(df, site).page
        driver = chromium(Path(tmp) / "profile")
        try:
            for path in capture(driver, page, args.out_dir):
                print(path)
        finally:
            driver.quit()


if __name__ == "__main__":
    main()
