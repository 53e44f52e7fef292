"""GoogLeNet as the 2014 paper describes it (Szegedy et al., "Going Deeper with Convolutions", Table 1, Fig. 3).

What the paper has and d2l's simplified chapter network drops:

* Local response normalization after the stem's first convolution+pool and after its second conv (Caffe's
  ``LRN``: size 5, alpha 1e-4, beta 0.75).
* Max-pools in Caffe's rounding, i.e. ``ceil_mode=True`` without padding (3x3, stride 2).
* Two auxiliary classifiers, on top of inception (4a) and (4d): average pool, 1x1 conv 128 + ReLU, FC 1024 + ReLU,
  dropout 0.7, FC to the classes. Their losses are added with weight 0.3 (``aux_loss_weight``) during training and
  the heads are ignored at inference.
* Dropout 0.4 before the final linear layer.

Inception blocks themselves are the same as the chapter's (real 5x5 branches; torchvision keeps a 3x3 there).

Adaptation to 96x96 inputs (the paper uses 224x224): at 224 the (4a)/(4d) maps are 14x14 and the aux head's
5x5/3 average pool makes them 4x4. At 96 those maps are 6x6, where a 5x5/3 pool would leave 1x1, so the aux head
uses ``AdaptiveAvgPool2d(4)`` instead: it still hands 128 x 4 x 4 = 2048 features to FC 1024, as in the paper, at any
input size. Likewise the final 7x7 average pool becomes a global (adaptive) average pool.

Training mode: ``forward`` returns ``(logits, (aux1_logits, aux2_logits))``; eval mode: ``logits`` only, so
evaluation and ONNX export see one tensor. Use :func:`inceptionlab.models.classification_loss` for the loss.
"""

from __future__ import annotations

import torch
from torch import nn

from inceptionlab.models._registry import register_model
from inceptionlab.models.googlenet import Inception


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)  # Caffe rounds pooled sizes up


def _lrn() -> nn.LocalResponseNorm:
    return nn.LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)


class InceptionAux(nn.Module):
    """The paper's auxiliary classifier (section 5), pooled adaptively to 4x4 (see the module docstring)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = nn.Conv2d(in_channels, 128, kernel_size=1)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.dropout = nn.Dropout(p=0.7)
        self.fc2 = nn.Linear(1024, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(self.pool(x)))  # N x 128 x 4 x 4
        x = torch.relu(self.fc1(torch.flatten(x, 1)))  # N x 1024
        return self.fc2(self.dropout(x))


class GoogLeNetPaper(nn.Module):
    """The 2014 GoogLeNet. Stage names follow the chapter (b1..b5); b4 is split where the aux heads tap it."""

    stage_names = ("b1", "b2", "b3", "b4a", "b4bcd", "b4e", "b5", "head")
    aux_loss_weight = 0.3

    def __init__(self, num_classes: int = 10, in_channels: int = 1, dropout: float = 0.4, aux_dropout: float = 0.7):
        super().__init__()
        self.b1 = nn.Sequential(
            nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3), nn.ReLU(), _pool(), _lrn()
        )  # N x 64 x 24 x 24 (for 96 x 96 input)
        self.b2 = nn.Sequential(
            nn.Conv2d(64, 64, kernel_size=1), nn.ReLU(),
            nn.Conv2d(64, 192, kernel_size=3, padding=1), nn.ReLU(),
            _lrn(), _pool(),
        )  # N x 192 x 12 x 12
        self.b3 = nn.Sequential(
            Inception(192, 64, (96, 128), (16, 32), 32),  # 3a
            Inception(256, 128, (128, 192), (32, 96), 64),  # 3b
            _pool(),
        )  # N x 480 x 6 x 6
        self.b4a = Inception(480, 192, (96, 208), (16, 48), 64)  # N x 512 x 6 x 6
        self.b4bcd = nn.Sequential(
            Inception(512, 160, (112, 224), (24, 64), 64),  # 4b
            Inception(512, 128, (128, 256), (24, 64), 64),  # 4c
            Inception(512, 112, (144, 288), (32, 64), 64),  # 4d
        )  # N x 528 x 6 x 6
        self.b4e = nn.Sequential(Inception(528, 256, (160, 320), (32, 128), 128), _pool())  # N x 832 x 3 x 3
        self.b5 = nn.Sequential(
            Inception(832, 256, (160, 320), (32, 128), 128),  # 5a
            Inception(832, 384, (192, 384), (48, 128), 128),  # 5b
            nn.AdaptiveAvgPool2d((1, 1)),
            nn.Flatten(),
        )  # N x 1024
        self.head = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(1024, num_classes))
        self.aux1 = InceptionAux(512, num_classes)
        self.aux2 = InceptionAux(528, num_classes)
        self.aux1.dropout.p = self.aux2.dropout.p = aux_dropout

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, with_aux=False)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    def _forward(self, x: torch.Tensor, with_aux: bool):
        x = self.b4a(self.b3(self.b2(self.b1(x))))
        aux1 = self.aux1(x) if with_aux else None
        x = self.b4bcd(x)
        aux2 = self.aux2(x) if with_aux else None
        return self.b5(self.b4e(x)), aux1, aux2

    def forward(self, x: torch.Tensor):
        features, aux1, aux2 = self._forward(x, with_aux=self.training)
        logits = self.forward_head(features)
        if self.training:
            return logits, (aux1, aux2)
        return logits


@register_model("googlenet-paper", natural_size=96, family="googlenet")
def googlenet_paper(num_classes: int = 10, in_channels: int = 1, dropout: float = 0.4) -> GoogLeNetPaper:
    """GoogLeNet as in the 2014 paper: LRN, ceil-mode pools, 2 auxiliary classifiers (weight 0.3), dropout 0.4."""
    return GoogLeNetPaper(num_classes=num_classes, in_channels=in_channels, dropout=dropout)
