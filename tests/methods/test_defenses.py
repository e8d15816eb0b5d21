"""ABL and DLP and their shared pieces: isolation, unlearning, entropy filtering, MixMatch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bench.core import metrics
from bench.core.models import build_model
from bench.core.train import Augment, Batch, TrainConfig, Trainer, predict
from bench.errors import BenchError
from bench.grid import registry
from bench.trial.poisoning import poison_test_set, poison_train_set
from defenses.shared import (
    GradientAscent,
    JointUnlearning,
    LossGuidedIsolation,
    MixMatch,
    lowest_fraction,
    per_sample_losses,
    prediction_entropy,
)

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("two_threads")


# --------------------------------------------------------------------------- losses by hand


def test_flooding_and_lga_losses():
    logits = torch.tensor([[4.0, 0.0], [0.0, 0.0]], requires_grad=True)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([0, 0]), torch.tensor([0, 1]))
    cfg = TrainConfig()
    per = F.cross_entropy(logits, batch.y, reduction="none")  # ~0.018 (below 0.5), ~0.693
    flood = LossGuidedIsolation(0.5, per_sample=False).loss(logits, batch, cfg)
    assert flood.item() == pytest.approx(abs(per.mean().item() - 0.5) + 0.5)
    lga = LossGuidedIsolation(0.5, per_sample=True).loss(logits, batch, cfg)
    assert lga.item() == pytest.approx((-per[0] + per[1]).item() / 2)
    lga.backward()
    # The sample below gamma is pushed up (ascent): its true-class logit gradient is positive.
    assert logits.grad[0, 0] > 0 and logits.grad[1, 0] < 0


def test_unlikelihood_keeps_a_gradient_where_ce_ascent_vanishes():
    logits = torch.tensor([[20.0, 0.0, 0.0]], requires_grad=True)  # p_y ~ 1 - 4e-9
    batch = Batch(torch.zeros(1, 3, 2, 2), torch.tensor([0]), torch.tensor([0]))
    GradientAscent("ce").loss(logits, batch, TrainConfig()).backward()
    ce_grad = logits.grad.abs().max().item()
    logits.grad = None
    GradientAscent("unlikelihood").loss(logits, batch, TrainConfig()).backward()
    assert ce_grad < 1e-7 and logits.grad[0, 0] > 0.5  # pushes the target logit down
    with pytest.raises(ValueError, match="objective"):
        GradientAscent("sideways")


def test_joint_unlearning_weights_isolated_samples_negatively():
    logits = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0]])
    batch = Batch(torch.zeros(3, 3, 2, 2), torch.tensor([0, 0, 1]), torch.tensor([5, 6, 7]))
    hooks = JointUnlearning(torch.tensor([6]), n_train=10, weight=2.0)
    per = F.cross_entropy(logits, batch.y, reduction="none")
    expected = (per[0] - 2.0 * per[1] + per[2]) / 3
    assert hooks.loss(logits, batch, TrainConfig()).item() == pytest.approx(expected.item())


def test_mixmatch_sharpens_mixes_and_weights_its_losses():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    model = build_model("cnn_small", 4)
    hooks = MixMatch(
        images,
        torch.arange(20, 40),
        4,
        flip=True,
        temperature=0.5,
        alpha=0.75,
        lambda_u=10.0,
        rampup_steps=4,
        augment=Augment(crop_padding=1),
    )
    hooks.on_train_start(model)
    gen = torch.Generator().manual_seed(0)
    labelled = Batch(images[:8].float() / 255, torch.arange(8) % 4, torch.arange(8))
    mixed = hooks.transform_batch(labelled, gen)
    assert mixed.x.shape == (24, 3, 8, 8) and mixed.soft_targets.shape == (24, 4)
    assert torch.allclose(mixed.soft_targets.sum(1), torch.ones(24))
    logits = torch.zeros(24, 4)
    loss = hooks.loss(logits, mixed, TrainConfig())
    soft = mixed.soft_targets
    supervised = -(soft[:8] * F.log_softmax(logits[:8], 1)).sum(1).mean()
    unsupervised = ((F.softmax(logits[8:], 1) - soft[8:]) ** 2).mean()
    assert loss.item() == pytest.approx((supervised + 10.0 * 0.25 * unsupervised).item())


def test_sharpening_lowers_the_entropy_of_guesses():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    sharp = p**2 / (p**2).sum()
    assert sharp[0, 0] > p[0, 0] and torch.isclose(sharp.sum(), torch.tensor(1.0))


# --------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("abl", {"mode": "both"}, "mode must be 'sequential' or 'joint'"),
        ("abl", {"isolation_ratio": 0.7}, "isolation_ratio must be in (0, 0.5)"),
        ("abl", {"isolation_loss": "hinge"}, "isolation_loss must be 'flooding' or 'lga'"),
        ("abl", {"unlearning_lr": -1.0}, "learning rates and gamma must be positive"),
        ("dlp", {"filter_fraction": 1.5}, "filter_fraction must be in (0, 1)"),
        ("dlp", {"au_mode": "forget"}, "au_mode must be 'ascent' or 'joint'"),
        ("dlp", {"assf_epochs": 0}, "every stage needs at least one epoch"),
        ("dlp", {"lambda_u": "high"}, "parameter 'lambda_u' must be float"),
    ],
)
def test_parameters_validate_with_clear_errors(name, params, message):
    with pytest.raises(BenchError, match=f"defense '{name}'") as err:
        registry.create("defense", name, params)
    assert message in str(err.value)


def test_dlp_is_labelled_reconstructed():
    assert registry.get_entry("defense", "dlp").load().reconstructed is True
    assert registry.get_entry("defense", "abl").load().reconstructed is False


# --------------------------------------------------------------------------- on real data


def _poisoned(cifar10, attack: str, n: int):
    sub = cifar10.subset(n, 2000, seed=0)
    poisoned = poison_train_set(
        registry.create("attack", attack), sub.train_x, sub.train_y, 0.1, 0, seed=0, device=CPU
    )
    return sub, poisoned


def _train(model, poisoned, epochs, *, augment, hooks=None, schedule="onecycle", lr=0.1):
    cfg = TrainConfig(epochs=epochs, batch_size=128, lr=lr, weight_decay=1e-4, schedule=schedule)
    Trainer(CPU).fit(
        model,
        poisoned.images,
        poisoned.labels,
        cfg,
        seed=0,
        flip=True,
        augment=augment,
        hooks=hooks,
    )
    return model


@pytest.mark.slow
def test_loss_guided_isolation_flags_mostly_poisoned_badnets_samples(cifar10):
    sub, poisoned = _poisoned(cifar10, "badnets", 8000)
    torch.manual_seed(0)
    model = _train(
        build_model("cnn_small", 10, sub.info.mean, sub.info.std),
        poisoned,
        2,
        augment=False,
        hooks=LossGuidedIsolation(0.5, per_sample=False),
        schedule="constant",  # as ABL's isolation phase
        lr=0.01,  # BackdoorBench's isolation lr; see below
    )
    isolated = lowest_fraction(
        per_sample_losses(model, poisoned.images, poisoned.labels, CPU), 0.01
    )
    precision = poisoned.poison_mask[isolated].float().mean().item()
    # Measured 1.00 at fp32 and bf16, on CPUs with and without bf16 units; chance is 0.10. At
    # the official lr 0.1 (constant, no warm-up) this small net sits at chance loss for epochs,
    # and whether it learns the trigger within 5 epochs depended on the init and the CPU's
    # rounding (0.00 / 0.37 / 1.00 on three CPUs; DEVIATIONS.md, "ABL's isolation lr").
    assert precision >= 0.8


@pytest.mark.slow
def test_entropy_filter_and_unlearning_on_a_backdoored_model(cifar10):
    sub, poisoned = _poisoned(cifar10, "blended", 5000)
    torch.manual_seed(0)
    model = _train(
        build_model("cnn_small", 10, sub.info.mean, sub.info.std), poisoned, 5, augment=True
    )
    bd_test = poison_test_set(registry.create("attack", "blended"), sub.test_x, sub.test_y, 0, CPU)
    asr_before = metrics.attack_success_rate(predict(model, bd_test.images), 0)
    ca_before = metrics.clean_accuracy(predict(model, sub.test_x), sub.test_y)

    entropy = prediction_entropy(model, poisoned.images, CPU)
    flagged = lowest_fraction(entropy, 0.05)
    precision = poisoned.poison_mask[flagged].float().mean().item()
    auroc = metrics.auroc(-entropy, poisoned.poison_mask)

    cfg = TrainConfig(epochs=20, batch_size=128, lr=2e-4, weight_decay=0.0, schedule="constant")
    hooks = GradientAscent(  # as DLP runs it: BatchNorm frozen
        "unlikelihood", 0.2, poisoned.images[flagged], poisoned.labels[flagged], CPU, freeze_bn=True
    )
    stats = Trainer(CPU).fit(
        model,
        poisoned.images,
        poisoned.labels,
        cfg,
        seed=1,
        flip=True,
        augment=False,
        indices=flagged,
        hooks=hooks,
    )
    assert len(stats.epoch_losses) < 20 and hooks.accuracy <= 0.2  # stopped early
    asr_after = metrics.attack_success_rate(predict(model, bd_test.images), 0)
    ca_after = metrics.clean_accuracy(predict(model, sub.test_x), sub.test_y)
    # Measured on an AMD EPYC without bf16 units, fp32 / bf16: entropy-5% precision 0.99 /
    # 1.00, AUROC 0.991 / 0.991 (chance 0.10 / 0.5), ASR 1.00 -> 0.04 / 0.06.
    assert asr_before >= 0.9
    assert precision >= 0.6 and auroc >= 0.8
    assert asr_after <= asr_before - 0.5
    # Unlearning costs clean accuracy on this small, briefly trained model (CA 0.425 -> 0.229 at
    # fp32, 0.424 -> 0.243 at bf16; 0.48 -> 0.27 on an EPYC with bf16 units; CA before 0.396 on
    # an Intel Xeon at fp32); it must not collapse to chance (0.10).
    assert ca_after >= 0.15 and ca_before >= 0.3
