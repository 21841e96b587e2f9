"""Dense anchor-free head in the FCOS/ATSS family: predicts only, the criterion scores."""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn


class Scale(nn.Module):
    """A learnable scalar per level, so one shared regression conv can serve every stride (FCOS)."""

    def __init__(self, value: float = 1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(float(value)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale


def _tower(channels: int, num_convs: int, groups: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_convs):
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.GroupNorm(groups, channels), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DenseHead(nn.Module):
    """Shared convolution towers over all levels, with classification, box and quality outputs.

    Outputs per level: class logits ``(B, K, H, W)``, box deltas ``(B, 4, H, W)`` in the encoding of
    :class:`~tod_lightning.ops.boxes.PointBoxCoder`, and a quality logit ``(B, 1, H, W)`` trained
    to predict the IoU of the decoded box with its ground truth (sharper than centerness for boxes
    smaller than a stride, where "centerness" of a point outside the box is undefined).

    Args:
        in_channels: channels of each input level (all equal: the towers are shared).
        in_strides: strides of the input levels.
        num_classes: number of foreground classes ``K``.
        num_convs: convs per tower (4 in FCOS/ATSS).
        feat_channels: tower width; defaults to the input channels.
        norm_groups: GroupNorm groups (clipped to divide ``feat_channels``).
        prior_prob: initial foreground probability of the classifier (RetinaNet's 0.01, so the
            focal loss starts balanced over the many negatives).
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        num_classes: int,
        num_convs: int = 4,
        feat_channels: int | None = None,
        norm_groups: int = 32,
        prior_prob: float = 0.01,
    ):
        super().__init__()
        if len(set(in_channels)) != 1:
            raise ValueError(f"DenseHead shares its towers across levels and needs equal channels, got {in_channels}")
        c_in = in_channels[0]
        c = feat_channels or c_in
        groups = math.gcd(norm_groups, c)
        self.num_classes = num_classes
        self.strides = list(in_strides)
        self.input_proj = nn.Identity() if c == c_in else nn.Conv2d(c_in, c, 1)
        self.cls_tower = _tower(c, num_convs, groups)
        self.reg_tower = _tower(c, num_convs, groups)
        self.cls_out = nn.Conv2d(c, num_classes, 3, padding=1)
        self.box_out = nn.Conv2d(c, 4, 3, padding=1)
        self.quality_out = nn.Conv2d(c, 1, 3, padding=1)
        self.scales = nn.ModuleList(Scale(1.0) for _ in in_strides)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        cls_logits, box_deltas, quality_logits = [], [], []
        for feat, scale in zip(features, self.scales):
            feat = self.input_proj(feat)
            cls_feat = self.cls_tower(feat)
            reg_feat = self.reg_tower(feat)
            cls_logits.append(self.cls_out(cls_feat))  # (B, K, H, W)
            box_deltas.append(scale(self.box_out(reg_feat)))  # (B, 4, H, W)
            quality_logits.append(self.quality_out(reg_feat))  # (B, 1, H, W)
        return cls_logits, box_deltas, quality_logits


# What YAML configures: a head class with its settings, called with (in_channels, in_strides, num_classes).
HeadFactory = Callable[[list[int], list[int], int], DenseHead]
