"""Reference networks: the CIFAR models of the paper, a digits CNN and an MLP.

* :func:`resnet56`: the 3-stage CIFAR ResNet-56 (BasicBlocks, 9 per stage, widths
  16/32/64).  The shortcut where the shape changes is **option B** (1x1 conv + BN,
  stride 2), as in the CIFAR ResNets of Torch-Pruning's benchmarks that the
  published OCSPruner code builds on.  Option A (zero-padding via a lambda) couples
  only part of a stage's channels to the previous stage, which channel groups cannot
  express without splitting them, so option B is used.  Dense cost at 32x32:
  about 126 M MACs, 0.86 M parameters.
* :func:`vgg16`: CIFAR VGG-16 with BatchNorm (13 conv-BN-ReLU layers, 5 max-pools,
  then a single linear classifier on the 512 features), about 313 M MACs.
* :func:`digits_cnn`: a small CNN for scikit-learn's 8x8 digits (conv-BN-ReLU stem,
  one residual block, pooling, a flatten of ``[2*width, 2, 2]`` into a linear).
* :func:`mlp`: a flatten followed by linear-ReLU layers (8x8 digits by default).

:func:`build` builds one of these or any torchvision classification model by name (what the
``oneprune`` commands' ``--model`` accepts).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["resnet56", "vgg16", "digits_cnn", "mlp", "CifarResNet", "BasicBlock", "BUNDLED", "build", "default_input_shape"]


def _init(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers plus a shortcut (identity or 1x1 conv + BN)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """CIFAR ResNet-(6n+2): 3x3 stem (16), three stages of ``n`` BasicBlocks."""

    def __init__(self, depth: int = 56, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CifarResNet: depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers = []
        in_planes = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, w, stride=2 if (i > 0 and j == 0) else 1))
                in_planes = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet56(num_classes: int = 10) -> CifarResNet:
    """CIFAR ResNet-56 (option-B shortcuts), for 32x32 inputs."""
    return CifarResNet(56, num_classes)


_VGG16_CFG: list[int | str] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                               512, 512, 512, "M", 512, 512, 512, "M"]


class CifarVGG(nn.Module):
    """VGG with BatchNorm for 32x32 inputs: conv-BN-ReLU features, linear classifier."""

    def __init__(self, cfg: Sequence[int | str] = tuple(_VGG16_CFG), num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = 3
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1, bias=False), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
                c = int(v)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def vgg16(num_classes: int = 10) -> CifarVGG:
    """CIFAR VGG-16 with BatchNorm (as in the paper), for 32x32 inputs."""
    return CifarVGG(_VGG16_CFG, num_classes)


class DigitsCNN(nn.Module):
    """Small CNN for 1x8x8 digit images: stem, residual block, pools, flatten + linear."""

    def __init__(self, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
        )
        self.block = BasicBlock(w, w)
        self.pool1 = nn.MaxPool2d(2)  # 8x8 -> 4x4
        self.conv3 = nn.Conv2d(w, 2 * w, 3, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(2 * w)
        self.relu = nn.ReLU(inplace=True)
        self.pool2 = nn.AvgPool2d(2)  # 4x4 -> 2x2
        self.fc = nn.Linear(2 * w * 4, num_classes)
        _init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.block(self.stem(x)))
        x = self.pool2(self.relu(self.bn3(self.conv3(x))))
        return self.fc(torch.flatten(x, 1))


def digits_cnn(num_classes: int = 10, width: int = 16) -> DigitsCNN:
    """CNN for scikit-learn's 8x8 digits (input ``[N, 1, 8, 8]``, values in [0, 1])."""
    return DigitsCNN(num_classes, width)


def mlp(in_features: int = 64, hidden: Sequence[int] = (128, 64), num_classes: int = 10) -> nn.Sequential:
    """``Flatten`` then ``Linear``-``ReLU`` layers of widths ``hidden``, then a linear head.

    Takes ``[N, *]`` with ``in_features`` entries per sample (e.g. ``[N, 1, 8, 8]``).
    """
    layers: list[nn.Module] = [nn.Flatten()]
    c = in_features
    for h in hidden:
        layers += [nn.Linear(c, int(h)), nn.ReLU()]
        c = int(h)
    layers.append(nn.Linear(c, num_classes))
    return nn.Sequential(*layers)


#: The bundled networks by name, and the input shape (C, H, W) each is made for.
BUNDLED: dict[str, tuple[int, int, int]] = {
    "digits_cnn": (1, 8, 8), "mlp": (1, 8, 8), "resnet56": (3, 32, 32), "vgg16": (3, 32, 32)}


def default_input_shape(name: str) -> tuple[int, int, int]:
    """The input shape (C, H, W) ``name`` is made for: see :data:`BUNDLED`; 3x224x224 otherwise."""
    return BUNDLED.get(name, (3, 224, 224))


def build(name: str, num_classes: int = 10, width: int = 16) -> nn.Module:
    """A freshly initialised network by name: a bundled one (:data:`BUNDLED`; ``width`` is
    ``digits_cnn``'s) or any torchvision classification model (``torchvision.models.get_model``,
    no weights), e.g. ``resnet50``, ``mobilenet_v2``.

    Raises:
        ValueError: an unknown name (the message lists the bundled ones).
        ImportError: a torchvision name without torchvision installed.
    """
    if name == "digits_cnn":
        return digits_cnn(num_classes, width=width)
    if name == "mlp":
        return mlp(num_classes=num_classes)
    if name == "resnet56":
        return resnet56(num_classes)
    if name == "vgg16":
        return vgg16(num_classes)
    try:
        import torchvision
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"model {name!r} is not bundled and needs torchvision: pip install torchvision") from e
    known = set(torchvision.models.list_models(module=torchvision.models))
    if name not in known:
        raise ValueError(f"unknown model {name!r}: bundled are {sorted(BUNDLED)}; torchvision's classification "
                         "models are e.g. resnet18, resnet50, mobilenet_v2 (torchvision.models.list_models())")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)
