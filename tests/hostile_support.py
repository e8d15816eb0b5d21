"""What the hostile-input tests share: isolated data, small archives, hostile defense
plugins, a hang guard, grid and row helpers (issue 22's cases live in tests/*/)."""

from __future__ import annotations

import dataclasses
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
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.core import settings
from bench.data import DATASETS, archives, find_source
from bench.data import cache as data_cache


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
    monkeypatch.setattr(settings, "default_data_dirs", lambda: [])
    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("BENCH_OFFLINE", "1")
    (tmp_path / "data").mkdir()
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path / "data"))
    data_cache._REUSED.clear()
    yield tmp_path / "data"
    data_cache._REUSED.clear()


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
        DATASETS, "cifar10", dataclasses.replace(DATASETS["cifar10"], split_sizes=(n_train, n_test))
    )


def _small_archive(real: Path, out_path: Path, per_class: int) -> None:
    """A well-formed copy of the real archive holding its first ``per_class`` images of each
    class and split."""
    kept: dict[tuple[str, str], int] = {}
    out = io.BytesIO()
    with tarfile.open(real, "r:gz") as src, tarfile.open(fileobj=out, mode="w") as dst:
        for member in src:
            parts = archives._split_parts(member.name) if member.isfile() else None
            if parts is not None and kept.get(parts[:2], 0) < per_class:
                kept[parts[:2]] = kept.get(parts[:2], 0) + 1
                dst.addfile(member, src.extractfile(member))
    out_path.write_bytes(gzip.compress(out.getvalue(), compresslevel=1))


def _flip(path: Path, offset_from_end: int) -> None:
    blob = bytearray(path.read_bytes())
    blob[-offset_from_end] ^= 0x02
    path.write_bytes(bytes(blob))


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


@pytest.fixture
def http_server():
    """An HTTP server on 127.0.0.1 (an open port that is not Ray)."""
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


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
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        **streams,
    )


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


class Peeker(_Hostile):
    """Looks for the ground truth: in every cached artifact, and in the process's memory."""

    name = "peeker"

    def run(self, ctx):
        import gc
        import json
        from pathlib import Path

        import torch

        from bench.core import settings

        n = len(ctx.train.labels)

        def masks(obj, depth=0):
            if isinstance(obj, torch.Tensor):
                if obj.dtype == torch.bool and obj.shape == (n,) and 0 < int(obj.sum()) < n:
                    yield obj
            elif isinstance(obj, dict) and depth < 5:
                for value in obj.values():
                    yield from masks(value, depth + 1)
            elif isinstance(obj, (list, tuple)) and depth < 5:
                for value in obj:
                    yield from masks(value, depth + 1)

        in_files = []
        for path in Path(settings.artifacts_dir()).rglob("*.pt"):
            try:
                in_files += list(masks(torch.load(path, weights_only=False)))
            except Exception:
                pass
        in_memory = [m for obj in gc.get_objects() for m in masks(obj)]
        found = in_files + in_memory
        with open(os.environ["HOSTILE_PEEKED"], "w") as f:
            json.dump({"in_files": len(in_files), "in_memory": len(in_memory)}, f)
        flagged = found[0].nonzero().flatten() if found else None
        return DefenseOutput(model=ctx.make_model(), flagged=flagged)


class Regicide(_Hostile):
    name = "regicide"

    def misbehave(self):
        pid = os.getpid()
        while pid > 1:  # up to the `bench run` driving this trial
            with open(f"/proc/{pid}/stat") as f:
                pid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"bench.cli" in f.read():
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
    "peeker": "Peeker",
    "regicide": "Regicide",
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
    paths = [str(root), str(Path(__file__).parents[2]), os.environ.get("PYTHONPATH", "")]
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


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


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


def _trial_logs(results: Path) -> list[Path]:
    return list(results.glob("runs/*/trials/*.log"))
