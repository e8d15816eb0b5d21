"""The defense protocol's former home, kept so plugins written against it still import: the
names live in :mod:`bench.api`, the one public API for defense authors (docs/plugins.md).

A defense never sees the poison mask. Training-time defenses see the static poisoned set (Mode B
in the attack spec; for training-controlled attacks, the backdoor and cross samples the attack
exports). The backdoored model (``ctx.backdoored_model()``) is the attacker's own training run
(Mode A): for WaNet, IAD and BPP that is the per-batch poisoning loop.
"""

from bench.api import NEEDS, Defense, DefenseContext, DefenseOutput, LabelledImages

__all__ = ["NEEDS", "Defense", "DefenseContext", "DefenseOutput", "LabelledImages"]
