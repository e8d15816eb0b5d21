"""The dataset registry: each dataset's static facts (classes, size, normalisation, the
release's image counts) and the decoded :class:`Dataset` with its seeded subsets."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from bench.errors import unknown_name_error

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that the harness and the trainer need."""

    name: str
    num_classes: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    allows_flip: bool
    folder_names: tuple[str, ...]
    archive_names: tuple[str, ...]
    #: Images per split in the release (train, test): an archive holding other counts is damaged.
    split_sizes: tuple[int, int] = (0, 0)


DATASETS: dict[str, DatasetInfo] = {
    "cifar10": DatasetInfo(
        name="cifar10",
        num_classes=10,
        image_size=32,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.247, 0.243, 0.261),
        allows_flip=True,
        folder_names=("cifar10", "cifar-10", "CIFAR10"),
        archive_names=("cifar10-jpeg.tar.gz", "cifar10.tar.gz"),
        split_sizes=(50_000, 10_000),
    ),
    # GTSRB is not normalised (BackdoorBench convention) and never flipped: signs are chiral.
    "gtsrb": DatasetInfo(
        name="gtsrb",
        num_classes=43,
        image_size=32,
        mean=(0.0, 0.0, 0.0),
        std=(1.0, 1.0, 1.0),
        allows_flip=False,
        folder_names=("gtsrb32", "gtsrb", "GTSRB"),
        archive_names=("gtsrb32-png.tar.gz", "gtsrb.tar.gz"),
        split_sizes=(39_209, 12_630),
    ),
}


def dataset_info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise unknown_name_error("dataset", name, DATASETS) from None


@dataclass(frozen=True)
class Dataset:
    """A decoded dataset: uint8 images in NCHW layout and int64 labels, plus where it came from
    and a content hash of the full decoded arrays (``data_hash``; a subset keeps its parent's:
    the budget that draws the subset is part of every spec that uses it)."""

    info: DatasetInfo
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    source: str
    data_hash: str = ""

    def subset(self, train_size: int | None, test_size: int | None, seed: int) -> Dataset:
        """A seeded random subset, the same for every trial of a grid (fair comparisons)."""
        gen = torch.Generator().manual_seed(seed)

        def pick(x: torch.Tensor, y: torch.Tensor, n: int | None):
            if not n or n >= len(y):
                return x, y
            idx = torch.randperm(len(y), generator=gen)[:n].sort().values
            return x[idx], y[idx]

        train_x, train_y = pick(self.train_x, self.train_y, train_size)
        test_x, test_y = pick(self.test_x, self.test_y, test_size)
        return replace(self, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y)
