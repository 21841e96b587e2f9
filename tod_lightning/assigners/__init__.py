"""Label assignment with an injectable similarity."""

from tod_lightning.assigners.atss import IGNORE, NEGATIVE, AssignResult, ATSSAssigner
from tod_lightning.assigners.similarity import BoxSimilarity, IoUSimilarity, NWDSimilarity

__all__ = ["ATSSAssigner", "AssignResult", "BoxSimilarity", "IGNORE", "IoUSimilarity", "NEGATIVE", "NWDSimilarity"]
