"""DBD's pieces: NT-Xent against a direct computation, SCE and MixMatch on tiny inputs, the
batched SimCLR augmentations, and the split on real data."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from attacks.badnets import BadNets
from bench.api import DefenseContext, LabelledImages
from bench.core.models import build_model
from bench.core.train import Batch, TrainConfig
from bench.trial.defend import defense_context
from bench.trial.poisoning import poison_train_set
from defenses.dbd import DBD, ResplitMixMatch, symmetric_cross_entropy
from defenses.shared import MixMatch, lowest_fraction
from defenses.ssl import color_jitter, nt_xent, random_resized_crop, simclr_view

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("two_threads")


def test_nt_xent_equals_a_direct_computation():
    torch.manual_seed(0)
    z1, z2 = torch.randn(4, 5), torch.randn(4, 5)
    tau = 0.5
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = len(z)

    def anchor_loss(i: int) -> float:
        positive = (i + 4) % n
        num = math.exp(float(z[i] @ z[positive]) / tau)
        den = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(n) if k != i)
        return -math.log(num / den)

    first_views = sum(anchor_loss(i) for i in range(4)) / 4
    all_views = sum(anchor_loss(i) for i in range(n)) / n
    assert nt_xent(z1, z2, tau) == pytest.approx(first_views, rel=1e-5)
    assert nt_xent(z1, z2, tau, symmetric=True) == pytest.approx(all_views, rel=1e-5)
    # identical views of well-separated images: near-zero loss
    eye = torch.eye(4, 5) * 10
    assert nt_xent(eye, eye, 0.1) < 1e-3


def test_sce_is_ce_plus_reverse_ce_and_bounded_for_noisy_labels():
    logits = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    labels = torch.tensor([0, 0])
    sce = symmetric_cross_entropy(logits, labels, alpha=0.1, beta=1.0)
    p = F.softmax(logits, 1)
    rce = -(p * torch.tensor([[0.0, math.log(1e-4), math.log(1e-4)]])).sum(1)
    expected = 0.1 * F.cross_entropy(logits, labels, reduction="none") + rce
    assert torch.allclose(sce, expected, atol=1e-5)
    # a confidently "wrong" label costs at most -log(1e-4) from RCE: robust to label noise
    very_wrong = symmetric_cross_entropy(torch.tensor([[0.0, 100.0, 0.0]]), torch.tensor([0]))
    assert very_wrong.item() < 0.1 * 100.0 + -math.log(1e-4) + 1e-3
    assert sce[0] < sce[1]


def test_mixmatch_sharpens_guesses_mixes_and_weights_the_unlabelled_loss():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 3))
    hook = MixMatch(images, torch.arange(10, 20), 3, flip=False, lambda_u=10.0, rampup_steps=4)
    hook.on_train_start(model)
    gen = torch.Generator().manual_seed(0)
    x = images[:4].float() / 255
    out = hook.transform_batch(Batch(x, torch.tensor([0, 1, 2, 0]), torch.arange(4)), gen)
    assert out.x.shape == (12, 3, 8, 8)  # 4 labelled + 2 views of 4 unlabelled
    soft = out.soft_targets
    assert torch.allclose(soft.sum(1), torch.ones(12), atol=1e-5)
    # the labelled part dominates its own mixture (lambda' = max(lambda, 1 - lambda) >= 0.5)
    assert (soft[torch.arange(4), torch.tensor([0, 1, 2, 0])] >= 0.5 - 1e-6).all()
    logits = torch.zeros(12, 3)
    first = hook.loss(logits, out, TrainConfig())
    supervised = -(soft[:4] * F.log_softmax(logits[:4], 1)).sum(1).mean()
    unsupervised = ((F.softmax(logits[4:], 1) - soft[4:]) ** 2).mean()
    assert first == pytest.approx(float(supervised + 10.0 * 0.25 * unsupervised), rel=1e-5)


def test_batched_simclr_augmentations_stay_valid_and_vary_per_image(cifar_batch):
    x = cifar_batch.float() / 255
    gen = torch.Generator().manual_seed(0)
    crops = random_resized_crop(x, gen, flip=False)
    assert crops.shape == x.shape and not torch.allclose(crops, x)
    full = random_resized_crop(x[:4], gen, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(full, x[:4], atol=1e-4)  # a full-size crop is the image itself
    jittered = color_jitter(x, gen, p=1.0)
    assert jittered.min() >= 0 and jittered.max() <= 1
    same_hue = color_jitter(x[:4], gen, strength=0.0, hue=0.0, p=1.0)
    assert torch.allclose(same_hue, x[:4], atol=1e-4)  # zero strength is the identity
    a, b = simclr_view(x, gen), simclr_view(x, gen)
    assert not torch.allclose(a, b)


@pytest.mark.slow
def test_the_labelled_split_holds_fewer_poisoned_samples_than_chance(cifar10):
    """DBD's premise on real data: after SimCLR, a linear SCE head fits poisoned samples worse
    than clean ones, so the labelled half it selects holds fewer of them than a random half
    (10% +- 0.21% at 20,000 images). The quick preset's stages 1-2 (5 SimCLR epochs, 3 probe
    epochs) measured 8.7% and 8.3% for seeds 1 and 2; at 5,000 images the outcome swung between
    8% and 14% with the initialisation, too few steps for the features to stop encoding the
    3x3 patch, so the test pays for the quick preset's scale."""
    sub = cifar10.subset(20000, 10, seed=0)
    poisoned = poison_train_set(BadNets(), sub.train_x, sub.train_y, 0.1, 0, seed=1, device=CPU)
    torch.manual_seed(1)
    ctx = dataclasses.replace(_context(sub, poisoned), seed=1)
    dbd = DBD(simclr_epochs=5, simclr_schedule_epochs=5, simclr_batch_size=256, simclr_lr=0.3,
              warmup_epochs=3)  # fmt: skip
    classifier, _ = dbd.fit_linear_head(ctx, dbd.pretrain(ctx))
    hooks = dbd.split_hooks(ctx)
    hooks.split(classifier)
    labelled = hooks.labelled
    assert len(labelled) == 10000
    in_labelled = poisoned.poison_mask[labelled].float().mean().item()
    assert in_labelled < 0.094, f"{in_labelled:.3f} poisoned in the labelled half"  # 3 sd


def test_an_official_mixmatch_epoch_tiles_the_labelled_split():
    """An epoch of 1,024 iterations x 64 draws every labelled sample equally often (whole copies,
    then a random remainder), and the flagged half stays the unique low-credibility samples."""
    losses = torch.arange(10.0)
    images = torch.zeros(10, 3, 4, 4, dtype=torch.uint8)
    hooks = ResplitMixMatch(images, torch.zeros(10, dtype=torch.long), 0.5, CPU,
                            samples_per_epoch=12, num_classes=2, flip=False)  # fmt: skip
    hooks.labelled = lowest_fraction(losses, 0.5)
    pool = hooks.epoch_pool()
    assert len(pool) == 12 and set(pool.tolist()) == {0, 1, 2, 3, 4}
    counts = torch.bincount(pool, minlength=5)
    assert counts.min() >= 2 and counts.max() <= 3
    hooks.samples_per_epoch = 0
    assert hooks.epoch_pool().tolist() == [0, 1, 2, 3, 4]


def _context(sub, poisoned) -> DefenseContext:
    return defense_context(
        LabelledImages(poisoned.images, poisoned.labels),
        num_classes=10,
        make_model=lambda: build_model("cnn_small", 10, sub.info.mean, sub.info.std),
        device=CPU,
        train_config=TrainConfig(epochs=1),
        dataset="cifar10",
    )


def test_dbd_runs_all_three_stages_and_flags_the_low_credibility_half(cifar10):
    """Plumbing on real data (tiny budgets)."""
    sub = cifar10.subset(600, 10, seed=0)
    poisoned = poison_train_set(BadNets(), sub.train_x, sub.train_y, 0.1, 0, seed=0, device=CPU)
    ctx = _context(sub, poisoned)
    dbd = DBD(simclr_epochs=1, simclr_schedule_epochs=1, simclr_batch_size=128, warmup_epochs=1)
    out = DBD(**{**dbd.describe(), "semi_epochs": 2, "semi_iterations": 3}).run(ctx)
    assert len(out.flagged) == 300 and out.scores.shape == (600,)
    assert set(ctx._harness.stage_seconds) == {"simclr", "linear", "mixmatch"}
    assert set(out.metrics) == {"probe_fit_accuracy", "last_split_fit_accuracy"}
    assert all(p.requires_grad for p in out.model.parameters())  # the backbone was unfrozen
