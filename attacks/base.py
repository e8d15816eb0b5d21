"""The attack protocol and the poisoning steps every attack shares.

Spec: ``shared/specs/attacks.md`` sections 2.3-2.5. An attack only says how to stamp a batch of
uint8 images; choosing which training samples to poison, relabelling them and building the
poisoned test set happen here, once, for every attack.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch

from bench.errors import BenchError
from bench.params import Configurable

POISON_LABEL = "poison-label"
CLEAN_LABEL = "clean-label"


@dataclass(frozen=True)
class AttackContext:
    """What an attack may use to prepare itself: the clean training split and the trial's seed."""

    images: torch.Tensor  # uint8 NCHW, clean
    labels: torch.Tensor
    num_classes: int
    target: int
    device: torch.device
    seed: int


class Attack(Configurable, ABC):
    """A data-poisoning backdoor attack.

    Subclasses set ``name`` and ``label_policy``, declare ``Params`` and implement :meth:`apply`,
    a vectorised stamp of a uint8 NCHW batch that returns a uint8 batch of the same shape.
    """

    kind: ClassVar[str] = "attack"
    label_policy: ClassVar[str] = POISON_LABEL
    #: Training-controlled attacks (WaNet, IAD, BPP) change batches inside the training loop.
    controls_training: ClassVar[bool] = False

    def fit(self, ctx: AttackContext) -> None:
        """Prepare state from clean data (a trigger, a generator, a surrogate). Optional."""

    @abstractmethod
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the training-time trigger on a uint8 NCHW batch."""

    def apply_test(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the test-time trigger (the training trigger unless the attack says otherwise)."""
        return self.apply(images)


@dataclass(frozen=True)
class PoisonedTrainSet:
    """The poisoned training split. ``poison_mask`` is ground truth, never shown to defenses."""

    images: torch.Tensor
    labels: torch.Tensor
    poison_mask: torch.Tensor


@dataclass(frozen=True)
class PoisonedTestSet:
    """Every non-target test image, triggered; ``true_labels`` kept for robust accuracy."""

    images: torch.Tensor
    true_labels: torch.Tensor


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Q8 from the spec: clip to [0, 255] then truncate to uint8 (BackdoorBench's rule)."""
    return x.clamp(0, 255).to(torch.uint8)


def validate_ratio(ratio: float) -> None:
    if not 0.0 < ratio < 1.0:
        raise BenchError(f"poison ratio must be in (0, 1), got {ratio}")


def select_poison_indices(
    labels: torch.Tensor,
    ratio: float,
    target: int,
    *,
    label_policy: str,
    seed: int,
    exclude_target: bool = True,
) -> torch.Tensor:
    """round(ratio * N) training indices to poison, drawn uniformly without replacement.

    Poison-label attacks draw from the non-target classes (``exclude_target=False`` gives
    BackdoorBench's draw from all classes); clean-label attacks draw from the target class.
    """
    validate_ratio(ratio)
    n_total = len(labels)
    count = round(ratio * n_total)
    if label_policy == CLEAN_LABEL:
        pool = torch.nonzero(labels == target).flatten()
    elif exclude_target:
        pool = torch.nonzero(labels != target).flatten()
    else:
        pool = torch.arange(n_total)
    if count < 1:
        raise BenchError(
            f"ratio {ratio} of {n_total} training images poisons no sample; use a larger ratio"
        )
    if count > len(pool):
        what = "target-class" if label_policy == CLEAN_LABEL else "eligible"
        raise BenchError(
            f"ratio {ratio} needs {count} {what} images but only {len(pool)} exist; "
            f"the maximum possible ratio here is {len(pool) / n_total:.4f}"
        )
    gen = torch.Generator().manual_seed(seed)
    chosen = pool[torch.randperm(len(pool), generator=gen)[:count]]
    return chosen.sort().values


def map_batches(
    fn: Callable[[torch.Tensor], torch.Tensor],
    images: torch.Tensor,
    device: torch.device,
    batch_size: int = 4096,
) -> torch.Tensor:
    """Apply a batched image function on ``device`` in chunks; returns a CPU tensor."""
    out = [
        fn(images[i : i + batch_size].to(device)).cpu() for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out) if out else images.clone()


def poison_train_set(
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor,
    ratio: float,
    target: int,
    *,
    seed: int,
    device: torch.device,
    exclude_target: bool = True,
) -> PoisonedTrainSet:
    """Stamp the chosen training images and relabel them per the attack's label policy."""
    idx = select_poison_indices(
        labels,
        ratio,
        target,
        label_policy=attack.label_policy,
        seed=seed,
        exclude_target=exclude_target,
    )
    poisoned_images = images.clone()
    poisoned_images[idx] = map_batches(attack.apply, images[idx], device)
    poisoned_labels = labels.clone()
    if attack.label_policy == POISON_LABEL:
        poisoned_labels[idx] = target
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[idx] = True
    return PoisonedTrainSet(poisoned_images, poisoned_labels, mask)


def poison_test_set(
    attack: Attack, images: torch.Tensor, labels: torch.Tensor, target: int, device: torch.device
) -> PoisonedTestSet:
    """All non-target test images with the test-time trigger, their true labels kept."""
    keep = labels != target
    return PoisonedTestSet(map_batches(attack.apply_test, images[keep], device), labels[keep])
