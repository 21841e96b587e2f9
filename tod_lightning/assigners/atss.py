"""ATSS label assignment (Zhang et al., CVPR 2020, arXiv:1912.02424) with an injectable similarity."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from tod_lightning.assigners.similarity import BoxSimilarity, IoUSimilarity
from tod_lightning.ops.boxes import boxes_in_regions, points_in_boxes
from tod_lightning.ops.ordering import first_in_order, nonzero_1d

NEGATIVE = -1
IGNORE = -2


def mean_plus_std(cand_sim: Tensor) -> Tensor:
    """``(G, C)`` -> ``(G,)`` ATSS threshold: mean + standard deviation (unbiased when C > 1) over candidates.

    Two explicit passes: ``Tensor.std`` is up to 15x slower on CPU.
    """
    mean = cand_sim.mean(1)
    if cand_sim.shape[1] < 2:
        return mean
    return mean + ((cand_sim - mean[:, None]) ** 2).sum(1).div(cand_sim.shape[1] - 1).sqrt()


@dataclass
class AssignResult:
    """Assignment of every point of one image (``(P,)``, from ``__call__``) or of a batch (``(B, P)``, from
    ``assign_batch``).

    Attributes:
        gt_index: int64: index of the matched ground truth in its image, ``-1`` negative, ``-2`` ignored.
        similarity: similarity of each positive to its ground truth (0 elsewhere).
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
        sync_free: schedule of the claims and the forced rounds (same result): ``None`` picks by device (host
            syncs on CPU only).
    """

    def __init__(
        self,
        similarity: BoxSimilarity | None = None,
        topk: int = 9,
        anchor_scale: float = 4.0,
        ignore_overlap: float = 0.5,
        sync_free: bool | None = None,
    ):
        self.similarity = similarity or IoUSimilarity()
        self.sync_free = sync_free
        self.topk = topk
        self.anchor_scale = anchor_scale
        self.ignore_overlap = ignore_overlap

    def priors(self, points_xy: Tensor, point_strides: Tensor) -> Tensor:
        """``(P, 2)``, ``(P,)`` -> ``(P, 4)`` prior squares centred on the points."""
        half = (self.anchor_scale * point_strides / 2).unsqueeze(1)
        return torch.cat([points_xy - half, points_xy + half], dim=1)

    def __call__(
        self,
        points_xy: Tensor,
        point_strides: Tensor,
        level_sizes: list[int],
        gt_boxes_xyxy: Tensor,
        ignore_xyxy: Tensor | None = None,
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> AssignResult:
        """Assign the points of one image: :meth:`assign_batch` of a batch of one, with ``(P,)`` results."""
        result = self.assign_batch(points_xy, point_strides, level_sizes, [gt_boxes_xyxy], [ignore_xyxy], level_shapes)
        return AssignResult(result.gt_index[0], result.similarity[0])

    @torch.no_grad()
    def assign_batch(
        self,
        points_xy: Tensor,
        point_strides: Tensor,
        level_sizes: list[int],
        gt_boxes_xyxy: Sequence[Tensor],
        ignore_xyxy: Sequence[Tensor | None] | None = None,
        level_shapes: list[tuple[int, int]] | None = None,
    ) -> AssignResult:
        """Assign the points of every image of a batch at once (one set of tensor ops, no loop over images).

        Args:
            points_xy: ``(P, 2)`` point centres, level by level (the same grid for every image).
            point_strides: ``(P,)``.
            level_sizes: number of points on each level (sums to P).
            gt_boxes_xyxy: per image ``(G_b, 4)`` ground truth in input pixels.
            ignore_xyxy: per image ``(M_b, 4)`` ignore regions or ``None``.
            level_shapes: ``(H_l, W_l)`` per level when the points are the grid of
                :func:`~tod_lightning.ops.points.level_points`; then each box's candidates are searched in a
                window around its centre and only candidate pairs are scored (time ``O(P + G)``, not
                ``O(P * G)``), with the same result as the dense search.

        Returns:
            ``(B, P)`` results; ``gt_index`` indexes each image's own boxes.

        The images share nothing: every box's candidates are points of its own image (slots ``b * P + p`` of a
        flat ``B * P`` array), and the tie-breaks (lowest box index) compare boxes of one image only, so the
        result equals assigning each image alone. Candidates are the ``topk`` nearest points per level in
        (squared distance, point index) order, so equidistant points are taken by index, on every device.
        """
        num_images, num_points = len(gt_boxes_xyxy), points_xy.shape[0]
        device = points_xy.device
        slots = num_images * num_points  # one slot per (image, point); slot ``slots`` is a dummy
        counts = [len(g) for g in gt_boxes_xyxy]
        num_gt = sum(counts)
        gt_index = torch.full((slots + 1,), NEGATIVE, dtype=torch.long, device=device)
        best_sim = torch.zeros(slots + 1, device=device)
        if num_gt > 0:
            all_gt_xyxy = torch.cat([g.reshape(-1, 4) for g in gt_boxes_xyxy]).float()  # (G, 4) all images
            # output_size known on the host: no device sync for repeat_interleave's result size.
            image_of = torch.repeat_interleave(
                torch.arange(num_images, device=device), torch.tensor(counts, device=device), output_size=num_gt
            )  # (G,)
            first = torch.tensor([sum(counts[:b]) for b in range(num_images)], device=device)  # (B,)
            gt_centers = (all_gt_xyxy[:, :2] + all_gt_xyxy[:, 2:]) / 2
            paired = type(self.similarity).paired is not BoxSimilarity.paired
            shapes = level_shapes if paired else None
            # Internal layout (G, C): box-major, so reductions and sorts over a box's candidates run along the
            # contiguous last dim.
            cand_idx, cand_strides = self._candidates(
                points_xy, point_strides, level_sizes, shapes, gt_centers
            )  # (G, C) point indices, (C,) their strides
            if paired:
                cand_sim, inside = self._score_candidates(points_xy, cand_idx, cand_strides, all_gt_xyxy)
            else:
                priors_xyxy = self.priors(points_xy, point_strides)  # (P, 4)
                cand_sim = self.similarity(priors_xyxy, all_gt_xyxy).T.gather(1, cand_idx)  # (G, C)
                inside = points_in_boxes(points_xy, all_gt_xyxy).T.gather(1, cand_idx)  # (G, C)
            is_pos = (cand_sim >= mean_plus_std(cand_sim)[:, None]) & inside  # (G, C)
            cand_slot = cand_idx + (image_of * num_points)[:, None]  # (G, C) slot of each candidate in its image

            max_sim, argmax = self._claims(is_pos, cand_sim, cand_slot, slots)
            matched = max_sim >= 0
            gt_index = torch.where(matched, argmax, gt_index)
            best_sim = torch.where(matched, max_sim, best_sim)
            self._force_lonely(gt_index, best_sim, cand_slot, cand_sim)
        gt_index = gt_index[:slots].view(num_images, num_points)
        best_sim = best_sim[:slots].view(num_images, num_points)
        if num_gt > 0:  # batch-wide box numbers -> each image's own
            gt_index = torch.where(gt_index >= 0, gt_index - first[:, None], gt_index)

        regions = [r if r is not None else points_xy.new_zeros(0, 4) for r in (ignore_xyxy or [None] * num_images)]
        if any(r.numel() > 0 for r in regions):
            in_ignore = self._in_ignore(points_xy, self.priors(points_xy, point_strides), regions)  # (B, P)
            gt_index = torch.where((gt_index == NEGATIVE) & in_ignore, IGNORE, gt_index)
        return AssignResult(gt_index, best_sim)

    def _cpu_schedule(self, device: torch.device) -> bool:
        """Whether to take the CPU schedule (host syncs), by ``sync_free`` or else by device."""
        return device.type == "cpu" if self.sync_free is None else not self.sync_free

    def _claims(self, is_pos: Tensor, cand_sim: Tensor, cand_slot: Tensor, slots: int) -> tuple[Tensor, Tensor]:
        """``(slots + 1,)`` per slot the highest similarity among the boxes it is a positive of (-1 for none), and
        the lowest index among the boxes with that similarity (``G`` for none): each point takes its most similar
        box.

        (slot, box) pairs are unique among the candidates: levels are disjoint, a level's points distinct. Boxes are
        numbered across the batch in image order, so "lowest index" is the lowest of the image. On CPU (and
        ``sync_free=False``) only the positives, a few of each box's candidates, are scattered (``nonzero``: a host
        sync, free on CPU); on an accelerator every candidate is, the others with the neutral -1 and ``G``.
        """
        num_gt, num_cand = cand_slot.shape
        device = cand_slot.device
        if self._cpu_schedule(device):
            pos = nonzero_1d(is_pos.reshape(-1))  # (N,) flat (box, candidate) positions of the positives
            flat_slot = cand_slot.reshape(-1).index_select(0, pos)  # (N,)
            pos_sim = cand_sim.reshape(-1).index_select(0, pos)
            box_of = torch.div(pos, num_cand, rounding_mode="floor")
            is_pos = None  # all of them
        else:
            flat_slot = cand_slot.reshape(-1)  # (G * C,)
            pos_sim = torch.where(is_pos, cand_sim, -1.0).reshape(-1)
            box_of = torch.arange(num_gt, device=device)[:, None].expand_as(cand_slot).reshape(-1)
        max_sim = torch.full((slots + 1,), -1.0, device=device).scatter_reduce(0, flat_slot, pos_sim, "amax")
        best = pos_sim == max_sim.index_select(0, flat_slot)
        if is_pos is not None:
            best &= is_pos.reshape(-1)
        argmax = torch.full((slots + 1,), num_gt, device=device).scatter_reduce(
            0, flat_slot, torch.where(best, box_of, num_gt), "amin"
        )
        return max_sim, argmax

    def _score_candidates(
        self, points_xy: Tensor, cand_idx: Tensor, cand_strides: Tensor, gt_xyxy: Tensor
    ) -> tuple[Tensor, Tensor]:
        """``(G, C)`` similarity of every box to its candidates' priors, and whether each candidate lies inside."""
        num_gt, num_cand = cand_idx.shape
        flat = cand_idx.reshape(-1)
        # x and y gathered separately and the priors built component-major ((4, G, C) memory viewed as
        # (G, C, 4)): every ``[..., i]`` the similarity takes is then contiguous, several times faster on CPU.
        px = points_xy[:, 0].index_select(0, flat).view(num_gt, num_cand)
        py = points_xy[:, 1].index_select(0, flat).view(num_gt, num_cand)
        half = self.anchor_scale * cand_strides / 2  # (C,) priors()' arithmetic, so the values are identical
        cand_priors = px.new_empty(4, num_gt, num_cand)  # written in place: no stacked copy
        torch.sub(px, half, out=cand_priors[0])
        torch.sub(py, half, out=cand_priors[1])
        torch.add(px, half, out=cand_priors[2])
        torch.add(py, half, out=cand_priors[3])
        cand_priors = cand_priors.permute(1, 2, 0)  # (G, C, 4)
        box = gt_xyxy[:, None, :]  # (G, 1, 4) broadcast over candidates
        cand_sim = self.similarity.paired(cand_priors, box)  # (G, C)
        inside = (px > box[..., 0]) & (px < box[..., 2]) & (py > box[..., 1]) & (py < box[..., 3])  # points_in_boxes
        return cand_sim, inside

    def _force_lonely(self, gt_index: Tensor, best_sim: Tensor, cand_slot: Tensor, cand_sim: Tensor) -> None:
        """Give every box left without a positive its best candidate not yet forced for another box (in place).

        Round r offers every lonely box its r-th candidate (at most C rounds, C = candidates per box, independent
        of G and B); a point wanted by several boxes goes to the lowest box index, the others wait. A forced
        point may be another box's positive, which then becomes lonely in turn. The dummy slot (the last) absorbs
        the writes of boxes that do not take a point in a round.

        Two schedules with the same result: on an accelerator (or ``sync_free=True``) every box is ranked once and
        every round is whole-tensor work with no host synchronisation; on CPU each round works on the lonely
        boxes only (a few percent of them), found with ``nonzero``, which costs nothing there.
        """
        slots, device = gt_index.shape[0] - 1, gt_index.device
        num_gt, num_cand = cand_slot.shape
        on_cpu = self._cpu_schedule(device)
        if not on_cpu:  # every box's ranking at once: a round then needs no host synchronisation
            order = first_in_order(cand_sim, num_cand, descending=True)  # (G, C)
            ranked = cand_slot.gather(1, order)  # (G, C) candidate slots, most similar first
            ranked_sim = cand_sim.gather(1, order)
        forced = torch.zeros(slots + 1, dtype=torch.bool, device=device)
        no_box = torch.full((slots + 1,), num_gt, device=device)
        # Positives owned by each box (the last entry collects non-positives), updated per round from the
        # points that change hands, so a round costs O(G), not O(B * P).
        # (index_add_, not bincount: bincount sizes its output by the maximum, a host sync on an accelerator)
        owner = torch.where(gt_index[:slots] >= 0, gt_index[:slots], num_gt)  # (B * P,)
        owned = torch.zeros(num_gt + 1, dtype=torch.long, device=device).index_add_(0, owner, torch.ones_like(owner))
        for rank in range(num_cand):
            if on_cpu:
                # Only the lonely boxes (a host sync, free on CPU), and only the first rank + 1 of their ranking:
                # most boxes are never lonely, so ranking all of them would be the most expensive step.
                box_ids = (owned[:num_gt] == 0).nonzero().squeeze(1)  # (L,)
                if box_ids.numel() == 0:
                    break
                their_sim = cand_sim.index_select(0, box_ids)  # (L, C)
                pick = first_in_order(their_sim, rank + 1, descending=True)[:, rank : rank + 1]  # (L, 1)
                points = cand_slot.index_select(0, box_ids).gather(1, pick).squeeze(1)  # (L,) their rank-th candidate
                sims = their_sim.gather(1, pick).squeeze(1)
                want = ~forced.index_select(0, points)
            else:
                box_ids = torch.arange(num_gt, device=device)
                points, sims = ranked[:, rank], ranked_sim[:, rank]  # (G,)
                want = (owned[:num_gt] == 0) & ~forced.index_select(0, points)
            claimant = no_box.scatter_reduce(0, points, torch.where(want, box_ids, num_gt), "amin")
            takes = want & (claimant.index_select(0, points) == box_ids)
            target = torch.where(takes, points, slots)  # the dummy slot for the others
            previous = gt_index.index_select(0, target)  # the box that loses the point, if any (garbage at the dummy)
            owned.index_add_(0, torch.where(takes & (previous >= 0), previous, num_gt), -takes.long())
            owned.index_add_(0, torch.where(takes, box_ids, num_gt), takes.long())
            gt_index.scatter_(0, target, box_ids)
            best_sim.scatter_(0, target, sims)
            forced.scatter_(0, target, torch.ones_like(takes))

    def _in_ignore(self, points_xy: Tensor, priors_xyxy: Tensor, regions: list[Tensor]) -> Tensor:
        """``(B, P)``: the point lies in one of its image's regions, or its prior lies mostly inside one."""
        all_regions = torch.cat([r.reshape(-1, 4) for r in regions]).float()  # (M, 4)
        image_of = torch.repeat_interleave(
            torch.arange(len(regions), device=points_xy.device),
            torch.tensor([len(r) for r in regions], device=points_xy.device),
            output_size=len(all_regions),
        )  # (M,)
        hit = boxes_in_regions(priors_xyxy, all_regions, self.ignore_overlap) | points_in_boxes(
            points_xy, all_regions
        )  # (P, M)
        one_hot = F.one_hot(image_of, len(regions)).float()  # (M, B)
        return (hit.float() @ one_hot).T > 0  # (B, P)

    def _candidates(
        self,
        points_xy: Tensor,
        point_strides: Tensor,
        level_sizes: list[int],
        level_shapes: list[tuple[int, int]] | None,
        gt_centers: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """``(G, C)`` indices of the ``topk`` nearest points of every level, nearest first (C = sum of k), and
        ``(C,)`` the stride of each candidate column."""
        # A k-point block of (2a+1)^2 points around the nearest cell lies within sqrt(2) * (a + 0.5) cells of
        # the centre; every point outside a (2h+1)^2 window lies at least h + 0.5 cells away. h is chosen so
        # that h + 0.5 > sqrt(2) * (a + 0.5): the window holds the k nearest points and all points tied with them.
        # Near the border the window is shifted inwards (tests/test_assigner.py checks every sub-cell offset of
        # centres inside the image).
        a = math.ceil((math.sqrt(self.topk) - 1) / 2)
        half = math.floor(math.sqrt(2) * (a + 0.5) - 0.5) + 1
        side = 2 * half + 1
        starts = [sum(level_sizes[:i]) for i in range(len(level_sizes))]
        windowed = [
            i for i, shape in enumerate(level_shapes or [None] * len(level_sizes)) if shape and min(shape) >= side
        ]
        candidates: dict[int, Tensor] = {}
        if windowed:  # every windowed level at once (k = topk on each: a window holds side^2 >= topk points)
            shapes, level_starts = [level_shapes[i] for i in windowed], [starts[i] for i in windowed]
            found = self._window_candidates(gt_centers, point_strides, shapes, level_starts, half)  # (L, G, topk)
            candidates.update(zip(windowed, found.unbind(0)))
        for level, size in enumerate(level_sizes):
            if level not in candidates:  # a level smaller than the window (or no grid given): the dense search
                k, start = min(self.topk, size), starts[level]
                dist2 = ((points_xy[start : start + size][None] - gt_centers[:, None]) ** 2).sum(-1)  # (G, n)
                candidates[level] = first_in_order(dist2, k, nonnegative=True) + start  # (G, k) point indices
        strides = [point_strides[starts[i]].expand(candidates[i].shape[1]) for i in range(len(level_sizes))]
        return torch.cat([candidates[i] for i in range(len(level_sizes))], dim=1), torch.cat(strides)

    def _window_candidates(
        self, gt_centers: Tensor, point_strides: Tensor, shapes: list[tuple[int, int]], starts: list[int], half: int
    ) -> Tensor:
        """``(L, G, topk)`` point indices of the ``topk`` nearest points of each of ``L`` levels, searched in a
        ``(2 half + 1)^2`` window around each centre: one set of tensor ops (and one top-k) for all the levels."""
        device, side = gt_centers.device, 2 * half + 1
        stride = point_strides[torch.tensor(starts, device=device)][:, None, None]  # (L, 1, 1) float
        h = torch.tensor([s[0] for s in shapes], device=device)[:, None]  # (L, 1)
        w = torch.tensor([s[1] for s in shapes], device=device)[:, None]
        offs = torch.arange(side, device=device)
        # Nearest cell, a centre half-way between two cells going to the lower one: with every point of the window
        # tied, the lower indices the dense order prefers must be inside it.
        lo = torch.ceil(gt_centers[None] / stride - 1.0).long() - half  # (L, G, 2) first window cell (x, y)
        col0 = torch.minimum(lo[..., 0].clamp(min=0), w - side)  # (L, G) window corner, shifted inside the grid
        row0 = torch.minimum(lo[..., 1].clamp(min=0), h - side)
        # Window point coordinates with level_points' arithmetic, so distances are bit-identical to gathering the
        # points; the squared distance is separable: dy^2 (rows) + dx^2 (columns).
        dx2 = ((((col0[..., None] + offs).float() + 0.5) * stride) - gt_centers[None, :, 0:1]) ** 2  # (L, G, side)
        dy2 = ((((row0[..., None] + offs).float() + 0.5) * stride) - gt_centers[None, :, 1:2]) ** 2
        num_levels, num_gt = col0.shape
        dist2 = (dx2[..., None, :] + dy2[..., :, None]).reshape(num_levels * num_gt, side * side)  # (L * G, n)
        # Window entries are row-major (y outer, x inner), so their order is the point index order.
        nearest = first_in_order(dist2, self.topk, nonnegative=True).view(num_levels, num_gt, -1)  # (L, G, k)
        # Window entry -> point index offset from the window's first point (row * w + column), per level.
        entry_offset = (offs[:, None] * w[:, None] + offs).reshape(num_levels, 1, side * side)  # (L, 1, n)
        offset = entry_offset.expand(-1, num_gt, -1).gather(2, nearest)  # (L, G, k)
        corner = row0 * w + col0 + torch.tensor(starts, device=device)[:, None]  # (L, G) the window's first point
        return offset + corner[..., None]  # (L, G, k) point indices
