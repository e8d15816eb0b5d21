"""Evaluating a defended model: CA, ASR and RA, rejection rates, cross-sample accuracy, and how
well the defense's flagged samples match the hidden poison mask."""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from bench.core import metrics
from bench.core.train import predict
from bench.grid import checks
from bench.schema import Col
from bench.trial.cell import PoisonedCell
from bench.trial.defend import DefenseRun


def evaluate(
    cell: PoisonedCell, run: DefenseRun, target: int, device: torch.device, who: str
) -> dict[str, Any]:
    """The evaluation columns of a trial's row (``eval_seconds`` excludes detection)."""
    truth = cell.ground_truth()  # derived now, after the defense returned
    detection = detection_columns(run.flagged, run.output.scores, truth.poison_mask, who)
    start = time.perf_counter()
    data, bd_test, output = cell.data, cell.test, run.output
    transform = output.input_transform
    clean_pred = predict(output.model, data.test_x, device=device, transform=transform)
    bd_pred = predict(output.model, bd_test.images, device=device, transform=transform)
    scores = {
        Col.ca: metrics.clean_accuracy(clean_pred, data.test_y),
        Col.asr: metrics.attack_success_rate(bd_pred, target),
        Col.ra: metrics.robust_accuracy(bd_pred, bd_test.true_labels),
    }
    checks.check_metrics(scores, who)
    rejection = {Col.clean_reject_rate: math.nan, Col.bd_reject_rate: math.nan}
    if output.reject is not None:
        rejection = {
            Col.clean_reject_rate: checks.check_rejections(output.reject, data.test_x, who),
            Col.bd_reject_rate: checks.check_rejections(output.reject, bd_test.images, who),
        }
    cross_acc = math.nan
    if bd_test.cross_images is not None and bd_test.cross_labels is not None:
        cross_pred = predict(output.model, bd_test.cross_images, device=device, transform=transform)
        cross_acc = metrics.clean_accuracy(cross_pred, bd_test.cross_labels)
    return {
        **scores,
        Col.cross_acc: cross_acc,
        **rejection,
        **detection,
        Col.eval_seconds: time.perf_counter() - start,
    }


#: The columns of :func:`metrics.detection_counts` and :func:`metrics.detection_rates`.
DETECTION = {
    "tp": Col.det_tp,
    "fp": Col.det_fp,
    "fn": Col.det_fn,
    "tn": Col.det_tn,
    "tpr": Col.det_tpr,
    "fpr": Col.det_fpr,
    "precision": Col.det_precision,
    "f1": Col.det_f1,
}


def detection_columns(
    flagged: torch.Tensor | None, scores: torch.Tensor | None, mask: torch.Tensor, who: str
) -> dict[str, float]:
    """Detection metrics of flagged samples (and AUROC of scores) against the hidden mask."""
    cols: dict[str, float] = dict.fromkeys(DETECTION.values(), math.nan)
    cols[Col.det_auroc] = math.nan
    cols[Col.n_flagged] = -1
    if flagged is not None:
        counts = metrics.detection_counts(flagged, mask)
        cols.update({DETECTION[k]: float(v) for k, v in counts.items()})
        cols.update({DETECTION[k]: v for k, v in metrics.detection_rates(**counts).items()})
        cols[Col.n_flagged] = len(flagged)
    if scores is not None:
        scores = torch.as_tensor(scores).detach().cpu().flatten()
        if scores.shape != mask.shape or not torch.isfinite(scores.double()).all():
            raise checks.PluginError(
                f"{who}: scores must hold one finite value per training sample "
                f"({len(mask)}), got shape {tuple(scores.shape)}"
            )
        cols[Col.det_auroc] = metrics.auroc(scores, mask)
    return cols
