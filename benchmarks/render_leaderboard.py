"""How long `bench leaderboard` takes on a large results table (goal: 1,000 rows in < 10 s).

    .venv/bin/python benchmarks/render_leaderboard.py [--rows 1000]

Builds a synthetic table shaped like a real grid (2 datasets x 3 ratios x 10 attacks x 6
defenses x seeds), renders markdown, exports, plots and the page into a temp dir, and prints
the wall time. (The attack gallery is its own command, `bench attacks gallery`.)
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.report.render import render
from bench.schema import upgrade

ATTACKS = ["badnets", "blended", "trojannn", "sig", "lc", "wanet", "iad", "bpp", "ssba", "lf"]
DEFENSES = ["none", "abl", "dlp", "nab", "ibau", "dbd"]


def synthetic_table(rows: int, seed: int = 0) -> pd.DataFrame:
    rng = random.Random(seed)
    out = []
    i = 0
    while len(out) < rows:
        for dataset in ("cifar10", "gtsrb"):
            for ratio in (0.1, 0.05, 0.01):
                for attack in ATTACKS:
                    for defense in DEFENSES:
                        asr = rng.uniform(0.85, 1.0) if defense == "none" else rng.uniform(0, 0.6)
                        out.append(
                            {
                                "trial_id": f"t{i}",
                                "status": "ok",
                                "error": "",
                                "dataset": dataset,
                                "preset": "quick",
                                "model": "cnn_small",
                                "ratio": ratio,
                                "target": 0,
                                "attack": attack,
                                "defense": defense,
                                "seed": i // 360,
                                "ca": rng.uniform(0.6, 0.8),
                                "asr": asr,
                                "ra": rng.uniform(0, 1 - asr),
                                "defense_package": "backdoor-leaderboard",
                                "defense_version": "0.1.0",
                                "defense_reconstructed": defense == "dlp",
                                "data_source": "archive",
                                "train_seconds": rng.uniform(50, 300),
                                "defense_seconds": rng.uniform(5, 300),
                                "wall_seconds": 300.0,
                                "peak_memory_mb": 900.0,
                                "device": "cpu",
                                "versions": "{}",
                                "git_rev": "x",
                            }
                        )
                        i += 1
    return upgrade(pd.DataFrame(out[:rows]))  # as ResultsStore.read() returns a table


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    df = synthetic_table(args.rows)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = render(df, Path(tmp))
        total = time.perf_counter() - start
        size = result.page.stat().st_size / 2**20
    print(f"{args.rows} rows -> {len(result.plots)} plots, page {size:.1f} MiB: {total:.2f} s")


if __name__ == "__main__":
    main()
