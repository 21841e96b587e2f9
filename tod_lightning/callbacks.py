"""Lightning callbacks at the edge: config upload to W&B, COCO-format prediction writer, final metrics table."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

log = logging.getLogger(__name__)


class LoggerSaveConfigCallback(SaveConfigCallback):
    """Saves the resolved LightningCLI config beside the logs and as the W&B run config.

    With a :class:`WandbLogger`, Lightning's log dir is the logger's ``save_dir``, shared by every run; so
    the file is overwritten there (the known ``config.yaml`` clash, Lightning#7679) and the copy that
    belongs to the run is uploaded to W&B: as the run config (searchable, comparable) and as
    ``lightning_config.yaml`` in the run's files (W&B keeps its own ``config.yaml`` there).
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                text = self.parser.dump(self.config, skip_none=False)
                logger.experiment.config.update(yaml.safe_load(text), allow_val_change=True)
                run_dir = Path(logger.experiment.dir)
                (run_dir / "lightning_config.yaml").write_text(text)


class CocoPredictionWriter(BasePredictionWriter):
    """Writes ``predict`` results as a COCO detection-results json.

    Each record is ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`` in original-image pixels
    with the dataset's original category ids (read from the datamodule's ``category_ids``); a
    ``file_name`` per record is added so results for a bare image folder stay traceable.

    Args:
        output_file: where to write the json (a ``.rank<N>`` suffix is added under multi-process predict).
    """

    def __init__(self, output_file: str = "predictions.json"):
        super().__init__(write_interval="epoch")
        self.output_file = output_file

    def write_on_epoch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Sequence[Any], batch_indices: Sequence[Any]
    ) -> None:
        category_ids = getattr(trainer.datamodule, "category_ids", None)
        records = []
        for batch in _flatten(predictions):
            for image in batch:
                boxes_xyxy = image["boxes_xyxy"].tolist()
                for (x1, y1, x2, y2), score, label in zip(
                    boxes_xyxy, image["scores"].tolist(), image["labels"].tolist()
                ):
                    records.append(
                        {
                            "image_id": int(image["image_id"]),
                            "file_name": image["file_name"],
                            "category_id": int(category_ids[label]) if category_ids else int(label) + 1,
                            "bbox": [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)],
                            "score": round(float(score), 5),
                        }
                    )
        path = Path(self.output_file)
        if trainer.world_size > 1:
            path = path.with_suffix(f".rank{trainer.global_rank}{path.suffix}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(records))
        rank_zero_info(f"Wrote {len(records)} detections to {os.path.abspath(path)}")


def _flatten(predictions: Sequence[Any]):
    # One dataloader gives a list of batches; several give a list of lists of batches.
    for item in predictions:
        if item and isinstance(item, list) and isinstance(item[0], list):
            yield from item
        else:
            yield item


class StepTimer(L.Callback):
    """Logs the wall time of each training step (forward, loss, backward, optimizer) as ``perf/step_ms``.

    The median over the run is kept in ``median_ms`` (robust to the slow first steps and to evaluation).
    """

    def __init__(self):
        self.times_ms: list[float] = []
        self._start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch: Any, batch_idx: int):
        elapsed = (time.perf_counter() - self._start) * 1000.0
        self.times_ms.append(elapsed)
        pl_module.log("perf/step_ms", elapsed, on_step=True, on_epoch=False, batch_size=1)

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")


class BadInputReport(L.Callback):
    """Reports, at the end of each run stage, every bad input the data pipeline skipped or fixed.

    Two sources: the problems the readers found in the annotation files when the splits were built
    (``trainer.datamodule.datasets[*].problems``; with ``strict=False`` these include skipped records), and the
    images that could not be decoded during the run (``Batch.skipped``, collected here per batch, counted
    once per image). Logged as ``data/skipped_images`` and ``data/problems_<split>`` and printed as a table.
    """

    def __init__(self):
        self.skipped: dict[str, str] = {}

    def _collect(self, batch: Any) -> None:
        for message in getattr(batch, "skipped", ()):
            self.skipped.setdefault(message.split(" [", 1)[0], message)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._collect(batch)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._collect(batch)

    def report(self, trainer: L.Trainer) -> str:
        lines = []
        for name, dataset in getattr(trainer.datamodule, "datasets", {}).items():
            problems = getattr(dataset, "problems", None)
            if problems is not None and len(problems):
                lines.append(f"{name} split, annotation problems:\n{problems.format()}")
        if self.skipped:
            lines.append(f"images skipped while loading: {len(self.skipped)}")
            lines += [f"  {m}" for m in list(self.skipped.values())[:20]]
        return "\n".join(lines)

    def _finish(self, trainer: L.Trainer) -> None:
        text = self.report(trainer)
        if text:
            rank_zero_info(f"Bad input report\n{text}")
        values = {"data/skipped_images": float(len(self.skipped))}
        for name, dataset in getattr(trainer.datamodule, "datasets", {}).items():
            if getattr(dataset, "problems", None) is not None:
                values[f"data/problems_{name}"] = float(len(dataset.problems))
        for logger in trainer.loggers:
            logger.log_metrics(values, step=trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.state.fn == "validate":
            self._finish(trainer)

    def on_test_end(self, trainer, pl_module) -> None:
        self._finish(trainer)

    def on_predict_end(self, trainer, pl_module) -> None:
        self._finish(trainer)


class MetricsSummary(L.Callback):
    """Prints the final validation metrics at the end of ``fit`` (the logged values, on the whole split).

    Args:
        output_file: if set, also writes them as JSON (with the median step time when a :class:`StepTimer`
            is present), for tools such as the ablation runner.
    """

    def __init__(self, output_file: str | None = None):
        self.output_file = output_file

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        if rows:
            width = max(len(k) for k in rows)
            lines = [f"  {k:<{width}}  {v:.4f}" for k, v in sorted(rows.items())]
            rank_zero_info("Final validation metrics (epoch %d):\n%s" % (trainer.current_epoch, "\n".join(lines)))
        if self.output_file and trainer.is_global_zero:
            timers = [c for c in trainer.callbacks if isinstance(c, StepTimer)]
            summary = {
                "metrics": rows,
                "step_ms_median": timers[0].median_ms if timers else None,
                "global_step": trainer.global_step,
                "epochs": trainer.current_epoch,
            }
            path = Path(self.output_file)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(summary, indent=1))


class ValidationImageLogger(L.Callback):
    """Logs a few validation images to W&B with their ground-truth boxes and the detector's image-like maps.

    Every auxiliary output of the detector shaped like the image (``(B, 1 or 3, H, W)``, e.g. SR-TOD's
    reconstruction ``srtod_recon`` and difference map ``srtod_diff``) is logged next to the image, so the
    claim "reconstruction fails where tiny objects are" can be seen. Maps are logged as they are (values in
    [0, 1] clipped); one-channel maps are stretched to their own maximum so faint differences stay visible.

    Args:
        num_images: images taken from the first validation batch.
        every_n_epochs: log on validation epochs whose index is a multiple of this.
    """

    def __init__(self, num_images: int = 4, every_n_epochs: int = 1):
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self._batch = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0:
            self._batch = batch

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if self._batch is None or not loggers or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        batch, self._batch = self._batch, None
        n = min(self.num_images, len(batch))
        with torch.no_grad():
            images01 = batch.images01()[:n]
            output = pl_module.detector(images01)
        panels = image_panels(images01, output.aux)
        class_names = getattr(trainer.datamodule, "class_names", None)
        logged = {}
        for key, frames in panels.items():
            logged[f"val/images/{key}"] = [
                _wandb_image(frame, batch.targets[i] if key == "image" else None, class_names)
                for i, frame in enumerate(frames)
            ]
        for lg in loggers:
            lg.experiment.log({**logged, "trainer/global_step": trainer.global_step})


def image_panels(images01: torch.Tensor, aux: dict[str, torch.Tensor]) -> dict[str, list]:
    """``{"image": [HxWx3 uint8], <aux key>: [HxWx3 uint8], ...}`` for the image and each image-sized aux map."""
    h, w = images01.shape[-2:]
    panels = {"image": _to_uint8(images01)}
    for key, value in aux.items():
        if value.ndim == 4 and value.shape[-2:] == (h, w) and value.shape[1] in (1, 3):
            maps = value[: len(images01)].detach().float()
            if maps.shape[1] == 1:  # stretch a difference map to its own range, then grey -> RGB
                maps = maps / maps.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
                maps = maps.expand(-1, 3, -1, -1)
            panels[key] = _to_uint8(maps)
    return panels


def _to_uint8(images: torch.Tensor) -> list:
    array = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return list(array)


def _wandb_image(frame, target, class_names: list[str] | None):
    """A ``wandb.Image``; with a target, its ground-truth boxes (network-input pixels) are drawn by W&B."""
    import wandb

    if target is None:
        return wandb.Image(frame)
    box_data = [
        {"position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2}, "domain": "pixel", "class_id": int(label)}
        for (x1, y1, x2, y2), label in zip(target.boxes_xyxy.tolist(), target.labels.tolist())
    ]
    num_classes = max([b["class_id"] for b in box_data] + [len(class_names or [])]) + 1
    names = {i: (class_names[i] if class_names and i < len(class_names) else str(i)) for i in range(num_classes)}
    return wandb.Image(frame, boxes={"ground_truth": {"box_data": box_data, "class_labels": names}})
