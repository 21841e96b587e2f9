"""SGDM: static-guided dynamic spatial attention (the RDConv block) and the per-level neck that applies it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tod_lightning.models.necks.base import Neck, resolve_levels

KernelMode = Literal["compact", "depthwise"]


class RDConv(nn.Module):
    """Static-guided Razor Dynamic Convolution: one spatial-attention block of SGDM.

    Paper: Xing, Cui & Qi, "SGDM: Static-Guided Dynamic Module Make Stronger Visual Models", arXiv:2403.18282.
    Neither the full paper nor code was available: this is the project's own design built on the abstract
    (methods.md §3.3), in which the block named ``RDConv`` here holds both the paper's Razor Dynamic
    Convolution and the static guidance that SGDM adds to it. For ``X (B, C, H, W)``:

    * Razor: ``R = cat[mean_c(X), max_c(X)]`` ``(B, 2, H, W)`` (CBAM-style channel "shaving", so the
      dynamic convolution of the compact mode acts on two channels only);
    * dynamic kernels, per sample: spatial branch ``S = Conv1x1(AdaptiveAvgPool_k×k(R))`` (keeps the spatial
      layout) plus global branch ``g = FC(ReLU(FC(GAP(X))))``; ``W_dyn = S + g``;
      compact mode: ``W_dyn (B, 1, 2, k, k)`` applied to ``R`` -> ``A_dyn (B, 1, H, W)``;
      depthwise mode: ``W_dyn (B, C, 1, k, k)`` applied depthwise to ``X`` -> ``A_dyn (B, C, H, W)``;
    * static guidance: ONE shared weight vector ``v (2, k)`` used both as a 1×k and as a k×1 kernel on
      ``R`` (asymmetric kernels with shared weights), ``A_st = A_h + A_v + b`` ``(B, 1, H, W)``;
    * attention ``A = sigmoid(A_dyn + A_st)``; output ``Y = X ⊙ A`` (``residual=True``: ``X ⊙ (1 + A)``).

    Init (spec): ``v ~ N(0, 0.01)``, ``b = 0``, the last FC of the global branch and the spatial-branch conv
    are zero, so ``W_dyn = 0`` and the block starts as pure static attention, ``A ≈ 0.5`` (the spec does not
    propose an identity start: ``Y ≈ 0.5·X``, or ``1.5·X`` with ``residual``). The generators still learn
    from step one: their last layers get the non-zero gradient ``∂L/∂W_dyn``.

    Args:
        channels: ``C`` of the input.
        kernel_size: ``k`` of the dynamic and static kernels (odd; padding ``k // 2`` keeps the size).
        reduction: ``r``, the global branch's hidden width is ``max(C // r, min_hidden)``.
        kernel_mode: ``"compact"`` (2-channel dynamic kernel on ``R``, about ``C²/r`` parameters) or
            ``"depthwise"`` (per-channel dynamic kernels on ``X``, about ``C²k²/r``, the paper's budget order).
        residual: ``Y = X ⊙ (1 + A)`` instead of ``X ⊙ A``.
        min_hidden: lower bound of the hidden width, so narrow inputs (C < 8r) keep enough ReLU units alive.

    ``forward(x (B, C, H, W)) -> (B, C, H, W)``, any ``H, W``; samples never mix (per-sample kernels).
    """

    def __init__(
        self,
        channels: int,
        kernel_size: int = 7,
        reduction: int = 16,
        kernel_mode: KernelMode = "compact",
        residual: bool = False,
        min_hidden: int = 8,
    ):
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"RDConv kernel_size must be odd (padding k // 2 keeps the size), got {kernel_size}")
        if kernel_mode not in ("compact", "depthwise"):
            raise ValueError(f"RDConv kernel_mode must be 'compact' or 'depthwise', got {kernel_mode!r}")
        self.channels = channels
        self.kernel_size = kernel_size
        self.kernel_mode = kernel_mode
        self.residual = residual
        # Dynamic kernels have one k×k slice per kernel channel: 2 (mean, max of R) or C (depthwise on X).
        self.kernel_channels = 2 if kernel_mode == "compact" else channels
        hidden = max(channels // reduction, min_hidden)
        k2 = kernel_size * kernel_size
        # Spatial branch: the k×k-pooled razor map keeps "where" the activity is; a 1×1 conv mixes mean/max.
        self.spatial_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(kernel_size), nn.Conv2d(2, self.kernel_channels, kernel_size=1)
        )
        # Global branch: squeeze-excitation-like MLP on the channel descriptor, emitting a full kernel.
        self.global_branch = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(1),
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, self.kernel_channels * k2),
        )
        # Static guidance: one shared (2, k) vector, used as a 1×k and as a k×1 kernel.
        self.static_weight = nn.Parameter(torch.randn(2, kernel_size) * 0.01)
        self.static_bias = nn.Parameter(torch.zeros(1))
        # Zero last layers: W_dyn = 0 at init (pure static attention), yet they receive ∂L/∂W_dyn ≠ 0.
        for layer in (self.spatial_branch[1], self.global_branch[-1]):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    @staticmethod
    def razor(x: Tensor) -> Tensor:
        """``R = cat[mean_c(X), max_c(X)]``: ``(B, C, H, W) -> (B, 2, H, W)``."""
        return torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)  # (B, 2, H, W)

    def dynamic_kernels(self, x: Tensor, r: Tensor) -> Tensor:
        """Per-sample kernels ``W_dyn = S + g``: ``(B, K, k, k)`` with ``K = 2`` (compact) or ``C`` (depthwise)."""
        b, k = x.shape[0], self.kernel_size
        s = self.spatial_branch(r)  # (B, K, k, k)
        g = self.global_branch(x).view(b, self.kernel_channels, k, k)  # (B, K*k*k) -> (B, K, k, k)
        return s + g

    def static_attention(self, r: Tensor) -> Tensor:
        """``A_st = conv_1×k(R; v) + conv_k×1(R; v) + b``: ``(B, 2, H, W) -> (B, 1, H, W)``."""
        k, p = self.kernel_size, self.kernel_size // 2
        v = self.static_weight.to(r.dtype)
        a_h = F.conv2d(r, v.view(1, 2, 1, k), padding=(0, p))  # (B, 1, H, W)
        a_v = F.conv2d(r, v.view(1, 2, k, 1), padding=(p, 0))  # (B, 1, H, W)
        return a_h + a_v + self.static_bias.to(r.dtype)

    def dynamic_attention(self, x: Tensor, r: Tensor) -> Tensor:
        """``A_dyn``: ``(B, 1, H, W)`` (compact) or ``(B, C, H, W)`` (depthwise), each sample its own kernel."""
        b, c, h, w = x.shape
        kernels = self.dynamic_kernels(x, r).to(x.dtype)  # (B, K, k, k)
        p = self.kernel_size // 2
        if self.kernel_mode == "compact":
            # One grouped conv runs B independent 2->1 convolutions: group i sees only sample i.
            out = F.conv2d(r.reshape(1, b * 2, h, w), kernels, padding=p, groups=b)  # (1, B, H, W)
            return out.view(b, 1, h, w)
        # Depthwise: B*C groups, one k×k kernel per (sample, channel).
        weight = kernels.reshape(b * c, 1, self.kernel_size, self.kernel_size)  # (B*C, 1, k, k)
        out = F.conv2d(x.reshape(1, b * c, h, w), weight, padding=p, groups=b * c)  # (1, B*C, H, W)
        return out.view(b, c, h, w)

    def attention(self, x: Tensor) -> Tensor:
        """``A = sigmoid(A_dyn + A_st)`` in (0, 1): ``(B, 1, H, W)`` (compact) or ``(B, C, H, W)`` (depthwise)."""
        r = self.razor(x)  # (B, 2, H, W)
        return torch.sigmoid(self.dynamic_attention(x, r) + self.static_attention(r))

    def forward(self, x: Tensor) -> Tensor:
        a = self.attention(x)  # broadcasts over channels in compact mode
        return x * (1 + a) if self.residual else x * a


class SGDM(Neck):
    """SGDM spatial attention on pyramid levels: one (unshared) :class:`RDConv` per selected level.

    Paper: arXiv:2403.18282 (design from the abstract; see :class:`RDConv`). The project's default places one
    block on every FPN output before the head (methods.md §3.3); put it before the FPN to test the
    backbone-side ablation. Levels not selected are returned unchanged (the same tensors).

    Args:
        in_channels: channels of each input level (may differ per level).
        in_strides: strides of each input level; output strides and channels are the same.
        levels: positions of the enhanced levels (``0`` = finest input level, negatives count from the
            coarsest); ``None`` (default): all levels.
        kernel_size, reduction, kernel_mode, residual, min_hidden: settings of every :class:`RDConv`.

    ``forward(features, images01) -> (features, {})``: per level ``(B, C_l, H_l, W_l)``, same shapes out;
    ``images01`` is not used.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        levels: Sequence[int] | None = None,
        kernel_size: int = 7,
        reduction: int = 16,
        kernel_mode: KernelMode = "compact",
        residual: bool = False,
        min_hidden: int = 8,
    ):
        super().__init__()
        n = len(in_channels)
        self.levels = resolve_levels(range(n) if levels is None else levels, n, "levels")
        self.out_channels = list(in_channels)
        self.out_strides = list(in_strides)
        self.blocks = nn.ModuleList(
            RDConv(in_channels[i], kernel_size, reduction, kernel_mode, residual, min_hidden) for i in self.levels
        )

    def forward(self, features: list[Tensor], images01: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        out = list(features)
        for block, i in zip(self.blocks, self.levels):
            out[i] = block(features[i])  # (B, C_l, H_l, W_l)
        return out, {}
