"""``bench perf``: training-loop throughput against the model's pure forward+backward limit.

The limit runs forward, loss, backward and the optimiser step on float batches built in advance.
The loop is the real :class:`~bench.train.Trainer` on uint8 data: indexing, batched crop+flip,
conversion and hooks included. Overhead = 1 - loop img/s / limit img/s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.models import build_model
from bench.train import TrainConfig, Trainer, autocast, prepare_model


@dataclass(frozen=True)
class PerfResult:
    model: str
    batch_size: int
    steps: int
    limit_img_s: float
    loop_img_s: float

    @property
    def overhead(self) -> float:
        return 1.0 - self.loop_img_s / self.limit_img_s


def _limit_seconds(
    model: torch.nn.Module,
    batches: list[torch.Tensor],
    labels: list[torch.Tensor],
    device: torch.device,
) -> float:
    opt = torch.optim.SGD(
        model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    model.train()
    start = time.perf_counter()
    for x, y in zip(batches, labels, strict=True):
        with autocast(device):  # the same precision as the loop (bf16 on CUDA)
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def measure(
    model_name: str,
    *,
    batch_size: int = 256,
    steps: int = 20,
    repeats: int = 3,
    device: str = "cpu",
    num_classes: int = 10,
    compile: bool = False,
) -> PerfResult:
    """Best-of-``repeats`` images/s for the limit and for the loop, interleaved (with
    ``compile``, both run the ``torch.compile``d model)."""
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(0)
    n = batch_size * steps
    images = torch.randint(0, 256, (n, 3, 32, 32), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, num_classes, (n,), generator=gen)
    model = prepare_model(build_model(model_name, num_classes), dev)
    batches = [
        (images[i : i + batch_size].to(dev).float() / 255).contiguous(
            memory_format=torch.channels_last
        )
        for i in range(0, n, batch_size)
    ]
    batch_labels = [labels[i : i + batch_size].to(dev) for i in range(0, n, batch_size)]
    config = TrainConfig(epochs=1, batch_size=batch_size, lr=0.01)
    trainer = Trainer(dev, compile=compile)
    limit_model = torch.compile(model) if compile else model
    # Warm-up: allocator, oneDNN/cuDNN kernel selection, compilation.
    _limit_seconds(limit_model, batches[:2], batch_labels[:2], dev)
    trainer.fit(
        model, images[: 2 * batch_size], labels[: 2 * batch_size], config, seed=0, flip=True
    )
    limit_best = loop_best = float("inf")
    for _ in range(repeats):
        limit_best = min(limit_best, _limit_seconds(limit_model, batches, batch_labels, dev))
        stats = trainer.fit(model, images, labels, config, seed=0, flip=True)
        loop_best = min(loop_best, stats.seconds)
    return PerfResult(model_name, batch_size, steps, n / limit_best, n / loop_best)
