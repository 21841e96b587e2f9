"""Lightning callbacks at the edge: W&B config upload, images and run id; COCO prediction writer; metrics table."""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.cli import SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from tod_lightning.coco_results import coco_records

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
        records = coco_records([image for batch in _flatten(predictions) for image in batch], category_ids)
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
    """Logs a few validation images to W&B: ground-truth and predicted boxes, zoomed crops, image-like maps.

    On the first validation batch of a logged epoch (rank 0 only, never in the sanity check), for the first
    ``num_images`` images of that batch, in one ``log`` call (with ``trainer/global_step``):

    * ``val/images/image``: each image (padding removed) with two W&B box sets in network-input pixels:
      ``ground_truth`` (every box of the target, captioned with its class) and ``predictions`` (the
      ``max_boxes`` highest-scoring detections with ``score >= min_score``, captioned "class score").
    * ``val/images/crops``: boxes of 5 px are invisible in a full-frame thumbnail, so each image also gives up
      to ``num_crops`` windows (:func:`crop_windows`) centred on its smallest ground-truth objects
      (:func:`smallest_first`); an image without ground truth is centred on its densest group of drawn
      predictions (:func:`densest_first`). Each window is enlarged by an integer factor with nearest-neighbour
      (:func:`zoom_nearest`), so pixels stay square and boxes, mapped by :func:`boxes_in_window`, stay on
      pixel edges.
    * ``val/images/<aux key>``: every auxiliary output shaped like the image (:func:`image_panels`), e.g.
      SR-TOD's reconstruction ``srtod_recon`` and difference map ``srtod_diff``, so the claim "reconstruction
      fails where tiny objects are" can be seen. Maps are logged as they are (values clipped to [0, 1]);
      one-channel maps are stretched to their own maximum so faint differences stay visible.

    Captions carry the image id (and a crop's window ``[x0, y0, x1, y1]`` and factor), so every picture can be
    traced back to the dataset.

    Where the detections come from (cost: a few images per validation epoch):

    * If the task exposes those of the batch it just evaluated, ``pl_module.last_eval_detections`` (one
      :class:`~tod_lightning.structures.Detections` per image, network-input pixels) and
      ``pl_module.last_eval_aux`` (that batch's ``DetectorOutput.aux``, or ``None`` when it has none, e.g. with
      sliced inference), they are used and the detector does not run again for them.
    * Otherwise the detector runs once more on the ``num_images`` images, without gradients, in the
      precision context of a validation step: through ``pl_module.inference`` (sliced inference, so the drawn
      boxes are the ones that were scored) when the task has one, else one whole-image pass that gives both
      the detections and the maps.
    * With sliced inference the maps need a whole-image pass: it runs one image at a time (bounded memory) and
      stops after the first image when the detector has no image-like maps.

    Args:
        num_images: images taken from the first validation batch.
        every_n_epochs: log on validation epochs whose index is a multiple of this.
        min_score: lowest score of a drawn prediction.
        max_boxes: most predictions drawn per image (highest scores first).
        num_crops: zoomed crops per image (0: none).
        crop_size: side of a crop window, network-input pixels. A window is grown to twice the side of a larger
            object and clipped to the image.
        zoom: integer enlargement of a ``crop_size`` window; a grown window gets the largest integer factor
            that keeps its side within ``crop_size * zoom`` px (at least 1).
    """

    def __init__(
        self,
        num_images: int = 4,
        every_n_epochs: int = 1,
        min_score: float = 0.3,
        max_boxes: int = 100,
        num_crops: int = 2,
        crop_size: int = 32,
        zoom: int = 8,
    ):
        if crop_size < 1 or zoom < 1 or num_crops < 0 or max_boxes < 0:
            raise ValueError(f"need crop_size >= 1, zoom >= 1, num_crops >= 0, max_boxes >= 0 (got {locals()})")
        self.num_images = num_images
        self.every_n_epochs = every_n_epochs
        self.min_score = min_score
        self.max_boxes = max_boxes
        self.num_crops = num_crops
        self.crop_size = crop_size
        self.zoom = zoom

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx != 0 or dataloader_idx != 0 or len(batch) == 0 or self.num_images < 1:
            return
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.current_epoch % self.every_n_epochs:
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if not loggers:
            return
        n = min(self.num_images, len(batch))
        detections, aux = self.detections_and_maps(trainer, pl_module, batch, n)
        logged = self.render(batch, n, detections, aux, getattr(trainer.datamodule, "class_names", None))
        for lg in loggers:
            lg.experiment.log({**logged, "trainer/global_step": trainer.global_step})

    @torch.no_grad()
    def detections_and_maps(self, trainer, pl_module, batch, n: int) -> tuple[list, dict[str, torch.Tensor]]:
        """The detections (network-input pixels) and the aux dict of the first ``n`` images of ``batch``."""
        images01 = batch.images[:n].float() / 255.0  # (n, 3, H, W), padded as the detector saw them
        image_sizes = batch.image_sizes[:n]
        detections = getattr(pl_module, "last_eval_detections", None)
        if detections is not None and len(detections) == len(batch):  # this batch's, not a stale one
            aux = getattr(pl_module, "last_eval_aux", None)
            return list(detections[:n]), aux if aux is not None else self._maps_one_by_one(trainer, pl_module, images01)
        inference = getattr(pl_module, "inference", None)
        with trainer.strategy.precision_plugin.val_step_context():
            if inference is None:
                output = pl_module.detector(images01)
                return pl_module.postprocess(output, image_sizes), output.aux
            detections = inference(pl_module.detector, pl_module.postprocess, images01, image_sizes)
        return detections, self._maps_one_by_one(trainer, pl_module, images01)

    @staticmethod
    def _maps_one_by_one(trainer, pl_module, images01: torch.Tensor) -> dict[str, torch.Tensor]:
        # One whole image at a time: sliced inference exists because a batch of whole frames may not fit.
        maps: dict[str, list[torch.Tensor]] = {}
        for i in range(len(images01)):
            with trainer.strategy.precision_plugin.val_step_context():
                aux = pl_module.detector(images01[i : i + 1]).aux
            found = {k: v for k, v in aux.items() if _image_like(v, images01)}
            if not found:  # this detector has no image-like maps: no need to look at the other images
                return {}
            for key, value in found.items():
                maps.setdefault(key, []).append(value.float())
        return {k: torch.cat(v) for k, v in maps.items() if len(v) == len(images01)}

    def render(self, batch, n: int, detections: Sequence, aux: dict, class_names: list[str] | None) -> dict[str, list]:
        """The ``wandb.Image`` lists to log for the first ``n`` images (keys as in the class docstring)."""
        import wandb

        panels = image_panels(batch.images[:n].float() / 255.0, aux or {})
        sizes = batch.image_sizes[:n].tolist()
        images, crops = [], []
        for i in range(n):
            h, w = sizes[i]
            frame = panels["image"][i][:h, :w]
            target, det = batch.targets[i], detections[i]
            gt_xyxy, gt_labels = target.boxes_xyxy.detach().float().cpu(), target.labels.cpu()
            scores = det.scores.detach().float().cpu()
            keep = (scores >= self.min_score).nonzero().flatten()
            keep = keep[scores[keep].argsort(descending=True, stable=True)][: self.max_boxes]
            pred_xyxy, pred_labels, pred_scores = (
                det.boxes_xyxy.detach().float().cpu()[keep],
                det.labels.cpu()[keep],
                scores[keep],
            )
            labels = _class_labels(class_names, torch.cat([gt_labels, pred_labels]))
            caption = f"image_id {target.image_id}"
            images.append((frame, (gt_xyxy, gt_labels), (pred_xyxy, pred_labels, pred_scores), labels, caption))
            order = smallest_first(gt_xyxy) if len(gt_xyxy) else densest_first(pred_xyxy, self.crop_size)
            for window in crop_windows(order, (h, w), self.num_crops, self.crop_size):
                x0, y0, x1, y1 = window
                factor = max(1, self.crop_size * self.zoom // max(x1 - x0, y1 - y0))
                gt_idx, gt_in = boxes_in_window(gt_xyxy, window, factor)
                pred_idx, pred_in = boxes_in_window(pred_xyxy, window, factor)
                crops.append(
                    (
                        zoom_nearest(frame[y0:y1, x0:x1], factor),
                        (gt_in, gt_labels[gt_idx]),
                        (pred_in, pred_labels[pred_idx], pred_scores[pred_idx]),
                        labels,
                        f"{caption} x{factor} [{x0}, {y0}, {x1}, {y1}]",
                    )
                )
        # Each list at one size: W&B lays a list of images out at its first image's size (and warns "Images sizes
        # do not match"), so images of different sizes and crops of different zooms are padded to the largest.
        logged = {"val/images/image": _images_at_one_size(images)}
        if crops:
            logged["val/images/crops"] = _images_at_one_size(crops)
        for key, frames in panels.items():
            if key != "image":
                cut = [np.ascontiguousarray(f[:h, :w]) for f, (h, w) in zip(frames, sizes)]
                logged[f"val/images/{key}"] = [wandb.Image(f) for f in pad_to_common_size(cut)]
        return logged


def image_panels(images01: torch.Tensor, aux: dict[str, torch.Tensor]) -> dict[str, list]:
    """``{"image": [HxWx3 uint8], <aux key>: [HxWx3 uint8], ...}`` for the image and each image-sized aux map."""
    panels = {"image": _to_uint8(images01)}
    for key, value in aux.items():
        if _image_like(value, images01):
            maps = value[: len(images01)].detach().float()
            if maps.shape[1] == 1:  # stretch a difference map to its own range, then grey -> RGB
                maps = maps / maps.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
                maps = maps.expand(-1, 3, -1, -1)
            panels[key] = _to_uint8(maps)
    return panels


def _image_like(value, images01: torch.Tensor) -> bool:
    return (
        isinstance(value, torch.Tensor)
        and value.ndim == 4
        and value.shape[-2:] == images01.shape[-2:]
        and value.shape[1] in (1, 3)
    )


def smallest_first(boxes_xyxy: torch.Tensor) -> torch.Tensor:
    """``boxes_xyxy`` ``(N, 4)`` reordered by ascending area (ties keep their order)."""
    areas = (boxes_xyxy[:, 2] - boxes_xyxy[:, 0]) * (boxes_xyxy[:, 3] - boxes_xyxy[:, 1])
    return boxes_xyxy[areas.argsort(stable=True)]


def densest_first(boxes_xyxy: torch.Tensor, crop_size: int) -> torch.Tensor:
    """``boxes_xyxy`` ``(N, 4)`` reordered by how many box centres lie within ``crop_size / 2`` px (each axis) of
    theirs, most first (ties keep their order): a crop centred on the first shows the densest group."""
    centres = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2  # (N, 2)
    near = ((centres[:, None] - centres[None]).abs() <= crop_size / 2).all(-1)  # (N, N)
    return boxes_xyxy[near.sum(1).argsort(descending=True, stable=True)]


def crop_windows(
    boxes_xyxy: torch.Tensor, image_size: tuple[int, int], num_crops: int, crop_size: int
) -> list[tuple[int, int, int, int]]:
    """Up to ``num_crops`` integer windows ``(x0, y0, x1, y1)`` centred on boxes taken in the given order.

    A window is ``side = max(crop_size, 2 * ceil(longest box side))`` px square, clipped to the image
    (``image_size = (h, w)``) and shifted inside it; a box that lies whole inside an earlier window gets no
    window of its own, so the crops show different places.
    """
    h, w = image_size
    windows: list[tuple[int, int, int, int]] = []
    for x1, y1, x2, y2 in boxes_xyxy.tolist():
        if len(windows) >= num_crops:
            break
        if any(a <= x1 and b <= y1 and x2 <= c and y2 <= d for a, b, c, d in windows):
            continue
        side = max(crop_size, 2 * math.ceil(max(x2 - x1, y2 - y1)))
        sw, sh = min(side, w), min(side, h)
        x0 = min(max(math.floor((x1 + x2 - sw) / 2 + 0.5), 0), w - sw)
        y0 = min(max(math.floor((y1 + y2 - sh) / 2 + 0.5), 0), h - sh)
        windows.append((x0, y0, x0 + sw, y0 + sh))
    return windows


def boxes_in_window(
    boxes_xyxy: torch.Tensor, window: tuple[int, int, int, int], factor: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, boxes)``: the boxes overlapping ``window`` (positive area), clipped to it, in the pixels of the
    window enlarged ``factor`` times: ``(x - x0) * factor``. ``index`` selects their labels and scores."""
    x0, y0, x1, y1 = window
    clipped = torch.stack(
        [
            boxes_xyxy[:, 0].clamp(x0, x1),
            boxes_xyxy[:, 1].clamp(y0, y1),
            boxes_xyxy[:, 2].clamp(x0, x1),
            boxes_xyxy[:, 3].clamp(y0, y1),
        ],
        dim=1,
    )  # (N, 4)
    index = ((clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])).nonzero().flatten()
    origin = clipped.new_tensor([x0, y0, x0, y0])
    return index, (clipped[index] - origin) * factor


def pad_to_common_size(frames: list[np.ndarray]) -> list[np.ndarray]:
    """``(h_i, w_i, 3)`` frames padded (black, at the bottom and right) to the largest height and width among them;
    pixel coordinates from the top left, as the boxes drawn on them use, stay valid."""
    if not frames:
        return frames
    height, width = max(f.shape[0] for f in frames), max(f.shape[1] for f in frames)
    return [np.pad(f, ((0, height - f.shape[0]), (0, width - f.shape[1]), (0, 0))) for f in frames]


def _images_at_one_size(items: list[tuple]) -> list:
    """``(frame, gt, preds, class_labels, caption)`` tuples -> ``wandb.Image`` list, every frame at one size."""
    frames = pad_to_common_size([item[0] for item in items])
    return [_wandb_image(frame, *item[1:]) for frame, item in zip(frames, items)]


def zoom_nearest(frame: np.ndarray, factor: int) -> np.ndarray:
    """``(h, w, 3)`` -> ``(h * factor, w * factor, 3)``: every pixel becomes a ``factor x factor`` block."""
    return np.repeat(np.repeat(frame, factor, axis=0), factor, axis=1)


def _to_uint8(images: torch.Tensor) -> list:
    array = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3)
    return list(array)


def _class_labels(class_names: list[str] | None, labels: torch.Tensor) -> dict[int, str]:
    """W&B needs a name for every class id it draws: the dataset's names, the index for any other."""
    count = max(len(class_names or []), int(labels.max()) + 1 if labels.numel() else 0)
    return {i: (class_names[i] if class_names and i < len(class_names) else str(i)) for i in range(count)}


def _wandb_image(frame: np.ndarray, gt: tuple, preds: tuple, class_labels: dict[int, str], caption: str):
    """A ``wandb.Image`` with ``ground_truth`` (boxes, labels) and ``predictions`` (boxes, labels, scores)
    box sets in the pixels of ``frame``; W&B draws them over the image."""
    import wandb

    def box(xyxy, label, score=None):
        x1, y1, x2, y2 = xyxy
        data = {
            "position": {"minX": x1, "minY": y1, "maxX": x2, "maxY": y2},
            "domain": "pixel",
            "class_id": int(label),
            "box_caption": class_labels[int(label)] if score is None else f"{class_labels[int(label)]} {score:.2f}",
        }
        if score is not None:
            data["scores"] = {"score": score}
        return data

    gt_xyxy, gt_labels = gt
    pred_xyxy, pred_labels, pred_scores = preds
    boxes = {
        "ground_truth": [box(b, c) for b, c in zip(gt_xyxy.tolist(), gt_labels.tolist())],
        "predictions": [
            box(b, c, s) for b, c, s in zip(pred_xyxy.tolist(), pred_labels.tolist(), pred_scores.tolist())
        ],
    }
    return wandb.Image(
        np.ascontiguousarray(frame),  # a view without the padding is strided; PIL wants contiguous rows
        caption=caption,
        boxes={key: {"box_data": data, "class_labels": class_labels} for key, data in boxes.items()},
    )


WANDB_RUN_ID_KEY = "wandb_run_id"


class WandbRunId(L.Callback):
    """Stores the W&B run id in every checkpoint, so that resuming from it continues the same W&B run.

    Lightning checkpoints do not record the run (Lightning#4935). This writes ``checkpoint["wandb_run_id"]``
    (the first :class:`WandbLogger`'s run id); :func:`read_wandb_run_id` reads it back, and
    :class:`tod_lightning.cli.TinyObjectCLI` passes it to the logger on ``fit --ckpt_path``. The CLI adds this
    callback to every run; without a W&B logger it writes nothing.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                # ``version`` is the live run's id (rank 0) or the id the logger was given; never starts a run.
                run_id = logger.version
                if run_id:
                    checkpoint[WANDB_RUN_ID_KEY] = run_id
                return


def read_wandb_run_id(ckpt_path: str | os.PathLike) -> str | None:
    """The W&B run id :class:`WandbRunId` stored in a checkpoint, or ``None`` (none stored, or not a file)."""
    from lightning.fabric.utilities.cloud_io import _load, get_filesystem

    path = str(ckpt_path)
    fs = get_filesystem(path)
    if not fs.isfile(path):
        return None
    checkpoint = None
    if os.path.isfile(path):
        try:  # memory-mapped: the weights are not read to get one string
            checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        except RuntimeError:  # a file in torch's legacy (non-zip) format cannot be memory-mapped
            pass
    if checkpoint is None:
        checkpoint = _load(path, map_location="cpu", weights_only=False)
    run_id = checkpoint.get(WANDB_RUN_ID_KEY)
    return str(run_id) if run_id else None
