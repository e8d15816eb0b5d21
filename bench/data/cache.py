"""The decoded uint8 cache: images are decoded once and cached as ``.npy`` files keyed by a
content hash of the source; each array carries a checksum verified on every load (a mismatch
rebuilds it), and the checksums combine into the dataset's ``data_hash``, which keys every
artifact built from the data and is part of every trial's id."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from bench.core import settings
from bench.data.archives import _read_verified
from bench.data.datasets import Dataset, DatasetInfo, dataset_info
from bench.data.sources import ARCHIVE_SHA256, MODIFIED_NOTE, Source, find_source

log = logging.getLogger("bench.data")


CACHE_FORMAT = 2


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
