"""Training on tiles cut from large images (SAHI-style slicing inside the dataset, not on disk).

:class:`TileSpec` plans the tiles of a split from its records alone (image sizes and boxes; no image is decoded)
and crops a decoded image and its annotations to one tile. The tile grid is
:func:`tod_lightning.ops.tiles.tile_windows`, the same one sliced inference uses. No torch, no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tod_lightning.data.dataset import RawSample, Tiling, Window
from tod_lightning.data.records import ImageRecord
from tod_lightning.ops.tiles import tile_windows


def tile_box_fate(
    boxes_xyxy: np.ndarray, windows_xyxy: np.ndarray, min_visibility: float, min_box_size: float
) -> tuple[np.ndarray, np.ndarray]:
    """What each object becomes in each tile, all pairs at once.

    Args:
        boxes_xyxy: ``(N, 4)`` object boxes, image pixels.
        windows_xyxy: ``(T, 4)`` tile windows, image pixels.
        min_visibility, min_box_size: the border rule of :class:`TileSpec`.

    Returns:
        ``keep`` and ``ignore``, ``(N, T)`` bool each: the object is an object of the tile (entirely inside it,
        or cut with enough of it inside), or only the visible part of it is an ignore region of the tile. Both
        are False when the object is outside the tile.
    """
    boxes_xyxy = np.asarray(boxes_xyxy, np.float64).reshape(-1, 1, 4)  # (N, 1, 4)
    windows_xyxy = np.asarray(windows_xyxy, np.float64).reshape(1, -1, 4)  # (1, T, 4)
    lt = np.maximum(boxes_xyxy[..., :2], windows_xyxy[..., :2])  # (N, T, 2)
    rb = np.minimum(boxes_xyxy[..., 2:], windows_xyxy[..., 2:])  # (N, T, 2)
    clipped_wh = rb - lt  # (N, T, 2); <= 0 on an axis where the object misses the tile
    inside = (boxes_xyxy[..., :2] >= windows_xyxy[..., :2]).all(-1) & (
        boxes_xyxy[..., 2:] <= windows_xyxy[..., 2:]
    ).all(-1)  # (N, T)
    cut = (clipped_wh > 0).all(-1) & ~inside  # (N, T): part inside, part outside
    box_wh = boxes_xyxy[..., 2:] - boxes_xyxy[..., :2]  # (N, 1, 2)
    box_area = np.maximum(box_wh[..., 0] * box_wh[..., 1], 1e-12)  # (N, 1); a cut box has positive area anyway
    visibility = clipped_wh[..., 0].clip(0) * clipped_wh[..., 1].clip(0) / box_area  # (N, T)
    # The tolerance absorbs float32 rounding of the stored coordinates (a 0.5 visibility must stay 0.5).
    big_enough = (clipped_wh >= min_box_size - 1e-4).all(-1) & (visibility >= min_visibility - 1e-6)
    return inside | (cut & big_enough), cut & ~big_enough


@dataclass(frozen=True)
class TileSpec(Tiling):
    """Cut training images into overlapping square tiles; tiles without objects are subsampled.

    Every image of the split is covered by the grid of :func:`~tod_lightning.ops.tiles.tile_windows`
    (``tile_size`` squares, neighbours overlapping by at least ``overlap`` px, the last row/column shifted back
    to end at the border; an image smaller than a tile is one tile, the whole image). A tile *has an object* when
    at least one object is an object of the tile under the border rule below; those tiles are always kept. Of
    the other tiles (background only, or only slivers and ignore regions), ``round(empty_tile_ratio * count)``
    over the whole split are kept, drawn with ``seed``. The plan is made once, from the records, when the
    dataset is built, and is fixed for its lifetime (the data loader shuffles the order).

    Border rule, per object and tile: entirely inside -> kept exactly (shifted to tile pixels); cut by the tile
    border -> clipped and kept if at least ``min_visibility`` of its area is inside and both clipped sides are
    >= ``min_box_size`` px, otherwise its visible part becomes an ignore region and it is counted in
    ``num_dropped`` (so the model is neither taught a fragment nor taught that it is background); entirely
    outside -> not in the tile, not counted. With ``overlap`` >= the longest object side, every object is
    entirely inside at least one tile of the grid. Ignore regions are clipped to the tile (dropped if outside).

    No leakage between splits: the tiles of an image are cut from that image only and the tiling applies to the
    split's own dataset, so overlapping tiles of one image never land in two splits. Split by image (as the
    source datasets do), never by tile.

    Cost: each tile decodes its whole image and then crops it (the crop itself is a ~0.2 ms copy), so by default
    an epoch decodes each image once per kept tile: a 2000 x 1500 frame cut into 20 tiles costs 20 decodes
    (~30 ms each for a JPEG, ~100 ms for a PNG, on one CPU core). The data module's ``train_frames_per_group``
    gives each loader worker the tiles of a few frames of its own and caches those decoded frames
    (:mod:`tod_lightning.data.frame_groups`), so that a frame is decoded about once an epoch instead.

    Attributes:
        tile_size: side of the square tiles, px.
        overlap: minimum overlap of neighbouring tiles, px (``0 <= overlap < tile_size``); set it to at least
            the longest object side so every object appears whole in some tile.
        empty_tile_ratio: fraction (0..1) of the tiles without an object that are kept, over the whole split.
        min_visibility: fraction (0..1) of a cut object's area that must be inside the tile for it to stay an
            object.
        min_box_size: px; a cut object whose clipped width or height is smaller becomes an ignore region.
        seed: chooses which tiles without objects are kept (same seed and records -> same plan).
    """

    tile_size: int = 512
    overlap: int = 64
    empty_tile_ratio: float = 0.25
    min_visibility: float = 0.5
    min_box_size: float = 2.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.tile_size <= 0 or not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"need tile_size > 0 and 0 <= overlap < tile_size, got {self.tile_size}, {self.overlap}")
        for name in ("empty_tile_ratio", "min_visibility"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} is a fraction in [0, 1], got {getattr(self, name)}")
        if self.min_box_size < 0 or self.seed < 0:
            raise ValueError(f"need min_box_size >= 0 and seed >= 0, got {self.min_box_size}, {self.seed}")

    def windows(self, height: int, width: int) -> np.ndarray:
        """The tile grid of an ``height`` x ``width`` px image: ``(T, 4)`` int64 xyxy px."""
        return tile_windows(height, width, self.tile_size, self.overlap)

    def plan(self, images: Sequence[ImageRecord]) -> list[tuple[int, Window]]:
        """The training tiles of ``images``: ``(image index, (x1, y1, x2, y2))`` pairs, image by image, row-major.

        Uses the records' sizes and boxes only. Raises ``ValueError`` naming the image for a record of unknown
        size (``height == width == 0``).
        """
        candidates: list[tuple[int, np.ndarray, np.ndarray]] = []  # (image index, windows (T, 4), has object (T,))
        for index, record in enumerate(images):
            if record.height <= 0 or record.width <= 0:
                raise ValueError(
                    f"image id={record.image_id} ({record.file_name}): unknown size {record.height}x{record.width}; "
                    "tiling needs the image sizes in the annotations"
                )
            windows_xyxy = self.windows(record.height, record.width)  # (T, 4)
            objects_xyxy = record.boxes_xyxy[~record.iscrowd]  # (N, 4)
            keep, _ = tile_box_fate(objects_xyxy, windows_xyxy, self.min_visibility, self.min_box_size)  # (N, T)
            candidates.append((index, windows_xyxy, keep.any(0)))
        num_empty = sum(int((~has_object).sum()) for _, _, has_object in candidates)
        num_kept_empty = round(self.empty_tile_ratio * num_empty)
        kept_empty = np.zeros(num_empty, bool)  # over the split's empty tiles, in plan order
        kept_empty[np.random.default_rng(self.seed).choice(num_empty, num_kept_empty, replace=False)] = True
        plan: list[tuple[int, Window]] = []
        start = 0
        for index, windows_xyxy, has_object in candidates:
            keep_tile = has_object.copy()
            keep_tile[~has_object] = kept_empty[start : start + int((~has_object).sum())]
            start += int((~has_object).sum())
            plan += [(index, tuple(int(v) for v in window)) for window in windows_xyxy[keep_tile]]
        return plan

    def crop(self, raw: RawSample, window: Window) -> RawSample:
        """The raw sample of the tile ``window`` (``(x1, y1, x2, y2)`` px of ``raw["image"]``), in tile pixels.

        Objects and ignore regions follow the border rule of the class docstring; ``num_dropped`` adds the cut
        objects that became ignore regions to ``raw``'s own count.
        """
        x1, y1, x2, y2 = (int(v) for v in window)
        # Always a copy (ascontiguousarray returns a view of a full-width window): a view would keep the whole
        # frame alive as long as the tile, and let the transforms write into a frame of the frame cache.
        image = raw["image"][y1:y2, x1:x2].copy()  # (y2 - y1, x2 - x1, 3)
        offset = np.array([x1, y1, x1, y1], np.float32)
        limit = np.array([x2 - x1, y2 - y1] * 2, np.float32)
        boxes_xyxy = np.asarray(raw["boxes_xyxy"], np.float32).reshape(-1, 4)
        keep, ignore = tile_box_fate(boxes_xyxy, np.array([window]), self.min_visibility, self.min_box_size)  # (N, 1)
        keep, ignore = keep[:, 0], ignore[:, 0]  # (N,)
        tile_boxes_xyxy = np.clip(boxes_xyxy - offset, 0, limit)  # (N, 4); an inside box is only shifted
        ignore_xyxy = np.clip(np.asarray(raw["ignore_xyxy"], np.float32).reshape(-1, 4) - offset, 0, limit)
        ignore_wh = ignore_xyxy[:, 2:] - ignore_xyxy[:, :2]  # (M, 2)
        return {
            "image": image,
            "boxes_xyxy": tile_boxes_xyxy[keep],
            "labels": np.asarray(raw["labels"], np.int64).reshape(-1)[keep],
            "ignore_xyxy": np.concatenate([ignore_xyxy[(ignore_wh > 0).all(1)], tile_boxes_xyxy[ignore]]),
            "num_dropped": int(raw.get("num_dropped", 0)) + int(ignore.sum()),
        }
