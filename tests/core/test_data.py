"""Data sources, the uint8 cache and the missing-data error."""

import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from bench.core import settings
from bench.data import DATASETS, archives, load_dataset
from bench.errors import BenchError


def _write_tree(root, n_classes=10, per_class=2, size=32):
    """A tiny ImageFolder tree: pixel value encodes (split, class, index) for checking order."""
    for s, split in enumerate(("train", "test")):
        for c in range(n_classes):
            d = root / split / f"class{c:02d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                value = (100 * s + 5 * c + i) % 256
                Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(d / f"{i}.png")


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """No default data directories, an empty cache, and no downloads."""
    monkeypatch.setattr(settings, "default_data_dirs", lambda: [])
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    return tmp_path


def test_imagefolder_source_decodes_sorted_nchw(isolated, monkeypatch):
    _write_tree(isolated / "cifar10")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    ds = load_dataset("cifar10")
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.dtype == torch.uint8
    assert ds.train_y.tolist() == [c for c in range(10) for _ in range(2)]
    assert ds.train_x[:, 0, 0, 0].tolist() == [5 * c + i for c in range(10) for i in range(2)]
    assert ds.test_x[0, 0, 0, 0] == 100
    assert ds.source.startswith("folder:cifar10")


def test_archive_source_and_resizing(isolated, monkeypatch):
    # A one-image-per-class archive: expect its counts, not the release's.
    monkeypatch.setitem(DATASETS, "gtsrb", replace(DATASETS["gtsrb"], split_sizes=(43, 43)))
    tree = isolated / "tree"
    _write_tree(tree / "gtsrb32", n_classes=43, per_class=1, size=40)
    archive = isolated / "gtsrb32-png.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree / "gtsrb32", arcname="gtsrb32")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    ds = load_dataset("gtsrb")
    assert ds.train_x.shape == (43, 3, 32, 32)  # resized from 40 px
    assert ds.source.startswith("archive:gtsrb32-png.tar.gz")


def test_second_load_comes_from_the_cache(isolated, monkeypatch):
    _write_tree(isolated / "cifar10")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    first = load_dataset("cifar10")

    def no_decoding(*_args, **_kwargs):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setitem(archives.READERS, "folder", no_decoding)
    second = load_dataset("cifar10")
    assert torch.equal(first.train_x, second.train_x)


def test_corrupted_cache_is_rebuilt(isolated, monkeypatch):
    _write_tree(isolated / "cifar10")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    first = load_dataset("cifar10")
    (cache_file,) = (isolated / "cache").rglob("train_x.npy")
    cache_file.write_bytes(cache_file.read_bytes()[:100])  # truncate
    again = load_dataset("cifar10")
    assert torch.equal(first.train_x, again.train_x)


def test_missing_data_names_the_variable_and_layouts(isolated):
    with pytest.raises(BenchError) as err:
        load_dataset("cifar10")
    message = str(err.value)
    assert "BENCH_DATA_DIR" in message
    assert "cifar10-jpeg.tar.gz" in message and "ImageFolder" in message


def test_nonexistent_data_dir_is_reported(isolated, monkeypatch):
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated / "nope"))
    with pytest.raises(BenchError, match="does not exist"):
        load_dataset("cifar10")


def test_corrupted_archive_is_a_clear_error(isolated, monkeypatch):
    (isolated / "cifar10-jpeg.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    with pytest.raises(BenchError, match="truncated or corrupted"):
        load_dataset("cifar10")


def test_wrong_class_count_is_a_clear_error(isolated, monkeypatch):
    _write_tree(isolated / "cifar10", n_classes=3)
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    with pytest.raises(BenchError, match="expected train/ and test/ with 10 class folders"):
        load_dataset("cifar10")


def test_real_datasets_have_the_documented_sizes(cifar10, gtsrb):
    assert cifar10.train_x.shape == (50000, 3, 32, 32) and len(cifar10.test_y) == 10000
    assert torch.equal(cifar10.train_y.bincount(), torch.full((10,), 5000))
    assert gtsrb.train_x.shape == (39209, 3, 32, 32) and len(gtsrb.test_y) == 12630
    assert int(gtsrb.train_y.max()) == DATASETS["gtsrb"].num_classes - 1
    assert "JPEG export" in cifar10.source  # recorded in every result row


def test_subset_is_seeded_and_shared(cifar10):
    a = cifar10.subset(1000, 200, seed=0)
    b = cifar10.subset(1000, 200, seed=0)
    assert torch.equal(a.train_y, b.train_y) and len(a.train_y) == 1000 and len(a.test_y) == 200
    assert not torch.equal(cifar10.subset(1000, 200, seed=1).train_y, a.train_y)


def test_official_source_falls_back_to_the_export_with_a_mark(isolated, monkeypatch, caplog):
    monkeypatch.setitem(DATASETS, "cifar10", replace(DATASETS["cifar10"], split_sizes=(20, 20)))
    _write_tree(isolated / "cifar10")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    with caplog.at_level("WARNING", logger="bench.data"):
        ds = load_dataset("cifar10", "official")
    assert ds.source.endswith("(fallback: official pixels unavailable)")
    assert "official CIFAR-10 pixels are unavailable" in caplog.text
    assert torch.equal(ds.train_x, load_dataset("cifar10").train_x)  # same pixels, other label


def test_official_source_refuses_a_damaged_official_copy(isolated, monkeypatch):
    batches = isolated / "cifar-10-batches-py"
    batches.mkdir()
    (batches / "data_batch_1").write_bytes(b"not the release")
    monkeypatch.setenv("BENCH_DATA_DIR", str(isolated))
    with pytest.raises(BenchError, match="not a complete copy of the official CIFAR-10 release"):
        load_dataset("cifar10", "official")


def test_unknown_source_mode_is_refused(isolated):
    with pytest.raises(BenchError, match=r"\[data\] source must be one of"):
        load_dataset("cifar10", "best")
