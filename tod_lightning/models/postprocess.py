"""Decode dense outputs into detections: score threshold, top-k, class-aware NMS, per-image cap."""

from __future__ import annotations

import torch
from torch import Tensor

from tod_lightning.ops.boxes import PointBoxCoder
from tod_lightning.ops.nms import class_aware_nms
from tod_lightning.ops.points import level_points
from tod_lightning.structures import Detections, DetectorOutput


def flatten_levels(maps: list[Tensor]) -> Tensor:
    """Per-level ``(B, C, H_l, W_l)`` -> ``(B, P, C)`` in the point order of :func:`level_points`."""
    return torch.cat([m.flatten(2) for m in maps], dim=2).transpose(1, 2)  # (B, P, C)


class PostProcessor:
    """Turns a :class:`DetectorOutput` into one :class:`Detections` per image.

    Score = ``sqrt(sigmoid(cls) * sigmoid(quality))``. NMS is torchvision's ``batched_nms`` (or the same NMS on a
    sparse overlap graph for large groups on CPU, :func:`~tod_lightning.ops.nms.class_aware_nms`), run once for
    the whole batch with image and class folded into the group index.

    Args:
        score_thresh: minimum score kept (0.05 as in the AI-TOD/SR-TOD protocol).
        nms_iou: IoU threshold of class-aware NMS.
        pre_nms_topk: candidates per image before NMS; far above ``max_per_image`` so that dense scenes
            are not truncated before NMS has removed duplicates.
        max_per_image: detections kept per image (the AI-TOD protocol scores up to 1500).
    """

    def __init__(
        self, score_thresh: float = 0.05, nms_iou: float = 0.6, pre_nms_topk: int = 10000, max_per_image: int = 1500
    ):
        self.score_thresh = score_thresh
        self.nms_iou = nms_iou
        self.pre_nms_topk = pre_nms_topk
        self.max_per_image = max_per_image
        self.coder = PointBoxCoder()

    @torch.no_grad()
    def __call__(self, output: DetectorOutput, image_sizes: Tensor) -> list[Detections]:
        """``image_sizes``: ``(B, 2)`` unpadded ``(height, width)``; boxes are clipped to them."""
        boxes_xyxy, scores, labels, image_idx = self.candidates(output, image_sizes)
        num_classes = output.cls_logits[0].shape[1]
        kept = class_aware_nms(boxes_xyxy, scores, image_idx * num_classes + labels, self.nms_iou)  # by score
        # Stable sort by image keeps each image's detections in descending score order.
        order = torch.sort(image_idx[kept], stable=True).indices
        kept = kept[order]
        counts = torch.bincount(image_idx[kept], minlength=len(image_sizes)).tolist()  # host sync
        results = []
        for det_boxes, det_scores, det_labels in zip(
            boxes_xyxy[kept].split(counts), scores[kept].split(counts), labels[kept].split(counts)
        ):
            n = min(self.max_per_image, det_scores.numel())
            results.append(Detections(det_boxes[:n], det_scores[:n], det_labels[:n]))
        return results

    @torch.no_grad()
    def candidates(self, output: DetectorOutput, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The input of NMS: ``(N, 4)`` boxes (xyxy, clipped), ``(N,)`` scores, labels and image indices of the
        ``pre_nms_topk`` best (point, class) pairs of each image that pass the score threshold and are non-empty.
        """
        sizes = [tuple(m.shape[-2:]) for m in output.cls_logits]
        points_xy, point_strides = level_points(sizes, output.strides, output.cls_logits[0].device)
        cls_prob = flatten_levels(output.cls_logits).float().sigmoid()  # (B, P, K)
        quality = flatten_levels(output.quality_logits).float().sigmoid()  # (B, P, 1)
        scores = (cls_prob * quality).sqrt()
        deltas = flatten_levels(output.box_deltas).float()  # (B, P, 4)
        b, p, k = scores.shape

        flat = scores.reshape(b, p * k)
        # Top-k over only as many entries as pass the threshold in the fullest image (a host sync; post-processing
        # has one anyway): a 10k-candidate top-k costs far more than selecting a sparse image's few hundred.
        above = int((flat > self.score_thresh).sum(1).max()) if b > 0 else 0
        topk = min(self.pre_nms_topk, p * k, above)
        top_scores, top_idx = flat.topk(topk, dim=1)  # (B, topk)
        point_idx, labels = top_idx // k, top_idx % k
        boxes_xyxy = self.coder.decode(
            deltas.gather(1, point_idx.unsqueeze(-1).expand(-1, -1, 4)), points_xy[point_idx], point_strides[point_idx]
        )  # (B, topk, 4)
        limits = image_sizes.to(boxes_xyxy).flip(-1).repeat(1, 2).unsqueeze(1)  # (B, 1, 4) as (w, h, w, h)
        boxes_xyxy = torch.minimum(boxes_xyxy.clamp(min=0), limits)
        image_idx = torch.arange(b, device=scores.device).unsqueeze(1).expand(-1, topk)

        keep = (top_scores > self.score_thresh) & (boxes_xyxy[..., 2] > boxes_xyxy[..., 0])
        keep &= boxes_xyxy[..., 3] > boxes_xyxy[..., 1]  # non-empty after clipping
        return boxes_xyxy[keep], top_scores[keep], labels[keep], image_idx[keep]  # (N, 4), (N,), (N,), (N,)
