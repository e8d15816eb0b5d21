"""Poisoning, in one place: which training samples to poison, the poisoned training set (with
cross samples), the triggered test set, and a cell's sets built once and cached as an artifact.

Spec: ``shared/specs/attacks.md`` sections 2.3-2.5. An attack only says how to stamp a batch of
uint8 images (:class:`attacks.base.Attack`); choosing the samples, relabelling them and building
the test sets happen here, the same way for every attack.

Every defense of a cell (dataset, attack, ratio, seed, ...) sees the same poisoned data, so the
attack's image transforms (LC's PGD, IAD's generator passes, SSBA's encoder, ...) run once per
cell instead of once per trial. A cache hit returns exactly the tensors a rebuild would produce:
poisoning is seeded, and the caller re-seeds afterwards so nothing downstream depends on whether
the sets were built or loaded.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

from attacks.base import CLEAN_LABEL, POISON_LABEL, Attack, revision_key
from bench.core import precision, seeding
from bench.core.artifacts import ArtifactCache
from bench.data import Dataset
from bench.errors import BenchError
from bench.schema import Col
from bench.spec import TrialSpec

#: The artifact kind (the name changed when the masks left it: older files are never read).
KIND = "poisoned_data"


@dataclass(frozen=True)
class PoisonedTrainSet:
    """The poisoned training split (Mode B, the static set). The masks are ground truth, never
    shown to defenses: ``poison_mask`` marks backdoor samples (indicator 1), ``cross_mask`` the
    cross/noise/negative samples that keep their labels (indicator 2)."""

    images: torch.Tensor
    labels: torch.Tensor
    poison_mask: torch.Tensor
    cross_mask: torch.Tensor | None = None

    @property
    def indicator(self) -> torch.Tensor:
        """0 clean, 1 backdoor, 2 cross (the spec's 3-valued indicator)."""
        out = self.poison_mask.to(torch.int8)
        if self.cross_mask is not None:
            out[self.cross_mask] = 2
        return out


@dataclass(frozen=True)
class PoisonedData:
    """The poisoned training split as a defense may see it: images and labels, no ground truth.
    This is what the cell's artifact caches; the masks are re-derived by the harness
    (:func:`ground_truth`) before and after the defense, never stored beside it."""

    images: torch.Tensor
    labels: torch.Tensor


@dataclass(frozen=True)
class GroundTruth:
    """Which training samples an attack poisoned (1) or cross-transformed (2)."""

    poison_mask: torch.Tensor
    cross_mask: torch.Tensor | None = None


@dataclass(frozen=True)
class PoisonedTestSet:
    """Every non-target test image, triggered; ``true_labels`` kept for robust accuracy. Attacks
    with cross samples add every test image with the cross transform and its true label."""

    images: torch.Tensor
    true_labels: torch.Tensor
    cross_images: torch.Tensor | None = None
    cross_labels: torch.Tensor | None = None


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
    gen = seeding.generator(seed, "poison_draw")
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
    """Stamp the chosen training images and relabel them per the attack's label policy; attacks
    with cross samples also perturb a disjoint random draw of other images, labels kept."""
    truth = ground_truth(attack, labels, ratio, target, seed=seed, exclude_target=exclude_target)
    idx = torch.nonzero(truth.poison_mask).flatten()
    poisoned_images = images.clone()
    poisoned_images[idx] = map_batches(attack.apply, images[idx], device)
    poisoned_labels = labels.clone()
    if attack.label_policy == POISON_LABEL:
        poisoned_labels[idx] = target
    if truth.cross_mask is not None:
        cross = torch.nonzero(truth.cross_mask).flatten()
        cross_gen = seeding.generator(seed, "cross_train", device)
        poisoned_images[cross] = map_batches(
            lambda x: attack.apply_cross(x, cross_gen), images[cross], device
        )
    return PoisonedTrainSet(poisoned_images, poisoned_labels, truth.poison_mask, truth.cross_mask)


def ground_truth(
    attack: Attack,
    labels: torch.Tensor,
    ratio: float,
    target: int,
    *,
    seed: int,
    exclude_target: bool = True,
) -> GroundTruth:
    """The samples :func:`poison_train_set` poisons and cross-transforms, from the seeded draws
    alone (no image is touched): cheap, so the harness derives it when it scores a defense
    instead of keeping it where a defense could load it. An attack that poisons nothing (the
    clean baseline) has an empty mask."""
    if not attack.poisons:
        return GroundTruth(torch.zeros(len(labels), dtype=torch.bool))
    idx = select_poison_indices(
        labels,
        ratio,
        target,
        label_policy=attack.label_policy,
        seed=seed,
        exclude_target=exclude_target,
    )
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[idx] = True
    n_cross = attack.cross_count(len(idx), len(labels))
    if n_cross <= 0:
        return GroundTruth(mask)
    gen = seeding.generator(seed, "cross_draw")  # independent of the poison draw
    pool = torch.nonzero(~mask).flatten()
    if n_cross > len(pool):
        raise BenchError(
            f"{attack.name}: {n_cross} cross samples do not fit beside {len(idx)} poisoned "
            f"ones in {len(labels)} images; lower the ratio or the cross ratio"
        )
    cross = pool[torch.randperm(len(pool), generator=gen)[:n_cross]].sort().values
    cross_mask = torch.zeros(len(labels), dtype=torch.bool)
    cross_mask[cross] = True
    return GroundTruth(mask, cross_mask)


def poison_test_set(
    attack: Attack,
    images: torch.Tensor,
    labels: torch.Tensor,
    target: int,
    device: torch.device,
    seed: int = 0,
) -> PoisonedTestSet:
    """All non-target test images with the test-time trigger, their true labels kept; plus the
    cross test set (every test image, true labels) for attacks that have cross samples."""
    keep = labels != target
    triggered = map_batches(attack.apply_test, images[keep], device)
    if not attack.has_cross:
        return PoisonedTestSet(triggered, labels[keep])
    gen = seeding.generator(seed, "cross_test", device)
    cross = map_batches(lambda x: attack.apply_cross(x, gen), images, device)
    return PoisonedTestSet(triggered, labels[keep], cross, labels.clone())


def cell_spec(spec: TrialSpec, data: Dataset) -> dict[str, Any]:
    """Everything a cell's poisoned data and undefended model depend on (the artifact key; its
    fields are named like the table's columns, and a renamed column only rebuilds artifacts)."""
    return {
        Col.dataset: spec.dataset,
        Col.data_hash: data.data_hash,  # the decoded data's content, not where it came from
        Col.data: dict(spec.data),
        Col.attack: spec.attack,
        Col.attack_params: dict(spec.attack_params),
        **revision_key(spec.attack_revision),
        Col.ratio: spec.ratio,
        Col.target: spec.target,
        Col.exclude_target_from_poison: spec.exclude_target_from_poison,
        Col.model: spec.model,  # surrogate-based attacks depend on the model and its training
        Col.train: dict(spec.train),
        Col.seed: spec.seed,
        Col.precision_used: precision.in_force() or "default",
    }


@dataclass(frozen=True)
class PoisonedSets:
    train: PoisonedData
    test: PoisonedTestSet
    cache: str  # "hit" or "built"


def _as_dict(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def poisoned_sets(
    cell_key: dict[str, Any],
    spec: TrialSpec,
    data: Dataset,
    attack: Attack,
    device: torch.device,
    attack_version: str = "",
) -> PoisonedSets:
    """The cell's poisoned training set and triggered test set (``attack`` already fitted),
    cached under the cell's key (:func:`cell_spec`) and the attack's package version."""

    def build() -> dict[str, Any]:
        train = poison_train_set(
            attack,
            data.train_x,
            data.train_y,
            spec.ratio,
            spec.target,
            seed=spec.seed,
            device=device,
            exclude_target=spec.exclude_target_from_poison,
        )
        test = poison_test_set(attack, data.test_x, data.test_y, spec.target, device, spec.seed)
        # No masks: a defense that loads this artifact learns nothing it was not given.
        seen = {"images": train.images, "labels": train.labels}
        return {"train": seen, "test": _as_dict(test)}

    key = {**cell_key, Col.attack_version: attack_version}
    fetched = ArtifactCache().get_or_build(KIND, key, build)
    value = fetched.value
    return PoisonedSets(
        PoisonedData(**value["train"]),
        PoisonedTestSet(**value["test"]),
        "hit" if fetched.hit else "built",
    )
