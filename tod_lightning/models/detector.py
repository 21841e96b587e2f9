"""Backbone -> necks -> head, returning one :class:`DetectorOutput` in train and eval."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tod_lightning.models.backbone import Backbone
from tod_lightning.models.heads.dense_head import HeadFactory
from tod_lightning.models.necks.base import NeckFactory
from tod_lightning.structures import DetectorOutput


class Detector(nn.Module):
    """A dense detector assembled from injected parts; no training code, no Lightning.

    Args:
        backbone: a :class:`Backbone` (e.g. :class:`TimmBackbone`).
        necks: neck factories applied in order, each built from the previous stage's
            ``(out_channels, out_strides)``; the first is usually :class:`FPN`.
        head: head factory called with ``(in_channels, in_strides, num_classes)``.
        num_classes: number of foreground classes (linked from the data).

    ``forward(images01)`` takes the batch in [0, 1] (``(B, 3, H, W)``, H and W multiples of the largest
    stride) and normalises it inside, so enhancers that need the image itself (SR-TOD) see it as is.
    """

    def __init__(self, backbone: Backbone, necks: Sequence[NeckFactory], head: HeadFactory, num_classes: int):
        super().__init__()
        self.backbone = backbone
        channels, strides = list(backbone.out_channels), list(backbone.out_strides)
        built = []
        for factory in necks:
            neck = factory(channels, strides)
            channels, strides = list(neck.out_channels), list(neck.out_strides)
            built.append(neck)
        self.necks = nn.ModuleList(built)
        self.head = head(channels, strides, num_classes)
        self.strides = strides
        self.num_classes = num_classes
        self.register_buffer("pixel_mean", torch.tensor(backbone.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(backbone.std).view(1, 3, 1, 1), persistent=False)

    @property
    def size_divisor(self) -> int:
        """Input height and width must be multiples of this (the largest stride)."""
        return max(max(self.strides), max(self.backbone.out_strides))

    def forward(self, images01: Tensor) -> DetectorOutput:
        h, w = images01.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(
                f"input size {h}x{w} is not a multiple of the largest stride {self.size_divisor}; "
                f"set the datamodule's size_divisor to {self.size_divisor}"
            )
        x = (images01 - self.pixel_mean) / self.pixel_std
        features = self.backbone(x)
        aux: dict[str, Tensor] = {}
        for neck in self.necks:
            features, neck_aux = neck(features, images01)
            aux.update(neck_aux)
        cls_logits, box_deltas, quality_logits = self.head(features)
        return DetectorOutput(cls_logits, box_deltas, quality_logits, list(self.strides), (h, w), aux)
