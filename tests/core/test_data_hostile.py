"""Damaged or altered data is refused or said, never used silently: damaged archives and
caches (cases 1-3 of the hostile tester's issue 22) and archives that differ from the release."""

from __future__ import annotations

import gzip
import io
import logging
import os
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.core.artifacts import ArtifactCache
from bench.data import ARCHIVE_SHA256, MODIFIED_NOTE, load_dataset
from bench.data import cache as data_cache
from bench.errors import BenchError
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.trial.poisoning import cell_spec
from tests.hostile_support import (
    _flip,
    _small_archive,
    _tiny_counts,
    _write_tree,
)


def test_case1_damaged_archive_is_refused(isolated_data, real_cifar_archive, capsys):
    """200 flipped bytes in the second two-thirds of a copy of the real archive: before, 10,432
    of 50,000 images were decoded and the run exited 0."""
    real = real_cifar_archive
    damaged = isolated_data / real.name
    blob = bytearray(real.read_bytes())
    rng = np.random.default_rng(1)  # seed 1: the old reader silently kept 11,113 train images
    for pos in rng.choice(np.arange(len(blob) // 3, len(blob)), size=200, replace=False):
        blob[pos] ^= 0xFF
    damaged.write_bytes(bytes(blob))

    assert main(["data", "cifar10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert f"archive {damaged} is damaged" in err
    assert "sha256sum" in err and ARCHIVE_SHA256[real.name] in err
    assert not list((isolated_data.parent / "cache").rglob("*.npy")), "nothing may be cached"


def test_case1_archive_missing_images_is_refused(isolated_data, real_cifar_archive):
    """A well-formed archive holding 20 images per class and split: the counts give it away."""
    _small_archive(real_cifar_archive, isolated_data / real_cifar_archive.name, per_class=20)
    with pytest.raises(BenchError) as err:
        load_dataset("cifar10")
    assert "holds 200 train / 200 test images; cifar10 has 50,000 / 10,000" in str(err.value)


def test_case1_damaged_tar_header_is_refused(isolated_data, real_cifar_archive):
    """A tar header damaged mid-archive (the compression intact): tarfile stops there quietly,
    so every member must be accounted for."""
    stream = bytearray(gzip.decompress(real_cifar_archive.read_bytes()))
    with tarfile.open(fileobj=io.BytesIO(bytes(stream)), mode="r:") as tar:
        members = tar.getmembers()
    victim = members[300].offset
    stream[victim : victim + 100] = b"\x07" * 100  # name field garbled: checksum no longer fits
    # Stored uncompressed (the reader goes by content, not by name): quick to write.
    (isolated_data / real_cifar_archive.name).write_bytes(bytes(stream))
    with pytest.raises(BenchError) as err:
        load_dataset("cifar10")
    assert f"tar header at byte {victim:,} is damaged" in str(err.value)


def test_case2_caches_and_trial_ids_follow_the_data_content(isolated_data, monkeypatch):
    """Same path, same size, same mtime, other pixels: before, the decoded cache, the artifacts
    and the trial ids were all keyed by name/size/mtime, so the old results were reused."""
    _tiny_counts(monkeypatch)
    tree = isolated_data / "cifar10"
    _write_tree(tree, suffix="bmp")  # uncompressed: a changed pixel keeps the file size
    first = load_dataset("cifar10")
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"])
    specs_before = expand_grid(preset)

    image = tree / "train" / "class03" / "1.bmp"
    stat = image.stat()
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] ^= 0x01
    Image.fromarray(pixels).save(image)
    assert image.stat().st_size == stat.st_size
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    second = load_dataset("cifar10")
    assert not torch.equal(first.train_x, second.train_x), "stale decoded cache was used"
    assert first.data_hash != second.data_hash
    data_cache._REUSED.clear()
    specs_after = expand_grid(preset)
    assert {s.trial_id for s in specs_before}.isdisjoint({s.trial_id for s in specs_after})
    assert cell_spec(specs_before[0], first) != cell_spec(specs_after[0], second)
    assert cell_spec(specs_after[0], second)["data_hash"] == second.data_hash


@pytest.mark.parametrize("array", ["train_x", "train_y"])
def test_case3_damaged_decoded_cache_is_rebuilt_and_said(isolated_data, monkeypatch, caplog, array):
    """Flipped bytes in a cached array: before, train_x's were used as pixels and train_y's made
    every trial fail with an out-of-bounds target."""
    _tiny_counts(monkeypatch)
    _write_tree(isolated_data / "cifar10")
    first = load_dataset("cifar10")
    (cached,) = (isolated_data.parent / "cache").rglob(f"{array}.npy")
    _flip(cached, 3)
    with caplog.at_level(logging.INFO, logger="bench"):
        again = load_dataset("cifar10")
    assert torch.equal(first.train_x, again.train_x) and torch.equal(first.train_y, again.train_y)
    assert again.data_hash == first.data_hash
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("damaged" in r.getMessage() and "rebuilding" in r.getMessage() for r in warned)
    assert any("decoding cifar10" in r.getMessage() for r in caplog.records)


def test_case3_cache_clear_removes_datasets_and_artifacts(isolated_data, monkeypatch, capsys):
    _tiny_counts(monkeypatch)
    _write_tree(isolated_data / "cifar10")
    load_dataset("cifar10")
    ArtifactCache().get_or_build("demo", {"x": 1}, lambda: {"t": torch.zeros(2)})
    assert main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 decoded datasets" in out and "removed 1 artifacts" in out
    assert not list((isolated_data.parent / "cache").rglob("*.npy"))
    assert not list(ArtifactCache().root.rglob("*.pt"))


def test_case3_artifact_builds_and_rebuilds_are_logged(tmp_path, caplog):
    cache = ArtifactCache(tmp_path / "artifacts")
    with caplog.at_level(logging.INFO, logger="bench"):
        cache.get_or_build("demo", {"x": 1}, lambda: {"t": torch.zeros(2)})
        (pt,) = (tmp_path / "artifacts").rglob("*.pt")
        pt.write_bytes(pt.read_bytes()[:-5])
        cache.get_or_build("demo", {"x": 1}, lambda: {"t": torch.zeros(2)})
    messages = [r.getMessage() for r in caplog.records]
    assert sum("building artifact demo/" in m for m in messages) == 2
    assert any("unusable" in m and "rebuilding" in m for m in messages)


def test_an_archive_that_is_not_the_published_release_warns_and_marks_rows(
    isolated_data, real_cifar_archive, monkeypatch, caplog, cifar10
):
    """Before: an archive whose images differ from the release (a garbled or replaced JPEG in a
    well-formed archive; its sha256 is not the published one) was decoded without a word."""
    assert MODIFIED_NOTE not in cifar10.source  # the published archive: no mark
    _tiny_counts(monkeypatch)
    _small_archive(real_cifar_archive, isolated_data / real_cifar_archive.name, per_class=2)
    dataset = load_dataset("cifar10")
    assert len(dataset.train_y) == 20
    assert f"{MODIFIED_NOTE} sha256 " in dataset.source  # -> every row's data_source
    assert "is not the published release" in caplog.text
    assert ARCHIVE_SHA256[real_cifar_archive.name] in caplog.text
