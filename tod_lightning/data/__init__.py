"""Datasets, transforms, collation and the Lightning data module.

The data module (which imports Lightning) is loaded lazily, so datasets, transforms and the synthetic
generator stay usable, and cheap to import in worker processes, without it.
"""

from tod_lightning.data.coco import CocoDetection, read_coco, write_coco
from tod_lightning.data.collate import collate_detection
from tod_lightning.data.copy_paste import TinyCopyPaste
from tod_lightning.data.dataset import DetectionDataset, ImageFolderDataset
from tod_lightning.data.mosaic import Mosaic
from tod_lightning.data.problems import AnnotationError, ProblemLog
from tod_lightning.data.records import AnnotationSet, ImageRecord
from tod_lightning.data.splits import CocoSplit, SplitSource
from tod_lightning.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.data.tiling import TileSpec
from tod_lightning.data.transforms import EvalTransform, TrainAugmentation
from tod_lightning.data.visdrone import VisDroneSplit, read_visdrone, write_visdrone
from tod_lightning.data.yolo import YoloSplit, read_yolo, write_yolo

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
    "Mosaic",
    "ProblemLog",
    "SplitSource",
    "SyntheticSpec",
    "TileSpec",
    "TinyCopyPaste",
    "TrainAugmentation",
    "VisDroneSplit",
    "YoloSplit",
    "collate_detection",
    "ensure_synthetic_dataset",
    "read_coco",
    "read_visdrone",
    "read_yolo",
    "write_coco",
    "write_visdrone",
    "write_yolo",
]


def __getattr__(name: str):
    if name == "DetectionDataModule":
        from tod_lightning.data.datamodule import DetectionDataModule

        return DetectionDataModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
