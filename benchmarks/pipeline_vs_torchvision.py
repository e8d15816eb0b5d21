"""Our training pipeline vs the standard torchvision one, same model, same data, side by side.

    .venv/bin/python benchmarks/pipeline_vs_torchvision.py [--images 10000] [--threads 2]

"torchvision": what the peer toolkits do (BackdoorBench, ABL, NAB): a Dataset that turns each
stored uint8 array into a PIL image and runs RandomCrop(32, padding 4), RandomHorizontalFlip,
ToTensor and Normalize per sample, batched by a DataLoader, then one SGD step per batch.
"ours": ``bench.core.train.Trainer``: the uint8 data stays a tensor on the device, each batch is
gathered by index and cropped/flipped as one tensor operation, normalisation runs inside the
model. Both train cnn_small (or --model) for one epoch with the same optimiser and batch size;
the printed ratio is torchvision seconds / our seconds per epoch. It also times the torchvision
input pipeline alone (no model step), to split the speed-up into input work and model step.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision import transforms

from bench.core.models import build_model
from bench.core.train import TrainConfig, Trainer
from bench.data import load_dataset


class PILDataset(TorchDataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def torchvision_loader(images, labels, info, batch_size: int, workers: int) -> DataLoader:
    tf = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(info.mean, info.std),
        ]
    )
    hwc = images.permute(0, 2, 3, 1).contiguous().numpy()
    return DataLoader(
        PILDataset(hwc, labels.numpy(), tf),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=False,
    )


def torchvision_epoch(model, images, labels, info, batch_size: int, workers: int) -> float:
    loader = torchvision_loader(images, labels, info, batch_size, workers)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    model.train()
    start = time.perf_counter()
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return time.perf_counter() - start


def torchvision_data_only(images, labels, info, batch_size: int, workers: int) -> float:
    """The torchvision pipeline's input cost alone: the same epoch with no model step."""
    start = time.perf_counter()
    for _ in torchvision_loader(images, labels, info, batch_size, workers):
        pass
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=10000)
    ap.add_argument("--model", default="cnn_small")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers (torchvision)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--compile", action="store_true", help="also time ours with torch.compile")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("cifar10").subset(args.images, 10, seed=0)
    info = data.info
    ours, theirs, compiled, data_only = [], [], [], []
    config = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, schedule="constant")
    if args.compile:  # compile once outside the timed epochs (warm-up on a few batches)
        compiled_model = build_model(args.model, info.num_classes, info.mean, info.std)
        trainer = Trainer("cpu", compile=True)
        trainer.fit(compiled_model, data.train_x[:512], data.train_y[:512], config, seed=0,
                    flip=True)  # fmt: skip
    for r in range(args.repeats):
        torch.manual_seed(r)
        # the torchvision pipeline normalises per sample, so its model does not
        plain = build_model(args.model, info.num_classes)
        theirs.append(
            torchvision_epoch(
                plain, data.train_x, data.train_y, info, args.batch_size, args.workers
            )
        )
        data_only.append(
            torchvision_data_only(data.train_x, data.train_y, info, args.batch_size, args.workers)
        )
        torch.manual_seed(r)
        model = build_model(args.model, info.num_classes, info.mean, info.std)
        stats = Trainer("cpu").fit(model, data.train_x, data.train_y, config, seed=r, flip=True)
        ours.append(stats.seconds)
        if args.compile:
            stats = trainer.fit(compiled_model, data.train_x, data.train_y, config, seed=r,
                                flip=True)  # fmt: skip
            compiled.append(stats.seconds)
    t_ours, t_theirs = min(ours), min(theirs)
    n = len(data.train_y)
    print(f"{args.model}, {n} images, batch {args.batch_size}, {args.threads} threads, "
          f"{args.workers} DataLoader workers, best of {args.repeats}")  # fmt: skip
    print(
        f"  torchvision per-sample PIL pipeline: {t_theirs:7.2f} s/epoch  {n / t_theirs:7.0f} img/s"
    )
    print(f"  bench.core.train (batched tensors):  {t_ours:7.2f} s/epoch  {n / t_ours:7.0f} img/s")
    print(f"  speed-up: {t_theirs / t_ours:.2f}x")
    # What input work costs the torchvision epoch; the rest is its model step (NCHW, normalising
    # per sample), against which ours gains only through layout.
    t_data = min(data_only)
    print(
        f"  of which torchvision input alone:    {t_data:7.2f} s/epoch "
        f"({100 * t_data / t_theirs:.0f}% of its epoch; model steps {t_theirs - t_data:.2f} s)"
    )
    if compiled:
        t_c = min(compiled)
        print(
            f"  bench.core.train + torch.compile:         {t_c:7.2f} s/epoch  {n / t_c:7.0f} img/s"
        )
        print(f"  speed-up with compile: {t_theirs / t_c:.2f}x")


if __name__ == "__main__":
    main()
