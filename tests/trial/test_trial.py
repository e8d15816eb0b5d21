"""Whole trials on real CIFAR-10 subsets: attacks succeed without a defense; seeds reproduce."""

import dataclasses
import json
import shutil

import pytest
import torch

from bench.grid.expand import expand_grid
from bench.grid.presets import load_preset, with_overrides
from bench.spec import TrialSpec
from bench.trial.pipeline import run_trial, run_trial_safely

CPU = torch.device("cpu")


def _spec(attack: str, train_size: int, epochs: int, **changes) -> TrialSpec:
    spec = expand_grid(
        with_overrides(load_preset("quick"), datasets=["cifar10"], attacks=[attack])
    )[0]
    return dataclasses.replace(
        spec,
        data={**spec.data, "train_size": train_size, "test_size": 2000},
        train={**spec.train, "epochs": epochs},
        **changes,
    )


pytestmark = pytest.mark.usefixtures("two_threads")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("attack", "train_size", "epochs", "asr_floor"),
    # Floors sit well below what was measured (a clean model sends about 10% of triggered
    # images to the target class): Blended at 8 epochs, on an AMD EPYC without bf16 units, ASR
    # 1.000 / CA 0.534 at fp32 and 1.000 / 0.590 at bf16 (at 5 epochs: 0.999 at bf16 on an EPYC
    # with bf16 units, but 0.447 / CA 0.407 at fp32 here: the model had barely started
    # learning); BadNets 0.86.
    [("blended", 5000, 8, 0.90), ("badnets", 10000, 6, 0.70)],
)
def test_attack_reaches_high_asr_without_defense(attack, train_size, epochs, asr_floor):
    row = run_trial(_spec(attack, train_size, epochs), device=CPU)
    assert row["asr"] >= asr_floor
    assert row["ca"] >= 0.4
    assert row["n_poison"] == round(0.1 * train_size)
    assert row["asr"] + row["ra"] <= 1.0


def test_same_seed_reproduces_numbers_on_cpu(tmp_path, monkeypatch):
    spec = _spec("badnets", 1000, 1)
    first = run_trial(spec, device=CPU)
    monkeypatch.setenv("BENCH_ARTIFACT_DIR", str(tmp_path / "second"))  # train again
    second = run_trial(spec, device=CPU)
    assert first["backdoored_model_cache"] == second["backdoored_model_cache"] == "built"
    for key in ("ca", "asr", "ra", "n_poison"):
        assert first[key] == second[key]
    other = run_trial(dataclasses.replace(spec, seed=1), device=CPU)
    assert (other["ca"], other["asr"]) != (first["ca"], first["asr"])


def test_cached_poisoned_sets_give_the_numbers_of_a_rebuild(tmp_path, monkeypatch):
    """Every defense of a cell reuses its poisoned sets; a cache hit must change nothing
    downstream (here the undefended model is retrained on the cached sets)."""
    monkeypatch.setenv("BENCH_ARTIFACT_DIR", str(tmp_path))
    spec = _spec("badnets", 1000, 1)
    first = run_trial(spec, device=CPU)
    shutil.rmtree(tmp_path / "backdoored_model")
    second = run_trial(spec, device=CPU)
    assert (first["poisoned_sets_cache"], second["poisoned_sets_cache"]) == ("built", "hit")
    assert second["backdoored_model_cache"] == "built"
    for key in ("ca", "asr", "ra", "n_poison"):
        assert first[key] == second[key]


def test_a_failing_trial_becomes_an_error_row_with_traceback():
    spec = _spec("badnets", 1000, 1, ratio=0.95)  # more poison than non-target images exist
    row = run_trial_safely(spec)
    assert row["status"] == "error"
    assert "maximum possible ratio" in row["error"] and "Traceback" in row["error"]
    assert row["trial_id"] == spec.trial_id and row["attack"] == "badnets"


def test_defenses_of_one_cell_share_stages_without_changing_numbers(tmp_path, monkeypatch):
    """DLP's supervised stage is the backdoored model and NAB's detection is ABL's isolation run
    when their budgets match (as in the quick preset): each is trained once per cell, and a
    trial's numbers are the same whether it built the shared stage or loaded it."""
    small = {
        "abl": {"isolation_epochs": 1, "finetune_epochs": 1, "unlearning_epochs": 1},
        "dlp": {"sl_epochs": 1, "au_epochs": 1, "assf_epochs": 1},
        "nab": {  # ABL's isolation recipe, as the quick preset sets it
            "detection_epochs": 1,
            "detection_batch_size": 128,
            "detection_schedule": "constant",
            "detection_nesterov": True,
            "pseudo_label_epochs": 1,
        },
    }
    base = _spec("badnets", 1000, 1)

    def run(defense: str, artifacts: str) -> dict:
        monkeypatch.setenv("BENCH_ARTIFACT_DIR", str(tmp_path / artifacts))
        params = {**base.defense_params, **small.get(defense, {})} if defense in small else {}
        spec = dataclasses.replace(
            base,
            defense=defense,
            defense_params=params,
            clean_fraction=0.05 if defense == "nab" else 0.0,
        )
        return run_trial(spec, device=CPU)

    # One order: the undefended model and ABL build, DLP and NAB load.
    run("none", "a")
    dlp, abl, nab = run("dlp", "a"), run("abl", "a"), run("nab", "a")
    assert dlp["backdoored_model_cache"] == "hit"
    stages = [json.loads(r["defense_artifacts"]) for r in (abl, nab)]
    assert [[(s["kind"], s["cache"]) for s in st] for st in stages] == [
        [("loss_guided_isolation", "built")],
        [("loss_guided_isolation", "hit")],
    ]
    # The other order, from scratch: DLP and NAB build what they loaded before.
    nab2, abl2, dlp2 = run("nab", "b"), run("abl", "b"), run("dlp", "b")
    assert dlp2["backdoored_model_cache"] == "built"
    assert json.loads(nab2["defense_artifacts"])[0]["cache"] == "built"
    assert json.loads(abl2["defense_artifacts"])[0]["cache"] == "hit"
    for name, first, second in (("dlp", dlp, dlp2), ("abl", abl, abl2), ("nab", nab, nab2)):
        for key in ("ca", "asr", "ra", "det_tp", "det_fp", "det_auroc"):
            assert first[key] == second[key], (name, key, first[key], second[key])
