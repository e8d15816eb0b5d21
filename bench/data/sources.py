"""Where a dataset's images come from, found in a documented order: ``$BENCH_DATA_DIR``, the
default data directories, then torchvision's official download (skipped when
``BENCH_OFFLINE=1``); ``[data] source = "official"`` insists on CIFAR-10's official pixels."""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench.core import settings
from bench.data.datasets import SPLITS, DatasetInfo
from bench.errors import BenchError

log = logging.getLogger("bench.data")


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


#: ``[data] source`` values: "any" takes the first source found; "official" insists on the
#: official release's pixels where another export exists (CIFAR-10's JPEG copy).
SOURCE_MODES = ("any", "official")


#: Published sha256 of the offline archives (their README), named when one is damaged.
ARCHIVE_SHA256 = {
    "cifar10-jpeg.tar.gz": "e6814e362db456169d56b0d6b883c05fcf8f264cc434194321684c8b70aa74b9",
    "gtsrb32-png.tar.gz": "b0609650d56a8bad66f6a59a9ea462d592f2ae5bc26921cae3b9d42c3195c641",
}


CIFAR_BATCHES = "cifar-10-batches-py"  # torchvision's copy of the official CIFAR-10 release


FALLBACK_NOTE = "(fallback: official pixels unavailable)"


#: Marks a source whose archive is not the published one (completed with its sha256).
MODIFIED_NOTE = "(differs from the published release:"


@dataclass(frozen=True)
class Source:
    """Where a dataset's images come from; ``label`` goes into every result row."""

    kind: str  # "archive" | "folder" | "cifar_batches" | "torchvision"
    path: Path
    label: str

    def content_hash(self) -> str:
        """A sha256 of what the images are decoded from (the cache key): the archive's bytes,
        or a tree's sorted file list and contents. A torchvision download is the official
        release, which torchvision checks against its published md5 sums."""
        if self.kind == "archive":
            return _file_sha256(self.path)
        if self.kind in ("folder", "cifar_batches"):
            return _tree_sha256(self.path)
        return hashlib.sha256(f"torchvision-official:{self.path.name}".encode()).hexdigest()


_SHA256_MEMO: dict[tuple, str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, remembered in this process while its inode, size and times (ctime
    included, which no tool can set back) are unchanged."""
    st = path.stat()
    key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if key not in _SHA256_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
        _SHA256_MEMO[key] = h.hexdigest()
    return _SHA256_MEMO[key]


def _tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f"{path.relative_to(root).as_posix()}\0{path.stat().st_size}\0".encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def _format_note(info: DatasetInfo, archive_or_dir: str) -> str:
    lower = archive_or_dir.lower()
    if "jpeg" in lower or "jpg" in lower:
        return "JPEG export, not the official pixels"
    if "png" in lower or info.name == "gtsrb":
        return "lossless 32x32 PNG"
    return "image folder"


def _candidates_in(directory: Path, info: DatasetInfo) -> Iterator[Source]:
    if directory.name in info.folder_names and (directory / "train").is_dir():
        yield Source("folder", directory, f"folder:{directory.name} ({_format_note(info, '')})")
    for folder in info.folder_names:
        root = directory / folder
        if (root / "train").is_dir() and (root / "test").is_dir():
            yield Source("folder", root, f"folder:{folder} ({_format_note(info, folder)})")
    for archive in info.archive_names:
        path = directory / archive
        if path.is_file():
            yield Source("archive", path, f"archive:{archive} ({_format_note(info, archive)})")


def search_dirs() -> list[tuple[str, Path]]:
    dirs: list[tuple[str, Path]] = []
    env = os.environ.get(settings.DATA_DIR_ENV)
    if env:
        dirs.append((f"${settings.DATA_DIR_ENV}", Path(env).expanduser()))
    dirs += [("default", d) for d in settings.default_data_dirs()]
    return dirs


def _downloads_dir() -> Path:
    return settings.cache_dir() / "downloads"


def find_source(info: DatasetInfo, mode: str = "any") -> Source:
    """The source to load ``info`` from, or a clear error saying what to set.

    ``mode="any"``: the first source in the documented order. ``mode="official"``: the official
    pixels where another export exists (CIFAR-10: torchvision's ``cifar-10-batches-py`` in a
    data directory or the cache, or its download when online); if they are unavailable, the
    first source with ``(fallback: official pixels unavailable)`` in its label, and a warning.
    """
    if mode not in SOURCE_MODES:
        raise BenchError(f"[data] source must be one of {list(SOURCE_MODES)}, got {mode!r}")
    env = os.environ.get(settings.DATA_DIR_ENV)
    if env and not Path(env).expanduser().exists():
        raise BenchError(
            f"{settings.DATA_DIR_ENV}={env} does not exist. Point it at a directory holding "
            f"{' or '.join(info.archive_names)} or an ImageFolder tree "
            f"<dir>/{info.folder_names[0]}/{{train,test}}/<class>/<image>."
        )
    if mode == "official" and info.name == "cifar10":
        official = _official_cifar10()
        if official is not None:
            return official
        source = _first_source(info, allow_download=False)
        log.warning(
            "official CIFAR-10 pixels are unavailable (no %s in the data directories or %s%s); "
            "using %s instead, marked %r in every row",
            CIFAR_BATCHES,
            _downloads_dir(),
            "" if settings.offline() else ", and the download failed",
            source.label,
            FALLBACK_NOTE,
        )
        return replace(source, label=f"{source.label} {FALLBACK_NOTE}")
    return _first_source(info, allow_download=True)


def _first_source(info: DatasetInfo, allow_download: bool) -> Source:
    searched = []
    for origin, directory in search_dirs():
        searched.append(f"{directory} ({origin})")
        if directory.is_file() and directory.name in info.archive_names:
            label = f"archive:{directory.name} ({_format_note(info, directory.name)})"
            return Source("archive", directory, label)
        if directory.is_dir():
            for source in _candidates_in(directory, info):
                return source
    if allow_download and not settings.offline():
        return Source("torchvision", _downloads_dir() / info.name, "torchvision official")
    raise BenchError(
        f"no data found for dataset {info.name!r}. Searched: {'; '.join(searched)}; "
        f"downloads are disabled ({settings.OFFLINE_ENV}=1). Set {settings.DATA_DIR_ENV} to a "
        f"directory holding one of: the archive {' or '.join(info.archive_names)}; an ImageFolder "
        f"tree <dir>/{info.folder_names[0]}/{{train,test}}/<class>/<image>.{{jpg,png}}. "
        f"Or unset {settings.OFFLINE_ENV} to let torchvision download the official release."
    )


def _official_cifar10() -> Source | None:
    """A local copy of the official CIFAR-10 release, else torchvision's download (online)."""
    candidates = []
    for _, directory in search_dirs():
        candidates += [directory, directory / CIFAR_BATCHES, directory / "cifar10" / CIFAR_BATCHES]
    candidates.append(_downloads_dir() / CIFAR_BATCHES)
    for path in candidates:
        if path.name == CIFAR_BATCHES and path.is_dir():
            return Source("cifar_batches", path, f"official:{CIFAR_BATCHES} (official pixels)")
    if settings.offline():
        return None
    try:
        _cifar10_batches(_downloads_dir(), download=True)
    except BenchError as exc:
        log.warning("torchvision download of CIFAR-10 failed: %s", exc)
        return None
    path = _downloads_dir() / CIFAR_BATCHES
    return Source("cifar_batches", path, f"official:{CIFAR_BATCHES} (official pixels)")


def _cifar10_batches(root: Path, download: bool) -> dict[str, np.ndarray]:
    """CIFAR-10 from torchvision's copy of the official release under ``root``; torchvision
    checks every file against the release's md5 before reading it."""
    import torchvision

    arrays = {}
    try:
        for split in SPLITS:
            ds = torchvision.datasets.CIFAR10(root, train=split == "train", download=download)
            arrays[f"{split}_x"] = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
            arrays[f"{split}_y"] = np.asarray(ds.targets, dtype=np.int64)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        where = Path(root) / CIFAR_BATCHES
        raise BenchError(
            f"{where} is not a complete copy of the official CIFAR-10 release ({exc}); "
            "remove it, or re-download it"
        ) from exc
    return arrays
