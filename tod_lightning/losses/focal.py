"""Sigmoid focal loss (Lin et al., ICCV 2017), via torchvision."""

from __future__ import annotations

from torch import Tensor, nn
from torchvision.ops import sigmoid_focal_loss


class FocalLoss(nn.Module):
    """Element-wise sigmoid focal loss; ``forward(logits, targets) -> same shape`` (unreduced), float32."""

    def __init__(self, alpha: float = 0.25, gamma: float = 2.0):
        super().__init__()
        self.alpha = alpha
        self.gamma = gamma

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        # float32 whatever the input: log(1 - p) and (1 - p_t)**gamma of confident bf16/fp16 logits lose most bits.
        return sigmoid_focal_loss(logits.float(), targets.float(), alpha=self.alpha, gamma=self.gamma, reduction="none")
