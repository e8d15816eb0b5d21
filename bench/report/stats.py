"""Summary statistics of trial rows: the defense effectiveness rating and seed confidence
intervals (plain floats, so the reporting layer needs no tensor library)."""

from __future__ import annotations

import math


def defense_effectiveness_rating(
    ca_none: float, asr_none: float, ca_def: float, asr_def: float
) -> float:
    """DER (FT-SAM Eq. 7, BackdoorBench's corrected form), in [0, 1]; 0.5 means no change.

    DER = (max(0, dASR) - max(0, dCA) + 1) / 2 with dASR = ASR_none - ASR_def and
    dCA = CA_none - CA_def: lowering ASR raises it, losing clean accuracy lowers it, and gains in
    CA or rises in ASR are not rewarded or punished.
    """
    return (max(0.0, asr_none - asr_def) - max(0.0, ca_none - ca_def) + 1.0) / 2.0


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
