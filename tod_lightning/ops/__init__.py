"""Pure tensor math: points per level, box coding, similarities, NMS and the gather of selected head-map entries
(compiled numba kernels on CPU), tile windows (numpy)."""

from tod_lightning.ops.boxes import PointBoxCoder, box_area, boxes_in_regions, points_in_boxes
from tod_lightning.ops.nms import class_aware_nms, grid_batched_nms
from tod_lightning.ops.points import flatten_levels, level_points
from tod_lightning.ops.tiles import tile_starts, tile_windows

__all__ = [
    "PointBoxCoder",
    "box_area",
    "boxes_in_regions",
    "class_aware_nms",
    "flatten_levels",
    "grid_batched_nms",
    "level_points",
    "points_in_boxes",
    "tile_starts",
    "tile_windows",
]
