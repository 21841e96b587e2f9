"""IoU-family box losses on decoded boxes: ``forward(pred_xyxy (N,4), gt_xyxy (N,4)) -> (N,)``.

The arithmetic is torchvision's (``generalized_box_iou_loss``, ``distance_box_iou_loss``, ``complete_box_iou_loss``),
operation for operation, so values and gradients are bit-identical to it (``tests/test_losses.py``), with one change:
torchvision computes the intersection of the overlapping pairs through boolean-mask indexing, four masked reads and a
masked write, each a host-device synchronisation on an accelerator (the mask's true count sizes the result) in the
forward pass and again in the backward pass. Here a ``where`` keeps the product of the overlapping pairs, with the
same values and the same zero gradient for the others, and no synchronisation: the training step then waits for the
device once, for the criterion's positives.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def _intersection_union(pred_xyxy: Tensor, gt_xyxy: Tensor) -> tuple[Tensor, Tensor]:
    """``(N,)`` intersection and union areas of matching rows; 0 intersection (and no gradient through it) for
    pairs that do not overlap."""
    x1, y1, x2, y2 = pred_xyxy.unbind(dim=-1)
    gx1, gy1, gx2, gy2 = gt_xyxy.unbind(dim=-1)
    left, top = torch.max(x1, gx1), torch.max(y1, gy1)  # the intersection's corners
    right, bottom = torch.min(x2, gx2), torch.min(y2, gy2)
    overlaps = (bottom > top) & (right > left)
    intersection = torch.where(overlaps, (right - left) * (bottom - top), 0.0)  # not mask indexing: no host sync
    union = (x2 - x1) * (y2 - y1) + (gx2 - gx1) * (gy2 - gy1) - intersection
    return intersection, union


def _distance_loss_and_iou(pred_xyxy: Tensor, gt_xyxy: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``(N,)`` DIoU loss ``1 - IoU + centre distance^2 / enclosing diagonal^2``, and the IoU."""
    intersection, union = _intersection_union(pred_xyxy, gt_xyxy)
    iou = intersection / (union + eps)
    # One unbind per function, as torchvision: autograd then sums the coordinates' gradients in the same order.
    x1, y1, x2, y2 = pred_xyxy.unbind(dim=-1)
    gx1, gy1, gx2, gy2 = gt_xyxy.unbind(dim=-1)
    diagonal2 = (
        ((torch.max(x2, gx2) - torch.min(x1, gx1)) ** 2) + ((torch.max(y2, gy2) - torch.min(y1, gy1)) ** 2) + eps
    )
    centres2 = (((x2 + x1) / 2 - (gx1 + gx2) / 2) ** 2) + (((y2 + y1) / 2 - (gy1 + gy2) / 2) ** 2)
    return 1 - iou + (centres2 / diagonal2), iou


class BoxLoss(nn.Module):
    """Base of the box losses: ``forward(pred_xyxy (N, 4), gt_xyxy (N, 4)) -> (N,)``, 0 for identical boxes.

    Subclasses exported from :mod:`tod_lightning.losses` join the box-loss contract test.
    """

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        raise NotImplementedError


class GIoULoss(BoxLoss):
    """Generalized IoU loss (Rezatofighi et al., CVPR 2019): non-zero gradient for disjoint boxes."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        pred_xyxy, gt_xyxy = pred_xyxy.float(), gt_xyxy.float()
        intersection, union = _intersection_union(pred_xyxy, gt_xyxy)
        iou = intersection / (union + self.eps)
        x1, y1, x2, y2 = pred_xyxy.unbind(dim=-1)
        gx1, gy1, gx2, gy2 = gt_xyxy.unbind(dim=-1)
        enclosing = (torch.max(x2, gx2) - torch.min(x1, gx1)) * (torch.max(y2, gy2) - torch.min(y1, gy1))
        return 1 - (iou - ((enclosing - union) / (enclosing + self.eps)))


class DIoULoss(BoxLoss):
    """Distance IoU loss (Zheng et al., AAAI 2020): adds the normalised centre distance."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        return _distance_loss_and_iou(pred_xyxy.float(), gt_xyxy.float(), self.eps)[0]


class CIoULoss(BoxLoss):
    """Complete IoU loss (Zheng et al., AAAI 2020): centre distance and aspect-ratio terms."""

    def __init__(self, eps: float = 1e-7):
        super().__init__()
        self.eps = eps

    def forward(self, pred_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        pred_xyxy, gt_xyxy = pred_xyxy.float(), gt_xyxy.float()
        distance_loss, iou = _distance_loss_and_iou(pred_xyxy, gt_xyxy, self.eps)  # (torchvision: 1e-7 there, always)
        x1, y1, x2, y2 = pred_xyxy.unbind(dim=-1)
        gx1, gy1, gx2, gy2 = gt_xyxy.unbind(dim=-1)
        v = (4 / (math.pi**2)) * torch.pow(torch.atan((gx2 - gx1) / (gy2 - gy1)) - torch.atan((x2 - x1) / (y2 - y1)), 2)
        with torch.no_grad():  # the trade-off weight is a constant of the step, as in the paper
            alpha = v / (1 - iou + v + self.eps)
        return distance_loss + alpha * v
