"""Decode a large frame once for many of its tiles, not once per tile.

Training on tiles (:class:`~tod_lightning.data.TileSpec`) makes every tile a sample, and a sample decodes its
whole frame: a 2000 x 1500 PNG cut into 20 tiles is decoded 20 times an epoch (``benchmarks/data_pipeline.py``:
~20 tiles/s per worker). Two parts remove most of that work:

- :class:`FrameGroupedSampler` shuffles the frames, takes them ``frames_per_group`` at a time and shuffles the
  tiles of each group among themselves, so the tiles of a frame are drawn close together in the epoch;
- :class:`FrameCache`, held by the dataset in each loader worker, keeps the last ``frames_per_group`` decoded
  frames, so a worker decodes each frame of a group at most once.

A data-loader worker gets every ``num_workers``-th batch, so within a group each worker still sees tiles of all
of its frames: an epoch decodes each frame about ``min(num_workers, tiles per frame)`` times (per DDP rank)
instead of once per tile. The price is a less global shuffle: a batch holds tiles of at most a couple of groups
of ``frames_per_group`` frames, not of the whole split. Mixing transforms (mosaic, copy-paste) still draw their
sources from the whole split; each source decodes its frame, which takes a place in the cache. No Lightning
here; the data module wires it up.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler


class FrameGroupedSampler(Sampler[int]):
    """Sample indices shuffled frame group by frame group: frames in random order, ``frames_per_group`` at a
    time, and the samples (tiles) of each group in random order among themselves.

    Deterministic for a given ``seed`` and epoch, and the same in every process, as
    ``torch.utils.data.DistributedSampler`` is (Lightning's ``DistributedSamplerWrapper`` then deals the indices
    out to the DDP ranks, and forwards :meth:`set_epoch`, which Lightning calls every epoch).

    Args:
        frame_of: ``(N,)`` the frame (image index) of each sample; samples of one frame share its decode.
        frames_per_group: frames whose tiles are shuffled together (>= 1); also the frame cache size to use.
        seed: the shuffles' seed; ``None``: ``PL_GLOBAL_SEED`` (set by ``seed_everything``), else 0, as
            Lightning's distributed sampler.
    """

    def __init__(self, frame_of: Sequence[int], frames_per_group: int, seed: int | None = None):
        if frames_per_group < 1:
            raise ValueError(f"frames_per_group must be >= 1, got {frames_per_group}")
        self.frame_of = np.asarray(frame_of, np.int64).reshape(-1)
        self.frames_per_group = frames_per_group
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        self.epoch = 0
        # The samples of each frame, frame by frame: a stable sort keeps each frame's samples in index order.
        by_frame = np.argsort(self.frame_of, kind="stable")
        frames, first = np.unique(self.frame_of[by_frame], return_index=True)
        self._samples_of = np.split(by_frame, first[1:]) if len(frames) else []

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.frame_of)

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        frames = rng.permutation(len(self._samples_of))
        for start in range(0, len(frames), self.frames_per_group):
            group = np.concatenate([self._samples_of[f] for f in frames[start : start + self.frames_per_group]])
            yield from rng.permutation(group).tolist()


class FrameCache:
    """The last ``size`` decoded frames, least recently used out first; ``size = 0`` keeps none.

    ``decodes`` and ``hits`` count the calls of :meth:`get` that decoded and that reused a frame (per process:
    each loader worker has its own cache). Frames are returned as stored: the caller must not modify them.
    """

    def __init__(self, size: int):
        if size < 0:
            raise ValueError(f"frame cache size must be >= 0, got {size}")
        self.size = size
        self.decodes = self.hits = 0
        self._frames: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def get(self, key: int, decode: Callable[[], np.ndarray]) -> np.ndarray:
        """The frame ``key``, decoded by ``decode()`` unless cached. A frame that fails to decode is not cached."""
        frame = self._frames.get(key)
        if frame is not None:
            self._frames.move_to_end(key)
            self.hits += 1
            return frame
        frame = decode()
        self.decodes += 1
        if self.size:
            self._frames[key] = frame
            if len(self._frames) > self.size:
                self._frames.popitem(last=False)
        return frame
