"""Where a dataset split lives on disk, and in which format. No torch, no Lightning: these are config types.

A split is chosen in YAML by ``class_path`` (``tod_lightning.data.CocoSplit``, ``tod_lightning.data.VisDroneSplit``,
``tod_lightning.data.YoloSplit``); each knows how to read its files into an
:class:`~tod_lightning.data.records.AnnotationSet`.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tod_lightning.data.records import AnnotationSet


class SplitSource(abc.ABC):
    """An annotated split on disk. Subclasses are frozen dataclasses with an ``images_dir`` field."""

    images_dir: str

    @abc.abstractmethod
    def load(self, strict: bool = True) -> "AnnotationSet":
        """Read and validate the whole split (``strict=False``: skip and count bad records instead of raising)."""

    @abc.abstractmethod
    def categories(self) -> tuple[list[int], list[str]]:
        """``(category_ids, class_names)`` in label order, read as cheaply as the format allows."""

    @property
    def source(self) -> str:
        """The annotation file or folder, for messages."""
        return self.images_dir


@dataclass(frozen=True)
class CocoSplit(SplitSource):
    """A COCO-format split (AI-TOD's json is COCO): a folder of images and one json whose ``file_name``s are
    relative to that folder.

    Attributes:
        images_dir: folder the json's ``images[*].file_name`` are relative to.
        ann_file: path of the COCO json (``images``, ``annotations``, ``categories``).
    """

    images_dir: str
    ann_file: str

    def load(self, strict: bool = True) -> "AnnotationSet":
        from tod_lightning.data.coco import read_coco

        return read_coco(self.ann_file, strict=strict)

    def categories(self) -> tuple[list[int], list[str]]:
        from tod_lightning.data.coco import read_categories

        return read_categories(self.ann_file)

    @property
    def source(self) -> str:
        return self.ann_file
