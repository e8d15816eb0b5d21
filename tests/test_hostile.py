"""The hostile tester's cases (issue 22): each test reproduces one case as the issue describes it
and asserts what must hold instead. Cases 4 and 5 (timeouts that hold whatever a plugin does, a
row for a trial whose worker dies) live with the trial code."""

from __future__ import annotations

import contextlib
import gzip
import http.server
import io
import ipaddress
import logging
import os
import signal
import subprocess
import sys
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench import data as data_module
from bench.cli import main
from bench.core.artifacts import ArtifactCache
from bench.data import DATASETS, find_source, load_dataset
from bench.errors import BenchError
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.trial.poisoning import cell_spec


@pytest.fixture(autouse=True)
def _restore_bench_logger():
    """bench.cli.main() points the 'bench' logger at this test's stdout and stops propagation;
    undo that so later tests (and caplog) see its records."""
    logger = logging.getLogger("bench")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers, logger.propagate = saved[0], saved[1]
    logger.setLevel(saved[2])


@pytest.fixture
def isolated_data(tmp_path, monkeypatch):
    """No default data directories, a private cache, no downloads; BENCH_DATA_DIR is tmp/data."""
    monkeypatch.setattr(data_module.settings, "default_data_dirs", lambda: [])
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    data_module._REUSED.clear()
    yield tmp_path / "data"
    data_module._REUSED.clear()


@pytest.fixture(scope="session")
def real_cifar_archive() -> Path:
    """The real CIFAR-10 archive (found before any test isolates the data search path)."""
    source = find_source(DATASETS["cifar10"])
    if source.kind != "archive":
        pytest.skip("the real CIFAR-10 archive is not available here")
    return source.path


def _write_tree(root: Path, n_classes: int = 10, per_class: int = 2, suffix: str = "png") -> None:
    """A tiny ImageFolder tree whose pixel values encode (split, class, index)."""
    for s, split in enumerate(("train", "test")):
        for c in range(n_classes):
            folder = root / split / f"class{c:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                value = (100 * s + 5 * c + i) % 256
                image = np.full((32, 32, 3), value, np.uint8)
                Image.fromarray(image).save(folder / f"{i}.{suffix}")


def _tiny_counts(monkeypatch, n_train: int = 20, n_test: int = 20) -> None:
    monkeypatch.setitem(
        DATASETS, "cifar10", data_module.replace(DATASETS["cifar10"], split_sizes=(n_train, n_test))
    )


def _small_archive(real: Path, out_path: Path, per_class: int) -> None:
    """A well-formed copy of the real archive holding its first ``per_class`` images of each
    class and split."""
    kept: dict[tuple[str, str], int] = {}
    out = io.BytesIO()
    with tarfile.open(real, "r:gz") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            parts = data_module._split_parts(member.name) if member.isfile() else None
            if parts is not None and kept.get(parts[:2], 0) < per_class:
                kept[parts[:2]] = kept.get(parts[:2], 0) + 1
                dst.addfile(member, src.extractfile(member))
    out_path.write_bytes(gzip.compress(out.getvalue(), compresslevel=1))


# --------------------------------------------------------------------------- case 1


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
    assert "sha256sum" in err and data_module.ARCHIVE_SHA256[real.name] in err
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


# --------------------------------------------------------------------------- case 2


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
    data_module._REUSED.clear()
    specs_after = expand_grid(preset)
    assert {s.trial_id for s in specs_before}.isdisjoint({s.trial_id for s in specs_after})
    assert cell_spec(specs_before[0], first) != cell_spec(specs_after[0], second)
    assert cell_spec(specs_after[0], second)["data_hash"] == second.data_hash


# --------------------------------------------------------------------------- case 3


def _flip(path: Path, offset_from_end: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[-offset_from_end] ^= 0x02
    path.write_bytes(bytes(blob))


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


# --------------------------------------------------------------------------- case 7

PRESET = """
[preset]
name = "custom"
[grid]
datasets = ["cifar10"]
attacks = ["badnets"]
defenses = ["none"]
ratios = [0.1]
seeds = [0]
target = 0
[data]
train_size = 1000
test_size = 200
[train]
epochs = 1
[resources]
cpus_per_trial = 1
"""
GRID = PRESET[PRESET.index("[grid]") : PRESET.index("[data]")]

# (the value, the preset text, what the one-line error must say)
PRESET_CASES = [
    ('epochs = "abc"', PRESET.replace("epochs = 1", 'epochs = "abc"'), "[train] epochs = 'abc'"),
    ("grid = 5", "grid = 5\n" + PRESET.replace(GRID, ""), "[grid] must be a table"),
    ('target = "3"', PRESET.replace("target = 0", 'target = "3"'), "must be an integer >= 0"),
    ("[models] default = 5", PRESET + "[models]\ndefault = 5\n", "must be a model name"),
    (
        'cpus_per_trial = "two"',
        PRESET.replace("cpus_per_trial = 1", 'cpus_per_trial = "two"'),
        "[resources] cpus_per_trial = 'two': must be a number > 0",
    ),
    ("[attacks] badnets = 5", PRESET + "[attacks]\nbadnets = 5\n", "must be a table of parameters"),
    ("seeds = [true]", PRESET.replace("seeds = [0]", "seeds = [true]"), "holds True, which must"),
    ("target = 0.5", PRESET.replace("target = 0", "target = 0.5"), "[grid] target = 0.5: must be"),
    ("epochs = 1.5", PRESET.replace("epochs = 1", "epochs = 1.5"), "[train] epochs = 1.5: must"),
    (
        "train_size = -49000",
        PRESET.replace("train_size = 1000", "train_size = -49000"),
        "[data] train_size = -49000: must be an integer >= 0",
    ),
    (
        "[defenses.ablx]",
        PRESET + "[defenses.ablx]\nisolation_epochs = 1\n",
        "unknown defense 'ablx'. Did you mean 'abl'",
    ),
    ("lr = nan", PRESET.replace("epochs = 1", "epochs = 1\nlr = nan"), "[train] lr = nan: must be"),
    (
        "[defenses.abl] with a bad parameter type",
        PRESET + '[defenses.abl]\nisolation_epochs = "5"\n',
        "defense 'abl': parameter 'isolation_epochs' must be int",
    ),
]


@pytest.mark.parametrize(
    ("case", "text", "message"), PRESET_CASES, ids=[c[0] for c in PRESET_CASES]
)
def test_case7_preset_schema_refuses_before_anything_runs(case, text, message, tmp_path, capsys):
    """Before: tracebacks, an ok row with ASR 0 (target 0.5), trials that all errored (epochs
    1.5), or silent acceptance (train_size -49000, [defenses.ablx])."""
    preset = tmp_path / "preset.toml"
    preset.write_text(text)
    results = tmp_path / "results"
    assert main(["run", "--preset", str(preset), "--results-dir", str(results)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not results.exists(), "nothing may start for a bad preset"


def test_case7_schema_accepts_the_new_keys_and_checks_their_types():
    from bench.grid.preset_schema import validate_preset

    good = {
        "preset": {"name": "p", "reference": "backdoorbench-cifar10"},
        "grid": {
            "datasets": ["cifar10", "gtsrb"],
            "attacks": ["sig"],
            "defenses": ["none"],
            "ratios": [0.1],
            "seeds": [0],
            "attack_ratios": {"sig": [0.05], "gtsrb": {"sig": [0.005]}},
        },
        "train": {"precision": "bf16"},
        "data": {"source": "official"},
    }
    validate_preset(good)
    bad = {
        **good,
        "preset": {"name": "p", "reference": 3},
        "train": {"precision": "fp16"},
        "data": {"source": "web"},
        "grid": {**good["grid"], "attack_ratios": {"gtsrb": {"sigg": [0.005]}, "lc": [2.0]}},
    }
    with pytest.raises(BenchError) as err:
        validate_preset(bad, where="p.toml")
    message = str(err.value)
    for fragment in (
        "[preset] reference = 3: must be a string",
        "unknown precision 'fp16'",
        "unknown data source 'web'",
        "[grid.attack_ratios.gtsrb]: unknown attack 'sigg'. Did you mean 'sig'?",
        "[grid.attack_ratios] lc = [2.0]: holds 2.0",
    ):
        assert fragment in message, message


def test_case7_schema_covers_every_dataclass_field():
    """A new preset key (a new field of Grid, DataBudget, TrainConfig or Resources) must get a
    rule here, or the schema would refuse it as unknown."""
    import dataclasses

    from bench.core.train import TrainConfig
    from bench.grid.preset_schema import SCHEMA
    from bench.grid.presets import Grid
    from bench.spec import DataBudget, Resources

    for section, cls in (
        ("grid", Grid),
        ("data", DataBudget),
        ("train", TrainConfig),
        ("resources", Resources),
    ):
        fields = {f.name for f in dataclasses.fields(cls)}
        # [grid.attack_ratios] (two shapes) and [grid.left_out] (a table) have their own checks
        fields -= {"attack_ratios", "dataset_attack_ratios", "left_out"}
        assert fields <= set(SCHEMA[section]), (section, fields - set(SCHEMA[section]))


# --------------------------------------------------------------------------- case 6


@contextmanager
def bounded(seconds: float):
    """Fail the test (instead of hanging it) if the block runs longer than ``seconds``."""

    def expire(*_):
        raise TimeoutError(f"still running after {seconds:g} s: a hang")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


SMOKE = ["run", "--preset", "smoke", "--datasets", "cifar10"]
RESOURCE_CASES = [
    (["--gpus-per-trial", "nan"], "--gpus-per-trial must be a finite number, got nan"),
    (["--cpus-per-trial", "nan"], "--cpus-per-trial must be a finite number, got nan"),
    (["--cpus-per-trial", "inf"], "--cpus-per-trial must be a finite number, got inf"),
    (["--cpus-per-trial", "-2"], "--cpus-per-trial must be > 0"),
    (["--trial-timeout", "nan"], "--trial-timeout, --retries and --max-concurrent must be finite"),
]


@pytest.mark.parametrize(
    ("flags", "message"), RESOURCE_CASES, ids=[" ".join(c[0]) for c in RESOURCE_CASES]
)
def test_case6_non_finite_resources_are_refused_at_once(flags, message, tmp_path, capsys):
    """Before: --gpus-per-trial nan hung until killed at 600 s; --cpus-per-trial nan gave a
    traceback."""
    with bounded(120):  # a hang guard (before: 600 s)
        code = main([*SMOKE, *flags, "--results-dir", str(tmp_path / "results")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "results").exists()


@pytest.fixture
def http_server():
    """An HTTP server on 127.0.0.1 (an open port that is not Ray)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_case6_address_of_a_non_ray_port_fails_fast(http_server, tmp_path, capsys):
    """Before: ray.init retried for many minutes against the dashboard's port."""
    with bounded(120):  # a hang guard, far below "many minutes" and far above a loaded refusal
        code = main([*SMOKE, "--address", http_server, "--results-dir", str(tmp_path)])
    assert code == 2
    err = capsys.readouterr().err
    assert f"--address {http_server} is not a Ray cluster" in err and "it answered" in err


# --------------------------------------------------------------------------- case 8


@contextmanager
def read_only(path: Path):
    """Make a directory unwritable, for root too (chattr +i; chmod does not bind root)."""
    path.chmod(0o555)
    immutable = False
    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            path.chmod(0o755)
            pytest.skip("cannot make a directory read-only for root here (chattr +i failed)")
        immutable = True
    try:
        yield path
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        path.chmod(0o755)


def test_case8_results_dir_problems_are_refused_before_anything_runs(tmp_path, capsys):
    """Before: a read-only results dir, or one that is a file, gave a traceback."""
    as_file = tmp_path / "results-file"
    as_file.write_text("not a directory")
    assert main([*SMOKE, "--results-dir", str(as_file / "sub")]) == 2
    assert f"{as_file} is a file, not a directory" in capsys.readouterr().err
    assert as_file.read_text() == "not a directory"

    locked = tmp_path / "locked"
    locked.mkdir()
    with read_only(locked):
        assert main([*SMOKE, "--results-dir", str(locked)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"results directory {locked} is not writable" in err
    assert list(locked.iterdir()) == []


@pytest.mark.parametrize("command", ["leaderboard", "timing"])
def test_case8_leaderboard_and_timing_without_results_say_so(command, tmp_path, capsys):
    """Before: KeyError / FileNotFoundError tracebacks, and the missing directory created."""
    missing = tmp_path / "missing"
    assert main([command, "--results-dir", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no results to show" in err and "does not exist" in err
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([command, "--results-dir", str(empty)]) == 2
    assert "holds no results.parquet" in capsys.readouterr().err
    assert list(empty.iterdir()) == []


def test_case8_rows_survive_an_unwritable_table(tmp_path, monkeypatch):
    """Before: a trial whose row could not be written (table unwritable, runs/ writable) was
    lost and reported as an interruption."""
    from bench.run import driver, ray_executor, recording
    from bench.store import ResultsStore

    results = tmp_path / "results"
    run_dir = driver.new_run_dir(results)
    table = results / "results.parquet"
    row = {"trial_id": "t1", "status": "ok", "ca": 0.5, "asr": float("nan")}
    with read_only(results):
        recording.record_row(row, table, run_dir)  # must not raise, must not lose the row
    assert (run_dir / "pending" / "t1.json").exists()
    # The next successful write merges it ...
    recording.record_row({"trial_id": "t2", "status": "ok", "ca": 0.6}, table, run_dir)
    assert set(ResultsStore(table).read()["trial_id"]) == {"t1", "t2"}
    assert not list(results.rglob("pending/*.json"))
    # ... and so does the next run.
    with read_only(results):
        recording.record_row({"trial_id": "t3", "status": "ok", "ca": 0.7}, table, run_dir)
    monkeypatch.setattr(ray_executor, "run_ray", lambda *a, **k: None)
    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"])
    driver.run_grid(expand_grid(preset), preset.resources, results_dir=results)
    assert {"t1", "t2", "t3"} <= set(ResultsStore(table).read()["trial_id"])


# --------------------------------------------------------------------------- case 9


def test_case9_duplicated_axis_values_run_each_trial_once():
    """Before: --attacks badnets,badnets ran the trial twice (and exited 3)."""
    preset = with_overrides(
        load_preset("smoke"),
        datasets=["cifar10", "cifar10"],
        attacks=["badnets", "badnets"],
        defenses=["none", "none"],
        ratios=[0.1, 0.10],
        seeds=[0, 0],
    )
    specs = expand_grid(preset)
    assert len(specs) == 1


def test_case9_cpu_trials_never_outnumber_the_cores(tmp_path, capsys, monkeypatch):
    """Before: --cpus-per-trial 0.01 ran six trials at once on two cores."""
    import ray

    from bench.run import ray_executor
    from bench.spec import Resources

    assert main([*SMOKE, "--cpus-per-trial", "0.01", "--results-dir", str(tmp_path)]) == 2
    assert "a CPU trial needs at least 1 CPU" in capsys.readouterr().err
    # GPU trials may ask for fractions of a CPU, but no more run at once than there are cores.
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0, "GPU": 1.0})
    assert ray_executor._concurrency(Resources(cpus_per_trial=0.1, gpus_per_trial=0.1)) == 2


def test_case9_a_second_driver_on_the_same_results_dir_is_refused(tmp_path, capsys):
    """Before: two drivers started in the same second shared one run folder and both computed
    every trial."""
    from bench.run import driver

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from bench.run.driver import driver_lock\n"
            "with driver_lock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with bounded(120):  # a hang guard
            assert main([*SMOKE, "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert f"another bench run (pid {holder.pid} on" in err
        assert not (tmp_path / "runs").exists()
    finally:
        holder.kill()
        holder.wait()
    # Runs started in the same second get their own directories.
    first, second = driver.new_run_dir(tmp_path, "same"), driver.new_run_dir(tmp_path, "same")
    assert first != second and first.is_dir() and second.is_dir()


# --------------------------------------------------------------------------- case 10


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%")[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _listening(session: int, psutil) -> set[tuple[str, int, str]]:
    """(ip, port, process name) of every listening TCP socket of the session's processes."""
    found = set()
    for proc in psutil.process_iter(["name"]):
        try:
            if os.getsid(proc.pid) != session:
                continue
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.add((conn.laddr.ip, conn.laddr.port, proc.info["name"]))
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return found


def _smoke_driver(results: Path, **streams) -> subprocess.Popen:
    """A smoke-preset `bench run` in its own session (so its whole process group can be
    signalled), importing this checkout."""
    return subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *SMOKE, "--results-dir", str(results)],
        start_new_session=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
        **streams,
    )


@pytest.mark.slow
def test_case10_a_local_run_listens_on_loopback_only(tmp_path):
    """Before: the GCS server, the raylet and the workers listened on every interface and the
    runtime-env agent on the machine's address."""
    import ray  # noqa: F401  (ray ships psutil and puts it on sys.path)

    psutil = pytest.importorskip("psutil")

    results = tmp_path / "results"
    driver = _smoke_driver(results, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[tuple[str, int, str]] = set()
    try:
        deadline = time.monotonic() + 300
        while driver.poll() is None and time.monotonic() < deadline:
            seen |= _listening(driver.pid, psutil)
            time.sleep(0.5)
        output = driver.communicate(timeout=60)[0] if driver.poll() is not None else ""
        assert driver.returncode == 0, output
    finally:
        if driver.poll() is None:
            driver.kill()
        for proc in psutil.process_iter():  # Ray helpers of that session, if any linger
            try:
                if os.getsid(proc.pid) == driver.pid:
                    proc.kill()
            except (psutil.Error, ProcessLookupError):
                pass
    names = {name for _, _, name in seen}
    assert any("gcs_server" in n for n in names) and any("raylet" in n for n in names), seen
    outside = sorted(s for s in seen if not _is_loopback(s[0]))
    assert not outside, f"listening beyond loopback: {outside}"
    # Case 9's last item: the trial's log says which artifacts it built.
    (trial_log,) = results.glob("runs/*/trials/*.log")
    assert "building artifact backdoored_model/" in trial_log.read_text()


# --------------------------------------------------------------------------- cases 4, 5 and 9

HOSTILE_MODULE = '''
"""Defenses that misbehave the ways a plugin can: block, ignore signals, exit, crash, get killed."""
import ctypes, os, signal, time

from bench.api import Defense, DefenseOutput


class _Hostile(Defense):
    def run(self, ctx):
        ctx.log(f"{self.name}: about to misbehave")
        self.misbehave()
        return DefenseOutput(model=ctx.make_model())


class Sleeper(_Hostile):
    name = "sleeper"

    def misbehave(self):
        time.sleep(3600)  # one blocking C call: no training step to check a time limit in


class Stubborn(_Hostile):
    name = "stubborn"

    def misbehave(self):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        while True:
            time.sleep(0.05)


class ExitOne(_Hostile):
    name = "exit_one"

    def misbehave(self):
        os._exit(1)


class Sigkill(_Hostile):
    name = "sigkill"

    def misbehave(self):
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does


class Segfault(_Hostile):
    name = "segfault"

    def misbehave(self):
        ctypes.string_at(0)


class Orphaner(_Hostile):
    name = "orphaner"

    def misbehave(self):
        import subprocess

        child = subprocess.Popen(["sleep", "300"], start_new_session=True)  # escapes the group
        with open(os.environ["HOSTILE_PIDFILE"], "w") as f:
            f.write(str(child.pid))


class Parricide(_Hostile):
    name = "parricide"

    def misbehave(self):
        pid = os.getpid()
        while pid > 1:  # up to the Ray worker running this trial
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::"):
                    os.kill(pid, signal.SIGKILL)


class Vandal(_Hostile):
    name = "vandal"

    def misbehave(self):
        with open(os.environ["HOSTILE_TABLE"], "wb") as f:
            f.write(b"PAR1 overwritten by a plugin")
'''
HOSTILE = {
    "sleeper": "Sleeper",
    "stubborn": "Stubborn",
    "exit_one": "ExitOne",
    "sigkill": "Sigkill",
    "segfault": "Segfault",
    "vandal": "Vandal",
    "orphaner": "Orphaner",
    "parricide": "Parricide",
}


@pytest.fixture
def hostile_plugins(tmp_path, monkeypatch) -> Path:
    """The hostile defenses, installed as the package bench-hostile (a dist-info with entry
    points on sys.path and PYTHONPATH), so child processes and subprocesses find them too."""
    root = tmp_path / "plugins"
    dist = root / "bench_hostile-0.1.dist-info"
    dist.mkdir(parents=True)
    (root / "hostile_plugins.py").write_text(HOSTILE_MODULE)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: bench-hostile\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[bench.defenses]\n" + "".join(f"{n} = hostile_plugins:{c}\n" for n, c in HOSTILE.items())
    )
    monkeypatch.syspath_prepend(str(root))
    paths = [str(root), str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    return root


def _hostile_grid(defenses: str, results: Path, *flags: str) -> list[str]:
    return [
        *SMOKE,
        "--attacks",
        "badnets",
        "--defenses",
        defenses,
        "--results-dir",
        str(results),
        *flags,
    ]


def _rows(results: Path):
    from bench.store import ResultsStore

    return ResultsStore(results / "results.parquet").read().set_index("defense")


def _gone(pid: int) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    return False


def test_case4_a_blocking_defense_is_stopped_at_its_time_limit(hostile_plugins, tmp_path):
    """Before: a defense sleeping in run() (no training step to check the limit at) ran on past
    --trial-timeout (150 s with a 20 s limit). Now the trial's process is killed: a plain
    blocking call at the limit plus a grace second, one that ignores SIGTERM two seconds later."""
    from bench.run.isolation import TERM_WAIT_S, kill_grace_s

    results = tmp_path / "results"
    with bounded(300):  # a hang guard; the limit itself is checked on each row's wall time
        code = main(
            _hostile_grid(
                "sleeper,stubborn", results, "--trial-timeout", "2", "--executor", "local"
            )
        )
    assert code == 3
    rows = _rows(results)
    assert list(rows["status"]) == ["timeout", "timeout"]
    bound = 2 + kill_grace_s(2) + 2 * TERM_WAIT_S + 1
    for name, row in rows.iterrows():
        assert "exceeded its time limit of 2 s" in row["error"], row["error"]
        assert "was killed after" in row["error"] and f"{name}: about to misbehave" in row["error"]
        assert row["wall_seconds"] < bound, (name, row["wall_seconds"])
        assert row["defense_package"] == "bench-hostile" and _gone(row["pid"])
    assert rows.loc["sleeper", "wall_seconds"] < 2 + kill_grace_s(2) + 1  # no SIGTERM wait


def test_case5_a_trial_whose_process_dies_leaves_an_error_row(hostile_plugins, tmp_path, capsys):
    """Before: a worker killed by SIGKILL (the OOM killer), os._exit(1) or a segfault left no
    row: 'did not run (interrupted)', no retry, nothing in the failed-trials list."""
    results = tmp_path / "results"
    with bounded(120):
        code = main(
            _hostile_grid(
                "exit_one,sigkill,segfault", results, "--retries", "1", "--executor", "local"
            )
        )
    assert code == 3
    out = capsys.readouterr().out
    assert "3 trial(s) failed" in out and "did not run" not in out
    rows = _rows(results)
    assert set(rows["status"]) == {"error"} and set(rows["attempts"]) == {2}
    expected = {
        "exit_one": "exited with code 1 before reporting a result",
        "sigkill": "was killed by SIGKILL (out of memory?",
        "segfault": "was killed by SIGSEGV (segmentation fault",
    }
    for name, message in expected.items():
        last = rows.loc[name, "error"].strip().splitlines()[-1]
        assert last.startswith("TrialDied: the trial's process (pid") and message in last, last
        # case 9: the packages are known before the trial runs
        assert rows.loc[name, "defense_package"] == "bench-hostile"
        assert rows.loc[name, "attack_package"] == "backdoor-leaderboard"
        log = (results / "runs" / rows.loc[name, "run"] / "trials").glob("*.log")
        text = next(p for p in log if rows.loc[name, "trial_id"] in p.name).read_text()
        assert "attempt 1/2: " in text and "attempt 2/2: " in text  # retried, both logged
    segfault_log = next((results / "runs").glob(f"*/trials/{rows.loc['segfault', 'trial_id']}.log"))
    # Each attempt's crash report follows its last log line, whole: the child writes both (the
    # parent relaying the lines raced the report and could land inside it).
    crash = "segfault: about to misbehave\nFatal Python error: Segmentation fault\n"
    assert segfault_log.read_text().count(crash) == 2, segfault_log.read_text()
    # The failed-trials lists (markdown and page) show them.
    assert main(["leaderboard", "--results-dir", str(results)]) == 0
    board = (results / "LEADERBOARD.md").read_text()
    page = (results / "index.html").read_text()
    assert "Failed trials (3)" in page
    for name, message in expected.items():
        assert message.split(" (")[0] in board
        assert f"<td>{name}</td>" in page


def test_a_plugins_orphan_ends_with_a_local_run(hostile_plugins, tmp_path, monkeypatch):
    """Before: on the local executor a plugin's child in a session of its own was still running
    after the run ended (the Ray path reaped it)."""
    results = tmp_path / "results"
    pidfile = tmp_path / "orphan.pid"
    monkeypatch.setenv("HOSTILE_PIDFILE", str(pidfile))
    with bounded(120):
        code = main(_hostile_grid("orphaner", results, "--executor", "local"))
    assert code == 0 and _rows(results).loc["orphaner", "status"] == "ok"
    orphan = int(pidfile.read_text())
    deadline = time.monotonic() + 5
    while not _gone(orphan) and time.monotonic() < deadline:  # a zombie until reparented
        time.sleep(0.1)
    assert _gone(orphan) or _is_zombie(orphan), f"pid {orphan} outlived the grid"


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_a_plugin_overwriting_the_table_destroys_no_row(hostile_plugins, tmp_path, monkeypatch):
    """Before: a defense that overwrote results.parquet mid-run left the table moved aside as
    corrupt and rebuilt with its own row only; every earlier row was gone from it. Now the
    table is rebuilt from the journal, with every row."""
    results = tmp_path / "results"
    monkeypatch.setenv("HOSTILE_TABLE", str(results / "results.parquet"))
    with bounded(120):
        assert main(_hostile_grid("none", results, "--executor", "local")) == 0  # the record
        assert main(_hostile_grid("vandal", results, "--executor", "local")) == 0
    rows = _rows(results)
    assert sorted(rows.index) == ["none", "vandal"] and set(rows["status"]) == {"ok"}
    assert list(results.glob("results.parquet.corrupt-*"))  # the damaged file is kept aside


@pytest.mark.parametrize(
    ("defense", "flags", "message"),
    [
        ("sigkill", [], "was killed by SIGKILL (out of memory?"),
        ("exit_one", [], "exited with code 1"),
        ("sleeper", ["--trial-timeout", "2"], "exceeded its time limit of 2 s"),
    ],
)
def test_case5_check_defense_fails_a_plugin_that_kills_its_trial(
    hostile_plugins, defense, flags, message, capsys
):
    """Before: bench check-defense died with the plugin, printing no FAIL line."""
    with bounded(240):  # a hang guard
        assert main(["check-defense", defense, *flags]) == 1
    out = capsys.readouterr().out
    fail = next(line for line in out.splitlines() if line.strip().startswith("FAIL"))
    assert "smoke trial" in fail and message in fail, out
    assert f"| {defense}: about to misbehave" in out
    assert out.rstrip().endswith("fix the FAIL lines above, then run this again")


def test_case9_error_rows_name_the_attack_and_defense_packages():
    """Before: a trial that failed had empty package columns (they were filled on success)."""
    from bench.trial.pipeline import run_trial_safely

    preset = with_overrides(load_preset("smoke"), datasets=["cifar10"], defenses=["ibau"])
    spec = expand_grid(preset)[0]
    row = run_trial_safely(spec.__class__(**{**spec.to_dict(), "ratio": 0.95}))
    assert row["status"] == "error" and "maximum possible ratio" in row["error"]
    assert (row["attack_package"], row["defense_package"]) == ("backdoor-leaderboard",) * 2
    assert row["defense_version"] and row["attack_version"]


@pytest.mark.slow
def test_case4_and_5_through_ray_workers(hostile_plugins, tmp_path):
    """The issue's setting: under Ray Tune, a defense killed by SIGKILL took its worker down
    (no row, 'did not run') and a blocking one outlived --trial-timeout."""
    results = tmp_path / "results"
    with bounded(240):
        code = main(
            _hostile_grid("sigkill,sleeper", results, "--trial-timeout", "3", "--executor", "ray")
        )
    assert code == 3
    rows = _rows(results)
    assert rows.loc["sigkill", "status"] == "error"
    assert "was killed by SIGKILL (out of memory?" in rows.loc["sigkill", "error"]
    assert rows.loc["sleeper", "status"] == "timeout"
    assert "exceeded its time limit of 3 s" in rows.loc["sleeper", "error"]
    assert rows["ray_node"].str.len().min() > 0 and set(rows["defense_package"]) == {
        "bench-hostile"
    }


REAPED_DRIVER = """
import subprocess, sys, time
from bench.run.ray_reaper import reaping

with reaping():
    # A helper that inherits the token, and one started with a bare environment below it (as
    # Ray's agents look once setproctitle has overwritten their environment).
    helper = subprocess.Popen([sys.executable, "-c", (
        "import subprocess, sys, time; "
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], env={}); "
        "print(p.pid, flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    grandchild = int(helper.stdout.readline())
    print(helper.pid, grandchild, flush=True)
    time.sleep(600)
"""


def test_case9_a_killed_driver_leaves_no_processes_behind(tmp_path):
    """What the driver started dies with it, even a process that lost the driver's token."""
    driver = subprocess.Popen(
        [sys.executable, "-c", REAPED_DRIVER],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    try:
        with bounded(120):  # a hang guard
            helper, grandchild = map(int, driver.stdout.readline().split())
            time.sleep(1.2)  # the watchdog notes them (twice a second)
            driver.kill()
            driver.wait()
            start = time.monotonic()
            while not (_gone(helper) and _gone(grandchild)):
                # Before: 60-70 s; the bound leaves a loaded machine room below that.
                assert time.monotonic() - start < 30, "the driver's processes outlived it"
                time.sleep(0.1)
    finally:
        for pid in (helper, grandchild):
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_case9_ray_processes_die_with_a_driver_killed_during_start_up(tmp_path):
    """Before: after a driver SIGKILL during start-up, Ray's dashboard and runtime-env agents
    lingered 60-70 s (they report the raylet's death to the dead GCS with a fixed 60 s
    timeout)."""
    import ray  # noqa: F401  (ray ships psutil and puts it on sys.path)

    psutil = pytest.importorskip("psutil")
    results = tmp_path / "results"
    driver = _smoke_driver(results, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def session() -> list[str]:
        names = []
        for proc in psutil.process_iter(["name"]):
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(proc.pid) == driver.pid:
                    names.append(proc.info["name"])
        return names

    try:
        with bounded(120):
            while not any("Agent" in n for n in session()):  # the agents are up: start-up
                assert driver.poll() is None
                time.sleep(0.1)
            driver.kill()
            driver.wait()
            start = time.monotonic()
            while session():
                assert time.monotonic() - start < 30, f"still running: {session()}"  # was 60+
                time.sleep(0.2)
    finally:
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getsid(proc.pid) == driver.pid:
                    proc.kill()


def test_an_archive_that_is_not_the_published_release_warns_and_marks_rows(
    isolated_data, real_cifar_archive, monkeypatch, caplog, cifar10
):
    """Before: an archive whose images differ from the release (a garbled or replaced JPEG in a
    well-formed archive; its sha256 is not the published one) was decoded without a word."""
    assert data_module.MODIFIED_NOTE not in cifar10.source  # the published archive: no mark
    _tiny_counts(monkeypatch)
    _small_archive(real_cifar_archive, isolated_data / real_cifar_archive.name, per_class=2)
    dataset = load_dataset("cifar10")
    assert len(dataset.train_y) == 20
    assert f"{data_module.MODIFIED_NOTE} sha256 " in dataset.source  # -> every row's data_source
    assert "is not the published release" in caplog.text
    assert data_module.ARCHIVE_SHA256[real_cifar_archive.name] in caplog.text


@pytest.mark.slow
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigterm_to_the_driver_stops_the_grid_with_its_summary(hostile_plugins, tmp_path, executor):
    """Before: SIGTERM to `bench run` on the Ray path ended in Ray's C++ stack dump, exit 134
    and no summary line. Now it stops as Ctrl-C does: running trials are stopped, the usual
    summary says what did not run, exit status 143, and a rerun resumes."""
    results = tmp_path / "results"
    argv = _hostile_grid("sleeper", results, "--executor", executor)
    driver = subprocess.Popen(
        [sys.executable, "-m", "bench.cli", *argv],
        start_new_session=True,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        with bounded(240):
            # the sleeper trial is running once its log says so
            while not any("about to misbehave" in p.read_text() for p in _trial_logs(results)):
                assert driver.poll() is None, driver.stdout.read()
                time.sleep(0.5)
            driver.send_signal(signal.SIGTERM)
            out, _ = driver.communicate()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 143, out[-3000:]
    assert "terminated (SIGTERM)" in out and "grid interrupted in" in out, out[-3000:]
    assert "0 ok, 0 failed, 1 not run" in out and "SIGTERM received at time" not in out


def _trial_logs(results: Path) -> list[Path]:
    return list(results.glob("runs/*/trials/*.log"))


@pytest.mark.slow
def test_a_trial_whose_ray_worker_dies_becomes_an_error_row(hostile_plugins, tmp_path, capsys):
    """Before: SIGKILL of the trial's Ray worker (not the trial's child) ended the grid with
    '1 not run', no row, and a raw ActorDiedError in the log; --retries did not apply."""
    results = tmp_path / "results"
    with bounded(300):
        code = main(_hostile_grid("none,parricide", results, "--executor", "ray", "--retries", "1"))
    out = capsys.readouterr().out
    assert code == 3 and "1 trial(s) failed" in out and "did not run" not in out, out[-2000:]
    rows = _rows(results)
    assert rows.loc["none", "status"] == "ok"
    row = rows.loc["parricide"]
    assert row["status"] == "error" and row["attempts"] == 2, row["error"]
    assert row["error"].startswith("WorkerDied: the Ray worker running this trial died after 2")
