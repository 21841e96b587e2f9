"""YOLO txt annotations (the ultralytics layout): the split type, the reader and the writer.

A YOLO split is a folder of images (``images/<split>``) and a folder of ``<image stem>.txt`` label files
(``labels/<split>``), one line per object: ``class cx cy w h``, whitespace separated, the box normalised
to [0, 1] by the image width and height. The files carry no class names and no ignore regions.
Bad input is reported like VisDrone's (see :mod:`tod_lightning.data.visdrone`). No torch, no Lightning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from tod_lightning.data.problems import MALFORMED_RECORD, NON_FINITE_BOX, UNKNOWN_CATEGORY, ProblemLog
from tod_lightning.data.records import ANY_CLASS, AnnotationSet, ImageRecord
from tod_lightning.data.splits import SplitSource
from tod_lightning.data.visdrone import check_boxes, pair_images_and_txt, parse_table, read_txt, unknown_as_ignore

YOLO_COLUMNS = ("class", "cx", "cy", "w", "h")
# Overshoot of a normalised coordinate past 0 or 1 that is clipped without a report: files written with 6
# decimals (ultralytics' converters) put a border-touching box up to 1e-6 outside; that is rounding, not a mistake.
CLIP_TOLERANCE = 2e-6
# labelImg writes its class list next to the labels; without an image of that name it is not a label file.
NOT_LABEL_FILES = ("classes.txt",)


@dataclass(frozen=True)
class YoloSplit(SplitSource):
    """A YOLO-format split (ultralytics layout): a folder of images and a folder of ``<image stem>.txt``.

    Attributes:
        images_dir: the images (``.png .jpg .jpeg .tif .tiff .bmp``, any case; not recursive), e.g.
            ``data/yolo/images/train``.
        labels_dir: one ``<image stem>.txt`` per image, e.g. ``data/yolo/labels/train``; an image without one
            is kept as an image with no object (and counted).
        class_names: the name of each YOLO class index ``0..K-1`` (required: the files carry no names).
    """

    images_dir: str
    labels_dir: str
    class_names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))  # configs give lists
        if not self.class_names:
            raise ValueError("class_names is empty")

    def load(self, strict: bool = True) -> AnnotationSet:
        return read_yolo(self.images_dir, self.labels_dir, self.class_names, strict)

    def categories(self) -> tuple[list[int], list[str]]:
        return list(range(len(self.class_names))), list(self.class_names)

    @property
    def source(self) -> str:
        return self.labels_dir


def read_yolo(images_dir: str, labels_dir: str, class_names: Sequence[str], strict: bool = True) -> AnnotationSet:
    """Read and validate a YOLO split into an :class:`AnnotationSet`.

    Category ids are the class indices ``0..K-1`` (label = class index); ``iscrowd`` marks only the ignore
    regions that lenient mode makes of unknown classes (below). Boxes are
    converted to pixels with the image size read from the header; image ids are the 1-based position in the
    sorted image files of ``images_dir``; ``ann_ids`` are 1-based line numbers.

    Bad input (``where`` = ``<txt path>:<line>`` or the image path) raises :class:`AnnotationError` when
    ``strict``, else is skipped and counted: a line without 5 columns or with a non-number
    (``malformed_record``), a non-finite value (``non_finite_box``), a non-integer class
    (``malformed_record``), a non-positive size, a box entirely outside the image; plus the folder-level
    problems of
    :func:`~tod_lightning.data.visdrone.pair_images_and_txt`. A box partly outside is clipped (a counted fix;
    overshoots up to :data:`CLIP_TOLERANCE` are rounding and clipped silently). A class index outside ``0..K-1``
    (``unknown_category``) raises when ``strict``; in lenient mode a usable box of it becomes a class-agnostic
    ignore region (counted, as :func:`~tod_lightning.data.coco.read_coco` does), which :func:`write_yolo` drops.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    problems = ProblemLog(strict)
    num_classes = len(class_names)
    images = []
    for paired in pair_images_and_txt(images_dir, labels_dir, problems, skip_names=NOT_LABEL_FILES):
        record = ImageRecord(paired.image_id, paired.file_name, paired.height, paired.width)
        text = "" if paired.txt_path is None else read_txt(paired.txt_path, problems)
        if text is None:
            continue
        values, numbers, lines = parse_table(text, paired.txt_path, len(YOLO_COLUMNS), None, problems)  # (L, 5)
        size_xy = np.array([paired.width, paired.height], np.float64)
        centre_xy, wh = values[:, 1:3] * size_xy, values[:, 3:5] * size_xy  # (L, 2) pixels
        boxes_xyxy = np.concatenate([centre_xy - wh / 2, centre_xy + wh / 2], 1)  # (L, 4)
        cls = values[:, 0]
        unknown_text = f"class index outside 0..{num_classes - 1}"
        with np.errstate(invalid="ignore"):
            unknown = (cls < 0) | (cls >= num_classes)
            format_checks = [
                (~np.isfinite(values).all(1), NON_FINITE_BOX, "non-finite value"),
                (cls != np.round(cls), MALFORMED_RECORD, "non-integer class index"),
            ]
        if strict:  # an error at its place among the checks; lenient: an ignore region below
            format_checks.append((unknown, UNKNOWN_CATEGORY, unknown_text))
        path = paired.txt_path or ""
        clip_tolerance = CLIP_TOLERANCE * max(paired.width, paired.height)
        keep, boxes_xyxy = check_boxes(
            boxes_xyxy, paired.height, paired.width, path, numbers, lines, problems, format_checks, clip_tolerance
        )
        as_ignore = (
            np.zeros_like(keep)
            if strict
            else unknown_as_ignore(unknown, keep, path, numbers, lines, problems, unknown_text)
        )
        boxes_xyxy, as_ignore = boxes_xyxy[keep], as_ignore[keep]  # (N, 4), (N,)
        box_wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]
        record.boxes_xyxy = boxes_xyxy.astype(np.float32)
        record.labels = np.where(as_ignore, ANY_CLASS, cls[keep]).astype(np.int64)
        record.areas = (box_wh[:, 0] * box_wh[:, 1]).astype(np.float32)
        record.iscrowd = as_ignore  # YOLO has no crowd flag: only an unknown class's ignore regions
        record.ann_ids = numbers[keep]
        images.append(record)
    return AnnotationSet(images, list(range(num_classes)), list(class_names), labels_dir, problems)


def write_yolo(annotations: AnnotationSet, labels_dir: str) -> int:
    """Write an :class:`AnnotationSet` as YOLO label files ``<labels_dir>/<image stem>.txt``.

    Every image gets a file (empty when it has no object), one ``label cx cy w h`` line per object in record
    order, normalised by the image size with 6 decimals (within 1e-6 of the exact values), ``\\n`` line ends.
    The class index is the label (``0..K-1``). YOLO has no ignore regions: they are not written.

    Returns:
        The number of ignore regions left out (so a caller converting VisDrone or COCO crowds can say so).
    """
    dropped = 0
    for image in annotations.images:
        if not (image.width > 0 and image.height > 0):
            raise ValueError(f"image id={image.image_id} ({image.file_name}): unknown size, cannot normalise")
        is_object = ~image.iscrowd
        dropped += int(image.iscrowd.sum())
        boxes_xyxy = image.boxes_xyxy[is_object].astype(np.float64).reshape(-1, 4)  # (N, 4)
        size_xy = np.array([image.width, image.height], np.float64)
        centre_xy = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2 / size_xy  # (N, 2)
        wh = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]) / size_xy  # (N, 2)
        rows = zip(image.labels[is_object].tolist(), centre_xy.tolist(), wh.tolist())
        path = os.path.join(labels_dir, os.path.splitext(image.file_name)[0] + ".txt")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(f"{c} {x:.6f} {y:.6f} {w:.6f} {h:.6f}\n" for c, (x, y), (w, h) in rows))
    return dropped


__all__ = ["YoloSplit", "read_yolo", "write_yolo"]
