"""Sliced inference: detect on overlapping tiles of a large image, then merge the tiles' detections.

Torch only (no Lightning): usable with a bare :class:`~tod_lightning.models.detector.Detector` for inference and
benchmarks, and injected into :class:`~tod_lightning.task.DetectionTask` (``model.inference``) so that
validation, test and predict score whole images.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_area

from tod_lightning.ops.nms import class_aware_nms
from tod_lightning.ops.tiles import tile_windows
from tod_lightning.structures import Detections, DetectorOutput

# postprocess(output, image_sizes (n, 2)) -> one Detections per image, e.g. a PostProcessor (which also has
# the ``max_per_image`` attribute this module reads).
PostProcess = Callable[[DetectorOutput, Tensor], list[Detections]]


class SlicedInference:
    """Whole-image detections from overlapping tiles (SAHI-style slicing, batched, merged on the device).

    Each image's valid area (``image_sizes``, padding excluded) is cut into the windows of
    :func:`tod_lightning.ops.tiles.tile_windows` (an image smaller than a tile is one tile, as is an axis
    shorter than a tile). Tiles are zero-padded bottom/right to a multiple of the detector's largest stride
    (exactly as the collate function pads whole images), run through the detector ``tile_batch_size`` at a
    time (tiles of all images of the batch together), decoded by the post-processor with the tile's own
    size as its clipping limit, and shifted to image pixels.

    Merge rule, per image, on the union of all its tiles' detections (class-aware; an image with one tile
    keeps the post-processor's output unchanged):

    1. Truncation rule. A detection is *cut* when one of its sides lies within ``edge_margin`` px of an
       *inner* edge of its own tile (a tile edge that is not on the image border):
       ``x1 <= tile_x1 + edge_margin`` with ``tile_x1 > 0``, ``x2 >= tile_x2 - edge_margin`` with
       ``tile_x2 < W``, and likewise for y. A cut detection ``j`` is removed when a detection ``i`` of the
       same image and class, from ANOTHER tile, strictly larger (``area(i) > area(j)``), covers most of it:
       ``area(i ∩ j) / area(j) >= min_containment`` (intersection over the smaller area). This removes the
       truncated partial boxes an inner tile edge produces: with ``overlap`` >= the object's sides another
       tile sees the object whole, and that full box contains the partial one. The test runs on the
       unmerged set; as the covering box must be strictly larger, the relation has no cycles and the
       largest box of a chain always survives. It does not look at the scores (a confident partial box
       never beats the full one).
    2. Duplicate rule. Greedy class-aware NMS (``torchvision.ops.batched_nms`` semantics, highest score first) at
       ``merge_iou`` over the surviving detections that reach into another tile (that intersect, with
       positive area, a second tile of the image): the near-identical full boxes of an object inside the
       overlap of two (or four) tiles collapse to the highest-scoring one. Only such detections can have a
       duplicate from another tile; the others are kept as they are. With ``merge_iou`` = the
       post-processor's ``nms_iou`` (the default; do not go below it) this is the NMS that whole-image
       inference runs, and it leaves pairs from one tile alone (the post-processor already separated them
       at that threshold).
    3. Cap. The ``max_per_image`` (the post-processor's) highest-scoring survivors, by descending score.

    The truncation test compares a cut box only with the boxes of the tiles that contain its centre. This
    is exact, not a heuristic: ``min_containment >= 0.5`` means the cover overlaps at least half of each
    side of ``j``, so it contains ``j``'s centre, and a box never leaves its own tile. Its cost is a few
    small pairwise matrices per pair of neighbouring tiles, not one over the whole image.

    Limitation: an object larger than ``overlap`` along an axis may be seen whole by no tile; its two
    partial boxes then both survive. Choose ``overlap`` >= the largest object side.

    Cost: about ``T`` tile forwards per image with ``T = ceil((H - o) / (s - o)) * ceil((W - o) / (s - o))``
    (``s`` tile size, ``o`` overlap), i.e. up to ``(s / (s - o))²`` times the pixels of one whole-image
    pass (1.8x for 256/64), plus the merge. Peak activation memory is that of ``tile_batch_size`` tiles,
    not of the whole image. Host syncs: the image sizes (the tile grid is cut with Python slices) and a
    handful per batch and per pair of neighbouring tiles (the sizes of boolean selections), as the
    post-processor's own.

    Args:
        tile_size: tile side in network-input pixels; a multiple of the detector's largest stride avoids
            padding.
        overlap: minimum overlap of adjacent tiles, px (``0 <= overlap < tile_size``); set it >= the largest
            object side so that every object lies whole in some tile.
        tile_batch_size: tiles per detector forward (bounds peak memory).
        merge_iou: IoU threshold of the duplicate rule; ``None``: the post-processor's ``nms_iou``.
        min_containment: intersection over the cut box's own area above which it is covered (truncation
            rule), in [0.5, 1].
        edge_margin: px; how close to an inner tile edge a box side must be to count as cut.
        size_divisor: tiles are padded to a multiple of this; ``None``: the detector's ``size_divisor``
            (1 if it has none).
    """

    def __init__(
        self,
        tile_size: int = 512,
        overlap: int = 64,
        tile_batch_size: int = 8,
        merge_iou: float | None = None,
        min_containment: float = 0.6,
        edge_margin: float = 2.0,
        size_divisor: int | None = None,
    ):
        if tile_size <= 0 or not 0 <= overlap < tile_size:
            raise ValueError(f"need tile_size > 0 and 0 <= overlap < tile_size, got {tile_size}, {overlap}")
        if tile_batch_size < 1:
            raise ValueError(f"need tile_batch_size >= 1, got {tile_batch_size}")
        if not 0.5 <= min_containment <= 1.0:  # >= 0.5: the cover contains the cut box's centre (see above)
            raise ValueError(f"min_containment must be in [0.5, 1], got {min_containment}")
        self.tile_size, self.overlap, self.tile_batch_size = tile_size, overlap, tile_batch_size
        self.merge_iou, self.min_containment, self.edge_margin = merge_iou, min_containment, edge_margin
        self.size_divisor = size_divisor

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(tile_size={self.tile_size}, overlap={self.overlap}, "
            f"tile_batch_size={self.tile_batch_size}, merge_iou={self.merge_iou}, "
            f"min_containment={self.min_containment}, edge_margin={self.edge_margin})"
        )

    @torch.no_grad()
    def __call__(
        self,
        detector: Callable[[Tensor], DetectorOutput],
        postprocess: PostProcess,
        images01: Tensor,
        image_sizes: Tensor,
    ) -> list[Detections]:
        """Detections of each whole image.

        Args:
            detector: maps ``(n, 3, h, w)`` images in [0, 1] to a :class:`DetectorOutput` (in eval mode).
            postprocess: decodes it (e.g. :class:`~tod_lightning.models.postprocess.PostProcessor`); must have
                ``max_per_image`` (and ``nms_iou`` when ``merge_iou`` is ``None``).
            images01: ``(B, 3, H, W)`` float in [0, 1], zero-padded batch.
            image_sizes: ``(B, 2)`` int64 ``(height, width)`` of each image before padding. Read on the host
                (one small copy): the tile grid is cut with Python slices.

        Returns:
            one :class:`Detections` per image, boxes ``xyxy`` in pixels of ``images01`` (like the
            post-processor's), scores descending, at most ``postprocess.max_per_image``.
        """
        device = images01.device
        if images01.shape[0] == 0:
            return []
        divisor = self.size_divisor or int(getattr(detector, "size_divisor", 1))
        sizes = [tuple(int(v) for v in hw) for hw in image_sizes.tolist()]
        tiles, private_xyxy, inner_edges = tile_layout(sizes, self.tile_size, self.overlap)

        # Batch tiles of the same padded shape together, tile_batch_size at a time.
        by_shape: dict[tuple[int, int], list[int]] = {}
        for t, (_, x1, y1, x2, y2) in enumerate(tiles):
            shape = (-(-(y2 - y1) // divisor) * divisor, -(-(x2 - x1) // divisor) * divisor)  # ceil to divisor
            by_shape.setdefault(shape, []).append(t)
        per_tile: list[Detections | None] = [None] * len(tiles)
        for (pad_h, pad_w), members in by_shape.items():
            for start in range(0, len(members), self.tile_batch_size):
                chunk = members[start : start + self.tile_batch_size]
                crops = []
                for t in chunk:
                    b, x1, y1, x2, y2 = tiles[t]
                    crop = images01[b, :, y1:y2, x1:x2]  # (3, h_t, w_t)
                    crops.append(F.pad(crop, (0, pad_w - (x2 - x1), 0, pad_h - (y2 - y1))))  # (3, pad_h, pad_w)
                tile_sizes = torch.tensor([[tiles[t][4] - tiles[t][2], tiles[t][3] - tiles[t][1]] for t in chunk])
                output = detector(torch.stack(crops))  # input (n, 3, pad_h, pad_w)
                for t, det in zip(chunk, postprocess(output, tile_sizes.to(device))):  # boxes in tile pixels
                    per_tile[t] = det

        windows_xyxy = torch.tensor([t[1:] for t in tiles], dtype=torch.float32, device=device).reshape(-1, 4)
        counts = [d.scores.numel() for d in per_tile]  # known on the host already (the post-processor's split)
        tile_idx = torch.repeat_interleave(
            torch.arange(len(tiles), device=device), torch.tensor(counts, device=device), output_size=sum(counts)
        )  # (N,) the tile of each detection
        offsets_xyxy = windows_xyxy[tile_idx, :2].repeat(1, 2)  # (N, 4) the tile's (x1, y1, x1, y1)
        boxes_xyxy = torch.cat([d.boxes_xyxy for d in per_tile]).reshape(-1, 4) + offsets_xyxy  # (N, 4) image px
        scores = torch.cat([d.scores for d in per_tile]).reshape(-1)
        labels = torch.cat([d.labels for d in per_tile]).reshape(-1)
        image_of_tile = torch.tensor([t[0] for t in tiles], dtype=torch.int64, device=device)
        num_classes = getattr(detector, "num_classes", None)
        if num_classes is None:
            num_classes = int(labels.max()) + 1 if labels.numel() else 1
        keep = merge_tile_detections(
            boxes_xyxy,
            scores,
            labels,
            tile_idx,
            windows_xyxy,
            torch.as_tensor(private_xyxy, dtype=torch.float32).to(device),
            torch.as_tensor(inner_edges).to(device),
            image_of_tile,
            num_classes,
            self.merge_iou if self.merge_iou is not None else float(postprocess.nms_iou),
            self.min_containment,
            self.edge_margin,
        )
        image_idx = image_of_tile[tile_idx]
        # Descending score within each image: sort by score, then stably by image.
        keep = keep[torch.sort(scores[keep], descending=True, stable=True).indices]
        keep = keep[torch.sort(image_idx[keep], stable=True).indices]
        per_image = torch.bincount(image_idx[keep], minlength=len(sizes)).tolist()
        cap = int(postprocess.max_per_image)
        return [Detections(boxes_xyxy[k[:cap]], scores[k[:cap]], labels[k[:cap]]) for k in keep.split(per_image)]


def tile_layout(
    sizes: list[tuple[int, int]], tile_size: int, overlap: int
) -> tuple[list[tuple[int, int, int, int, int]], np.ndarray, np.ndarray]:
    """The tile grid of a batch of images, on the host.

    Args:
        sizes: ``(height, width)`` of each image, px.
        tile_size, overlap: as for :func:`~tod_lightning.ops.tiles.tile_windows`.

    Returns:
        ``tiles``: ``(image index, x1, y1, x2, y2)`` of every tile, image by image, row-major;
        ``private_xyxy``: ``(T, 4)`` float32, the part of each tile that no other tile of its image covers
        (empty, ``x1 >= x2``, along an axis where the overlap is over half a tile): a box reaching out of it
        reaches into another tile; ``inner_edges``: ``(T, 4)`` bool, which of the tile's (left, top, right,
        bottom) edges are inside the image rather than on its border.
    """
    tiles, private, inner = [], [], []
    for b, (height, width) in enumerate(sizes):
        windows = tile_windows(height, width, tile_size, overlap)  # (T_b, 4) xyxy
        tiles.extend((b, *w) for w in windows.tolist())
        bounds = []
        for lo, hi, length in ((windows[:, 0], windows[:, 2], width), (windows[:, 1], windows[:, 3], height)):
            starts, ends = np.unique(lo), np.unique(hi)  # one per column (row), ascending
            index = np.searchsorted(starts, lo)  # (T_b,) column (row) of each tile
            # The previous tile along the axis ends last among those before it (equal sizes, ascending starts).
            bounds.append((np.append(0, ends[:-1])[index], np.append(starts[1:], length)[index]))
        (px1, px2), (py1, py2) = bounds
        private.append(np.stack([px1, py1, px2, py2], axis=1))  # (T_b, 4)
        inner.append(windows != np.array([0, 0, width, height]))  # (T_b, 4)
    return tiles, np.concatenate(private).astype(np.float32), np.concatenate(inner)


def merge_tile_detections(
    boxes_xyxy: Tensor,
    scores: Tensor,
    labels: Tensor,
    tile_idx: Tensor,
    windows_xyxy: Tensor,
    private_xyxy: Tensor,
    inner_edges: Tensor,
    image_of_tile: Tensor,
    num_classes: int,
    merge_iou: float,
    min_containment: float,
    edge_margin: float,
) -> Tensor:
    """Indices of the detections kept by the merge rule of :class:`SlicedInference` (its steps 1 and 2).

    Args:
        boxes_xyxy: ``(N, 4)`` detections in image pixels (shifted from their tile, inside it).
        scores: ``(N,)``; labels: ``(N,)`` int64 in ``0..num_classes-1``.
        tile_idx: ``(N,)`` int64, the tile of each detection (a row of ``windows_xyxy``).
        windows_xyxy: ``(T, 4)`` tile windows in image pixels; private_xyxy, inner_edges: ``(T, 4)``, see
            :func:`tile_layout`.
        image_of_tile: ``(T,)`` int64 image index of each tile.
        num_classes, merge_iou, min_containment, edge_margin: see :class:`SlicedInference`
            (``min_containment >= 0.5``).

    Returns:
        ``(K,)`` int64 indices into the ``N`` detections, in no particular order.
    """
    device, num_tiles = boxes_xyxy.device, windows_xyxy.shape[0]
    if boxes_xyxy.shape[0] == 0:
        return torch.zeros(0, dtype=torch.int64, device=device)
    tile_box = windows_xyxy[tile_idx]  # (N, 4)
    near = torch.cat(
        [boxes_xyxy[:, :2] <= tile_box[:, :2] + edge_margin, boxes_xyxy[:, 2:] >= tile_box[:, 2:] - edge_margin], dim=1
    )  # (N, 4) per side of the box: near that edge of its tile
    cut = (inner_edges[tile_idx] & near).any(dim=1)  # (N,) touches an inner tile edge
    private = private_xyxy[tile_idx]  # (N, 4)
    shared = ((boxes_xyxy[:, :2] < private[:, :2]) | (boxes_xyxy[:, 2:] > private[:, 2:])).any(dim=1)  # (N,)
    areas = box_area(boxes_xyxy)  # (N,)

    # Step 1, truncation rule. Pairs (cut box j, tile B): B another tile of j's image that contains j's centre.
    cut_idx = cut.nonzero().squeeze(1)  # (C,)
    centres_xy = (boxes_xyxy[cut_idx, :2] + boxes_xyxy[cut_idx, 2:]) / 2  # (C, 2)
    in_tile = (
        (centres_xy[:, None, :] >= windows_xyxy[None, :, :2]).all(-1)
        & (centres_xy[:, None, :] <= windows_xyxy[None, :, 2:]).all(-1)
        & (image_of_tile[None, :] == image_of_tile[tile_idx[cut_idx], None])
        & (torch.arange(num_tiles, device=device)[None, :] != tile_idx[cut_idx, None])
    )  # (C, T)
    pair_cut, pair_tile = in_tile.nonzero().unbind(1)  # (P,) each
    # Group the pairs by (tile of j, tile B): one small pairwise test per pair of neighbouring tiles.
    order = torch.argsort(tile_idx[cut_idx[pair_cut]] * num_tiles + pair_tile, stable=True)
    pair_j, pair_tile = cut_idx[pair_cut[order]], pair_tile[order]  # (P,)
    key = tile_idx[pair_j] * num_tiles + pair_tile
    keys, pair_counts = torch.unique_consecutive(key, return_counts=True)
    by_tile = torch.argsort(tile_idx, stable=True)  # detections grouped by tile
    tile_ends = torch.bincount(tile_idx, minlength=num_tiles).cumsum(0).tolist()
    removed = torch.zeros_like(cut)
    for k, j in zip(keys.tolist(), pair_j.split(pair_counts.tolist())):
        a, b = divmod(k, num_tiles)  # j's tile, the other tile
        others = by_tile[(tile_ends[b - 1] if b else 0) : tile_ends[b]]  # (M,) the boxes of tile B ...
        window_a = windows_xyxy[a]
        reach = (boxes_xyxy[others, :2] < window_a[2:]).all(1) & (boxes_xyxy[others, 2:] > window_a[:2]).all(1)
        i = others[reach]  # (m,) ... that overlap tile A (a cover overlaps j, which is inside A)
        lt = torch.maximum(boxes_xyxy[j, None, :2], boxes_xyxy[None, i, :2])  # (c, m, 2)
        rb = torch.minimum(boxes_xyxy[j, None, 2:], boxes_xyxy[None, i, 2:])  # (c, m, 2)
        inter = (rb - lt).clamp(min=0).prod(-1)  # (c, m) intersection areas
        covered = inter >= min_containment * areas[j, None]  # intersection over the cut box's own area
        eligible = (labels[j, None] == labels[None, i]) & (areas[None, i] > areas[j, None])  # (c, m)
        removed[j] |= (covered & eligible).any(dim=1)

    # Step 2, duplicate rule: class-aware NMS over the survivors that reach into another tile.
    group = image_of_tile[tile_idx] * num_classes + labels  # (N,) same image and class
    candidates = (shared & ~removed).nonzero().squeeze(1)
    kept = candidates[class_aware_nms(boxes_xyxy[candidates], scores[candidates], group[candidates], merge_iou)]
    return torch.cat([(~shared & ~removed).nonzero().squeeze(1), kept])
