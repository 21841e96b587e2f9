"""Collate dataset samples (see :mod:`tod_lightning.data.coco`) into a :class:`~tod_lightning.structures.Batch`."""

from __future__ import annotations

from typing import Any

import torch

from tod_lightning.structures import Batch, Target


def collate_detection(samples: list[dict[str, Any]], size_divisor: int) -> Batch:
    """Zero-pad the images bottom/right to a common size and stack them with their targets.

    Use ``functools.partial(collate_detection, size_divisor=...)`` as a ``DataLoader`` ``collate_fn``: a
    partial of a module-level function pickles, so it works with worker processes under any start method.

    Args:
        samples: dataset samples, ``image`` ``(H_i, W_i, 3)`` uint8 RGB numpy.
        size_divisor: the padded height and width are the batch maxima rounded up to a multiple of this
            (pixels; the detector's largest stride).

    Returns:
        a :class:`Batch` of the samples that are not skipped, with ``images`` ``(B, 3, H, W)`` uint8 (kept
        uint8 on the host: 4x less to copy than float32), ``image_sizes`` ``(B, 2)`` int64 ``(h, w)`` before
        padding, one :class:`Target` each, and ``skipped``: the messages of the dropped samples (``B`` may be
        0 if every sample was skipped).
    """
    if size_divisor < 1:
        raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
    # Samples whose image could not be read (lenient mode) leave the batch; their messages travel with it
    # so that the run can count and report them.
    skipped = [sample["skipped"] for sample in samples if "skipped" in sample]
    samples = [sample for sample in samples if "skipped" not in sample]
    sizes = [sample["image"].shape[:2] for sample in samples]
    height = -(-max((h for h, _ in sizes), default=1) // size_divisor) * size_divisor  # ceil to a multiple
    width = -(-max((w for _, w in sizes), default=1) // size_divisor) * size_divisor
    images = torch.zeros((len(samples), 3, height, width), dtype=torch.uint8)  # (B, 3, H, W)
    targets = []
    for i, sample in enumerate(samples):
        h, w = sizes[i]
        images[i, :, :h, :w] = torch.from_numpy(sample["image"]).permute(2, 0, 1)  # (H_i, W_i, 3) -> (3, H_i, W_i)
        targets.append(
            Target(
                boxes_xyxy=torch.as_tensor(sample["boxes_xyxy"], dtype=torch.float32).reshape(-1, 4),
                labels=torch.as_tensor(sample["labels"], dtype=torch.int64).reshape(-1),
                image_id=int(sample["image_id"]),
                orig_size=tuple(int(v) for v in sample["orig_size"]),
                scale=tuple(float(v) for v in sample["scale"]),
                ignore_xyxy=torch.as_tensor(sample["ignore_xyxy"], dtype=torch.float32).reshape(-1, 4),
                orig_boxes_xyxy=torch.as_tensor(sample["orig_boxes_xyxy"], dtype=torch.float32).reshape(-1, 4),
                orig_labels=torch.as_tensor(sample["orig_labels"], dtype=torch.int64).reshape(-1),
                orig_areas=torch.as_tensor(sample["orig_areas"], dtype=torch.float32).reshape(-1),
                orig_iscrowd=torch.as_tensor(sample["orig_iscrowd"], dtype=torch.bool).reshape(-1),
                num_dropped=int(sample["num_dropped"]),
            )
        )
    image_sizes = torch.tensor(sizes, dtype=torch.int64).reshape(-1, 2)  # (B, 2)
    return Batch(
        images=images,
        targets=targets,
        image_sizes=image_sizes,
        file_names=[sample["file_name"] for sample in samples],
        skipped=skipped,
    )
