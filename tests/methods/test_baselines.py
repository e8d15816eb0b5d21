"""The six baselines (FT, FP, NAD, NC, ANP, CLP) on a real backdoored model: one small BadNets
model, each baseline at a small budget, each asserting what it is for."""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.api import LabelledImages
from bench.core import metrics
from bench.core.models import build_model
from bench.core.train import Batch, TrainConfig, Trainer, predict
from bench.grid import registry
from bench.trial.defend import defense_context
from bench.trial.poisoning import poison_test_set, poison_train_set
from defenses.anp import ANP
from defenses.clp import CLP, channel_lipschitz
from defenses.nad import AttentionDistillation, attention
from defenses.nc import NeuralCleanse, anomaly_index

CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("two_threads")


@dataclass
class Cell:
    model: nn.Module
    clean: LabelledImages
    test_x: torch.Tensor
    test_y: torch.Tensor
    triggered: torch.Tensor
    info: object

    def scores(self, model: nn.Module) -> tuple[float, float]:
        """(CA, ASR) of ``model`` on the cell's test images."""
        ca = metrics.clean_accuracy(predict(model, self.test_x), self.test_y)
        return ca, metrics.attack_success_rate(predict(model, self.triggered), 0)

    def context(self, name: str):
        model = self.model
        return defense_context(
            self.clean, num_classes=10, make_model=lambda: build_model("cnn_small", 10),
            device=CPU, seed=0, defense=name, allows_flip=True,
            normalization_mean=tuple(self.info.mean), normalization_std=tuple(self.info.std),
            clean_subset=self.clean, backdoored_model=lambda: copy.deepcopy(model),
        )  # fmt: skip


@pytest.fixture(scope="module")
def cell(cifar10) -> Cell:
    """cnn_small trained 4 epochs on 3,000 CIFAR-10 images, 10% BadNets with an 8 x 8 patch
    (learned within that budget; the 3 x 3 one is not); 500 clean images for the defenses."""
    sub = cifar10.subset(3000, 1000, seed=0)
    attack = registry.create("attack", "badnets", {"size": 8})
    poisoned = poison_train_set(attack, sub.train_x, sub.train_y, 0.1, 0, seed=0, device=CPU)
    torch.manual_seed(0)
    model = build_model("cnn_small", 10, sub.info.mean, sub.info.std)
    config = TrainConfig(epochs=4, batch_size=128, lr=0.1, weight_decay=5e-4)
    Trainer(CPU).fit(model, poisoned.images, poisoned.labels, config, seed=0, flip=True)
    clean_idx = torch.nonzero(~poisoned.poison_mask).flatten()  # in class order: draw 500
    clean_idx = clean_idx[
        torch.randperm(len(clean_idx), generator=torch.Generator().manual_seed(0))[:500]
    ]
    clean = LabelledImages(poisoned.images[clean_idx], poisoned.labels[clean_idx])
    triggered = poison_test_set(attack, sub.test_x, sub.test_y, 0, CPU)
    return Cell(model.eval(), clean, sub.test_x, sub.test_y, triggered.images, sub.info)


def _run(cell: Cell, name: str, **params):
    output = registry.create("defense", name, params).run(cell.context(name))
    return output, cell.scores(output.model.eval())


def test_the_cell_is_backdoored(cell):
    ca, asr = cell.scores(cell.model)
    assert asr >= 0.9 and ca >= 0.25, (ca, asr)


def test_fine_tuning_keeps_clean_accuracy_and_does_not_strengthen_the_backdoor(cell):
    ca0, asr0 = cell.scores(cell.model)
    _, (ca, asr) = _run(cell, "ft", epochs=10)
    assert ca >= ca0 - 0.1 and asr <= asr0 + 0.02, (ca0, asr0, ca, asr)


def test_fine_pruning_prunes_dormant_channels_within_its_accuracy_bound(cell):
    ca0, asr0 = cell.scores(cell.model)
    output, (ca, asr) = _run(cell, "fp", epochs=0)
    assert output.metrics["pruned_channels"] >= 2  # at least one step of ceil(1% of 192)
    # The accuracy bound holds on the clean subset, so only roughly on the test set.
    assert ca >= ca0 - 0.2 and asr <= asr0 + 0.05, (ca0, asr0, ca, asr)


class _Recording(AttentionDistillation):
    def loss(self, logits, batch, config):
        self.stages_seen = sorted(batch.stages)
        return super().loss(logits, batch, config)


def test_the_trainer_hands_stage_maps_to_hooks_and_nad_distils_them(cell):
    maps = cell.model.stage_maps(cell.test_x[:4].float() / 255)
    a = attention(maps["stage3"], 2.0)
    assert a.shape == (4, 8 * 8) and torch.allclose(a.norm(dim=1), torch.ones(4), atol=1e-5)
    teacher = copy.deepcopy(cell.model)
    hooks = _Recording(teacher, {"stage3": 500.0, "stage4": 1000.0}, 2.0)
    batch = Batch(cell.test_x[:8].float() / 255, cell.test_y[:8], torch.arange(8))
    with torch.no_grad():
        same = dict(teacher.stage_maps(batch.x))
        logits = teacher(batch.x)
    plain = F.cross_entropy(logits, batch.y)
    config = TrainConfig()
    assert float(hooks.loss(logits, replace(batch, stages=same), config)) == pytest.approx(
        float(plain)
    )
    student = copy.deepcopy(cell.model)
    with torch.no_grad():
        for q in student.parameters():
            q.add_(0.05 * torch.randn_like(q))
    with torch.no_grad():
        moved = replace(batch, stages=student.stage_maps(batch.x))
    assert hooks.loss(logits, moved, config) > plain + 1e-3  # the attention term bites
    few = cell.clean.images[:64], cell.clean.labels[:64]
    Trainer(CPU).fit(
        student, *few, TrainConfig(epochs=1, batch_size=32), seed=0, flip=True, hooks=hooks
    )
    assert hooks.stages_seen == ["stage1", "stage2", "stage3", "stage4"]
    ca0, _ = cell.scores(cell.model)
    _, (ca, _) = _run(cell, "nad", te_epochs=3)
    assert ca >= ca0 - 0.1, (ca0, ca)


def test_anomaly_index_is_the_mad_score():
    norms = torch.tensor([10.0, 11.0, 9.0, 10.0, 2.0])
    index = anomaly_index(norms)
    assert index[4] == pytest.approx(8.0 / 1.4826) and index[0] == 0


def test_neural_cleanse_reverses_a_trigger_that_works(cell):
    """For BadNets' target, a few epochs find a mask far smaller than the image that sends
    most clean images to the target; NC's output model then keeps its clean accuracy."""
    nc = NeuralCleanse(nc_epochs=4, success_threshold=0.9)
    model = copy.deepcopy(cell.model).eval()
    trigger = nc.reverse(cell.context("nc"), model, cell.clean, 0)
    assert trigger.success >= 0.9 and float(trigger.mask.sum()) < 0.5 * 32 * 32
    stamped = (trigger.stamp(cell.test_x[:200].float() / 255) * 255).round().to(torch.uint8)
    assert predict(model, stamped).eq(0).float().mean() >= 0.8


def test_anp_masks_move_and_pruning_keeps_its_accuracy_bound(cell):
    anp = ANP(iterations=30, batch_size=64)
    ctx = cell.context("anp")
    masks = anp.optimise_masks(ctx, copy.deepcopy(cell.model))
    assert len(masks) == 4 and any((m < 1).any() for m in masks)  # cnn_small: 4 BatchNorms
    assert all(((m >= 0) & (m <= 1)).all() for m in masks)
    model = copy.deepcopy(cell.model)
    threshold, pruned = anp.prune(ctx, model, masks)
    base = ctx.evaluate(cell.model, cell.clean.images, cell.clean.labels)
    after = ctx.evaluate(model, cell.clean.images, cell.clean.labels)
    assert (base - after) / base < anp.params.acc_ratio  # the bound it prunes within
    assert pruned == sum(int((m < threshold).sum()) for m in masks)


def test_clp_prunes_exactly_the_channels_above_mean_plus_u_std():
    """A planted channel with a huge kernel is pruned; the others are left alone."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 16, 3, bias=False), nn.BatchNorm2d(16)
    with torch.no_grad():
        conv.weight[5] *= 50
    model = nn.Sequential(conv, bn).eval()
    lips = channel_lipschitz(conv, bn)
    assert lips.argmax() == 5
    assert CLP(u=3.0).prune(model) == 1
    assert bn.weight[5] == 0 and bn.bias[5] == 0 and (bn.weight[:5] != 0).all()
    assert registry.get_entry("defense", "clp").load().needs == {"backdoored_model"}  # data-free
