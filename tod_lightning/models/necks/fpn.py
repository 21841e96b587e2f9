"""Feature Pyramid Network with a stride-4 level (P2) and optional extra levels up to P7."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from tod_lightning.models.necks.base import Neck


class FPN(Neck):
    """Top-down FPN (Lin et al., CVPR 2017, arXiv:1612.03144) producing levels P{min_level}..P{max_level}.

    Levels up to the backbone's deepest stride come from lateral 1×1 + top-down sum + 3×3 smoothing;
    levels beyond it from stride-2 3×3 convs on the previous output (RetinaNet/FCOS style, ReLU between).

    Args:
        in_channels: channels of the backbone levels (from ``feature_info``).
        in_strides: strides of the backbone levels; must include ``2**min_level``.
        out_channels: channels of every output level.
        min_level: finest level; 2 (stride 4) is the tiny-object default.
        max_level: coarsest level, at most 7 (stride 128).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        out_channels: int = 256,
        min_level: int = 2,
        max_level: int = 5,
    ):
        super().__init__()
        if not 2 <= min_level <= max_level <= 7:
            raise ValueError(f"FPN levels must satisfy 2 <= min_level <= max_level <= 7, got {min_level}..{max_level}")
        min_stride = 2**min_level
        if min_stride not in in_strides:
            raise ValueError(
                f"FPN min_level={min_level} needs a backbone level of stride {min_stride}; got {in_strides}"
            )
        # Backbone levels used: from stride 2**min_level up to the backbone's deepest level (or max_level).
        self.in_index = [i for i, s in enumerate(in_strides) if min_stride <= s <= 2**max_level]
        used_channels = [in_channels[i] for i in self.in_index]
        used_strides = [in_strides[i] for i in self.in_index]
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in used_channels)
        self.smooth = nn.ModuleList(nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in used_channels)
        num_extra = max_level - min_level + 1 - len(used_strides)
        self.extra = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1) for _ in range(num_extra)
        )
        self.out_strides = used_strides + [used_strides[-1] * 2 ** (i + 1) for i in range(num_extra)]
        self.out_channels = [out_channels] * len(self.out_strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.zeros_(m.bias)

    def forward(self, features: list[Tensor], images01: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        laterals = [conv(features[i]) for conv, i in zip(self.lateral, self.in_index)]
        for i in range(len(laterals) - 1, 0, -1):
            # Nearest upsampling to the finer map's exact size: odd sizes (e.g. 61×47) do not double exactly.
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        outs = [conv(x) for conv, x in zip(self.smooth, laterals)]
        for i, conv in enumerate(self.extra):
            outs.append(conv(outs[-1] if i == 0 else F.relu(outs[-1])))  # (B, C, ceil(H/2), ceil(W/2))
        return outs, {}
