"""How much of a DBD SimCLR step its batched augmentations take (the two views of each image).

    .venv/bin/python benchmarks/dbd_simclr_augmentation.py [--models cnn_small] [--batch-size 256]
        [--device cpu|cuda] [--threads 2]

A measurement of one defense's internals (``defenses.ssl``, DBD's SimCLR stage), so it lives
here rather than in ``bench perf``, which measures the harness's training loop through public
APIs only. It times, best of ``--steps`` after a warm-up round, the augmentation alone and the
whole step (views, forward, NT-Xent, backward, optimiser) through the hooks DBD trains with.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from bench.core.models import build_model
from bench.core.train import Batch, TrainConfig, autocast, prepare_model
from defenses.ssl import Contrastive, SimCLRHooks


@dataclass(frozen=True)
class AugmentationShare:
    model: str
    batch_size: int
    augment_s: float  # two SimCLR views of one batch
    step_s: float  # the whole SimCLR step: views, forward, NT-Xent, backward, optimiser

    @property
    def share(self) -> float:
        return self.augment_s / self.step_s


def measure_simclr_augmentation(
    model_name: str, *, batch_size: int = 256, steps: int = 5, device: str = "cpu"
) -> AugmentationShare:
    """How much of a DBD SimCLR step the batched augmentations take (best of ``steps``), timed
    through the hooks DBD trains with."""

    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randint(0, 256, (batch_size, 3, 32, 32), dtype=torch.uint8, device=dev)
    batch = Batch(x.float().div(255), torch.zeros(batch_size, dtype=torch.long, device=dev), x)
    model = prepare_model(Contrastive(build_model(model_name, 10)), dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hooks, config = SimCLRHooks(temperature=0.5, flip=True), TrainConfig()

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    augment = step = float("inf")
    for _ in range(steps + 1):  # the first round warms up
        sync()
        t0 = time.perf_counter()
        views = hooks.transform_batch(batch, gen)
        sync()
        t1 = time.perf_counter()
        with autocast(dev):
            z = model(views.x)
        loss = hooks.loss(z.float(), views, config)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()
        t2 = time.perf_counter()
        augment, step = min(augment, t1 - t0), min(step, t2 - t0)
    return AugmentationShare(model_name, batch_size, augment, step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn_small,preact_resnet18")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=0, help="default: 5 (cnn), 1 (ResNet)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"DBD's SimCLR step (two batched views of each image), batch {args.batch_size}:")
    for name in args.models.split(","):
        a = measure_simclr_augmentation(
            name,
            batch_size=args.batch_size,
            steps=args.steps or (5 if "cnn" in name else 1),  # a ResNet step: ~16 s on 2 cores
            device=args.device,
        )
        print(
            f"  {name:<16} augmentation {1000 * a.augment_s:6.1f} ms of a "
            f"{1000 * a.step_s:7.1f} ms step ({100 * a.share:.1f}%)",
            flush=True,
        )


if __name__ == "__main__":
    main()
