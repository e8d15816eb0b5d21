"""The reporting layer reads a results table and nothing else, and bench/ has no import cycle.

The import graph is built statically with ``ast``: every ``import`` / ``from ... import`` in every
module of bench/, attacks/ and defenses/ (function-level imports included, since a lazy import
closes a cycle as surely as a top-level one), resolved to the project module it names (``from
bench.report import page`` is the module bench.report.page; ``from bench.schema import Col`` is
bench.schema) plus the packages Python imports on the way (bench.report for bench.report.page).
A depth-first search then looks for a back edge.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd

from bench.report.render import render
from bench.schema import upgrade

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("bench", "attacks", "defenses")
#: What the reporting layer may import from the project.
REPORT_MAY_IMPORT = {"bench", "bench.schema", "bench.errors"}
#: Third-party modules the reporting layer must not import (execution, not reporting).
REPORT_MUST_NOT = {"torch", "torchvision", "ray", "PIL"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str) -> set[str]:
    """Every module name ``path`` imports (absolute, relative imports resolved)."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([node.module] if node.module else [])])
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}  # may be submodules
    return found


def import_graph() -> dict[str, set[str]]:
    """Project module -> the project modules it imports (directly)."""
    files = {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        edges = set()
        for target in _imports(path, name):
            while target and target not in files:  # bench.schema.Col -> bench.schema
                target = target.rpartition(".")[0]
            # Importing a.b.c imports a and a.b first; the importer's own packages are loaded.
            parts = target.split(".") if target else []
            for i in range(1, len(parts) + 1):
                module = ".".join(parts[:i])
                if module != name and not name.startswith(module + "."):
                    edges.add(module)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path (first module repeated at the end), or [] when acyclic."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_the_cycle_finder_finds_a_cycle_and_the_graph_has_the_known_edges():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) == []
    graph = import_graph()
    assert "bench.schema" in graph["bench.report.aggregate"]
    assert "bench.report.page" in graph["bench.report.render"]  # `from bench.report import page`
    assert "bench.report" in graph["bench.cli.commands"]  # a lazy import in a function counts


def test_no_import_cycle_in_the_project():
    cycle = find_cycle(import_graph())
    assert not cycle, "import cycle: " + " -> ".join(cycle)


#: The house's wings, lowest first. A module may import its own wing and the wings of lower
#: layers; wings of one layer do not import each other. `report` sits low: it reads only the
#: row schema (and the test below keeps it to that).
LAYERS = [
    ("bench.errors",),
    ("bench.schema",),
    ("bench.core", "bench.report"),
    ("bench.data", "bench.store"),
    ("bench.spec",),
    ("bench.api",),
    ("attacks", "defenses"),
    ("bench.grid",),
    ("bench.trial",),
    ("bench.run",),
    ("bench.cli",),
]


def _wing(module: str) -> tuple[int, str] | None:
    for layer, wings in enumerate(LAYERS):
        for wing in wings:
            if module == wing or module.startswith(wing + "."):
                return layer, wing
    return None  # the bench package itself


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Imports that run back up the house (or sideways between wings of one layer)."""
    stray = []
    for module, targets in sorted(graph.items()):
        here = _wing(module)
        for target in sorted(targets):
            there = _wing(target)
            if here is None or there is None or there[1] == here[1]:
                continue
            if there[0] >= here[0]:
                stray.append(f"{module} -> {target}")
    return stray


def test_every_module_belongs_to_a_wing_and_no_import_runs_back_up():
    graph = import_graph()
    homeless = sorted(m for m in graph if _wing(m) is None and m != "bench")
    assert not homeless, f"modules in no wing: {homeless}"
    assert upward_imports({"bench.core.train": {"bench.trial.cell"}}) == [
        "bench.core.train -> bench.trial.cell"
    ]
    sideways = upward_imports({"bench.data.cache": {"bench.spec"}})
    assert sideways == ["bench.data.cache -> bench.spec"]
    stray = upward_imports(graph)
    assert not stray, "imports running back up the house:\n" + "\n".join(stray)


def test_the_report_layer_imports_only_the_schema_and_itself():
    report = sorted((ROOT / "bench" / "report").rglob("*.py"))
    assert len(report) >= 8
    graph = import_graph()
    for path in report:
        name = _module_name(path)
        imported = _imports(path, name)
        stray = {m for m in graph[name] if not m.startswith("bench.report")} - REPORT_MAY_IMPORT
        assert not stray, f"{name} imports {sorted(stray)}"
        heavy = {m for m in imported if m.split(".")[0] in REPORT_MUST_NOT}
        assert not heavy, f"{name} imports {sorted(heavy)}"


def _results(directory: Path) -> None:
    rows = [
        {
            "trial_id": f"{defense}-{attack}",
            "status": "ok",
            "dataset": "cifar10",
            "preset": "quick",
            "model": "cnn_small",
            "ratio": 0.1,
            "attack": attack,
            "defense": defense,
            "seed": 0,
            "ca": 0.8,
            "asr": asr,
            "ra": 0.1,
            "train_seconds": 10.0,
            "device": "cpu",
            "git_rev": "abc",
            "finished_at": 1.0,
        }
        for defense, attack, asr in [
            ("none", "badnets", 0.9),
            ("abl", "badnets", 0.1),
            ("none", "blended", 0.95),
            ("abl", "blended", 0.3),
        ]
    ]
    directory.mkdir(parents=True, exist_ok=True)
    upgrade(pd.DataFrame(rows)).to_parquet(directory / "results.parquet", index=False)


# Runs `bench leaderboard` in a fresh interpreter and reports which execution modules it loaded.
_PROBE = """
import sys
from bench.cli import main
rc = main(["leaderboard", "--results-dir", sys.argv[1]])
execution = ("torch", "torchvision", "ray", "attacks", "defenses", "bench.data", "bench.grid",
             "bench.trial", "bench.run", "bench.cli.gallery")
loaded = [m for m in sys.modules if any(m == e or m.startswith(e + ".") for e in execution)]
print("LOADED", sorted(loaded))
sys.exit(rc)
"""


def test_leaderboard_renders_from_the_table_alone_offline_without_data(tmp_path):
    results, empty = tmp_path / "results", tmp_path / "no-data"
    empty.mkdir()
    _results(results)
    env = {
        **os.environ,
        "BENCH_DATA_DIR": str(empty),
        "BENCH_OFFLINE": "1",
        "BENCH_CACHE_DIR": str(tmp_path / "cache"),
        "PYTHONPATH": str(ROOT),
    }
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, str(results)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "LOADED []" in done.stdout, done.stdout  # no torch, no dataset, no registry
    assert "bench attacks gallery" in done.stdout  # says how to get the gallery
    for name in ("LEADERBOARD.md", "TIMING.md", "index.html", "leaderboard.csv"):
        assert (results / name).stat().st_size > 0, name
    assert {p.name for p in (results / "plots").iterdir()} >= {
        "asr_heatmap_cifar10_quick_r0.1.png",
        "der_bars_cifar10_quick_r0.1.png",
    }
    assert not (results / "plots" / "attacks.png").exists()  # never built here
    assert "Attack gallery" not in (results / "index.html").read_text()
    assert not (tmp_path / "cache").exists()  # nothing decoded or cached


def test_an_existing_gallery_is_embedded_and_left_alone(tmp_path):
    import base64

    _results(tmp_path)
    df = pd.read_parquet(tmp_path / "results.parquet")
    (tmp_path / "plots").mkdir()
    image = _tiny_png()
    (tmp_path / "plots" / "attacks.png").write_bytes(image)
    rendered = render(df, tmp_path)
    assert rendered.gallery == tmp_path / "plots" / "attacks.png"
    assert (tmp_path / "plots" / "attacks.png").read_bytes() == image
    page = rendered.page.read_text()
    assert "Attack gallery" in page and base64.b64encode(image).decode() in page


def _tiny_png() -> bytes:
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(0.5, 0.5))
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
