"""``bench perf`` plumbing (tiny sizes; the figures themselves live in the README and notes)."""

import runpy
from pathlib import Path

from bench.cli import main
from bench.perf import measure

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_perf_measures_loop_and_limit(capsys):
    r = measure("cnn_small", batch_size=32, steps=2, repeats=1)
    assert r.limit_img_s > 0 and r.loop_img_s > 0 and r.overhead < 1
    assert main(["perf", "--models", "cnn_small", "--batch-size", "32", "--steps", "2",
                 "--repeats", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "cnn_small" in out and "overhead" in out


def test_dbd_simclr_augmentation_benchmark_measures_a_share_of_the_step():
    """The DBD-internals measurement moved out of `bench perf` into benchmarks/; keep it running."""
    script = runpy.run_path(str(BENCHMARKS / "dbd_simclr_augmentation.py"))
    a = script["measure_simclr_augmentation"]("cnn_small", batch_size=32, steps=1)
    assert 0 < a.augment_s < a.step_s and 0 < a.share < 1
