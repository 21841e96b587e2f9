"""Train and eval transforms (albumentations 2.0.8) that never lose a tiny box silently.

Both are callables ``transform(image, boxes_xyxy, labels, ignore_xyxy) -> dict`` taking ``(H, W, 3)`` uint8 RGB,
``(N, 4)`` object boxes and ``(M, 4)`` ignore regions in pixels (``pascal_voc`` = xyxy) and returning
``image``, ``boxes_xyxy``, ``labels``, ``ignore_xyxy`` in the transformed frame and ``num_dropped``: the objects
that are not in the output ``boxes_xyxy``. An object leaves the targets only (a) when the geometry moves it
entirely out of the frame, or (b) when it ends up narrower or lower than ``min_box_size``; (b) then becomes an
ignore region, so the model is not trained to call it background.

:class:`ScaleAwareZoom` is the zoom of :class:`TrainAugmentation` when a minimum object size is asked for: an
``A.Affine`` that sees the boxes and never zooms the protected objects below that size.
"""

from __future__ import annotations

import os

# albumentations 2.x checks PyPI for a newer version at import; training machines may be offline.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import albumentations.augmentations.geometric.functional as fgeometric  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

# Boxes make a round trip through albumentations' normalised float32 coordinates, so a box that is exactly
# min_box_size wide can come back 1e-5 px narrower; this tolerance (px) keeps it.
_SIZE_TOLERANCE = 1e-3


class _BoxPreservingTransform:
    """An ``A.Compose`` plus the bookkeeping that accounts for every input object.

    Objects and ignore regions go through albumentations as one box list whose only label field is the row
    index, so each output box is traced back to its input (objects first, then ignore regions).
    """

    def __init__(self, transforms: list, min_box_size: float, seed: int | None):
        self.min_box_size = float(min_box_size)
        # All of albumentations' own filters off (they are also the 2.0.8 defaults, stated here so that a change
        # of defaults cannot start dropping tiny boxes): it may then only remove boxes that left the frame.
        bbox_params = A.BboxParams(
            format="pascal_voc",
            label_fields=["box_index"],
            min_area=0.0,
            min_visibility=0.0,
            min_width=0.0,
            min_height=0.0,
        )
        # No transforms: no Compose (an empty one warns that its bbox processor has nothing to process).
        self.compose = A.Compose(transforms, bbox_params=bbox_params, seed=seed) if transforms else None

    def set_seed(self, seed: int | None) -> None:
        """Reseed the augmentation stream (albumentations ignores numpy/random/torch global seeds)."""
        if self.compose is not None:
            self.compose.set_random_seed(seed)

    def __call__(self, image: np.ndarray, boxes_xyxy: np.ndarray, labels: np.ndarray, ignore_xyxy: np.ndarray) -> dict:
        boxes_xyxy = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        ignore_xyxy = np.asarray(ignore_xyxy, np.float32).reshape(-1, 4)
        labels = np.asarray(labels, np.int64).reshape(-1)
        num_objects = len(boxes_xyxy)
        all_xyxy = np.concatenate([boxes_xyxy, ignore_xyxy])  # (N + M, 4): objects, then ignore regions
        # num_objects: which rows are objects, for transforms that look at the boxes (ScaleAwareZoom).
        out = {"image": image, "bboxes": all_xyxy, "box_index": np.arange(len(all_xyxy)), "num_objects": num_objects}
        if self.compose is not None:
            out = self.compose(**out)

        image_out = out["image"]
        height, width = image_out.shape[:2]
        out_xyxy = np.array(out["bboxes"], np.float32).reshape(-1, 4)  # a copy: clipped in place below
        index = np.asarray(out["box_index"], np.int64).reshape(-1)
        out_xyxy[:, 0::2] = out_xyxy[:, 0::2].clip(0, width)
        out_xyxy[:, 1::2] = out_xyxy[:, 1::2].clip(0, height)
        wh = out_xyxy[:, 2:] - out_xyxy[:, :2]  # (K, 2)
        in_frame = (wh > 0).all(1)  # a box clipped to zero area left the frame
        is_object = index < num_objects
        too_small = (wh < self.min_box_size - _SIZE_TOLERANCE).any(1)
        keep = is_object & in_frame & ~too_small
        shrunk = is_object & in_frame & too_small
        return {
            "image": image_out,
            "boxes_xyxy": out_xyxy[keep],
            "labels": labels[index[keep]],
            "ignore_xyxy": np.concatenate([out_xyxy[~is_object & in_frame], out_xyxy[shrunk]]),
            "num_dropped": num_objects - int(keep.sum()),
        }


class ScaleAwareZoom(A.Affine):
    """A zoom about the image centre (frame size kept) whose factor never shrinks the protected objects below
    ``min_object_size``.

    The factor is drawn uniformly from ``scale_range`` and then clipped from below to
    ``min_object_size / q``, where ``q`` is the ``protect_quantile`` quantile of the objects' shorter sides
    (px, in the image this transform receives); the result is then capped at ``scale_range[1]``, so when even the
    largest zoom cannot lift the object to ``min_object_size`` it is the largest zoom (what is still too small
    becomes an ignore region downstream). An image without objects is zoomed by the drawn factor.

    It is an ``A.Affine`` with scale only (no translation, rotation or shear): the warp and the box mapping
    are albumentations', only the draw of the factor looks at the boxes. Inside an ``A.Compose`` the
    objects are the boxes whose first label column (the row index :class:`_BoxPreservingTransform` attaches)
    is below the ``num_objects`` data key; without that key every box is an object.

    Args:
        scale_range: ``(min, max)`` zoom factor (``> 1`` zooms in).
        min_object_size: shorter side (px, after the zoom) the protected object must keep.
        protect_quantile: which object is protected, as a quantile of the shorter sides in ``[0, 1]``: ``0``
            the smallest object of the image, ``0.5`` the median one.
        fill: value of the pixels a zoom-out uncovers (a constant border: reflected borders would add
            mirrored copies of objects without boxes).
        p: probability of applying it.
    """

    def __init__(
        self,
        scale_range: tuple[float, float],
        min_object_size: float,
        protect_quantile: float = 0.0,
        fill: float = 0,
        p: float = 1.0,
    ):
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        if not min_object_size > 0:
            raise ValueError(f"min_object_size must be > 0 px, got {min_object_size}")
        if not 0.0 <= protect_quantile <= 1.0:
            raise ValueError(f"protect_quantile must be in [0, 1], got {protect_quantile}")
        super().__init__(scale=(low, high), keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=fill, p=p)
        self.scale_range = (float(low), float(high))
        self.min_object_size, self.protect_quantile = float(min_object_size), float(protect_quantile)

    def zoom_floor(self, bboxes: np.ndarray, image_shape: tuple[int, int], num_objects: int | None) -> float:
        """The smallest zoom that keeps the protected object at ``min_object_size`` (0 if there is none).

        Args:
            bboxes: ``(K, 4 + L)`` albumentations' internal boxes (normalised xyxy, then the label columns).
            image_shape: ``(H, W)`` of the image they are normalised by.
            num_objects: rows whose first label column is below it are objects; ``None``: every row.
        """
        bboxes = np.asarray(bboxes, np.float64)
        if bboxes.size == 0:  # an empty image (tiles of aerial scenes mostly are)
            return 0.0
        bboxes = bboxes.reshape(len(bboxes), -1)  # (K, 4 + L)
        if num_objects is not None and bboxes.shape[1] > 4:
            bboxes = bboxes[bboxes[:, 4] < num_objects]
        if len(bboxes) == 0:
            return 0.0
        height, width = image_shape[:2]
        sides = np.minimum((bboxes[:, 2] - bboxes[:, 0]) * width, (bboxes[:, 3] - bboxes[:, 1]) * height)  # (N,) px
        protected = float(np.quantile(sides, self.protect_quantile))
        return self.min_object_size / protected if protected > 0 else 0.0

    def get_params_dependent_on_data(self, params: dict, data: dict) -> dict:
        image_shape = params["shape"][:2]
        low, high = self.scale_range
        floor = self.zoom_floor(data.get("bboxes", np.zeros((0, 4))), image_shape, data.get("num_objects"))
        zoom = min(max(self.py_random.uniform(low, high), floor), high)
        scale = {"x": zoom, "y": zoom}
        # Affine's own matrices (about the pixel-grid centre for the image, the continuous centre for boxes).
        no_translate, no_shear = {"x": 0, "y": 0}, {"x": 0.0, "y": 0.0}
        matrix = fgeometric.create_affine_transformation_matrix(
            no_translate, no_shear, scale, 0.0, fgeometric.center(image_shape)
        )
        bbox_matrix = fgeometric.create_affine_transformation_matrix(
            no_translate, no_shear, scale, 0.0, fgeometric.center_bbox(image_shape)
        )
        return {
            "rotate": 0.0,
            "scale": scale,
            "matrix": matrix,
            "bbox_matrix": bbox_matrix,
            "output_shape": image_shape,
        }


class TrainAugmentation(_BoxPreservingTransform):
    """Training augmentation for aerial tiny objects: resize, flips, scale jitter, mild photometric changes.

    Order: optional keep-ratio resize of the longest side to ``image_size``; horizontal and vertical flips;
    scale jitter about the image centre with the frame size kept (zooming in crops, zooming out pads with
    zeros); photometric changes. After it, objects smaller than ``min_box_size`` become ignore regions.

    With ``min_object_size`` set, the scale jitter is a :class:`ScaleAwareZoom`: the drawn zoom is raised (up to
    ``scale_range[1]``) so that the ``protect_quantile`` object of the image keeps a shorter side of at least
    ``min_object_size`` px; the objects it still cannot save become ignore regions as above.

    Args:
        hflip: probability of a horizontal flip.
        vflip: probability of a vertical flip (aerial imagery has no "up").
        scale_range: ``(min, max)`` zoom factor, sampled uniformly, same for both axes; ``(1, 1)`` disables it.
        photometric: probability of the photometric block (brightness/contrast always, hue/saturation with
            p=0.5, faint Gaussian noise with p=0.2, inside the block).
        min_box_size: objects narrower or lower than this (pixels, after the transform) are moved from the
            targets to the ignore regions and counted in ``num_dropped``.
        image_size: if set, the longest side is resized to this many pixels first (keeping the aspect ratio).
        min_object_size: if set, the zoom drawn from ``scale_range`` is clipped from below to
            ``min_object_size / q`` (``q``: the ``protect_quantile`` quantile of the objects' shorter sides after
            the resize, px) and from above to ``scale_range[1]``; ``None``: the plain uniform zoom.
        protect_quantile: the protected object as a quantile of the shorter sides (``0``: the smallest object
            of the image); only used with ``min_object_size``.
        seed: seed of the augmentation stream (``None``: from OS entropy). Data-loader workers are reseeded
            per worker by the datamodule.
    """

    def __init__(
        self,
        hflip: float = 0.5,
        vflip: float = 0.5,
        scale_range: tuple[float, float] = (0.75, 1.25),
        photometric: float = 0.8,
        min_box_size: float = 2.0,
        image_size: int | None = None,
        min_object_size: float | None = None,
        protect_quantile: float = 0.0,
        seed: int | None = None,
    ):
        for name, p in (("hflip", hflip), ("vflip", vflip), ("photometric", photometric)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} is a probability, got {p}")
        low, high = scale_range
        if not 0 < low <= high:
            raise ValueError(f"scale_range must be (min, max) with 0 < min <= max, got {scale_range}")
        self.hflip, self.vflip, self.scale_range, self.photometric = hflip, vflip, (low, high), photometric
        self.image_size = image_size
        self.min_object_size, self.protect_quantile = min_object_size, protect_quantile
        transforms = [] if image_size is None else [A.LongestMaxSize(max_size=image_size, p=1.0)]
        transforms += [A.HorizontalFlip(p=hflip), A.VerticalFlip(p=vflip)]
        if min_object_size is not None:
            # Built even when there is no zoom range to clip, so bad settings are rejected in any case; added
            # after the resize, so the guard measures the objects at the size the zoom receives them.
            zoom = ScaleAwareZoom((low, high), min_object_size, protect_quantile, fill=0, p=1.0)
            if (low, high) != (1.0, 1.0):
                transforms.append(zoom)
        elif (low, high) != (1.0, 1.0):
            # BORDER_CONSTANT: with reflect borders albumentations adds mirrored copies of the boxes, which would
            # be false targets and break our one-output-per-input accounting.
            transforms.append(
                A.Affine(scale=(low, high), keep_ratio=True, border_mode=cv2.BORDER_CONSTANT, fill=0, p=1.0)
            )
        transforms.append(
            A.Sequential(
                [
                    A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=1.0),
                    A.HueSaturationValue(hue_shift_limit=5, sat_shift_limit=20, val_shift_limit=0, p=0.5),
                    # std as a fraction of 255; heavier noise erases 2-px objects.
                    A.GaussNoise(std_range=(0.01, 0.03), p=0.2),
                ],
                p=photometric,
            )
        )
        super().__init__(transforms, min_box_size, seed)


class EvalTransform(_BoxPreservingTransform):
    """Evaluation transform: an optional keep-ratio resize of the longest side, nothing else.

    Boxes are only rescaled, so the sample's ``scale`` maps them back to original pixels exactly; no box is
    dropped.

    Args:
        image_size: if set, the longest side is resized to this many pixels (up or down); ``None``: identity.
    """

    def __init__(self, image_size: int | None = None):
        self.image_size = image_size
        transforms = [] if image_size is None else [A.LongestMaxSize(max_size=image_size, p=1.0)]
        super().__init__(transforms, min_box_size=0.0, seed=0)
