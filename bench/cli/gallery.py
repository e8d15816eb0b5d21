"""``bench attacks gallery``: for each attack and dataset, a clean test image, its triggered
version and the amplified difference (``plots/attacks.png``).

This is execution, not reporting: it decodes datasets and fits attacks (building their artifacts
when asked), so it is its own command; ``bench leaderboard`` only embeds the image it left.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

log = logging.getLogger("bench.gallery")


TITLE = "Attack gallery: clean, triggered, amplified difference"
#: Height kept above the panels for the figure's title, in inches (it overlapped their titles).
_TITLE_INCHES = 0.35


def layout(fig, title: str = TITLE) -> None:
    """The title in a band of its own above the panels, then the panels laid out below it."""
    height = fig.get_figheight()
    fig.suptitle(title, fontsize=9, y=1 - 0.08 / height, va="top")
    with warnings.catch_warnings():  # long titles can defeat tight_layout; harmless
        warnings.simplefilter("ignore", UserWarning)
        fig.tight_layout(rect=(0, 0, 1, 1 - _TITLE_INCHES / height))


def _save(fig, path: Path) -> Path:
    layout(fig)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def attack_gallery(specs: list, path: Path, build: bool = False) -> Path | None:
    """For each attack and dataset: a clean test image, its triggered version and the amplified
    difference. ``specs`` holds one trial spec per (attack, dataset); attacks that need trained
    artifacts use the cached ones (built first only when ``build`` is True)."""
    from attacks.base import ArtifactMissing
    from bench.core import precision
    from bench.data import load_dataset
    from bench.errors import BenchError
    from bench.grid import registry
    from bench.trial.cell import attack_context

    # An attack that poisons nothing (the clean model) has no trigger to show.
    specs = [
        s for s in specs if getattr(registry.get_entry("attack", s.attack).load(), "poisons", True)
    ]
    if not specs:
        return None
    attacks = sorted({s.attack for s in specs})
    datasets = sorted({s.dataset for s in specs})
    loaded = {}
    for name in datasets:
        try:
            loaded[name] = load_dataset(name)
        except BenchError as exc:
            log.warning("attack gallery: %s skipped (%s)", name, exc)
    datasets = [d for d in datasets if d in loaded]
    if not datasets:
        return None
    fig, axes = plt.subplots(
        len(attacks),
        3 * len(datasets),
        figsize=(1.6 * 3 * len(datasets), 1.7 * len(attacks) + 0.4),
        squeeze=False,
    )
    cpu = torch.device("cpu")
    for spec in specs:
        if spec.dataset not in loaded:
            continue
        i, j = attacks.index(spec.attack), datasets.index(spec.dataset)
        budget = spec.data_budget()
        data = loaded[spec.dataset].subset(budget.train_size, budget.test_size, budget.subset_seed)
        x = data.test_x[data.test_y != spec.target][:1]
        cells = axes[i, 3 * j : 3 * j + 3]
        try:
            attack = registry.create("attack", spec.attack, dict(spec.attack_params))
            # at the trial's precision: it is part of the artifacts' cache keys
            with precision.use_precision(precision.resolve(spec.precision, cpu)):
                attack.fit(attack_context(spec, data, cpu, build_artifacts=build))
            stamped = attack.apply_test(x)
        except ArtifactMissing:
            for ax in cells:
                ax.axis("off")
            cells[1].text(0.5, 0.5, f"{spec.attack}\n(not built)", ha="center", va="center")
            continue
        diff = (stamped.float() - x.float()).abs()
        linf = int(diff.max())
        amplified = (diff / max(1.0, diff.max().item()) * 255).to(torch.uint8)
        captions = (f"{spec.dataset} clean", spec.attack, f"|diff| (L∞={linf})")
        for ax, img, caption in zip(cells, (x, stamped, amplified), captions, strict=True):
            ax.imshow(img[0].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_title(caption, fontsize=7)
            ax.axis("off")
    path.parent.mkdir(parents=True, exist_ok=True)
    return _save(fig, path)
