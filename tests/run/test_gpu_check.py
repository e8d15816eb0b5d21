"""benchmarks/gpu_check.sh, the one-shot GPU check, runs end to end at smoke scale on a CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_runs_its_steps_at_smoke_scale_without_ray(tmp_path):
    """The same steps as on a GPU machine (throughput, the BadNets cells of none, ABL and I-BAU
    through the local executor, the reproduction table), with Ray made unimportable as there."""
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text("import sys\nsys.modules['ray'] = None\n")
    env = {
        **os.environ,
        "PYTHON": sys.executable,
        "PYTHONPATH": f"{shim}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
        "BENCH_CACHE_DIR": str(tmp_path / "cache"),
    }
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--smoke", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "fp32 limit" in (out / "perf.txt").read_text()
    rows = pd.read_parquet(out / "results" / "results.parquet")
    assert sorted(rows["defense"]) == ["abl", "ibau", "none"]
    assert (rows["status"] == "ok").all()
    assert "verdict" in (out / "reproduce.txt").read_text().lower()
    assert "grid wall time" in (out / "wall.txt").read_text()
