"""Exact greedy NMS for many small boxes: a compiled grid kernel instead of torchvision's all-pairs CPU loop."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torchvision.ops import batched_nms

from tod_lightning.ops.grid_nms import greedy_nms_on_grid
from tod_lightning.ops.ordering import stable_descending_order


def class_aware_nms(
    boxes_xyxy: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    images: Tensor | None = None,
    max_per_image: int | None = None,
) -> Tensor:
    """``torchvision.ops.batched_nms``, or the same greedy NMS on a grid (:func:`grid_batched_nms`) on CPU.

    On CPU torchvision's ``batched_nms`` compares each kept box with every later box of its group (from 1000 boxes
    group by group, ~35 us per group), so it grows with the square of the boxes per group. The compiled grid kernel
    grows about linearly and is as fast from 10 boxes on (``benchmarks/nms.py``), so it runs on CPU wherever it
    applies (:func:`uses_grid`); torchvision's kernel on GPU, where it is fast. Both give the same kept set
    (``tests/test_nms.py``); the order of equal scores may differ, as it may between torchvision's own paths.

    With ``images`` and ``max_per_image`` each image keeps only its first ``max_per_image`` kept boxes (by score),
    the detections a per-image cap leaves; the grid kernel then stops looking at an image once it has them.
    """
    if uses_grid(boxes_xyxy, iou_threshold):
        return grid_batched_nms(boxes_xyxy, scores, groups, iou_threshold, images, max_per_image)  # checks the cap
    _check_cap(images, max_per_image)
    return _first_per_image(batched_nms(boxes_xyxy, scores, groups, iou_threshold), images, max_per_image)


def uses_grid(boxes_xyxy: Tensor, iou_threshold: float) -> bool:
    """The dispatch of :func:`class_aware_nms`: the grid kernel for float32/float64 boxes on CPU and
    ``iou_threshold >= 0``, torchvision's kernel otherwise."""
    return (
        boxes_xyxy.device.type == "cpu" and boxes_xyxy.dtype in (torch.float32, torch.float64) and iou_threshold >= 0.0
    )


def grid_batched_nms(
    boxes_xyxy: Tensor,
    scores: Tensor,
    groups: Tensor,
    iou_threshold: float,
    images: Tensor | None = None,
    max_per_image: int | None = None,
) -> Tensor:
    """Class-aware greedy NMS with the result of ``torchvision.ops.batched_nms``, in time about linear in the boxes.

    The boxes are put in torchvision's processing order (score, ties by index: its CPU kernel's stable sort) and
    handed to the compiled kernel :func:`~tod_lightning.ops.grid_nms.greedy_nms_on_grid`: each kept box is written
    into the grid cells its extent covers, and a later box of the same group is compared (with the CPU kernel's
    arithmetic) only with the kept boxes in the cells its own extent covers. Tiny boxes cover 1-4 cells.

    Returns the kept indices in decreasing score order, like torchvision. Runs on CPU (inputs on another device are
    copied there and the result copied back). Falls back to torchvision for a negative ``iou_threshold`` (boxes
    without overlap would suppress each other), for dtypes other than float32/float64 (or scores of another dtype
    than the boxes, which torchvision refuses), and for boxes with non-finite or absurd (>= 2^40) coordinates,
    which have no cell.

    Args:
        boxes_xyxy: ``(N, 4)`` boxes with ``x1 <= x2``, ``y1 <= y2`` (others are kept and suppress nothing, as in
            torchvision's kernel).
        scores: ``(N,)``.
        groups: ``(N,)`` int64: boxes of different groups never suppress each other (image * classes + label).
        iou_threshold: a box is suppressed by a kept box with IoU strictly above it.
        images: ``(N,)`` int64 >= 0, the image of each box (each group lies in one image); with ``max_per_image``.
        max_per_image: keep only the first ``max_per_image`` kept boxes of each image (in the returned order), as
            truncating torchvision's result per image would; the kernel skips an image's boxes once it has them.
    """
    _check_cap(images, max_per_image)
    if (
        iou_threshold < 0.0
        or boxes_xyxy.dtype not in (torch.float32, torch.float64)
        or scores.dtype != boxes_xyxy.dtype  # torchvision raises: so does this path, through it
    ):
        return _first_per_image(batched_nms(boxes_xyxy, scores, groups, iou_threshold), images, max_per_image)
    device = boxes_xyxy.device
    if len(groups) == 0:
        return torch.zeros(0, dtype=torch.long, device=device)
    boxes_xyxy, scores, groups = boxes_xyxy.cpu(), scores.cpu(), groups.cpu()
    order = stable_descending_order(scores)  # (N,) torchvision's processing order: by score, ties by index
    groups = groups - groups.min()  # ids are image * classes + label: already compact
    num_groups = int(groups.max()) + 1
    if num_groups > len(groups):  # sparse ids: renumber, so that the kernel's per-group table stays small
        groups = torch.unique(groups, return_inverse=True)[1]
        num_groups = int(groups.max()) + 1
    boxes_np, groups_np = boxes_xyxy.detach().contiguous().numpy(), groups.contiguous().numpy()
    # Without a cap every box counts as image 0 with no quota (-1).
    images_np = np.zeros(len(groups), dtype=np.int64) if images is None else images.cpu().long().contiguous().numpy()
    quota = -1 if max_per_image is None else int(max_per_image)
    kept, gridded = greedy_nms_on_grid(
        boxes_np, groups_np, num_groups, order.numpy(), float(iou_threshold), images_np, quota
    )
    if not gridded:  # NaN, inf or absurd coordinates (the kernel checks them as it reads the boxes)
        kept = batched_nms(boxes_xyxy, scores, groups, iou_threshold)
        return _first_per_image(kept, images, max_per_image).to(device)
    return torch.from_numpy(kept).to(device)  # (K,) in processing order


def _first_per_image(kept: Tensor, images: Tensor | None, max_per_image: int | None) -> Tensor:
    """The entries of ``kept`` (indices in score order) that are among the first ``max_per_image`` of their image."""
    if max_per_image is None:
        return kept
    kept_image = images.to(kept.device).index_select(0, kept)  # (K,)
    by_image = torch.sort(kept_image, stable=True).indices  # image, then the kept order
    counts = torch.bincount(kept_image)
    first_of_image = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(by_image)
    rank[by_image] = torch.arange(len(kept), device=kept.device) - first_of_image[kept_image[by_image]]
    return kept[rank < max_per_image]


def _check_cap(images: Tensor | None, max_per_image: int | None) -> None:
    if (max_per_image is None) != (images is None):
        raise ValueError("images and max_per_image go together: give both or neither")
    if max_per_image is not None and max_per_image < 0:
        raise ValueError(f"max_per_image must be >= 0, got {max_per_image}")
