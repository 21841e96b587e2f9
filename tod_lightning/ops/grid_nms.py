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
_SAMPLE = 8  # ... measured on every 8th box of the group (any cell size gives the same result, only the speed)


@compile_kernel
def greedy_nms_on_grid(boxes_xyxy, groups, num_groups, order, iou_threshold, images, quota):
    """Class-aware greedy NMS of the boxes taken in the processing ``order``: the kept boxes, in that order.

    The result is torchvision's CPU kernel's: a box is suppressed by an earlier kept box of its group whose IoU,
    ``inter / (area_i + area_j - inter)`` in the boxes' dtype, is above ``iou_threshold`` (compared in double). A box
    with ``x2 < x1`` or ``y2 < y1`` covers no cell: it is kept and suppresses nothing, as in the kernel, where its
    intersections are empty.

    With a ``quota`` (>= 0) an image keeps only its first ``quota`` kept boxes in processing order, which is what
    truncating the full result per image gives: greedy NMS never lets a later box change an earlier decision. Once
    an image has its quota, its later boxes are skipped without a look at the grid (``benchmarks/components.py``'s
    post-processing keeps 1500 of 8000-9000 candidates per image after taking the first 1500-2500), and the kernel
    stops when every image has.

    Cells of a group are squares of ``2^L``, with ``L`` the smallest power of two at least the longest side of 90 %
    of the group's boxes (measured on every 8th; those cover at most 2x2 cells, larger ones more), doubled until the
    grid over the group's boxes has at most ``4 n + 64`` cells. Every group's grid is laid out in one array of list
    heads (no hashing), so that the boxes are taken in the global processing order, the groups interleaved.

    Args:
        boxes_xyxy: ``(N, 4)`` float32 or float64.
        groups: ``(N,)`` int64 in ``[0, num_groups)``; boxes of different groups never suppress each other.
        num_groups: number of group ids.
        order: ``(N,)`` int64, a permutation: the processing order (score descending, as torchvision's).
        iou_threshold: in [0, 1).
        images: ``(N,)`` int64 >= 0, the image of each box; a group lies in one image (ValueError otherwise).
        quota: the most boxes an image keeps, or -1 for no limit.

    Returns:
        ``(K,)`` int64 indices of the kept boxes, in processing order, and ``True``; or no indices and ``False``
        where a coordinate is NaN, infinite or at least ``2^40`` in magnitude (such a box has no cell).
    """
    num = boxes_xyxy.shape[0]
    zero = np.zeros(1, dtype=boxes_xyxy.dtype)[0]  # clamps in the boxes' dtype, not promoted to float64
    area = np.empty(num, dtype=boxes_xyxy.dtype)  # of the kept boxes: written as they are kept
    # Per group: its image, box count, histogram of size levels and extent.
    group_image = np.full(num_groups, -1, dtype=np.int64)
    count = np.zeros(num_groups, dtype=np.int64)
    histogram = np.zeros((num_groups, 42), dtype=np.int32)  # levels 0..41: sides < 2^41 (checked below)
    extent = np.empty((num_groups, 4), dtype=np.float64)  # x_min, y_min, x_max, y_max
    num_images = 0
    for i in range(num):
        for c in range(4):
            if not abs(boxes_xyxy[i, c]) < 2.0**40:  # NaN, inf or absurd: no cell (the levels below need < 2^40)
                return np.empty(0, dtype=np.int64), False
        g, image = groups[i], images[i]
        if image < 0:
            raise ValueError("image indices must be >= 0")
        if group_image[g] < 0:
            group_image[g] = image
            extent[g, 0], extent[g, 1], extent[g, 2], extent[g, 3] = np.inf, np.inf, -np.inf, -np.inf
        elif group_image[g] != image:
            raise ValueError("a group (image * classes + label) spans two images")
        num_images = max(num_images, image + 1)
        x1, y1, x2, y2 = boxes_xyxy[i, 0], boxes_xyxy[i, 1], boxes_xyxy[i, 2], boxes_xyxy[i, 3]
        if count[g] % _SAMPLE == 0:  # the cell size only needs the sides of a sample: frexp is a libm call
            mantissa, exponent = math.frexp(max(max(x2 - x1, y2 - y1), 1.0))  # side = mantissa * 2^exponent: exact
            histogram[g, exponent - 1 if mantissa == 0.5 else exponent] += 1  # ceil(log2(side))
        count[g] += 1
        extent[g, 0], extent[g, 1] = min(extent[g, 0], x1), min(extent[g, 1], y1)
        extent[g, 2], extent[g, 3] = max(extent[g, 2], x2), max(extent[g, 3], y2)

    # Each group's grid: cell size (as a power-of-two inverse) and, in one row (one cache line for the box loop
    # below, which takes the groups interleaved), origin x and y, rows and where its heads start.
    inverse = np.empty(num_groups, dtype=np.float64)
    grid = np.zeros((num_groups, 4), dtype=np.int64)
    cells = 0
    for g in range(num_groups):
        n = count[g]
        if n == 0:
            continue
        cell_level, covered = 0, histogram[g, 0]
        while covered < _PERCENTILE * ((n + _SAMPLE - 1) // _SAMPLE):  # of the sampled boxes
            cell_level += 1
            covered += histogram[g, cell_level]
        scale = 0.5**cell_level  # 1 / cell, a power of two: x * scale is exactly x / cell
        while True:  # a sparse group gets coarser cells, so that its grid stays about as small as its boxes
            x0, y0 = math.floor(extent[g, 0] * scale), math.floor(extent[g, 1] * scale)
            nx, ny = math.floor(extent[g, 2] * scale) - x0 + 1, math.floor(extent[g, 3] * scale) - y0 + 1
            if float(nx) * float(ny) <= 4 * n + 64:  # in float: spans of up to 2^41 cells would overflow int64
                break
            scale *= 0.5
        inverse[g], grid[g, 0], grid[g, 1], grid[g, 2], grid[g, 3] = scale, x0, y0, ny, cells
        cells += nx * ny
    image_present = np.zeros(num_images, dtype=np.bool_)
    for g in range(num_groups):
        if count[g] > 0:
            image_present[group_image[g]] = True
    images_with_boxes = image_present.sum()
    head = np.full(cells, -1, dtype=np.int64)  # per cell: the last entry written there, -1 for none
    entry_box = np.empty(max(4 * num, 16), dtype=np.int64)  # per entry: the kept box
    entry_next = np.empty(max(4 * num, 16), dtype=np.int64)  # per entry: the cell's previous entry
    entries = 0

    kept = np.empty(num, dtype=np.int64)
    kept_of_image = np.zeros(num_images, dtype=np.int64)
    num_kept, images_full = 0, 0
    for r in range(num):
        if quota >= 0 and images_full == images_with_boxes:  # every image has its quota
            break
        j = order[r]
        g = groups[j]
        image = group_image[g]
        if quota >= 0 and kept_of_image[image] >= quota:
            continue
        x1, y1, x2, y2 = boxes_xyxy[j, 0], boxes_xyxy[j, 1], boxes_xyxy[j, 2], boxes_xyxy[j, 3]
        area_j = (x2 - x1) * (y2 - y1)  # as the kernel
        # The cells the extent covers (none when x2 < x1 or y2 < y1).
        scale, x0, y0, ny, base = inverse[g], grid[g, 0], grid[g, 1], grid[g, 2], grid[g, 3]
        cx1, cx2 = math.floor(x1 * scale) - x0, math.floor(x2 * scale) - x0
        cy1, cy2 = math.floor(y1 * scale) - y0, math.floor(y2 * scale) - y0
        suppressed = False
        for cx in range(cx1, cx2 + 1):
            for cy in range(cy1, cy2 + 1):
                e = head[base + cx * ny + cy]
                while e >= 0:
                    i = entry_box[e]  # kept, processed before j, of group g
                    w = max(min(x2, boxes_xyxy[i, 2]) - max(x1, boxes_xyxy[i, 0]), zero)
                    h = max(min(y2, boxes_xyxy[i, 3]) - max(y1, boxes_xyxy[i, 1]), zero)
                    inter = w * h
                    if inter / (area[i] + area_j - inter) > iou_threshold:
                        suppressed = True
                        break
                    e = entry_next[e]
                if suppressed:
                    break
            if suppressed:
                break
        if suppressed:
            continue
        kept[num_kept] = j
        area[j] = area_j  # read by the later boxes that meet j in a cell
        num_kept += 1
        kept_of_image[image] += 1
        if kept_of_image[image] == quota:
            images_full += 1
        cover = max(cx2 - cx1 + 1, 0) * max(cy2 - cy1 + 1, 0)
        if entries + cover > entry_box.shape[0]:  # boxes larger than the cells: grow the entry lists
            grown = 2 * (entries + cover)
            entry_box = np.concatenate((entry_box[:entries], np.empty(grown - entries, dtype=np.int64)))
            entry_next = np.concatenate((entry_next[:entries], np.empty(grown - entries, dtype=np.int64)))
        for cx in range(cx1, cx2 + 1):
            for cy in range(cy1, cy2 + 1):
                entry_box[entries] = j
                entry_next[entries] = head[base + cx * ny + cy]
                head[base + cx * ny + cy] = entries
                entries += 1
    return kept[:num_kept], True
