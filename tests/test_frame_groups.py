"""Decoding a frame once for its tiles: the grouped sampler's order, the frame cache, and both through the dataset
and the data module (the tiles are the same, the decodes fewer)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tod_lightning.data import DetectionDataModule, DetectionDataset, SyntheticSpec, TileSpec, ensure_synthetic_dataset
from tod_lightning.data.coco import read_coco
from tod_lightning.data.frame_groups import FrameCache, FrameGroupedSampler, _padded, count_decodes

# 4 scenes of 300 x 400 px, 12 tiles of 128 px each (every tile holds an object).
SCENE = SyntheticSpec(
    image_size=(300, 400),
    density_side=100,
    num_train=4,
    num_val=1,
    seed=9,
    size_mix=(0.5, 0.5, 0.0, 0.0),
    empty_fraction=0.0,
    dense_fraction=1.0,
    dense_min=5,
    dense_max=8,
)
TILES = TileSpec(tile_size=128, overlap=32, empty_tile_ratio=1.0)


def _groups_of(order: list[int], frame_of: np.ndarray, frames_per_group: int) -> list[set[int]]:
    """The frames of each successive group of the order, found by walking it: a group ends when all the samples
    of its frames have been drawn."""
    remaining = np.bincount(frame_of)
    groups, current, open_samples = [], set(), 0
    for index in order:
        frame = int(frame_of[index])
        if frame not in current:
            current.add(frame)
            open_samples += int(remaining[frame])
        open_samples -= 1
        if open_samples == 0 and (
            len(current) == frames_per_group or sum(map(len, groups)) + len(current) == len(remaining)
        ):
            groups.append(current)
            current = set()
    assert not current, "the order ended inside a group"
    return groups


@pytest.mark.parametrize("frames_per_group", [1, 3, 4, 10])
def test_sampler_draws_every_sample_once_frame_group_by_frame_group(frames_per_group):
    frame_of = np.repeat(np.arange(10), [5, 1, 7, 3, 3, 9, 2, 4, 6, 1])  # 10 frames, uneven tile counts
    frame_of = frame_of[np.random.default_rng(0).permutation(len(frame_of))]  # not in frame order
    sampler = FrameGroupedSampler(frame_of.tolist(), frames_per_group, seed=3)
    order = list(sampler)
    assert sorted(order) == list(range(len(frame_of))) and len(sampler) == len(frame_of)
    groups = _groups_of(order, frame_of, frames_per_group)
    assert [len(g) for g in groups[:-1]] == [frames_per_group] * (len(groups) - 1)  # the last may be short
    assert set().union(*groups) == set(range(10))
    if frames_per_group > 1:  # tiles of one group are shuffled among themselves, not drawn frame after frame
        assert any(
            frame_of[a] != frame_of[b] and frame_of[a] == frame_of[c] for a, b, c in zip(order, order[1:], order[2:])
        )


def test_sampler_is_fixed_by_seed_and_epoch():
    frame_of = np.repeat(np.arange(8), 6).tolist()
    a, b = FrameGroupedSampler(frame_of, 2, seed=1), FrameGroupedSampler(frame_of, 2, seed=1)
    assert list(a) == list(b)  # every DDP rank draws the same order before the sampler deals it out
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == sorted(first)
    assert list(FrameGroupedSampler(frame_of, 2, seed=2)) != first
    with pytest.raises(ValueError, match="frames_per_group"):
        FrameGroupedSampler(frame_of, 0)


def test_sampler_seed_follows_seed_everything(monkeypatch):
    frame_of = np.repeat(np.arange(8), 6).tolist()
    monkeypatch.setenv("PL_GLOBAL_SEED", "7")
    assert list(FrameGroupedSampler(frame_of, 2)) == list(FrameGroupedSampler(frame_of, 2, seed=7))


UNEVEN = np.repeat(np.arange(60), np.random.default_rng(4).integers(3, 30, 60))  # 60 frames, 3-29 tiles each


@pytest.mark.parametrize(
    "workers,replicas,batch,most",
    [(2, 1, 8, 63), (4, 1, 8, 63), (3, 1, 5, 63), (0, 2, 6, 63), (8, 2, 4, 95)],  # (8, 2, 4): 16 readers, 60 frames
)
def test_sampler_gives_each_worker_its_own_frames(workers, replicas, batch, most):
    """Laid out for the (rank, worker) that reads each position, the order costs about one decode per frame (the
    readers share the frames left at the end of the epoch, and a reader whose tiles run out takes a frame from
    another); without that layout every worker decodes the frames of every group it reads."""
    frame_of = UNEVEN[np.random.default_rng(1).permutation(len(UNEVEN))]
    laid_out = FrameGroupedSampler(frame_of, 8, seed=2, batch_size=batch, num_workers=workers, num_replicas=replicas)
    shared = FrameGroupedSampler(frame_of, 8, seed=2, batch_size=batch)
    order = laid_out.epoch_order()
    assert sorted(order) == list(range(len(frame_of)))  # every sample once
    decodes = count_decodes(order, frame_of, 8, batch, workers, replicas)
    assert 60 <= decodes <= most
    assert count_decodes(shared.epoch_order(), frame_of, 8, batch, workers, replicas) > 1.9 * decodes
    even = np.repeat(np.arange(64), 20)  # 64 frames of 20 tiles, batches of 4: one decode each but at the end
    sampler = FrameGroupedSampler(even, 8, seed=2, batch_size=4, num_workers=workers, num_replicas=replicas)
    assert 64 <= count_decodes(sampler.epoch_order(), even, 8, 4, workers, replicas) <= 64 + 4 * (workers == 3)


def test_count_decodes_follows_the_dataloader_and_ddp_deal():
    frame_of = [0, 0, 1, 1, 2, 2, 0]
    # one rank, 2 workers, batches of 2: worker 0 reads batches 0 and 2 (frames 0, 0 | 2, 2), worker 1 batches
    # 1 and 3 (frames 1, 1 | 0): 2 + 2 decodes with caches of 1 frame
    assert count_decodes(range(7), frame_of, 1, 2, num_workers=2) == 4
    assert count_decodes(range(7), frame_of, 0, 2, num_workers=2) == 7  # no cache: every read decodes
    # 2 ranks: rank 0 reads 0, 2, 4, 6 (frames 0, 1, 2, 0), rank 1 reads 1, 3, 5 and the padding 0 (0, 1, 2, 0)
    assert count_decodes(range(7), frame_of, 3, 4, num_replicas=2) == 6


class _FrameReader(torch.utils.data.Dataset):
    """Samples that read their frame through a :class:`FrameCache`, as ``DetectionDataset`` does, and report
    which worker read them and how many decodes it has made."""

    def __init__(self, frame_of, cache_size):
        self.frame_of, self.cache = frame_of, FrameCache(cache_size)

    def __len__(self):
        return len(self.frame_of)

    def __getitem__(self, index):
        self.cache.get(int(self.frame_of[index]), lambda: np.zeros(1))
        info = torch.utils.data.get_worker_info()
        return {"index": index, "worker": info.id if info else 0, "decodes": self.cache.decodes}


@pytest.mark.parametrize("replicas", [1, 2])
def test_real_loader_workers_decode_as_counted(replicas):
    """The layout's assumptions hold for torch's DataLoader (batch b to worker b % workers, from worker 0 every
    epoch) with the sampler's own deal to the ranks: the decodes the workers make are the ones counted, about one
    per frame."""
    frame_of, batch, workers = np.repeat(np.arange(12), 10)[:-1], 5, 2  # 12 frames, 119 tiles (2 ranks: padded)
    for epoch in (0, 1):
        decodes, seen = 0, []
        for rank in range(replicas):
            sampler = FrameGroupedSampler(frame_of, 3, 0, batch, workers, num_replicas=replicas, rank=rank)
            sampler.set_epoch(epoch)
            loader = torch.utils.data.DataLoader(
                _FrameReader(frame_of, 3), batch_size=batch, sampler=sampler, num_workers=workers
            )
            last = {}
            for b, out in enumerate(loader):
                assert set(out["worker"].tolist()) == {b % workers}
                last[b % workers] = int(out["decodes"].max())
                seen += out["index"].tolist()
            decodes += sum(last.values())
        assert len(seen) == len(frame_of) + (replicas - 1) and sorted(set(seen)) == list(range(len(frame_of)))
        order = sampler.epoch_order()
        # 12 frames; with 2 ranks the padded sample and the uneven end cost a few more
        assert decodes == count_decodes(order, frame_of, 3, batch, workers, replicas) <= 12 + 3 * (replicas - 1)


def test_frame_cache_keeps_the_most_recent_frames():
    cache, decoded = FrameCache(2), []

    def decoder(key):
        def decode():
            decoded.append(key)
            return np.full((2, 2), key)

        return decode

    for key in [1, 2, 1, 3, 2, 1]:  # 3 evicts 2 (1 was used more recently), then 2 evicts 1
        assert cache.get(key, decoder(key))[0, 0] == key
    assert decoded == [1, 2, 3, 2, 1] and (cache.decodes, cache.hits) == (5, 1)

    def broken():
        raise OSError("corrupt")

    with pytest.raises(OSError):
        cache.get(9, broken)
    assert cache.get(9, decoder(9))[0, 0] == 9 and decoded[-1] == 9  # a failed decode was not cached
    none = FrameCache(0)
    none.get(1, decoder(1)), none.get(1, decoder(1))
    assert (none.decodes, none.hits) == (2, 0)
    with pytest.raises(ValueError, match="frame cache"):
        FrameCache(-1)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return ensure_synthetic_dataset(tmp_path_factory.mktemp("frames"), SCENE)


def _scribbling_transform(image, boxes_xyxy, labels, ignore_xyxy):
    """A transform that writes into its input image, as an in-place augmentation may."""
    out = {"image": image.copy(), "boxes_xyxy": boxes_xyxy, "labels": labels, "ignore_xyxy": ignore_xyxy}
    out["num_dropped"] = 0
    image[...] = 0
    return out


def test_cached_frames_give_the_same_tiles_with_one_decode_per_frame(scenes):
    split = scenes["train"]
    annotations = read_coco(split.ann_file)
    plain = DetectionDataset(annotations, split.images_dir, tiling=TILES)
    cached = DetectionDataset(annotations, split.images_dir, _scribbling_transform, tiling=TILES, frame_cache=2)
    assert len(plain) == 4 * 12
    order = list(FrameGroupedSampler([frame for frame, _ in cached.index], 2, seed=0))
    for index in order:
        a, b = plain[index], cached[index]
        assert np.array_equal(a["image"], b["image"])  # the scribbles never reach a cached frame
        assert np.array_equal(a["boxes_xyxy"], b["boxes_xyxy"]) and np.array_equal(a["labels"], b["labels"])
    assert (plain.frames.decodes, plain.frames.hits) == (48, 0)
    assert (cached.frames.decodes, cached.frames.hits) == (4, 44)  # each frame once

    # A tile as wide as its frame (here the whole 300 x 400 frame) is a contiguous slice: it must still be copied.
    one_tile = TileSpec(tile_size=512, overlap=32)
    wide = DetectionDataset(annotations, split.images_dir, _scribbling_transform, tiling=one_tile, frame_cache=1)
    assert len(wide) == 4 and wide.index[0][1] == (0, 0, 400, 300)
    assert np.array_equal(wide[0]["image"], plain.read_image(annotations.images[0]))
    assert np.array_equal(wide[0]["image"], plain.read_image(annotations.images[0])) and wide.frames.hits == 1

    whole = DetectionDataset(annotations, split.images_dir, frame_cache=2)  # whole images: nothing to reuse
    whole[0], whole[0]
    assert whole.frames.size == 0 and whole.frames.decodes == 2


def test_datamodule_groups_the_tiles_of_frames(scenes, caplog):
    cache_dir = str(Path(scenes["train"].ann_file).parents[2])
    dm = DetectionDataModule(
        synthetic=SCENE, cache_dir=cache_dir, train_tiling=TILES, train_frames_per_group=2, batch_size=6, num_workers=0
    )
    loader = dm.train_dataloader()
    train = dm.datasets["train"]
    assert isinstance(loader.sampler, FrameGroupedSampler) and loader.sampler.frames_per_group == 2
    # laid out for this loader's readers: no trainer, one rank; under a trainer its world size
    assert (loader.sampler.batch_size, loader.sampler.num_workers, loader.sampler.num_replicas) == (6, 0, 1)
    dm.trainer = SimpleNamespace(world_size=3, global_rank=2)
    assert dm.train_dataloader().sampler.num_replicas == 3
    dm.trainer = None
    assert train.frames.size == 2
    images = sum(len(batch) for batch in loader)
    assert images == len(train) == 48 and train.frames.decodes == 4
    assert isinstance(dm.val_dataloader().sampler, torch.utils.data.SequentialSampler)  # whole images, in order

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tod_lightning.data.datamodule"):
        DetectionDataModule(synthetic=SCENE, cache_dir=cache_dir, train_tiling=TILES, train_frames_per_group=16)
        assert not caplog.records  # 16 = 2 x the default batch of 8
        DetectionDataModule(
            synthetic=SCENE, cache_dir=cache_dir, train_tiling=TILES, train_frames_per_group=15, batch_size=8
        )
    assert "train_frames_per_group=15 with batch_size=8" in caplog.text  # batches drawn from few frames
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tod_lightning.data.datamodule"):
        for workers in (0, 2):  # 4 frames: all of them for one worker, 2 each for two
            DetectionDataModule(
                synthetic=SCENE, cache_dir=cache_dir, train_tiling=TILES, train_frames_per_group=16, num_workers=workers
            ).train_dataloader()
    assert [r.getMessage()[-60:] for r in caplog.records] == [
        "frames train worse (docs/data/tiling.md): use fewer workers or train_frames_per_group=0"[-60:]
    ]
    assert "give each of the 2 loader workers (2 per rank) only 2 frames" in caplog.text
    default = DetectionDataModule(synthetic=SCENE, cache_dir=cache_dir, train_tiling=TILES, num_workers=0)
    assert isinstance(default.train_dataloader().sampler, torch.utils.data.RandomSampler)
    with pytest.raises(ValueError, match="needs train_tiling"):
        DetectionDataModule(synthetic=SCENE, cache_dir=cache_dir, train_frames_per_group=2)


def test_the_sampler_deals_its_order_out_to_ddp_ranks_and_lightning_keeps_it(scenes):
    """Lightning wraps the sampler of a DDP training loader in a DistributedSampler of its own that reshuffles it
    (it treats every train loader as shuffled), unless the sampler already is one: ours is, and deals the epoch's
    order out to the ranks as DistributedSampler deals (padded, every world_size-th from the rank's)."""
    import lightning

    cache_dir = str(Path(scenes["train"].ann_file).parents[2])
    trainer = lightning.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False)  # not launched
    dm = DetectionDataModule(
        synthetic=SCENE, cache_dir=cache_dir, train_tiling=TILES, train_frames_per_group=2, batch_size=4, num_workers=0
    )
    shares = []
    for rank in (0, 1):
        dm.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        loader = dm.train_dataloader()
        assert not trainer._data_connector._requires_distributed_sampler(loader)  # kept as it is
        shares.append(loader.sampler)
    plain = torch.utils.data.DataLoader(dm.datasets["train"], batch_size=4, shuffle=False)
    assert trainer._data_connector._requires_distributed_sampler(plain)  # what would have happened: rewrapped
    for epoch in (0, 1):
        for sampler in shares:
            sampler.set_epoch(epoch)
        order = shares[0].epoch_order()
        assert order == shares[1].epoch_order() and sorted(order) == list(range(48))  # the same in every process
        assert list(shares[0]) == order[0::2] and list(shares[1]) == order[1::2]  # 48 tiles: no padding
        assert len(shares[0]) == 24
        if epoch == 0:
            first_epoch = order
    assert order != first_epoch  # set_epoch reached the order
    odd = FrameGroupedSampler(np.arange(5), 1, seed=0, num_replicas=3, rank=2)  # 5 samples, 3 ranks: pads 1
    full = odd.epoch_order()
    assert list(odd) == (full + full[:1])[2::3] and len(odd) == 2
    with pytest.raises(ValueError, match="rank"):
        FrameGroupedSampler(np.arange(5), 1, num_replicas=2, rank=2)
    for n, ranks in [(1, 4), (2, 3), (5, 3), (7, 2), (6, 3)]:  # the padding is DistributedSampler's
        for rank in range(ranks):
            torch_share = list(torch.utils.data.DistributedSampler(range(n), ranks, rank, shuffle=False))
            assert _padded(list(range(n)), ranks)[rank::ranks] == torch_share
