"""SR-TOD: self-reconstruction of the image from P2 and difference-map guided enhancement of P2."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from timm.layers.cbam import ChannelAttn
from torch import Tensor, nn

from tod_lightning.models.necks.base import Neck

ThresholdMode = Literal["official", "ste", "soft"]
MaskResize = Literal["nearest", "max"]

# SR-TOD reconstructs from the stride-4 level with two ×2 up-blocks.
_LEVEL_STRIDE = 4


class ReconstructionHead(nn.Module):
    """SR-TOD's reconstruction head (RH): P2 ``(B, C, h, w)`` -> image ``(B, 3, 4h, 4w)`` in (0, 1).

    Two up-blocks (a stride-2 transposed conv, then two bias-free 3×3 conv + ReLU) and a 3-channel output
    conv with a sigmoid, as in the official code (``srtod_cascadercnn.py``). At ``C = 256`` with the default
    widths this is exactly the official head (1,025,923 parameters). PyTorch default initialisation, as there.

    Args:
        in_channels: channels ``C`` of P2; the first transposed conv maps ``C -> max(1, C // 2)``.
        widths: channels of the two up-blocks (official ``(128, 64)``).
        out_kernel: kernel of the output conv (official code 3; the paper text says 1).
    """

    def __init__(self, in_channels: int, widths: tuple[int, int] = (128, 64), out_kernel: int = 3):
        super().__init__()
        if out_kernel % 2 != 1:
            raise ValueError(f"rh_out_kernel must be odd to keep the image size, got {out_kernel}")
        mid = max(1, in_channels // 2)
        w1, w2 = widths
        self.up1 = nn.Sequential(
            nn.ConvTranspose2d(in_channels, mid, 4, stride=2, padding=1),  # exactly ×2: (2h, 2w)
            nn.Conv2d(mid, w1, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(w1, w1, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )
        self.up2 = nn.Sequential(
            nn.ConvTranspose2d(w1, w2, 4, stride=2, padding=1),  # (4h, 4w)
            nn.Conv2d(w2, w2, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(w2, w2, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )
        self.out = nn.Conv2d(w2, 3, out_kernel, padding=out_kernel // 2)

    def forward(self, p2: Tensor) -> Tensor:
        x = self.up1(p2)  # (B, w1, 2h, 2w)
        x = self.up2(x)  # (B, w2, 4h, 4w)
        return torch.sigmoid(self.out(x))  # (B, 3, 4h, 4w)


class SRTOD(Neck):
    """SR-TOD neck enhancer (Cao et al., "Visible and Clear: Finding Tiny Objects in Difference Map",
    ECCV 2024, arXiv:2405.11276; official code github.com/Hiyuur/SR-TOD).

    Placed after the FPN. A reconstruction head (RH) rebuilds the input image from P2; the difference map
    ``D = mean_RGB |I_r - I_o|`` marks where information was lost, which is where tiny objects are. DGFE
    thresholds ``D`` at a learnable ``t``, resizes the mask to P2 and amplifies P2 there, together with a
    CBAM-style channel reweighting::

        mask = (sign(D - t) + 1) / 2                      # (B, 1, H, W), values {0, 0.5, 1}
        P2'  = P2 * sigmoid(MLP(avg P2) + MLP(max P2)) * (1 + resize(mask))

    P2' replaces P2; the other levels pass through untouched. RH and DGFE also run at inference (DGFE needs
    ``D``). The reconstruction is scored by :class:`~tod_lightning.losses.ReconstructionLoss`, whose gradient
    reaches P2 and the backbone (RH's input is not detached). Detection losses never reach RH: the mask
    depends on ``D`` only through ``sign`` (zero derivative) or, in the ``ste``/``soft`` surrogates, through
    ``D.detach()``.

    The threshold is the parameter ``threshold`` (a scalar; optimizer prefix ``detector.necks.<i>.threshold``),
    clamped to [0, 1] where it is used. In ``official`` mode it receives no gradient at all (methods.md §1.5),
    so it is listed in ``gradient_free_parameters``.

    Args:
        in_channels: channels of the input levels (from the FPN); P2's count is ``C``.
        in_strides: strides of the input levels; must include 4 (P2).
        rh_widths: widths of RH's two up-blocks (official ``(128, 64)``).
        rh_out_kernel: RH output conv kernel (official code 3).
        mlp_reduction: channel-MLP hidden width is ``max(1, C // mlp_reduction)`` (official 16).
        t_init: initial threshold on ``D`` (units of [0, 1] intensity): 3/255 AI-TOD, 4/255 VisDrone (the
            official class default), 40/255 DroneSwarms.
        threshold_mode: ``"official"``: hard sign, no gradient to ``t`` (the published behaviour).
            ``"ste"`` (default): hard mask forward, straight-through surrogate ``sigmoid((D.detach() - t) / tau)``
            backward, so ``t`` learns. ``"soft"`` (ablation): the sigmoid surrogate in the forward pass too.
        ste_tau: temperature of the surrogate (units of ``D``); 2/255.
        mask_resize: ``"nearest"`` (official: samples pixel ``(4i, 4j)`` of each 4×4 block, so a 2-px blob
            off that grid is dropped) or ``"max"`` (4×4 max-pool: any marked pixel marks its P2 cell).

    ``forward(features, images01)``: ``images01`` ``(B, 3, H, W)`` in [0, 1] must be exactly 4× P2's size
    (true when the data pipeline pads to a multiple of 32). Returns the features with P2 replaced and ``aux``:

    - ``"srtod_recon"``: ``(B, 3, H, W)`` the reconstruction ``I_r`` in (0, 1) (with gradient; the loss needs it).
    - ``"srtod_diff"``: ``(B, 1, H, W)`` the difference map ``D`` in [0, 1], float32.
    """

    def __init__(
        self,
        in_channels: list[int],
        in_strides: list[int],
        rh_widths: tuple[int, int] = (128, 64),
        rh_out_kernel: int = 3,
        mlp_reduction: int = 16,
        t_init: float = 4 / 255,
        threshold_mode: ThresholdMode = "ste",
        ste_tau: float = 2 / 255,
        mask_resize: MaskResize = "nearest",
    ):
        super().__init__()
        if _LEVEL_STRIDE not in in_strides:
            raise ValueError(f"SRTOD works on P2 and needs an input level of stride 4; got strides {in_strides}")
        if threshold_mode not in ("official", "ste", "soft"):
            raise ValueError(f"threshold_mode must be 'official', 'ste' or 'soft', got {threshold_mode!r}")
        if mask_resize not in ("nearest", "max"):
            raise ValueError(f"mask_resize must be 'nearest' or 'max', got {mask_resize!r}")
        if ste_tau <= 0:
            raise ValueError(f"ste_tau must be positive, got {ste_tau}")
        self.level = in_strides.index(_LEVEL_STRIDE)
        channels = in_channels[self.level]
        self.out_channels = list(in_channels)
        self.out_strides = list(in_strides)
        self.threshold_mode = threshold_mode
        self.ste_tau = ste_tau
        self.mask_resize = mask_resize

        self.reconstruction = ReconstructionHead(channels, rh_widths, rh_out_kernel)
        # CBAM channel attention with one MLP shared by the avg- and max-pooled vectors; 1×1 convs with bias
        # are the official Linear layers (same parameter count: 8,464 at C = 256).
        self.channel_attention = ChannelAttn(channels, rd_channels=max(1, channels // mlp_reduction), mlp_bias=True)
        self.threshold = nn.Parameter(torch.tensor(float(t_init)))
        # sign() has zero derivative: in official mode the threshold never gets a gradient (methods.md §1.5).
        self.gradient_free_parameters = ("threshold",) if threshold_mode == "official" else ()

    def difference_mask(self, diff: Tensor) -> Tensor:
        """The thresholded difference map before resizing and ``+1``: ``(B, 1, H, W)`` -> same shape.

        Values are in {0, 0.5, 1} (0.5 only where ``D == t``) in ``official`` and ``ste`` modes.
        """
        t = self.threshold.clamp(0.0, 1.0).to(diff.dtype)
        if self.threshold_mode == "soft":
            return torch.sigmoid((diff.detach() - t) / self.ste_tau)
        hard = (torch.sign(diff - t) + 1) * 0.5  # zero gradient to D and t, as in the official code
        if self.threshold_mode == "official":
            return hard
        # Straight-through: the forward value is exactly `hard`, the backward that of sigmoid((D - t) / tau).
        # exp(logsigmoid(z)) is sigmoid(z) with a derivative that does not round to 0 for z > ~17 (autograd's
        # sigmoid(1 - sigmoid) does), so t keeps a gradient while D is still far from it early in training.
        soft = F.logsigmoid((diff.detach() - t) / self.ste_tau).exp()
        return hard + (soft - soft.detach())

    def enhance(self, p2: Tensor, diff: Tensor) -> Tensor:
        """DGFE: ``P2 (B, C, h, w)`` and ``D (B, 1, 4h, 4w)`` -> ``P2' (B, C, h, w)``, P2's dtype."""
        mask = self.difference_mask(diff)  # (B, 1, 4h, 4w)
        if self.mask_resize == "nearest":
            mask = F.interpolate(mask, size=p2.shape[-2:], mode="nearest")  # (B, 1, h, w), pixel (4i, 4j)
        else:
            mask = F.max_pool2d(mask, kernel_size=_LEVEL_STRIDE, stride=_LEVEL_STRIDE)  # (B, 1, h, w)
        reweighted = self.channel_attention(p2)  # P2 * sigmoid(MLP(avg) + MLP(max))
        return reweighted * (1 + mask.to(reweighted.dtype))

    def forward(self, features: list[Tensor], images01: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        p2 = features[self.level]  # (B, C, h, w)
        h, w = p2.shape[-2:]
        if tuple(images01.shape[-2:]) != (_LEVEL_STRIDE * h, _LEVEL_STRIDE * w):
            raise ValueError(
                f"SRTOD reconstructs the image at 4x P2's size: P2 is {h}x{w}, so images01 must be "
                f"{4 * h}x{4 * w}, got {images01.shape[-2]}x{images01.shape[-1]}; pad inputs to a multiple "
                f"of 32 (data.size_divisor)"
            )
        recon = self.reconstruction(p2)  # (B, 3, H, W)
        # Mean over RGB of the absolute error, in float32 (recon may be bf16 under autocast).
        diff = (recon.float() - images01.float()).abs().mean(1, keepdim=True)  # (B, 1, H, W)
        out = list(features)
        out[self.level] = self.enhance(p2, diff)
        return out, {"srtod_recon": recon, "srtod_diff": diff}
