"""Clean accuracy, attack success rate and robust accuracy (spec: attacks.md section 5)."""

from __future__ import annotations

import torch


def clean_accuracy(pred: torch.Tensor, labels: torch.Tensor) -> float:
    """CA: fraction of the clean test set (target class included) predicted correctly."""
    return _mean(pred == labels)


def attack_success_rate(pred_triggered: torch.Tensor, target: int) -> float:
    """ASR: fraction of triggered non-target test images predicted as the target class."""
    return _mean(pred_triggered == target)


def robust_accuracy(pred_triggered: torch.Tensor, true_labels: torch.Tensor) -> float:
    """RA: fraction of triggered non-target test images still predicted as their true class."""
    return _mean(pred_triggered == true_labels)


def _mean(hits: torch.Tensor) -> float:
    if hits.numel() == 0:
        return float("nan")
    return hits.float().mean().item()
