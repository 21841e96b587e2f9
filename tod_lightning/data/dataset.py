"""The detection dataset over an :class:`~tod_lightning.data.records.AnnotationSet`, whatever its file format.

A sample is a dict of numpy arrays (collated into a :class:`tod_lightning.structures.Batch` by
:func:`tod_lightning.data.collate.collate_detection`):

- ``image``: ``(H, W, 3)`` uint8 RGB after the transform.
- ``boxes_xyxy``: ``(N, 4)`` float32 pixels of the transformed image; ``labels``: ``(N,)`` int64 in ``0..K-1``.
- ``ignore_xyxy``: ``(M, 4)`` float32 pixels of the transformed image (crowds, VisDrone ignored regions,
  boxes the pipeline shrank away).
- ``image_id`` (int), ``file_name`` (str), ``orig_size`` ``(h, w)`` of the frame the ``orig_*`` fields are in.
- ``scale``: ``(sy, sx)`` transformed size / original size; it maps boxes back (``orig = box / scale``) for
  transforms that only resize.
- ``orig_boxes_xyxy`` ``(N0, 4)`` float32, ``orig_labels`` ``(N0,)`` int64 (``-1``: an ignore region of every
  class), ``orig_areas`` ``(N0,)`` float32 (the annotation ``area``), ``orig_iscrowd`` ``(N0,)`` bool: every
  annotation of the image in original pixels, ignore regions included (what evaluation scores against).
- ``num_dropped`` (int): objects the pipeline removed from ``boxes_xyxy``.

A sample whose image cannot be read when ``strict=False`` is ``{"skipped": message, "image_id", "file_name"}``;
the collate function drops it and keeps the message in ``Batch.skipped``.

Pipeline of a training sample: decode -> (tile crop) -> (mixing transforms: mosaic, copy-paste, which draw
more raw samples from the same dataset) -> transform (albumentations) -> sample.
"""

from __future__ import annotations

import abc
import os
from typing import Any, Callable, Sequence

import cv2
import numpy as np
import torch.utils.data

from tod_lightning.data.frame_groups import FrameCache
from tod_lightning.data.problems import CORRUPT_IMAGE, IMAGE_SIZE_MISMATCH, MISSING_IMAGE, ProblemLog
from tod_lightning.data.records import AnnotationSet, ImageRecord

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# transform(image, boxes_xyxy, labels, ignore_xyxy) -> dict(image, boxes_xyxy, labels, ignore_xyxy, num_dropped),
# see tod_lightning.data.transforms.
Transform = Callable[..., dict[str, Any]]

# A raw sample, before the transform: dict(image (H, W, 3) uint8, boxes_xyxy (N, 4) float32, labels (N,) int64,
# ignore_xyxy (M, 4) float32, num_dropped int), all in the pixels of ``image``.
RawSample = dict[str, Any]

# (x1, y1, x2, y2) integer pixel window of a tile in its image.
Window = tuple[int, int, int, int]


class Tiling(abc.ABC):
    """Cuts training images into tiles. Implemented by :class:`tod_lightning.data.tiling.TileSpec`; chosen in
    YAML by ``class_path`` (``data.train_tiling``)."""

    @abc.abstractmethod
    def plan(self, images: Sequence[ImageRecord]) -> list[tuple[int, Window]]:
        """The training tiles: ``(image index, window)`` pairs, fixed for the dataset's lifetime."""

    @abc.abstractmethod
    def crop(self, raw: RawSample, window: Window) -> RawSample:
        """The raw sample of one tile; objects cut by the tile border are kept, ignored or dropped (counted in
        ``num_dropped``). Its image is a new array, never a view of ``raw["image"]``: the frame may be cached
        for the frame's other tiles, and the transforms may write into their input."""


class MixTransform(abc.ABC):
    """A transform that combines a raw sample with others of the same dataset (mosaic, copy-paste), applied
    before the per-image transform. Chosen in YAML by ``class_path`` (``data.train_mixing``).

    Attributes:
        p: probability that it is applied to a sample.
        num_sources: how many other raw samples it needs (drawn uniformly at random by the dataset).
    """

    p: float
    num_sources: int

    @abc.abstractmethod
    def __call__(self, raw: RawSample, sources: list[RawSample], rng: np.random.Generator) -> RawSample:
        """The mixed raw sample. Every object of ``raw`` is either in its ``boxes_xyxy``, or in its
        ``ignore_xyxy`` / left out and counted in ``num_dropped``; objects taken from ``sources`` are added to
        the targets, and (for transforms that place whole sources, like mosaic) the sources' objects obey the
        same rule. A source may be the sample's own image (sources are drawn with replacement)."""


class ImageReadError(OSError, ValueError):
    """An image file that is missing, corrupt, or not the size its annotation file says (a bad input: both an
    ``OSError`` and a ``ValueError``, like :class:`~tod_lightning.data.problems.AnnotationError`)."""

    # (message, kind=...): torch re-raises a worker's exception as ``type(message)``, so the message must come
    # first and alone for the type to survive data-loader worker processes.
    def __init__(self, message: str, kind: str = CORRUPT_IMAGE):
        super().__init__(message)
        self.kind = kind


def read_image_rgb(path: str) -> np.ndarray:
    """Decode an image file to ``(H, W, 3)`` uint8 RGB; raise :class:`ImageReadError` naming ``path``."""
    # IGNORE_ORIENTATION: annotations are in the stored pixel grid (what image headers report); applying a
    # JPEG's EXIF rotation would silently move every box of a 180-degree-flagged image.
    image_bgr = cv2.imread(path, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image_bgr is None:
        if os.path.exists(path):
            raise ImageReadError(f"cannot read image {path}: corrupt or not an image", kind=CORRUPT_IMAGE)
        raise ImageReadError(f"cannot read image {path}: file not found", kind=MISSING_IMAGE)
    return cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)


def make_sample(
    transform: Transform | None,
    raw: RawSample,
    image_id: int,
    file_name: str,
    orig: ImageRecord,
    orig_size: tuple[int, int],
) -> dict[str, Any]:
    """Run the transform on a raw sample and assemble the sample dict (see the module docstring).

    ``orig`` holds the annotations evaluation scores against, in a frame of ``orig_size`` pixels (the image
    for whole images; the tile for tiles).
    """
    if transform is None:
        out = dict(raw)
    else:
        out = transform(
            image=raw["image"], boxes_xyxy=raw["boxes_xyxy"], labels=raw["labels"], ignore_xyxy=raw["ignore_xyxy"]
        )
        out["num_dropped"] = out["num_dropped"] + raw.get("num_dropped", 0)
    orig_h, orig_w = orig_size
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
        "orig_boxes_xyxy": orig.boxes_xyxy,
        "orig_labels": orig.labels,
        "orig_areas": orig.areas,
        "orig_iscrowd": orig.iscrowd,
        "num_dropped": int(out.get("num_dropped", 0)),
    }


class DetectionDataset(torch.utils.data.Dataset):
    """Samples of an annotated split: decode, optionally tile and mix, transform.

    Args:
        annotations: the parsed split (its ``images[*].file_name`` are relative to ``images_dir``). A record
            with ``height == width == 0`` has an unknown size (a bare image folder): the size check is skipped.
        images_dir: the images folder.
        transform: ``transform(image, boxes_xyxy, labels, ignore_xyxy) -> dict`` (see
            :mod:`tod_lightning.data.transforms`), or ``None`` for the raw sample as is.
        strict: an image that is missing, corrupt or of the wrong size raises :class:`ImageReadError` naming
            the file and the image id (``True``), or yields a skipped sample that the collate function drops
            and counts (``False``).
        tiling: if set, the samples are the tiles it plans (training on tiles of large images).
        mixing: transforms that combine each raw sample with others of this dataset (mosaic, copy-paste).
        seed: seed of the dataset's own random stream (mixing draws); reseeded per worker by the data module.
        frame_cache: with ``tiling``, the number of decoded frames kept for their other tiles
            (:class:`~tod_lightning.data.frame_groups.FrameCache`, one per loader worker; ``frames``); pair it
            with a :class:`~tod_lightning.data.frame_groups.FrameGroupedSampler` of as many frames per group.
            0 decodes the frame for every tile.
    """

    def __init__(
        self,
        annotations: AnnotationSet,
        images_dir: str,
        transform: Transform | None = None,
        strict: bool = True,
        tiling: Tiling | None = None,
        mixing: Sequence[MixTransform] = (),
        seed: int = 0,
        frame_cache: int = 0,
    ):
        self.annotations, self.images_dir, self.transform, self.strict = annotations, images_dir, transform, strict
        self.tiling, self.mixing = tiling, list(mixing)
        self.rng = np.random.default_rng(seed)
        self.frames = FrameCache(frame_cache if tiling is not None else 0)  # whole images: no reuse in an epoch
        self.index: list[tuple[int, Window | None]] = (
            tiling.plan(annotations.images)
            if tiling is not None
            else [(i, None) for i in range(len(annotations.images))]
        )

    # ------------------------------------------------------------------------------- properties
    @property
    def records(self) -> list[ImageRecord]:
        return self.annotations.images

    @property
    def category_ids(self) -> list[int]:
        return self.annotations.category_ids

    @property
    def class_names(self) -> list[str]:
        return self.annotations.class_names

    @property
    def num_classes(self) -> int:
        return self.annotations.num_classes

    @property
    def problems(self) -> ProblemLog:
        return self.annotations.problems

    @property
    def num_clipped(self) -> int:
        return self.annotations.problems.count("box_clipped")

    def summary(self) -> dict[str, int]:
        """Counts for logging (see :meth:`AnnotationSet.summary`), plus ``tiles`` when tiling."""
        out = self.annotations.summary()
        if self.tiling is not None:
            out["tiles"] = len(self.index)
        return out

    def set_seed(self, seed: int) -> None:
        """Reseed the mixing draws and the transform's stream (one call per data-loader worker)."""
        self.rng = np.random.default_rng(seed)
        if hasattr(self.transform, "set_seed"):
            self.transform.set_seed(seed)

    def __len__(self) -> int:
        return len(self.index)

    # ------------------------------------------------------------------------------- loading
    def read_image(self, record: ImageRecord) -> np.ndarray:
        """Decode ``record``'s image and check its size against the annotation; raises :class:`ImageReadError`."""
        path = os.path.join(self.images_dir, record.file_name)
        image_rgb = read_image_rgb(path)
        if record.height and record.width and image_rgb.shape[:2] != (record.height, record.width):
            raise ImageReadError(
                f"{path}: decoded size {image_rgb.shape[:2]} (h, w) differs from {self.annotations.source} "
                f"image id={record.image_id} ({record.height}, {record.width})",
                kind=IMAGE_SIZE_MISMATCH,
            )
        return image_rgb

    def load_raw(self, index: int) -> tuple[RawSample, ImageRecord, tuple[int, int]]:
        """Sample ``index`` before mixing and transform: ``(raw, orig annotations, orig frame size)``."""
        image_index, window = self.index[index]
        record = self.annotations.images[image_index]
        # Tiling.crop copies, so a cached frame is never handed on (the transforms may write into their input).
        image_rgb = self.frames.get(image_index, lambda: self.read_image(record))
        is_object = ~record.iscrowd
        raw = {
            "image": image_rgb,
            "boxes_xyxy": record.boxes_xyxy[is_object],
            "labels": record.labels[is_object],
            "ignore_xyxy": record.boxes_xyxy[record.iscrowd],
            "num_dropped": 0,
        }
        if window is None:
            return raw, record, image_rgb.shape[:2]
        raw = self.tiling.crop(raw, window)
        # Tiles are training samples: their "original" annotations are the tile's own, in tile pixels.
        n = len(raw["boxes_xyxy"])
        tile = ImageRecord(
            record.image_id,
            record.file_name,
            *raw["image"].shape[:2],
            boxes_xyxy=np.concatenate([raw["boxes_xyxy"], raw["ignore_xyxy"]]).astype(np.float32),
            labels=np.concatenate([raw["labels"], np.full(len(raw["ignore_xyxy"]), -1)]).astype(np.int64),
            iscrowd=np.arange(n + len(raw["ignore_xyxy"])) >= n,
            ann_ids=np.full(n + len(raw["ignore_xyxy"]), -1, np.int64),  # tile pieces are not file records
        )
        wh = tile.boxes_xyxy[:, 2:] - tile.boxes_xyxy[:, :2]
        tile.areas = (wh[:, 0] * wh[:, 1]).astype(np.float32)
        return raw, tile, raw["image"].shape[:2]

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_index, _ = self.index[index]
        record = self.annotations.images[image_index]
        try:
            raw, orig, orig_size = self.load_raw(index)
            for mix in self.mixing:
                if mix.p > 0 and self.rng.random() < mix.p:
                    sources = [self.load_raw(int(j))[0] for j in self.rng.integers(len(self), size=mix.num_sources)]
                    raw = mix(raw, sources, self.rng)
        except ImageReadError as error:
            if self.strict:
                if "image id=" in str(error):
                    raise
                raise ImageReadError(f"{error} (image id={record.image_id})", kind=error.kind) from None
            return {
                "skipped": f"{error} [{error.kind}; skipped image]",
                "image_id": record.image_id,
                "file_name": record.file_name,
            }
        return make_sample(self.transform, raw, record.image_id, record.file_name, orig, orig_size)


class ImageFolderDataset(DetectionDataset):
    """The images of a bare folder (no annotations) for predict, as samples with no boxes.

    Files with an extension in :data:`IMAGE_EXTENSIONS` (any case), sorted by name, not recursive;
    ``image_id`` is the 1-based position in that order.

    Args:
        images_dir: the folder.
        transform: as for :class:`DetectionDataset` (normally an ``EvalTransform``).
        strict: as for :class:`DetectionDataset`.
    """

    def __init__(self, images_dir: str, transform: Transform | None = None, strict: bool = True):
        if not os.path.isdir(images_dir):
            raise ValueError(f"{images_dir}: not a folder")
        self.file_names = sorted(f for f in os.listdir(images_dir) if f.lower().endswith(IMAGE_EXTENSIONS))
        if not self.file_names:
            raise ValueError(f"{images_dir}: no image files ({', '.join(IMAGE_EXTENSIONS)})")
        records = [ImageRecord(i + 1, name, 0, 0) for i, name in enumerate(self.file_names)]  # size: unknown
        super().__init__(AnnotationSet(records, [], [], images_dir, ProblemLog(strict)), images_dir, transform, strict)

    def summary(self) -> dict[str, int]:
        return {"images": len(self.file_names)}
