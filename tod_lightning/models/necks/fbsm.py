"""Foreground-Background Separation Module (FBSM) of E-FPN-BS: spatial gating masks on the fine levels."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from tod_lightning.models.necks.base import Neck, resolve_levels
from tod_lightning.models.necks.cem import group_norm


class FBSM(Neck):
    """Foreground-Background Separation Module of E-FPN-BS ("CEM-FBGTinyDet", Liu & Cui 2025, arXiv:2506.09897).

    The abstract says FBSM "generates spatial gating masks that dynamically amplify discriminative
    regions"; the paper's design is not public, so this is the project's own (methods.md §2.3). For each
    of ``levels``, with its own (unshared) weights::

        h = ReLU(GN(Conv3x3(C -> C/reduction)(P_l)))          (B, C/r, H_l, W_l)
        M = sigmoid(Conv1x1(C/r -> 1)(h))                       (B, 1, H_l, W_l), in (0, 1)
        P_l <- P_l * (1 + M)                                    (B, C, H_l, W_l)

    The mask conv starts with zero weight and bias ``-log((1 - prior) / prior)``, so ``M = prior``
    everywhere and the module multiplies features by exactly ``1 + prior`` (1.01) at init: within 1% of
    the identity. ``1 + M`` only amplifies (never suppresses below the input), matching the abstract's
    "amplify". The masks are unsupervised. Levels not in ``levels`` are returned unchanged. Works on any
    feature-map size.

    Args:
        in_channels: channels of each input level (finest first).
        in_strides: strides of each input level; output strides are the same.
        levels: positions of the gated levels (``0`` = finest; negatives count from the coarsest);
            ``None`` (default): the three finest, or all when fewer (P2..P4 after an FPN with ``min_level=2``).
        reduction: channel reduction of the mask branch's hidden layer.
        prior: initial mask value ``π`` in (0, 1).
        return_masks: also return the masks in ``aux`` as ``fbsm_mask_s<stride>`` ``(B, 1, H_l, W_l)``
            (for inspection and logging; they cost memory in eval).

    ``forward(features, images01) -> (features, aux)``: same shapes out.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        levels: Sequence[int] | None = None,
        reduction: int = 4,
        prior: float = 0.01,
        return_masks: bool = False,
    ):
        super().__init__()
        if not 0.0 < prior < 1.0:
            raise ValueError(f"prior must lie in (0, 1), got {prior}")
        num_levels = len(in_channels)
        self.levels = resolve_levels(range(min(3, num_levels)) if levels is None else levels, num_levels, "levels")
        self.out_channels = list(in_channels)
        self.out_strides = list(in_strides)
        self.return_masks = return_masks
        self.mask_branches = nn.ModuleList()
        for i in self.levels:
            hidden = max(1, in_channels[i] // reduction)
            mask_conv = nn.Conv2d(hidden, 1, 1)
            nn.init.zeros_(mask_conv.weight)
            # sigmoid(bias) = prior: the focal-loss prior trick, here to start within 1% of the identity.
            nn.init.constant_(mask_conv.bias, -math.log((1.0 - prior) / prior))
            self.mask_branches.append(
                nn.Sequential(
                    Conv2dNormActivation(in_channels[i], hidden, kernel_size=3, norm_layer=group_norm),
                    mask_conv,
                    nn.Sigmoid(),
                )
            )

    def forward(self, features: list[Tensor], images01: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        out = list(features)
        aux: dict[str, Tensor] = {}
        for branch, i in zip(self.mask_branches, self.levels):
            mask = branch(features[i])  # (B, 1, H_l, W_l), broadcast over channels
            out[i] = features[i] * (1.0 + mask)
            if self.return_masks:
                aux[f"fbsm_mask_s{self.out_strides[i]}"] = mask
        return out, aux
