"""Datasets, transforms, collation and the Lightning data module.

The data module (which imports Lightning) is loaded lazily, so datasets, transforms and the synthetic
generator stay usable, and cheap to import in worker processes, without it.
"""

from tod_lightning.data.coco import CocoDetection, read_coco, write_coco
from tod_lightning.data.collate import collate_detection
from tod_lightning.data.dataset import DetectionDataset, ImageFolderDataset
from tod_lightning.data.problems import AnnotationError, ProblemLog
from tod_lightning.data.records import AnnotationSet, ImageRecord
from tod_lightning.data.splits import CocoSplit, SplitSource
from tod_lightning.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.data.transforms import EvalTransform, TrainAugmentation

__all__ = [
    "AnnotationError",
    "AnnotationSet",
    "CocoDetection",
    "CocoSplit",
    "DetectionDataModule",
    "DetectionDataset",
    "EvalTransform",
    "ImageFolderDataset",
    "ImageRecord",
    "ProblemLog",
    "SplitSource",
    "SyntheticSpec",
    "TrainAugmentation",
    "collate_detection",
    "ensure_synthetic_dataset",
    "read_coco",
    "write_coco",
]


def __getattr__(name: str):
    if name == "DetectionDataModule":
        from tod_lightning.data.datamodule import DetectionDataModule

        return DetectionDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
