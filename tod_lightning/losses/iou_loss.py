"""IoU-family box losses on decoded boxes: ``forward(pred_xyxy (N,4), gt_xyxy (N,4)) -> (N,)``."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import complete_box_iou_loss, distance_box_iou_loss, generalized_box_iou_loss


class BoxLoss(nn.Module):
    """Base of the box losses: ``forward(pred_xyxy (N, 4), gt_xyxy (N, 4)) -> (N,)``, 0 for identical boxes.

    Subclasses exported from :mod:`tod_lightning.losses` join the box-loss contract test.
    """

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        raise NotImplementedError


class GIoULoss(BoxLoss):
    """Generalized IoU loss (Rezatofighi et al., CVPR 2019): non-zero gradient for disjoint boxes."""

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        return generalized_box_iou_loss(pred_xyxy.float(), gt_xyxy.float(), reduction="none", eps=1e-7)


class DIoULoss(BoxLoss):
    """Distance IoU loss (Zheng et al., AAAI 2020): adds the normalised centre distance."""

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        return distance_box_iou_loss(pred_xyxy.float(), gt_xyxy.float(), reduction="none", eps=1e-7)


class CIoULoss(BoxLoss):
    """Complete IoU loss (Zheng et al., AAAI 2020): centre distance and aspect-ratio terms."""

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        return complete_box_iou_loss(pred_xyxy.float(), gt_xyxy.float(), reduction="none", eps=1e-7)
