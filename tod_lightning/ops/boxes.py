"""Box utilities and the point-relative box encoding of the dense head."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def box_area(boxes_xyxy: Tensor) -> Tensor:
    """``(N, 4)`` -> ``(N,)`` areas; degenerate boxes give 0, never a negative area."""
    wh = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=0)
    return wh[:, 0] * wh[:, 1]


def paired_box_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """IoU of matching rows, ``(..., 4), (..., 4) -> (...)`` (broadcasting), with the arithmetic of torchvision's
    ``box_iou`` and of its CPU NMS kernel, ``inter / (area_a + area_b - inter)``: bit-identical to both.

    On the coordinates one by one (plain, often contiguous, tensors: vectorised loops on CPU), in place where a
    result is fresh (each new temporary costs page faults on CPU).
    """
    x1, y1, x2, y2 = a_xyxy.unbind(-1)
    bx1, by1, bx2, by2 = b_xyxy.unbind(-1)
    area_b = (bx2 - bx1) * (by2 - by1)
    union = (x2 - x1).mul_(y2 - y1).add_(area_b)  # area_a + area_b
    inter = torch.minimum(x2, bx2).sub_(torch.maximum(x1, bx1)).clamp_(min=0)  # w
    inter.mul_(torch.minimum(y2, by2).sub_(torch.maximum(y1, by1)).clamp_(min=0))  # w * h
    return inter.div_(union.sub_(inter))


def points_in_boxes(points_xy: Tensor, boxes_xyxy: Tensor) -> Tensor:
    """``(P, 2)``, ``(G, 4)`` -> ``(P, G)`` bool: point strictly inside the box."""
    x, y = points_xy[:, 0:1], points_xy[:, 1:2]  # (P, 1)
    return (x > boxes_xyxy[:, 0]) & (x < boxes_xyxy[:, 2]) & (y > boxes_xyxy[:, 1]) & (y < boxes_xyxy[:, 3])


def boxes_in_regions(boxes_xyxy: Tensor, regions_xyxy: Tensor, min_overlap: float = 0.5) -> Tensor:
    """``(N, 4)``, ``(M, 4)`` -> ``(N, M)`` bool: at least ``min_overlap`` of the box area lies in the region.

    This is the rule for ignore regions (VisDrone/COCO crowd style): a prior mostly inside an ignore region is
    neither a positive nor a negative.
    """
    lt = torch.maximum(boxes_xyxy[:, None, :2], regions_xyxy[None, :, :2])  # (N, M, 2)
    rb = torch.minimum(boxes_xyxy[:, None, 2:], regions_xyxy[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)  # (N, M)
    area = box_area(boxes_xyxy).clamp(min=1e-6)[:, None]
    return inter / area >= min_overlap


class PointBoxCoder:
    """Centre-offset / log-size encoding of a box relative to a sampling point.

    ``(dx, dy, dw, dh)`` -> centre ``p + (dx, dy) * s``, size ``s * exp((dw, dh))`` for a point ``p`` of
    stride ``s``. Unlike FCOS's ltrb distances this can represent a box that does not contain the
    point, which tiny objects need: a 2-px box between the points of a stride-4 grid still gets a
    positive (its nearest point) that can regress it exactly.

    Args:
        max_log_size: clamp of the predicted log-size before ``exp`` (keeps early training finite).
    """

    def __init__(self, max_log_size: float = math.log(1000.0 / 4.0)):
        self.max_log_size = max_log_size

    def decode(self, deltas: Tensor, points_xy: Tensor, strides: Tensor) -> Tensor:
        """``(..., 4)`` deltas, ``(..., 2)`` points, ``(...,)`` strides -> ``(..., 4)`` boxes_xyxy."""
        s = strides.unsqueeze(-1)
        center = points_xy + deltas[..., :2] * s
        size = s * deltas[..., 2:].clamp(max=self.max_log_size).exp()
        return torch.cat([center - 0.5 * size, center + 0.5 * size], dim=-1)

    def encode(self, boxes_xyxy: Tensor, points_xy: Tensor, strides: Tensor) -> Tensor:
        """Inverse of :meth:`decode` (used by tests and by losses that regress deltas directly)."""
        s = strides.unsqueeze(-1)
        center = (boxes_xyxy[..., :2] + boxes_xyxy[..., 2:]) / 2
        size = (boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]).clamp(min=1e-6)
        return torch.cat([(center - points_xy) / s, torch.log(size / s)], dim=-1)
