"""Exact greedy NMS for many small boxes: a sparse overlap graph instead of torchvision's all-pairs CPU loop."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from tod_lightning.ops.boxes import paired_box_iou
from tod_lightning.ops.ordering import (
    argsort_small_ints,
    argsort_unstable,
    index_rows,
    nonzero_1d,
    stable_descending_order,
)


def class_aware_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms``, or the same greedy NMS on a sparse overlap graph where that is faster.

    torchvision's ``batched_nms`` runs its CPU kernel group by group (from 1000 boxes), ~35 us per group, and the
    kernel compares each kept box with every later box of its group, 0.6-2 ns x sum of n_g^2 on the 2-core machine
    of ``benchmarks/nms.py`` (the low end with the exact duplicates of post-processing outputs, whose suppressed
    boxes it skips). The sparse path costs about 1 ms + 0.25 us x N there. It is taken on CPU when that estimate
    is lower, ``sum(n_g^2) + 35000 K > 1e6 + 250 N`` (K groups, N boxes, in ns): e.g. post-processing of 2
    images with 500 or more tiny objects each (5k candidates, ~600 per (image, class) group) or of 8 images with
    500 each (32 groups), a sliced-inference merge, one class of 1500 boxes; torchvision's kernel below that and
    always on GPU.
    Both give the same kept set (``tests/test_nms.py``); the order of equal scores may differ, as it may between
    torchvision's own paths.
    """
    if sparse_is_faster(boxes_xyxy, groups, iou_threshold):
        return sparse_batched_nms(boxes_xyxy, scores, groups, iou_threshold)
    return batched_nms(boxes_xyxy, scores, groups, iou_threshold)


def sparse_is_faster(boxes_xyxy: Tensor, groups: Tensor, iou_threshold: float) -> bool:
    """The dispatch of :func:`class_aware_nms`: on CPU, ``sum(n_g^2) + 35000 K > 1e6 + 250 N`` (estimated ns)."""
    if boxes_xyxy.device.type != "cpu" or not _sparse_applies(boxes_xyxy.shape[0], iou_threshold):
        return False  # host-known: no bincount for the many small calls
    sizes = torch.bincount(groups - groups.min()).double()  # (K',) boxes per group id (compact: image, class)
    torchvision_ns = float((sizes * sizes).sum()) + 35000.0 * float((sizes > 0).sum())
    return torchvision_ns > 1e6 + 250.0 * boxes_xyxy.shape[0]


def _sparse_applies(num_boxes: int, iou_threshold: float) -> bool:
    """Below 1000 boxes the sparse path never pays; below IoU 0.05 the size buckets bound nothing."""
    return num_boxes >= 1000 and iou_threshold >= 0.05


def sparse_batched_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware greedy NMS with the result of ``torchvision.ops.batched_nms``, in time about linear in the boxes.

    Tiny boxes overlap few others, so only pairs that can overlap are scored, and greedy NMS is resolved on that
    sparse graph:

    1. Pairs. IoU > t implies the widths (and heights) are within a factor 1/t of each other, so boxes are bucketed
       by ``ceil(log2(longest side))`` and a box is paired only with boxes of buckets up to ``ceil(log2(1/t))``
       below its own. IoU > t also puts the centres less than (1 - t) x the larger side apart, so partners lie in
       the 3x3 cells around a box in a grid of cells (1 - t) x its bucket's size: a dense table of cells per
       bucket, no search. Each pair is listed once: in one cell, a box with the boxes after it in the table;
       across cells, from the lower cell (its own cell's followers and the 4 cells after it); a box of a lower
       bucket searches all 9 cells around it. A bucket with few boxes joins the next larger one (one table
       fewer). Each pair is scored once with the CPU kernel's arithmetic, ``inter / (area_i + area_j - inter)``.
    2. Greedy rounds on the graph of pairs with IoU > t, oriented from the higher-ranked box (score, then index,
       as torchvision's stable sort): a box whose higher-ranked neighbours are all decided is kept if none of them
       was kept, suppressed otherwise (one ``scatter_reduce`` per round). Every round decides at least the best
       undecided box; in practice a handful of rounds (the longest chain of duplicates).

    Returns the kept indices in decreasing score order, like torchvision. Falls back to torchvision for
    ``iou_threshold`` below 0.05 (no useful size bound), for fewer than 1000 boxes, and for boxes with non-finite
    or absurd (>= 2^40) coordinates, which have no size bucket.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes with ``x1 <= x2``, ``y1 <= y2``.
        scores: ``(N,)``.
        groups: ``(N,)`` int64: boxes of different groups never suppress each other (image * classes + label).
        iou_threshold: a box is suppressed by a kept box with IoU strictly above it.
    """
    num = boxes_xyxy.shape[0]
    if not _sparse_applies(num, iou_threshold) or not bool((boxes_xyxy.abs() < 2.0**40).all()):
        return batched_nms(boxes_xyxy, scores, groups, iou_threshold)  # NaN, inf or absurd coordinates included
    device = boxes_xyxy.device
    order = stable_descending_order(scores)  # (N,) torchvision's processing order: by score, ties by index
    # Renumbered in that order, so that the lower index of a pair is the box processed first.
    boxes_xyxy, groups = index_rows(boxes_xyxy.contiguous(), order), groups.index_select(0, order)
    first, second = _candidate_pairs(boxes_xyxy, groups, iou_threshold)  # (E,), (E,) each pair once
    iou = paired_box_iou(index_rows(boxes_xyxy, first), index_rows(boxes_xyxy, second))  # (E,)
    hit = nonzero_1d(iou.double() > iou_threshold)  # the kernel compares the float IoU with a double
    first, second = first.index_select(0, hit), second.index_select(0, hit)
    src, dst = torch.minimum(first, second), torch.maximum(first, second)  # (E',) from the box processed first

    # States ordered so that the strongest incoming state decides: a kept earlier neighbour suppresses,
    # else an undecided one makes the box wait, else (suppressed neighbours or none) the box is kept.
    undecided, kept = 1, 2  # and suppressed = 0
    state = torch.full((num,), undecided, dtype=torch.uint8, device=device)
    while True:
        strongest = torch.zeros_like(state).scatter_reduce_(0, dst, state.index_select(0, src), "amax")
        state = torch.where(state == undecided, kept - strongest, state)  # kept -> suppressed, undecided -> wait
        if not bool((state == undecided).any()):
            break
    return order.index_select(0, nonzero_1d(state == kept))  # kept, in processing order


def _candidate_pairs(boxes_xyxy: Tensor, groups: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Every pair of boxes of one group that may have IoU > ``iou_threshold``, once, as ``(first, second)``."""
    device = boxes_xyxy.device
    wh = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=0)
    side = wh.max(dim=1).values  # (N,) longest side
    bucket = torch.ceil(torch.log2(side.clamp(min=1.0))).long()  # (N,) cells of 2^bucket >= side, at least 1 px
    bucket += (torch.pow(2.0, bucket.to(side.dtype)) < side).long()  # guard against log2 rounding down
    span = math.ceil(math.log2(1.0 / iou_threshold))  # partners lie at most `span` buckets below
    centers = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    group_of = groups - groups.min()  # (N,) 0..K-1: group ids are image * classes + label, already compact
    num_groups = int(group_of.max()) + 1
    if num_groups > len(groups):  # sparse ids: renumber, so that the cell table stays about as small as the boxes
        group_of = torch.unique(groups, return_inverse=True)[1]
        num_groups = int(group_of.max()) + 1
    # IoU > t needs an overlap of more than t * max(w_a, w_b) on x, so the centres are less than
    # (w_a + w_b) / 2 - t * max(w_a, w_b) <= (1 - t) * max(w_a, w_b) apart (and the same on y). A level's boxes
    # and their partners are no larger than 2^level (its largest bucket), so with cells of at least
    # (1 - t) * 2^level (1 % margin for rounding) a partner's cell is one of the 3x3 around the box's.
    fraction = min(1.0, 1.01 * (1.0 - iou_threshold))
    # Boxes sorted by bucket, so that every level's sources and partners are slices, not searches.
    smallest = int(bucket.min())
    by_bucket = argsort_small_ints(bucket - smallest)  # buckets span a few dozen values (side < 2^40)
    per_bucket = torch.bincount(bucket - smallest).tolist()  # boxes per bucket, from the smallest
    end = list(itertools.accumulate(per_bucket))
    # Levels of consecutive buckets, from the largest down: a bucket with under a quarter of the boxes of the
    # level above joins it (its boxes then search cells sized for the larger bucket: a few more pairs to score,
    # one pass of ~30 tensor ops fewer).
    levels: list[list[int]] = []
    for b in reversed(range(len(per_bucket))):
        if per_bucket[b] == 0:
            continue
        if levels and 4 * per_bucket[b] < end[levels[-1][1]] - end[levels[-1][0]] + per_bucket[levels[-1][0]]:
            levels[-1][0] = b
        else:
            levels.append([b, b])
    firsts, seconds = [], []
    for low_bucket, level_bucket in levels:  # a handful of size buckets, not boxes
        level = smallest + level_bucket
        first_partner = max(low_bucket - span, 0)  # partners lie up to `span` buckets below the level's lowest
        lower_start, level_start = (end[b] - per_bucket[b] for b in (first_partner, low_bucket))
        # (M,) = (L,) boxes of the lower buckets, then (S,) the level's own boxes.
        partners = by_bucket[lower_start : end[level_bucket]]
        num_lower = level_start - lower_start
        cell = fraction * 2.0**level
        while True:  # a sparse level gets coarser cells, so that the table stays about as small as its boxes
            cell_xy = torch.floor(index_rows(centers, partners) / cell).long()  # (M, 2)
            low = cell_xy.min(0).values
            # One empty cell of margin on each side, so that every box's 3x3 neighbours are in the table.
            grid_x, grid_y = (cell_xy.max(0).values - low + 3).tolist()
            if num_groups * grid_x * grid_y <= 4 * len(partners) + 65536:
                break
            cell *= 2.0
        xy = cell_xy - low + 1
        partner_cell = (group_of.index_select(0, partners) * grid_x + xy[:, 0]) * grid_y + xy[:, 1]  # (M,)
        lower, lower_cell = partners[:num_lower], partner_cell[:num_lower]
        # Dense table over (group, cell x, cell y) of the level's boxes: sorted by cell, each cell's end and count.
        by_cell = argsort_unstable(partner_cell[num_lower:])  # the order within a cell does not matter
        source_cell = partner_cell[num_lower:].index_select(0, by_cell)  # (S,) ascending
        sources = partners[num_lower:].index_select(0, by_cell)  # (S,) the level's boxes in table order
        cell_count = torch.bincount(source_cell, minlength=num_groups * grid_x * grid_y)
        cell_end = torch.cumsum(cell_count, 0)
        cell_start = cell_end - cell_count
        # Pairs of two of the level's boxes, each once: in one cell, a box with the boxes after it in the table;
        # across cells, from the box in the lower cell: its 4 cells after (+x column, and +y in its own column).
        after = torch.tensor([grid_y - 1, grid_y, grid_y + 1, 1], device=device)
        wanted = (after[:, None] + source_cell).reshape(-1)  # (4 * S,) cell after cell, each for every box
        position = torch.arange(len(sources), device=device)
        own_count = cell_end.index_select(0, source_cell) - position - 1  # (S,) boxes after it in its own cell
        start = torch.cat([position + 1, cell_start.index_select(0, wanted)])  # (5 * S,) runs of table slots
        count = torch.cat([own_count, cell_count.index_select(0, wanted)])  # (5 * S,)
        entry, run, slot = _runs(start, count)  # (Q',) non-empty runs; (E,) the run and table slot of each pair
        firsts.append(sources.index_select(0, entry % len(sources)).index_select(0, run))
        seconds.append(sources.index_select(0, slot))
        if num_lower:  # a box of a lower bucket (not in the table) with the level's boxes in all 9 cells around it
            around = torch.tensor([dx * grid_y + dy for dx in (-1, 0, 1) for dy in (-1, 0, 1)], device=device)
            wanted = (around[:, None] + lower_cell).reshape(-1)  # (9 * L,)
            entry, run, slot = _runs(cell_start.index_select(0, wanted), cell_count.index_select(0, wanted))
            firsts.append(lower.index_select(0, entry % len(lower)).index_select(0, run))
            seconds.append(sources.index_select(0, slot))
    if len(firsts) == 1:  # one level, one run list: no copy
        return firsts[0], seconds[0]
    return torch.cat(firsts), torch.cat(seconds)


def _runs(start: Tensor, count: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Every slot of the runs ``[start, start + count)``, run after run: ``(Q,), (Q,) -> (Q',), (E,), (E,)``, the
    non-empty runs, the one of each slot (a position in the first) and the slot, ``E = sum(count)``. The work of
    ``torch.repeat_interleave`` without its 4x slower CPU kernel: a marker at each run's first slot and a
    cumulative sum number the runs."""
    nonempty = nonzero_1d(count > 0)  # (Q',) a run starts at each of them, so the markers below never collide
    start, count = start.index_select(0, nonempty), count.index_select(0, nonempty)
    first = torch.cumsum(count, 0)  # (Q',) the end of each run in the output, then its first slot
    total = int(first[-1]) if len(first) else 0
    first -= count
    run = torch.zeros(total, dtype=torch.long, device=count.device).index_fill_(0, first, 1).cumsum_(0).sub_(1)
    slot = (start - first).index_select(0, run).add_(torch.arange(total, device=count.device))  # (E,)
    return nonempty, run, slot
