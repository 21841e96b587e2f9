"""Backbones: any hierarchical timm ``features_only`` model, read through its ``feature_info``."""

from __future__ import annotations

from typing import Sequence

import timm
import torch
from torch import Tensor, nn


class Backbone(nn.Module):
    """Base of every backbone (and backbone wrapper, e.g. image-pyramid guidance).

    Contract: ``forward(images_norm (B,3,H,W)) -> list[(B, C_i, H/s_i, W/s_i)]`` ordered by increasing
    stride, with ``out_channels`` and ``out_strides`` describing the list, and ``mean``/``std`` (RGB,
    for images in [0, 1]) that the detector uses to normalise its input.
    """

    out_channels: list[int]
    out_strides: list[int]
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


class TimmBackbone(Backbone):
    """A timm model created with ``features_only=True``, keeping the levels of the requested strides.

    Args:
        model_name: any timm model with a hierarchical ``feature_info`` (ResNets, ConvNeXt, Swin, ...).
        pretrained: load timm's pretrained weights (needs network or a populated hub cache).
        out_strides: strides to return, e.g. ``(4, 8, 16, 32)``; a model without one of them is rejected
            with the strides it does have.
        model_kwargs: passed to ``timm.create_model`` (e.g. ``drop_path_rate``; for Swin,
            ``strict_img_size: false`` to accept any input size).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        pretrained: bool = False,
        out_strides: Sequence[int] = (4, 8, 16, 32),
        model_kwargs: dict | None = None,
    ):
        super().__init__()
        model_kwargs = dict(model_kwargs or {})
        # Build once on the meta device (no memory, no weights) to read which levels exist.
        with torch.device("meta"):
            probe = timm.create_model(model_name, features_only=True, pretrained=False, **model_kwargs)
        reductions = list(probe.feature_info.reduction())
        missing = [s for s in out_strides if s not in reductions]
        if missing:
            raise ValueError(
                f"timm model '{model_name}' has feature strides {reductions}, but strides {list(out_strides)} were "
                f"requested ({missing} missing). A tiny-object detector needs a stride-4 level for P2; choose a "
                "hierarchical model (ResNet, ConvNeXt, Swin, EfficientNet, ...) or change out_strides."
            )
        # The last index with each stride (e.g. ResNet stem and layer1 both report stride 4 on some models).
        out_indices = [max(i for i, r in enumerate(reductions) if r == s) for s in out_strides]
        del probe
        self.model = timm.create_model(
            model_name, features_only=True, pretrained=pretrained, out_indices=out_indices, **model_kwargs
        )
        self.out_channels = list(self.model.feature_info.channels())
        self.out_strides = list(self.model.feature_info.reduction())
        cfg = getattr(self.model, "pretrained_cfg", None) or {}
        self.mean = tuple(cfg.get("mean", Backbone.mean))
        self.std = tuple(cfg.get("std", Backbone.std))

    def forward(self, images_norm: Tensor) -> list[Tensor]:
        features = self.model(images_norm)
        out = []
        for feat, channels in zip(features, self.out_channels):
            # Some timm models (Swin) return NHWC features; the detector works in NCHW.
            if feat.shape[1] != channels and feat.shape[-1] == channels:
                feat = feat.permute(0, 3, 1, 2).contiguous()  # (B, C, H, W)
            out.append(feat)
        return out
