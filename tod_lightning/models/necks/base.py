"""The neck contract shared by the FPN and every enhancer."""

from __future__ import annotations

from typing import Callable, Sequence

from torch import Tensor, nn


class Neck(nn.Module):
    """A stage between the backbone and the head.

    A neck is built from the sizes of the stage before it, ``Neck(in_channels, in_strides, **settings)``,
    so YAML never retypes channel counts, and declares what it returns in ``out_channels`` and
    ``out_strides``. Output level ``l`` has spatial size ``ceil(H / out_strides[l])`` for an input image of
    height ``H`` (and likewise for width), which the contract test checks at odd sizes.

    ``forward(features, images01) -> (features, aux)``:
        features: per level ``(B, C_l, H_l, W_l)``, increasing stride.
        images01: ``(B, 3, H, W)`` the input batch in [0, 1] (SR-TOD reconstructs it; most necks ignore it).
        aux: auxiliary outputs (e.g. ``{"srtod_recon": (B,3,H,W)}``) that the detector passes on in
            :class:`~tod_lightning.structures.DetectorOutput` for the criterion and callbacks.
    """

    out_channels: list[int]
    out_strides: list[int]
    # Names of parameters that receive no gradient by design (e.g. a threshold used through a hard
    # sign); the contract test checks every other parameter gets a finite, non-zero gradient.
    gradient_free_parameters: tuple[str, ...] = ()

    def forward(self, features: list[Tensor], images01: Tensor) -> tuple[list[Tensor], dict[str, Tensor]]:
        raise NotImplementedError


def resolve_levels(levels: Sequence[int], num_levels: int, setting: str) -> list[int]:
    """Turn level positions (``0`` = finest input level, negatives count from the coarsest) into sorted indices."""
    resolved = sorted({lv + num_levels if lv < 0 else lv for lv in levels})
    if not resolved or resolved[0] < 0 or resolved[-1] >= num_levels:
        raise ValueError(f"{setting}={list(levels)} must name levels among the {num_levels} input levels")
    return resolved


# What YAML configures: a neck class with its settings, called later with (in_channels, in_strides).
NeckFactory = Callable[[list[int], list[int]], Neck]
