"""The criterion: assignment + classification, box and quality losses, plus auxiliary terms."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from tod_lightning.assigners.atss import IGNORE, ATSSAssigner
from tod_lightning.losses.focal import FocalLoss
from tod_lightning.losses.iou_loss import GIoULoss
from tod_lightning.ops.boxes import PointBoxCoder
from tod_lightning.ops.points import flatten_levels, level_points
from tod_lightning.structures import DetectorOutput, Target


class PositiveWeighting(nn.Module):
    """Per-positive loss weights from the matched ground truth (e.g. by object size, DCLoss).

    ``forward(matched_gt_xyxy (N, 4)) -> (N,)`` weights; they multiply each positive's classification,
    box and quality terms.
    """

    def forward(self, matched_gt_xyxy: Tensor) -> Tensor:
        raise NotImplementedError


class AuxiliaryLoss(nn.Module):
    """A loss on auxiliary detector outputs (e.g. SR-TOD's reconstruction).

    ``forward(output, targets, images01) -> {name: weighted scalar}``; names become ``loss_<name>`` and
    are added to the total.
    """

    def forward(self, output: DetectorOutput, targets: list[Target], images01: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError


class DetectionCriterion(nn.Module):
    """Scores a :class:`DetectorOutput` against targets. All terms are computed in float32.

    Args:
        assigner: label assignment (ATSS with IoU similarity by default).
        cls_loss: element-wise classification loss on logits vs. one-hot targets (focal by default).
        box_loss: IoU-family loss on decoded boxes, ``(N,4),(N,4) -> (N,)`` (GIoU by default).
        cls_weight, box_weight, quality_weight: term weights (ATSS: 1, 2, 1).
        positive_weighting: optional per-positive weights from the matched boxes.
        aux_losses: losses on auxiliary outputs, each added to the total.

    Every term is normalised by the number of positives, averaged over DDP ranks so each rank's
    gradient has the same scale. An image with no boxes gives a box loss of exactly 0.
    """

    def __init__(
        self,
        assigner: ATSSAssigner | None = None,
        cls_loss: nn.Module | None = None,
        box_loss: nn.Module | None = None,
        cls_weight: float = 1.0,
        box_weight: float = 2.0,
        quality_weight: float = 1.0,
        positive_weighting: PositiveWeighting | None = None,
        aux_losses: Sequence[AuxiliaryLoss] = (),
    ):
        super().__init__()
        self.assigner = assigner or ATSSAssigner()
        self.cls_loss = cls_loss or FocalLoss()
        self.box_loss = box_loss or GIoULoss()
        self.cls_weight, self.box_weight, self.quality_weight = cls_weight, box_weight, quality_weight
        self.positive_weighting = positive_weighting
        self.aux_losses = nn.ModuleList(aux_losses)
        self.coder = PointBoxCoder()

    def forward(
        self, output: DetectorOutput, targets: list[Target], images01: Tensor | None = None
    ) -> dict[str, Tensor]:
        """Returns ``{"loss": total, "loss_cls", "loss_box", "loss_quality", "loss_<aux>"..., "num_pos"}``.

        Under autocast (``bf16-mixed`` / ``16-mixed``) the outputs may be half precision; they are upcast and
        everything here, injected parts included, runs with autocast off, so every term is float32.
        """
        # Autocast would run any matmul-like op of an injected assigner, loss or weighting in bf16/fp16.
        with torch.autocast(device_type=output.cls_logits[0].device.type, enabled=False):
            return self._score(output, targets, images01)

    def _score(self, output: DetectorOutput, targets: list[Target], images01: Tensor | None) -> dict[str, Tensor]:
        sizes = [tuple(m.shape[-2:]) for m in output.cls_logits]
        device = output.cls_logits[0].device
        points_xy, point_strides = level_points(sizes, output.strides, device)
        cls_logits = flatten_levels(output.cls_logits).float()  # (B, P, K)
        box_deltas = flatten_levels(output.box_deltas).float()  # (B, P, 4)
        quality_logits = flatten_levels(output.quality_logits).float().squeeze(-1)  # (B, P)
        b, p, k = cls_logits.shape

        gt_index = self._assign(points_xy, point_strides, sizes, targets)  # (B, P)
        # Matched ground truth of every positive, gathered from all images at once.
        gt_counts = torch.tensor([t.boxes_xyxy.shape[0] for t in targets], device=device)
        offsets = torch.cumsum(gt_counts, 0) - gt_counts  # (B,)
        all_gt_xyxy = torch.cat([t.boxes_xyxy.float().reshape(-1, 4) for t in targets])  # (sum G, 4)
        all_labels = torch.cat([t.labels.reshape(-1) for t in targets]).long()
        pos = gt_index >= 0  # (B, P)
        pos_b, pos_p = pos.nonzero(as_tuple=True)
        matched = offsets[pos_b] + gt_index[pos_b, pos_p]  # (N,)
        matched_gt_xyxy, matched_labels = all_gt_xyxy[matched], all_labels[matched]

        num_pos = torch.tensor(float(pos_b.numel()), device=device)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(num_pos)
            num_pos = num_pos / dist.get_world_size()
        norm = num_pos.clamp(min=1.0)
        weights = (
            self.positive_weighting(matched_gt_xyxy)
            if self.positive_weighting is not None
            else torch.ones_like(norm).expand(matched.numel())
        )

        cls_targets = torch.zeros_like(cls_logits)
        cls_targets[pos_b, pos_p, matched_labels] = 1.0
        cls_elem = self.cls_loss(cls_logits, cls_targets).sum(-1)  # (B, P)
        point_weight = (gt_index != IGNORE).float()  # ignored points give no negative
        point_weight[pos_b, pos_p] = weights
        loss_cls = (cls_elem * point_weight).sum() / norm

        pred_xyxy = self.coder.decode(box_deltas[pos_b, pos_p], points_xy[pos_p], point_strides[pos_p])  # (N, 4)
        loss_box = (self.box_loss(pred_xyxy, matched_gt_xyxy) * weights).sum() / norm
        iou_target = _paired_iou(pred_xyxy.detach(), matched_gt_xyxy)
        loss_quality = (
            F.binary_cross_entropy_with_logits(quality_logits[pos_b, pos_p], iou_target, reduction="none") * weights
        ).sum() / norm

        losses = {
            "loss_cls": self.cls_weight * loss_cls,
            "loss_box": self.box_weight * loss_box,
            "loss_quality": self.quality_weight * loss_quality,
        }
        for aux in self.aux_losses:
            for name, value in aux(output, targets, images01).items():
                losses[f"loss_{name}"] = value.float()
        losses["loss"] = sum(losses.values())
        losses["num_pos"] = num_pos.detach()
        return losses

    def _assign(
        self, points_xy: Tensor, point_strides: Tensor, sizes: list[tuple[int, int]], targets: list[Target]
    ) -> Tensor:
        """``(B, P)`` matched ground-truth index per point (``-1`` negative, ``-2`` ignored).

        One call for the whole batch: the assigner has no loop over boxes or images and scores only each box's
        candidate points (see :meth:`ATSSAssigner.assign_batch`).
        """
        level_counts = [h * w for h, w in sizes]
        return self.assigner.assign_batch(
            points_xy,
            point_strides,
            level_counts,
            [t.boxes_xyxy for t in targets],
            [t.ignore_xyxy for t in targets],
            level_shapes=sizes,
        ).gt_index  # (B, P)


def _paired_iou(a_xyxy: Tensor, b_xyxy: Tensor) -> Tensor:
    """IoU of matching rows: ``(N, 4), (N, 4) -> (N,)``."""
    lt = torch.maximum(a_xyxy[:, :2], b_xyxy[:, :2])
    rb = torch.minimum(a_xyxy[:, 2:], b_xyxy[:, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a_xyxy[:, 2:] - a_xyxy[:, :2]).clamp(min=0).prod(-1)
    area_b = (b_xyxy[:, 2:] - b_xyxy[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-7)
