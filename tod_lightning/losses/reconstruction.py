"""Image-reconstruction loss on a neck's auxiliary output (SR-TOD's ``L_rec``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from tod_lightning.losses.criterion import AuxiliaryLoss
from tod_lightning.structures import DetectorOutput, Target


class ReconstructionLoss(AuxiliaryLoss):
    """Mean squared error between a reconstructed image and the input image in [0, 1].

    SR-TOD (arXiv:2405.11276) trains its reconstruction head with
    ``L_rec = MSE(I_r, I_o)``, the mean over all ``B·3·H·W`` elements, weight 1.0; its gradient also
    reaches P2 and the backbone. Computed in float32 even under autocast (methods.md §1.6 j). The target is
    the zero-padded input as the detector sees it, pad area included, as in the official code.

    Args:
        rec_loss_weight: multiplies the MSE.
        aux_key: key of the reconstruction ``(B, 3, H, W)`` in ``DetectorOutput.aux`` (written by
            :class:`~tod_lightning.models.necks.SRTOD`).

    ``forward(output, targets, images01)`` returns ``{"rec": weight * mse}`` (logged as ``loss_rec``).
    """

    def __init__(self, rec_loss_weight: float = 1.0, aux_key: str = "srtod_recon"):
        super().__init__()
        self.rec_loss_weight = rec_loss_weight
        self.aux_key = aux_key

    def forward(self, output: DetectorOutput, targets: list[Target], images01: Tensor | None) -> dict[str, Tensor]:
        if self.aux_key not in output.aux:
            raise KeyError(
                f"ReconstructionLoss needs output.aux[{self.aux_key!r}] but the detector wrote "
                f"{sorted(output.aux)}; add the SRTOD neck to model.necks"
            )
        if images01 is None:
            raise ValueError("ReconstructionLoss needs images01 (the input batch in [0, 1]) as its target")
        recon = output.aux[self.aux_key]
        if recon.shape != images01.shape:
            raise ValueError(f"reconstruction {tuple(recon.shape)} and images01 {tuple(images01.shape)} differ")
        # float32 even inside an autocast region: squares of small bf16 differences lose most of their bits.
        with torch.autocast(device_type=recon.device.type, enabled=False):
            mse = F.mse_loss(recon.float(), images01.float(), reduction="mean")
        return {"rec": self.rec_loss_weight * mse}
