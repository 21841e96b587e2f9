"""Exact greedy NMS for many small boxes: a sparse overlap graph instead of torchvision's all-pairs CPU loop."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import batched_nms


def class_aware_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms``, or the same greedy NMS on a sparse overlap graph where that is faster.

    torchvision's CPU kernel compares each kept box with every later box of its group, so its time grows with the
    square of the group sizes: 40000 candidates in 4 groups (a large scene, a sliced-inference merge) take ~400 ms,
    where the sparse path takes ~40 ms (``benchmarks/nms.py``). torchvision's kernel skips boxes already suppressed,
    so with many exact duplicates it stays fast up to a few thousand boxes per group, where the sparse path's fixed
    costs are not yet repaid (measured on post-processing outputs: 2000 per group, sparse no faster). The sparse
    path is therefore used on CPU only when the groups average 4000 boxes or more; torchvision's kernel otherwise
    and always on GPU. Both give the same kept set (``tests/test_nms.py``); the order of equal scores may differ,
    as it may between torchvision's own paths.
    """
    if boxes_xyxy.device.type != "cpu" or iou_threshold < 0.05 or boxes_xyxy.shape[0] == 0:
        return batched_nms(boxes_xyxy, scores, groups, iou_threshold)
    sizes = torch.unique(groups, return_counts=True)[1].double()
    if float((sizes * sizes).sum()) < 4000.0 * boxes_xyxy.shape[0]:  # sum of n_g^2 (torchvision) vs ~N (sparse)
        return batched_nms(boxes_xyxy, scores, groups, iou_threshold)
    return sparse_batched_nms(boxes_xyxy, scores, groups, iou_threshold)


def sparse_batched_nms(boxes_xyxy: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """Class-aware greedy NMS with the result of ``torchvision.ops.batched_nms``, in time about linear in the boxes.

    Tiny boxes overlap few others, so only pairs that can overlap are scored, and greedy NMS is resolved on that
    sparse graph:

    1. Pairs. IoU > t implies the widths (and heights) are within a factor 1/t of each other, so boxes are bucketed
       by ``ceil(log2(longest side))`` and a box is paired only with boxes of buckets up to ``ceil(log2(1/t))``
       below its own, found in the 3x3 cells of a grid of its bucket's cell size around it. Each pair is scored
       once with the CPU kernel's arithmetic, ``inter / (area_i + area_j - inter)``.
    2. Greedy rounds on the graph of pairs with IoU > t, oriented from the higher-ranked box (score, then index,
       as torchvision's stable sort): a box whose higher-ranked neighbours are all decided is kept if none of them
       was kept, suppressed otherwise. Every round decides at least the best undecided box; in practice a handful
       of rounds (the longest chain of duplicates).

    Returns the kept indices in decreasing score order, like torchvision. Falls back to torchvision for
    ``iou_threshold`` below 0.05 (no useful size bound) and for fewer than 1000 boxes.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes with ``x1 <= x2``, ``y1 <= y2``.
        scores: ``(N,)``.
        groups: ``(N,)`` int64: boxes of different groups never suppress each other (image * classes + label).
        iou_threshold: a box is suppressed by a kept box with IoU strictly above it.
    """
    num = boxes_xyxy.shape[0]
    if num < 1000 or iou_threshold < 0.05:
        return batched_nms(boxes_xyxy, scores, groups, iou_threshold)
    device = boxes_xyxy.device
    order = torch.sort(scores, descending=True, stable=True).indices  # (N,) torchvision's processing order
    rank = torch.empty_like(order)
    rank[order] = torch.arange(num, device=device)
    first, second = _candidate_pairs(boxes_xyxy, groups, iou_threshold)  # (E,), (E,) each pair once
    iou = _pair_iou(boxes_xyxy, first, second)
    hit = iou.double() > iou_threshold  # the kernel compares the float IoU with a double threshold
    first, second = first[hit], second[hit]
    # Edge from the higher-ranked box (it is processed first) to the lower-ranked one.
    swap = rank[first] > rank[second]
    src, dst = torch.where(swap, second, first), torch.where(swap, first, second)  # (E',)

    undecided, kept, suppressed = 0, 1, 2
    state = torch.zeros(num, dtype=torch.uint8, device=device)
    while True:
        src_state = state[src]
        blocked = torch.zeros(num, dtype=torch.bool, device=device)  # a higher-ranked neighbour is undecided
        blocked[dst[src_state == undecided]] = True
        beaten = torch.zeros(num, dtype=torch.bool, device=device)  # a higher-ranked neighbour was kept
        beaten[dst[src_state == kept]] = True
        open_ = state == undecided
        state = torch.where(open_ & beaten, suppressed, state)
        state = torch.where(open_ & ~beaten & ~blocked, kept, state)
        if not bool((state == undecided).any()):
            break
    return order[state[order] == kept]


def _candidate_pairs(boxes_xyxy: Tensor, groups: Tensor, iou_threshold: float) -> tuple[Tensor, Tensor]:
    """Every pair of boxes of one group that may have IoU > ``iou_threshold``, once, as ``(first, second)``."""
    device = boxes_xyxy.device
    wh = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]).clamp(min=0)
    side = wh.max(dim=1).values  # (N,) longest side
    bucket = torch.ceil(torch.log2(side.clamp(min=1.0))).long()  # (N,) cells of 2^bucket >= side, at least 1 px
    bucket += (torch.pow(2.0, bucket.to(side.dtype)) < side).long()  # guard against log2 rounding down
    span = math.ceil(math.log2(1.0 / iou_threshold))  # partners lie at most `span` buckets below
    centers = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    offsets = torch.tensor([[dx, dy] for dx in (-1, 0, 1) for dy in (-1, 0, 1)], device=device)  # (9, 2)
    firsts, seconds = [], []
    for level in torch.unique(bucket).tolist():  # a handful of size buckets, not boxes
        sources = (bucket == level).nonzero().squeeze(1)  # (S,) boxes whose own bucket is this cell size
        partners = ((bucket <= level) & (bucket >= level - span)).nonzero().squeeze(1)  # (M,)
        cell = 2.0**level
        # Two boxes that overlap have centres less than (side_a + side_b) / 2 <= cell apart on each axis, so
        # the partner's cell is one of the 3x3 around the source's.
        keys, by_key = torch.sort(_cell_key(groups[partners], torch.floor(centers[partners] / cell).long()))
        partners = partners[by_key]  # grouped by cell
        cell_keys, cell_count = torch.unique_consecutive(keys, return_counts=True)  # (U,) occupied cells
        cell_start = torch.cumsum(cell_count, 0) - cell_count
        source_cells = torch.floor(centers[sources] / cell).long()  # (S, 2)
        wanted = _cell_key(
            groups[sources].repeat_interleave(9), (source_cells[:, None, :] + offsets).reshape(-1, 2)
        )  # (S * 9,) the 9 neighbour cells of every source
        at = torch.searchsorted(cell_keys, wanted).clamp(max=len(cell_keys) - 1)
        found = cell_keys[at] == wanted
        count = torch.where(found, cell_count[at], 0)  # partners in each neighbour cell
        src = torch.repeat_interleave(sources.repeat_interleave(9), count)
        start = torch.repeat_interleave(cell_start[at] - (torch.cumsum(count, 0) - count), count)  # slot - pair
        dst = partners[start + torch.arange(src.shape[0], device=device)]
        # Each unordered pair once: a pair of the same bucket is found from both ends, keep index order;
        # a pair across buckets is found only from the larger box's bucket.
        once = (bucket[dst] < level) | (src < dst)
        firsts.append(src[once])
        seconds.append(dst[once])
    return torch.cat(firsts), torch.cat(seconds)


def _cell_key(groups: Tensor, cells: Tensor) -> Tensor:
    """One int64 per (group, cell x, cell y); cells may be -1 (neighbours of the first row and column)."""
    # Cells are offset by 2 and packed in 21 bits each: up to 2 million cells per axis (e.g. 2-px cells on a
    # 4-million-px-wide mosaic), groups in the remaining 21 bits.
    return (groups << 42) | ((cells[:, 0] + 2) << 21) | (cells[:, 1] + 2)


def _pair_iou(boxes_xyxy: Tensor, first: Tensor, second: Tensor) -> Tensor:
    """IoU of box pairs with torchvision's CPU NMS arithmetic (``inter / (area_a + area_b - inter)``)."""
    a, b = boxes_xyxy[first], boxes_xyxy[second]  # (E, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = (torch.minimum(a[:, 2], b[:, 2]) - torch.maximum(a[:, 0], b[:, 0])).clamp(min=0)
    h = (torch.minimum(a[:, 3], b[:, 3]) - torch.maximum(a[:, 1], b[:, 1])).clamp(min=0)
    inter = w * h
    return inter / (area_a + area_b - inter)
