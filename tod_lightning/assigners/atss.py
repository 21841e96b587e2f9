"""ATSS label assignment (Zhang et al., CVPR 2020, arXiv:1912.02424) with an injectable similarity."""

from __future__ import annotations

import math
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
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> AssignResult:
        """Assign the points of one image.

        Args:
            points_xy: ``(P, 2)`` point centres, level by level.
            point_strides: ``(P,)``.
            level_sizes: number of points on each level (sums to P).
            gt_boxes_xyxy: ``(G, 4)`` ground truth in input pixels.
            ignore_xyxy: ``(M, 4)`` ignore regions.
            level_shapes: ``(H_l, W_l)`` per level when the points are the grid of
                :func:`~tod_lightning.ops.points.level_points`; then each box's candidates are searched in a
                window around its centre and only candidate pairs are scored (time ``O(P + G)``, not
                ``O(P * G)``), with the same result as the dense search.

        Candidates are the ``topk`` nearest points per level in (squared distance, point index) order, so
        equidistant points are taken by index, on every device.
        """
        num_points, num_gt = points_xy.shape[0], gt_boxes_xyxy.shape[0]
        device = points_xy.device
        priors_xyxy = self.priors(points_xy, point_strides)
        gt_index = torch.full((num_points,), NEGATIVE, dtype=torch.long, device=device)
        best_sim = torch.zeros(num_points, device=device)
        if num_gt > 0:
            gt_boxes_xyxy = gt_boxes_xyxy.float()
            gt_centers = (gt_boxes_xyxy[:, :2] + gt_boxes_xyxy[:, 2:]) / 2
            paired = type(self.similarity).paired is not BoxSimilarity.paired
            cand_idx = self._candidates(points_xy, level_sizes, level_shapes if paired else None, gt_centers)  # (C, G)
            cand_gt = gt_boxes_xyxy.unsqueeze(0).expand(cand_idx.shape[0], -1, -1)  # (C, G, 4)
            if paired:
                cand_sim = self.similarity.paired(priors_xyxy[cand_idx], cand_gt)  # (C, G)
            else:
                cand_sim = self.similarity(priors_xyxy, gt_boxes_xyxy).gather(0, cand_idx)  # (C, G)
            threshold = cand_sim.mean(0) + cand_sim.std(0, unbiased=len(cand_idx) > 1)  # (G,)
            cand_xy = points_xy[cand_idx]  # (C, G, 2)
            inside = (
                (cand_xy[..., 0] > cand_gt[..., 0])
                & (cand_xy[..., 0] < cand_gt[..., 2])
                & (cand_xy[..., 1] > cand_gt[..., 1])
                & (cand_xy[..., 1] < cand_gt[..., 3])
            )  # (C, G), as points_in_boxes
            is_pos = (cand_sim >= threshold) & inside

            # Each point takes its most similar box among those it is a positive of (ties: lowest box index).
            # (point, box) pairs are unique among the candidates: levels are disjoint, a level's points distinct.
            flat_idx = cand_idx.reshape(-1)
            pos_sim = torch.where(is_pos, cand_sim, -1.0).reshape(-1)
            max_sim = torch.full((num_points,), -1.0, device=device).scatter_reduce(0, flat_idx, pos_sim, "amax")
            gt_cols = torch.arange(num_gt, device=device).expand_as(cand_idx)  # (C, G)
            best = is_pos.reshape(-1) & (pos_sim == max_sim[flat_idx])
            argmax = torch.full((num_points,), num_gt, device=device).scatter_reduce(
                0, flat_idx, torch.where(best, gt_cols.reshape(-1), num_gt), "amin"
            )
            matched = max_sim >= 0
            gt_index = torch.where(matched, argmax, gt_index)
            best_sim = torch.where(matched, max_sim, best_sim)

            # Guarantee: a box left without a positive takes its best candidate not yet forced for another
            # box. Round r offers every lonely box its r-th candidate (at most C rounds, C = candidates per box,
            # independent of G); a point wanted by several boxes goes to the lowest box index, the others wait.
            # Every round is whole-tensor work with no host synchronisation; a dummy slot P absorbs the writes
            # of boxes that do not take a point this round.
            order = cand_sim.T.argsort(dim=1, descending=True, stable=True).T  # (C, G); faster along the last dim
            ranked = cand_idx.gather(0, order)  # (C, G) candidate points, most similar first
            ranked_sim = cand_sim.gather(0, order)
            gt_ar = torch.arange(num_gt, device=device)
            gt_index = torch.cat([gt_index, gt_index.new_full((1,), NEGATIVE)])  # (P + 1,)
            best_sim = torch.cat([best_sim, best_sim.new_zeros(1)])
            forced = torch.zeros(num_points + 1, dtype=torch.bool, device=device)
            for rank in range(ranked.shape[0]):
                has_pos = torch.zeros(num_gt + 1, dtype=torch.bool, device=device)
                assigned = gt_index[:num_points]  # the dummy slot holds garbage
                has_pos[torch.where(assigned >= 0, assigned, num_gt)] = True
                lonely = ~has_pos[:num_gt]  # (G,)
                if device.type == "cpu" and not bool(lonely.any()):  # a free check on CPU only
                    break
                points = ranked[rank]  # (G,)
                want = lonely & ~forced[points]
                claimant = torch.full((num_points + 1,), num_gt, device=device).scatter_reduce(
                    0, points, torch.where(want, gt_ar, num_gt), "amin"
                )
                takes = want & (claimant[points] == gt_ar)
                target = torch.where(takes, points, num_points)  # (G,) the dummy slot for the others
                gt_index.scatter_(0, target, gt_ar)
                best_sim.scatter_(0, target, ranked_sim[rank])
                forced.scatter_(0, target, torch.ones_like(takes))
            gt_index, best_sim = gt_index[:num_points], best_sim[:num_points]

        if ignore_xyxy is not None and ignore_xyxy.numel() > 0:
            in_ignore = boxes_inside(priors_xyxy, ignore_xyxy.float(), self.ignore_overlap) | points_in_boxes(
                points_xy, ignore_xyxy.float()
            ).any(1)
            gt_index[(gt_index == NEGATIVE) & in_ignore] = IGNORE
        return AssignResult(gt_index, best_sim)

    def _candidates(
        self,
        points_xy: Tensor,
        level_sizes: list[int],
        level_shapes: list[tuple[int, int]] | None,
        gt_centers: Tensor,
    ) -> Tensor:
        """``(C, G)`` indices of the ``topk`` nearest points of every level, nearest first (C = sum of k)."""
        # A k-point block of (2a+1)^2 points around the nearest cell lies within sqrt(2) * (a + 0.5) cells of
        # the centre; every point outside a (2h+1)^2 window lies at least h + 0.5 cells away. h is chosen so
        # that h + 0.5 > sqrt(2) * (a + 0.5): the window holds the k nearest points and all points tied with them.
        a = math.ceil((math.sqrt(self.topk) - 1) / 2)
        half = math.floor(math.sqrt(2) * (a + 0.5) - 0.5) + 1
        side = 2 * half + 1
        candidates, start = [], 0
        for level, size in enumerate(level_sizes):
            k = min(self.topk, size)
            shape = level_shapes[level] if level_shapes is not None else None
            if shape is not None and min(shape) >= side:
                h, w = shape
                stride = points_xy[start + w + 1, 0] - points_xy[start + w, 0]  # cell pitch, a 0-d tensor
                cell = (gt_centers / stride - 0.5).round().long()  # (G, 2) nearest (x, y) cell
                x0 = (cell[:, 0] - half).clamp(0, w - side)
                y0 = (cell[:, 1] - half).clamp(0, h - side)
                offs = torch.arange(side, device=points_xy.device)
                # (side*side, G) point indices of the window, ascending (row-major: y outer, x inner).
                idx = ((y0 + offs[:, None])[:, None, :] * w + (x0 + offs[:, None])[None, :, :]).reshape(side * side, -1)
                idx = idx + start
            else:
                idx = torch.arange(start, start + size, device=points_xy.device)[:, None].expand(-1, len(gt_centers))
            dist2 = ((points_xy[idx.T] - gt_centers[:, None]) ** 2).sum(-1)  # (G, n) squared distance
            # Sorting along the contiguous last dim is several times faster than along dim 0.
            nearest = dist2.sort(dim=1, stable=True).indices[:, :k]  # (G, k); ties by position = by point index
            candidates.append(idx.T.gather(1, nearest).T)  # (k, G)
            start += size
        return torch.cat(candidates, dim=0)
