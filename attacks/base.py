"""The attack protocol and the poisoning steps every attack shares.

Spec: ``shared/specs/attacks.md`` sections 2.3-2.5. An attack only says how to stamp a batch of
uint8 images; choosing which training samples to poison, relabelling them and building the
poisoned test set happen here, once, for every attack.
"""

from __future__ import annotations

import hashlib
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench import precision
from bench.artifacts import ArtifactCache
from bench.data import DatasetInfo
from bench.errors import BenchError
from bench.params import Configurable
from bench.train import TrainConfig, Trainer, TrainHooks

POISON_LABEL = "poison-label"
CLEAN_LABEL = "clean-label"


class ArtifactMissing(BenchError):
    """An attack artifact is not in the cache and the caller asked not to build it."""


def tensor_fingerprint(*tensors: torch.Tensor) -> str:
    """A content hash of tensors (the training split an artifact was built from)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


@dataclass
class AttackContext:
    """What an attack may use to prepare itself: the clean training split, the trial's seed,
    and (for attacks that train something: a surrogate, a generator, an encoder) the victim's
    model factory, the preset's training budget and the shared trainer."""

    images: torch.Tensor  # uint8 NCHW, clean
    labels: torch.Tensor
    num_classes: int
    target: int
    device: torch.device
    seed: int
    ratio: float = 0.1
    make_model: Callable[[], nn.Module] | None = None
    model_name: str = ""
    train_config: TrainConfig = field(default_factory=TrainConfig)
    allows_flip: bool = True
    #: False: only load artifacts from the cache (the leaderboard's gallery never trains).
    build_artifacts: bool = True
    log: Callable[[str], None] = lambda _msg: None
    #: (kind, "hit" | "built", seconds) for every artifact the attack fetched; for result rows.
    artifact_log: list[tuple[str, str, float]] = field(default_factory=list)
    _fingerprint: str = ""

    @property
    def trainer(self) -> Trainer:
        return Trainer(self.device, progress=self.log)

    def data_fingerprint(self) -> str:
        if not self._fingerprint:
            self._fingerprint = tensor_fingerprint(self.images, self.labels)
        return self._fingerprint

    def new_model(self) -> nn.Module:
        if self.make_model is None:
            raise BenchError("this attack needs a model factory in its AttackContext")
        return self.make_model()

    def artifact(self, kind: str, params: Mapping[str, Any], build: Callable[[], Any]) -> Any:
        """The attack artifact ``kind`` for ``params`` on this training split, built once.

        The key holds the data's content hash, the seed, the model and the training budget, so
        any change to what the artifact depends on builds a new one."""
        spec = {
            "data": self.data_fingerprint(),
            "seed": self.seed,
            "target": self.target,
            "model": self.model_name,
            "train": dict(vars(self.train_config)),
            "precision": precision.current(self.device),
            **params,
        }
        cache = ArtifactCache()
        start = time.perf_counter()

        def seeded_build() -> Any:
            # Weight init and sampling inside the build draw from a stream seeded by (seed, kind)
            # and leave the caller's RNG untouched, so a cache hit and a fresh build give the
            # trial identical numbers.
            cuda = [self.device] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed * 1_000_003 + zlib.crc32(kind.encode()))
                return build()

        if not self.build_artifacts:
            fetched = cache.lookup(f"attack_{kind}", spec)
            if fetched is None:
                raise ArtifactMissing(f"attack artifact {kind!r} is not built yet")
        else:
            fetched = cache.get_or_build(f"attack_{kind}", spec, seeded_build)
        seconds = time.perf_counter() - start
        status = "hit" if fetched.hit else "built"
        self.artifact_log.append((kind, status, seconds))
        self.log(f"attack artifact {kind}: {status} ({seconds:.1f}s)")
        return fetched.value


class Attack(Configurable, ABC):
    """A data-poisoning backdoor attack.

    Subclasses set ``name`` and ``label_policy``, declare ``Params`` and implement :meth:`apply`,
    a vectorised stamp of a uint8 NCHW batch that returns a uint8 batch of the same shape.
    """

    kind: ClassVar[str] = "attack"
    label_policy: ClassVar[str] = POISON_LABEL
    #: Training-controlled attacks (WaNet, IAD, BPP) change batches inside the training loop.
    controls_training: ClassVar[bool] = False
    #: Attacks that add cross/noise/negative samples (labels kept) beside the backdoor samples.
    has_cross: ClassVar[bool] = False

    def fit(self, ctx: AttackContext) -> None:
        """Prepare state from clean data (a trigger, a generator, a surrogate). Optional."""

    @abstractmethod
    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the training-time trigger on a uint8 NCHW batch."""

    def apply_test(self, images: torch.Tensor) -> torch.Tensor:
        """Stamp the test-time trigger (the training trigger unless the attack says otherwise)."""
        return self.apply(images)

    # Cross / noise / negative samples (WaNet, IAD, BPP): perturbed without the backdoor, label
    # kept, so the model learns the exact trigger rather than "any such perturbation".

    def cross_count(self, n_poison: float, n_total: int) -> int:
        """How many cross samples go with ``n_poison`` backdoor samples among ``n_total``."""
        return 0

    def apply_cross(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The cross transform of a uint8 batch (labels are kept)."""
        raise NotImplementedError(f"attack {self.name!r} has no cross samples")

    def training_hooks(self, ratio: float, target: int, info: DatasetInfo) -> TrainHooks | None:
        """Per-batch poisoning for the attacker's own training run (training-controlled attacks).
        ``info`` gives the dataset's facts (whether it may be flipped, its normalisation)."""
        return None

    def victim_config(self, config: TrainConfig) -> TrainConfig:
        """The attacker's recipe for the backdoored model, given the preset's (e.g.
        BackdoorBench trains WaNet, BPP and IAD victims at a constant lr)."""
        return config

    def trained_victim(self) -> dict[str, Any] | None:
        """The backdoored model's state dict (and ``train_seconds``) when fitting the attack
        already trained it (IAD trains its classifier jointly with the generators, and that
        classifier is the attacker's model); None: the harness trains it."""
        return None


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
class PoisonedTestSet:
    """Every non-target test image, triggered; ``true_labels`` kept for robust accuracy. Attacks
    with cross samples add every test image with the cross transform and its true label."""

    images: torch.Tensor
    true_labels: torch.Tensor
    cross_images: torch.Tensor | None = None
    cross_labels: torch.Tensor | None = None


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
    """Stamp the chosen training images and relabel them per the attack's label policy; attacks
    with cross samples also perturb a disjoint random draw of other images, labels kept."""
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
    cross_mask = None
    n_cross = attack.cross_count(len(idx), len(labels))
    if n_cross > 0:
        gen = torch.Generator().manual_seed(seed + 104729)  # independent of the poison draw
        pool = torch.nonzero(~mask).flatten()
        if n_cross > len(pool):
            raise BenchError(
                f"{attack.name}: {n_cross} cross samples do not fit beside {len(idx)} poisoned "
                f"ones in {len(labels)} images; lower the ratio or the cross ratio"
            )
        cross = pool[torch.randperm(len(pool), generator=gen)[:n_cross]].sort().values
        cross_gen = torch.Generator(device=device).manual_seed(seed + 15485863)
        poisoned_images[cross] = map_batches(
            lambda x: attack.apply_cross(x, cross_gen), images[cross], device
        )
        cross_mask = torch.zeros(len(labels), dtype=torch.bool)
        cross_mask[cross] = True
    return PoisonedTrainSet(poisoned_images, poisoned_labels, mask, cross_mask)


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
    gen = torch.Generator(device=device).manual_seed(seed + 32452843)
    cross = map_batches(lambda x: attack.apply_cross(x, gen), images, device)
    return PoisonedTestSet(triggered, labels[keep], cross, labels.clone())
