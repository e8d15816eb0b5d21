import math

import pytest
import torch

from bench.core import metrics


def test_clean_accuracy_counts_every_class_including_target():
    pred = torch.tensor([0, 1, 2, 2, 0])
    labels = torch.tensor([0, 1, 1, 2, 3])
    assert metrics.clean_accuracy(pred, labels) == pytest.approx(3 / 5)


def test_asr_and_ra_on_triggered_predictions():
    # Triggered non-target images with true labels 1..4; target class 0.
    true = torch.tensor([1, 2, 3, 4])
    pred = torch.tensor([0, 0, 3, 2])
    assert metrics.attack_success_rate(pred, target=0) == 0.5
    assert metrics.robust_accuracy(pred, true) == 0.25
    assert metrics.attack_success_rate(pred, 0) + metrics.robust_accuracy(pred, true) <= 1


def test_empty_sets_give_nan_not_zero():
    empty = torch.empty(0, dtype=torch.long)
    assert math.isnan(metrics.attack_success_rate(empty, 0))
