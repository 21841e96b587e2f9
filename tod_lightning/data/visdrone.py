"""VisDrone-DET annotations: the split type, the reader and the writer; and what every txt format shares.

A VisDrone-DET split is a folder of images and a folder of ``<image stem>.txt`` files, one line per record:
``bbox_left,bbox_top,bbox_width,bbox_height,score,object_category,truncation,occlusion`` (integers, pixels).
Category 0 ("ignored regions") and 11 ("others") are ignore regions, not objects; in a ground-truth file a
``score`` of 0 marks a record the official toolkit ignores in evaluation.

The helpers shared with :mod:`tod_lightning.data.yolo` (listing images, reading their size from the header,
pairing images with txt files, parsing a numeric table line by line, the box checks) live here too, so both
txt formats report bad input the same way: ``where`` is ``<txt path>:<line number>`` or the image path.
No torch, no Lightning.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from PIL import Image

from tod_lightning.data.dataset import IMAGE_EXTENSIONS
from tod_lightning.data.problems import (
    BOX_CLIPPED,
    BOX_OUTSIDE_IMAGE,
    CORRUPT_IMAGE,
    DUPLICATE_IMAGE_ID,
    MALFORMED_FILE,
    MALFORMED_RECORD,
    MISSING_IMAGE,
    NO_ANNOTATIONS,
    NON_FINITE_BOX,
    NON_POSITIVE_BOX,
    UNKNOWN_CATEGORY,
    AnnotationError,
    ProblemLog,
)
from tod_lightning.data.records import ANY_CLASS, AnnotationSet, ImageRecord
from tod_lightning.data.splits import SplitSource

# The 10 VisDrone-DET object classes, category ids 1..10 in this order.
VISDRONE_CLASSES = (
    "pedestrian",
    "people",
    "bicycle",
    "car",
    "van",
    "truck",
    "tricycle",
    "awning-tricycle",
    "bus",
    "motor",
)
IGNORED_REGIONS, OTHERS = 0, 11  # the two VisDrone categories that are not objects
VISDRONE_COLUMNS = (
    "bbox_left",
    "bbox_top",
    "bbox_width",
    "bbox_height",
    "score",
    "object_category",
    "truncation",
    "occlusion",
)
# ImageRecord.extra keys a VisDrone read fills (per annotation, int64): what the writer needs to reproduce a file.
VISDRONE_EXTRA = ("score", "category", "truncation", "occlusion")


@dataclass(frozen=True)
class VisDroneSplit(SplitSource):
    """A VisDrone-DET split: a folder of images and a folder of ``<image stem>.txt`` annotation files.

    Attributes:
        images_dir: the images (``.png .jpg .jpeg .tif .tiff .bmp``, any case; not recursive).
        annotations_dir: one ``<image stem>.txt`` per image.
        class_names: names of the object categories ``1..K`` in id order (default: the 10 VisDrone-DET classes).
        ignore_categories: categories read as class-agnostic ignore regions (default 0 "ignored regions" and
            11 "others", as the official toolkit ignores them).
    """

    images_dir: str
    annotations_dir: str
    class_names: tuple[str, ...] = VISDRONE_CLASSES
    ignore_categories: tuple[int, ...] = (IGNORED_REGIONS, OTHERS)

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))  # configs give lists
        object.__setattr__(self, "ignore_categories", tuple(int(c) for c in self.ignore_categories))
        _check_categories(self.class_names, self.ignore_categories)

    def load(self, strict: bool = True) -> AnnotationSet:
        return read_visdrone(self.images_dir, self.annotations_dir, self.class_names, self.ignore_categories, strict)

    def categories(self) -> tuple[list[int], list[str]]:
        return list(range(1, len(self.class_names) + 1)), list(self.class_names)

    @property
    def source(self) -> str:
        return self.annotations_dir


def _check_categories(class_names: Sequence[str], ignore_categories: Sequence[int]) -> None:
    if not class_names:
        raise ValueError("class_names is empty")
    overlap = sorted(set(ignore_categories) & set(range(1, len(class_names) + 1)))
    if overlap:
        raise ValueError(f"ignore_categories {overlap} are also object categories 1..{len(class_names)}")


# ------------------------------------------------------------------------------ shared by the txt formats
@dataclass
class PairedImage:
    """An image of a txt-format split and its annotation file (``None``: there is none)."""

    image_id: int
    file_name: str
    path: str
    height: int
    width: int
    txt_path: str | None


def list_image_files(images_dir: str) -> list[str]:
    """Image file names of ``images_dir`` (extensions :data:`IMAGE_EXTENSIONS`, any case), sorted, not
    recursive. A missing folder or one without images is fatal (:class:`AnnotationError` naming it)."""
    if not os.path.isdir(images_dir):
        raise AnnotationError(f"{images_dir}: images folder not found")
    names = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
        raise AnnotationError(f"{images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
    return names


def read_image_size(path: str) -> tuple[int, int]:
    """``(height, width)`` in pixels from the image header, without decoding the pixels (PIL opens lazily).

    Raises ``OSError`` (PIL's ``UnidentifiedImageError`` is one) when the header cannot be read.
    """
    with Image.open(path) as image:
        width, height = image.size
    return height, width


def pair_images_and_txt(
    images_dir: str, txt_dir: str, problems: ProblemLog, skip_names: Sequence[str] = ()
) -> list[PairedImage]:
    """Every readable image of ``images_dir`` with its ``<stem>.txt`` of ``txt_dir``, in sorted file order.

    ``image_id`` is the 1-based position in the sorted list of ALL image files (so ids do not move when an
    image is skipped). Reported through ``problems``:

    - a txt file without an image: error ``missing_image`` (the file is skipped);
    - an image without a txt file: warning ``no_annotations`` (kept as an image with no objects);
    - an image whose header cannot be read: error ``corrupt_image`` (skipped with its txt file);
    - two images with the same stem (``a.jpg``, ``a.png``): error ``duplicate_image_id`` (the second skipped).

    Fatal (:class:`AnnotationError` naming the folder, in both modes): a missing folder, no image, no txt file.
    ``skip_names``: txt names that are not annotation files (warned about and skipped when they have no image).
    """
    file_names = list_image_files(images_dir)
    if not os.path.isdir(txt_dir):
        raise AnnotationError(f"{txt_dir}: annotations folder not found")
    txt_names = sorted(f for f in os.listdir(txt_dir) if f.lower().endswith(".txt"))
    if not txt_names:
        raise AnnotationError(f"{txt_dir}: empty annotations folder (no .txt file)")
    txt_by_stem = {name[: -len(".txt")]: name for name in txt_names}

    paired: list[PairedImage] = []
    seen_stems: dict[str, str] = {}
    for image_id, file_name in enumerate(file_names, 1):
        path = os.path.join(images_dir, file_name)
        stem = os.path.splitext(file_name)[0]
        if stem in seen_stems:
            problems.error(
                DUPLICATE_IMAGE_ID,
                path,
                f"shares the stem {stem!r} with {seen_stems[stem]!r}: {stem}.txt cannot name both",
                "skipped image",
            )
            continue
        seen_stems[stem] = file_name
        try:
            height, width = read_image_size(path)
        except OSError as e:
            problems.error(CORRUPT_IMAGE, path, f"cannot read the image header ({e})", "skipped image")
            continue
        txt_name = txt_by_stem.get(stem)
        txt_path = os.path.join(txt_dir, txt_name) if txt_name else None
        if txt_path is None:
            problems.warn(NO_ANNOTATIONS, path, f"no annotation file {os.path.join(txt_dir, stem + '.txt')}")
        paired.append(PairedImage(image_id, file_name, path, height, width, txt_path))
    for stem, txt_name in txt_by_stem.items():
        if stem in seen_stems:
            continue
        txt_path = os.path.join(txt_dir, txt_name)
        if txt_name in skip_names:
            problems.warn(MALFORMED_FILE, txt_path, "not an annotation file (no image of that name): skipped")
        else:
            problems.error(MISSING_IMAGE, txt_path, f"no image {stem}.* in {images_dir}", "skipped file")
    return paired


def read_txt(path: str, problems: ProblemLog) -> str | None:
    """The text of an annotation file, or ``None`` after an error ``malformed_file`` (unreadable or not UTF-8:
    its image is skipped, since keeping it without its objects would teach them as background)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as e:
        problems.error(MALFORMED_FILE, path, f"cannot read the annotation file ({e})", "skipped image")
        return None


def parse_table(
    text: str, path: str, num_columns: int, sep: str | None, problems: ProblemLog
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The numeric rows of a txt annotation file.

    Blank lines are skipped; one trailing separator is tolerated (``1,2,...,0,``). A line with another number
    of columns, or a field that is not a number, is an error ``malformed_record`` of ``problems``
    (``where`` = ``path:line``).

    Args:
        sep: the column separator (``","``), or ``None`` for runs of whitespace.

    Returns:
        ``values`` ``(L, num_columns)`` float64 (NaN / inf kept: the caller checks them), ``line_numbers``
        ``(L,)`` int64 (1-based, counting blank lines) and the ``L`` stripped lines (for messages).
    """
    rows, numbers, lines = [], [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        fields = line.split(sep)
        if sep is not None and len(fields) == num_columns + 1 and not fields[-1].strip():
            fields.pop()  # a trailing separator
        if len(fields) != num_columns:
            problems.error(
                MALFORMED_RECORD, f"{path}:{number}", f"expected {num_columns} columns, got {len(fields)}: {line!r}"
            )
            continue
        rows.append(fields)
        numbers.append(number)
        lines.append(line)
    try:
        values = np.array(rows, np.float64).reshape(-1, num_columns)  # (L, C)
    except ValueError:  # some field is not a number: find which rows, row by row (only on bad files)
        keep = []
        for i, fields in enumerate(rows):
            try:
                rows[i] = [float(f) for f in fields]
                keep.append(i)
            except ValueError:
                problems.error(MALFORMED_RECORD, f"{path}:{numbers[i]}", f"non-numeric field: {lines[i]!r}")
        values = np.array([rows[i] for i in keep], np.float64).reshape(-1, num_columns)
        numbers, lines = [numbers[i] for i in keep], [lines[i] for i in keep]
    return values, np.array(numbers, np.int64), lines


def check_boxes(
    boxes_xyxy: np.ndarray,
    height: int,
    width: int,
    path: str,
    line_numbers: np.ndarray,
    lines: list[str],
    problems: ProblemLog,
    format_checks: Sequence[tuple[np.ndarray, str, str]] = (),
    clip_tolerance: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Validate the rows of one txt file and clip their boxes to the image.

    Each row gets the first problem that applies, in this order: ``format_checks`` (``(bad mask, kind,
    description)``, the format's own: non-finite box, non-integer value, unknown category...), then a
    non-positive width or height, then a box entirely outside the image; each is an error of ``problems``
    (``where`` = ``path:line``). A box partly outside is clipped to the image (a counted fix ``box_clipped``).

    Args:
        boxes_xyxy: ``(L, 4)`` float64 pixels as written in the file (NaN allowed: flagged by a format check).
        clip_tolerance: overshoot (pixels) clipped WITHOUT a report: the rounding of formats that store
            normalised coordinates with a few decimals, not an annotation mistake.

    Returns:
        ``keep`` ``(L,)`` bool (the usable rows) and ``boxes_xyxy`` ``(L, 4)`` float64, clipped.
    """
    with np.errstate(invalid="ignore"):  # NaN / inf rows: already caught by the format's checks
        positive = (boxes_xyxy[:, 2] > boxes_xyxy[:, 0]) & (boxes_xyxy[:, 3] > boxes_xyxy[:, 1])
        clipped = np.clip(boxes_xyxy, 0.0, np.array([width, height, width, height], np.float64))  # (L, 4)
        inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        changed = (np.abs(clipped - boxes_xyxy) > clip_tolerance).any(1)
    checks = [
        *format_checks,
        (~positive, NON_POSITIVE_BOX, "non-positive width or height"),
        (~inside, BOX_OUTSIDE_IMAGE, f"box entirely outside the image ({width}x{height})"),
    ]
    bad = np.zeros(len(boxes_xyxy), bool)
    for mask, kind, description in checks:
        new = mask & ~bad
        for i in np.flatnonzero(new):  # only the bad rows: a loop over reports, not over boxes
            problems.error(kind, f"{path}:{line_numbers[i]}", f"{description}: {lines[i]!r}")
        bad |= new
    for i in np.flatnonzero(changed & ~bad):
        problems.fix(
            BOX_CLIPPED, f"{path}:{line_numbers[i]}", f"box clipped to the image ({width}x{height})", "clipped"
        )
    return ~bad, clipped


def unknown_as_ignore(
    unknown: np.ndarray,
    keep: np.ndarray,
    path: str,
    line_numbers: np.ndarray,
    lines: list[str],
    problems: ProblemLog,
    description: str,
) -> np.ndarray:
    """Lenient mode: the usable rows of an unknown category become class-agnostic ignore regions, as in
    :func:`~tod_lightning.data.coco.read_coco`. An object of an unknown class is still an object: dropping it
    would train its pixels as background and score a detection on it as a false positive. Each is reported
    (``unknown_category``, action "made an ignore region"). Returns ``(L,)`` bool: those rows."""
    made = keep & unknown
    for i in np.flatnonzero(made):  # only the unknown rows: a loop over reports, not over boxes
        problems.error(
            UNKNOWN_CATEGORY, f"{path}:{line_numbers[i]}", f"{description}: {lines[i]!r}", "made an ignore region"
        )
    return made


# ------------------------------------------------------------------------------------------ VisDrone
def read_visdrone(
    images_dir: str,
    annotations_dir: str,
    class_names: Sequence[str] = VISDRONE_CLASSES,
    ignore_categories: Sequence[int] = (IGNORED_REGIONS, OTHERS),
    strict: bool = True,
) -> AnnotationSet:
    """Read and validate a VisDrone-DET split into an :class:`AnnotationSet`.

    Mapping: object category ``c`` in ``1..K`` (``K = len(class_names)``) is label ``c - 1`` (``category_ids``
    ``1..K``). A record of a category in ``ignore_categories`` is a class-agnostic ignore region
    (``iscrowd=True``, label :data:`~tod_lightning.data.records.ANY_CLASS`). An object record with
    ``score == 0`` (ignored in evaluation by the official toolkit) is an ignore region of its own class
    (``iscrowd=True``, label ``c - 1``, COCO's crowd). Image ids are the 1-based position in the sorted image
    files of ``images_dir``; sizes come from the image headers; ``ann_ids`` are 1-based line numbers;
    ``extra`` keeps ``score``, ``category``, ``truncation`` and ``occlusion`` for :func:`write_visdrone`.

    Bad input (see :func:`pair_images_and_txt` and :func:`check_boxes`; ``where`` = ``<txt path>:<line>`` or
    the image path) raises :class:`AnnotationError` when ``strict``, else is skipped and counted: a line
    without 8 columns or with a non-number (``malformed_record``), a non-finite box (``non_finite_box``), a
    non-integer value (``malformed_record``), a non-positive size, a box entirely outside the image. A box
    partly outside is clipped (a counted fix). An unknown category (``unknown_category``) raises when
    ``strict``; in lenient mode a usable box of it becomes a class-agnostic ignore region (counted, as
    :func:`~tod_lightning.data.coco.read_coco` does), written back with its category by :func:`write_visdrone`.
    """
    _check_categories(class_names, ignore_categories)
    problems = ProblemLog(strict)
    num_classes = len(class_names)
    object_ids, ignore_ids = np.arange(1, num_classes + 1), np.asarray(list(ignore_categories), np.int64)
    known = f"objects 1..{num_classes}, ignore regions {sorted(int(c) for c in ignore_ids)}"
    images = []
    for paired in pair_images_and_txt(images_dir, annotations_dir, problems):
        record = ImageRecord(paired.image_id, paired.file_name, paired.height, paired.width)
        text = "" if paired.txt_path is None else read_txt(paired.txt_path, problems)
        if text is None:
            continue
        values, numbers, lines = parse_table(text, paired.txt_path, len(VISDRONE_COLUMNS), ",", problems)  # (L, 8)
        left, top, box_w, box_h = values[:, :4].T
        category = values[:, 5]
        boxes_xyxy = np.stack([left, top, left + box_w, top + box_h], 1)  # (L, 4)
        with np.errstate(invalid="ignore"):
            integral = (np.isfinite(values) & (values == np.round(values))).all(1)
            unknown = ~np.isin(category, object_ids) & ~np.isin(category, ignore_ids)
            format_checks = [
                (~np.isfinite(values[:, :4]).all(1), NON_FINITE_BOX, "non-finite box"),
                (~integral, MALFORMED_RECORD, "non-integer or non-finite value"),
            ]
        if strict:  # an error at its place among the checks; lenient: an ignore region below
            format_checks.append((unknown, UNKNOWN_CATEGORY, f"unknown category ({known})"))
        path = paired.txt_path or ""
        keep, boxes_xyxy = check_boxes(
            boxes_xyxy, paired.height, paired.width, path, numbers, lines, problems, format_checks
        )
        as_ignore = (
            np.zeros_like(keep)
            if strict
            else unknown_as_ignore(unknown, keep, path, numbers, lines, problems, f"unknown category ({known})")
        )
        values, boxes_xyxy = values[keep].astype(np.int64), boxes_xyxy[keep]  # (N, 8), (N, 4)
        ignore = np.isin(values[:, 5], ignore_ids) | as_ignore[keep]
        wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]
        record.boxes_xyxy = boxes_xyxy.astype(np.float32)
        record.labels = np.where(ignore, ANY_CLASS, values[:, 5] - 1).astype(np.int64)
        record.areas = (wh[:, 0] * wh[:, 1]).astype(np.float32)
        record.iscrowd = ignore | (values[:, 4] == 0)
        record.ann_ids = numbers[keep]
        record.extra = dict(zip(VISDRONE_EXTRA, (values[:, 4], values[:, 5], values[:, 6], values[:, 7])))
        images.append(record)
    return AnnotationSet(images, list(range(1, num_classes + 1)), list(class_names), annotations_dir, problems)


def _extra_column(image: ImageRecord, key: str, default: np.ndarray) -> np.ndarray:
    column = image.extra.get(key)
    if column is None:
        return default
    if len(column) != len(image.labels):
        raise ValueError(f"image id={image.image_id}: extra[{key!r}] has {len(column)} values for {len(image.labels)}")
    return np.asarray(column, np.int64)


def write_visdrone(annotations: AnnotationSet, annotations_dir: str) -> None:
    """Write an :class:`AnnotationSet` as VisDrone-DET txt files: ``<annotations_dir>/<image stem>.txt``.

    Every image gets a file (an empty one when it has no record), one line per record in record order,
    ``\\n`` line ends and a final newline. Box corners are rounded to whole pixels (the format is integer).
    ``object_category`` is label + 1 for an object or an ignore region of one class, and for a class-agnostic
    ignore region ``image.extra["category"]`` (0 or 11, as read) or 0. The other columns come from
    ``image.extra`` when it has them (a set read by :func:`read_visdrone`), else: ``score`` = 0 for an ignore
    region and 1 otherwise, ``truncation`` = ``occlusion`` = 0. A set read by :func:`read_visdrone` from valid
    files in this layout is written back byte for byte.
    """
    for image in annotations.images:
        boxes_xyxy = np.rint(image.boxes_xyxy.astype(np.float64)).astype(np.int64).reshape(-1, 4)  # (N, 4)
        wh = np.maximum(boxes_xyxy[:, 2:] - boxes_xyxy[:, :2], 1)  # (N, 2); a sub-pixel box stays 1 px
        labels = image.labels.astype(np.int64)
        zeros = np.zeros(len(labels), np.int64)
        columns = np.stack(
            [
                boxes_xyxy[:, 0],
                boxes_xyxy[:, 1],
                wh[:, 0],
                wh[:, 1],
                _extra_column(image, "score", np.where(image.iscrowd, 0, 1)),
                # objects: from the label (so a relabelled set is written right); agnostic regions: 0 or 11
                np.where(labels == ANY_CLASS, _extra_column(image, "category", zeros + IGNORED_REGIONS), labels + 1),
                _extra_column(image, "truncation", zeros),
                _extra_column(image, "occlusion", zeros),
            ],
            1,
        )  # (N, 8)
        path = os.path.join(annotations_dir, os.path.splitext(image.file_name)[0] + ".txt")
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.write("".join(",".join(map(str, row)) + "\n" for row in columns.tolist()))


__all__ = ["VISDRONE_CLASSES", "VisDroneSplit", "read_visdrone", "write_visdrone"]
