"""``bench perf``: training-loop throughput against this machine's real limit.

The limit runs forward, loss, backward and the optimiser step on float batches built in advance,
once in fp32 and once under bf16 autocast; the machine's limit is the faster of the two (on a CPU
with native bf16 units, or a GPU, that is bf16). The loop is the real
:class:`~bench.core.train.Trainer` on uint8 data at the precision a trial would use: indexing,
batched crop+flip, conversion and hooks included. The loop's share of the best limit is what
matters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.core import precision
from bench.core.models import build_model
from bench.core.train import TrainConfig, Trainer, autocast, prepare_model

#: The precisions whose pure step speed ``bench perf`` measures.
LIMIT_PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class PerfResult:
    model: str
    batch_size: int
    steps: int
    limits: dict[str, float]  # precision -> images/s of the pure step
    loop_img_s: float
    loop_precision: str

    @property
    def best_limit(self) -> tuple[str, float]:
        return max(self.limits.items(), key=lambda kv: kv[1])

    @property
    def share(self) -> float:
        """The loop's throughput as a fraction of the best limit (>= 0.9 is the goal)."""
        return self.loop_img_s / self.best_limit[1]


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
        with autocast(device):  # the precision in force (see measure)
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
    loop_precision: str = "auto",
) -> PerfResult:
    """Best-of-``repeats`` images/s of the pure step in fp32 and in bf16, and of the loop at
    ``loop_precision`` (resolved for ``device``), interleaved (with ``compile``, every one runs
    the ``torch.compile``d model)."""
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
    used = precision.resolve(loop_precision, dev)
    for p in LIMIT_PRECISIONS:  # warm-up: allocator, oneDNN/cuDNN kernel selection, compiling
        with precision.use_precision(p):
            _limit_seconds(limit_model, batches[:2], batch_labels[:2], dev)
    with precision.use_precision(used):
        trainer.fit(
            model, images[: 2 * batch_size], labels[: 2 * batch_size], config, seed=0, flip=True
        )
    limit_best = dict.fromkeys(LIMIT_PRECISIONS, float("inf"))
    loop_best = float("inf")
    for _ in range(repeats):
        for p in LIMIT_PRECISIONS:
            with precision.use_precision(p):
                seconds = _limit_seconds(limit_model, batches, batch_labels, dev)
            limit_best[p] = min(limit_best[p], seconds)
        with precision.use_precision(used):
            stats = trainer.fit(model, images, labels, config, seed=0, flip=True)
        loop_best = min(loop_best, stats.seconds)
    limits = {p: n / seconds for p, seconds in limit_best.items()}
    return PerfResult(model_name, batch_size, steps, limits, n / loop_best, used)
