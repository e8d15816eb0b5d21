"""Dataset registry, data sources and the decoded uint8 tensor cache.

Images are decoded once (JPEG/PNG -> uint8 arrays) and cached as ``.npy`` files, so a second load
is a file read away. Sources are tried in a documented order: ``$BENCH_DATA_DIR``, the default
data directories, then torchvision's official download (skipped when ``BENCH_OFFLINE=1``).

Nothing damaged is ever used: an archive is read completely (every member, the compressed stream
to its end and its CRC) and must hold the release's image counts; the cache is keyed by a content
hash of the source, and each decoded array carries a checksum that is verified on every load (a
mismatch rebuilds it). The checksums combine into the dataset's ``data_hash``, which keys every
artifact built from the data and is part of every trial's id.

The package in four modules, one job each: :mod:`~bench.data.datasets` (the registry),
:mod:`~bench.data.sources` (finding a source), :mod:`~bench.data.archives` (reading and checking
it) and :mod:`~bench.data.cache` (the decoded cache and :func:`load_dataset`).
"""

from bench.data.cache import (
    clear_dataset_cache,
    data_hash_of,
    dataset_cache_entries,
    dataset_cache_root,
    load_dataset,
)
from bench.data.datasets import DATASETS, Dataset, DatasetInfo, dataset_info
from bench.data.sources import (
    ARCHIVE_SHA256,
    FALLBACK_NOTE,
    MODIFIED_NOTE,
    SOURCE_MODES,
    Source,
    find_source,
    search_dirs,
)

__all__ = [
    "ARCHIVE_SHA256",
    "DATASETS",
    "FALLBACK_NOTE",
    "MODIFIED_NOTE",
    "SOURCE_MODES",
    "Dataset",
    "DatasetInfo",
    "Source",
    "clear_dataset_cache",
    "data_hash_of",
    "dataset_cache_entries",
    "dataset_cache_root",
    "dataset_info",
    "find_source",
    "load_dataset",
    "search_dirs",
]
