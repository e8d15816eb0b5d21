"""Every seed a trial draws from, derived in one place (harness, attacks and defenses alike).

Two derivations, both here and nowhere else:

- **Named streams** (:func:`stream_seed`): a hash of the trial's seed and the stream's name, so
  streams of different names are independent and adding one changes no other. Defenses draw
  theirs through ``ctx.generator(name)``; new harness and attack streams should be named.
- **Released offsets** (:data:`OFFSETS`, :func:`offset_seed`, :func:`artifact_seed`): the fixed
  offsets the harness and the attacks were released with, each under a name. Moving one to a
  named stream changes that stream's numbers, so every committed row it feeds would have to be
  rerun (and the attack's ``revision`` bumped); they stay until a record is rerun anyway.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import torch

#: Released offsets: stream name -> what is added to the trial's seed.
OFFSETS: dict[str, int] = {
    # The harness (bench.trial).
    "poison_draw": 0,  # which training samples are poisoned
    "after_cell": 1,  # the global RNG once the cell is ready (and the undefended model's fit)
    "clean_subset": 7919,  # the clean images a defense that needs them holds
    "cross_draw": 104729,  # which samples get a cross (noise-mode) trigger
    "cross_train": 15485863,  # the cross triggers of the training set
    "cross_test": 32452843,  # the cross triggers of the test set
    # The attacks (attacks/).
    "lf_fit_split": 1013,  # LF: which images fit the low-frequency trigger
    "iad_generator": 3302,  # IAD: its trigger and mask generators' training
    "ssba_encoder": 4410,  # SSBA: its encoder's training
}

#: The multiplier of :func:`artifact_seed` (a prime, so (seed, kind) pairs do not collide).
ARTIFACT_SEED_PRIME = 1_000_003


def stream_seed(seed: int, name: str) -> int:
    """The seed of the named stream of trial ``seed``: a hash of both, so streams of different
    names (or trials) are independent and adding a stream changes no other."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1  # 63 bits: any torch generator takes it


def offset_seed(seed: int, stream: str) -> int:
    """The seed of a released stream (:data:`OFFSETS`) of trial ``seed``."""
    return seed + OFFSETS[stream]


def generator(seed: int, stream: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded for a released stream of trial ``seed``."""
    return torch.Generator(device=device).manual_seed(offset_seed(seed, stream))


def artifact_seed(seed: int, kind: str) -> int:
    """The global RNG's seed while an attack builds its artifact ``kind`` (weights and sampling
    inside the build), so a cache hit and a fresh build give the trial identical numbers."""
    return seed * ARTIFACT_SEED_PRIME + zlib.crc32(kind.encode())


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed torch; on CPU also insist on deterministic kernels (same seed, same numbers)."""
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Run a block under torch's CPU RNG seeded with ``seed``, then restore the caller's state.

    For work cached per cell: its result does not depend on which trial built it, and what runs
    after it sees the same RNG state whether the work was built or loaded."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
