"""The comparators from d2l's earlier chapters, as d2l defines them, for 1 input channel.

d2l builds them with ``LazyConv2d`` / ``LazyLinear``; here the input widths are written out (same layers, same
parameter counts, no lazy initialization). All four end in a flatten; AlexNet, VGG-11 and LeNet then feed a
fixed-width ``Linear``, so they accept only a narrow band of input sizes (``inceptionlab min-size`` reports it),
while NiN ends in global average pooling like GoogLeNet.

* ``alexnet`` (d2l 8.1): 224x224, 46,764,746 parameters for 10 classes.
* ``vgg11`` (d2l 8.2, arch ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))): 224x224, 128,806,154 parameters.
* ``nin`` (d2l 8.3): 224x224, 1,992,166 parameters; no fully connected layer at all.
* ``lenet`` (d2l 7.6): 28x28, the *classic* LeNet-5 of the chapter: sigmoid activations and average pooling
  (not the "modern" ReLU / max-pool variant), 61,706 parameters.
"""

from __future__ import annotations

from torch import nn

from inceptionlab.models._blocks import StagedClassifier
from inceptionlab.models._registry import register_model


class AlexNet(StagedClassifier):
    stage_names = ("conv1", "conv2", "conv3_5", "flatten", "head")

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 96, kernel_size=11, stride=4, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )  # N x 96 x 26 x 26 (for 224 x 224 input)
        self.conv2 = nn.Sequential(
            nn.Conv2d(96, 256, kernel_size=5, padding=2), nn.ReLU(), nn.MaxPool2d(kernel_size=3, stride=2)
        )  # N x 256 x 12 x 12
        self.conv3_5 = nn.Sequential(
            nn.Conv2d(256, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 384, kernel_size=3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )  # N x 256 x 5 x 5
        self.flatten = nn.Flatten()  # N x 6400: the fixed width that pins the input size
        self.head = nn.Sequential(
            nn.Linear(6400, 4096), nn.ReLU(), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )


def _vgg_block(num_convs: int, in_channels: int, out_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1), nn.ReLU()]
        in_channels = out_channels
    layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
    return nn.Sequential(*layers)


VGG11_ARCH = ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512))


class VGG(StagedClassifier):
    stage_names = ("block1", "block2", "block3", "block4", "block5", "flatten", "head")

    def __init__(self, arch=VGG11_ARCH, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        if len(arch) != 5:
            raise ValueError("VGG here has exactly five blocks (stage names block1..block5)")
        for i, (num_convs, out_channels) in enumerate(arch, start=1):
            setattr(self, f"block{i}", _vgg_block(num_convs, in_channels, out_channels))
            in_channels = out_channels  # block5: N x 512 x 7 x 7 for 224 x 224
        self.flatten = nn.Flatten()  # N x 25088
        self.head = nn.Sequential(
            nn.Linear(in_channels * 7 * 7, 4096), nn.ReLU(), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )


def _nin_block(in_channels: int, out_channels: int, kernel_size: int, stride: int, padding: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
        nn.Conv2d(out_channels, out_channels, kernel_size=1), nn.ReLU(),
    )


class NiN(StagedClassifier):
    """Network in Network: the classifier is a NiN block with one channel per class, then global average pooling."""

    stage_names = ("block1", "block2", "block3", "head")

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.block1 = nn.Sequential(
            _nin_block(in_channels, 96, 11, 4, 0), nn.MaxPool2d(3, stride=2)
        )  # N x 96 x 26 x 26 (224 x 224 input)
        self.block2 = nn.Sequential(_nin_block(96, 256, 5, 1, 2), nn.MaxPool2d(3, stride=2))  # N x 256 x 12 x 12
        self.block3 = nn.Sequential(
            _nin_block(256, 384, 3, 1, 1), nn.MaxPool2d(3, stride=2), nn.Dropout(p=dropout)
        )  # N x 384 x 5 x 5
        self.head = nn.Sequential(
            _nin_block(384, num_classes, 3, 1, 1), nn.AdaptiveAvgPool2d((1, 1)), nn.Flatten()
        )  # N x num_classes


class LeNet(StagedClassifier):
    """d2l's classic LeNet-5: sigmoid and average pooling, as in the chapter (and LeCun et al. 1998)."""

    stage_names = ("conv1", "conv2", "flatten", "head")

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.conv1 = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2), nn.Sigmoid(), nn.AvgPool2d(2, stride=2)
        )  # N x 6 x 14 x 14 (28 x 28 input)
        self.conv2 = nn.Sequential(nn.Conv2d(6, 16, kernel_size=5), nn.Sigmoid(), nn.AvgPool2d(2, stride=2))  # 16x5x5
        self.flatten = nn.Flatten()  # N x 400
        self.head = nn.Sequential(
            nn.Linear(400, 120), nn.Sigmoid(), nn.Linear(120, 84), nn.Sigmoid(), nn.Linear(84, num_classes)
        )


@register_model("alexnet", natural_size=224, family="classic")
def alexnet(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> AlexNet:
    """d2l's AlexNet (chapter 8.1) for 1 channel: 5 convs, 3 FC layers of which two are 4096 wide."""
    return AlexNet(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model("vgg11", natural_size=224, family="classic")
def vgg11(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> VGG:
    """d2l's VGG-11 (chapter 8.2): ((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)) and 3 FC layers."""
    return VGG(VGG11_ARCH, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model("nin", natural_size=224, family="classic")
def nin(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.5) -> NiN:
    """d2l's Network in Network (chapter 8.3): NiN blocks, global average pooling, no FC layer."""
    return NiN(num_classes=num_classes, in_channels=in_channels, dropout=dropout)


@register_model("lenet", natural_size=28, family="classic")
def lenet(num_classes: int = 10, in_channels: int = 1) -> LeNet:
    """d2l's classic LeNet-5 (chapter 7.6): sigmoid activations, average pooling, 28x28 input."""
    return LeNet(num_classes=num_classes, in_channels=in_channels)
