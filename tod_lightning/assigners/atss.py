"""ATSS label assignment (Zhang et al., CVPR 2020, arXiv:1912.02424) with an injectable similarity."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from tod_lightning.assigners.similarity import BoxSimilarity, IoUSimilarity
from tod_lightning.ops.boxes import boxes_inside, points_in_boxes

NEGATIVE = -1
IGNORE = -2


@dataclass
class AssignResult:
    """Assignment of every point of one image.

    Attributes:
        gt_index: ``(P,)`` int64: index of the matched ground truth, ``-1`` negative, ``-2`` ignored.
        similarity: ``(P,)`` similarity of each positive to its ground truth (0 elsewhere).
    """

    gt_index: Tensor
    similarity: Tensor


class ATSSAssigner:
    """Adaptive training sample selection, extended so that every ground truth gets a positive.

    Per ground truth: the ``topk`` points nearest its centre on every level are candidates; candidates
    whose similarity (prior square of side ``anchor_scale * stride`` vs. the box) is at least the mean +
    std over candidates, and whose point lies inside the box, become positives. A point claimed by
    several boxes goes to the most similar. Then any box still without a positive -- boxes of 2-4 px
    often contain no point of the stride-4 grid -- takes its most similar free candidate, so no ground
    truth is left untrained. Negatives lying mostly inside an ignore region are ignored.

    Args:
        similarity: a :class:`BoxSimilarity` (IoU by default; NWD suits tiny objects).
        topk: candidates per level per ground truth.
        anchor_scale: side of the implicit prior square in strides.
        ignore_overlap: fraction of a point's prior inside an ignore region that makes a negative ignored.
    """

    def __init__(
        self,
        similarity: BoxSimilarity | None = None,
        topk: int = 9,
        anchor_scale: float = 4.0,
        ignore_overlap: float = 0.5,
    ):
        self.similarity = similarity or IoUSimilarity()
        self.topk = topk
        self.anchor_scale = anchor_scale
        self.ignore_overlap = ignore_overlap

    def priors(self, points_xy: Tensor, point_strides: Tensor) -> Tensor:
        """``(P, 2)``, ``(P,)`` -> ``(P, 4)`` prior squares centred on the points."""
        half = (self.anchor_scale * point_strides / 2).unsqueeze(1)
        return torch.cat([points_xy - half, points_xy + half], dim=1)

    @torch.no_grad()
    def __call__(
        self,
        points_xy: Tensor,
        point_strides: Tensor,
        level_sizes: list[int],
        gt_boxes_xyxy: Tensor,
        ignore_xyxy: Tensor | None = None,
    ) -> AssignResult:
        """Assign the points of one image.

        Args:
            points_xy: ``(P, 2)`` point centres, level by level.
            point_strides: ``(P,)``.
            level_sizes: number of points on each level (sums to P).
            gt_boxes_xyxy: ``(G, 4)`` ground truth in input pixels.
            ignore_xyxy: ``(M, 4)`` ignore regions.
        """
        num_points, num_gt = points_xy.shape[0], gt_boxes_xyxy.shape[0]
        device = points_xy.device
        priors_xyxy = self.priors(points_xy, point_strides)
        gt_index = torch.full((num_points,), NEGATIVE, dtype=torch.long, device=device)
        best_sim = torch.zeros(num_points, device=device)
        if num_gt > 0:
            gt_boxes_xyxy = gt_boxes_xyxy.float()
            sim = self.similarity(priors_xyxy, gt_boxes_xyxy)  # (P, G)
            gt_centers = (gt_boxes_xyxy[:, :2] + gt_boxes_xyxy[:, 2:]) / 2
            dist = torch.cdist(points_xy, gt_centers)  # (P, G)
            candidates = []
            start = 0
            for size in level_sizes:
                k = min(self.topk, size)
                idx = dist[start : start + size].topk(k, dim=0, largest=False).indices + start  # (k, G)
                candidates.append(idx)
                start += size
            cand_idx = torch.cat(candidates, dim=0)  # (C, G), C = sum of k per level
            cand_sim = sim.gather(0, cand_idx)  # (C, G)
            threshold = cand_sim.mean(0) + cand_sim.std(0, unbiased=len(cand_idx) > 1)  # (G,)
            inside = points_in_boxes(points_xy, gt_boxes_xyxy).gather(0, cand_idx)  # (C, G)
            is_pos = (cand_sim >= threshold) & inside

            # (P, G) similarity of positive pairs, -1 elsewhere; each point takes its most similar box.
            pos_sim = torch.full_like(sim, -1.0)
            gt_cols = torch.arange(num_gt, device=device).expand_as(cand_idx)
            pos_sim[cand_idx[is_pos], gt_cols[is_pos]] = cand_sim[is_pos]
            max_sim, argmax = pos_sim.max(dim=1)
            matched = max_sim >= 0
            gt_index[matched] = argmax[matched]
            best_sim[matched] = max_sim[matched]

            # Guarantee: a box left without a positive takes its best candidate not yet forced for
            # another box. Rounds walk down each box's candidate ranking (at most C rounds).
            order = cand_sim.argsort(dim=0, descending=True)  # (C, G)
            ranked = cand_idx.gather(0, order)  # (C, G) candidate points, most similar first
            forced = torch.zeros(num_points, dtype=torch.bool, device=device)
            for rank in range(ranked.shape[0]):
                has_pos = torch.zeros(num_gt, dtype=torch.bool, device=device)
                has_pos[gt_index[gt_index >= 0]] = True
                lonely = (~has_pos).nonzero().squeeze(1)
                if lonely.numel() == 0:
                    break
                points = ranked[rank, lonely]
                free = ~forced[points]
                lonely, points = lonely[free], points[free]
                # If two lonely boxes want the same point this round, the later one waits for a later round.
                unique_points, first = _first_occurrence(points)
                lonely = lonely[first]
                gt_index[unique_points] = lonely
                best_sim[unique_points] = sim[unique_points, lonely]
                forced[unique_points] = True

        if ignore_xyxy is not None and ignore_xyxy.numel() > 0:
            in_ignore = boxes_inside(priors_xyxy, ignore_xyxy.float(), self.ignore_overlap) | points_in_boxes(
                points_xy, ignore_xyxy.float()
            ).any(1)
            gt_index[(gt_index == NEGATIVE) & in_ignore] = IGNORE
        return AssignResult(gt_index, best_sim)


def _first_occurrence(values: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values of a 1-D tensor and the position of each one's first occurrence."""
    unique, inverse = torch.unique(values, return_inverse=True)
    positions = torch.arange(values.numel(), device=values.device)
    first = torch.full((unique.numel(),), values.numel(), dtype=torch.long, device=values.device)
    first = first.scatter_reduce(0, inverse, positions, reduce="amin")
    return unique, first
