"""Compiled (numba) greedy NMS on a grid of cells per group: the CPU kernel of
:func:`~tod_lightning.ops.nms.grid_batched_nms`.

Greedy NMS keeps a box unless a kept box processed before it overlaps it with IoU above the threshold. Here each
kept box is written into the cells of a uniform grid that its extent covers, and a later box reads only the cells
its own extent covers: two boxes with IoU > 0 share an interior point, whose cell both cover. Tiny boxes cover one
to four cells, so the work is about linear in the boxes, and no candidate pair is ever materialised.
"""

from __future__ import annotations

import math

import numpy as np

from tod_lightning.ops.compiled import compile_kernel

_PERCENTILE = 0.9  # cells of a group are sized for this fraction of its boxes (longest side at most the cell)


@compile_kernel
def greedy_nms_on_grid(boxes_xyxy, groups, num_groups, order, iou_threshold):
    """Class-aware greedy NMS of the boxes taken in the processing ``order``: the kept boxes, in that order.

    The result is torchvision's CPU kernel's: a box is suppressed by an earlier kept box of its group whose IoU,
    ``inter / (area_i + area_j - inter)`` in the boxes' dtype, is above ``iou_threshold`` (compared in double). A box
    with ``x2 < x1`` or ``y2 < y1`` covers no cell: it is kept and suppresses nothing, as in the kernel, where its
    intersections are empty.

    Cells of a group are squares of ``2^L``, with ``L`` the smallest power of two at least the longest side of 90 %
    of the group's boxes (so those cover at most 2x2 cells; larger ones cover more), doubled until the grid over
    the group's boxes has at most ``4 n + 64`` cells (one array of list heads per group, no hashing).

    Args:
        boxes_xyxy: ``(N, 4)`` float32 or float64.
        groups: ``(N,)`` int64 in ``[0, num_groups)``; boxes of different groups never suppress each other.
        num_groups: number of group ids.
        order: ``(N,)`` int64, a permutation: the processing order (score descending, as torchvision's).
        iou_threshold: in [0, 1).

    Returns:
        ``(K,)`` int64 indices of the kept boxes, in processing order, and ``True``; or no indices and ``False``
        where a coordinate is NaN, infinite or at least ``2^40`` in magnitude (such a box has no cell).
    """
    num = boxes_xyxy.shape[0]
    keep = np.zeros(num, dtype=np.bool_)
    zero = np.zeros(1, dtype=boxes_xyxy.dtype)[0]  # clamps in the boxes' dtype, not promoted to float64
    area = np.empty(num, dtype=boxes_xyxy.dtype)
    level = np.empty(num, dtype=np.int64)
    for i in range(num):
        for c in range(4):
            if not abs(boxes_xyxy[i, c]) < 2.0**40:  # NaN, inf or absurd: no cell (the levels below need < 2^40)
                return np.empty(0, dtype=np.int64), False
        area[i] = (boxes_xyxy[i, 2] - boxes_xyxy[i, 0]) * (boxes_xyxy[i, 3] - boxes_xyxy[i, 1])  # as the kernel
        side = max(max(boxes_xyxy[i, 2] - boxes_xyxy[i, 0], boxes_xyxy[i, 3] - boxes_xyxy[i, 1]), 1.0)
        mantissa, exponent = math.frexp(side)  # side = mantissa * 2^exponent, mantissa in [0.5, 1): exact
        level[i] = exponent - 1 if mantissa == 0.5 else exponent  # ceil(log2(side))
    # Stable counting sort by group: each group's boxes in processing order.
    group_end = np.zeros(num_groups + 1, dtype=np.int64)
    for i in range(num):
        group_end[groups[i] + 1] += 1
    for g in range(num_groups):
        group_end[g + 1] += group_end[g]
    members = np.empty(num, dtype=np.int64)
    fill = group_end[:-1].copy()
    for r in range(num):
        i = order[r]
        members[fill[groups[i]]] = i
        fill[groups[i]] += 1

    head = np.empty(64, dtype=np.int64)  # per cell: the last entry written there, -1 for none
    entry_box = np.empty(max(4 * num, 16), dtype=np.int64)  # per entry: the kept box
    entry_next = np.empty(max(4 * num, 16), dtype=np.int64)  # per entry: the cell's previous entry
    histogram = np.empty(64, dtype=np.int64)  # levels: sides < 2^41 (checked above)
    for g in range(num_groups):
        start, end = group_end[g], group_end[g + 1]
        n = end - start
        if n == 0:
            continue
        histogram[:] = 0
        x_min, y_min, x_max, y_max = np.inf, np.inf, -np.inf, -np.inf
        for m in range(start, end):
            i = members[m]
            histogram[level[i]] += 1
            x_min, y_min = min(x_min, boxes_xyxy[i, 0]), min(y_min, boxes_xyxy[i, 1])
            x_max, y_max = max(x_max, boxes_xyxy[i, 2]), max(y_max, boxes_xyxy[i, 3])
        cell_level, covered = 0, histogram[0]
        while covered < _PERCENTILE * n:
            cell_level += 1
            covered += histogram[cell_level]
        inverse = 0.5**cell_level  # 1 / cell, a power of two: x * inverse is exactly x / cell
        while True:  # a sparse group gets coarser cells, so that its grid stays about as small as its boxes
            x0, y0 = math.floor(x_min * inverse), math.floor(y_min * inverse)
            nx, ny = math.floor(x_max * inverse) - x0 + 1, math.floor(y_max * inverse) - y0 + 1
            if float(nx) * float(ny) <= 4 * n + 64:  # in float: spans of up to 2^41 cells would overflow int64
                break
            inverse *= 0.5
        if nx * ny > head.shape[0]:
            head = np.empty(2 * nx * ny, dtype=np.int64)
        head[: nx * ny] = -1
        entries = 0
        for m in range(start, end):
            j = members[m]
            x1, y1, x2, y2 = boxes_xyxy[j, 0], boxes_xyxy[j, 1], boxes_xyxy[j, 2], boxes_xyxy[j, 3]
            # The cells the extent covers (none when x2 < x1 or y2 < y1).
            cx1, cx2 = math.floor(x1 * inverse) - x0, math.floor(x2 * inverse) - x0
            cy1, cy2 = math.floor(y1 * inverse) - y0, math.floor(y2 * inverse) - y0
            suppressed = False
            for cx in range(cx1, cx2 + 1):
                for cy in range(cy1, cy2 + 1):
                    e = head[cx * ny + cy]
                    while e >= 0:
                        i = entry_box[e]  # kept, processed before j
                        w = max(min(x2, boxes_xyxy[i, 2]) - max(x1, boxes_xyxy[i, 0]), zero)
                        h = max(min(y2, boxes_xyxy[i, 3]) - max(y1, boxes_xyxy[i, 1]), zero)
                        inter = w * h
                        if inter / (area[i] + area[j] - inter) > iou_threshold:
                            suppressed = True
                            break
                        e = entry_next[e]
                    if suppressed:
                        break
                if suppressed:
                    break
            if suppressed:
                continue
            keep[j] = True
            cover = max(cx2 - cx1 + 1, 0) * max(cy2 - cy1 + 1, 0)
            if entries + cover > entry_box.shape[0]:  # boxes larger than the cells: grow the entry lists
                grown = 2 * (entries + cover)
                entry_box = np.concatenate((entry_box[:entries], np.empty(grown - entries, dtype=np.int64)))
                entry_next = np.concatenate((entry_next[:entries], np.empty(grown - entries, dtype=np.int64)))
            for cx in range(cx1, cx2 + 1):
                for cy in range(cy1, cy2 + 1):
                    entry_box[entries] = j
                    entry_next[entries] = head[cx * ny + cy]
                    head[cx * ny + cy] = entries
                    entries += 1
    kept = np.empty(num, dtype=np.int64)
    count = 0
    for r in range(num):
        if keep[order[r]]:
            kept[count] = order[r]
            count += 1
    return kept[:count], True
