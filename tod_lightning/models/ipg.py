"""IPG-Net image-pyramid guidance: a wrapper that fuses downscaled-image features into every backbone stage."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import Conv2dNormActivation

from tod_lightning.models.backbone import Backbone, TimmBackbone

Fusion = Literal["sum", "concat"]


class IPGGuidance(nn.Module):
    """Transformation ``T_s`` of one pyramid image and its fusion into the stage output ``X_s``.

    ``T_s(I_s) = BN(Conv1x1(ReLU(BN(Conv3x3(ReLU(BN(Conv3x3(I_s))))))))`` (3 -> hidden -> hidden -> C_s);
    ``"sum"`` fusion: ``X_s' = X_s + T_s(I_s)`` with the last BN's scale ``γ = 0``, so ``X_s' == X_s`` exactly
    at init; ``"concat"`` fusion: ``X_s' = Conv1x1(cat[X_s, T_s(I_s)])`` with weight ``[I | 0]`` and bias 0
    (exact identity too). In concat mode the last BN keeps ``γ = 1``: with both zeros the gradient of each
    would be multiplied by the other and the guidance could never start learning.

    Args:
        channels: ``C_s`` of the stage output.
        hidden_channels: width of the transformation's two 3×3 convs (64 in the spec).
        fusion: ``"sum"`` or ``"concat"``.

    ``forward(x (B, C_s, h, w), image (B, 3, h, w)) -> (B, C_s, h, w)``: the pyramid image already has the
    stage's spatial size.
    """

    def __init__(self, channels: int, hidden_channels: int = 64, fusion: Fusion = "sum"):
        super().__init__()
        if fusion not in ("sum", "concat"):
            raise ValueError(f"IPG fusion must be 'sum' or 'concat', got {fusion!r}")
        self.fusion = fusion
        self.transform = nn.Sequential(
            Conv2dNormActivation(3, hidden_channels, kernel_size=3),
            Conv2dNormActivation(hidden_channels, hidden_channels, kernel_size=3),
            Conv2dNormActivation(hidden_channels, channels, kernel_size=1, activation_layer=None),
        )
        if fusion == "sum":
            # BN_0: γ = 0 (and β = 0) makes T_s(I_s) exactly zero, whatever the batch statistics.
            nn.init.zeros_(self.transform[-1][1].weight)
        else:
            self.mix = nn.Conv2d(2 * channels, channels, kernel_size=1)
            with torch.no_grad():  # [I | 0]: the output is X_s, channel for channel
                self.mix.weight.zero_()
                self.mix.weight[:, :channels, 0, 0].copy_(torch.eye(channels))
                self.mix.bias.zero_()

    def forward(self, x: Tensor, image: Tensor) -> Tensor:
        guide = self.transform(image).to(x.dtype)  # (B, C_s, h, w)
        if self.fusion == "sum":
            return x + guide
        return self.mix(torch.cat([x, guide], dim=1))  # (B, 2C_s, h, w) -> (B, C_s, h, w)


def _feature_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are the returned feature levels, in output order, with their names."""
    names = list(model.feature_info.module_name())
    # FeatureListNet/FeatureDictNet re-register flattened submodules ("stages.0" -> "stages_0");
    # ``return_layers`` holds those names, in module (= output) order.
    return_layers = getattr(model, "return_layers", None)
    if return_layers and len(return_layers) == len(names):
        names = list(return_layers)
    found = []
    for name in names:
        # Plain name (feature classes like EfficientNetFeatures), timm's wrapped model (FeatureGetterNet),
        # or the flattened name.
        for candidate in (name, f"model.{name}", name.replace(".", "_")):
            try:
                found.append((candidate, model.get_submodule(candidate)))
                break
            except AttributeError:
                continue
        else:
            raise ValueError(
                f"IPG-Net cannot find the module '{name}' named by feature_info in {type(model).__name__}; "
                "it needs the module that produces each feature level to attach its fusion hook"
            )
    return found


class IPGBackbone(Backbone):
    """Image Pyramid Guidance (IPG-Net, Liu et al., CVPRW 2020, arXiv:1912.00632) around a timm backbone.

    Neither the full paper nor code was available: the design is the project's own, built on the abstract
    (methods.md §4.3). For the normalised input ``x (B, 3, H, W)`` and each guided stage ``s`` with output
    ``X_s (B, C_s, h_s, w_s)``: ``I_s = bilinear_antialiased(x, size=(h_s, w_s))`` and
    ``X_s' = fuse(X_s, T_s(I_s))`` (see :class:`IPGGuidance`). With ``propagate=True`` (default) the fusion
    runs in a forward hook on the timm module that produces ``X_s``, so ``X_s'`` is both the returned level
    and the input of the next stage; the inner model is not forked. The wrapper is exactly the inner
    backbone at init (zero-initialised fusion), and it declares the inner backbone's ``out_channels``,
    ``out_strides``, ``mean`` and ``std``.

    Works with any timm ``features_only`` model whose feature levels are module outputs (ResNet, ConvNeXt,
    EfficientNet, RegNet, MobileNet, Swin, ...); NHWC stage outputs (Swin) are fused in NCHW and returned
    in their own layout. Limits: the fusion state lives on the wrapper during its ``forward``, so timm's
    gradient checkpointing (which re-runs stages during backward) and ``nn.DataParallel`` replicas are not
    supported; calling the inner backbone directly runs it unguided.

    Args:
        backbone: the wrapped :class:`TimmBackbone` (its weights, strides and normalisation are kept).
        hidden_channels: width of each transformation ``T_s``.
        fusion: ``"sum"`` (default) or ``"concat"``.
        propagate: fuse inside the backbone stream (``True``), or only into the returned features
            (``False``: the cheaper ablation, the stages see the plain features).
        guided_strides: strides of the levels that receive guidance; ``None`` (default): all levels.

    ``forward(images_norm (B, 3, H, W)) -> list[(B, C_s, H/s, W/s)]`` like the inner backbone.
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        hidden_channels: int = 64,
        fusion: Fusion = "sum",
        propagate: bool = True,
        guided_strides: Sequence[int] | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.out_channels = list(backbone.out_channels)
        self.out_strides = list(backbone.out_strides)
        self.mean = tuple(backbone.mean)
        self.std = tuple(backbone.std)
        self.propagate = propagate
        strides = self.out_strides if guided_strides is None else list(guided_strides)
        unknown = [s for s in strides if s not in self.out_strides]
        if unknown or not strides:
            raise ValueError(f"IPG guided_strides {strides} must be among the backbone strides {self.out_strides}")
        self.guided_levels = [i for i, s in enumerate(self.out_strides) if s in strides]
        self.guidance = nn.ModuleList(
            IPGGuidance(self.out_channels[i], hidden_channels, fusion) for i in self.guided_levels
        )
        model = backbone.model
        modules = _feature_modules(model)
        if len(modules) != len(self.out_channels):
            raise ValueError(
                f"IPG-Net found {len(modules)} feature modules for {len(self.out_channels)} backbone levels"
            )
        self.feature_module_names = [modules[i][0] for i in self.guided_levels]
        # Layout hint for stage outputs whose channel count alone cannot tell NCHW from NHWC (C == H == W).
        fmt = getattr(model, "output_fmt", None)
        self._nhwc_hint = str(getattr(fmt, "value", fmt)) == "NHWC"
        # Per-forward state read by the hooks: the normalised input, and which hooks ran.
        self._images: Tensor | None = None
        self._fired: list[bool] = []
        if propagate:
            # Registered here (not lazily) so that a model rebuilt by load_from_checkpoint is guided too;
            # a partial of a bound method survives deepcopy and pickling, unlike a closure.
            for j, i in enumerate(self.guided_levels):
                modules[i][1].register_forward_hook(partial(self._fusion_hook, j))

    def pyramid_image(self, images_norm: Tensor, size: tuple[int, int]) -> Tensor:
        """``I_s``: the input downscaled to a stage's exact size ``(B, 3, h, w)``; anti-aliased, no aliasing."""
        return F.interpolate(images_norm, size=size, mode="bilinear", align_corners=False, antialias=True)

    def _fuse(self, j: int, x: Tensor, images_norm: Tensor) -> Tensor:
        """Fuse guidance ``j`` into an NCHW level ``(B, C_s, h, w)``."""
        return self.guidance[j](x, self.pyramid_image(images_norm, x.shape[-2:]))

    def _fusion_hook(self, j: int, module: nn.Module, inputs: tuple, output: Tensor) -> Tensor | None:
        """Forward hook on stage ``j``'s module: its return value replaces the output downstream."""
        if self._images is None:  # the inner backbone called on its own: unguided
            return None
        self._fired[j] = True
        channels = self.out_channels[self.guided_levels[j]]
        nchw = output.ndim == 4 and output.shape[1] == channels
        nhwc = output.ndim == 4 and output.shape[-1] == channels
        if not (nchw or nhwc):
            raise RuntimeError(
                f"IPG-Net: module '{self.feature_module_names[j]}' returned {tuple(output.shape)}, expected "
                f"{channels} channels in NCHW or NHWC"
            )
        if nhwc and (self._nhwc_hint or not nchw):  # Swin's stages work in (B, H, W, C)
            fused = self._fuse(j, output.permute(0, 3, 1, 2), self._images)  # fused in (B, C, H, W)
            return fused.permute(0, 2, 3, 1)  # back to (B, H, W, C) for the next stage
        return self._fuse(j, output, self._images)

    def forward(self, images_norm: Tensor) -> list[Tensor]:
        if not self.propagate:
            features = self.backbone(images_norm)  # NCHW
            for j, i in enumerate(self.guided_levels):
                features[i] = self._fuse(j, features[i], images_norm)
            return features
        self._images, self._fired = images_norm, [False] * len(self.guided_levels)
        try:
            features = self.backbone(images_norm)
        finally:
            self._images = None  # no reference to the batch outlives the call
        missed = [n for n, fired in zip(self.feature_module_names, self._fired) if not fired]
        if missed:
            raise RuntimeError(
                f"IPG-Net: the hooked modules {missed} did not run in the backbone's forward, so their levels "
                "were not guided; this timm model computes its features another way (use propagate=False)"
            )
        return features
