"""When a defense counts as working: the one rule the ranking, the decision view and
``bench reproduce``'s CA-aware verdict share.

A defense *works* against an attack when the backdoor is gone (ASR below :data:`SUCCESS_ASR`)
**and** the model is still the model (clean accuracy at most the bound below the undefended
model's of the same seed). A defense that lowers ASR by wrecking the classifier has not removed
a backdoor; it has removed a model. The ranking therefore scores each attack by the
*CA-bounded ASR*: the defended ASR where the CA loss is within the bound, else the undefended
model's ASR (the defense is counted as no defense there).
"""

from __future__ import annotations

import math

#: The default bound on the CA lost against `none` (a fraction: 0.05 is 5 points).
DEFAULT_MAX_DROP = 0.05
#: A defense removes the backdoor when the ASR is below this.
SUCCESS_ASR = 0.20
#: ``bench reproduce``'s CA-aware verdict: the bound on either side (ours and published), wider
#: than the ranking's because the published runs' clean accuracy is itself a single seed.
REPRODUCE_MAX_DROP = 0.10
#: Slack on the bound, so a loss of exactly the bound is within it despite float error.
TOLERANCE = 1e-9


def within(d_ca: float | None, max_drop: float = DEFAULT_MAX_DROP) -> bool:
    """Whether a CA change against `none` (negative: lost) is within the bound; unknown is not."""
    if d_ca is None or math.isnan(d_ca):
        return False
    return -d_ca <= max_drop + TOLERANCE


def bounded_asr(
    asr: float, d_ca: float, base_asr: float, max_drop: float = DEFAULT_MAX_DROP
) -> float:
    """The ASR the ranking counts: the defended one within the bound, else the undefended
    model's (never lower than the defended one)."""
    if within(d_ca, max_drop):
        return asr
    return max(asr, base_asr) if not math.isnan(base_asr) else math.nan


def works(asr: float, d_ca: float | None, max_drop: float = DEFAULT_MAX_DROP) -> bool:
    """The CA-aware verdict: the backdoor is removed and the clean accuracy kept."""
    return asr < SUCCESS_ASR and within(d_ca, max_drop)
