"""Test doubles selected by ``class_path`` in real CLI runs (``PYTHONPATH=tests``): an oracle that detects
from the ground truth, and a callback that records what the validation metric saw.

The oracle makes exact DDP-vs-single-process evaluation tests possible without a trained checkpoint: its
detections of an image depend only on that image (never on the batch, the rank or the order), and the AP
they give is far from both 0 and 1, so an image counted twice or lost changes the numbers.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor

from tod_lightning.data.dataset import DetectionDataset
from tod_lightning.data.splits import CocoSplit
from tod_lightning.data.transforms import EvalTransform
from tod_lightning.models.sliced import SlicedInference
from tod_lightning.structures import Detections


def _fingerprint(image_hwc_uint8: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(image_hwc_uint8).tobytes()).hexdigest()


class OracleInference(SlicedInference):
    """``model.inference`` that ignores the detector and derives each image's detections from its ground truth.

    The image is recognised by the bytes of its unpadded pixels (``round(images01 * 255)``), looked up in the
    split given here, loaded through the same :class:`DetectionDataset` + :class:`EvalTransform` as the
    validation loader. Per image, with a generator seeded by ``(seed, image_id)``:

    * each ground-truth box is dropped with probability ``drop``; the others are kept with each coordinate
      moved by ``N(0, (jitter * side)^2)`` px (side = that box's width or height), score ``U(0.3, 1)``;
    * ``false_positives`` boxes of random position, 3-16 px sides, random class, score ``U(0.05, 0.8)``.

    Args:
        images_dir, ann_file: the COCO split being validated (as :class:`~tod_lightning.data.CocoSplit`).
        drop: probability of missing a ground-truth box.
        jitter: box-coordinate noise, in units of the box side.
        false_positives: spurious detections per image.
        seed: base seed.
    """

    def __init__(
        self,
        images_dir: str,
        ann_file: str,
        drop: float = 0.25,
        jitter: float = 0.08,
        false_positives: int = 3,
        seed: int = 0,
    ):
        super().__init__()
        self.images_dir, self.ann_file = images_dir, ann_file
        self.drop, self.jitter, self.false_positives, self.seed = drop, jitter, false_positives, seed
        self._index: dict[str, tuple[int, np.ndarray, np.ndarray, int]] | None = None

    def _build_index(self) -> dict[str, tuple[int, np.ndarray, np.ndarray, int]]:
        split = CocoSplit(self.images_dir, self.ann_file)
        dataset = DetectionDataset(split.load(), self.images_dir, EvalTransform())
        index = {}
        for i in range(len(dataset)):
            sample = dataset[i]
            key = _fingerprint(sample["image"])
            if key in index:
                raise ValueError(f"images {index[key][0]} and {sample['image_id']} have identical pixels")
            num_classes = len(dataset.category_ids)
            index[key] = (sample["image_id"], sample["boxes_xyxy"], sample["labels"], num_classes)
        return index

    def detections_for(self, image_id: int, gt_xyxy: np.ndarray, gt_labels: np.ndarray, num_classes: int, hw):
        """The deterministic noisy detections of one image (network-input pixels), scores descending."""
        rng = np.random.default_rng([self.seed, int(image_id)])
        h, w = hw
        keep = rng.random(len(gt_xyxy)) >= self.drop
        sides = np.concatenate([gt_xyxy[:, 2:] - gt_xyxy[:, :2]] * 2, axis=1)  # (G, 4) as (w, h, w, h)
        noisy = gt_xyxy + rng.normal(size=gt_xyxy.shape) * self.jitter * sides
        tp_scores = rng.uniform(0.3, 1.0, len(gt_xyxy))
        fp_wh = rng.uniform(3.0, 16.0, (self.false_positives, 2))
        fp_xy = rng.uniform(0.0, 1.0, (self.false_positives, 2)) * (np.array([w, h]) - fp_wh)
        fp_xyxy = np.concatenate([fp_xy, fp_xy + fp_wh], axis=1)
        fp_labels = rng.integers(0, num_classes, self.false_positives)
        fp_scores = rng.uniform(0.05, 0.8, self.false_positives)
        boxes = np.concatenate([noisy[keep], fp_xyxy]).reshape(-1, 4)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
        scores = np.concatenate([tp_scores[keep], fp_scores])
        labels = np.concatenate([gt_labels[keep], fp_labels]).astype(np.int64)
        order = np.argsort(-scores, kind="stable")
        return boxes[order], scores[order], labels[order]

    @torch.no_grad()
    def __call__(self, detector, postprocess, images01: Tensor, image_sizes: Tensor) -> list[Detections]:
        if self._index is None:
            self._index = self._build_index()
        results = []
        for image, (h, w) in zip(images01, image_sizes.tolist()):
            pixels = (image[:, :h, :w] * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # (h, w, 3)
            key = _fingerprint(pixels)
            if key not in self._index:
                raise KeyError(f"an image of {h}x{w} px is not in {self.ann_file}")
            image_id, gt_xyxy, gt_labels, num_classes = self._index[key]
            boxes, scores, labels = self.detections_for(image_id, gt_xyxy, gt_labels, num_classes, (h, w))
            dev = images01.device
            results.append(
                Detections(
                    torch.as_tensor(boxes, dtype=torch.float32, device=dev),
                    torch.as_tensor(scores, dtype=torch.float32, device=dev),
                    torch.as_tensor(labels, dtype=torch.int64, device=dev),
                )
            )
        return results


class EvalRecorder(L.Callback):
    """Writes, on global rank 0, the image ids the validation metric holds after the DDP gather.

    Runs in ``on_validation_epoch_end``, which Lightning calls on callbacks before the LightningModule's
    own hook (where the metric is computed and reset). The ids are read inside the metric's own
    ``sync_context``, i.e. exactly what ``AITODMetric.compute`` deduplicates. ``output_file`` (json):
    ``{"world_size", "gathered_image_ids" (padded duplicates included), "rank_image_ids" (this rank, rank 0)}``.
    """

    def __init__(self, output_file: str):
        self.output_file = output_file

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metric = pl_module.val_metric
        local = torch.cat(metric.image_ids).tolist() if metric.image_ids else []
        with metric.sync_context(should_sync=trainer.world_size > 1):
            gathered = metric.image_ids
            gathered = (gathered if isinstance(gathered, Tensor) else torch.cat(gathered)).tolist()
        if trainer.is_global_zero:
            record = {"world_size": trainer.world_size, "gathered_image_ids": gathered, "rank_image_ids": local}
            Path(self.output_file).write_text(json.dumps(record))


class FrameDecodeRecorder(L.Callback):
    """Writes, on every rank at the end of each training epoch, the frame decodes and cache hits of the train
    dataset in this process (``num_workers=0``: the loader reads in the rank's own process) and the frames of
    the tiles it trained on: ``{output_dir}/frames_rank{rank}.json``."""

    def __init__(self, output_dir: str):
        self.output_dir = output_dir
        self.frames: list[int] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.frames += [int(t.image_id) for t in batch.targets]

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        cache = trainer.datamodule.datasets["train"].frames
        record = {"world_size": trainer.world_size, "decodes": cache.decodes, "hits": cache.hits}
        record["frames"] = self.frames
        Path(self.output_dir, f"frames_rank{trainer.global_rank}.json").write_text(json.dumps(record))


class PrecisionProbe(L.Callback):
    """Records, for every training batch, the dtype of the head's first classification map (what autocast
    made of the forward) and of each loss the task logged, so a test can check mixed precision from outside.

    Attributes after a run: ``head_dtypes`` (list of ``torch.dtype``), ``loss_dtypes`` (list of ``torch.dtype``).
    """

    def __init__(self):
        self.head_dtypes: list[torch.dtype] = []
        self.loss_dtypes: list[torch.dtype] = []
        self._handle = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        def hook(module, inputs, outputs):
            if module.training:
                self.head_dtypes.append(outputs[0][0].dtype)  # outputs: (cls_logits, box_deltas, quality_logits)

        self._handle = pl_module.detector.head.register_forward_hook(hook)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.loss_dtypes.append(outputs["loss"].dtype)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._handle.remove()
