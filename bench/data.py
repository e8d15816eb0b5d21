"""Dataset registry, data sources and the decoded uint8 tensor cache.

Images are decoded once (JPEG/PNG -> uint8 arrays) and cached as ``.npy`` files, so a second load
is a file read away. Sources are tried in a documented order: ``$BENCH_DATA_DIR``, the default
data directories, then torchvision's official download (skipped when ``BENCH_OFFLINE=1``).

Nothing damaged is ever used: an archive is read completely (every member, the compressed stream
to its end and its CRC) and must hold the release's image counts; the cache is keyed by a content
hash of the source, and each decoded array carries a checksum that is verified on every load (a
mismatch rebuilds it). The checksums combine into the dataset's ``data_hash``, which keys every
artifact built from the data and is part of every trial's id.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.core import settings
from bench.errors import BenchError, unknown_name_error

log = logging.getLogger("bench.data")

CACHE_FORMAT = 2
SPLITS = ("train", "test")
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
class DatasetInfo:
    """Static facts about a dataset that the harness and the trainer need."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    allows_flip: bool
    folder_names: tuple[str, ...]
    archive_names: tuple[str, ...]
    #: Images per split in the release (train, test): an archive holding other counts is damaged.
    split_sizes: tuple[int, int] = (0, 0)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.247, 0.243, 0.261),
        allows_flip=True,
        folder_names=("cifar10", "cifar-10", "CIFAR10"),
        archive_names=("cifar10-jpeg.tar.gz", "cifar10.tar.gz"),
        split_sizes=(50_000, 10_000),
    ),
    # GTSRB is not normalised (BackdoorBench convention) and never flipped: signs are chiral.
    "gtsrb": DatasetInfo(
        name="gtsrb",
        num_classes=43,
        image_size=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        allows_flip=False,
        folder_names=("gtsrb32", "gtsrb", "GTSRB"),
        archive_names=("gtsrb32-png.tar.gz", "gtsrb.tar.gz"),
        split_sizes=(39_209, 12_630),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown_name_error("dataset", name, DATASETS) from None


@dataclass(frozen=True)
class Dataset:
    """A decoded dataset: uint8 images in NCHW layout and int64 labels, plus where it came from
    and a content hash of the full decoded arrays (``data_hash``; a subset keeps its parent's:
    the budget that draws the subset is part of every spec that uses it)."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    data_hash: str = ""

    def subset(self, train_size: int | None, test_size: int | None, seed: int) -> Dataset:
        """A seeded random subset, the same for every trial of a grid (fair comparisons)."""
        gen = torch.Generator().manual_seed(seed)

        def pick(x: torch.Tensor, y: torch.Tensor, n: int | None):
            if not n or n >= len(y):
                return x, y
            idx = torch.randperm(len(y), generator=gen)[:n].sort().values
            return x[idx], y[idx]

        train_x, train_y = pick(self.train_x, self.train_y, train_size)
        test_x, test_y = pick(self.test_x, self.test_y, test_size)
        return replace(self, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)


# --------------------------------------------------------------------------- sources


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


def _iter_image_files(root: Path) -> Iterator[Path]:
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_SUFFIXES):
                yield Path(dirpath) / f


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


# --------------------------------------------------------------------------- decoding


def _decode(data: bytes | Path, size: int) -> np.ndarray:
    with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _assemble(
    items: Iterable[tuple[str, str, str, np.ndarray]], info: DatasetInfo, where: str
) -> dict[str, np.ndarray]:
    """Turn (split, class folder, file name, HWC image) records into sorted NCHW arrays."""
    by_split: dict[str, list[tuple[str, str, np.ndarray]]] = {s: [] for s in SPLITS}
    for split, cls, name, img in items:
        if split in by_split:
            by_split[split].append((cls, name, img))
    classes = sorted({cls for records in by_split.values() for cls, _, _ in records})
    if len(classes) != info.num_classes or not all(by_split.values()):
        raise BenchError(
            f"{where} does not look like {info.name}: expected train/ and test/ with "
            f"{info.num_classes} class folders, found {len(classes)} classes and "
            f"{ {s: len(r) for s, r in by_split.items()} } images per split."
        )
    index = {c: i for i, c in enumerate(classes)}
    arrays = {}
    for split, records in by_split.items():
        records.sort(key=lambda r: (index[r[0]], r[1]))
        arrays[f"{split}_x"] = np.stack([r[2] for r in records]).transpose(0, 3, 1, 2).copy()
        arrays[f"{split}_y"] = np.array([index[r[0]] for r in records], dtype=np.int64)
    return arrays


def _split_parts(rel: str) -> tuple[str, str, str] | None:
    parts = Path(rel).parts
    for i, part in enumerate(parts):
        if part in SPLITS and len(parts) - i == 3:
            return part, parts[i + 1], parts[i + 2]
    return None


def _counts(arrays: dict[str, np.ndarray]) -> tuple[int, int]:
    return len(arrays["train_y"]), len(arrays["test_y"])


def _count_problem(arrays: dict[str, np.ndarray], info: DatasetInfo) -> str | None:
    """What differs from the release's image counts, or None."""
    if not any(info.split_sizes) or _counts(arrays) == info.split_sizes:
        return None
    (n_train, n_test), (want_train, want_test) = _counts(arrays), info.split_sizes
    return (
        f"it holds {n_train:,} train / {n_test:,} test images; {info.name} has "
        f"{want_train:,} / {want_test:,}"
    )


def _damaged(path: Path, what: str) -> BenchError:
    digest = _file_sha256(path)
    published = ARCHIVE_SHA256.get(path.name)
    if published is None:
        check = f"its sha256 is {digest}"
    elif digest == published:
        check = f"its sha256 {digest} is the published one, so the copy is intact"
    else:
        check = f"its sha256 is {digest}, the published one {published}: re-copy it"
    return BenchError(
        f"archive {path} is damaged: {what}. Compare `sha256sum {path}` with the sha256 in the "
        f"data README beside the archives ({check})."
    )


_DECOMPRESSORS = {b"\x1f\x8b": gzip.decompress, b"BZ": bz2.decompress, b"\xfd7": lzma.decompress}


def _tar_bytes(path: Path) -> bytes:
    """The archive's uncompressed tar stream, read to its end (gzip's CRC and length, bz2's and
    xz's checks verified): tarfile alone stops quietly at a damaged header."""
    raw = path.read_bytes()
    decompress = _DECOMPRESSORS.get(raw[:2])
    if decompress is None:
        return raw
    try:
        return decompress(raw)
    except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
        raise _damaged(path, f"the compressed stream is truncated or corrupted ({exc})") from exc


def _read_archive(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    stream = _tar_bytes(source.path)

    def records():
        try:
            with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
                for member in tar:
                    if not member.isfile():
                        continue
                    data = tar.extractfile(member).read()  # every member, read in full
                    parts = _split_parts(member.name)
                    if parts is None or not member.name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    try:
                        image = _decode(data, info.image_size)
                    except OSError as exc:  # PIL's UnidentifiedImageError is an OSError
                        raise _damaged(
                            source.path, f"{member.name} is not a readable image"
                        ) from exc
                    yield (*parts, image)
                # Past the last member only the end-of-archive zero blocks may follow; anything
                # else is a header tarfile could not parse (and silently stopped at).
                tail = stream[tar.offset :]
                if tail.count(0) != len(tail):
                    raise _damaged(
                        source.path,
                        f"the tar header at byte {tar.offset:,} is damaged, so the members after "
                        "it are unreadable (truncated or corrupted)",
                    )
        except tarfile.TarError as exc:
            raise _damaged(
                source.path, f"not a readable tar archive: truncated or corrupted ({exc})"
            ) from exc

    arrays = _assemble(records(), info, str(source.path))
    problem = _count_problem(arrays, info)
    if problem:
        raise _damaged(source.path, f"{problem} (incomplete)")
    return arrays


def _read_folder(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    def records():
        for path in _iter_image_files(source.path):
            parts = _split_parts(str(path.relative_to(source.path)))
            if parts is not None:
                try:
                    yield (*parts, _decode(path, info.image_size))
                except OSError as exc:
                    raise BenchError(f"{path} is not a readable image ({exc})") from exc

    arrays = _assemble(records(), info, str(source.path))
    problem = _count_problem(arrays, info)
    if problem:  # a tree may be a deliberate subset: say so, in the log and in every row
        log.warning("image folder %s: %s; using it as it is", source.path, problem)
    return arrays


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


def _read_cifar_batches(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    return _cifar10_batches(source.path.parent, download=False)


def _read_torchvision(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    import torchvision

    root = source.path.parent
    try:
        if info.name == "cifar10":
            return _cifar10_batches(root, download=True)
        if info.name == "gtsrb":
            arrays = {}
            for split in SPLITS:
                ds = torchvision.datasets.GTSRB(root, split=split, download=True)
                images, labels = [], []
                for i in range(len(ds)):
                    img, label = ds[i]
                    images.append(_resize_pil(img, info.image_size))
                    labels.append(label)
                arrays[f"{split}_x"] = np.stack(images).transpose(0, 3, 1, 2).copy()
                arrays[f"{split}_y"] = np.asarray(labels, dtype=np.int64)
            return arrays
    except (OSError, RuntimeError, BenchError) as exc:  # URLError is an OSError
        raise BenchError(
            f"no local data for {info.name!r} and the torchvision download failed ({exc}). "
            f"Set {settings.DATA_DIR_ENV} to a directory holding "
            f"{' or '.join(info.archive_names)} or an ImageFolder tree "
            f"<dir>/{info.folder_names[0]}/{{train,test}}/<class>/<image>."
        ) from exc
    raise BenchError(f"torchvision has no official source wired up for {info.name!r}")


def _resize_pil(img: Image.Image, size: int) -> np.ndarray:
    img = img.convert("RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)


def _read_verified(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    arrays = READERS[source.kind](source, info)
    if source.kind in ("cifar_batches", "torchvision"):  # archives and folders check their own
        problem = _count_problem(arrays, info)
        if problem:
            raise BenchError(f"{source.label} at {source.path} is incomplete: {problem}")
    return arrays


READERS = {
    "archive": _read_archive,
    "folder": _read_folder,
    "cifar_batches": _read_cifar_batches,
    "torchvision": _read_torchvision,
}


# --------------------------------------------------------------------------- cache


def dataset_cache_root() -> Path:
    return settings.cache_dir() / "datasets"


def _cache_path(info: DatasetInfo, source_hash: str) -> Path:
    key = hashlib.sha256(f"{CACHE_FORMAT}|{info.name}|{source_hash}".encode()).hexdigest()
    return dataset_cache_root() / f"{info.name}-{key[:16]}"


def _array_sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()


def data_hash_of(checksums: dict[str, str]) -> str:
    """The dataset's content hash: one sha256 over every decoded array's checksum."""
    canonical = json.dumps(dict(sorted(checksums.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _load_cached(path: Path, info: DatasetInfo) -> tuple[dict[str, np.ndarray], str] | None:
    """The cached arrays and their data hash, or None (missing, or damaged: then deleted)."""
    meta_file = path / "meta.json"
    if not path.exists():
        return None
    try:
        meta = json.loads(meta_file.read_text())
        expected = meta["arrays"]
        arrays = {}
        for name in ("train_x", "train_y", "test_x", "test_y"):
            arr = np.load(path / f"{name}.npy", allow_pickle=False)
            want = expected[name]
            if list(arr.shape) != want["shape"] or str(arr.dtype) != want["dtype"]:
                raise ValueError(f"{name}.npy has shape {arr.shape} {arr.dtype}, not {want}")
            if _array_sha256(arr) != want["sha256"]:
                raise ValueError(f"{name}.npy does not match its checksum in meta.json")
            arrays[name] = arr
        return arrays, data_hash_of({n: expected[n]["sha256"] for n in arrays})
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        log.warning("decoded %s cache %s is damaged (%s); rebuilding it", info.name, path, exc)
        shutil.rmtree(path, ignore_errors=True)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray], source: Source) -> str:
    """Publish the arrays with their checksums (atomically) and return their data hash."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    checksums = {name: _array_sha256(arr) for name, arr in arrays.items()}
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr)
    meta = {
        "format": CACHE_FORMAT,
        "source": source.label,
        "source_path": str(source.path),
        "arrays": {
            n: {"shape": list(a.shape), "dtype": str(a.dtype), "sha256": checksums[n]}
            for n, a in arrays.items()
        },
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
    try:
        os.rename(tmp, path)  # atomic publish of the whole directory
    except OSError:  # another process published it first
        shutil.rmtree(tmp, ignore_errors=True)
    return data_hash_of(checksums)


_REUSED: dict[tuple[str, str], tuple[str, Dataset]] = {}


def load_dataset(name: str, source: str = "any", *, reuse: bool = False) -> Dataset:
    """Load a dataset from the uint8 cache, decoding it from its source on first use.

    ``source``: "any" or "official" (see :func:`find_source`). ``reuse=True`` hands back the
    same :class:`Dataset` this process loaded before from the same source content (the driver
    loads each dataset once for grid expansion and preflight); trials load their own copy.
    """
    info = dataset_info(name)
    src = find_source(info, source)
    source_hash = src.content_hash()
    src = _marked_if_modified(src, source_hash)
    path = _cache_path(info, source_hash)
    memo_key = (name, source)
    if reuse and memo_key in _REUSED and _REUSED[memo_key][0] == f"{path}|{src.label}":
        return _REUSED[memo_key][1]
    cached = _load_cached(path, info)
    if cached is None:
        log.info("decoding %s from %s (%s) into the cache %s", name, src.label, src.path, path)
        arrays = _read_verified(src, info)
        data_hash = _write_cache(path, arrays, src)
    else:
        arrays, data_hash = cached
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    dataset = Dataset(info=info, source=src.label, data_hash=data_hash, **tensors)
    if reuse:
        _REUSED[memo_key] = (f"{path}|{src.label}", dataset)
    return dataset


_WARNED_MODIFIED: set[tuple[Path, str]] = set()


def _marked_if_modified(src: Source, digest: str) -> Source:
    """An offline archive whose sha256 is not the published one (a garbled or replaced image
    inside a well-formed archive) is used, with a warning and a mark in its label, which every
    row records as ``data_source``; its content hash already makes its trials other trials."""
    published = ARCHIVE_SHA256.get(src.path.name) if src.kind == "archive" else None
    if published is None or digest == published:
        return src
    if (src.path, digest) not in _WARNED_MODIFIED:
        _WARNED_MODIFIED.add((src.path, digest))
        log.warning(
            "%s is not the published release (sha256 %s, published %s): its images differ "
            "from the release's, and every row says so in data_source",
            src.path, digest, published,
        )  # fmt: skip
    return replace(src, label=f"{src.label} {MODIFIED_NOTE} sha256 {digest[:12]})")


def dataset_cache_entries() -> list[tuple[str, Path, int]]:
    """(dataset, directory, bytes) for every decoded dataset in the cache."""
    root = dataset_cache_root()
    if not root.is_dir():
        return []
    return sorted(
        (p.name.split("-")[0], p, sum(f.stat().st_size for f in p.rglob("*") if f.is_file()))
        for p in root.iterdir()
        if p.is_dir()
    )


def clear_dataset_cache() -> list[Path]:
    """Delete every decoded dataset (and leftovers of interrupted writes); what was removed."""
    removed = [p for _, p, _ in dataset_cache_entries()]
    for path in removed:
        shutil.rmtree(path, ignore_errors=True)
    _REUSED.clear()
    return removed
