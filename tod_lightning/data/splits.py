"""Where a dataset split lives on disk. No torch, no Lightning: it is also a config type."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CocoSplit:
    """A COCO-format split: a folder of images and one COCO json whose `file_name`s are relative to that folder.

    Attributes:
        images_dir: folder the json's ``images[*].file_name`` are relative to.
        ann_file: path of the COCO json (``images``, ``annotations``, ``categories``).
    """

    images_dir: str
    ann_file: str
