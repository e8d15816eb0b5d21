"""Content-addressed artifact cache: backdoored models and attack state (surrogates, triggers,
generators, encoders).

An artifact is keyed by a hash of everything that determines it. It is built once: the first
process to want it takes a file lock (``filelock``) and builds it while the others wait, then
everyone loads the same file. Files are published atomically (temp file + fsync + rename), carry a
sha256 sidecar that is checked before loading, and are read with ``torch.load(weights_only=True)``;
a truncated or corrupted artifact is deleted and rebuilt, never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock

from bench.core import lockwait, settings

log = logging.getLogger("bench.artifacts")
FORMAT = 1


def artifact_key(kind: str, spec: Mapping[str, Any]) -> str:
    canonical = json.dumps({"format": FORMAT, "kind": kind, **spec}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class Fetched:
    value: Any
    hit: bool  # True: loaded from the cache; False: built by this call


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class ArtifactCache:
    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else settings.artifacts_dir()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.pt"

    def get_or_build(self, kind: str, spec: Mapping[str, Any], build: Callable[[], Any]) -> Fetched:
        """The artifact for ``spec``, built by ``build()`` if no valid copy exists yet."""
        path = self.path(kind, artifact_key(kind, spec))
        path.parent.mkdir(parents=True, exist_ok=True)
        with lockwait.hold(FileLock(str(path) + ".lock", timeout=-1)):
            value = self._load(path)
            if value is not None:
                return Fetched(value, hit=True)
            log.info("building artifact %s/%s (not in the cache)", kind, path.stem)
            value = build()
            self._save(path, value, spec)
            return Fetched(value, hit=False)

    def lookup(self, kind: str, spec: Mapping[str, Any]) -> Fetched | None:
        """The artifact for ``spec`` if a valid copy exists; never builds."""
        path = self.path(kind, artifact_key(kind, spec))
        if not path.exists():
            return None
        with lockwait.hold(FileLock(str(path) + ".lock", timeout=-1)):
            value = self._load(path)
        return None if value is None else Fetched(value, hit=True)

    def _load(self, path: Path) -> Any | None:
        digest = path.with_suffix(".sha256")
        if not path.exists() or not digest.exists():
            return None
        try:
            if _sha256(path) != digest.read_text().strip():
                raise ValueError("checksum mismatch")
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated, corrupted or tampered with: rebuild
            log.warning("artifact %s is unusable (%s); rebuilding it", path, exc)
            for p in (path, digest):
                p.unlink(missing_ok=True)
            return None

    def _save(self, path: Path, value: Any, spec: Mapping[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(value, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            digest = _sha256(Path(tmp))
            path.with_suffix(".json").write_text(json.dumps(spec, sort_keys=True, indent=1))
            # Publish the checksum first: a reader that sees the new .pt also sees its digest.
            path.with_suffix(".sha256").write_text(digest)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def entries(self) -> list[tuple[str, Path, int]]:
        """(kind, path, bytes) for every stored artifact."""
        if not self.root.exists():
            return []
        return sorted(
            (p.parent.name, p, p.stat().st_size) for p in self.root.glob("*/*.pt") if p.is_file()
        )

    def clear(self) -> int:
        """Delete every artifact with its sidecars, lock files and leftovers of interrupted
        writes; the number of artifacts removed."""
        removed = len(self.entries())
        for kind_dir in self.root.iterdir() if self.root.is_dir() else ():
            if not kind_dir.is_dir():
                continue
            for path in kind_dir.iterdir():
                if path.is_file() and path.name.endswith(_FILE_SUFFIXES):
                    path.unlink(missing_ok=True)
            if not any(kind_dir.iterdir()):
                kind_dir.rmdir()
        return removed


#: Files the cache writes next to an artifact ``<key>.pt``: sidecars, locks, temp files.
_FILE_SUFFIXES = (".pt", ".sha256", ".json", ".lock", ".tmp")
