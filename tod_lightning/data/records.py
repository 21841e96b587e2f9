"""The in-memory form of an annotated split, whatever its file format (COCO json, VisDrone txt, YOLO txt).

Readers (:func:`tod_lightning.data.coco.read_coco`, :func:`tod_lightning.data.visdrone.read_visdrone`,
:func:`tod_lightning.data.yolo.read_yolo`) produce an :class:`AnnotationSet`; writers turn one back into
files. The dataset (:class:`tod_lightning.data.dataset.DetectionDataset`), the tiler and the dataset report
only read this form. No torch, no Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tod_lightning.data.problems import ProblemLog

# Label of an ignore region that applies to every class (VisDrone "ignored regions" / "others").
# A COCO crowd keeps its own category's label.
ANY_CLASS = -1


@dataclass
class ImageRecord:
    """One image and its annotations, in ORIGINAL image pixels.

    Attributes:
        image_id: the format's image id (COCO ``id``; the 1-based position in sorted file order for txt formats).
        file_name: path relative to the split's images folder.
        height, width: image size in pixels (from the annotation file, or the image header for txt formats).
        boxes_xyxy: ``(N, 4)`` float32, clipped to the image.
        labels: ``(N,)`` int64 contiguous labels ``0..K-1``; :data:`ANY_CLASS` for a class-agnostic ignore region.
        areas: ``(N,)`` float32 px², the annotation's ``area`` (COCO) or ``w * h`` (the AI-TOD bins read it).
        iscrowd: ``(N,)`` bool, True for an ignore region (COCO ``iscrowd``, VisDrone ignored/others).
        ann_ids: ``(N,)`` int64 the record's id in the file (COCO annotation ``id``; 1-based line number
            for txt formats), so problems and round trips can name it.
        extra: per-annotation columns of the source format kept for a faithful round trip, each ``(N,)``
            (e.g. VisDrone ``truncation`` and ``occlusion``).
    """

    image_id: int
    file_name: str
    height: int
    width: int
    boxes_xyxy: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    ann_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_objects(self) -> int:
        """Annotations that are objects (not ignore regions)."""
        return int((~self.iscrowd).sum())


@dataclass
class AnnotationSet:
    """A parsed split: its images, its categories and what the reader found wrong.

    Attributes:
        images: one :class:`ImageRecord` per usable image, in file order.
        category_ids: the format's category id of each contiguous label (label ``k`` is ``category_ids[k]``).
        class_names: the name of each contiguous label.
        source: the annotation file or folder it was read from (for messages).
        problems: what the reader skipped, clipped or warned about.
    """

    images: list[ImageRecord]
    category_ids: list[int]
    class_names: list[str]
    source: str
    problems: ProblemLog = field(default_factory=ProblemLog)

    @property
    def num_classes(self) -> int:
        return len(self.category_ids)

    def summary(self) -> dict[str, int]:
        """Counts for logging: images, objects, empty images, ignore regions, clipped boxes, skipped records."""
        objects = [image.num_objects for image in self.images]
        counts = self.problems.counts()
        return {
            "images": len(self.images),
            "objects": sum(objects),
            "empty_images": sum(n == 0 for n in objects),
            "ignore_regions": sum(int(image.iscrowd.sum()) for image in self.images),
            "clipped_boxes": counts.get("box_clipped", 0),
            "skipped_records": sum(p.action.startswith("skipped") for p in self.problems),
        }


def records_from_rows(
    image: ImageRecord,
    rows: list[tuple[list[float], int, float, bool, int]],
    extra_rows: dict[str, list] | None = None,
) -> ImageRecord:
    """Fill ``image``'s arrays from ``(box_xyxy, label, area, iscrowd, ann_id)`` rows (one per annotation)."""
    image.boxes_xyxy = np.array([r[0] for r in rows], np.float32).reshape(-1, 4)
    image.labels = np.array([r[1] for r in rows], np.int64).reshape(-1)
    image.areas = np.array([r[2] for r in rows], np.float32).reshape(-1)
    image.iscrowd = np.array([r[3] for r in rows], bool).reshape(-1)
    image.ann_ids = np.array([r[4] for r in rows], np.int64).reshape(-1)
    image.extra = {k: np.asarray(v) for k, v in (extra_rows or {}).items()}
    return image
