"""The LightningModule: composes injected parts (detector, criterion, post-processing, metric)."""

from __future__ import annotations

from functools import partial
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable

from tod_lightning.losses.criterion import DetectionCriterion
from tod_lightning.metrics import AITODMetric
from tod_lightning.models.backbone import Backbone, TimmBackbone
from tod_lightning.models.detector import Detector
from tod_lightning.models.heads.dense_head import DenseHead, HeadFactory
from tod_lightning.models.necks.base import NeckFactory
from tod_lightning.models.necks.fpn import FPN
from tod_lightning.models.postprocess import PostProcessor
from tod_lightning.models.sliced import SlicedInference
from tod_lightning.optim import ParamGroup, apply_lr_mult, build_param_groups, warmup_cosine
from tod_lightning.structures import Batch, Detections


class DetectionTask(L.LightningModule):
    """Trains and evaluates a dense tiny-object detector.

    Args:
        num_classes: foreground classes; linked from ``data.num_classes`` by the CLI.
        backbone: a :class:`Backbone`; default ``TimmBackbone("resnet18")``.
        necks: neck factories (``class_path`` + settings, built with the previous stage's sizes);
            default ``[FPN]``.
        head: head factory; default :class:`DenseHead`.
        criterion: :class:`DetectionCriterion` (assigner and losses).
        postprocess: :class:`PostProcessor` (NMS, detections per image).
        area_ranges: evaluation size bins in px² (default AI-TOD: vt, t, s, m).
        optimizer: optimizer class and settings (its ``lr`` is the base learning rate).
        param_groups: per-module rules (own ``lr_mult``, own weight decay) by parameter-name prefix.
        warmup_steps: linear warm-up steps of the default warm-up + cosine schedule.
        lr_scheduler: replaces the default schedule when given (stepped every optimizer step).
        inference: how validation, test and predict run the detector on the (whole) images the loaders give:
            ``None`` for one pass over each whole image; a :class:`SlicedInference` to detect on overlapping
            tiles and merge them, so that the logged ``val/AP``, ``val/AP_vt``... are whole-image numbers
            when training on tiles. With it, ``val/loss`` and ``test/loss`` are not logged: the criterion
            needs one dense output over the whole image, which tiles do not give.
    """

    def __init__(
        self,
        num_classes: int = 1,
        backbone: Backbone | None = None,
        necks: Sequence[NeckFactory] | None = None,
        head: HeadFactory | None = None,
        criterion: DetectionCriterion | None = None,
        postprocess: PostProcessor | None = None,
        area_ranges: dict[str, tuple[float, float]] | None = None,
        optimizer: OptimizerCallable = partial(torch.optim.AdamW, lr=1e-3, weight_decay=0.05),
        param_groups: list[ParamGroup] | None = None,
        warmup_steps: int = 200,
        lr_scheduler: LRSchedulerCallable | None = None,
        inference: SlicedInference | None = None,
    ):
        super().__init__()
        # Under LightningCLI this stores the parsed config (not the objects), which is what lets
        # ``load_from_checkpoint`` rebuild injected parts; in plain Python it stores the plain arguments.
        self.save_hyperparameters(
            ignore=["backbone", "necks", "head", "criterion", "postprocess", "inference"] if not _from_cli() else None
        )
        self.detector = Detector(
            backbone or TimmBackbone("resnet18"),
            list(necks) if necks is not None else [FPN],
            head or DenseHead,
            num_classes,
        )
        self.criterion = criterion or DetectionCriterion()
        self.postprocess = postprocess or PostProcessor()
        self.val_metric = AITODMetric(area_ranges=area_ranges)
        self.test_metric = AITODMetric(area_ranges=area_ranges)
        self.optimizer_factory = optimizer
        self.param_groups = list(param_groups or [])
        self.warmup_steps = warmup_steps
        self.scheduler_factory = lr_scheduler
        self.inference = inference
        # The last eval batch's decoded detections (network-input pixels) and aux maps, for callbacks that
        # draw them (ValidationImageLogger) without running the detector again.
        self.last_eval_detections: list[Detections] | None = None
        self.last_eval_aux: dict[str, torch.Tensor] | None = None

    # ----------------------------------------------------------------------------------------- steps
    def forward(self, images01: torch.Tensor):
        return self.detector(images01)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if len(batch) == 0:  # every image of the batch was unreadable and skipped (strict=False)
            return None
        images01 = batch.images01()
        output = self.detector(images01)
        losses = self.criterion(output, batch.targets, images01)
        bs = len(batch)
        self.log_dict({f"train/{k}": v for k, v in losses.items() if k != "loss"}, batch_size=bs)
        self.log("train/loss", losses["loss"], prog_bar=True, batch_size=bs)
        dropped = sum(t.num_dropped for t in batch.targets)
        self.log("train/dropped_boxes", float(dropped), on_step=False, on_epoch=True, reduce_fx="sum", batch_size=bs)
        return losses["loss"]

    def _eval_step(self, batch: Batch, stage: str, metric: AITODMetric) -> None:
        if len(batch) == 0:  # every image of the batch was unreadable and skipped (strict=False)
            return
        images01 = batch.images01()
        if self.inference is None:
            output = self.detector(images01)
            losses = self.criterion(output, batch.targets, images01)
            self.log(f"{stage}/loss", losses["loss"], batch_size=len(batch), sync_dist=True)
            detections = self.postprocess(output, batch.image_sizes)
        else:  # whole images through tiles: no dense output over the image, hence no loss
            output = None
            detections = self.inference(self.detector, self.postprocess, images01, batch.image_sizes)
        self.last_eval_detections = detections
        self.last_eval_aux = output.aux if output is not None else None
        metric.update_detections(detections, batch.targets)
        capped = sum(d.scores.numel() >= self.postprocess.max_per_image for d in detections)
        self.log(
            f"{stage}/capped_images",
            float(capped),
            on_epoch=True,
            reduce_fx="sum",
            batch_size=len(batch),
            sync_dist=True,
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metric)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metric)

    def _log_metric(self, stage: str, metric: AITODMetric) -> None:
        # One value per epoch on the whole split: the metric gathers every rank's images itself (and
        # drops the sampler's padded duplicates), so the values are already global -- no sync_dist.
        values = metric.compute()
        self.log_dict({f"{stage}/{k}": v.float() for k, v in values.items()}, sync_dist=False)
        metric.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_metric("val", self.val_metric)

    def on_test_epoch_end(self) -> None:
        self._log_metric("test", self.test_metric)

    def predict_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> list[dict[str, Any]]:
        """Detections per image in ORIGINAL pixels and contiguous labels (the writer maps category ids)."""
        if len(batch) == 0:  # every image of the batch was unreadable and skipped (strict=False)
            return []
        if self.inference is None:
            detections: list[Detections] = self.postprocess(self.detector(batch.images01()), batch.image_sizes)
        else:
            detections = self.inference(self.detector, self.postprocess, batch.images01(), batch.image_sizes)
        results = []
        for i, (det, target) in enumerate(zip(detections, batch.targets)):
            det = det.to_original(target.scale, target.orig_size)
            results.append(
                {
                    "image_id": target.image_id,
                    "file_name": batch.file_names[i] if batch.file_names else "",
                    "boxes_xyxy": det.boxes_xyxy.cpu(),
                    "scores": det.scores.cpu(),
                    "labels": det.labels.cpu(),
                }
            )
        return results

    # ------------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        groups = build_param_groups(self, self.param_groups)
        optimizer = apply_lr_mult(self.optimizer_factory(groups))
        if self.scheduler_factory is not None:
            scheduler = self.scheduler_factory(optimizer)
        else:
            total = int(self.trainer.estimated_stepping_batches)
            scheduler = warmup_cosine(optimizer, min(self.warmup_steps, max(1, total // 10)), total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _from_cli() -> bool:
    """True while LightningCLI instantiates the model (it then provides the config as hyperparameters)."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    return _given_hyperparameters.get() is not None
