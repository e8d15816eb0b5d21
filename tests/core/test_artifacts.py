"""The artifact cache: built once under concurrency, verified on load, weights-only."""

import multiprocessing as mp
import time
from pathlib import Path

import torch

from bench.core.artifacts import ArtifactCache

SPEC = {"what": "toy", "seed": 0}


def _build_slowly(marker_dir: str) -> dict:
    Path(marker_dir, f"built-{time.time_ns()}").touch()
    time.sleep(1.0)
    return {"weights": torch.arange(6.0), "seconds": 1.0}


def _fetch(root: str, marker_dir: str, out: mp.Queue) -> None:
    fetched = ArtifactCache(Path(root)).get_or_build("toy", SPEC, lambda: _build_slowly(marker_dir))
    out.put((fetched.hit, fetched.value["weights"].tolist()))


def test_concurrent_processes_build_once(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_fetch, args=(str(tmp_path / "cache"), str(markers), queue))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert len(list(markers.iterdir())) == 1, "the artifact was built more than once"
    assert sorted(hit for hit, _ in results) == [False, True, True]
    assert all(weights == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] for _, weights in results)


def test_truncated_or_corrupted_artifacts_are_rebuilt(tmp_path):
    cache = ArtifactCache(tmp_path)
    builds = []

    def build():
        builds.append(1)
        return {"weights": torch.ones(1000)}

    assert cache.get_or_build("toy", SPEC, build).hit is False
    assert cache.get_or_build("toy", SPEC, build).hit is True
    (path,) = tmp_path.glob("toy/*.pt")
    path.write_bytes(path.read_bytes()[:200])  # truncated
    assert cache.get_or_build("toy", SPEC, build).hit is False
    data = bytearray(path.read_bytes())
    data[-50] ^= 0xFF  # one flipped byte, same length
    path.write_bytes(bytes(data))
    assert cache.get_or_build("toy", SPEC, build).hit is False
    assert len(builds) == 3
    assert cache.get_or_build("toy", {**SPEC, "seed": 1}, build).hit is False  # new key


def test_loading_is_weights_only(tmp_path):
    """An artifact holding arbitrary pickled objects is refused and rebuilt, never executed."""
    cache = ArtifactCache(tmp_path)
    cache.get_or_build("toy", SPEC, lambda: {"weights": torch.zeros(2)})
    (path,) = tmp_path.glob("toy/*.pt")
    torch.save({"weights": torch.zeros(2), "payload": _Sneaky()}, path)
    import hashlib

    path.with_suffix(".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())
    fetched = cache.get_or_build("toy", SPEC, lambda: {"weights": torch.ones(2)})
    assert fetched.hit is False and fetched.value["weights"].tolist() == [1.0, 1.0]


class _Sneaky:
    pass


def test_ls_and_clear(tmp_path):
    cache = ArtifactCache(tmp_path)
    cache.get_or_build("toy", SPEC, lambda: {"w": torch.zeros(1)})
    assert [kind for kind, _, _ in cache.entries()] == ["toy"]
    assert cache.clear() == 1 and cache.entries() == []
