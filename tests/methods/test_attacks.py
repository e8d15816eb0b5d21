"""Trigger placement, label policy and poisoning protocol on real CIFAR-10 / GTSRB images."""

import pytest
import torch

from attacks.badnets import BadNets
from attacks.base import CLEAN_LABEL
from attacks.blended import Blended, noise_key
from bench.errors import BenchError
from bench.trial.poisoning import poison_test_set, poison_train_set, select_poison_indices

CPU = torch.device("cpu")


def test_badnets_stamps_white_3x3_bottom_right_and_nothing_else(cifar_batch):
    out = BadNets().apply(cifar_batch)
    assert out.dtype == torch.uint8 and out.shape == cifar_batch.shape
    assert (out[:, :, 29:32, 29:32] == 255).all()
    changed = (out != cifar_batch).any(dim=1)  # N x H x W
    assert not changed[:, :29, :].any() and not changed[:, :, :29].any()
    assert torch.equal(out[:, :, :29], cifar_batch[:, :, :29])


def test_blended_is_fixed_key_alpha_blend_with_truncation(cifar_batch):
    attack = Blended()
    out = attack.apply(cifar_batch)
    key = noise_key((3, 32, 32), seed=0).float()
    expected = (0.8 * cifar_batch.float() + 0.2 * key).clamp(0, 255).to(torch.uint8)
    assert torch.equal(out, expected)
    # Same key for every image; a different seed gives a different key.
    assert torch.equal(Blended().apply(cifar_batch), out)
    assert not torch.equal(Blended(key_seed=1).apply(cifar_batch), out)
    # The change is global and bounded by alpha * 255.
    diff = (out.float() - cifar_batch.float()).abs()
    assert diff.max() <= 0.2 * 255 + 1
    assert (diff > 0).float().mean() > 0.9


def test_attack_params_are_validated():
    with pytest.raises(BenchError, match="alpha"):
        Blended(alpha=1.5)
    with pytest.raises(BenchError, match="unknown parameter"):
        BadNets(colour=3)
    with pytest.raises(BenchError, match="must be int"):
        BadNets(size="3")


@pytest.mark.parametrize("ratio", [0.1, 0.05, 0.013])
def test_poison_count_relabel_and_untouched_rest(cifar10, ratio):
    sub = cifar10.subset(3000, 10, seed=0)
    x, y = sub.train_x, sub.train_y
    poisoned = poison_train_set(BadNets(), x, y, ratio, target=0, seed=1, device=CPU)
    mask = poisoned.poison_mask
    assert int(mask.sum()) == round(ratio * len(y))
    assert (y[mask] != 0).all(), "poison-label draws come from non-target classes"
    assert (poisoned.labels[mask] == 0).all()
    assert torch.equal(poisoned.labels[~mask], y[~mask])
    assert torch.equal(poisoned.images[~mask], x[~mask])
    assert (poisoned.images[mask][:, :, 29:, 29:] == 255).all()


def test_poison_selection_is_deterministic_by_seed(cifar10):
    y = cifar10.subset(5000, 10, seed=0).train_y
    a = select_poison_indices(y, 0.1, 0, label_policy="poison-label", seed=3)
    b = select_poison_indices(y, 0.1, 0, label_policy="poison-label", seed=3)
    c = select_poison_indices(y, 0.1, 0, label_policy="poison-label", seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_backdoorbench_draw_can_include_target(cifar10):
    y = cifar10.subset(5000, 10, seed=0).train_y
    idx = select_poison_indices(
        y, 0.5, 0, label_policy="poison-label", seed=0, exclude_target=False
    )
    assert (y[idx] == 0).any()


def test_poisoned_test_set_excludes_target_and_keeps_true_labels(gtsrb):
    sub = gtsrb.subset(10, 2000, seed=0)
    x, y = sub.test_x, sub.test_y
    bd = poison_test_set(BadNets(), x, y, target=2, device=CPU)
    assert len(bd.true_labels) == int((y != 2).sum())
    assert (bd.true_labels != 2).all()
    assert torch.equal(bd.true_labels, y[y != 2])
    assert (bd.images[:, :, 29:, 29:] == 255).all()


def test_clean_label_ratio_beyond_class_names_maximum(gtsrb):
    y = gtsrb.train_y
    n_target = int((y == 0).sum())
    with pytest.raises(BenchError, match=r"maximum possible ratio here is 0\.0054"):
        select_poison_indices(y, 0.1, 0, label_policy=CLEAN_LABEL, seed=0)
    idx = select_poison_indices(y, 0.005, 0, label_policy=CLEAN_LABEL, seed=0)
    assert (y[idx] == 0).all() and len(idx) == round(0.005 * len(y)) <= n_target


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_bad_ratio_is_a_clear_error(ratio):
    with pytest.raises(BenchError, match=r"ratio must be in \(0, 1\)"):
        select_poison_indices(
            torch.zeros(10, dtype=torch.long), ratio, 0, label_policy="poison-label", seed=0
        )
