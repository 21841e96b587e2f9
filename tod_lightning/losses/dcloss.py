"""DCLoss of E-FPN-BS: scale-aware, count-balanced weights for the positive-sample loss terms."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import torch
from torch import Tensor

from tod_lightning.losses.criterion import PositiveWeighting


class DCLoss(PositiveWeighting):
    """Dynamic Gradient-Balanced Loss weights of E-FPN-BS ("CEM-FBGTinyDet", Liu & Cui 2025, arXiv:2506.09897).

    The abstract says DCLoss "automatically modulates loss contributions via scale-aware gradient
    equilibrium"; its formula is not public, so this is the project's own design (methods.md §2.3),
    plugged into :class:`~tod_lightning.losses.DetectionCriterion` as its ``positive_weighting``: the
    weights multiply each positive's classification, box and quality terms; negatives are unchanged.

    Each positive falls in a size bin by the area of the ground truth it matched (px² of the network
    input; AI-TOD bins by default: very tiny ``[0, 64]``, tiny ``(64, 256]``, small ``(256, 1024]``,
    medium+ ``> 1024``). With ``m_b`` the gradient mass of bin ``b`` (see below) and the mean taken over
    the bins present in the batch::

        w_b = clip((mean_b' m_b' / m_b) ** alpha, min_weight, max_weight)
        w_i = w_b(i) * N_pos / sum_j w_b(j)          # mean weight 1: the total loss scale is unchanged

    so a bin with less mass gets a larger weight (at ``alpha=1`` and no clipping every present bin
    carries the same total weight: the "equilibrium"); ``alpha=0`` returns exactly 1 for every positive,
    the plain loss. Empty bins are skipped. Weights carry no gradient.

    The mass ``m_b`` is an exponential moving average (``momentum``) of the number of positives per bin,
    updated in training mode only (validation does not move it) and stored in the state dict. The spec's
    per-sample gradient proxy ``ḡ_b`` (``1 - p`` for the classifier) is taken as 1, because the
    criterion hands a weighting only the matched boxes; the balance is therefore over positive counts.
    Under DDP each rank balances its own positives.

    Args:
        alpha: strength of the balancing; 0 disables it exactly.
        area_bins: increasing bin edges in px²; bin ``k`` is ``(edge_{k-1}, edge_k]`` (the first starts at 0).
        momentum: EMA momentum of the per-bin counts (0 uses the current batch only).
        min_weight, max_weight: clip range of the per-bin weight before renormalisation.

    ``forward(matched_gt_xyxy (N, 4) pixels) -> (N,)`` float weights with mean 1 (empty for ``N = 0``).
    """

    def __init__(
        self,
        alpha: float = 0.5,
        area_bins: Sequence[float] = (64.0, 256.0, 1024.0),
        momentum: float = 0.9,
        min_weight: float = 0.5,
        max_weight: float = 5.0,
    ):
        super().__init__()
        edges = list(area_bins)
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        if any(b <= a for a, b in pairwise(edges)):
            raise ValueError(f"area_bins must increase strictly, got {edges}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if not 0.0 < min_weight <= max_weight:
            raise ValueError(f"need 0 < min_weight <= max_weight, got {min_weight}, {max_weight}")
        self.alpha = alpha
        self.momentum = momentum
        self.min_weight, self.max_weight = min_weight, max_weight
        self.register_buffer("area_edges", torch.tensor(edges, dtype=torch.float32), persistent=False)
        # Persistent: a resumed run continues from the same running balance.
        self.register_buffer("count_ema", torch.zeros(len(edges) + 1))
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.long))

    def size_bins(self, matched_gt_xyxy: Tensor) -> Tensor:
        """``(N, 4)`` pixels -> ``(N,)`` int64 bin index by box area in px²."""
        wh = (matched_gt_xyxy[:, 2:] - matched_gt_xyxy[:, :2]).clamp(min=0)  # (N, 2)
        area = wh[:, 0] * wh[:, 1]  # (N,)
        # right=False: edge e_k belongs to bin k, i.e. bins are (e_{k-1}, e_k] as in AI-TOD's [0, 64], (64, 256].
        return torch.bucketize(area, self.area_edges.to(area.dtype))

    def bin_weights(self, mass: Tensor, present: Tensor) -> Tensor:
        """Per-bin weights before renormalisation: ``(num_bins,)`` mass, bool present -> ``(num_bins,)``.

        Absent bins get weight 0 (they have no positive to weight).
        """
        safe = torch.where(present, mass, torch.ones_like(mass))  # no 0 division on empty bins
        mean = safe[present].mean()
        w = (mean / safe).pow(self.alpha).clamp(self.min_weight, self.max_weight)
        return torch.where(present, w, torch.zeros_like(w))

    @torch.no_grad()
    def forward(self, matched_gt_xyxy: Tensor) -> Tensor:
        n = matched_gt_xyxy.shape[0]
        ones = matched_gt_xyxy.new_ones(n, dtype=torch.float32)
        if n == 0 or self.alpha == 0:
            return ones  # alpha=0 is the plain loss exactly (no renormalisation round-off)
        bins = self.size_bins(matched_gt_xyxy.float())  # (N,)
        counts = torch.bincount(bins, minlength=self.count_ema.numel()).float()  # (num_bins,)
        if self.training:
            if self.num_updates == 0:
                self.count_ema.copy_(counts)
            else:
                self.count_ema.mul_(self.momentum).add_(counts, alpha=1.0 - self.momentum)
            self.num_updates += 1
        present = counts > 0
        # Before any training update (e.g. a validation sanity pass) the EMA is empty: use the batch.
        mass = torch.where(self.count_ema > 0, self.count_ema, counts)
        w = self.bin_weights(mass, present)[bins]  # (N,)
        return w * (n / w.sum())
