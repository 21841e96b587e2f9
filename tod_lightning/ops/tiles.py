"""Tile windows over a large image, shared by tiled training (data) and sliced inference (models)."""

from __future__ import annotations

import numpy as np


def tile_starts(length: int, tile_size: int, overlap: int) -> np.ndarray:
    """Start offsets of tiles of ``tile_size`` along one axis of ``length`` pixels.

    Consecutive tiles overlap by at least ``overlap`` pixels; the first starts at 0 and the last ends exactly
    at ``length`` (it is shifted back rather than padded, so every tile is full-size when ``length >=
    tile_size``). An axis shorter than ``tile_size`` gives one tile starting at 0 (it is then ``length`` long).
    """
    if tile_size <= 0 or not 0 <= overlap < tile_size:
        raise ValueError(f"need tile_size > 0 and 0 <= overlap < tile_size, got {tile_size}, {overlap}")
    if length <= tile_size:
        return np.zeros(1, np.int64)
    step = tile_size - overlap
    count = -(-(length - tile_size) // step) + 1  # ceil: enough tiles that the last one reaches the end
    starts = np.arange(count, dtype=np.int64) * step
    starts[-1] = length - tile_size  # the last tile ends at the border (its overlap with the previous grows)
    return starts


def tile_windows(height: int, width: int, tile_size: int, overlap: int) -> np.ndarray:
    """All tile windows of an image, row-major: ``(T, 4)`` int64 ``(x1, y1, x2, y2)`` pixels, clipped to the image.

    Every pixel is covered; horizontally and vertically adjacent tiles overlap by ``>= overlap`` pixels, so
    an object no larger than ``overlap`` lies entirely inside at least one tile.
    """
    xs = tile_starts(width, tile_size, overlap)
    ys = tile_starts(height, tile_size, overlap)
    y1, x1 = np.meshgrid(ys, xs, indexing="ij")  # (Ty, Tx) each
    x1, y1 = x1.reshape(-1), y1.reshape(-1)  # (T,)
    x2, y2 = np.minimum(x1 + tile_size, width), np.minimum(y1 + tile_size, height)
    return np.stack([x1, y1, x2, y2], axis=1)  # (T, 4)
