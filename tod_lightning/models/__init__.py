"""Models: plain torch modules (no Lightning), usable for inference and export on their own."""

from tod_lightning.models.backbone import Backbone, TimmBackbone
from tod_lightning.models.detector import Detector
from tod_lightning.models.heads import DenseHead
from tod_lightning.models.ipg import IPGBackbone
from tod_lightning.models.necks import FPN, Neck
from tod_lightning.models.postprocess import PostProcessor
from tod_lightning.models.sliced import SlicedInference

__all__ = [
    "Backbone",
    "DenseHead",
    "Detector",
    "FPN",
    "IPGBackbone",
    "Neck",
    "PostProcessor",
    "SlicedInference",
    "TimmBackbone",
]
