"""Self-supervised pieces (SimCLR, Chen et al. 2020) for DBD's stage 1: batched augmentations on
the device, the NT-Xent loss, a projection head, and trainer hooks, so SimCLR runs through the
one shared training loop (the "logits" it sees are the projected embeddings)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bench.api import Batch, TrainConfig, TrainHooks

# RGB -> YIQ; hue jitter is a rotation of the chroma plane (I, Q).
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_GRAY = torch.tensor([0.299, 0.587, 0.114])


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
) -> torch.Tensor:
    """Per-image random resized crop (+ horizontal flip) of a float NCHW batch, bicubic as the
    official DBD transform (``interpolation=3``), one ``grid_sample`` call for the whole batch."""
    n, dev = len(x), x.device

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)

    area = uniform(*scale)
    log_ratio = uniform(math.log(ratio[0]), math.log(ratio[1]))
    aspect = log_ratio.exp()
    width = (area * aspect).sqrt().clamp(max=1.0)  # fractions of the image side
    height = (area / aspect).sqrt().clamp(max=1.0)
    cx = uniform(0, 1) * (1 - width) + width / 2
    cy = uniform(0, 1) * (1 - height) + height / 2
    sign = torch.ones(n, device=dev)
    if flip:
        sign = torch.where(torch.rand(n, device=dev, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=dev)
    theta[:, 0, 0] = width * sign
    theta[:, 0, 2] = 2 * cx - 1
    theta[:, 1, 1] = height
    theta[:, 1, 2] = 2 * cy - 1
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bicubic", padding_mode="reflection", align_corners=False)
    return out.clamp(0, 1)  # bicubic overshoots, as PIL's does before it rounds to uint8


def color_jitter(
    x: torch.Tensor,
    generator: torch.Generator,
    strength: float = 0.4,
    hue: float = 0.1,
    p: float = 0.8,
) -> torch.Tensor:
    """Brightness, contrast and saturation factors in [1 - s, 1 + s] and a hue rotation in
    [-hue, hue] turns, applied to a random ``p`` of the batch (float images in [0, 1])."""
    n, dev = len(x), x.device

    def factor(lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(n, device=dev, generator=generator)).view(n, 1, 1, 1)

    gray_w = _GRAY.to(dev).view(1, 3, 1, 1)
    out = x * factor(1 - strength, 1 + strength)
    mean = (out * gray_w).sum(1, keepdim=True).mean((2, 3), keepdim=True)
    out = (out - mean) * factor(1 - strength, 1 + strength) + mean
    gray = (out * gray_w).sum(1, keepdim=True)
    out = (out - gray) * factor(1 - strength, 1 + strength) + gray
    angle = 2 * math.pi * factor(-hue, hue).view(n)
    yiq = torch.einsum("ij,njhw->nihw", _YIQ.to(dev), out)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    i, q = yiq[:, 1] * cos - yiq[:, 2] * sin, yiq[:, 1] * sin + yiq[:, 2] * cos
    yiq = torch.stack([yiq[:, 0], i, q], 1)
    out = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_YIQ).to(dev), yiq).clamp(0, 1)
    apply = torch.rand(n, device=dev, generator=generator) < p
    return torch.where(apply.view(n, 1, 1, 1), out, x)


def random_grayscale(x: torch.Tensor, generator: torch.Generator, p: float = 0.2) -> torch.Tensor:
    gray = (x * _GRAY.to(x.device).view(1, 3, 1, 1)).sum(1, keepdim=True).expand_as(x)
    apply = torch.rand(len(x), device=x.device, generator=generator) < p
    return torch.where(apply.view(-1, 1, 1, 1), gray, x)


def gaussian_blur(
    x: torch.Tensor,
    generator: torch.Generator,
    sigma: tuple[float, float] = (0.1, 2.0),
    p: float = 0.5,
) -> torch.Tensor:
    """Gaussian blur of a random ``p`` of the batch, each image with its own standard deviation
    drawn from U(sigma) (DBD's PIL ``GaussianBlur(radius=sigma)``; the radius is PIL's standard
    deviation), edges extended; the kernel reaches 3 sigma."""
    n, c, h, w = x.shape
    dev = x.device
    s = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, device=dev, generator=generator)
    radius = math.ceil(3 * sigma[1])
    offsets = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / s[:, None]) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n * c, k)
    flat = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="replicate")
    flat = F.conv2d(flat, kernel[:, None, :, None], groups=n * c)  # down the columns
    flat = F.conv2d(flat, kernel[:, None, None, :], groups=n * c)  # along the rows
    blurred = flat.reshape(n, c, h, w)
    apply = torch.rand(n, device=dev, generator=generator) < p
    return torch.where(apply.view(n, 1, 1, 1), blurred, x)


def simclr_view(x: torch.Tensor, generator: torch.Generator, flip: bool = True) -> torch.Tensor:
    """One SimCLR view, the official DBD transform in its order: random resized crop (scale
    0.2-1, bicubic), flip, colour jitter (0.4, hue 0.1, p 0.8), grayscale (p 0.2), Gaussian blur
    (sigma 0.1-2, p 0.5)."""
    x = random_resized_crop(x, generator, flip=flip)
    x = color_jitter(x, generator)
    x = random_grayscale(x, generator)
    return gaussian_blur(x, generator)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, symmetric: bool = False):
    """NT-Xent: each anchor's positive is the other view of its image, its negatives are the
    other 2B - 2 views. ``symmetric=False`` uses the first views as anchors only, as DBD's code
    does; True is SimCLR's full loss over all 2B anchors."""
    b = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    anchors = 2 * b if symmetric else b
    return F.cross_entropy(sim[:anchors], targets[:anchors])


class Contrastive(nn.Module):
    """A classifier's backbone (its head swapped for the identity through the model contract's
    ``replace_head``; ``backbone.replace_head`` puts a head back) followed by SimCLR's
    projection head Linear(d, d) -> BN -> ReLU -> Linear(d, out)."""

    def __init__(self, classifier: nn.Module, out_dim: int = 128):
        super().__init__()
        head = classifier.replace_head(nn.Identity())
        d = head.in_features
        self.backbone = classifier
        self.projection = nn.Sequential(
            nn.Linear(d, d), nn.BatchNorm1d(d), nn.ReLU(inplace=True), nn.Linear(d, out_dim)
        )
        self.feature_dim = d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection(self.backbone(x))


class SimCLRHooks(TrainHooks):
    """Turns the trainer's batch (no augmentation) into two SimCLR views and trains with
    NT-Xent on their projections."""

    def __init__(self, temperature: float, flip: bool, symmetric: bool = False):
        self.temperature, self.flip, self.symmetric = temperature, flip, symmetric

    def transform_batch(self, batch: Batch, generator: torch.Generator) -> Batch:
        views = torch.cat(
            [simclr_view(batch.x, generator, self.flip), simclr_view(batch.x, generator, self.flip)]
        )
        return Batch(views.contiguous(memory_format=torch.channels_last), batch.y, batch.idx)

    def loss(self, logits: torch.Tensor, batch: Batch, config: TrainConfig) -> torch.Tensor:
        z1, z2 = logits.chunk(2)
        return nt_xent(z1, z2, self.temperature, self.symmetric)
