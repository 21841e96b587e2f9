"""Exact greedy NMS for many small boxes: a sparse overlap graph instead of torchvision's all-pairs CPU loop."""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms

from tod_lightning.ops.boxes import paired_box_iou
from tod_lightning.ops.ordering import argsort_unstable, stable_descending_order


def class_aware_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms``, or the same greedy NMS on a sparse overlap graph where that is faster.

    torchvision's CPU kernel compares each kept box with every later box of its group, so its time grows with the
    square of the group sizes, about 1 ns x sum of n_g^2 on the 2-core machine of ``benchmarks/nms.py`` (0.6 ns with
    the exact duplicates of post-processing outputs, whose suppressed boxes it skips). The sparse path costs about
    2 ms + 0.4 us x N there. It is taken on CPU when ``sum(n_g^2) > 2e6 + 400 N``: e.g. post-processing of 2 images
    with 2000 tiny objects each (15k candidates, ~2000 per (image, class) group: 19 -> 6-9 ms), a sliced-inference
    merge, one class of 2000 boxes; torchvision's kernel below that (groups of a few hundred) and always on GPU.
    Both give the same kept set (``tests/test_nms.py``); the order of equal scores may differ, as it may between
    torchvision's own paths.
    """
    if sparse_is_faster(boxes_xyxy, groups, iou_threshold):
        return sparse_batched_nms(boxes_xyxy, scores, groups, iou_threshold)
    return batched_nms(boxes_xyxy, scores, groups, iou_threshold)


def sparse_is_faster(boxes_xyxy: Tensor, groups: Tensor, iou_threshold: float) -> bool:
    """The dispatch of :func:`class_aware_nms`: on CPU, ``sum(n_g^2) > 2e6 + 400 N`` (estimated costs)."""
    if boxes_xyxy.device.type != "cpu" or not _sparse_applies(boxes_xyxy.shape[0], iou_threshold):
        return False  # host-known: no bincount for the many small calls
    sizes = torch.bincount(groups - groups.min()).double()  # (K,) boxes per group (ids are compact: image, class)
    return float((sizes * sizes).sum()) > 2e6 + 400.0 * boxes_xyxy.shape[0]


def _sparse_applies(num_boxes: int, iou_threshold: float) -> bool:
    """Below 1000 boxes the sparse path never pays; below IoU 0.05 the size buckets bound nothing."""
    return num_boxes >= 1000 and iou_threshold >= 0.05


def sparse_batched_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware greedy NMS with the result of ``torchvision.ops.batched_nms``, in time about linear in the boxes.

    Tiny boxes overlap few others, so only pairs that can overlap are scored, and greedy NMS is resolved on that
    sparse graph:

    1. Pairs. IoU > t implies the widths (and heights) are within a factor 1/t of each other, so boxes are bucketed
       by ``ceil(log2(longest side))`` and a box is paired only with boxes of buckets up to ``ceil(log2(1/t))``
       below its own. IoU > t also puts the centres less than (1 - t) x the larger side apart, so partners are
       found in the 3x3 cells around the box in a grid of cells (1 - t) x its bucket's size (a dense table of
       cells, no search). A bucket with few boxes joins the next larger one (one pass of tensor ops fewer). Each
       pair is scored once with the CPU kernel's arithmetic, ``inter / (area_i + area_j - inter)``.
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
    rank = torch.empty_like(order).index_copy_(0, order, torch.arange(num, device=device))  # (N,) inverse
    first, second = _candidate_pairs(boxes_xyxy, groups, iou_threshold)  # (E,), (E,) each pair once
    iou = paired_box_iou(boxes_xyxy.index_select(0, first), boxes_xyxy.index_select(0, second))  # (E,)
    hit = (iou.double() > iou_threshold).nonzero().squeeze(1)  # the kernel compares the float IoU with a double
    first, second = first.index_select(0, hit), second.index_select(0, hit)
    # Edge from the higher-ranked box (it is processed first) to the lower-ranked one.
    swap = rank.index_select(0, first) > rank.index_select(0, second)
    src, dst = torch.where(swap, second, first), torch.where(swap, first, second)  # (E',)

    # States ordered so that the strongest incoming state decides: a kept higher-ranked neighbour suppresses,
    # else an undecided one makes the box wait, else (suppressed neighbours or none) the box is kept.
    undecided, kept = 1, 2  # and suppressed = 0
    state = torch.full((num,), undecided, dtype=torch.uint8, device=device)
    while True:
        strongest = torch.zeros_like(state).scatter_reduce_(0, dst, state.index_select(0, src), "amax")
        state = torch.where(state == undecided, kept - strongest, state)  # kept -> suppressed, undecided -> wait
        if not bool((state == undecided).any()):
            break
    return order[state[order] == kept]


_NEIGHBOURS = [(dx, dy) for dx in (-1, 0, 1) for dy in (-1, 0, 1) if (dx, dy) != (0, 0)]


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
    by_bucket = argsort_unstable(bucket)
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
        sources = by_bucket[end[low_bucket] - per_bucket[low_bucket] : end[level_bucket]]  # (S,) this level's boxes
        first_partner = max(low_bucket - span, 0)
        partners = by_bucket[end[first_partner] - per_bucket[first_partner] : end[level_bucket]]  # (M,) incl. sources
        cell = fraction * 2.0**level
        while True:  # a sparse level gets coarser cells, so that the table stays about as small as its boxes
            cell_xy = torch.floor(centers.index_select(0, partners) / cell).long()  # (M, 2)
            low = cell_xy.min(0).values
            # One empty cell of margin on each side, so that every source's 3x3 neighbours are in the table.
            grid_x, grid_y = (cell_xy.max(0).values - low + 3).tolist()
            if num_groups * grid_x * grid_y <= 4 * len(partners) + 65536:
                break
            cell *= 2.0
        # Dense table over (group, cell x, cell y): partners sorted by cell, and each cell's first slot and count.
        xy = cell_xy - low + 1
        partner_cell = (group_of.index_select(0, partners) * grid_x + xy[:, 0]) * grid_y + xy[:, 1]  # (M,)
        by_cell = argsort_unstable(partner_cell)  # the order within a cell does not matter
        partner_cell, partners = partner_cell.index_select(0, by_cell), partners.index_select(0, by_cell)
        cell_count = torch.bincount(partner_cell, minlength=num_groups * grid_x * grid_y)
        cell_start = torch.cumsum(cell_count, 0) - cell_count
        xy = torch.floor(centers.index_select(0, sources) / cell).long() - low + 1  # (S, 2)
        source_cell = (group_of.index_select(0, sources) * grid_x + xy[:, 0]) * grid_y + xy[:, 1]  # (S,)
        # Partners of lower buckets are not sources here: each source searches all 9 cells around it. Without
        # them (partners == sources) half of them suffice, as a pair of different cells is then found from the
        # source in the lower cell: its own cell and the 4 cells after it (+x column, and +y in its column).
        half = first_partner == low_bucket
        stencil = [(0, 0), (1, -1), (1, 0), (1, 1), (0, 1)] if half else [(0, 0), *_NEIGHBOURS]
        around = torch.tensor([dx * grid_y + dy for dx, dy in stencil], device=device)
        wanted = (source_cell[:, None] + around).reshape(-1)  # (S * len(stencil),) the cells around every source
        count = cell_count.index_select(0, wanted)
        # One block of pairs per (source, cell): the block of every pair, then its partner's slot in the table.
        block = torch.repeat_interleave(torch.arange(len(wanted), device=device), count)  # (E,)
        block_first = torch.cumsum(count, 0) - count  # the first pair of each block
        slot = (cell_start.index_select(0, wanted) - block_first).index_select(0, block)
        slot += torch.arange(len(block), device=device)
        src = sources.index_select(0, torch.div(block, len(stencil), rounding_mode="floor"))  # (E,)
        dst = partners.index_select(0, slot)  # (E,)
        # Each unordered pair once. A pair in one cell is found from both ends: keep index order. With the full
        # stencil so is a pair of two of the level's boxes in different cells, while a pair with a box of a lower
        # level is found from this one only; with the half stencil a pair of different cells is found once.
        if half:
            once = ((block % len(stencil) != 0) | (src < dst)).nonzero().squeeze(1)
        else:
            once = ((bucket.index_select(0, dst) < smallest + low_bucket) | (src < dst)).nonzero().squeeze(1)
        firsts.append(src.index_select(0, once))
        seconds.append(dst.index_select(0, once))
    return torch.cat(firsts), torch.cat(seconds)
