"""Plugins: discovery, validation before a grid, contract checks inside a trial, tooling."""

import ast
import dataclasses
import importlib.util
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from attacks.badnets import BadNets
from bench.api import Defense, DefenseContext, DefenseOutput, LabelledImages
from bench.cli import build_parser
from bench.cli.plugins import check_defense, scaffold_defense
from bench.core.models import build_model
from bench.errors import BenchError
from bench.grid import registry
from bench.grid.checks import PluginError, check_component_class
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.trial.defend import defense_context
from bench.trial.pipeline import run_trial_safely

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class FakeEntryPoint:
    def __init__(self, name, value, loader):
        self.name, self.value, self._loader = name, value, loader

    def load(self):
        return self._loader()


def _entry(kind, name, obj=None, package="bench-fake", error=None):
    def loader():
        if error:
            raise error
        return obj

    ep = FakeEntryPoint(name, f"fake_module:{name}", loader)
    return registry.Entry(kind, name, ep.value, package, "9.9", ep)


@pytest.fixture
def fake_defenses(monkeypatch):
    """Register extra defense entries (as if installed by another package) for one test."""
    extra: dict[str, registry.Entry] = {}
    original = registry.entries

    def entries(kind):
        found = original(kind)
        return {**found, **extra} if kind == "defense" else found

    monkeypatch.setattr(registry, "entries", entries)
    return extra


# --------------------------------------------------------------------------- static checks


class _Good(Defense):
    name = "good"

    def run(self, ctx):
        return DefenseOutput(model=ctx.make_model())


def test_a_well_formed_defense_passes():
    check_component_class(_Good, "defense", "defense 'good'")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": ""}, "'name' must be a non-empty str"),
        ({"needs": frozenset({"gpu_cluster"})}, "'needs' must be a frozenset drawn from"),
        ({"needs": ["clean_subset"]}, "'needs' must be a frozenset"),
        ({"Params": dict}, "'Params' must be a dataclass"),
        ({"reconstructed": "yes"}, "'reconstructed' must be a bool"),
    ],
)
def test_wrong_attributes_are_named(changes, message):
    broken = type("Broken", (_Good,), changes)
    with pytest.raises(PluginError, match=message) as err:
        check_component_class(broken, "defense", "defense 'broken' from package bench-x")
    assert "bench-x" in str(err.value)


def test_parameters_without_defaults_are_refused():
    @dataclass(frozen=True)
    class Params:
        strength: float

    broken = type("Broken", (_Good,), {"Params": Params})
    with pytest.raises(PluginError, match=r"\['strength'\] have none"):
        check_component_class(broken, "defense", "defense 'broken'")


def test_missing_run_is_named():
    class NoRun(Defense):
        name = "norun"

    with pytest.raises(PluginError, match=r"abstract method\(s\) not implemented: \['run'\]"):
        check_component_class(NoRun, "defense", "defense 'norun'")


def test_attack_label_policy_is_checked():
    broken = type("Weird", (BadNets,), {"label_policy": "sometimes"})
    with pytest.raises(PluginError, match="'label_policy' must be"):
        check_component_class(broken, "attack", "attack 'weird'")


# --------------------------------------------------------------------------- discovery


def test_import_failure_names_plugin_and_package(fake_defenses):
    fake_defenses["shaky"] = _entry("defense", "shaky", error=ImportError("no module named x"))
    with pytest.raises(
        BenchError,
        match=r"defense 'shaky' from package bench-fake .* failed to "
        r"import: ImportError: no module named x",
    ):
        expand_grid(with_overrides(load_preset("smoke"), defenses=["shaky"]))


def test_non_defense_object_is_refused(fake_defenses):
    fake_defenses["func"] = _entry("defense", "func", obj=lambda ctx: None)
    with pytest.raises(BenchError, match=r"is not a subclass of bench\.api\.Defense"):
        registry.create("defense", "func")


def test_entry_point_name_must_match_class_name(fake_defenses):
    fake_defenses["alias"] = _entry("defense", "alias", obj=_Good)
    with pytest.raises(BenchError, match="declares name 'good'; the entry point registers 'alias'"):
        registry.create("defense", "alias")


def test_duplicate_name_from_two_packages_is_refused(monkeypatch):
    class Dist:
        def __init__(self, name):
            self.metadata, self.version = {"Name": name}, "1.0"

    def fake_entry_points(group):
        a = FakeEntryPoint("none", "pkg_a:NoDefense", lambda: None)
        b = FakeEntryPoint("none", "pkg_b:Other", lambda: None)
        a.dist, b.dist = Dist("backdoor-leaderboard"), Dist("bench-impostor")
        return [a, b]

    monkeypatch.setattr(registry.metadata, "entry_points", fake_entry_points)
    with pytest.raises(
        BenchError,
        match=r"registered twice: by backdoor-leaderboard "
        r"\(pkg_a:NoDefense\) and by bench-impostor",
    ):
        registry.entries("defense")


def test_bad_hyperparameters_name_the_plugin(fake_defenses):
    @dataclass(frozen=True)
    class Params:
        rate: float = 0.1

        def __post_init__(self):
            if self.rate > 1:
                raise ValueError("rate must be <= 1")

    fake_defenses["tuned"] = _entry(
        "defense", "tuned", obj=type("Tuned", (_Good,), {"name": "tuned", "Params": Params})
    )
    preset = with_overrides(load_preset("smoke"), defenses=["tuned"])
    with pytest.raises(BenchError, match="defense 'tuned': invalid parameters: rate must be <= 1"):
        expand_grid(dataclasses.replace(preset, defense_params={"tuned": {"rate": 2.0}}))
    with pytest.raises(BenchError, match=r"defense 'tuned': unknown parameter\(s\) \['rte'\]"):
        expand_grid(dataclasses.replace(preset, defense_params={"tuned": {"rte": 0.5}}))


# --------------------------------------------------------------------------- inside a trial


class _NanNet(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes

    def forward(self, x):
        return torch.full((len(x), self.num_classes), float("nan"))


def _defense_returning(name, make_output):
    cls = type(
        name.capitalize(),
        (Defense,),
        {
            "name": name,
            "run": lambda self, ctx: make_output(ctx),
        },
    )
    return cls


MISBEHAVING = {
    "too_many_outputs": (
        lambda ctx: DefenseOutput(model=nn.Sequential(nn.Flatten(), nn.Linear(3072, 11))),
        "must output (8, 10) logits for 10 classes, got (8, 11)",
    ),
    "nan_outputs": (
        lambda ctx: DefenseOutput(model=_NanNet(ctx.num_classes)),
        "outputs NaN or infinite logits",
    ),
    "float_transform": (
        lambda ctx: DefenseOutput(model=ctx.make_model(), input_transform=lambda x: x.float()),
        "it changed dtype torch.uint8 -> torch.float32",
    ),
    "shape_transform": (
        lambda ctx: DefenseOutput(model=ctx.make_model(), input_transform=lambda x: x[:, :, :16]),
        "it changed shape (8, 3, 32, 32) -> (8, 3, 16, 32)",
    ),
    "flags_out_of_range": (
        lambda ctx: DefenseOutput(
            model=ctx.make_model(), flagged=torch.tensor([0, len(ctx.train.labels)])
        ),
        "flagged indices must lie in [0, 1000); got range [0, 1000]",
    ),
    "raises": (
        lambda ctx: (_ for _ in ()).throw(RuntimeError("out of ideas")),
        "RuntimeError: out of ideas",
    ),
}


@pytest.mark.parametrize("name", sorted(MISBEHAVING))
def test_a_misbehaving_defense_becomes_an_error_row(fake_defenses, name):
    make_output, message = MISBEHAVING[name]
    fake_defenses[name] = _entry("defense", name, obj=_defense_returning(name, make_output))
    spec = expand_grid(with_overrides(load_preset("smoke"), defenses=[name]))[0]
    row = run_trial_safely(spec)
    assert row["status"] == "error"
    assert message in row["error"]
    if name != "raises":
        assert f"defense '{name}' (bench-fake)" in row["error"]


def test_check_defense_reports_what_to_fix(fake_defenses):
    fake_defenses["nan_outputs"] = _entry(
        "defense",
        "nan_outputs",
        obj=_defense_returning("nan_outputs", MISBEHAVING["nan_outputs"][0]),
    )
    lines: list[str] = []
    # Registered in this process only: a child process would not find it.
    assert check_defense("nan_outputs", out=lines.append, isolated=False) is False
    text = "\n".join(lines)
    assert "FAIL  smoke trial" in text and "outputs NaN or infinite logits" in text
    assert "fix the FAIL lines above" in text
    good: list[str] = []
    assert check_defense("none", out=good.append) is True
    assert good[-1] == "all checks passed"
    assert not any(line.lstrip().startswith("| ") for line in good)  # the log: --verbose


def test_check_defense_verbose_shows_the_trial_log(fake_defenses):
    assert build_parser().parse_args(["check-defense", "x", "--verbose"]).show_log is True
    loud: list[str] = []
    assert check_defense("none", out=loud.append, verbose=True) is True
    log = [line.strip() for line in loud if line.lstrip().startswith("| ")]
    assert any(line.startswith("| attack badnets:") for line in log)
    assert any(line.startswith("| done: CA") for line in log)
    # a failing trial shows its last log lines even without --verbose
    fake_defenses["raises"] = _entry(
        "defense", "raises", obj=_defense_returning("raises", MISBEHAVING["raises"][0])
    )
    failed: list[str] = []
    assert check_defense("raises", out=failed.append, isolated=False) is False
    assert any("the trial log's last lines" in line for line in failed)
    assert any("| trial" in line or "| attack badnets" in line for line in failed)


# --------------------------------------------------------------------------- scaffolding


def test_new_defense_scaffold_is_a_valid_plugin(tmp_path, monkeypatch):
    root = scaffold_defense("my_filter", tmp_path)
    meta = tomllib.loads((root / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "bench-my-filter"
    assert meta["project"]["entry-points"]["bench.defenses"] == {
        "my_filter": "bench_my_filter:MyFilterDefense"
    }
    spec = importlib.util.spec_from_file_location(
        "bench_my_filter", root / "bench_my_filter" / "__init__.py"
    )
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_my_filter", module)
    spec.loader.exec_module(module)
    check_component_class(module.MyFilterDefense, "defense", "scaffold")
    # it runs as written: the template follows the API
    images = torch.randint(0, 256, (32, 3, 32, 32), dtype=torch.uint8)
    ctx = defense_context(
        LabelledImages(images, torch.arange(32) % 10),
        num_classes=10,
        make_model=lambda: build_model("cnn_small", 10),
        device=torch.device("cpu"),
        train_config=dataclasses.replace(load_preset("smoke").train, epochs=1),
        report=lambda line: None,
    )
    out = module.MyFilterDefense().run(ctx)
    assert set(out.metrics) == {"final_loss"} and set(ctx._harness.stage_seconds) == {"train"}
    with pytest.raises(BenchError, match="already exists"):
        scaffold_defense("my_filter", tmp_path)
    with pytest.raises(BenchError, match="already registered"):
        scaffold_defense("none", tmp_path)
    with pytest.raises(BenchError, match="must be lowercase"):
        scaffold_defense("My-Filter", tmp_path)


# --------------------------------------------------------------------------- the example package


def _bench(*args, env=None):
    return subprocess.run(
        [str(BIN / "bench"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def _pip(*args):
    env = {**os.environ, "PIP_FIND_LINKS": "", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    subprocess.run(
        [sys.executable, "-m", "pip", *args],
        check=True,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_example_plugin_installs_runs_and_lands_on_the_leaderboard(tmp_path):
    _pip("install", "--no-deps", "--no-build-isolation", str(ROOT / "examples/defense-plugin"))
    try:
        listing = _bench("list").stdout
        assert (
            "finetune     bench-finetune 0.1.0  (needs backdoored_model, clean_subset)" in listing
        )
        # `none` and `finetune` both need the cell's backdoored model and run at the same time
        # (two CPUs, two trials): it is trained once, by one of them.
        artifacts = tmp_path / "artifacts"
        run = _bench(
            "run",
            "--preset",
            "smoke",
            "--defenses",
            "none,finetune",
            "--results-dir",
            str(tmp_path),
            env={"BENCH_ARTIFACT_DIR": str(artifacts)},
        )
        assert run.returncode == 0, run.stdout + run.stderr
        rows = pd.read_parquet(tmp_path / "results.parquet")
        assert sorted(rows["backdoored_model_cache"]) == ["built", "hit"]
        assert rows["started_at"].max() < rows["finished_at"].min(), "trials did not overlap"
        assert len(list(artifacts.glob("backdoored_model/*.pt"))) == 1
        assert _bench("leaderboard", "--results-dir", str(tmp_path)).returncode == 0
        board = (tmp_path / "LEADERBOARD.md").read_text()
        assert "| finetune [plugin: bench-finetune 0.1.0] |" in board
    finally:
        _pip("uninstall", "-y", "bench-finetune")
    assert "finetune" not in _bench("list").stdout


# --------------------------------------------------------------------------- the example plugins

EXAMPLES = {
    "finetune": ("defense-plugin", "bench_finetune", "FineTune"),
    "fineprune": ("fine-pruning", "bench_fineprune", "FinePruning"),
}


def _example(name: str, monkeypatch) -> type:
    """The example plugin's class, imported from examples/ without installing it."""
    folder, module_name, cls = EXAMPLES[name]
    path = ROOT / "examples" / folder / module_name / "__init__.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, module_name, module)
    spec.loader.exec_module(module)
    return getattr(module, cls)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_example_plugins_pass_check_defense(name, fake_defenses, monkeypatch):
    fake_defenses[name] = _entry("defense", name, obj=_example(name, monkeypatch))
    lines: list[str] = []
    passed = check_defense(name, out=lines.append, verbose=True, isolated=False)
    assert passed is True, "\n".join(lines)
    if name == "fineprune":
        text = "\n".join(lines)
        assert '"finetune_epochs": 1' in text  # the plugin's own smoke budget
        assert "| fineprune: pruned" in text and '"channels": 192' in text


def _fineprune_context(cifar10, model_name: str, n: int):
    sub = cifar10.subset(n, 10, seed=0)
    torch.manual_seed(0)
    backdoored = build_model(model_name, 10, sub.info.mean, sub.info.std)
    clean = LabelledImages(sub.train_x, sub.train_y)
    ctx = defense_context(
        clean,
        num_classes=10,
        make_model=lambda: build_model(model_name, 10, sub.info.mean, sub.info.std),
        device=torch.device("cpu"),
        clean_subset=clean,
        backdoored_model=lambda: backdoored,
        report=lambda line: None,
    )
    return ctx, sub


def test_fine_pruning_stops_before_the_held_out_accuracy_drops_too_far(cifar10, monkeypatch):
    """Dormant channels first, in steps, keeping the last step within the allowed drop."""
    ctx, _ = _fineprune_context(cifar10, "cnn_small", 60)
    activity = torch.arange(192.0).flip(0)  # channel 191 is the least active
    monkeypatch.setattr(DefenseContext, "channel_activations", lambda *a: activity.expand(5, 192))
    scripted = iter([0.80, 0.80, 0.79, 0.77, 0.75, 0.90])  # unpruned, then 10, 20, 30, 40 pruned
    monkeypatch.setattr(DefenseContext, "evaluate", lambda *a, **k: next(scripted))
    defense = _example("fineprune", monkeypatch)(finetune_epochs=0, max_accuracy_drop=0.04)
    out = defense.run(ctx)
    assert out.metrics == {
        "channels": 192,
        "pruned": 30,
        "held_out_accuracy_before": 0.80,
        "held_out_accuracy_pruned": 0.77,
    }
    assert torch.equal(
        torch.nonzero(out.model.mask.flatten() == 0).flatten(), torch.arange(162, 192)
    )


def test_fine_pruning_runs_on_a_preact_resnet(cifar10, monkeypatch):
    """The paper preset's architecture, from the model contract alone: layer4's output channels
    are pruned and stay at zero through fine-tuning."""
    ctx, sub = _fineprune_context(cifar10, "preact_resnet18", 64)
    defense = _example("fineprune", monkeypatch)(
        finetune_epochs=1, prune_step=0.25, max_accuracy_drop=0.5
    )
    out = defense.run(ctx)
    assert out.metrics["channels"] == 512 and out.metrics["pruned"] % 128 == 0
    pruned = ~out.model.mask.flatten().bool()
    assert int(pruned.sum()) == out.metrics["pruned"] > 0
    with torch.no_grad():
        features = out.model.model.feature_map(sub.test_x[:4].float() / 255) * out.model.mask
    assert features[:, pruned].abs().max() == 0
    assert set(ctx._harness.stage_seconds) == {"prune", "finetune"}


def test_the_examples_use_only_the_public_api_and_fine_pruning_stays_short():
    source = (ROOT / "examples/fine-pruning/bench_fineprune/__init__.py").read_text()
    assert len(source.splitlines()) < 100 and "_hook" not in source  # no forward hooks
    for folder, module_name, _ in EXAMPLES.values():
        tree = ast.parse((ROOT / "examples" / folder / module_name / "__init__.py").read_text())
        used = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        used |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert {m for m in used if m and m.split(".")[0] in ("bench", "defenses")} == {"bench.api"}
