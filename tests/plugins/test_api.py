"""The public API for defense authors (bench.api): what the built-in defenses may import, the
context's tools (seed streams, stage timing, clean split, evaluation, feature activations), the
model contract, defense-reported metrics, per-preset budgets, and the reference listing it all."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from torch import nn

from bench import api
from bench.api import Defense, DefenseContext, DefenseOutput, LabelledImages, TrainConfig
from bench.cli.plugins import check_presets
from bench.core.models import build_model, model_names
from bench.core.train import Trainer, TrainHooks, predict
from bench.errors import BenchError
from bench.grid import registry
from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.schema import Col
from bench.trial.defend import defense_context
from bench.trial.pipeline import run_trial_safely
from tests.plugins.test_plugins import _entry, fake_defenses  # noqa: F401 (a fixture)

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = (ROOT / "docs" / "plugins.md").read_text()
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("two_threads")


# --------------------------------------------------------------------------- the one API


def _defense_modules() -> list[str]:
    return sorted(f"defenses.{p.stem}" for p in (ROOT / "defenses").glob("*.py"))


@pytest.mark.parametrize("module", _defense_modules())
def test_builtin_defenses_use_nothing_from_bench_but_the_api(module):
    """Imports and attribute accesses in the source, and what the imported module holds."""
    path = ROOT / (module.replace(".", "/") + ".py")
    stray = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "bench":
                stray += [f"from bench import {a.name}" for a in node.names if a.name != "api"]
            elif node.module.startswith("bench.") and node.module != "bench.api":
                stray.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Import):
            stray += [
                f"import {a.name}"
                for a in node.names
                if a.name.split(".")[0] == "bench" and a.name != "bench.api"
            ]
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "bench"
            and node.attr != "api"
        ):
            stray.append(f"bench.{node.attr}")
    assert not stray, f"{module} uses {stray}; import it from bench.api"
    public = {id(getattr(api, name)) for name in api.__all__} | {id(api)}
    loaded = importlib.import_module(module)
    for name, value in vars(loaded).items():
        if inspect.ismodule(value):
            home = value.__name__
        elif inspect.isclass(value) or inspect.isfunction(value):
            home = value.__module__
        else:
            continue  # values, whatever made them
        if home.split(".")[0] == "bench":
            assert id(value) in public, f"{module}.{name} comes from {home}, not bench.api"


def test_every_public_name_has_a_docstring():
    for name in api.__all__:
        obj = getattr(api, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue  # NEEDS: documented by its comment and the reference
        doc = obj.__doc__ or ""
        assert doc.strip() and not doc.startswith(f"{name}("), f"{name} has no docstring"
    for cls in (Defense, DefenseContext, DefenseOutput, LabelledImages):
        attributes = (cls.__doc__ or "").split("Attributes:")[-1]
        for field in _public_fields(cls):
            assert re.search(rf"^\s+{field}:", attributes, re.M), f"{cls.__name__}.{field}"
        for method in _public_methods(cls):
            assert inspect.getdoc(getattr(cls, method)), f"{cls.__name__}.{method} has no doc"


def _public_fields(cls: type) -> list[str]:
    if dataclasses.is_dataclass(cls):
        return [f.name for f in dataclasses.fields(cls) if not f.name.startswith("_")]
    return ["name", "needs", "Params", "params", "presets", "reconstructed"]


def _public_methods(cls: type) -> list[str]:
    return [
        name
        for name, value in vars(cls).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
        and name != "Params"
    ]  # fmt: skip


def test_the_reference_lists_every_public_name():
    """docs/plugins.md names everything a defense author can use."""
    missing = [f"bench.api.{n}" for n in api.__all__ if f"`{n}" not in REFERENCE]
    for cls, prefix in ((DefenseContext, "ctx."), (DefenseOutput, ""), (Defense, "")):
        for name in _public_fields(cls) + _public_methods(cls):
            if f"`{prefix}{name}" not in REFERENCE:
                missing.append(f"{cls.__name__}.{name}")
    members = {
        "TrainConfig": [f.name for f in dataclasses.fields(TrainConfig)],
        "Augment": [f.name for f in dataclasses.fields(api.Augment)],
        "TrainHooks": [n for n in vars(TrainHooks) if not n.startswith("_")],
        "Batch": [f.name for f in dataclasses.fields(api.Batch)],
        "TrainStats": [f.name for f in dataclasses.fields(api.TrainStats)],
        "model contract": [
            f"model.{n}" for n in ("feature_map", "classify", "head", "replace_head")
        ],
    }
    for owner, names in members.items():
        missing += [f"{owner}: {n}" for n in names if f"`{n}" not in REFERENCE]
    fit_args = inspect.signature(Trainer.fit).parameters
    missing += [f"Trainer.fit({a})" for a in fit_args if a != "self" and f"`{a}" not in REFERENCE]
    assert not missing, f"docs/plugins.md does not mention {missing}"
    assert "docs/plugins.md" in (ROOT / "README.md").read_text()


# --------------------------------------------------------------------------- the context


def _context(n: int = 64, seed: int = 0, **kw) -> DefenseContext:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.arange(n) % 10
    return defense_context(
        LabelledImages(images, labels),
        num_classes=10,
        make_model=lambda: build_model("cnn_small", 10),
        device=CPU,
        seed=seed,
        train_config=TrainConfig(epochs=1, batch_size=32),
        report=lambda line: None,
        **kw,
    )


def test_seed_streams_are_named_reproducible_and_independent():
    ctx = _context()
    a, again, b = (
        torch.randint(2**62, (4,), generator=ctx.rng(n))
        for n in ("unlearning", "unlearning", "isolation")
    )
    assert torch.equal(a, again) and not torch.equal(a, b)
    assert not torch.equal(
        torch.randint(2**62, (4,), generator=_context(seed=1).rng("unlearning")), a
    )
    # Pinned: a stream's seed must not change between harness versions (cached stages, numbers).
    assert api.stream_seed(0, "isolation") == 6082608012549177634


def test_fit_draws_from_its_stream_and_defaults_to_the_poisoned_set():
    ctx = _context()

    def trained(stream: str) -> torch.Tensor:
        torch.manual_seed(0)
        model = ctx.make_model()
        stats = ctx.fit(model, stream=stream)
        assert stats.images == 64 and model.training
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(trained("finetune"), trained("finetune"))
    assert not torch.equal(trained("finetune"), trained("unlearning"))
    with pytest.raises(ValueError, match="both images and labels"):
        ctx.fit(ctx.make_model(), images=ctx.train.images)


def test_stage_times_add_up_per_name():
    ctx = _context()
    for _ in range(2):
        with ctx.stage("prune"):
            torch.ones(1000).sum()
    with pytest.raises(RuntimeError), ctx.stage("fails"):
        raise RuntimeError("timed all the same")
    stages = ctx._harness.stage_seconds
    assert set(stages) == {"prune", "fails"} and stages["prune"] > 0


def test_clean_split_holds_out_a_fixed_disjoint_part():
    ids = torch.arange(50)  # image i is all i, labelled i % 10
    clean = LabelledImages(ids.view(-1, 1, 1, 1).expand(50, 3, 32, 32).to(torch.uint8), ids % 10)
    ctx = _context(clean_subset=clean)
    rest, held = ctx.clean_split(0.2)
    assert (len(rest), len(held)) == (40, 10)
    seen = torch.cat([rest.images[:, 0, 0, 0], held.images[:, 0, 0, 0]]).long()
    assert sorted(seen.tolist()) == list(range(50))  # every clean image, once
    assert torch.equal(held.labels, held.images[:, 0, 0, 0].long() % 10)  # labels travel along
    again = ctx.clean_split(0.2)[1]
    assert torch.equal(again.images, held.images) and torch.equal(again.labels, held.labels)
    with pytest.raises(ValueError, match="val_fraction"):
        ctx.clean_split(1.0)
    with pytest.raises(BenchError, match="without declaring 'clean_subset'"):
        _context().clean_split(0.2)


def test_evaluate_and_channel_activations():
    ctx = _context()
    model = build_model("preact_resnet18", 10)
    images, labels = ctx.train.images[:16], ctx.train.labels[:16]
    expected = (predict(model, images) == labels).float().mean().item()
    model.train()
    assert ctx.evaluate(model, images, labels) == pytest.approx(expected)
    assert model.training  # the mode is left as it was
    acts = ctx.channel_activations(model, images, batch_size=5)
    with torch.no_grad():
        direct = model.eval().feature_map(images.float() / 255).mean((2, 3))
    assert acts.shape == (16, 512) and torch.allclose(acts, direct, atol=1e-5)


def test_an_unknown_member_points_at_the_reference_and_the_context_is_frozen():
    ctx = _context()
    with pytest.raises(AttributeError, match=r"no attribute 'trainer' \(docs/plugins\.md\)"):
        ctx.trainer  # noqa: B018
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.seed = 3


# --------------------------------------------------------------------------- the model contract


@pytest.mark.parametrize("name", model_names())
def test_every_model_exposes_its_features_and_head(name):
    torch.manual_seed(0)
    model = build_model(name, 7, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        features = model.feature_map(x)
        assert features.dim() == 4 and features.shape[1] == model.head.in_features
        assert torch.equal(model.classify(features), model(x))
        zeroed = features.clone()
        zeroed[:, features.amax(dim=(0, 2, 3)).argmax()] = 0  # pruning a (live) channel is
        # zeroing it before classify
        assert not torch.equal(model.classify(zeroed), model(x))
        head = model.replace_head(nn.Identity())
        assert isinstance(head, nn.Linear) and head.out_features == 7
        assert model(x).shape == (2, head.in_features)  # pooled features
        model.replace_head(head)
        assert torch.equal(
            model.classify(features), model.head(model.net.pool(features).flatten(1))
        )
        maps = model.stage_maps(x)  # named stages, in order, at 32, 16, 8 and 4 px
        assert list(maps) == ["stage1", "stage2", "stage3", "stage4"]
        assert [m.shape[-1] for m in maps.values()] == [32, 16, 8, 4]
        assert torch.allclose(maps["stage4"], features) and maps["stage4"].shape == features.shape


# --------------------------------------------------------------------------- metrics and budgets


class _Reporting(Defense):
    name = "reporting"
    presets: ClassVar = {"smoke": {"rate": 0.5}}

    @dataclass(frozen=True)
    class Params:
        rate: float = 0.1
        metrics: str = "{}"  # JSON: what run reports

        def __post_init__(self) -> None:
            if self.rate > 1:
                raise ValueError("rate must be <= 1")

    def run(self, ctx: DefenseContext) -> DefenseOutput:
        with ctx.stage("idle"):
            model = ctx.make_model()
        return DefenseOutput(model=model, metrics=json.loads(self.params.metrics))


def _smoke(defense: str, **params):
    preset = with_overrides(load_preset("smoke"), defenses=[defense])
    if params:
        preset = dataclasses.replace(preset, defense_params={defense: params})
    return expand_grid(preset)[0]


def test_metrics_and_stages_land_in_the_row(fake_defenses):  # noqa: F811
    fake_defenses["reporting"] = _entry("defense", "reporting", obj=_Reporting)
    metrics = {"relabelled": 12, "loss_after": 0.25}
    row = run_trial_safely(_smoke("reporting", metrics=json.dumps(metrics)))
    assert row[Col.status] == "ok", row[Col.error]
    assert json.loads(row[Col.defense_metrics]) == metrics
    assert set(json.loads(row[Col.stage_seconds])) == {"idle"}


@pytest.mark.parametrize(
    ("metrics", "message"),
    [
        ({"Loss": 1.0}, "metric key 'Loss' must be snake_case"),
        ({"loss": float("nan")}, "metric 'loss' is nan; report finite numbers"),
        ({"loss": "low"}, "metric 'loss' must be a number, got str"),
        ({f"m{i}": i for i in range(33)}, "holds 33 entries; report at most 32"),
    ],
)
def test_bad_metrics_become_an_error_row_naming_the_plugin(fake_defenses, metrics, message):  # noqa: F811
    fake_defenses["reporting"] = _entry("defense", "reporting", obj=_Reporting)
    row = run_trial_safely(_smoke("reporting", metrics=json.dumps(metrics)))
    assert row[Col.status] == "error" and message in row[Col.error]
    assert "defense 'reporting' (bench-fake)" in row[Col.error]


def test_a_plugin_brings_its_own_preset_budgets(fake_defenses):  # noqa: F811
    fake_defenses["reporting"] = _entry("defense", "reporting", obj=_Reporting)
    assert _smoke("reporting").defense_params["rate"] == 0.5  # the plugin's smoke budget
    assert _smoke("reporting", rate=0.2).defense_params["rate"] == 0.2  # a preset section wins
    quick = with_overrides(load_preset("quick"), defenses=["reporting"], attacks=["badnets"])
    assert expand_grid(quick)[0].defense_params["rate"] == 0.1  # no budget: the defaults
    broken = type("Broken", (_Reporting,), {"presets": {"smoke": {"rate": 2.0}}})
    fake_defenses["reporting"] = _entry("defense", "reporting", obj=broken)
    with pytest.raises(BenchError, match="defense 'reporting': invalid parameters: rate must"):
        _smoke("reporting")
    with pytest.raises(BenchError, match=r"presets\['smoke'\]: .*rate must be <= 1"):
        check_presets(broken)


def test_builtin_defenses_declare_valid_presets():
    for entry in registry.entries("defense").values():
        if entry.builtin:
            check_presets(entry.load())
