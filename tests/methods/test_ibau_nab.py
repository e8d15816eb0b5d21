"""I-BAU's implicit hypergradient and NAB's stamp, on tiny models and real-data subsets."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from attacks.badnets import BadNets
from bench.api import DefenseContext, LabelledImages
from bench.core.models import build_model
from bench.core.train import TrainConfig, Trainer, TrainHooks
from bench.grid.checks import PluginError
from bench.trial.defend import defense_context
from bench.trial.pipeline import run_trial
from bench.trial.poisoning import poison_train_set
from defenses.ibau import IBAU, adversarial_loss, implicit_hypergradient
from defenses.nab import NAB, CounterPoison, stamp_colour
from tests.trial.test_trial import _spec

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("two_threads")


def test_hypergradient_matches_finite_differences_on_a_tiny_model():
    torch.manual_seed(0)
    model = nn.Linear(12, 3).double()
    x0, y0 = torch.randn(16, 12).double(), torch.randint(3, (16,))
    x, y = torch.randn(16, 12).double(), torch.randint(3, (16,))
    reg, step = 2.0, 0.1  # strongly convex inner problem: Phi is a contraction

    def inner(d):
        return adversarial_loss(model, x0, y0, reg, torch.ones(()))(d)

    def outer(d):
        return F.cross_entropy(model(x + d), y)

    def fixed_point() -> torch.Tensor:
        d = torch.zeros(1, 12, dtype=torch.float64)
        for _ in range(3000):
            d = d.requires_grad_(True)
            (g,) = torch.autograd.grad(inner(d), d)
            d = (d - step * g).detach()
        return d

    delta = fixed_point()
    params = list(model.parameters())
    grads = implicit_hypergradient(params, delta, outer, inner, inner_step=step, iterations=300)
    direct = torch.autograd.grad(outer(delta.requires_grad_(True)), params)
    h = 1e-5
    checked = 0
    for p, g, g_direct in zip(params, grads, direct, strict=True):
        flat = p.data.view(-1)
        for i in range(0, flat.numel(), max(1, flat.numel() // 5)):
            old = float(flat[i])
            flat[i] = old + h
            up = outer(fixed_point()).item()
            flat[i] = old - h
            down = outer(fixed_point()).item()
            flat[i] = old
            numeric = (up - down) / (2 * h)
            assert abs(float(g.view(-1)[i]) - numeric) < 1e-5 * max(1.0, abs(numeric))
            checked += 1
        # the implicit term matters: the plain gradient alone is measurably different
        assert not torch.allclose(g, g_direct, atol=1e-6)
    assert checked >= 8


def _context(train, **kw) -> DefenseContext:
    info_mean, info_std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    return defense_context(
        train,
        num_classes=10,
        make_model=lambda: build_model("cnn_small", 10, info_mean, info_std),
        device=CPU,
        train_config=TrainConfig(epochs=1, batch_size=128),
        **kw,
    )


def test_missing_clean_subset_or_backdoored_model_is_a_clear_error(cifar10):
    sub = cifar10.subset(200, 10, seed=0)
    ctx = _context(LabelledImages(sub.train_x, sub.train_y), defense="ibau")
    with pytest.raises(PluginError, match="'ibau' asked for the clean subset"):
        IBAU().run(ctx)
    clean = LabelledImages(sub.train_x[:50], sub.train_y[:50])
    ctx = _context(LabelledImages(sub.train_x, sub.train_y), defense="ibau", clean_subset=clean)
    with pytest.raises(PluginError, match="'ibau' asked for the backdoored model"):
        IBAU().run(ctx)


def test_grid_without_a_clean_fraction_is_a_clear_error():
    spec = dataclasses.replace(_spec("badnets", 500, 1), defense="ibau", clean_fraction=0.0)
    with pytest.raises(Exception, match=r"needs a clean subset.*clean_fraction"):
        run_trial(spec, device=CPU)


def test_nab_stamps_after_augmentation_at_the_test_position(cifar10, monkeypatch):
    """The official code stamps and relabels per batch, after crop and flip, so the stamp sits
    where it sits at test time in every batch the model trains on (stamping the stored image
    before augmentation lets the crop move or remove it)."""
    sub = cifar10.subset(3000, 10, seed=0)
    poisoned = poison_train_set(BadNets(), sub.train_x, sub.train_y, 0.1, 0, seed=0, device=CPU)
    pool = torch.nonzero(~poisoned.poison_mask).flatten()  # the subset is sorted by class
    clean_idx = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:300]]
    ctx = _context(
        LabelledImages(poisoned.images, poisoned.labels),
        clean_subset=LabelledImages(sub.train_x[clean_idx], sub.train_y[clean_idx]),
        defense="nab",
        normalization_mean=(0.49, 0.48, 0.45),
    )
    seen: list[dict] = []
    original = DefenseContext.fit

    def spy(self, model, images=None, labels=None, config=None, **kw):
        seen.append({"images": images, "labels": labels, "hooks": kw.get("hooks")})
        return original(self, model, images, labels, config, **kw)

    monkeypatch.setattr(DefenseContext, "fit", spy)
    nab = NAB(detection_epochs=2, pseudo_label_epochs=3, detection_batch_size=128)
    out = nab.run(ctx)
    assert out.metrics == {"relabelled": int((seen[-1]["labels"] != poisoned.labels).sum())}
    colour = stamp_colour((0.49, 0.48, 0.45))
    assert colour.tolist() == [125, 122, 115]  # 0 after the model's normalisation
    # test time: every input is stamped, top-left 2 x 2, nothing else
    x = sub.test_x[:8]
    stamped = out.input_transform(x)
    assert (stamped[:, :, :2, :2] == colour.view(1, 3, 1, 1)).all()
    assert torch.equal(stamped[:, :, 2:], x[:, :, 2:]) and torch.equal(
        stamped[:, :, :, 2:], x[:, :, :, 2:]
    )
    # train time: the stored images are untouched; flagged samples whose pseudo label differs
    # are relabelled and marked for the stamp
    final = seen[-1]
    assert torch.equal(final["images"], poisoned.images)
    relabelled = final["labels"] != poisoned.labels
    hooks = final["hooks"]
    assert isinstance(hooks, CounterPoison) and relabelled.any()
    assert torch.equal(hooks.marked, relabelled)
    assert set(torch.nonzero(relabelled).flatten().tolist()) <= set(out.flagged.tolist())
    assert len(out.flagged) == round(0.05 * 3000)
    # ... and in every augmented batch the model trains on, exactly the marked samples carry
    # the stamp at the test-time position
    batches = []

    class Record(TrainHooks):
        def transform_batch(self, batch, generator):
            batches.append(hooks.transform_batch(batch, generator))
            return batches[-1]

    config = TrainConfig(epochs=1, batch_size=500, lr=0.01)
    Trainer(CPU).fit(ctx.make_model(), final["images"], final["labels"], config, seed=0,
                     flip=True, hooks=Record())  # fmt: skip
    target = colour.float().div(255).view(1, 3, 1, 1)
    for batch in batches:
        hit = hooks.marked[batch.idx]
        corner = batch.x[:, :, :2, :2]
        assert torch.allclose(corner[hit], target.expand(int(hit.sum()), 3, 2, 2))
        assert not torch.isclose(corner[~hit], target).all(dim=(1, 2, 3)).any()
    rejected = out.reject(x)
    assert rejected.dtype == torch.bool and rejected.shape == (8,)
