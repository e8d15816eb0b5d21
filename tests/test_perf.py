"""``bench perf`` plumbing (tiny sizes; the figures themselves live in the README and notes)."""

from bench.cli import main
from bench.perf import measure, measure_simclr_augmentation


def test_perf_measures_loop_and_limit_and_the_simclr_augmentation_share(capsys):
    r = measure("cnn_small", batch_size=32, steps=2, repeats=1)
    assert r.limit_img_s > 0 and r.loop_img_s > 0 and r.overhead < 1
    a = measure_simclr_augmentation("cnn_small", batch_size=32, steps=1)
    assert 0 < a.augment_s < a.step_s and 0 < a.share < 1
    assert main(["perf", "--models", "cnn_small", "--batch-size", "32", "--steps", "2",
                 "--repeats", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "cnn_small" in out and "augmentation" in out and "overhead" in out
