"""Box similarities for label assignment, injectable into the assigner (``similarity: {class_path: ...}``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou


class BoxSimilarity:
    """``__call__(priors_xyxy (P, 4), gt_xyxy (G, 4)) -> (P, G)``, higher is more similar, in [0, 1]."""

    def __call__(self, priors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        raise NotImplementedError

    def paired(self, priors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        """Similarity of matching rows, ``(..., 4), (..., 4) -> (...)``, equal to the matching entries of ``__call__``.

        Optional: the assigner scores only its candidates with it (``C * G`` pairs instead of ``P * G``) and falls
        back to the dense ``__call__`` for a similarity that does not override it.
        """
        raise NotImplementedError


class IoUSimilarity(BoxSimilarity):
    """Intersection over union (torchvision)."""

    def __call__(self, priors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        return box_iou(priors_xyxy, gt_xyxy)

    def paired(self, priors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        # The arithmetic of torchvision's box_iou, element by element, so the values are bit-identical.
        area1 = (priors_xyxy[..., 2] - priors_xyxy[..., 0]) * (priors_xyxy[..., 3] - priors_xyxy[..., 1])
        area2 = (gt_xyxy[..., 2] - gt_xyxy[..., 0]) * (gt_xyxy[..., 3] - gt_xyxy[..., 1])
        lt = torch.max(priors_xyxy[..., :2], gt_xyxy[..., :2])
        rb = torch.min(priors_xyxy[..., 2:], gt_xyxy[..., 2:])
        wh = (rb - lt).clamp(min=0)
        inter = wh[..., 0] * wh[..., 1]
        return inter / (area1 + area2 - inter)


class NWDSimilarity(BoxSimilarity):
    """Normalized Gaussian Wasserstein Distance (Wang et al., arXiv:2110.13389).

    ``exp(-sqrt(W2^2) / C)`` with ``W2^2 = |dc|^2 + (|dw|^2 + |dh|^2) / 4``. Unlike IoU it is non-zero for
    disjoint boxes and changes smoothly with a 1-px shift, which matters for 2-8 px objects.

    Args:
        constant: ``C``, about the dataset's mean absolute object size (12.8 px for AI-TOD).
        eps: added as in the official code, so identical boxes give ``exp(-sqrt(eps)/C)``.
    """

    def __init__(self, constant: float = 12.8, eps: float = 1e-6):
        self.constant = constant
        self.eps = eps

    def __call__(self, priors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        c1 = (priors_xyxy[:, None, :2] + priors_xyxy[:, None, 2:]) / 2  # (P, 1, 2)
        c2 = (gt_xyxy[None, :, :2] + gt_xyxy[None, :, 2:]) / 2  # (1, G, 2)
        wh1 = priors_xyxy[:, None, 2:] - priors_xyxy[:, None, :2] + self.eps
        wh2 = gt_xyxy[None, :, 2:] - gt_xyxy[None, :, :2] + self.eps
        w2 = ((c1 - c2) ** 2).sum(-1) + self.eps + ((wh1 - wh2) ** 2).sum(-1) / 4  # (P, G)
        return torch.exp(-torch.sqrt(w2) / self.constant)

    def paired(self, priors_xyxy: Tensor, gt_xyxy: Tensor) -> Tensor:
        # The arithmetic of __call__ element by element, so the values are bit-identical.
        c1 = (priors_xyxy[..., :2] + priors_xyxy[..., 2:]) / 2
        c2 = (gt_xyxy[..., :2] + gt_xyxy[..., 2:]) / 2
        wh1 = priors_xyxy[..., 2:] - priors_xyxy[..., :2] + self.eps
        wh2 = gt_xyxy[..., 2:] - gt_xyxy[..., :2] + self.eps
        w2 = ((c1 - c2) ** 2).sum(-1) + self.eps + ((wh1 - wh2) ** 2).sum(-1) / 4
        return torch.exp(-torch.sqrt(w2) / self.constant)
