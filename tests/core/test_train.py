"""The training loop: batched augmentation, hooks, determinism."""

import pytest
import torch
import torch.nn.functional as F

from bench.core.models import build_model, model_names
from bench.core.train import Batch, TrainConfig, Trainer, TrainHooks, predict, random_crop_flip


def test_random_crop_is_a_shift_of_the_zero_padded_image():
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.uint8).view(2, 3, 8, 8)
    out = random_crop_flip(x, pad=2, flip=False, generator=gen)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 8, dx : dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)


def test_flip_mirrors_about_half_the_batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (400, 3, 4, 4), dtype=torch.uint8, generator=gen)
    out = random_crop_flip(x, pad=0, flip=True, generator=gen)
    flipped = torch.tensor(
        [torch.equal(o, i.flip(2)) and not torch.equal(o, i) for o, i in zip(out, x, strict=True)]
    )
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert (flipped | same).all()
    assert 120 < int(flipped.sum()) < 280


def _tiny_problem(n=256):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = (x[:, 0, :16].float().mean((1, 2)) > x[:, 0, 16:].float().mean((1, 2))).long()
    return x, y


def test_same_seed_same_weights_on_cpu():
    x, y = _tiny_problem()
    cfg = TrainConfig(epochs=2, batch_size=64, lr=0.05)
    weights = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("cnn_small", 2)
        Trainer("cpu").fit(model, x, y, cfg, seed=0, flip=True)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_hooks_see_indices_and_replace_the_loss():
    x, y = _tiny_problem(128)
    seen: list[torch.Tensor] = []
    epochs: list[int] = []

    class Recorder(TrainHooks):
        def loss(self, logits, batch: Batch, config):
            seen.append(batch.idx.clone())
            per_sample = F.cross_entropy(logits, batch.y, reduction="none")
            return (per_sample * (batch.idx % 2 == 0)).mean()  # train on even indices only

        def on_epoch_end(self, epoch, model):
            epochs.append(epoch)

    subset = torch.arange(0, 128, 2)
    Trainer("cpu").fit(
        build_model("cnn_small", 2),
        x,
        y,
        TrainConfig(epochs=2, batch_size=32),
        seed=0,
        flip=False,
        hooks=Recorder(),
        indices=subset,
    )
    assert epochs == [0, 1]
    all_idx = torch.cat(seen)
    assert sorted(all_idx.tolist()) == sorted(subset.tolist() * 2)


def test_every_registered_model_maps_images_to_logits():
    x = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    for name in model_names():
        model = build_model(name, 43)
        assert predict(model, x).shape == (4,)
        assert model(x.float() / 255).shape == (4, 43)


@pytest.mark.slow
def test_compiled_training_matches_eager_training():
    """The --compile path (meant for GPUs) trains the same model: same losses, same weights
    to float tolerance, and the caller's module is the one that learned."""
    x = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (256,))
    config = TrainConfig(epochs=2, batch_size=128, lr=0.01)
    runs = []
    for compile in (False, True):
        torch.manual_seed(0)
        model = build_model("cnn_small", 10)
        initial = next(model.parameters()).detach().clone()
        stats = Trainer("cpu", compile=compile).fit(model, x, y, config, seed=0, flip=True)
        runs.append((stats.epoch_losses, next(model.parameters()).detach().clone()))
    (eager_losses, eager_w), (compiled_losses, compiled_w) = runs
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-4)
    assert torch.allclose(compiled_w, eager_w, atol=1e-4)
    assert not torch.allclose(compiled_w, initial)  # it trained the caller's module
