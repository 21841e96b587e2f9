"""COCO-format detection datasets (AI-TOD's json is COCO) and a bare image folder for predict.

A sample is a dict of numpy arrays (collated into a :class:`tod_lightning.structures.Batch` by
:func:`tod_lightning.data.collate.collate_detection`):

- ``image``: ``(H, W, 3)`` uint8 RGB after the transform.
- ``boxes_xyxy``: ``(N, 4)`` float32 pixels of the transformed image; ``labels``: ``(N,)`` int64 in ``0..K-1``.
- ``ignore_xyxy``: ``(M, 4)`` float32 pixels of the transformed image (crowds, boxes the pipeline shrank away).
- ``image_id`` (int), ``file_name`` (str), ``orig_size`` ``(h, w)`` of the file.
- ``scale``: ``(sy, sx)`` transformed size / original size; it maps boxes back (``orig = box / scale``) for
  transforms that only resize.
- ``orig_boxes_xyxy`` ``(N0, 4)`` float32, ``orig_labels`` ``(N0,)`` int64, ``orig_areas`` ``(N0,)`` float32 (the
  json ``area``), ``orig_iscrowd`` ``(N0,)`` bool: every annotation of the image in original pixels, crowds included.
- ``num_dropped`` (int): objects the transform removed from ``boxes_xyxy``.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

import cv2
import numpy as np
import torch.utils.data

_CATEGORIES_KEY = re.compile(r'"categories"\s*:\s*')
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# transform(image, boxes_xyxy, labels, ignore_xyxy) -> dict(image, boxes_xyxy, labels, ignore_xyxy, num_dropped),
# see tod_lightning.data.transforms.
Transform = Callable[..., dict[str, Any]]


class AnnotationError(ValueError):
    """A record of a COCO json that cannot be used. The message names the json file and the record."""


@dataclass
class _ImageRecord:
    image_id: int
    file_name: str
    height: int
    width: int
    boxes_xyxy: np.ndarray | None = None  # (N0, 4) float32 original pixels, filled after all annotations are read
    labels: np.ndarray | None = None  # (N0,) int64
    areas: np.ndarray | None = None  # (N0,) float32 px²
    iscrowd: np.ndarray | None = None  # (N0,) bool


def read_image_rgb(path: str) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB; raise ``OSError`` naming ``path`` if missing or corrupt."""
    image_bgr = cv2.imread(path, cv2.IMREAD_COLOR)
    if image_bgr is None:
        reason = "corrupt or not an image" if os.path.exists(path) else "file not found"
        raise OSError(f"cannot read image {path}: {reason}")
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def load_coco_json(ann_file: str) -> dict[str, Any]:
    """Parse a COCO json; raise ``ValueError`` naming the file if it is not JSON or has no ``images``/``categories``."""
    try:
        with open(ann_file, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{ann_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(f"{ann_file}: not a COCO json (no 'images' list)")
    return data


def parse_categories(categories: Any, ann_file: str) -> tuple[list[int], list[str]]:
    """COCO ``categories`` -> ``(category_ids, class_names)`` sorted by id: label ``k`` is ``category_ids[k]``."""
    if not isinstance(categories, list) or not categories:
        raise AnnotationError(f"{ann_file}: no 'categories' list (or it is empty)")
    names_by_id: dict[int, str] = {}
    for record in categories:
        if not isinstance(record, dict) or not isinstance(record.get("id"), int):
            raise AnnotationError(f"{ann_file}: category {record!r}: needs an integer 'id'")
        if record["id"] in names_by_id:
            raise AnnotationError(f"{ann_file}: category id={record['id']}: duplicate category id")
        names_by_id[record["id"]] = str(record.get("name", record["id"]))
    category_ids = sorted(names_by_id)
    return category_ids, [names_by_id[i] for i in category_ids]


def read_categories(ann_file: str) -> tuple[list[int], list[str]]:
    """The categories of a COCO json without parsing its (possibly 100s of MB) images and annotations.

    Finds the ``"categories"`` key in the text and decodes only its value; falls back to a full parse if
    that fails. :class:`CocoDetection` re-reads them with a full parse, so a wrong guess cannot go unnoticed.
    """
    with open(ann_file, encoding="utf-8") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    for match in _CATEGORIES_KEY.finditer(text):
        try:
            value, _ = decoder.raw_decode(text, match.end())
            if isinstance(value, list) and all(isinstance(c, dict) and "id" in c for c in value):
                return parse_categories(value, ann_file)
        except (json.JSONDecodeError, AnnotationError):
            pass  # not the top-level key (or broken): the full parse below decides
    return parse_categories(load_coco_json(ann_file).get("categories"), ann_file)


def _parse_image(record: Any, ann_file: str) -> _ImageRecord:
    """Decide on one ``images`` record: return it parsed or raise :class:`AnnotationError`."""
    image_id = record.get("id") if isinstance(record, dict) else None
    where = f"{ann_file}: image id={image_id}"
    if not isinstance(image_id, int):
        raise AnnotationError(f"{ann_file}: image record {record!r}: needs an integer 'id'")
    if not isinstance(record.get("file_name"), str):
        raise AnnotationError(f"{where}: needs a 'file_name'")
    height, width = record.get("height"), record.get("width")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        raise AnnotationError(f"{where}: needs positive integer 'height' and 'width', got {height!r}, {width!r}")
    return _ImageRecord(image_id, record["file_name"], height, width)


def _parse_annotation(
    record: Any, images: dict[int, _ImageRecord], label_of: dict[int, int], ann_file: str
) -> tuple[int, list[float], int, float, bool, bool]:
    """Decide on one ``annotations`` record: return it parsed or raise :class:`AnnotationError`.

    Returns:
        ``(image_id, box_xyxy, label, area, iscrowd, clipped)``: ``box_xyxy`` in original pixels, clipped to
        the image (``clipped`` says whether that changed it); ``area`` is the json ``area`` (``w * h`` if absent).
    """
    if not isinstance(record, dict):
        raise AnnotationError(f"{ann_file}: annotation {record!r}: not an object")

    def error(problem: str) -> AnnotationError:  # the message is only built for a bad record (AI-TOD: ~700k good ones)
        return AnnotationError(f"{ann_file}: annotation id={record.get('id')}: {problem}")

    image = images.get(record.get("image_id"))
    if image is None:
        raise error(f"image_id={record.get('image_id')!r} is not in 'images'")
    if record.get("category_id") not in label_of:
        raise error(f"unknown category_id={record.get('category_id')!r}")
    box_xywh = record.get("bbox")
    if not (isinstance(box_xywh, list) and len(box_xywh) == 4):
        raise error(f"bbox must be [x, y, w, h], got {box_xywh!r}")
    x, y, w, h = box_xywh
    try:  # one check for all four: the sum is finite iff each is, and it raises TypeError on a non-number
        finite = math.isfinite(x + y + w + h)
    except TypeError:
        raise error(f"bbox must be 4 numbers, got {box_xywh!r}") from None
    if not finite:
        raise error(f"non-finite bbox {box_xywh!r}")
    if w <= 0 or h <= 0:
        raise error(f"non-positive width or height in bbox {box_xywh!r}")
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, image.width), min(y + h, image.height)
    if x2 <= x1 or y2 <= y1:
        raise error(f"bbox {box_xywh!r} lies entirely outside image id={image.image_id} ({image.width}x{image.height})")
    clipped = x1 != x or y1 != y or x2 != x + w or y2 != y + h
    area = record.get("area")
    area = float(area) if isinstance(area, (int, float)) and math.isfinite(area) else float(w * h)
    iscrowd = bool(record.get("iscrowd", 0))
    return image.image_id, [x1, y1, x2, y2], label_of[record["category_id"]], area, iscrowd, clipped


def _make_sample(
    transform: Transform | None,
    image_rgb: np.ndarray,
    image_id: int,
    file_name: str,
    orig_boxes_xyxy: np.ndarray,
    orig_labels: np.ndarray,
    orig_areas: np.ndarray,
    orig_iscrowd: np.ndarray,
) -> dict[str, Any]:
    """Run the transform on one decoded image and its annotations and assemble the sample dict."""
    is_object = ~orig_iscrowd
    boxes_xyxy, labels, ignore_xyxy = orig_boxes_xyxy[is_object], orig_labels[is_object], orig_boxes_xyxy[orig_iscrowd]
    if transform is None:
        out = dict(image=image_rgb, boxes_xyxy=boxes_xyxy, labels=labels, ignore_xyxy=ignore_xyxy, num_dropped=0)
    else:
        out = transform(image=image_rgb, boxes_xyxy=boxes_xyxy, labels=labels, ignore_xyxy=ignore_xyxy)
    orig_h, orig_w = image_rgb.shape[:2]
    new_h, new_w = out["image"].shape[:2]
    return {
        "image": np.ascontiguousarray(out["image"]),
        "boxes_xyxy": np.asarray(out["boxes_xyxy"], np.float32).reshape(-1, 4),
        "labels": np.asarray(out["labels"], np.int64).reshape(-1),
        "ignore_xyxy": np.asarray(out["ignore_xyxy"], np.float32).reshape(-1, 4),
        "image_id": int(image_id),
        "file_name": file_name,
        "orig_size": (orig_h, orig_w),
        "scale": (new_h / orig_h, new_w / orig_w),
        "orig_boxes_xyxy": orig_boxes_xyxy,
        "orig_labels": orig_labels,
        "orig_areas": orig_areas,
        "orig_iscrowd": orig_iscrowd,
        "num_dropped": int(out["num_dropped"]),
    }


class CocoDetection(torch.utils.data.Dataset):
    """A COCO-format detection split: one json and the folder its ``file_name``s are relative to.

    The json is parsed and validated once, here; any unusable record raises ``ValueError`` naming the json
    and the record. Category ids map to contiguous labels in sorted-id order. Images with no annotations
    are kept. ``iscrowd=1`` annotations become ignore regions. Boxes crossing the image border are clipped
    to it (counted in ``num_clipped``).

    Args:
        images_dir: folder the json's ``images[*].file_name`` are relative to.
        ann_file: COCO json path.
        transform: ``transform(image, boxes_xyxy, labels, ignore_xyxy) -> dict`` (see
            :mod:`tod_lightning.data.transforms`), or ``None`` for the decoded image as is.
    """

    def __init__(self, images_dir: str, ann_file: str, transform: Transform | None = None):
        self.images_dir, self.ann_file, self.transform = images_dir, ann_file, transform
        data = load_coco_json(ann_file)
        self.category_ids, self.class_names = parse_categories(data.get("categories"), ann_file)
        label_of = {category_id: label for label, category_id in enumerate(self.category_ids)}

        images: dict[int, _ImageRecord] = {}
        for record in data["images"]:
            image = _parse_image(record, ann_file)
            if image.image_id in images:
                raise AnnotationError(f"{ann_file}: image id={image.image_id}: duplicate image id")
            images[image.image_id] = image

        per_image: dict[int, list[tuple]] = {image_id: [] for image_id in images}
        self.num_clipped = 0
        for record in data.get("annotations") or []:
            image_id, box_xyxy, label, area, iscrowd, clipped = _parse_annotation(record, images, label_of, ann_file)
            per_image[image_id].append((box_xyxy, label, area, iscrowd))
            self.num_clipped += clipped

        for image_id, image in images.items():
            rows = per_image[image_id]
            image.boxes_xyxy = np.array([r[0] for r in rows], np.float32).reshape(-1, 4)
            image.labels = np.array([r[1] for r in rows], np.int64)
            image.areas = np.array([r[2] for r in rows], np.float32)
            image.iscrowd = np.array([r[3] for r in rows], bool)
        self._images = list(images.values())

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def summary(self) -> dict[str, int]:
        """Counts for logging: images, objects (non-crowd), empty images (no objects), ignore regions, clipped boxes."""
        objects = [int((~image.iscrowd).sum()) for image in self._images]
        return {
            "images": len(self._images),
            "objects": sum(objects),
            "empty_images": sum(n == 0 for n in objects),
            "ignore_regions": sum(int(image.iscrowd.sum()) for image in self._images),
            "clipped_boxes": self.num_clipped,
        }

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self._images[index]
        path = os.path.join(self.images_dir, image.file_name)
        image_rgb = read_image_rgb(path)
        if image_rgb.shape[:2] != (image.height, image.width):
            raise ValueError(
                f"{path}: decoded size {image_rgb.shape[:2]} (h, w) differs from "
                f"{self.ann_file} image id={image.image_id} ({image.height}, {image.width})"
            )
        return _make_sample(
            self.transform,
            image_rgb,
            image.image_id,
            image.file_name,
            image.boxes_xyxy,
            image.labels,
            image.areas,
            image.iscrowd,
        )


class ImageFolderDataset(torch.utils.data.Dataset):
    """The images of a bare folder (no annotations) for predict, as samples with no boxes.

    Files with an extension in :data:`IMAGE_EXTENSIONS` (any case), sorted by name, not recursive;
    ``image_id`` is the 1-based position in that order.

    Args:
        images_dir: the folder.
        transform: as for :class:`CocoDetection` (normally an ``EvalTransform``).
    """

    def __init__(self, images_dir: str, transform: Transform | None = None):
        self.images_dir, self.transform = images_dir, transform
        if not os.path.isdir(images_dir):
            raise ValueError(f"{images_dir}: not a folder")
        self.file_names = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.file_names:
            raise ValueError(f"{images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")

    def summary(self) -> dict[str, int]:
        return {"images": len(self.file_names)}

    def __len__(self) -> int:
        return len(self.file_names)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_rgb = read_image_rgb(os.path.join(self.images_dir, self.file_names[index]))
        return _make_sample(
            self.transform,
            image_rgb,
            index + 1,
            self.file_names[index],
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.int64),
            np.zeros(0, np.float32),
            np.zeros(0, bool),
        )
