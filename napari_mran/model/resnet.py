"""ResNet-18 style convolutional trunk used by the MRAN upstream branch.

Written from the layout in ``docs/mran-spec.md`` section 2 (no torchvision):

* stem: 7x7 conv, stride 2, padding 3, no bias -> BatchNorm -> ReLU ->
  3x3 max-pool, stride 2, padding 1;
* four stages of two :class:`BasicBlock` each, widths ``(64, 128, 256, 512)``
  scaled by a width multiplier; stage 1 keeps the resolution, stages 2-4 halve it;
* a 1x1 conv + BatchNorm projection on the shortcut wherever the block changes the
  number of channels or the resolution.

The trunk has an overall stride of 32: a 128 x 128 patch becomes a
``(E, 4, 4)`` map with ``E`` the last stage width (512 at width 1).
There is no global pooling and no classifier here; MRAN puts its own attention
pooling and shared classifier on top.
"""

from __future__ import annotations

import torch
from torch import nn

#: Number of BasicBlocks per stage (ResNet-18).
STAGE_BLOCKS: tuple[int, int, int, int] = (2, 2, 2, 2)
#: Stage widths at width multiplier 1.0.
BASE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
#: Overall spatial down-sampling factor of the trunk (stem /4, stages 2-4 /8).
TRUNK_STRIDE: int = 32


def stage_widths(width: float) -> tuple[int, int, int, int]:
    """Channel widths of the four stages for a width multiplier.

    ``round(64 * width), round(128 * width), ...``; the stem has the width of stage 1.

    Raises:
        ValueError: if any width would be smaller than one channel.
    """
    w1, w2, w3, w4 = (int(round(base * width)) for base in BASE_WIDTHS)
    widths = (w1, w2, w3, w4)
    if min(widths) < 1:
        raise ValueError(f"width multiplier {width!r} gives stage widths {widths}; every stage needs >= 1 channel")
    return widths


class Projection(nn.Module):
    """Shortcut projection: 1x1 conv (no bias, with stride) followed by BatchNorm."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H / stride, W / stride)."""
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and a residual connection.

    ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))`` where ``shortcut`` is the
    identity, or a :class:`Projection` when the shape changes.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.proj: Projection | None = (
            Projection(in_channels, out_channels, stride) if stride != 1 or in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, Cin, H, W) -> (B, Cout, H / stride, W / stride)."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.proj is None else self.proj(x)
        return torch.relu(out + shortcut)


class ResNetTrunk(nn.Module):
    """ResNet-18 feature extractor without pooling or classifier.

    Args:
        width: width multiplier; 1.0 is the standard ResNet-18 (11,176,512 parameters).

    Attributes:
        widths: the four stage widths.
        out_channels: channels of the output map (the last stage width).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.widths = stage_widths(width)
        self.out_channels = self.widths[-1]
        self.stem_conv = nn.Conv2d(3, self.widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.stem_bn = nn.BatchNorm2d(self.widths[0])
        self.stem_pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        stages: list[nn.Module] = []
        in_channels = self.widths[0]
        for index, (out_channels, n_blocks) in enumerate(zip(self.widths, STAGE_BLOCKS)):
            stride = 1 if index == 0 else 2
            blocks = [BasicBlock(in_channels, out_channels, stride)]
            blocks += [BasicBlock(out_channels, out_channels, 1) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*blocks))
            in_channels = out_channels
        self.stages = nn.ModuleList(stages)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He (fan-out) init for convs; BatchNorm weight 1, bias 0, fresh running stats."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, out_channels, ceil(H / 32), ceil(W / 32))."""
        x = self.stem_pool(torch.relu(self.stem_bn(self.stem_conv(x))))
        for stage in self.stages:
            x = stage(x)
        return x
