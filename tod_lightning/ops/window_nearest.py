"""The ``k`` grid points nearest each box centre, searched in a square window of cells around it: the candidate
search of ATSS assignment (:class:`~tod_lightning.assigners.atss.ATSSAssigner`).

Per (level, box) it scores the ``(2 half + 1)^2`` window points and keeps the ``k`` first in (squared distance,
point index) order. torch does that as whole-tensor work: the distances of every window, then a ``topk`` over
unique int64 keys (:func:`~tod_lightning.ops.ordering.first_in_order`), with five temporaries of 25 entries per
(level, box). On CPU a compiled (numba) kernel walks each window once and keeps its ``k`` best by insertion. Its
arithmetic is the torch path's, operation for operation in float32, so both return the same indices
(``tests/test_window_nearest.py``); the torch path runs on other devices and dtypes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tod_lightning.ops.compiled import compile_kernel
from tod_lightning.ops.ordering import first_in_order


def window_nearest_points(
    centers_xy: Tensor, strides: Tensor, shapes: list[tuple[int, int]], starts: list[int], half: int, k: int
) -> Tensor:
    """``(L, G, k)`` indices of the ``k`` points of each of ``L`` levels nearest each of ``G`` centres, nearest first
    (ties: the lower point index), searched in the ``(2 half + 1)^2`` window around each centre's nearest cell.

    The window is shifted inwards at the border; the caller picks ``half`` so that it holds the ``k`` nearest
    points and every point tied with them (``ATSSAssigner._candidates``). A level's points are those of
    :func:`~tod_lightning.ops.points.level_points`: row-major, point ``(row, col)`` at ``((col, row) + 0.5) *
    stride``, numbered from ``starts[l]``.

    Args:
        centers_xy: ``(G, 2)`` box centres.
        strides: ``(L,)`` the stride of each level (px), as ``level_points`` gives them.
        shapes, starts: per level ``(H, W)`` (both at least ``2 half + 1``) and its first point index.
        half: the window reaches ``half`` cells either side of the nearest cell.
        k: points per level and box, at most ``(2 half + 1)^2``.
    """
    if (
        centers_xy.device.type == "cpu"
        and centers_xy.dtype == strides.dtype == torch.float32
        # NaN, inf or absurd centres (a host sync, free on CPU) have no nearest cell the kernel's int could hold.
        and bool((centers_xy.abs() < 2.0**24).all())
    ):
        found = np.empty((len(shapes), len(centers_xy), k), dtype=np.int64)
        _nearest_in_windows(
            centers_xy.detach().contiguous().numpy(),
            strides.detach().contiguous().numpy(),
            np.asarray([s[0] for s in shapes], dtype=np.int64),
            np.asarray([s[1] for s in shapes], dtype=np.int64),
            np.asarray(starts, dtype=np.int64),
            half,
            found,
        )
        return torch.from_numpy(found)
    return _nearest_torch(centers_xy, strides, shapes, starts, half, k)


@compile_kernel
def _nearest_in_windows(centers_xy, strides, heights, widths, starts, half, found):
    """Fills ``found`` ``(L, G, k)``: per level and centre the ``k`` window points first in (distance, index)."""
    side = 2 * half + 1
    k = found.shape[2]
    one, point_five = np.float32(1.0), np.float32(0.5)
    dx2 = np.empty(side, dtype=np.float32)
    dy2 = np.empty(side, dtype=np.float32)
    best_d = np.empty(k, dtype=np.float32)  # the k best so far, ascending (distance, window position)
    best_p = np.empty(k, dtype=np.int64)
    for level in range(found.shape[0]):
        stride, h, w = strides[level], heights[level], widths[level]
        for g in range(found.shape[1]):
            cx, cy = centers_xy[g, 0], centers_xy[g, 1]
            # The torch path's arithmetic in float32: the nearest cell (a centre half-way between two cells goes to
            # the lower one), the window corner shifted inside the grid, offsets squared (x ** 2 is x * x there).
            col0 = min(max(int(np.ceil(cx / stride - one)) - half, 0), w - side)
            row0 = min(max(int(np.ceil(cy / stride - one)) - half, 0), h - side)
            for o in range(side):
                dx = (np.float32(col0 + o) + point_five) * stride - cx
                dy = (np.float32(row0 + o) + point_five) * stride - cy
                dx2[o], dy2[o] = dx * dx, dy * dy
            count = 0
            for r in range(side):  # row-major: window positions in point index order
                for c in range(side):
                    d = dy2[r] + dx2[c]
                    if count == k and not d < best_d[k - 1]:  # an equal distance ranks after: a later position
                        continue
                    slot = count if count < k else k - 1
                    while slot > 0 and best_d[slot - 1] > d:  # shift the farther ones up (the last falls off)
                        best_d[slot], best_p[slot] = best_d[slot - 1], best_p[slot - 1]
                        slot -= 1
                    best_d[slot], best_p[slot] = d, r * w + c  # offset from the window's first point
                    if count < k:
                        count += 1
            corner = starts[level] + row0 * w + col0
            for j in range(k):
                found[level, g, j] = corner + best_p[j]


def _nearest_torch(
    centers_xy: Tensor, strides: Tensor, shapes: list[tuple[int, int]], starts: list[int], half: int, k: int
) -> Tensor:
    """:func:`window_nearest_points` as whole-tensor work: every window of every level at once, one top-k."""
    device, side = centers_xy.device, 2 * half + 1
    stride = strides.to(device)[:, None, None]  # (L, 1, 1)
    h = torch.tensor([s[0] for s in shapes], device=device)[:, None]  # (L, 1)
    w = torch.tensor([s[1] for s in shapes], device=device)[:, None]
    offs = torch.arange(side, device=device)
    # Nearest cell, a centre half-way between two cells going to the lower one: with every point of the window
    # tied, the lower indices the dense order prefers must be inside it.
    lo = torch.ceil(centers_xy[None] / stride - 1.0).long() - half  # (L, G, 2) first window cell (x, y)
    col0 = torch.minimum(lo[..., 0].clamp(min=0), w - side)  # (L, G) window corner, shifted inside the grid
    row0 = torch.minimum(lo[..., 1].clamp(min=0), h - side)
    # Window point coordinates with level_points' arithmetic, so distances are bit-identical to gathering the
    # points; the squared distance is separable: dy^2 (rows) + dx^2 (columns).
    dx2 = ((((col0[..., None] + offs).float() + 0.5) * stride) - centers_xy[None, :, 0:1]) ** 2  # (L, G, side)
    dy2 = ((((row0[..., None] + offs).float() + 0.5) * stride) - centers_xy[None, :, 1:2]) ** 2
    num_levels, num_gt = col0.shape
    dist2 = (dx2[..., None, :] + dy2[..., :, None]).reshape(num_levels * num_gt, side * side)  # (L * G, n)
    # Window entries are row-major (y outer, x inner), so their order is the point index order.
    nearest = first_in_order(dist2, k, nonnegative=True).view(num_levels, num_gt, -1)  # (L, G, k)
    # Window entry -> point index offset from the window's first point (row * w + column), per level.
    entry_offset = (offs[:, None] * w[:, None] + offs).reshape(num_levels, 1, side * side)  # (L, 1, n)
    offset = entry_offset.expand(-1, num_gt, -1).gather(2, nearest)  # (L, G, k)
    corner = row0 * w + col0 + torch.tensor(starts, device=device)[:, None]  # (L, G) the window's first point
    return offset + corner[..., None]  # (L, G, k) point indices
