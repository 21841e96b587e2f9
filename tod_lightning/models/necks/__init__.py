"""Necks: the FPN and the feature enhancers. Every class in ``__all__`` joins the neck contract test."""

from tod_lightning.models.necks.base import Neck, NeckFactory
from tod_lightning.models.necks.fpn import FPN

__all__ = ["FPN"]
