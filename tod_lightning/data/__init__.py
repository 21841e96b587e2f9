"""Datasets, transforms, collation and the Lightning data module."""

from tod_lightning.data.coco import CocoDetection, ImageFolderDataset
from tod_lightning.data.collate import collate_detection
from tod_lightning.data.datamodule import DetectionDataModule
from tod_lightning.data.splits import CocoSplit
from tod_lightning.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.data.transforms import EvalTransform, TrainAugmentation

__all__ = [
    "CocoDetection",
    "CocoSplit",
    "DetectionDataModule",
    "EvalTransform",
    "ImageFolderDataset",
    "SyntheticSpec",
    "TrainAugmentation",
    "collate_detection",
    "ensure_synthetic_dataset",
]
