"""Builders of the hand-designed baselines named in :mod:`search.space.baselines`.

``build_baseline(name, num_classes, image_size, width_mult)`` returns a freshly initialised
network (training mode) whose ``forward`` returns logits. Where torchvision has the
network, its class is used with ``weights=None`` (nothing is ever downloaded) and, for
inputs of :data:`SMALL_INPUT` px or less, a stem adapted to small images: a 3x3 stride-1
first convolution and no first max-pool (otherwise a 32 px image would be 8 px before the
first block). The networks torchvision lacks are written here from their papers' descriptions:

- **LeNet-5** (LeCun et al., 1998): conv 5x5 6, pool, conv 5x5 16, pool, FC 120-84-classes
  (ReLU and max-pooling; the first convolution is padded below 32 px, as LeNet padded MNIST).
- **AlexNet-style** (Krizhevsky et al., 2012) for small images: five convolutions
  64-192-384-256-256 (5x5, 5x5, then 3x3, stride 1), three 3x3 stride-2 max-pools,
  dropout-FC 1024-1024-classes.
- **VGG-11** (Simonyan & Zisserman, 2014, configuration A) with BatchNorm, as used on CIFAR:
  3x3 convolutions 64-M-128-M-256x2-M-512x2-M-512x2-M, a 512-wide linear classifier.
- **ResNet-20** (He et al., 2015, section 4.2): a 3x3 16 conv, three stages of 3 basic
  blocks at 16/32/64 channels, identity shortcuts with zero-padded channels when the
  shape changes ("option A"): 0.27 M parameters.
- **SE-ResNet-20** (Hu et al., 2017): ResNet-20 with a squeeze-and-excitation gate
  (reduction 16, at least 4 hidden units) on each block's residual branch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from search.core.errors import NasdeployError
from search.space.baselines import BASELINES, Baseline, check_width, get_baseline

SMALL_INPUT = 64
"""At this input side or below, torchvision's 224 px stems are replaced by small-image ones."""

Builder = Callable[[int, int, float], nn.Module]


def build_baseline(name: str, num_classes: int = 10, image_size: int = 32,
                   width_mult: float | None = None) -> nn.Module:
    """A new ``name`` network for ``num_classes`` classes at ``image_size`` px (training mode).

    Raises:
        NasdeployError: an unknown name (the message lists them), a width multiplier the
            family does not take, an input smaller than the network can reduce.
    """
    entry = get_baseline(name)
    width = check_width(entry, width_mult)
    if image_size < entry.min_size:
        raise NasdeployError(f"{entry.name} needs inputs of at least {entry.min_size} px, got {image_size}")
    if num_classes < 1:
        raise NasdeployError(f"num_classes must be positive, got {num_classes}")
    model = BUILDERS[entry.name](num_classes, image_size, 1.0 if width is None else width)
    model.baseline = entry  # type: ignore[assignment]  # what the network is, for logs
    return model.train()


def entry_of(model: nn.Module) -> Baseline | None:
    """The catalogue entry of a network built here, else ``None``."""
    return getattr(model, "baseline", None)


# --- torchvision networks with small-image stems ------------------------------------------------


def _small(image_size: int) -> bool:
    return image_size <= SMALL_INPUT


def _stride_one(conv: nn.Conv2d) -> None:
    """Keep a 3x3 stem convolution but at stride 1 (its weights are unchanged)."""
    conv.stride = (1, 1)


def _resnet18(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if _small(image_size):
        model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        model.maxpool = nn.Identity()
    return model


def _googlenet(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import GoogLeNet
    from torchvision.models.googlenet import BasicConv2d

    model = GoogLeNet(num_classes=num_classes, aux_logits=False, init_weights=True, transform_input=False)
    if _small(image_size):  # the second max-pool stays: the inception modules start at half the input
        model.conv1 = BasicConv2d(3, 64, kernel_size=3, stride=1, padding=1)
        nn.init.trunc_normal_(model.conv1.conv.weight, mean=0.0, std=0.01, a=-2, b=2)
        model.maxpool1 = nn.Identity()
    return model


def _densenet(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import DenseNet

    init = 24
    model = DenseNet(growth_rate=12, block_config=(6, 12, 24, 16), num_init_features=init,
                     num_classes=num_classes)
    if _small(image_size):
        model.features.conv0 = nn.Conv2d(3, init, 3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(model.features.conv0.weight)
        model.features.pool0 = nn.Identity()
    return model


def _mobilenet_v2(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import MobileNetV2

    model = MobileNetV2(num_classes=num_classes, width_mult=width)
    if _small(image_size):
        _stride_one(model.features[0][0])
    return model


def _mobilenet_v3_small(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    model = mobilenet_v3_small(weights=None, num_classes=num_classes, width_mult=width)
    if _small(image_size):
        _stride_one(model.features[0][0])
    return model


def _mnasnet(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import MNASNet

    model = MNASNet(alpha=width, num_classes=num_classes)
    if _small(image_size):
        _stride_one(model.layers[0])
    return model


SHUFFLENET_CHANNELS = {0.5: [24, 48, 96, 192, 1024], 1.0: [24, 116, 232, 464, 1024],
                       1.5: [24, 176, 352, 704, 1024], 2.0: [24, 244, 488, 976, 2048]}
"""ShuffleNetV2's stage widths per multiplier (Ma et al., 2018, table 5)."""


def _shufflenet_v2(num_classes: int, image_size: int, width: float) -> nn.Module:
    from torchvision.models import ShuffleNetV2

    model = ShuffleNetV2([4, 8, 4], SHUFFLENET_CHANNELS[width], num_classes=num_classes)
    if _small(image_size):
        _stride_one(model.conv1[0])
        model.maxpool = nn.Identity()
    return model


# --- written here --------------------------------------------------------------------------------


def _scaled(channels: int, width: float) -> int:
    """``channels`` times ``width``, at least 4."""
    return max(4, int(round(channels * width)))


class LeNet5(nn.Module):
    """LeNet-5 (see the module docstring)."""

    def __init__(self, num_classes: int, image_size: int):
        super().__init__()
        pad = 0 if image_size >= 32 else 2
        side = ((image_size + 2 * pad - 4) // 2 - 4) // 2
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 5, padding=pad), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
            nn.Linear(120, 84), nn.ReLU(inplace=True), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _pooled(side: int) -> int:
    """Side after a 3x3 stride-2 max-pool with padding 1."""
    return (side - 1) // 2 + 1


class AlexNetSmall(nn.Module):
    """An AlexNet-style network for small images (see the module docstring)."""

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0):
        super().__init__()
        c = [_scaled(n, width) for n in (64, 192, 384, 256, 256)]
        hidden = _scaled(1024, width)
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(c[0], c[1], 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(c[1], c[2], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        side = _pooled(_pooled(_pooled(image_size)))
        self.classifier = nn.Sequential(
            nn.Dropout(0.5), nn.Linear(c[4] * side * side, hidden), nn.ReLU(inplace=True),
            nn.Dropout(0.5), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGGSmall(nn.Module):
    """VGG-11 with BatchNorm for small images (see the module docstring). Max-pools stop
    where the feature map is 1 px; global average pooling before the classifier."""

    def __init__(self, num_classes: int, image_size: int, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        channels, side = 3, image_size
        for item in VGG11:
            if item == "M":
                if side >= 2:
                    layers.append(nn.MaxPool2d(2))
                    side //= 2
                continue
            out = _scaled(int(item), width)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                       nn.ReLU(inplace=True)]
            channels = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gates from the globally pooled features."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(4, channels // reduction)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an option-A shortcut (subsample, zero-pad the channels)."""

    def __init__(self, c_in: int, c_out: int, stride: int, se: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.se = SqueezeExcite(c_out) if se else None
        self.stride, self.pad = stride, c_out - c_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, ::self.stride, ::self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.se is not None:
            out = self.se(out)
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet-(6n+2): ``blocks`` = n per stage (3: ResNet-20)."""

    def __init__(self, num_classes: int, blocks: int = 3, se: bool = False):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU(inplace=True))
        layers: list[nn.Module] = []
        c_in = 16
        for stage, c_out in enumerate((16, 32, 64)):
            for i in range(blocks):
                layers.append(BasicBlock(c_in, c_out, 2 if stage and i == 0 else 1, se))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


BUILDERS: dict[str, Builder] = {
    "lenet5": lambda n, size, w: LeNet5(n, size),
    "alexnet": lambda n, size, w: AlexNetSmall(n, size, w),
    "vgg11": lambda n, size, w: VGGSmall(n, size, w),
    "googlenet": _googlenet,
    "resnet18": _resnet18,
    "resnet20": lambda n, size, w: CifarResNet(n, 3),
    "se_resnet20": lambda n, size, w: CifarResNet(n, 3, se=True),
    "densenet": _densenet,
    "mobilenet_v2": _mobilenet_v2,
    "mobilenet_v3_small": _mobilenet_v3_small,
    "mnasnet": _mnasnet,
    "shufflenet_v2": _shufflenet_v2,
}
"""One builder ``(num_classes, image_size, width_mult) -> nn.Module`` per catalogue name."""

assert set(BUILDERS) == set(BASELINES), "every catalogue name has a builder"
