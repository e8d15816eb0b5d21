"""The ten attacks on real CIFAR-10 / GTSRB images: trigger placement and size, invisibility
bounds, label policy, poison counts, cross samples, determinism and cached artifacts.

Artifacts (surrogates, generators, encoders) are built with tiny budgets here: these tests check
what each trigger *is*; whether it implants a backdoor is measured by whole trials."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from attacks import lf
from attacks.badnets import BadNets
from attacks.base import CLEAN_LABEL, ArtifactMissing, AttackContext
from attacks.bpp import squeeze
from attacks.iad import InputAwareGenerator, binarise_mask, pretrain_mask
from attacks.lc import corner_pattern
from attacks.sig import sinusoid
from attacks.ssba import psnr
from attacks.training_control import post_poisoning_augment
from attacks.wanet import identity_grid, warp_grid
from bench.core.models import build_model
from bench.core.train import Batch, TrainConfig
from bench.data import Dataset
from bench.errors import BenchError
from bench.grid import registry
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.trial.poisoning import cell_spec, poison_test_set, poison_train_set

CPU = torch.device("cpu")
ALL = ["badnets", "blended", "trojannn", "sig", "lc", "wanet", "iad", "bpp", "ssba", "lf"]
# Small artifact budgets: enough to exercise every code path in seconds.
TINY = {
    "trojannn": {"iterations": 30},
    "lf": {"max_passes": 2, "num_images": 20},
    "lc": {"steps": 5},
    "iad": {"mask_epochs": 1, "generator_epochs": 1, "width": 8},
    # below the spec's encoder bars on purpose (min_* 0): the plumbing, not the encoder
    "ssba": {
        "epochs": 1,
        "secret_len": 16,
        "train_images": 512,
        "min_bit_accuracy": 0.0,
        "min_psnr": 0.0,
    },
}
pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.fixture(scope="module")
def small(cifar10: Dataset) -> Dataset:
    return cifar10.subset(1000, 300, seed=0)


def context(data: Dataset, ratio: float = 0.05, seed: int = 0, **kw) -> AttackContext:
    info = data.info
    return AttackContext(
        data.train_x,
        data.train_y,
        info.num_classes,
        0,
        CPU,
        seed,
        ratio=ratio,
        make_model=lambda: build_model("cnn_small", info.num_classes, info.mean, info.std),
        model_name="cnn_small",
        train_config=TrainConfig(epochs=3, batch_size=64),
        allows_flip=info.allows_flip,
        pixel_std=tuple(info.std),
        **kw,
    )


def fitted(name: str, data: Dataset, **params):
    attack = registry.create("attack", name, {**TINY.get(name, {}), **params})
    attack.fit(context(data))
    return attack


@pytest.mark.parametrize("name", ALL)
def test_protocol_counts_labels_dtype_and_test_set(name, small):
    attack = fitted(name, small)
    ratio = 0.05
    poisoned = poison_train_set(attack, small.train_x, small.train_y, ratio, 0, seed=0, device=CPU)
    mask = poisoned.poison_mask
    assert int(mask.sum()) == round(ratio * len(small.train_y))
    assert poisoned.images.dtype == torch.uint8 and poisoned.images.shape == small.train_x.shape
    if attack.label_policy == CLEAN_LABEL:
        assert (small.train_y[mask] == 0).all() and torch.equal(poisoned.labels, small.train_y)
    else:
        assert (poisoned.labels[mask] == 0).all() and (small.train_y[mask] != 0).all()
    untouched = ~mask if poisoned.cross_mask is None else ~(mask | poisoned.cross_mask)
    assert torch.equal(poisoned.images[untouched], small.train_x[untouched])
    assert torch.equal(poisoned.labels[~mask], small.train_y[~mask])  # cross samples keep labels
    assert (poisoned.images[mask] != small.train_x[mask]).flatten(1).any(1).float().mean() > 0.95
    bd = poison_test_set(attack, small.test_x, small.test_y, 0, CPU)
    assert len(bd.true_labels) == int((small.test_y != 0).sum()) and (bd.true_labels != 0).all()
    assert bd.images.dtype == torch.uint8
    if attack.has_cross:
        assert poisoned.cross_mask is not None and not (poisoned.cross_mask & mask).any()
        assert int(poisoned.cross_mask.sum()) == attack.cross_count(int(mask.sum()), 1000)
        assert bd.cross_images is not None and torch.equal(bd.cross_labels, small.test_y)
        assert torch.equal(poisoned.indicator.unique(), torch.tensor([0, 1, 2], dtype=torch.int8))


TRAINED = ["trojannn", "lf", "lc", "iad", "ssba"]  # attacks that build cached artifacts


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_poisoned_set_even_when_artifacts_are_rebuilt(
    name, small, tmp_path, monkeypatch
):
    """One attack, fitted twice from scratch (two artifact directories) and, for attacks with
    artifacts, once more loading what the first fit cached: the same poisoned set every time,
    and the load-only fit trains nothing (each trained attack is fitted twice here, not four
    times across separate tests)."""
    x = small.test_x[:16]

    def run(ctx: AttackContext):
        attack = registry.create("attack", name, TINY.get(name, {}))
        attack.fit(ctx)
        poisoned = poison_train_set(
            attack, small.train_x, small.train_y, 0.05, 0, seed=3, device=CPU
        )
        return attack, poisoned

    first_ctx = context(small)
    attack, first = run(first_ctx)
    if name in TRAINED:
        assert first_ctx.artifact_log and all(s == "built" for _, s, _ in first_ctx.artifact_log)
        load_ctx = context(small, build_artifacts=False)  # load only: must not train
        loaded, again = run(load_ctx)
        assert load_ctx.artifact_log and all(s == "hit" for _, s, _ in load_ctx.artifact_log)
        assert torch.equal(attack.apply(x), loaded.apply(x))
        assert torch.equal(attack.apply_test(x), loaded.apply_test(x))
        assert torch.equal(first.images, again.images)
    monkeypatch.setenv("BENCH_ARTIFACT_DIR", str(tmp_path / "fresh"))
    _, second = run(context(small))
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_missing_artifact_without_building_is_a_clear_error(small):
    with pytest.raises(ArtifactMissing, match="not built"):
        registry.create("attack", "lf", TINY["lf"]).fit(context(small, build_artifacts=False))
    lc = registry.create("attack", "lc", TINY["lc"])
    lc.fit(context(small, build_artifacts=False))  # test-time corners need no surrogate
    x = small.test_x[:4]
    assert torch.equal(lc.apply_test(x), lc.corners(x))
    with pytest.raises(ArtifactMissing, match="not built"):
        lc.apply(x)


def test_a_new_attack_revision_rebuilds_what_older_code_cached(small, monkeypatch):
    """Cached artifacts, poisoned sets and backdoored models carry the attack's revision, so a
    change to what an attack makes is never answered from a cache that older code wrote."""
    preset = with_overrides(
        load_preset("smoke"), datasets=["cifar10"], attacks=["lf"], defenses=["none"]
    )
    (trial,) = expand_grid(preset)
    attack = registry.create("attack", "lf", TINY["lf"])
    attack.fit(context(small))
    monkeypatch.setattr(type(attack), "revision", type(attack).revision + 1)
    with pytest.raises(ArtifactMissing, match="not built"):
        registry.create("attack", "lf", TINY["lf"]).fit(context(small, build_artifacts=False))
    (newer,) = expand_grid(preset)
    assert newer.attack_revision == type(attack).revision
    assert newer.trial_id != trial.trial_id  # a resumed run reruns the cell, not skips it
    assert cell_spec(newer, small) != cell_spec(trial, small)  # poisoned set, backdoored model
    assert BadNets().revision_key() == {}  # revision 1: keys as they were before revisions


# --------------------------------------------------------------------------- per trigger


def test_sig_is_the_specified_sinusoid(cifar_batch):
    v = sinusoid(32, 40.0, 6.0, CPU)
    expected = [0, 37.0, 28.3, -15.3, -40.0, -15.3, 28.3, 37.0]
    assert torch.allclose(v[:8], torch.tensor(expected), atol=0.05)
    out = registry.create("attack", "sig").apply(cifar_batch)
    assert torch.equal(out, (cifar_batch.float() + v).clamp(0, 255).to(torch.uint8))


def test_clean_label_attacks_on_gtsrb_name_the_maximum_ratio(gtsrb):
    from bench.errors import BenchError

    for name in ("sig", "lc"):
        attack = registry.create("attack", name, {"steps": 0} if name == "lc" else {})
        with pytest.raises(BenchError, match=r"maximum possible ratio here is 0\.0054"):
            poison_train_set(attack, gtsrb.train_x, gtsrb.train_y, 0.1, 0, seed=0, device=CPU)


def test_wanet_warp_is_subpixel_smooth_and_seeded():
    grid = warp_grid(32, 4, 0.5, 1.0, seed=0)
    shift_px = ((grid - identity_grid(32)) * 31 / 2).norm(dim=-1)  # grid units -> pixels
    # Spec A6: the largest displacement of the field is about half a pixel (0.7 at most).
    assert 0.3 < shift_px.max() < 0.8 and shift_px.mean() < 0.4
    assert torch.equal(grid, warp_grid(32, 4, 0.5, 1.0, seed=0))
    assert not torch.equal(grid, warp_grid(32, 4, 0.5, 1.0, seed=1))


def test_wanet_backdoor_and_noise_warps_differ(cifar_batch):
    attack = registry.create("attack", "wanet")
    gen = torch.Generator().manual_seed(0)
    bd, noise = attack.apply(cifar_batch), attack.apply_cross(cifar_batch, gen)
    assert torch.equal(bd, attack.apply(cifar_batch))
    assert not torch.equal(bd, noise)
    # A warp moves pixels by under a pixel: images stay close, mostly at edges.
    assert (bd.float() - cifar_batch.float()).abs().mean() < 12


def test_bpp_squeezes_to_eight_levels_with_bounded_change(cifar_batch):
    out = registry.create("attack", "bpp").apply(cifar_batch)
    levels = torch.unique(squeeze(torch.arange(256.0), 8).to(torch.uint8))
    assert torch.isin(out.unique(), levels).all()
    assert (out.float() - cifar_batch.float()).abs().max() <= 255 / 7 / 2 + 1


def test_trojannn_patch_sits_in_the_square_mask(small):
    attack = fitted("trojannn", small)
    x = small.test_x[:32]
    out = attack.apply(x)
    changed = (out != x).any(1).any(0)
    assert not changed[:20].any() and not changed[:, :20].any() and not changed[30:].any()
    inside = out[:, :, 20:30, 20:30].float()
    assert (inside >= 0.7 * 255 - 1).all()  # T starts at 1 and moves at most 0.3
    assert torch.equal(out[:, :, 20:30, 20:30], out[:1, :, 20:30, 20:30].expand_as(inside))


def test_trojannn_add_wrap_is_backdoorbench_s_uint8_wrap_around(small):
    """BackdoorBench adds the patch and casts to uint8 before clipping: 200 + 100 becomes 44."""
    attack = fitted("trojannn", small)
    attack.params = dataclasses.replace(attack.params, application="add_wrap")
    x = small.test_x[:8].clone()
    x[:, :, 20:30, 20:30] = 200
    out = attack.apply(x)
    assert torch.equal(out[:, :, :20], x[:, :, :20]) and torch.equal(out[..., :20], x[..., :20])
    patch = attack.pattern[0, :, 20:30, 20:30].int()
    assert (patch >= 178).all()  # T in [0.7, 1]: every sum passes 255
    assert torch.equal(out[0, :, 20:30, 20:30].int(), 200 + patch - 256)


def test_lf_smooths_its_pattern_when_deepfool_returns_at_once(monkeypatch):
    """BackdoorBench updates v whenever DeepFool converged, also at iteration 0 (x + v already
    hits the target): v <- LP(v + LP(0)), rescaled, i.e. one more blur."""
    r = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls = iter([(r, 3), (torch.zeros_like(r), 0)])
    monkeypatch.setattr(lf, "targeted_deepfool", lambda *a: next(calls))
    same_class = nn.Sequential(nn.Conv2d(3, 10, 32), nn.Flatten())  # one argmax for any input

    def rescaled(v):
        return 0.2 * (v - v.min()) / (v.max() - v.min())

    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        nn.init.zeros_(same_class[0].weight)
        nn.init.constant_(same_class[0].bias, 1.0)
    v, _ = lf.universal_low_frequency(
        same_class, images, images, 0, max_passes=1, delta=0.8, overshoot=0.02, max_iter=200,
        max_value=0.2, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    first = rescaled(lf.gaussian_low_pass(lf.gaussian_low_pass(r[0])))
    assert torch.allclose(v, rescaled(lf.gaussian_low_pass(first)), atol=1e-6)
    assert not torch.allclose(v, first, atol=1e-3)


def test_iad_mask_diversity_measures_images_normalised_as_backdoorbench(small):
    """Stage 1's loss divides the images' distance (normalised, BB) by the masks' ([0, 1]): with
    the norm term off and one batch, a std of 0.25 makes the loss 4x that of no normalisation."""
    images = small.train_x[:64]

    def first_loss(std: float) -> float:
        torch.manual_seed(0)
        mask_gen = InputAwareGenerator(1, 8)
        return pretrain_mask(
            mask_gen, images, epochs=1, batch_size=64, lr=0.01, density=0.032, lambda_norm=0.0,
            lambda_div=1.0, generator=torch.Generator().manual_seed(0), pixel_std=(std,) * 3,
        )[0]  # fmt: skip

    assert first_loss(0.25) == pytest.approx(4 * first_loss(1.0), rel=1e-4)


def test_lf_pattern_is_smooth_nonnegative_and_bounded(small):
    attack = fitted("lf", small)
    pattern = attack.pattern.float()
    assert pattern.min() == 0 and 50 <= pattern.max() <= 51
    # Low frequency: neighbouring pixels differ by far less than the pattern's range.
    assert pattern.diff(dim=2).abs().max() < 6 and pattern.diff(dim=1).abs().max() < 6
    x = small.test_x[:16]
    assert torch.equal(attack.apply(x), (x.float() + pattern).clamp(0, 255).to(torch.uint8))


def test_lc_adds_invisible_noise_at_train_time_and_only_corners_at_test(small):
    attack = fitted("lc", small)
    x = small.train_x[small.train_y == 0][:32]
    train, test = attack.apply(x), attack.apply_test(x)
    corners = corner_pattern(32, 1.0) != 0
    inner = ~corners
    eps = 8 / 255 * 255
    assert (train.float() - x.float()).abs()[:, :, inner].max() <= math.ceil(eps) + 1
    assert (train != x)[:, :, inner].float().mean() > 0.3  # PGD touched most pixels
    assert torch.equal(test[:, :, inner], x[:, :, inner])
    expected = (x.float() + corner_pattern(32, 1.0)).clamp(0, 255).to(torch.uint8)
    assert torch.equal(test, expected)
    assert (test[:, :, 0, 0] == 255).all() and (test[:, :, 0, 1] == 0).all()


def test_iad_triggers_are_sample_specific_masked_and_crossable(small):
    attack = fitted("iad", small)
    x = small.test_x[:32]
    out = attack.apply(x)
    delta = (out.float() - x.float()).abs().sum(1)  # N x H x W
    assert not torch.equal(delta[0], delta[1])  # a different trigger for a different image
    mask = binarise_mask(attack.m(x.float() / 255))
    assert mask.shape == (32, 1, 32, 32) and mask.min() >= 0 and mask.max() <= 1
    cross = attack.apply_cross(x, torch.Generator().manual_seed(0))
    assert not torch.equal(cross, out)


def test_ssba_encoder_learns_the_secret_and_stays_close_to_the_image(small):
    ctx = context(small)
    attack = registry.create(
        "attack",
        "ssba",
        {
            "epochs": 10,
            "batch_size": 16,
            "width": 8,
            "secret_len": 16,
            "lr": 3e-4,
            "l2_delay_steps": 20,
            "l2_ramp_steps": 60,
            "min_psnr": 15.0,  # this small budget's encoder; the spec's bar is 25 dB
        },
    )
    attack.fit(ctx)
    x = small.test_x[:64]
    out = attack.apply(x)
    assert out.shape == x.shape and out.dtype == torch.uint8
    bits = (attack.decoder(out.float() / 255) > 0).float() == attack.secret
    assert bits.float().mean() > 0.8  # the secret is readable from the poisoned image
    # the L2 term pulled the encoded image back towards the input (BCE alone gives ~9 dB here)
    assert psnr(out, x).mean() > 15
    per_image = (out.float() - x.float()).abs().flatten(1).mean(1)
    assert not torch.allclose(per_image, per_image[0])  # sample-specific


def test_an_ssba_encoder_below_the_acceptance_bar_fails_the_cell(small):
    tiny = {k: v for k, v in TINY["ssba"].items() if not k.startswith("min_")}
    attack = registry.create("attack", "ssba", tiny)  # the same encoder artifact, default bars
    with pytest.raises(BenchError, match=r"misses the acceptance bar.*PSNR"):
        attack.fit(context(small))


def test_post_poisoning_augmentation_draws_one_setting_per_batch(cifar_batch):
    """BackdoorBench's WaNet/BPP PostTensorTransform: one crop offset, angle and flip for the
    whole batch; what the padding uncovers takes the fill colour."""
    x = cifar_batch[:16].float() / 255
    fill = torch.tensor([0.5, 0.25, 0.75])
    gen = torch.Generator().manual_seed(3)
    outs = [post_poisoning_augment(x, gen, fill=fill, flip=True) for _ in range(40)]
    for out in outs:
        assert out.shape == x.shape
        # the same geometric change for every image: a constant image goes to a constant image
        ones = post_poisoning_augment(torch.ones_like(x), torch.Generator().manual_seed(0),
                                      fill=fill, flip=True)  # fmt: skip
        assert torch.equal(ones, ones[:1].expand_as(ones))
    crop_only = post_poisoning_augment(
        x, torch.Generator().manual_seed(1), fill=fill, flip=False, crop_p=1.0, rotate_p=0.0
    )
    shift = [
        (dy, dx)
        for dy in range(-5, 6)
        for dx in range(-5, 6)
        if torch.allclose(
            crop_only[:, :, 5:-5, 5:-5], x[:, :, 5 + dy : 27 + dy, 5 + dx : 27 + dx], atol=1e-6
        )
    ]
    assert len(shift) == 1  # one offset for the batch
    changed = sum(not torch.allclose(out, x, atol=1e-6) for out in outs)
    assert 30 <= changed <= 40  # crop p 0.8, rotation p 0.5, flip p 0.5: rarely untouched


@pytest.mark.parametrize("name", ["wanet", "bpp", "iad"])
def test_training_controlled_attacks_poison_each_batch_through_hooks(name, small):
    attack = fitted(name, small)
    hooks = attack.training_hooks(0.1, 0, small.info)
    assert hooks.replaces_augmentation == (name != "iad")  # BB: WaNet, BPP augment themselves
    hooks.replaces_augmentation = False  # compare the poisoning alone
    x = small.train_x[:128].float() / 255
    y = small.train_y[:128]
    batch = Batch(x, y, torch.arange(128))
    out = hooks.transform_batch(batch, torch.Generator().manual_seed(0))
    n_bd = 12  # floor(0.1 * 128)
    n_cross = attack.cross_count(n_bd, 128)
    assert (out.y[:n_bd] == 0).all() and torch.equal(out.y[n_bd:], y[n_bd:])
    changed = (out.x - x).abs().flatten(1).amax(1) > 1e-6
    assert changed[: n_bd + n_cross].float().mean() > 0.9
    assert not changed[n_bd + n_cross :].any()
    assert out.x.min() >= 0 and out.x.max() <= 1
    # the per-batch trigger is the static trigger (up to uint8 truncation)
    static = attack.apply(small.train_x[:n_bd]).float() / 255
    assert (out.x[:n_bd] - static).abs().max() <= 1.01 / 255
