"""No attack: the training set as it is, so each defense also runs on a model without a backdoor.

What a defense costs when there is nothing to remove (clean accuracy lost for nothing, clean
samples flagged as poison) is the first thing a practitioner asks of it. This "attack" poisons
no sample (:attr:`Attack.poisons` is False), so the grid runs it once per seed at ratio 0, and
the leaderboard shows its cells as the clean-model column beside each ranking instead of as an
attack: against it, ASR only measures how often clean non-target images land in the target
class.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from attacks.base import POISON_LABEL, Attack


class Clean(Attack):
    name = "clean"
    label_policy = POISON_LABEL
    poisons = False

    @dataclass(frozen=True)
    class Params:
        pass

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        return images.clone()
