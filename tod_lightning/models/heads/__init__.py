"""Dense heads: predict only; losses live in :mod:`tod_lightning.losses`."""

from tod_lightning.models.heads.dense_head import DenseHead
from tod_lightning.models.heads.dense_head import HeadFactory as HeadFactory

__all__ = ["DenseHead"]
