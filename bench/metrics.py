"""Clean accuracy, attack success rate and robust accuracy (spec: attacks.md section 5)."""

from __future__ import annotations

import math

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


def defense_effectiveness_rating(
    ca_none: float, asr_none: float, ca_def: float, asr_def: float
) -> float:
    """DER (FT-SAM Eq. 7, BackdoorBench's corrected form), in [0, 1]; 0.5 means no change.

    DER = (max(0, dASR) - max(0, dCA) + 1) / 2 with dASR = ASR_none - ASR_def and
    dCA = CA_none - CA_def: lowering ASR raises it, losing clean accuracy lowers it, and gains in
    CA or rises in ASR are not rewarded or punished.
    """
    return (max(0.0, asr_none - asr_def) - max(0.0, ca_none - ca_def) + 1.0) / 2.0


def detection_counts(flagged: torch.Tensor, poison_mask: torch.Tensor) -> dict[str, int]:
    """TP/FP/FN/TN of flagged training indices against the hidden poison mask."""
    predicted = torch.zeros_like(poison_mask)
    predicted[flagged] = True
    tp = int((predicted & poison_mask).sum())
    fp = int((predicted & ~poison_mask).sum())
    fn = int((~predicted & poison_mask).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": len(poison_mask) - tp - fp - fn}


def detection_rates(tp: int, fp: int, fn: int, tn: int) -> dict[str, float]:
    """TPR (recall), FPR, precision and F1; NaN where a rate has no denominator."""

    def ratio(a: float, b: float) -> float:
        return a / b if b else float("nan")

    precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
    f1 = ratio(2 * precision * recall, precision + recall) if tp else 0.0
    return {"tpr": recall, "fpr": ratio(fp, fp + tn), "precision": precision, "f1": f1}


def auroc(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` (higher = more suspicious), ties counted half."""
    scores = scores.double().flatten()
    positives = positives.bool().flatten()
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(scores)
    ranks = torch.empty_like(scores)
    sorted_scores = scores[order]
    # average ranks over ties (Mann-Whitney U)
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).double()
    avg_rank = ends - (counts.double() - 1) / 2
    ranks[order] = avg_rank[inverse]
    u = ranks[positives].sum().item() - n_pos * (n_pos + 1) / 2
    return u / (n_pos * n_neg)


# Two-sided 95% Student-t quantiles for 1..30 degrees of freedom.
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t; NaN for one value)."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    mean = sum(values) / n
    if n == 1:
        return mean, float("nan")
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    t = _T975[n - 2] if n - 1 <= len(_T975) else 1.96
    return mean, t * math.sqrt(var / n)
