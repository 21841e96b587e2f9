"""The Lightning data module for COCO-format splits (or the embedded synthetic dataset)."""

from __future__ import annotations

import functools
import logging

import lightning
import torch
from torch.utils.data import DataLoader, Dataset

from tod_lightning.data.collate import collate_detection
from tod_lightning.data.dataset import DetectionDataset, ImageFolderDataset, MixTransform, Tiling
from tod_lightning.data.frame_groups import FrameGroupedSampler
from tod_lightning.data.splits import SplitSource
from tod_lightning.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.data.transforms import EvalTransform, TrainAugmentation

logger = logging.getLogger(__name__)


def _stream_seed(rank: int) -> int:
    """The seed of this process's augmentation stream: torch's (per worker, per epoch, set by
    ``seed_everything``) mixed with the DDP rank, whose processes all share one global seed but must not draw
    the same augmentations (or mosaic sources) for their different images."""
    return (torch.initial_seed() + 1_000_003 * rank) % 2**32


def _worker_init(worker_id: int, rank: int = 0) -> None:
    """Give each data-loader worker its own augmentation stream.

    Forked workers inherit the parent's random states (the dataset's mixing draws, albumentations'
    generator), so without a reseed every worker would draw the same augmentations. ``torch.initial_seed()``
    differs per worker (and per epoch, and follows ``seed_everything``), so runs stay reproducible. (Not
    ``cv2.setNumThreads`` here: in a worker
    forked after the parent used OpenCV's thread pool it deadlocks.)
    """
    dataset = torch.utils.data.get_worker_info().dataset
    if hasattr(dataset, "set_seed"):
        dataset.set_seed(_stream_seed(rank))


class DetectionDataModule(lightning.LightningDataModule):
    """Train/val/test/predict loaders of annotated splits (COCO/AI-TOD, VisDrone, YOLO), yielding
    :class:`~tod_lightning.structures.Batch`.

    ``num_classes``, ``class_names`` and ``category_ids`` are known right after construction (read from the
    first annotated split), so a CLI can link ``data.num_classes`` to the model. All annotated splits must have
    the same categories.

    Args:
        train, val, test: splits (``class_path``: ``tod_lightning.data.CocoSplit``, ``VisDroneSplit``,
            ``YoloSplit``); ``None`` for none.
        predict: a split, or a path to a bare folder of images (no annotations), or ``None``.
        synthetic: if set, the embedded synthetic dataset of this spec is generated once under ``cache_dir``
            (or reused) and fills those of ``train``/``val``/``test`` that are ``None``.
        cache_dir: folder for generated data (the synthetic dataset).
        batch_size: images per training batch.
        eval_batch_size: images per val/test/predict batch (``None``: ``batch_size``).
        num_workers: data-loader worker processes per loader (0: load in the main process).
        train_augmentation: transform of training samples (``None``: ``TrainAugmentation()``).
        eval_transform: transform of val/test/predict samples (``None``: ``EvalTransform()``, the identity).
        size_divisor: padded batch height and width are multiples of this (pixels; the largest stride).
        persistent_workers: keep workers alive between epochs (only applies when ``num_workers > 0``).
        pin_memory: ``DataLoader(pin_memory=...)``.
        train_tiling: if set, the train split is cut into tiles by it (e.g. ``tod_lightning.data.TileSpec``);
            val/test/predict stay whole images (pair with the model's sliced inference).
        train_frames_per_group: with ``train_tiling``, shuffle the frames and give each loader worker (of each
            DDP rank) the tiles of this many frames at a time (shuffled among themselves), and keep as many decoded
            frames in each worker, so that a frame is decoded about once per epoch instead of once per tile
            (:mod:`tod_lightning.data.frame_groups`; memory: this many frames per worker). Use at least twice
            ``batch_size`` (a warning says so below that, or where the split has too few frames to give every
            worker that many): batches drawn from few frames train worse. ``0``: every tile drawn from the whole
            split and decoded on its own.
        train_mixing: transforms that mix several training samples (``tod_lightning.data.Mosaic``,
            ``tod_lightning.data.TinyCopyPaste``), applied in order before ``train_augmentation``.
        strict: bad input (see :mod:`tod_lightning.data.problems`) raises an error naming the file and the
            record (``True``), or is skipped, counted, logged when the split is built and reported at the end
            of the run (``False``; images that cannot be decoded are dropped from their batch).
    """

    def __init__(
        self,
        train: SplitSource | None = None,
        val: SplitSource | None = None,
        test: SplitSource | None = None,
        predict: SplitSource | str | None = None,
        synthetic: SyntheticSpec | None = None,
        cache_dir: str = ".cache/tod_lightning",
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        train_augmentation: TrainAugmentation | None = None,
        eval_transform: EvalTransform | None = None,
        size_divisor: int = 32,
        persistent_workers: bool = True,
        pin_memory: bool = False,
        train_tiling: Tiling | None = None,
        train_mixing: list[MixTransform] | None = None,
        strict: bool = True,
        train_frames_per_group: int = 0,
    ):
        super().__init__()
        if synthetic is not None:
            generated = ensure_synthetic_dataset(cache_dir, synthetic)
            train, val, test = (
                split or generated.get(name) for name, split in (("train", train), ("val", val), ("test", test))
            )
        self.splits: dict[str, SplitSource | str | None] = {
            "train": train,
            "val": val,
            "test": test,
            "predict": predict,
        }
        self.batch_size, self.num_workers = batch_size, num_workers
        self.eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
        self.train_augmentation = TrainAugmentation() if train_augmentation is None else train_augmentation
        self.eval_transform = EvalTransform() if eval_transform is None else eval_transform
        self.size_divisor, self.persistent_workers, self.pin_memory = size_divisor, persistent_workers, pin_memory
        self.strict = strict
        self.train_tiling, self.train_mixing = train_tiling, list(train_mixing or [])
        if train_frames_per_group < 0 or (train_frames_per_group and train_tiling is None):
            raise ValueError(
                f"train_frames_per_group={train_frames_per_group}: needs train_tiling and a value >= 0 (it groups "
                "the tiles of frames; whole images have one sample per frame)"
            )
        self.train_frames_per_group = train_frames_per_group
        if 0 < train_frames_per_group < 2 * batch_size:
            logger.warning(
                "train_frames_per_group=%d with batch_size=%d: each batch draws its tiles from a few frames. With "
                "4 frames per group (batch 8) configs/tiled.yaml lost 0.10 AP; use at least 2 x batch_size "
                "(docs/data/tiling.md)",
                train_frames_per_group,
                batch_size,
            )
        self.datasets: dict[str, Dataset] = {}

        self._categories: tuple[list[int], list[str]] | None = None
        first_file = None
        for split in self.splits.values():
            if isinstance(split, SplitSource):
                categories = split.categories()
                if self._categories is None:
                    self._categories, first_file = categories, split.source
                elif categories != self._categories:
                    raise ValueError(
                        f"splits disagree on categories: {first_file} has "
                        f"{self._describe(self._categories)}, {split.source} has "
                        f"{self._describe(categories)}"
                    )

    @staticmethod
    def _describe(categories: tuple[list[int], list[str]]) -> str:
        return "{" + ", ".join(f"{i}: {n!r}" for i, n in zip(*categories)) + "}"

    def _require_categories(self) -> tuple[list[int], list[str]]:
        if self._categories is None:
            raise ValueError("no annotated split (train/val/test/predict) to read the categories from")
        return self._categories

    @property
    def num_classes(self) -> int:
        return len(self._require_categories()[0])

    @property
    def class_names(self) -> list[str]:
        return list(self._require_categories()[1])

    @property
    def category_ids(self) -> list[int]:
        """The original COCO category id of each contiguous label."""
        return list(self._require_categories()[0])

    # ----------------------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict:
        """Saved in checkpoints: the label -> category mapping, so that predicting on a bare image folder or
        exporting a model still writes the dataset's own category ids and names, and the padding divisor, so
        that an export pads images as this data module did."""
        state = {"size_divisor": self.size_divisor}
        if self._categories is not None:
            state.update(category_ids=self.category_ids, class_names=self.class_names)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        """Adopt a checkpoint's categories when no annotated split is configured; refuse different ones (the
        head's labels would silently map to the wrong category ids)."""
        if "category_ids" not in state_dict:
            return
        saved = (list(state_dict["category_ids"]), list(state_dict["class_names"]))
        if self._categories is None:
            self._categories = saved
        elif saved != self._categories:
            raise ValueError(
                f"the checkpoint was trained on categories {self._describe(saved)}, but the configured data has "
                f"{self._describe(self._categories)}"
            )

    def _build(self, name: str) -> None:
        split = self.splits[name]
        if split is None or name in self.datasets:
            return
        transform = self.train_augmentation if name == "train" else self.eval_transform
        if isinstance(split, str):
            dataset = ImageFolderDataset(split, transform, strict=self.strict)
        else:
            train = name == "train"
            dataset = DetectionDataset(
                split.load(self.strict),
                split.images_dir,
                transform,
                strict=self.strict,
                tiling=self.train_tiling if train else None,
                mixing=self.train_mixing if train else (),
                frame_cache=self.train_frames_per_group if train else 0,
            )
            if (dataset.category_ids, dataset.class_names) != self._categories:  # the cheap read guessed wrong
                full = self._describe((dataset.category_ids, dataset.class_names))
                raise ValueError(
                    f"{split.source}: categories {full} differ from {self._describe(self._require_categories())}"
                )
        self.datasets[name] = dataset
        logger.info("%s split: %s", name, ", ".join(f"{k}={v}" for k, v in dataset.summary().items()))
        if len(dataset.problems):
            logger.warning(
                "%s split (%s) problems:\n%s", name, getattr(split, "source", split), dataset.problems.format()
            )

    def setup(self, stage: str | None = None) -> None:
        """Build the datasets ``stage`` needs (``fit``: train + val; ``None``: all)."""
        names = {"fit": ["train", "val"], "validate": ["val"], "test": ["test"], "predict": ["predict"]}
        for name in names.get(stage, ["train", "val", "test", "predict"]):
            self._build(name)

    def _loader(self, name: str, batch_size: int, shuffle: bool, grouped: bool = False) -> DataLoader:
        self._build(name)
        if name not in self.datasets:
            raise ValueError(f"no {name} split configured")
        dataset = self.datasets[name]
        rank = self.trainer.global_rank if self.trainer is not None else 0
        if self.num_workers == 0 and hasattr(dataset, "set_seed"):
            # Loading in this process: seed the random streams from torch (which follows
            # seed_everything) as _worker_init does in workers, or runs would differ from run to run.
            dataset.set_seed(_stream_seed(rank))
        sampler = None
        if grouped and self.train_frames_per_group:
            # Shuffles by itself, laid out for the ranks and workers that read it, and deals the order out to the
            # DDP ranks itself (a DistributedSampler: Lightning would reshuffle it in a wrapper of its own);
            # Lightning calls its set_epoch.
            world_size = self.trainer.world_size if self.trainer is not None else 1
            frame_of = [frame for frame, _ in dataset.index]
            sampler = FrameGroupedSampler(
                frame_of, self.train_frames_per_group, None, batch_size, self.num_workers, world_size, rank
            )
            shuffle = False
            # Each worker of each rank draws from frames of its own: a small split leaves each of them few.
            frames, consumers = len(set(frame_of)), world_size * max(self.num_workers, 1)
            frames_each = min(self.train_frames_per_group, frames // consumers)
            if 2 * batch_size <= self.train_frames_per_group and frames_each < min(2 * batch_size, frames):
                logger.warning(
                    "train_frames_per_group=%d: the split's %d frames give each of the %d loader workers (%d per "
                    "rank) only %d frames at a time, fewer than 2 x batch_size = %d; batches drawn from few frames "
                    "train worse (docs/data/tiling.md): use fewer workers or train_frames_per_group=0",
                    self.train_frames_per_group,
                    frames,
                    consumers,
                    max(self.num_workers, 1),
                    frames_each,
                    2 * batch_size,
                )
        return DataLoader(
            self.datasets[name],
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            drop_last=False,
            num_workers=self.num_workers,
            collate_fn=functools.partial(collate_detection, size_divisor=self.size_divisor),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            worker_init_fn=functools.partial(_worker_init, rank=rank) if self.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.batch_size, shuffle=True, grouped=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", self.eval_batch_size, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("predict", self.eval_batch_size, shuffle=False)
