"""Clean accuracy, attack success rate and robust accuracy (spec: attacks.md section 5), and the
detection metrics of flagged training samples, per trial (summaries over trials:
:mod:`bench.report.stats`)."""

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
