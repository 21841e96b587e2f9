"""The data contract shared by data, models, losses, post-processing and metrics.

Box formats are named where tensors are born: ``*_xyxy`` is ``(x1, y1, x2, y2)`` in pixels of the frame
named by the field, ``*_xywh`` is COCO's ``(x, y, w, h)``. Torch only: no Lightning, no W&B.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Target:
    """Ground truth of one image, in the frame of the network input (after augmentation, before padding).

    Attributes:
        boxes_xyxy: ``(N, 4)`` float32, pixels of the network input.
        labels: ``(N,)`` int64, contiguous class indices ``0..K-1``.
        ignore_xyxy: ``(M, 4)`` float32 regions where no negative is taken (crowds, VisDrone "ignored").
        image_id: the dataset's image id (the COCO ``id``), used by the metric and by ``predict``.
        orig_size: ``(height, width)`` of the original image file.
        scale: ``(sy, sx)``: network-input pixels per original pixel (``orig = input / scale``).
        orig_boxes_xyxy: ``(N0, 4)`` ground truth in original pixels, as annotated (evaluation only; it
            includes boxes the augmentation dropped, so AP is scored against the file, not the pipeline).
        orig_labels: ``(N0,)`` int64 contiguous labels of ``orig_boxes_xyxy``; ``-1`` for an ignore region of
            every class (VisDrone "ignored regions").
        orig_areas: ``(N0,)`` the annotation ``area`` field (px², the AI-TOD bins read it).
        orig_iscrowd: ``(N0,)`` bool, COCO ``iscrowd``.
        num_dropped: objects the data pipeline removed from ``boxes_xyxy`` for this sample (cropped out of
            the frame, or shrunk below the minimum box size and turned into ``ignore_xyxy``).
    """

    boxes_xyxy: Tensor
    labels: Tensor
    image_id: int = 0
    orig_size: tuple[int, int] = (0, 0)
    scale: tuple[float, float] = (1.0, 1.0)
    ignore_xyxy: Tensor = field(default_factory=lambda: torch.zeros(0, 4))
    orig_boxes_xyxy: Tensor | None = None
    orig_labels: Tensor | None = None
    orig_areas: Tensor | None = None
    orig_iscrowd: Tensor | None = None
    num_dropped: int = 0

    def to(self, device: torch.device | str) -> "Target":
        """Copy of this target with every tensor on ``device``."""
        out = {}
        for name, value in self.__dict__.items():
            out[name] = value.to(device) if isinstance(value, Tensor) else value
        return Target(**out)


@dataclass
class Batch:
    """A collated batch as it travels to the device.

    Attributes:
        images: ``(B, 3, H, W)`` uint8 RGB, zero-padded to a multiple of the largest stride. It stays uint8
            until it is on the device (4× less host-to-device traffic than float32); ``images01`` converts.
        targets: one :class:`Target` per image.
        image_sizes: ``(B, 2)`` int64 ``(height, width)`` of each image before padding.
        file_names: the image file of each sample (for predict output and error messages).
        skipped: messages of the samples the data pipeline skipped (unreadable images, ``strict=False``);
            they are not in ``images``.
    """

    images: Tensor
    targets: list[Target]
    image_sizes: Tensor
    file_names: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def pin_memory(self) -> "Batch":
        """Called by ``DataLoader(pin_memory=True)``: pins the image tensor for asynchronous copies."""
        self.images = self.images.pin_memory()
        return self

    def images01(self) -> Tensor:
        """The images as float in [0, 1], on the images' device: ``(B, 3, H, W)``."""
        return self.images.float().div_(255.0)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class DetectorOutput:
    """What a detector returns, the same structure in train and eval.

    Attributes:
        cls_logits: per level ``(B, K, H_l, W_l)`` classification logits.
        box_deltas: per level ``(B, 4, H_l, W_l)`` box encoding relative to the level's points
            (decoded by :class:`tod_lightning.ops.boxes.PointBoxCoder`).
        quality_logits: per level ``(B, 1, H_l, W_l)`` localisation-quality logits (predicted IoU).
        strides: the stride in input pixels of each level.
        image_size: ``(H, W)`` of the padded input batch.
        aux: auxiliary outputs of necks (e.g. SR-TOD's reconstruction), scored by the criterion's
            auxiliary terms and logged by callbacks. Keys are documented by the module that writes them.
    """

    cls_logits: list[Tensor]
    box_deltas: list[Tensor]
    quality_logits: list[Tensor]
    strides: list[int]
    image_size: tuple[int, int]
    aux: dict[str, Tensor] = field(default_factory=dict)


@dataclass
class Detections:
    """Decoded detections of one image.

    Attributes:
        boxes_xyxy: ``(D, 4)`` pixels of the network input (see :meth:`to_original`).
        scores: ``(D,)`` in [0, 1], sorted descending.
        labels: ``(D,)`` int64 contiguous class indices.
    """

    boxes_xyxy: Tensor
    scores: Tensor
    labels: Tensor

    def to_original(self, scale: tuple[float, float], orig_size: tuple[int, int]) -> "Detections":
        """Map boxes back to original-image pixels and clip them to the original image."""
        sy, sx = scale
        h, w = orig_size
        factor = self.boxes_xyxy.new_tensor([sx, sy, sx, sy])
        boxes = self.boxes_xyxy / factor
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        return Detections(boxes, self.scores, self.labels)
