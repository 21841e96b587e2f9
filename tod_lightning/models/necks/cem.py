"""Context Enhancement Module (CEM) of E-FPN-BS: coarse-level context injected into the fine levels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from tod_lightning.models.necks.base import Neck, resolve_levels


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with ``min(32, channels)`` groups: detection batches are too small for BatchNorm."""
    return nn.GroupNorm(min(32, channels), channels)


class CEM(Neck):
    """Context Enhancement Module of E-FPN-BS ("CEM-FBGTinyDet", Liu & Cui 2025, arXiv:2506.09897).

    Coarse pyramid levels get few or no positives on tiny objects, so their semantics stay under-trained;
    CEM turns them into context for the fine levels. The paper's design is not public: this follows the
    abstract ("dual-branch processing to align and compress high-level features for effective
    global-local fusion") as designed in this project (methods.md §2.3):

    1. align: every ``source_levels`` map is bilinearly resized to the size of the finest source map
       (an exact target size, never a factor of 2, so odd sizes like 61×47 work);
    2. compress: ``Z = ReLU(GN(Conv1x1(cat(sources))))`` with ``C/2`` channels;
    3. dual branch: local ``L = Conv1x1(ReLU(GN(Conv3x3_dilated(Z))))`` and global
       ``G = Conv1x1(ReLU(Conv1x1(GAP(Z))))``, ``Ctx = L + G`` with ``C`` channels;
    4. inject: for each of ``levels``, ``P_l <- P_l + Conv1x1_l(resize(Ctx -> size of P_l))`` with the
       injection conv ZERO-initialised, so the module is exactly the identity at init and an ablation
       starts at the baseline. Levels not in ``levels`` are returned unchanged (the same tensors).

    Contexts are computed from the input features, before any injection. Works for any number of levels
    and channel counts (``C`` is the largest input channel count).

    Args:
        in_channels: channels of each input level (finest first).
        in_strides: strides of each input level; output strides are the same.
        levels: positions of the levels that receive context (``0`` = finest, e.g. P2 after an FPN with
            ``min_level=2``); ``None`` (default): the two finest.
        source_levels: positions of the levels that provide context (negative counts from the coarsest);
            ``None`` (default): the two coarsest (P5, P6 after a P2..P6 FPN; P3, P4 after a P2..P4 one).
        dilation: dilation of the local branch's 3×3 conv (a wider view on the coarse map).

    ``forward(features, images01) -> (features, {})``: features per level ``(B, C_l, H_l, W_l)``, same
    shapes out.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        levels: Sequence[int] | None = None,
        source_levels: Sequence[int] | None = None,
        dilation: int = 2,
    ):
        super().__init__()
        num_levels = len(in_channels)
        two = min(2, num_levels)
        self.levels = resolve_levels(range(two) if levels is None else levels, num_levels, "levels")
        self.source_levels = resolve_levels(
            range(num_levels - two, num_levels) if source_levels is None else source_levels, num_levels, "source_levels"
        )
        self.out_channels = list(in_channels)
        self.out_strides = list(in_strides)
        width = max(in_channels)  # C: the context's channels
        hidden = max(1, width // 2)  # C/2: the compressed width
        source_channels = sum(in_channels[i] for i in self.source_levels)
        self.compress = Conv2dNormActivation(source_channels, hidden, kernel_size=1, norm_layer=group_norm)
        self.local_branch = nn.Sequential(
            Conv2dNormActivation(hidden, hidden, kernel_size=3, dilation=dilation, norm_layer=group_norm),
            nn.Conv2d(hidden, width, 1),
        )
        # No norm on the pooled (B, C/2, 1, 1) vector: GroupNorm over one pixel per channel would be degenerate.
        self.global_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, width, 1),
        )
        self.inject = nn.ModuleList(nn.Conv2d(width, in_channels[i], 1) for i in self.levels)
        for conv in self.inject:
            # Zero weight and bias: the output equals the input at init (identity), yet the weight still
            # gets a gradient (it multiplies the non-zero context), so the injection learns from step one.
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def context(self, features: list[Tensor]) -> Tensor:
        """The fused context ``(B, C, h_s, w_s)`` at the size of the finest source level."""
        size = features[self.source_levels[0]].shape[-2:]
        aligned = [
            features[i]
            if features[i].shape[-2:] == size
            else F.interpolate(features[i], size=size, mode="bilinear", align_corners=False)
            for i in self.source_levels
        ]
        z = self.compress(torch.cat(aligned, dim=1))  # (B, C/2, h_s, w_s)
        return self.local_branch(z) + self.global_branch(z)  # (B, C, h_s, w_s) + (B, C, 1, 1)

    def forward(self, features: list[Tensor], images01: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        ctx = self.context(features)
        out = list(features)
        for conv, i in zip(self.inject, self.levels):
            # A 1x1 conv and a bilinear resize commute (both linear, resize weights sum to 1), so project
            # at the coarse size and resize the result: the same values as resize-then-project, far cheaper.
            delta = conv(ctx)  # (B, C_l, h_s, w_s)
            size = features[i].shape[-2:]
            if delta.shape[-2:] != size:
                delta = F.interpolate(delta, size=size, mode="bilinear", align_corners=False)  # (B, C_l, H_l, W_l)
            out[i] = features[i] + delta
        return out, {}
