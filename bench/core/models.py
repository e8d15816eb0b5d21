"""Model registry (timm-style): ``@register_model`` names a builder, ``build_model`` makes one.

Every model takes float images in [0, 1] and normalises them itself, so attacks and defenses work
in one pixel space whatever the dataset's statistics.

The model contract (:class:`ClassifierNet`, docs/plugins.md): every built-in model exposes where
its features end and its classifier begins, so pruning, neuron-based and self-supervised defenses
need neither forward hooks nor knowledge of the architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from bench.errors import unknown_name_error

ModelBuilder = Callable[[int], "ClassifierNet"]
_MODELS: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def deco(fn: ModelBuilder) -> ModelBuilder:
        _MODELS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_MODELS)


class ClassifierNet(nn.Module):
    """The model contract: a convolutional feature extractor, then global pooling and one linear
    layer. ``model(x) == model.classify(model.feature_map(x))`` for every built-in model.

    Subclasses implement :meth:`feature_map` and :meth:`classify` and keep their final layer in
    ``self.linear`` (the attribute name is part of saved checkpoints)."""

    linear: nn.Module

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w): the last convolutional stage's output for a batch of images."""
        raise NotImplementedError

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from a :meth:`feature_map` output: global pooling, then the head. Zeroing
        channels of ``features`` before this call prunes them."""
        raise NotImplementedError

    def stage_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output, in order, named ``stage1``, ``stage2``, ...: the (N, C, h, w)
        maps attention-distillation, pruning and neuron-perturbation defenses work on. The last
        one is :meth:`feature_map`'s, so ``classify(maps[last])`` gives the logits in the same
        forward pass."""
        raise NotImplementedError

    @property
    def head(self) -> nn.Module:
        """The final classifier layer: ``nn.Linear(C, num_classes)``, C the feature channels."""
        return self.linear

    def replace_head(self, module: nn.Module) -> nn.Module:
        """Put ``module`` where the head was (``nn.Identity()``: the model outputs its pooled
        (N, C) features) and return the old head."""
        old, self.linear = self.linear, module
        return old

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.feature_map(x))


class Normalized(ClassifierNet):
    """Prepends per-channel normalisation to a network; the contract's parts go to ``net``."""

    def __init__(self, net: ClassifierNet, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("inv_std", 1.0 / torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) * self.inv_std)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w): the last convolutional stage's output for images in [0, 1]."""
        return self.net.feature_map((x - self.mean) * self.inv_std)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.classify(features)

    def stage_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every stage's output for images in [0, 1] (see :class:`ClassifierNet`)."""
        return self.net.stage_maps((x - self.mean) * self.inv_std)

    @property
    def head(self) -> nn.Module:
        return self.net.head

    def replace_head(self, module: nn.Module) -> nn.Module:
        return self.net.replace_head(module)


def build_model(
    name: str,
    num_classes: int,
    mean: tuple[float, ...] = (0.0, 0.0, 0.0),
    std: tuple[float, ...] = (1.0, 1.0, 1.0),
) -> Normalized:
    if name not in _MODELS:
        raise unknown_name_error("model", name, _MODELS)
    return Normalized(_MODELS[name](num_classes), mean, std)


# --------------------------------------------------------------------------- small CPU net


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class SmallCNN(ClassifierNet):
    """A VGG-style net sized for CPU presets: stages at 32, 16, 8 and 4 px, ``convs[i]`` conv +
    BatchNorm + ReLU layers of ``widths[i]`` channels in stage i, max-pooling between stages.

    Pooling after one full-resolution conv keeps the work small, the main cost on a CPU
    (``cnn_small``); a second conv there lets the net see sub-pixel triggers such as WaNet's
    warp (``vgg5``). Both chosen by measurement on a 2-core CPU (README, "Models").
    """

    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (24, 48, 96, 192),
        convs: tuple[int, ...] = (1, 1, 1, 1),
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for i, (c_out, n) in enumerate(zip(widths, convs, strict=True)):
            for _ in range(n):
                layers.append(_conv_bn(c_in, c_out))
                c_in = c_out
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.linear = nn.Linear(c_in, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def stage_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A stage's output is its last conv's (before the max-pooling into the next)."""
        maps: dict[str, torch.Tensor] = {}
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                maps[f"stage{len(maps) + 1}"] = x
            x = layer(x)
        maps[f"stage{len(maps) + 1}"] = x
        return maps

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(features))


@register_model("cnn_small")
def cnn_small(num_classes: int) -> ClassifierNet:
    return SmallCNN(num_classes)


@register_model("cnn_medium")
def cnn_medium(num_classes: int) -> ClassifierNet:
    return SmallCNN(num_classes, widths=(32, 64, 128, 256))


@register_model("vgg5")
def vgg5(num_classes: int) -> ClassifierNet:
    """Five convs: two at full resolution (16 channels), then 48, 96, 192; as fast as
    ``cnn_small`` under bf16 on the reference CPU, and it learns WaNet's sub-pixel warp."""
    return SmallCNN(num_classes, widths=(16, 48, 96, 192), convs=(2, 1, 1, 1))


# --------------------------------------------------------------------------- CIFAR ResNets


class PreActBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.shortcut = (
            nn.Conv2d(c_in, c_out, 1, stride, bias=False) if stride != 1 or c_in != c_out else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(x))
        shortcut = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(torch.relu(self.bn2(out)))
        return out + shortcut


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class CifarResNet(ClassifierNet):
    """ResNet-18 layout for 32 px inputs: 3x3 stem, no max-pool, four stages of two blocks."""

    def __init__(self, block: type[nn.Module], num_classes: int, preact: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        # Post-activation nets normalise after the stem; pre-activation blocks do it themselves.
        self.stem_act = nn.Identity() if preact else _bn_relu(64)
        layers, c_in = [], 64
        for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [block(c_in, c_out, stride), block(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*layers)
        # BackdoorBench's PreActResNet18 pools layer4's output directly (no final BN + ReLU).
        self.head_act = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_act(self.layers(self.stem_act(self.conv1(x))))

    def stage_maps(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs of ResNet's layer1..layer4 (two blocks each), named stage1..stage4."""
        x = self.stem_act(self.conv1(x))
        maps = {}
        for i in range(0, len(self.layers), 2):
            x = self.layers[i + 1](self.layers[i](x))
            maps[f"stage{i // 2 + 1}"] = x
        maps[f"stage{len(maps)}"] = self.head_act(x)
        return maps

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.flatten(self.pool(features), 1))


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int) -> ClassifierNet:
    return CifarResNet(PreActBlock, num_classes, preact=True)


@register_model("resnet18")
def resnet18(num_classes: int) -> ClassifierNet:
    return CifarResNet(BasicBlock, num_classes, preact=False)
