"""Necks: the FPN and the feature enhancers. Every class in ``__all__`` joins the neck contract test."""

# The base class and the factory type are importable from here but stay out of ``__all__``, which lists
# only the concrete necks that the contract test iterates.
from tod_lightning.models.necks.base import Neck as Neck
from tod_lightning.models.necks.base import NeckFactory as NeckFactory
from tod_lightning.models.necks.cem import CEM
from tod_lightning.models.necks.fbsm import FBSM
from tod_lightning.models.necks.fpn import FPN
from tod_lightning.models.necks.sgdm import SGDM
from tod_lightning.models.necks.srtod import SRTOD

__all__ = ["CEM", "FBSM", "FPN", "SGDM", "SRTOD"]
