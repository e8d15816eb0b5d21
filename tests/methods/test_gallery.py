"""The attack gallery fits attacks exactly as a trial does, so it finds the trial's artifacts."""

import dataclasses

from bench.cli.gallery import attack_gallery
from bench.core import precision
from bench.grid import registry
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides


def test_the_gallery_fits_attacks_at_the_trials_precision(tmp_path, monkeypatch, cifar10):
    """Before: the gallery fitted at fp32 (no precision in force) while bf16 trials had cached
    the artifacts under bf16 keys, so it trained IAD's generators again (minutes)."""
    seen = []
    real_create = registry.create

    def recording_create(kind, name, params=None):
        attack = real_create(kind, name, params)
        if kind != "attack":
            return attack
        fit = attack.fit
        attack.fit = lambda ctx: (seen.append(precision.in_force()), fit(ctx))[1]
        return attack

    monkeypatch.setattr(registry, "create", recording_create)
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"], attacks=["badnets"])
    spec = expand_grid(preset)[0]
    for requested in ("bf16", "fp32"):
        spec = dataclasses.replace(spec, precision=requested)
        assert attack_gallery([spec], tmp_path / f"{requested}.png").exists()
        assert seen[-1] == precision.resolve(requested, "cpu")


def test_the_gallery_title_sits_above_every_panel_title():
    """The figure's title overlapped the first row's panel titles (`badnets`, `|diff|`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.cli.gallery import layout

    for rows in (1, 3, 10):
        fig, axes = plt.subplots(rows, 3, figsize=(4.8, 1.7 * rows + 0.4), squeeze=False)
        for ax in axes.flat:
            ax.imshow([[0, 1], [1, 0]])
            ax.set_title("cifar10 clean", fontsize=7)
            ax.axis("off")
        layout(fig)
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        title = fig._suptitle.get_window_extent(renderer)
        top = max(ax.title.get_window_extent(renderer).y1 for ax in axes[0])
        assert title.y0 >= top, (rows, title, top)
        assert title.y1 <= fig.bbox.y1 + 0.5
        plt.close(fig)


def test_the_clean_model_has_no_row_in_the_gallery(tmp_path, cifar10):
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"], attacks=["clean"])
    assert attack_gallery(expand_grid(preset), tmp_path / "g.png") is None  # nothing to show
    assert not (tmp_path / "g.png").exists()
