"""Decode dense outputs into detections: score threshold, top-k, class-aware NMS, per-image cap."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from tod_lightning.ops.boxes import PointBoxCoder
from tod_lightning.ops.dense_gather import gather_dense_entries
from tod_lightning.ops.nms import class_aware_nms
from tod_lightning.ops.ordering import argsort_small_ints, index_rows, nonzero_1d
from tod_lightning.ops.points import level_points
from tod_lightning.structures import Detections, DetectorOutput


class PostProcessor:
    """Turns a :class:`DetectorOutput` into one :class:`Detections` per image.

    Score = ``sqrt(sigmoid(cls) * sigmoid(quality))``. NMS is torchvision's ``batched_nms`` (or the same NMS as a
    compiled grid kernel on CPU, :func:`~tod_lightning.ops.nms.class_aware_nms`), run once for the whole batch with
    image and class folded into the group index.

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
        # By score, at most max_per_image of each image: the NMS stops comparing an image's boxes once it has them.
        kept = class_aware_nms(
            boxes_xyxy, scores, image_idx * num_classes + labels, self.nms_iou, image_idx, self.max_per_image
        )
        # Stable sort by image keeps each image's detections in descending score order.
        kept_image = image_idx.index_select(0, kept)
        if len(image_sizes) <= 2**15:  # image indices fit the int16 radix sort
            order = argsort_small_ints(kept_image)
        else:
            order = torch.sort(kept_image, stable=True).indices
        kept = kept.index_select(0, order)
        counts = torch.bincount(kept_image, minlength=len(image_sizes)).tolist()  # host sync
        return [
            Detections(*per_image)
            for per_image in zip(*(index_rows(t, kept).split(counts) for t in (boxes_xyxy, scores, labels)))
        ]

    @torch.no_grad()
    def candidates(self, output: DetectorOutput, image_sizes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The input of NMS: ``(N, 4)`` boxes (xyxy, clipped), ``(N,)`` scores, labels and image indices of the
        (point, class) pairs that pass the score threshold and are non-empty, at most the ``pre_nms_topk`` best of
        each image; in (level, image, class, row, column) order.
        """
        sizes = [tuple(m.shape[-2:]) for m in output.cls_logits]
        points_xy, point_strides = level_points(sizes, output.strides, output.cls_logits[0].device)
        # score = sqrt(sigmoid(cls) * sigmoid(quality)) <= sqrt(sigmoid(cls)), so a (point, class) whose class
        # logit is at most logit(thresh^2) cannot pass. Selecting on the raw logits first (one compare per entry,
        # no transposed copies) leaves the sigmoids, products and gathers to the few entries that can pass. The
        # exact test on the score follows; the margin covers float rounding (0.01) and the rounding of the cut
        # itself to a bf16/fp16 map's dtype, in which the compare runs (|cut| / 128, bf16's relative spacing).
        t2 = self.score_thresh**2
        cut = math.log(t2 / (1.0 - t2)) if 0.0 < t2 < 1.0 else (-math.inf if t2 <= 0.0 else math.inf)
        cut -= 0.01 + abs(cut) / 128 if math.isfinite(cut) else 0.0
        entries = [nonzero_1d((m > cut).flatten()) for m in output.cls_logits]  # (N_l,) flat (image, class, y, x)
        image_idx, labels, point_idx, cls_logit, quality_logit, deltas = gather_dense_entries(
            entries, output.cls_logits, output.quality_logits, output.box_deltas
        )  # (N,) each, deltas (N, 4)
        scores = (cls_logit.float().sigmoid() * quality_logit.float().sigmoid()).sqrt()
        passing = nonzero_1d(scores > self.score_thresh)
        image_idx, point_idx, labels, scores = (
            t.index_select(0, passing) for t in (image_idx, point_idx, labels, scores)
        )
        deltas = index_rows(deltas.float(), passing)  # (N, 4)
        per_image = torch.bincount(image_idx, minlength=len(image_sizes))
        if len(image_idx) > 0 and int(per_image.max()) > self.pre_nms_topk:  # a host sync, only on this path
            best = _best_per_image(scores, image_idx, per_image, self.pre_nms_topk)  # ascending: the order stays
            image_idx, point_idx, labels, scores, deltas = (
                index_rows(t, best) for t in (image_idx, point_idx, labels, scores, deltas)
            )
        boxes_xyxy = self.coder.decode(
            deltas, index_rows(points_xy, point_idx), point_strides.index_select(0, point_idx)
        )  # (N, 4)
        limits = index_rows(image_sizes.to(boxes_xyxy).flip(-1).repeat(1, 2), image_idx)  # (N, 4) as (w, h, w, h)
        boxes_xyxy = torch.minimum(boxes_xyxy.clamp(min=0), limits)
        keep = nonzero_1d((boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1]))
        return tuple(index_rows(t, keep) for t in (boxes_xyxy, scores, labels, image_idx))  # non-empty after clip


def _best_per_image(scores: Tensor, image_idx: Tensor, per_image: Tensor, k: int) -> Tensor:
    """Ascending positions of the ``k`` best scores of every image (ties: the earlier position), so that the
    candidates keep their order."""
    by_score = torch.sort(scores, descending=True, stable=True).indices
    by_image = by_score[torch.sort(image_idx[by_score], stable=True).indices]  # image, then score descending
    first_of_image = torch.cumsum(per_image, 0) - per_image
    rank = torch.arange(len(scores), device=scores.device) - first_of_image[image_idx[by_image]]
    return torch.sort(by_image[rank < k]).values
