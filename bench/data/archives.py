"""Reading a source into arrays, and refusing a damaged one: an archive is read completely
(every member, the compressed stream to its end and its CRC) and must hold the release's image
counts; an image folder that holds other counts is used with a warning."""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import lzma
import os
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from bench.core import settings
from bench.data.datasets import SPLITS, DatasetInfo
from bench.data.sources import (
    ARCHIVE_SHA256,
    IMAGE_SUFFIXES,
    Source,
    _cifar10_batches,
    _file_sha256,
)
from bench.errors import BenchError

log = logging.getLogger("bench.data")


def _iter_image_files(root: Path) -> Iterator[Path]:
    for dirpath, _, files in os.walk(root):
        for f in files:
            if f.lower().endswith(IMAGE_SUFFIXES):
                yield Path(dirpath) / f


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
