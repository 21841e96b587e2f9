"""COCO-format annotations (AI-TOD's json is COCO): reader, writer and the dataset.

Reading goes through :func:`read_coco` into an :class:`~tod_lightning.data.records.AnnotationSet`;
:class:`CocoDetection` is a :class:`~tod_lightning.data.dataset.DetectionDataset` over it (the sample format
is documented in :mod:`tod_lightning.data.dataset`).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from tod_lightning.data.dataset import (  # noqa: F401  (re-exported: the public names of the old module)
    IMAGE_EXTENSIONS,
    DetectionDataset,
    ImageFolderDataset,
    Transform,
    read_image_rgb,
)
from tod_lightning.data.problems import (
    BAD_AREA,
    BOX_CLIPPED,
    BOX_OUTSIDE_IMAGE,
    DUPLICATE_CATEGORY_ID,
    DUPLICATE_IMAGE_ID,
    MALFORMED_RECORD,
    NO_ANNOTATIONS,
    NON_FINITE_BOX,
    NON_POSITIVE_BOX,
    UNKNOWN_CATEGORY,
    UNKNOWN_IMAGE_ID,
    AnnotationError,
    ProblemLog,
)
from tod_lightning.data.records import ANY_CLASS, AnnotationSet, ImageRecord, records_from_rows

_CATEGORIES_KEY = re.compile(r'"categories"\s*:\s*')


def load_coco_json(ann_file: str) -> dict[str, Any]:
    """Parse a COCO json; raise :class:`AnnotationError` naming the file if it is empty, not JSON or has no
    ``images`` list. These are fatal in both strictness modes: there is nothing to skip to."""
    with open(ann_file, encoding="utf-8") as f:
        text = f.read()
    if not text.strip():
        raise AnnotationError(f"{ann_file}: empty file")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise AnnotationError(f"{ann_file}: not valid JSON ({e})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise AnnotationError(f"{ann_file}: not a COCO json (no 'images' list)")
    if not data["images"]:
        raise AnnotationError(f"{ann_file}: the 'images' list is empty")
    return data


def parse_categories(categories: Any, ann_file: str, problems: ProblemLog | None = None) -> tuple[list[int], list[str]]:
    """COCO ``categories`` -> ``(category_ids, class_names)`` sorted by id: label ``k`` is ``category_ids[k]``.

    A missing or empty list is fatal; a bad or duplicate record is an error of ``problems`` (lenient: the
    first record of an id wins).
    """
    problems = ProblemLog(strict=True) if problems is None else problems
    if not isinstance(categories, list) or not categories:
        raise AnnotationError(f"{ann_file}: no 'categories' list (or it is empty)")
    names_by_id: dict[int, str] = {}
    for record in categories:
        if not isinstance(record, dict) or not isinstance(record.get("id"), int):
            problems.error(
                MALFORMED_RECORD, f"{ann_file}: category {record!r}", "needs an integer 'id'", "skipped category"
            )
        elif record["id"] in names_by_id:
            problems.error(
                DUPLICATE_CATEGORY_ID,
                f"{ann_file}: category id={record['id']}",
                "duplicate category id",
                "skipped category",
            )
        else:
            names_by_id[record["id"]] = str(record.get("name", record["id"]))
    if not names_by_id:
        raise AnnotationError(f"{ann_file}: no usable category")
    category_ids = sorted(names_by_id)
    return category_ids, [names_by_id[i] for i in category_ids]


def read_categories(ann_file: str) -> tuple[list[int], list[str]]:
    """The categories of a COCO json without parsing its (possibly 100s of MB) images and annotations.

    Finds the ``"categories"`` key in the text and decodes only its value; falls back to a full parse if
    that fails. :func:`read_coco` re-reads them with a full parse, so a wrong guess cannot go unnoticed.
    """
    with open(ann_file, encoding="utf-8") as f:
        text = f.read()
    decoder = json.JSONDecoder()
    for match in _CATEGORIES_KEY.finditer(text):
        try:
            value, _ = decoder.raw_decode(text, match.end())
            if isinstance(value, list) and all(isinstance(c, dict) and "id" in c for c in value):
                # Lenient here (the first record of an id wins): read_coco re-checks in the chosen mode.
                return parse_categories(value, ann_file, ProblemLog(strict=False))
        except (json.JSONDecodeError, AnnotationError):
            pass  # not the top-level key (or broken): the full parse below decides
    return parse_categories(load_coco_json(ann_file).get("categories"), ann_file, ProblemLog(strict=False))


def _parse_image(record: Any, ann_file: str) -> ImageRecord | tuple[str, str, str]:
    """One ``images`` record: the parsed record, or ``(kind, where, message)`` of why it is unusable."""
    image_id = record.get("id") if isinstance(record, dict) else None
    where = f"{ann_file}: image id={image_id}"
    if not isinstance(image_id, int):
        return MALFORMED_RECORD, f"{ann_file}: image record {record!r}", "needs an integer 'id'"
    if not isinstance(record.get("file_name"), str):
        return MALFORMED_RECORD, where, "needs a 'file_name'"
    height, width = record.get("height"), record.get("width")
    if not (isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0):
        return MALFORMED_RECORD, where, f"needs positive integer 'height' and 'width', got {height!r}, {width!r}"
    return ImageRecord(image_id, record["file_name"], height, width)


def _parse_annotation(
    record: Any, images: dict[int, ImageRecord], label_of: dict[int, int], ann_file: str
) -> tuple[int, list[float], int, float, bool, bool] | tuple[str, str]:
    """One ``annotations`` record, parsed, or ``(kind, message)`` of why it is unusable.

    Returns:
        ``(image_id, box_xyxy, label, area, iscrowd, clipped, bad_area)``: ``box_xyxy`` in original pixels,
        clipped to the image (``clipped`` says whether that changed it); ``area`` is the json ``area``
        (``w * h`` if absent, or if unusable: then ``bad_area`` is True).
    """
    if not isinstance(record, dict):
        return MALFORMED_RECORD, "not an object"
    if not isinstance(record.get("image_id"), int):
        return MALFORMED_RECORD, f"needs an integer 'image_id', got {record.get('image_id')!r}"
    if not isinstance(record.get("category_id"), int):
        return MALFORMED_RECORD, f"needs an integer 'category_id', got {record.get('category_id')!r}"
    image = images.get(record.get("image_id"))
    if image is None:
        return UNKNOWN_IMAGE_ID, f"image_id={record.get('image_id')!r} is not in 'images'"
    if record.get("category_id") not in label_of:
        return UNKNOWN_CATEGORY, f"unknown category_id={record.get('category_id')!r}"
    box_xywh = record.get("bbox")
    if not (isinstance(box_xywh, list) and len(box_xywh) == 4):
        return MALFORMED_RECORD, f"bbox must be [x, y, w, h], got {box_xywh!r}"
    x, y, w, h = box_xywh
    try:  # one check for all four: the sum is finite iff each is, and it raises TypeError on a non-number
        finite = math.isfinite(x + y + w + h)
    except TypeError:
        return MALFORMED_RECORD, f"bbox must be 4 numbers, got {box_xywh!r}"
    if not finite:
        return NON_FINITE_BOX, f"non-finite bbox {box_xywh!r}"
    if w <= 0 or h <= 0:
        return NON_POSITIVE_BOX, f"non-positive width or height in bbox {box_xywh!r}"
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, image.width), min(y + h, image.height)
    if x2 <= x1 or y2 <= y1:
        return (
            BOX_OUTSIDE_IMAGE,
            f"bbox {box_xywh!r} lies entirely outside image id={image.image_id} ({image.width}x{image.height})",
        )
    clipped = x1 != x or y1 != y or x2 != x + w or y2 != y + h
    area = record.get("area")
    # The evaluator bins objects by this field: a missing area is w * h (COCO's default); a non-numeric,
    # non-finite or non-positive one would silently drop the object from every bin, so it is replaced by
    # w * h and reported (``bad_area``).
    bad_area = "area" in record and not (isinstance(area, (int, float)) and math.isfinite(area) and area > 0)
    area = float(w * h) if "area" not in record or bad_area else float(area)
    iscrowd = bool(record.get("iscrowd", 0))
    return image.image_id, [x1, y1, x2, y2], label_of[record["category_id"]], area, iscrowd, clipped, bad_area


def read_coco(ann_file: str, strict: bool = True) -> AnnotationSet:
    """Read and validate a COCO json into an :class:`AnnotationSet`.

    Category ids map to contiguous labels in sorted-id order. Images with no annotations are kept.
    ``iscrowd=1`` annotations become ignore regions of their category. A box crossing the image border is
    clipped to it (a counted fix). In lenient mode an annotation of an unknown category whose box is usable
    becomes an ignore region of every class (counted), so it is neither trained nor scored as background.
    Every other bad record (see :mod:`tod_lightning.data.problems`) raises
    :class:`AnnotationError` naming ``ann_file`` and the record when ``strict``, or is skipped and counted.
    An image record that is unusable is skipped with its annotations; of duplicate image ids the first wins.
    An empty or non-JSON file, or one without images or categories, raises in both modes.
    """
    problems = ProblemLog(strict)
    data = load_coco_json(ann_file)
    category_ids, class_names = parse_categories(data.get("categories"), ann_file, problems)
    label_of = {category_id: label for label, category_id in enumerate(category_ids)}

    images: dict[int, ImageRecord] = {}
    skipped_image_ids: set = set()
    for record in data["images"]:
        image = _parse_image(record, ann_file)
        if not isinstance(image, ImageRecord):
            problems.error(*image, action="skipped image")
            if isinstance(record, dict) and isinstance(record.get("id"), int):
                skipped_image_ids.add(record["id"])
        elif image.image_id in images:
            problems.error(
                DUPLICATE_IMAGE_ID,
                f"{ann_file}: image id={image.image_id}",
                f"duplicate image id (file_name {image.file_name!r}; the first record, "
                f"{images[image.image_id].file_name!r}, is kept with all the annotations of this id)",
                action="skipped image",
            )
        else:
            images[image.image_id] = image

    per_image: dict[int, list[tuple]] = {image_id: [] for image_id in images}
    annotations = data.get("annotations") or []
    if not annotations:
        problems.warn(NO_ANNOTATIONS, ann_file, "no annotations: every image is a negative (background) image")
    skipped_with_image = 0
    for record in annotations:
        parsed = _parse_annotation(record, images, label_of, ann_file)
        if len(parsed) == 2:
            if parsed[0] == UNKNOWN_IMAGE_ID and record.get("image_id") in skipped_image_ids:
                skipped_with_image += 1  # already reported with its image
                continue
            ann_id = record.get("id") if isinstance(record, dict) else record
            where = f"{ann_file}: annotation id={ann_id}"
            if parsed[0] == UNKNOWN_CATEGORY:
                # Lenient mode: an object of an unknown class is still an object. Dropping it would train
                # its pixels as background and score a detection on it as a false positive, so a usable box
                # becomes an ignore region of every class.
                as_known = _parse_annotation(dict(record, category_id=category_ids[0]), images, label_of, ann_file)
                if len(as_known) != 2:
                    problems.error(parsed[0], where, parsed[1], action="made an ignore region")
                    image_id, box_xyxy, _, area, _, _, _ = as_known
                    per_image[image_id].append((box_xyxy, ANY_CLASS, area, True, record.get("id", -1)))
                    continue
            problems.error(parsed[0], where, parsed[1])
            continue
        image_id, box_xyxy, label, area, iscrowd, clipped, bad_area = parsed
        per_image[image_id].append((box_xyxy, label, area, iscrowd, record.get("id", -1)))
        if bad_area:
            problems.fix(
                BAD_AREA,
                f"{ann_file}: annotation id={record.get('id')}",
                f"unusable area={record.get('area')!r}, replaced by the box's w * h = {area:g}",
                "replaced",
            )
        if clipped:
            problems.fix(
                BOX_CLIPPED,
                f"{ann_file}: annotation id={record.get('id')}",
                f"bbox {record['bbox']!r} clipped to the image",
                "clipped",
            )
    if skipped_with_image:
        problems.warn(MALFORMED_RECORD, ann_file, f"{skipped_with_image} annotations skipped with their skipped images")

    for image_id, image in images.items():
        records_from_rows(image, per_image[image_id])
    return AnnotationSet(list(images.values()), category_ids, class_names, ann_file, problems)


def write_coco(annotations: AnnotationSet, ann_file: str) -> None:
    """Write an :class:`AnnotationSet` as a COCO json (ids, category ids, ``area`` and ``iscrowd`` kept).

    Class-agnostic ignore regions (label ``-1``, e.g. from VisDrone) are written as one ``iscrowd=1`` record
    per category (COCO has no class-agnostic record, and COCO evaluation matches crowds within a category);
    :func:`read_coco` reads them back as per-category crowds.
    """
    images, records = [], []
    next_id = 1 + max((int(i.ann_ids.max()) for i in annotations.images if len(i.ann_ids)), default=0)
    for image in annotations.images:
        images.append(
            {"id": image.image_id, "file_name": image.file_name, "height": image.height, "width": image.width}
        )
        for box_xyxy, label, area, crowd, ann_id in zip(
            image.boxes_xyxy.tolist(),
            image.labels.tolist(),
            image.areas.tolist(),
            image.iscrowd.tolist(),
            image.ann_ids.tolist(),
        ):
            x1, y1, x2, y2 = box_xyxy
            for category_id in annotations.category_ids if label < 0 else [annotations.category_ids[label]]:
                if ann_id < 0 or label < 0 and category_id != annotations.category_ids[0]:
                    ann_id, next_id = next_id, next_id + 1  # no id, or the copies of a class-agnostic region
                records.append(
                    {
                        "id": ann_id,
                        "image_id": image.image_id,
                        "category_id": category_id,
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": area,
                        "iscrowd": int(crowd),
                    }
                )
    categories = [{"id": i, "name": n} for i, n in zip(annotations.category_ids, annotations.class_names)]
    with open(ann_file, "w", encoding="utf-8") as f:
        json.dump({"images": images, "annotations": records, "categories": categories}, f)


class CocoDetection(DetectionDataset):
    """A COCO-format split as a dataset: ``DetectionDataset(read_coco(ann_file, strict), images_dir, ...)``.

    Args:
        images_dir: folder the json's ``images[*].file_name`` are relative to.
        ann_file: COCO json path.
        transform: see :class:`~tod_lightning.data.dataset.DetectionDataset`.
        strict: raise on a bad record or image (``True``) or skip and count it.
    """

    def __init__(self, images_dir: str, ann_file: str, transform: Transform | None = None, strict: bool = True):
        self.ann_file = ann_file
        super().__init__(read_coco(ann_file, strict), images_dir, transform, strict=strict)
