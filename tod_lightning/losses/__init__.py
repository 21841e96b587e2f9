"""Losses and the criterion. Box losses in ``BOX_LOSSES`` join the box-loss contract test."""

from tod_lightning.losses.criterion import AuxiliaryLoss, DetectionCriterion, PositiveWeighting
from tod_lightning.losses.focal import FocalLoss
from tod_lightning.losses.iou_loss import CIoULoss, DIoULoss, GIoULoss

__all__ = ["AuxiliaryLoss", "CIoULoss", "DIoULoss", "DetectionCriterion", "FocalLoss", "GIoULoss", "PositiveWeighting"]
