"""Behaviours that follow the official implementations (issue 16): each test fails on the
behaviour the harness had before, which DEVIATIONS.md no longer lists."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from bench.api import LabelledImages
from bench.core import precision
from bench.core.models import build_model
from bench.core.train import Augment, Batch, TrainConfig, Trainer, augment_batch
from bench.grid import registry
from bench.grid.expand import expand_grid
from bench.grid.presets import builtin_presets, load_preset, with_overrides
from bench.run.plan import plan_grid
from bench.trial.defend import defense_context
from bench.trial.pipeline import run_trial
from defenses.abl import ABL
from defenses.dbd import LinearProbe
from defenses.ibau import IBAU, adversarial_loss
from defenses.shared import GradientAscent
from defenses.ssl import gaussian_blur

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("two_threads")


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _tiny_data(n: int = 64, classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    return images, torch.randint(0, classes, (n,), generator=gen)


# --------------------------------------------------------------------------- ABL


def test_abl_ascent_runs_with_batchnorm_in_train_mode():
    """Official ABL and BackdoorBench call model.train() in the unlearning loop: BatchNorm
    normalises with batch statistics and its running statistics move."""
    model = build_model("cnn_small", 10)
    images, labels = _tiny_data()
    modes: list[bool] = []

    class Recording(GradientAscent):
        def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
            modes.extend(bn.training for bn in _batchnorms(model))
            return batch

    before = [bn.running_mean.clone() for bn in _batchnorms(model)]
    config = TrainConfig(epochs=1, batch_size=32, lr=5e-4, schedule="constant")
    Trainer(CPU).fit(model, images, labels, config, seed=0, flip=False, hooks=Recording())
    assert modes and all(modes)
    after = [bn.running_mean for bn in _batchnorms(model)]
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert ABL.Params().unlearning_bn == "train"


def test_abl_defaults_are_the_official_schedule():
    p = ABL.Params()
    assert (p.finetune_lr, p.finetune_milestones, p.finetune_epochs) == (0.1, (40,), 60)
    assert (p.finetune_cutout, p.unlearning_lr, p.unlearning_epochs) == (3, 5e-4, 4)
    assert p.unlearning_objective == "ce" and p.unlearning_stop_accuracy == 0
    tune = TrainConfig(epochs=60, lr=0.1, schedule="multistep", milestones=(40,))
    assert tune.lr_factor(39 * 10 + 9, 10) == 1.0 and tune.lr_factor(40 * 10, 10) == 0.1


def test_cutout_cuts_the_official_two_by_two_hole():
    """The official Cutout(1, 3) clips rows [c - 1, c + 1): a 2 x 2 hole inside the image."""
    images = torch.full((200, 3, 32, 32), 255, dtype=torch.uint8)
    out = augment_batch(images, Augment(crop_padding=0, cutout=3), False, torch.Generator())
    holes = (out == 0).all(1).flatten(1).sum(1)
    assert holes.max() == 4 and holes.min() >= 1  # 2 x 2, fewer at the borders
    assert (holes == 4).float().mean() > 0.8


def test_the_ascent_continues_the_fine_tuning_optimiser():
    """Official ABL reuses the fine-tuning SGD object for the ascent: momentum carries over."""
    model = build_model("cnn_small", 10)
    images, labels = _tiny_data()
    trainer = Trainer(CPU)
    config = TrainConfig(epochs=1, batch_size=32, lr=0.1, nesterov=True, schedule="constant")
    first = trainer.fit(model, images, labels, config, seed=0, flip=False)
    ascent = dataclasses.replace(config, lr=5e-4)
    second = trainer.fit(
        model, images, labels, ascent, seed=1, flip=False, optimizer_state=first.optimizer_state
    )
    group = second.optimizer_state["param_groups"][0]
    assert group["lr"] == pytest.approx(5e-4) and group["nesterov"]
    assert len(second.optimizer_state["state"]) == len(first.optimizer_state["state"])


# --------------------------------------------------------------------------- I-BAU


def test_ibau_projects_the_perturbation_once_after_the_pass():
    """The official notebooks scale delta into the L2 ball once, after the warm-start pass;
    projecting after every SGD step changes the path and the result. defense.py and BackdoorBench
    comment the projection out: the default is none."""
    assert IBAU().params.delta_radius == 0
    torch.manual_seed(0)
    model = build_model("cnn_small", 10).eval()
    x = torch.rand(40, 3, 32, 32)
    batches = [(x[i : i + 10], torch.zeros(10, dtype=torch.long)) for i in range(0, 40, 10)]
    one = torch.ones(())
    got = IBAU(delta_radius=0.05).universal_perturbation(model, batches, one)
    free = IBAU().universal_perturbation(model, batches, one)
    assert free.norm() > 0.1  # the pass leaves the ball, so the projection matters
    assert torch.allclose(got, free * 0.05 / free.norm(), atol=1e-6)


class _Recorder(nn.Module):
    """A linear model that records every input it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.net(x)


def _ibau_context(n: int, **fields):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    clean = LabelledImages(images, labels)
    return defense_context(
        clean, num_classes=10, make_model=lambda: _Recorder(), device=CPU, defense="ibau",
        clean_subset=clean, **fields,
    ), clean  # fmt: skip


def test_ibau_perturbs_exactly_int_portion_of_each_batch():
    """Both codes add delta to ``random.sample(range(B), int(0.01 * B))`` images of a batch:
    exactly 2 of 256 (BackdoorBench), 1 of 100 (official), none of a last batch under 100."""
    for batch, n, expected in ((256, 512, [2, 2]), (100, 250, [1, 1, 0])):
        ctx, clean = _ibau_context(n)
        model = _Recorder().eval()
        IBAU(rounds=1, fixed_point_iterations=1, batch_size=batch).unlearn(ctx, model, clean)
        batches = IBAU(batch_size=batch).clean_batches(ctx, clean, 0)
        # forwards: the warm start's two per batch, then per batch the outer loss's and the
        # inner loss's (x + m * delta, then the first batch + delta)
        outer = model.seen[2 * len(batches) :: 2]
        hits = [
            int((seen - x).flatten(1).abs().sum(1).gt(0).sum())
            for (x, _), seen in zip(batches, outer, strict=True)
        ]
        assert hits == expected, (batch, hits)


def test_ibau_normalised_delta_moves_pixels_by_std():
    """BackdoorBench keeps delta in the normalised input: in pixels it is std * delta."""
    std = (0.247, 0.243, 0.261)
    ctx, clean = _ibau_context(100, normalization_std=std)
    batches = IBAU().clean_batches(ctx, clean, 0)
    torch.manual_seed(0)
    model = _Recorder().eval()
    scale = torch.tensor(std).view(1, -1, 1, 1)
    delta = IBAU(delta_space="normalised").universal_perturbation(model, batches, scale)
    x = batches[0][0]
    adversarial_loss(model, x, torch.zeros(len(x), dtype=torch.long), 0.0, scale)(delta)
    assert delta.abs().max() > 0
    assert torch.allclose(model.seen[-1] - x, scale * delta, atol=1e-6)


def test_ibau_clean_batches_official_fixed_backdoorbench_shuffled_and_augmented():
    ctx, clean = _ibau_context(300)
    fixed = IBAU(batch_size=100)
    a, b = fixed.clean_batches(ctx, clean, 0), fixed.clean_batches(ctx, clean, 1)
    assert all(torch.equal(x, y) for (x, _), (y, _) in zip(a, b, strict=True))
    assert torch.equal(a[0][0], clean.images[:100].float() / 255)  # in order, unaugmented
    shuffled = IBAU(batch_size=100, clean_order="shuffled")
    c, d = shuffled.clean_batches(ctx, clean, 0), shuffled.clean_batches(ctx, clean, 1)
    assert not torch.equal(c[0][1], d[0][1])  # another order per draw
    assert sorted(torch.cat([y for _, y in c]).tolist()) == sorted(clean.labels.tolist())
    assert not any(torch.equal(c[0][0][i], a[0][0][j]) for i in range(3) for j in range(100))


# --------------------------------------------------------------------------- DBD


def test_dbd_warm_up_moves_the_backbone_batchnorm_statistics():
    """The official warm-up runs model.train() around a no-grad backbone: only the head learns,
    but the backbone's BatchNorm statistics move."""
    model = build_model("cnn_small", 10)
    images, labels = _tiny_data()
    for p in model.parameters():
        p.requires_grad_(False)
    for p in model.net.linear.parameters():
        p.requires_grad_(True)
    weights = [p.clone() for p in model.net.features.parameters()]
    stats = [bn.running_mean.clone() for bn in _batchnorms(model)]
    config = TrainConfig(epochs=1, batch_size=32, lr=2e-3, optimizer="adam", schedule="constant")
    Trainer(CPU).fit(model, images, labels, config, seed=0, flip=False, hooks=LinearProbe())
    assert all(
        torch.equal(a, b) for a, b in zip(weights, model.net.features.parameters(), strict=True)
    )
    assert all(
        not torch.equal(a, bn.running_mean) for a, bn in zip(stats, _batchnorms(model), strict=True)
    )


def test_simclr_gaussian_blur_is_a_normalised_per_image_blur():
    gen = torch.Generator().manual_seed(0)
    flat = torch.full((8, 3, 32, 32), 0.3)
    assert torch.allclose(gaussian_blur(flat, gen, p=1.0), flat, atol=1e-6)  # weights sum to 1
    noise = torch.rand(64, 3, 32, 32, generator=gen)
    blurred = gaussian_blur(noise, gen, sigma=(2.0, 2.0), p=1.0)
    assert blurred.std() < 0.3 * noise.std()  # high frequencies removed
    some = gaussian_blur(noise, torch.Generator().manual_seed(1), p=0.5)
    untouched = (some == noise).flatten(1).all(1).float().mean()
    assert 0.25 < untouched < 0.75  # applied to about half the batch


# --------------------------------------------------------------------------- attacks


def test_training_controlled_victims_train_at_a_constant_lr_by_default():
    """BackdoorBench's WaNet, BPP and IAD victims: MultiStepLR milestones past the last epoch."""
    cosine = TrainConfig(epochs=100, lr=0.01, schedule="cosine")
    for name in ("wanet", "bpp", "iad"):
        attack = registry.create("attack", name)
        assert attack.victim_config(cosine).schedule == "constant"
        assert (
            registry.create("attack", name, {"victim_schedule": "preset"}).victim_config(cosine)
            == cosine
        )


def test_iad_backdoored_model_is_the_classifier_trained_with_the_generators():
    spec = expand_grid(with_overrides(load_preset("smoke"), attacks=["iad"], defenses=["none"]))[0]
    row = run_trial(spec, device=CPU)
    assert row["backdoored_model_cache"] == "from the attack"
    iad = registry.create("attack", "iad", dict(spec.attack_params))
    from bench.trial.cell import attack_context
    from bench.trial.resolved import load_cell_data

    data = load_cell_data(spec)
    with precision.use_precision(precision.resolve(spec.precision, CPU)):
        iad.fit(attack_context(spec, data, CPU))
    victim = iad.trained_victim()
    assert victim is not None and "linear.weight" in "".join(victim["state_dict"])


def test_preact_resnet18_is_backdoorbench_s():
    """No BatchNorm + ReLU between the last block and the pooling; 1x1 conv-only shortcuts."""
    model = build_model("preact_resnet18", 10).net
    assert isinstance(model.head_act, nn.Identity)
    assert len(_batchnorms(model)) == 16  # two per pre-activation block, none elsewhere
    shortcuts = [b.shortcut for b in model.layers if b.shortcut is not None]
    assert len(shortcuts) == 3 and all(isinstance(s, nn.Conv2d) for s in shortcuts)


# --------------------------------------------------------------------------- presets


def test_the_paper_preset_is_backdoorbench_s_protocol():
    preset = load_preset("paper")
    assert preset.reference == "backdoorbench-preactresnet18"
    assert not preset.grid.exclude_target_from_poison  # poison indices from every class
    cifar, gtsrb = preset.train_for("cifar10"), preset.train_for("gtsrb")
    assert (cifar.epochs, gtsrb.epochs) == (100, 50)
    assert cifar.schedule == "cosine" and cifar.schedule_epochs == gtsrb.schedule_epochs == 100
    assert (cifar.lr, cifar.nesterov, cifar.batch_size) == (0.01, False, 128)
    assert preset.data.source == "official"
    assert preset.grid.ratios_for("sig", "cifar10") == (0.05,)
    assert preset.grid.ratios_for("lc", "gtsrb") == (0.005,)
    assert preset.grid.ratios_for("badnets", "gtsrb") == (0.1,)
    assert preset.attack_params["trojannn"]["application"] == "add_wrap"  # BB's uint8 wrap-around


def test_clean_label_cells_the_target_class_cannot_supply_are_skipped_with_the_reason():
    preset = with_overrides(
        load_preset("quick"), datasets=["gtsrb"], attacks=["badnets", "sig"], defenses=["none"]
    )
    plan = plan_grid(expand_grid(preset))
    assert [s.attack for s in plan.runnable] == ["badnets"]
    (skipped,) = plan.skipped
    assert skipped.spec.attack == "sig" and "target class" in skipped.reason


@pytest.mark.parametrize("preset", builtin_presets())
def test_every_builtin_preset_dry_runs_on_the_shipped_data(preset, tmp_path, capsys):
    """Every built-in preset starts, and its dry run says where each defense's settings come
    from (the paper preset: BackdoorBench's runs for ABL, I-BAU and DBD)."""
    from bench.cli import main

    assert main(["run", "--preset", preset, "--dry-run", "--results-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "trials to run" in out and "Estimated compute" in out
    assert not (tmp_path / "results.parquet").exists()  # nothing ran, nothing was written
    assert f"settings of preset {preset}:" in out and "  defense none: no defense" in out
    if preset.startswith("paper"):
        assert "gtsrb" in out and "sig" in out  # GTSRB clean-label cells at 0.5% run
        source = "BackdoorBench's runs" if preset == "paper" else "the official code"
        for defense in ("abl", "ibau", "dbd"):
            assert f"  defense {defense}: {source}" in out


def test_a_preset_leaves_out_a_defense_with_its_reason_unless_asked_for(tmp_path):
    """[grid.left_out]: the grid's cells for that defense become skipped rows whose reason the
    leaderboard shows; naming the defense on the command line runs it."""
    text = tmp_path / "p.toml"
    base = (Path(__file__).resolve().parents[2] / "bench/presets/smoke.toml").read_text()
    text.write_text(
        base.replace('defenses = ["none"]', 'defenses = ["none", "dbd"]')
        + '\n[grid.left_out]\ndbd = "needs the paper budget"\n'
    )
    preset = load_preset(text)
    plan = plan_grid(expand_grid(preset), preset.grid.left_out)
    assert [s.defense for s in plan.runnable] == ["none"]
    (skipped,) = plan.skipped
    assert skipped.spec.defense == "dbd" and "needs the paper budget" in skipped.reason
    asked = with_overrides(preset, defenses=["dbd"])
    assert not plan_grid(expand_grid(asked), asked.grid.left_out).skipped
