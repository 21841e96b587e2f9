"""Mosaic (YOLOv4, https://arxiv.org/abs/2004.10934): four training images in the quadrants of one canvas, with
a box policy that never creates sub-pixel or sub-``min_box_size`` targets (ultralytics/yolov5#6646).

Works on raw samples (see :class:`tod_lightning.data.dataset.MixTransform`), before the per-image transform.
No torch, no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from tod_lightning.data.dataset import MixTransform, RawSample


@dataclass(frozen=True)
class MosaicLayout:
    """The geometry of one mosaic.

    Attributes:
        canvas_hw: ``(height, width)`` of the canvas, px.
        quadrants_xyxy: ``(4, 4)`` int pixel window of each quadrant (top-left, top-right, bottom-left,
            bottom-right); a window may be empty when the centre lies on the canvas border.
        order: ``(4,)`` which input (0: the primary sample, 1-3: the sources) fills each quadrant.
        scales: ``(4,)`` rescale factor of each quadrant's image.
        offsets_xy: ``(4, 2)`` canvas position (px) of each rescaled image's top-left corner: an input point
            ``p`` lands at ``p * scales[k] + offsets_xy[k]``.
    """

    canvas_hw: tuple[int, int]
    quadrants_xyxy: np.ndarray
    order: np.ndarray
    scales: np.ndarray
    offsets_xy: np.ndarray


class Mosaic(MixTransform):
    """Four raw samples (this one and three others) tiled around a random centre of one canvas.

    The canvas (``output_size``, default the primary image's size) is split into four quadrants at a centre
    drawn uniformly in ``center_range`` (fractions of the canvas width and height). The four images go to the
    quadrants in random order; each is rescaled by its own factor from ``scale_range`` and placed against the
    centre: a random crop of it fills its quadrant, or, if it is smaller, it sits in the quadrant's corner at
    the centre and the rest is ``fill``. At scale 1 the pixels are copied exactly.

    Box policy (every input object is accounted for):

    - an object is kept, clipped to its quadrant, if it keeps at least ``min_visibility`` of its (rescaled)
      area AND both sides of the clipped box are ``>= min_box_size`` px; this also means rescaling never
      leaves a target narrower than ``min_box_size``;
    - otherwise its visible part becomes an ignore region if it is at least 1 px on both sides, or is left
      out; either way it is counted in ``num_dropped``;
    - ignore regions of the inputs are carried over, clipped to their quadrant (parts under 1 px on a side
      are left out; ignore regions are not counted).

    The output's ``num_dropped`` is the sum of the four inputs' plus the objects not kept here, so
    ``sum(len(in boxes) + in num_dropped) == len(out boxes) + out num_dropped``.

    Args:
        p: probability that it is applied to a sample.
        output_size: ``(height, width)`` of the canvas in px; ``None``: the primary image's size.
        center_range: ``(min, max)`` of the centre's position, as a fraction of the canvas width (x) and
            height (y), each drawn independently.
        scale_range: ``(min, max)`` rescale factor of each image, drawn uniformly per image.
        min_visibility: fraction of an object's rescaled area that must stay in its quadrant to keep it.
        min_box_size: a kept object's clipped box is at least this wide and high (px).
        fill: value of the canvas pixels no image covers.
    """

    num_sources = 3

    def __init__(
        self,
        p: float = 0.5,
        output_size: tuple[int, int] | None = None,
        center_range: tuple[float, float] = (0.25, 0.75),
        scale_range: tuple[float, float] = (0.75, 1.25),
        min_visibility: float = 0.5,
        min_box_size: float = 2.0,
        fill: int = 0,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p is a probability, got {p}")
        if output_size is not None and (len(output_size) != 2 or min(output_size) < 1):
            raise ValueError(f"output_size must be (height, width) >= 1 px, got {output_size}")
        if not 0.0 <= center_range[0] <= center_range[1] <= 1.0:
            raise ValueError(f"center_range must be (min, max) with 0 <= min <= max <= 1, got {center_range}")
        if not 0 < scale_range[0] <= scale_range[1]:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        if not 0.0 <= min_visibility <= 1.0:
            raise ValueError(f"min_visibility must be in [0, 1], got {min_visibility}")
        if min_box_size < 0:
            raise ValueError(f"min_box_size must be >= 0 px, got {min_box_size}")
        self.p = p
        self.output_size = None if output_size is None else (int(output_size[0]), int(output_size[1]))
        self.center_range, self.scale_range = tuple(center_range), tuple(scale_range)
        self.min_visibility, self.min_box_size, self.fill = float(min_visibility), float(min_box_size), fill

    def layout(self, sizes_hw: list[tuple[int, int]], rng: np.random.Generator) -> MosaicLayout:
        """Draw the geometry for four images of ``sizes_hw`` (primary first): the first draws of
        :meth:`__call__`, which depend only on the sizes (so a test can build boxes for a known layout)."""
        height, width = self.output_size or sizes_hw[0]
        center_x = int(round(width * rng.uniform(*self.center_range)))
        center_y = int(round(height * rng.uniform(*self.center_range)))
        quadrants_xyxy = np.array(
            [
                [0, 0, center_x, center_y],
                [center_x, 0, width, center_y],
                [0, center_y, center_x, height],
                [center_x, center_y, width, height],
            ]
        )  # (4, 4): top-left, top-right, bottom-left, bottom-right
        centre_is_high = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], bool)  # (4, 2): centre on the x1 / y1 side
        order = rng.permutation(4)
        scales = rng.uniform(*self.scale_range, size=4)
        offsets_xy = np.zeros((4, 2))
        for k in range(4):  # four images, two axes
            size_xy = np.array(sizes_hw[order[k]][::-1]) * scales[k]  # (2,) rescaled (w, h)
            for axis in range(2):
                lo, hi = quadrants_xyxy[k, axis], quadrants_xyxy[k, axis + 2]
                if size_xy[axis] >= hi - lo:  # larger than the quadrant: a random crop fills it
                    low_t, high_t = hi - size_xy[axis], lo  # the image covers [t, t + size], which contains [lo, hi]
                    t = round(rng.uniform(low_t, high_t))  # whole pixels: no resampling at scale 1
                    offsets_xy[k, axis] = min(max(t, np.ceil(low_t)), high_t)  # rounding must not uncover an edge
                else:  # smaller: against the centre
                    offsets_xy[k, axis] = hi - size_xy[axis] if centre_is_high[k, axis] else lo
        return MosaicLayout((height, width), quadrants_xyxy, order, scales, offsets_xy)

    def __call__(self, raw: RawSample, sources: list[RawSample], rng: np.random.Generator) -> RawSample:
        if len(sources) != self.num_sources:
            raise ValueError(f"Mosaic needs {self.num_sources} sources, got {len(sources)}")
        inputs = [raw, *sources]
        layout = self.layout([x["image"].shape[:2] for x in inputs], rng)
        quadrants, order, scales, offsets = layout.quadrants_xyxy, layout.order, layout.scales, layout.offsets_xy
        canvas = np.full((*layout.canvas_hw, 3), self.fill, raw["image"].dtype)
        for k in range(4):  # four images: the warps are per image
            x0, y0, x1, y1 = quadrants[k]
            if x1 <= x0 or y1 <= y0:
                continue
            # Continuous x' = s x + t maps pixel centres i + 0.5 to s (i + 0.5) + t, i.e. in pixel indices
            # i' = s i + (t + 0.5 s - 0.5); t is taken relative to the quadrant's corner.
            s = scales[k]
            matrix = np.array(
                [[s, 0, offsets[k, 0] - x0 + 0.5 * s - 0.5], [0, s, offsets[k, 1] - y0 + 0.5 * s - 0.5]], np.float64
            )
            canvas[y0:y1, x0:x1] = cv2.warpAffine(
                inputs[order[k]]["image"],
                matrix,
                (int(x1 - x0), int(y1 - y0)),
                flags=cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(self.fill,) * 3,
            )

        # All boxes of the four inputs at once: rescaled, shifted, clipped to their quadrant.
        ordered = [inputs[i] for i in order]  # ordered[k]: the input in quadrant k
        moved_xyxy, clipped_xyxy = _place([x["boxes_xyxy"] for x in ordered], layout)  # (N, 4) each
        labels = np.concatenate([np.asarray(x["labels"], np.int64).reshape(-1) for x in ordered])  # (N,)
        moved_wh = moved_xyxy[:, 2:] - moved_xyxy[:, :2]  # (N, 2)
        clipped_wh = np.maximum(clipped_xyxy[:, 2:] - clipped_xyxy[:, :2], 0)  # (N, 2)
        visibility = clipped_wh.prod(1) / np.maximum(moved_wh.prod(1), 1e-12)  # (N,)
        keep = (visibility >= self.min_visibility) & (clipped_wh >= self.min_box_size).all(1)
        shrunk = ~keep & (clipped_wh >= 1.0).all(1)  # not kept, but enough of it shows to be ignored

        _, ignore_clipped_xyxy = _place([x["ignore_xyxy"] for x in ordered], layout)  # (M, 4)
        ignore_visible = (ignore_clipped_xyxy[:, 2:] - ignore_clipped_xyxy[:, :2] >= 1.0).all(1)

        dropped_before = sum(int(x.get("num_dropped", 0)) for x in inputs)
        return {
            "image": canvas,
            "boxes_xyxy": clipped_xyxy[keep].astype(np.float32),
            "labels": labels[keep],
            "ignore_xyxy": np.concatenate([ignore_clipped_xyxy[ignore_visible], clipped_xyxy[shrunk]]).astype(
                np.float32
            ),
            "num_dropped": dropped_before + int((~keep).sum()),
        }


def _place(boxes_per_quadrant: list[np.ndarray], layout: MosaicLayout) -> tuple[np.ndarray, np.ndarray]:
    """Map each quadrant's boxes ``(N_k, 4)`` (xyxy px of its input) onto the canvas: ``(moved_xyxy, clipped_xyxy)``,
    both ``(sum N_k, 4)`` float64, before and after clipping to the quadrant."""
    boxes = [np.asarray(b, np.float64).reshape(-1, 4) for b in boxes_per_quadrant]
    quadrant_of = np.concatenate([np.full(len(b), k) for k, b in enumerate(boxes)]).astype(np.int64)  # (N,)
    scale = layout.scales[quadrant_of][:, None]  # (N, 1)
    moved_xyxy = np.concatenate(boxes) * scale + np.tile(layout.offsets_xy[quadrant_of], 2)  # (N, 4) canvas px
    bounds_xyxy = layout.quadrants_xyxy[quadrant_of]  # (N, 4)
    clipped_xyxy = np.concatenate(
        [np.maximum(moved_xyxy[:, :2], bounds_xyxy[:, :2]), np.minimum(moved_xyxy[:, 2:], bounds_xyxy[:, 2:])], 1
    )  # (N, 4)
    return moved_xyxy, clipped_xyxy
