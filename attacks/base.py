"""The attack protocol: what an attack is (:class:`Attack`), what it may use to prepare itself
(:class:`AttackContext`, with its cached artifacts), its label policies, and the Q8 quantisation
every attack's stamp ends with.

Spec: ``shared/specs/attacks.md`` sections 2.3-2.5. An attack only says how to stamp a batch of
uint8 images; choosing which training samples to poison, relabelling them and building the
poisoned test set happen once, for every attack, in :mod:`bench.trial.poisoning`.
"""

from __future__ import annotations

import hashlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from bench.core import precision, seeding
from bench.core.artifacts import ArtifactCache
from bench.core.params import Configurable
from bench.core.train import TrainConfig, Trainer, TrainHooks
from bench.data import DatasetInfo
from bench.errors import BenchError

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
    #: The dataset's normalisation std per channel: some losses are BackdoorBench's on
    #: normalised images (IAD's mask diversity), while attacks work on [0, 1] pixels.
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)
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
                torch.manual_seed(seeding.artifact_seed(self.seed, kind))
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
    #: False for the no-attack baseline (:mod:`attacks.clean`): no sample is poisoned whatever
    #: the ratio, and the grid runs it once, at ratio 0.
    poisons: ClassVar[bool] = True
    #: Bumped when a code change alters what the attack makes for the same parameters: the cell
    #: is then another trial, and its poisoned sets and backdoored models are rebuilt. An attack
    #: whose own artifact changed also puts :meth:`revision_key` into that ``ctx.artifact`` key
    #: (artifacts such as the clean surrogate are shared between attacks, so it is not implied).
    revision: ClassVar[int] = 1

    def revision_key(self) -> dict[str, int]:
        """The revision as cache keys hold it: absent at 1, so caches from before it existed
        stay valid."""
        return revision_key(self.revision)

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


def revision_key(revision: int) -> dict[str, int]:
    """``{"attack_revision": n}`` past revision 1, else ``{}`` (cache keys from before revisions
    existed stay valid)."""
    return {} if revision == 1 else {"attack_revision": revision}


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Q8 from the spec: clip to [0, 255] then truncate to uint8 (BackdoorBench's rule)."""
    return x.clamp(0, 255).to(torch.uint8)
