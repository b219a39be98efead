"""Video models for downstream evaluation: an R3D-18-style 3D ResNet with a classification or EF head.

Architecture (Tran et al. 2018, "A Closer Look at Spatiotemporal Convolutions", the R3D-18 of torchvision's
video models), defined here so evaluation needs no downloaded weights (air-gapped clusters; seed §8 item 33):

    stem     Conv3d(C_in -> w, kernel (3, 7, 7), stride (1, 2, 2)) + BN + ReLU
    layer1   2 x BasicBlock3D(w)                  stride 1
    layer2   2 x BasicBlock3D(2w)                 stride 2 in T, H and W
    layer3   2 x BasicBlock3D(4w)                 stride 2
    layer4   2 x BasicBlock3D(8w)                 stride 2
    pool     global average over (T, H, W) -> (B, 8w)
    head     classification: Dropout + Linear(8w -> K) logits; regression: Linear(8w -> 1) in EF units

`width` w = 64 is the published R3D-18 (33 M parameters); w = 8 is the CPU demo (~0.5 M). Global pooling
makes the model agnostic to the clip length and size (any T, H, W >= 1 works; 16 x 112 x 112 is the
reference setting), so `frames` and `size` are data settings, not model settings.
"""

from __future__ import annotations

import torch
from torch import nn

LAYERS = (2, 2, 2, 2)  # BasicBlocks per stage: the "18" of R3D-18


class BasicBlock3D(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (projected by a 1x1x1 conv when the shape changes).

    x: (B, C_in, T, H, W) -> (B, C_out, ceil(T/s), ceil(H/s), ceil(W/s)) for stride s.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm3d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class R3DBackbone(nn.Module):
    """Stem + four residual stages + global average pool. x: (B, C, T, H, W) -> features (B, 8 * width)."""

    def __init__(self, in_channels: int = 1, width: int = 64):
        super().__init__()
        if width < 1 or in_channels < 1:
            raise ValueError(f"width and in_channels must be >= 1, got {width}, {in_channels}")
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, width, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(width),
            nn.ReLU(inplace=True),
        )
        stages, channels = [], width
        for index, blocks in enumerate(LAYERS):
            out_channels, stride = width * 2**index, 1 if index == 0 else 2
            layers = [BasicBlock3D(channels, out_channels, stride)]
            layers += [BasicBlock3D(out_channels, out_channels) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            channels = out_channels
        self.stages = nn.Sequential(*stages)
        self.out_features = channels
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # zero-init the last BN of each block: every block starts as identity, which makes the first
        # epochs of tiny-data training stable (Goyal et al. 2017)
        for module in self.modules():
            if isinstance(module, BasicBlock3D):
                nn.init.zeros_(module.bn2.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> (B, out_features)."""
        return self.stages(self.stem(x)).mean(dim=(2, 3, 4))


class VideoClassifier(nn.Module):
    """R3D backbone + Dropout + Linear. x: (B, C, T, H, W) -> logits (B, num_classes)."""

    def __init__(self, num_classes: int, *, width: int = 64, in_channels: int = 1, dropout: float = 0.5):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
        self.backbone = R3DBackbone(in_channels, width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_features, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class EFRegressor(nn.Module):
    """R3D backbone + Linear, predicting EF in percent. x: (B, C, T, H, W) -> EF (B,).

    The head predicts a standardised value z and returns `ef_mean + ef_std * z`; the two buffers are set from
    the training targets (`set_target_stats`) and saved with the weights. Starting at the training mean
    instead of 0 % spares the first epochs of a tiny run from just learning the offset.
    """

    def __init__(self, *, width: int = 64, in_channels: int = 1, dropout: float = 0.0):
        super().__init__()
        self.backbone = R3DBackbone(in_channels, width)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(self.backbone.out_features, 1))
        self.register_buffer("ef_mean", torch.tensor(0.0))
        self.register_buffer("ef_std", torch.tensor(1.0))

    def set_target_stats(self, mean: float, std: float) -> None:
        self.ef_mean.fill_(float(mean))
        self.ef_std.fill_(max(float(std), 1e-3))

    def standardize(self, ef: torch.Tensor) -> torch.Tensor:
        """EF (B,) in percent -> standardised units (the scale the loss is computed on)."""
        return (ef - self.ef_mean) / self.ef_std

    def forward_standardized(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, T, H, W) -> z (B,), with EF = ef_mean + ef_std * z."""
        return self.head(self.backbone(x)).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ef_mean + self.ef_std * self.forward_standardized(x)


def build_video_model(task: str, *, width: int, num_classes: int = 2, in_channels: int = 1,
                      dropout: float = 0.5) -> nn.Module:
    """Factory: task "classification" -> VideoClassifier, "regression" -> EFRegressor."""
    if task == "classification":
        return VideoClassifier(num_classes, width=width, in_channels=in_channels, dropout=dropout)
    if task == "regression":
        return EFRegressor(width=width, in_channels=in_channels, dropout=dropout)
    raise ValueError(f"unknown video model task {task!r}; use 'classification' or 'regression'")
