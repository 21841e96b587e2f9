"""Box similarities for label assignment, injectable into the assigner (``similarity: {class_path: ...}``)."""

from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_iou

from tod_lightning.ops.boxes import paired_box_iou


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
        return paired_box_iou(priors_xyxy, gt_xyxy)  # torchvision's box_iou arithmetic: bit-identical to __call__


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
        # The arithmetic of __call__ element by element (a sum over 2 is a + b), so the values are bit-identical;
        # on the coordinates one by one (plain tensors: vectorised loops on CPU).
        x1, y1, x2, y2 = priors_xyxy.unbind(-1)
        gx1, gy1, gx2, gy2 = gt_xyxy.unbind(-1)
        dcx, dcy = (x1 + x2) / 2 - (gx1 + gx2) / 2, (y1 + y2) / 2 - (gy1 + gy2) / 2
        dw = (x2 - x1 + self.eps) - (gx2 - gx1 + self.eps)
        dh = (y2 - y1 + self.eps) - (gy2 - gy1 + self.eps)
        w2 = (dcx**2 + dcy**2) + self.eps + (dw**2 + dh**2) / 4
        return torch.exp(-torch.sqrt(w2) / self.constant)
