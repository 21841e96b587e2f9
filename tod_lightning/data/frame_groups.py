"""Decode a large frame once for many of its tiles, not once per tile.

Training on tiles (:class:`~tod_lightning.data.TileSpec`) makes every tile a sample, and a sample decodes its
whole frame: a 2000 x 1500 PNG cut into 20 tiles is decoded 20 times an epoch (``benchmarks/data_pipeline.py``:
~20 tiles/s per worker). Two parts remove most of that work:

- :class:`FrameGroupedSampler` shuffles the frames, gives them to each loader worker ``frames_per_group`` at a
  time and shuffles the tiles of each group among themselves, so the tiles of a frame are drawn close together
  in the epoch, by one worker;
- :class:`FrameCache`, held by the dataset in each loader worker, keeps the last ``frames_per_group`` decoded
  frames, so a worker decodes each frame of a group at most once.

A data-loader worker gets every ``num_workers``-th batch, and a DDP rank every ``num_replicas``-th sample of the
order (the sampler deals it out to the ranks itself). Given those (the data module passes them), the sampler lays
the order out so that each (rank, worker) draws its batches from frames of its own: an epoch decodes each frame
about once. Without them (the defaults: one
worker, one rank) every worker would see tiles of all the frames of a group and decode each of them, about
``min(workers, tiles per frame)`` decodes per frame and epoch. The price of grouping is a less global shuffle: a
batch holds tiles of a couple of groups of ``frames_per_group`` frames, not of the whole split. Mixing transforms
(mosaic, copy-paste) still draw their sources from the whole split; each source decodes its frame, which takes a
place in the cache. No Lightning here; the data module wires it up.
"""

from __future__ import annotations

import collections
import os
from typing import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import DistributedSampler


class FrameGroupedSampler(DistributedSampler):
    """Sample indices shuffled frame group by frame group: frames in random order, ``frames_per_group`` at a
    time for each loader worker of each DDP rank, and the samples (tiles) of each worker's group in random order
    among themselves.

    The epoch's order (:meth:`epoch_order`, the same in every process for a given ``seed`` and epoch) is dealt
    out to the ranks as ``torch.utils.data.DistributedSampler`` deals its indices: rank ``r`` reads positions
    ``r, r + num_replicas, ...`` (the order padded with its first samples to a multiple of the ranks). Being a
    ``DistributedSampler``, it is not wrapped by Lightning, whose own wrapper would reshuffle the order of a
    training loader. Rank ``r``'s ``q``-th sample is in batch ``q // batch_size``, which ``DataLoader`` hands to
    worker ``batch % num_workers`` (its fixed round-robin, restarted at worker 0 every epoch). The order is laid
    out for these ``num_replicas * max(num_workers, 1)`` consumers: each takes the next ``frames_per_group``
    frames when it has read the tiles of its last ones, so each frame is decoded by one worker. Near the end of
    the epoch the consumers share out the frames left; a consumer whose tiles run out after that takes the rest
    of a frame from the consumer with the most tiles left, which decodes that frame a second time. With one
    consumer (the defaults) the order is a group of ``frames_per_group`` frames after another.

    Args:
        frame_of: ``(N,)`` the frame (image index) of each sample; samples of one frame share its decode.
        frames_per_group: frames whose tiles are shuffled together for one consumer (>= 1); also the frame cache
            size to use in each worker.
        seed: the shuffles' seed; ``None``: ``PL_GLOBAL_SEED`` (set by ``seed_everything``), else 0, as
            Lightning's distributed sampler.
        batch_size: the loader's batch size; ``num_workers``: its worker processes (0: the main process). They
            only place the samples: any values give every sample once.
        num_replicas: the DDP world size; ``rank``: this process's global rank.
    """

    def __init__(
        self,
        frame_of: Sequence[int],
        frames_per_group: int,
        seed: int | None = None,
        batch_size: int = 1,
        num_workers: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ):
        if frames_per_group < 1:
            raise ValueError(f"frames_per_group must be >= 1, got {frames_per_group}")
        if batch_size < 1 or num_workers < 0:
            raise ValueError(f"batch_size={batch_size}, num_workers={num_workers}: need >= 1 and >= 0")
        self.frame_of = np.asarray(frame_of, np.int64).reshape(-1)
        seed = int(os.environ.get("PL_GLOBAL_SEED", 0)) if seed is None else seed
        # Lengths, rank checks and set_epoch as DistributedSampler's; its shuffle is not used (the order is ours).
        super().__init__(self.frame_of, num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.frames_per_group, self.batch_size, self.num_workers = frames_per_group, batch_size, num_workers
        # The samples of each frame, frame by frame: a stable sort keeps each frame's samples in index order.
        by_frame = np.argsort(self.frame_of, kind="stable")
        frames, first = np.unique(self.frame_of[by_frame], return_index=True)
        self._samples_of = np.split(by_frame, first[1:]) if len(frames) else []

    def __iter__(self) -> Iterator[int]:
        order = _padded(self.epoch_order(), self.num_replicas)
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def consumer(self, position: int) -> int:
        """The (rank, worker) that reads position ``position`` of the epoch's order, as ``rank * workers +
        worker``."""
        workers = max(self.num_workers, 1)
        rank, sample = position % self.num_replicas, position // self.num_replicas
        return rank * workers + (sample // self.batch_size) % workers

    def epoch_order(self) -> list[int]:
        """The order of the whole epoch (all ranks), before it is dealt out."""
        rng = np.random.default_rng([self.seed, self.epoch])
        frames = rng.permutation(len(self._samples_of))
        consumers = self.num_replicas * max(self.num_workers, 1)
        queues: list[list[int]] = [[] for _ in range(consumers)]  # each consumer's tiles, drawn and to draw
        taken, order, next_frame = [0] * consumers, [], 0
        for position in range(len(self.frame_of)):
            c = self.consumer(position)
            if taken[c] == len(queues[c]):  # the consumer's group is used up: its next frames, else another's
                if next_frame < len(frames):  # a group, or near the end an even share of the frames left
                    size = min(self.frames_per_group, -(-(len(frames) - next_frame) // consumers))
                    group = frames[next_frame : next_frame + size]
                    next_frame += size
                    queues[c] += rng.permutation(np.concatenate([self._samples_of[f] for f in group])).tolist()
                else:
                    self._steal_frame(queues, taken, c)
            order.append(queues[c][taken[c]])
            taken[c] += 1
        return order

    def _steal_frame(self, queues: list[list[int]], taken: list[int], thief: int) -> None:
        """Moves to the used-up queue ``thief`` the remaining tiles of the frame with the most tiles left in the
        queue with the most left: one more decode of that frame, for as many tiles as possible."""
        donor = max(range(len(queues)), key=lambda k: len(queues[k]) - taken[k])
        rest = queues[donor][taken[donor] :]
        frame = collections.Counter(int(self.frame_of[i]) for i in rest).most_common(1)[0][0]
        queues[donor][taken[donor] :] = [i for i in rest if self.frame_of[i] != frame]
        queues[thief] += [i for i in rest if self.frame_of[i] == frame]


def count_decodes(
    order: Sequence[int],
    frame_of: Sequence[int],
    cache_size: int,
    batch_size: int,
    num_workers: int = 0,
    num_replicas: int = 1,
) -> int:
    """The frame decodes of one epoch's ``order`` (all ranks: :meth:`FrameGroupedSampler.epoch_order`) read by
    ``num_replicas`` DDP ranks (each its ``DistributedSampler`` share, padded as it pads) through ``DataLoader``'s
    batches and workers, each worker with a :class:`FrameCache` of ``cache_size`` frames: the cost the order
    implies, without decoding."""
    frame_of = np.asarray(frame_of, np.int64).reshape(-1)
    order = _padded(list(order), num_replicas)
    workers, decodes = max(num_workers, 1), 0
    for rank in range(num_replicas):
        samples = order[rank::num_replicas]
        caches = [FrameCache(cache_size) for _ in range(workers)]
        for batch, start in enumerate(range(0, len(samples), batch_size)):
            cache = caches[batch % workers]
            for index in samples[start : start + batch_size]:
                cache.get(int(frame_of[index]), lambda: np.empty(0))
        decodes += sum(cache.decodes for cache in caches)
    return decodes


def _padded(order: list[int], num_replicas: int) -> list[int]:
    """``order`` repeated from its start up to a multiple of ``num_replicas``, as ``DistributedSampler`` pads."""
    total = -(-len(order) // num_replicas) * num_replicas
    return (order * -(-total // len(order)))[:total] if order else order


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
