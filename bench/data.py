"""Dataset registry, data sources and the decoded uint8 tensor cache.

Images are decoded once (JPEG/PNG -> uint8 arrays) and cached as ``.npy`` files, so a second load
is a memory map away. Sources are tried in a documented order: ``$BENCH_DATA_DIR``, the default
data directories, then torchvision's official download (skipped when ``BENCH_OFFLINE=1``).
"""

from __future__ import annotations

import hashlib
import io
import json
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

from bench import settings
from bench.errors import BenchError, unknown_name_error

CACHE_FORMAT = 1
SPLITS = ("train", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".ppm", ".bmp")


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
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown_name_error("dataset", name, DATASETS) from None


@dataclass(frozen=True)
class Dataset:
    """A decoded dataset: uint8 images in NCHW layout and int64 labels, plus where it came from."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str

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

    kind: str  # "archive" | "folder" | "torchvision"
    path: Path
    label: str

    def fingerprint(self) -> str:
        if self.kind == "archive":
            st = self.path.stat()
            return f"{self.path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
        if self.kind == "folder":
            counts = [sum(1 for _ in _iter_image_files(self.path / s)) for s in SPLITS]
            return f"{self.path.resolve()}:{counts}"
        return "torchvision-official"


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


def find_source(info: DatasetInfo) -> Source:
    """The first available source for ``info``, or a clear error saying what to set."""
    env = os.environ.get(settings.DATA_DIR_ENV)
    if env and not Path(env).expanduser().exists():
        raise BenchError(
            f"{settings.DATA_DIR_ENV}={env} does not exist. Point it at a directory holding "
            f"{' or '.join(info.archive_names)} or an ImageFolder tree "
            f"<dir>/{info.folder_names[0]}/{{train,test}}/<class>/<image>."
        )
    searched = []
    for origin, directory in search_dirs():
        searched.append(f"{directory} ({origin})")
        if directory.is_file() and directory.name in info.archive_names:
            return Source("archive", directory, f"archive:{directory.name}")
        if directory.is_dir():
            for source in _candidates_in(directory, info):
                return source
    if not settings.offline():
        return Source("torchvision", settings.cache_dir() / "downloads", "torchvision official")
    raise BenchError(
        f"no data found for dataset {info.name!r}. Searched: {'; '.join(searched)}; "
        f"downloads are disabled ({settings.OFFLINE_ENV}=1). Set {settings.DATA_DIR_ENV} to a "
        f"directory holding one of: the archive {' or '.join(info.archive_names)}; an ImageFolder "
        f"tree <dir>/{info.folder_names[0]}/{{train,test}}/<class>/<image>.{{jpg,png}}. "
        f"Or unset {settings.OFFLINE_ENV} to let torchvision download the official release."
    )


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


def _read_archive(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    def records():
        try:
            with tarfile.open(source.path, "r:*") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.lower().endswith(IMAGE_SUFFIXES):
                        continue
                    parts = _split_parts(member.name)
                    if parts is None:
                        continue
                    data = tar.extractfile(member).read()
                    yield (*parts, _decode(data, info.image_size))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise BenchError(
                f"cannot read archive {source.path}: {exc}. It may be truncated or corrupted; "
                "check its sha256 against the data README, or re-copy it."
            ) from exc

    return _assemble(records(), info, str(source.path))


def _read_folder(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    def records():
        for path in _iter_image_files(source.path):
            parts = _split_parts(str(path.relative_to(source.path)))
            if parts is not None:
                yield (*parts, _decode(path, info.image_size))

    return _assemble(records(), info, str(source.path))


def _read_torchvision(source: Source, info: DatasetInfo) -> dict[str, np.ndarray]:
    import torchvision

    root = source.path
    try:
        if info.name == "cifar10":
            arrays = {}
            for split in SPLITS:
                ds = torchvision.datasets.CIFAR10(root, train=split == "train", download=True)
                arrays[f"{split}_x"] = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))
                arrays[f"{split}_y"] = np.asarray(ds.targets, dtype=np.int64)
            return arrays
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
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
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


READERS = {"archive": _read_archive, "folder": _read_folder, "torchvision": _read_torchvision}


# --------------------------------------------------------------------------- cache


def _cache_path(info: DatasetInfo, source: Source) -> Path:
    key = hashlib.sha256(f"{CACHE_FORMAT}|{info.name}|{source.fingerprint()}".encode()).hexdigest()
    return settings.cache_dir() / "datasets" / f"{info.name}-{key[:16]}"


def _load_cached(path: Path, info: DatasetInfo) -> dict[str, np.ndarray] | None:
    meta = path / "meta.json"
    if not meta.is_file():
        return None
    try:
        expected = json.loads(meta.read_text())["shapes"]
        arrays = {name: np.load(path / f"{name}.npy") for name in expected}
        if any(list(arrays[n].shape) != expected[n] for n in expected):
            raise ValueError("shape mismatch")
        return arrays
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        shutil.rmtree(path, ignore_errors=True)  # corrupted: rebuild rather than use it
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray], source: Source) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=path.name + ".tmp-", dir=path.parent))
    for name, arr in arrays.items():
        np.save(tmp / f"{name}.npy", arr)
    meta = {"source": source.label, "shapes": {n: list(a.shape) for n, a in arrays.items()}}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, path)  # atomic publish of the whole directory
    except OSError:  # another process published it first
        shutil.rmtree(tmp, ignore_errors=True)


def load_dataset(name: str) -> Dataset:
    """Load a dataset from the uint8 cache, decoding it from its source on first use."""
    info = dataset_info(name)
    source = find_source(info)
    path = _cache_path(info, source)
    arrays = _load_cached(path, info)
    if arrays is None:
        arrays = READERS[source.kind](source, info)
        _write_cache(path, arrays, source)
    tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
    return Dataset(info=info, source=source.label, **tensors)
