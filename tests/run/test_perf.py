"""``bench perf`` plumbing (tiny sizes; the figures themselves live in the README and notes)."""

import runpy
from pathlib import Path

from bench.cli import main
from bench.cli.perf import measure

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_perf_measures_both_limits_and_the_loop_at_the_trial_precision(capsys):
    r = measure("cnn_small", batch_size=32, steps=2, repeats=1, loop_precision="fp32")
    assert set(r.limits) == {"fp32", "bf16"} and min(r.limits.values()) > 0
    assert r.loop_precision == "fp32" and r.share > 0
    assert r.best_limit[1] == max(r.limits.values())
    assert main(["perf", "--models", "cnn_small", "--batch-size", "32", "--steps", "2",
                 "--repeats", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "cnn_small" in out and "fp32 limit" in out and "bf16 limit" in out
    assert "of best limit" in out


def test_dbd_simclr_augmentation_benchmark_measures_a_share_of_the_step():
    """The DBD-internals measurement moved out of `bench perf` into benchmarks/; keep it running."""
    script = runpy.run_path(str(BENCHMARKS / "dbd_simclr_augmentation.py"))
    a = script["measure_simclr_augmentation"]("cnn_small", batch_size=32, steps=1)
    assert 0 < a.augment_s < a.step_s and 0 < a.share < 1
