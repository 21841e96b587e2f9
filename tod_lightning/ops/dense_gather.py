"""Gather the selected entries of a dense head's maps: image, class, point and the logits and deltas at that point.

Post-processing first selects the (image, class, row, column) entries of each level's class map that can pass the
score threshold, then needs, per entry, its image, class, point index, class logit, quality logit and 4 box deltas.
On CPU a compiled (numba) kernel does that in one pass: torch would spend about 20 operators, each a pass over
the entries with a fresh temporary, per level. The kernel only computes indices and copies values, no float
arithmetic, so its results are bit for bit those of the torch path, which runs on other devices and dtypes.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from tod_lightning.ops.compiled import compile_kernel


def gather_dense_entries(
    entries: list[Tensor], cls_maps: list[Tensor], quality_maps: list[Tensor], box_maps: list[Tensor]
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Per selected entry, level after level in the order of ``entries``: ``(N,)`` image, ``(N,)`` class,
    ``(N,)`` point index (``level_points``' order: level by level, row-major), ``(N,)`` class logit, ``(N,)``
    quality logit and ``(N, 4)`` box deltas, the last three in the maps' dtype.

    Args:
        entries: per level, ``(N_l,)`` int64 positions in the flattened ``(B, C, H, W)`` class map.
        cls_maps: per level ``(B, C, H, W)``; ``quality_maps`` ``(B, 1, H, W)``; ``box_maps`` ``(B, 4, H, W)``.
    """
    maps = [*cls_maps, *quality_maps, *box_maps]
    if all(m.device.type == "cpu" and m.dtype == torch.float32 for m in maps):
        return _gather_compiled(entries, cls_maps, quality_maps, box_maps)
    return _gather_torch(entries, cls_maps, quality_maps, box_maps)


def _gather_compiled(entries, cls_maps, quality_maps, box_maps):
    # numpy allocations and views: a few torch operators per level would cost more than the kernel at 10^3 entries.
    total = sum(len(e) for e in entries)
    image, label, point = (np.empty(total, dtype=np.int64) for _ in range(3))
    cls_logit, quality_logit = (np.empty(total, dtype=np.float32) for _ in range(2))
    deltas = np.empty((total, 4), dtype=np.float32)
    at, point_start = 0, 0
    for entry, cls_map, quality_map, box_map in zip(entries, cls_maps, quality_maps, box_maps):
        num_classes, h, w = cls_map.shape[1:]
        flat = [m.detach().numpy().reshape(-1) for m in (cls_map, quality_map, box_map)]  # views unless strided
        _gather_level(entry.numpy(), num_classes, h * w, point_start, *flat, at, image, label, point, cls_logit,
                      quality_logit, deltas)  # fmt: skip
        at, point_start = at + len(entry), point_start + h * w
    return tuple(torch.from_numpy(a) for a in (image, label, point, cls_logit, quality_logit, deltas))


@compile_kernel
def _gather_level(
    entry, num_classes, pixels, point_start, cls_flat, quality_flat, box_flat, at,
    image, label, point, cls_logit, quality_logit, deltas,
):  # fmt: skip
    """Rows ``at .. at + len(entry)`` of the outputs ``image`` .. ``deltas`` for the entries (in any order) of one
    level with ``pixels = H * W`` points."""
    lo, hi = 0, -1  # the flat range [lo, hi) of the current (image, class) plane; none yet
    b, c = 0, 0
    for k in range(entry.shape[0]):
        e = entry[k]  # flat (image, class, row, column)
        if e >= hi or e < lo:  # another plane: two integer divisions, once per plane for ascending entries
            image_class = e // pixels
            b = image_class // num_classes
            c = image_class - b * num_classes
            lo = image_class * pixels
            hi = lo + pixels
        pixel = e - lo
        row = at + k
        image[row], label[row], point[row] = b, c, point_start + pixel
        cls_logit[row] = cls_flat[e]
        quality_logit[row] = quality_flat[b * pixels + pixel]
        for j in range(4):  # (B, 4, H, W): the deltas of a point lie H * W apart
            deltas[row, j] = box_flat[(b * 4 + j) * pixels + pixel]


def _gather_torch(entries, cls_maps, quality_maps, box_maps):
    image_idx, point_idx, labels, cls_logit, quality_logit, deltas = [], [], [], [], [], []
    start = 0
    for entry, cls_map, quality_map, box_map in zip(entries, cls_maps, quality_maps, box_maps):
        num_classes, h, w = cls_map.shape[1:]
        pixel, image_class = entry % (h * w), torch.div(entry, h * w, rounding_mode="floor")
        image = torch.div(image_class, num_classes, rounding_mode="floor")
        image_idx.append(image)
        labels.append(image_class % num_classes)
        point_idx.append(start + pixel)
        # index_select on flat views: several times faster on CPU than advanced indexing.
        cls_logit.append(cls_map.flatten().index_select(0, entry))
        quality_logit.append(quality_map.flatten().index_select(0, image * (h * w) + pixel))
        box_entry = (image * 4 * (h * w) + pixel)[:, None] + torch.arange(4, device=entry.device) * (h * w)
        deltas.append(box_map.flatten().index_select(0, box_entry.reshape(-1)).view(-1, 4))  # (N_l, 4)
        start += h * w
    return tuple(torch.cat(t) for t in (image_idx, labels, point_idx, cls_logit, quality_logit, deltas))
