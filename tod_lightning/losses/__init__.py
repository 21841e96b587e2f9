"""Losses and the criterion. Box losses in ``BOX_LOSSES`` join the box-loss contract test."""

from tod_lightning.losses.criterion import AuxiliaryLoss, DetectionCriterion, PositiveWeighting
from tod_lightning.losses.dcloss import DCLoss
from tod_lightning.losses.focal import FocalLoss
from tod_lightning.losses.iou_loss import CIoULoss, DIoULoss, GIoULoss
from tod_lightning.losses.reconstruction import ReconstructionLoss

__all__ = [
    "AuxiliaryLoss",
    "CIoULoss",
    "DCLoss",
    "DIoULoss",
    "DetectionCriterion",
    "FocalLoss",
    "GIoULoss",
    "PositiveWeighting",
    "ReconstructionLoss",
]
