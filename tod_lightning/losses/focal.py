"""Sigmoid focal loss (Lin et al., ICCV 2017), via torchvision."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss


class FocalLoss(nn.Module):
    """Element-wise sigmoid focal loss; ``forward(logits, targets) -> same shape`` (unreduced)."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma, reduction="none")
