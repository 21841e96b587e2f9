"""COCO detection-results records: the one output format of ``cli.py predict`` and the ONNX predict path."""

from __future__ import annotations

from typing import Any, Sequence


def coco_records(image_results: Sequence[dict[str, Any]], category_ids: Sequence[int] | None) -> list[dict]:
    """Per-image results (``image_id``, ``file_name``, ``boxes_xyxy`` in original pixels, ``scores``,
    contiguous ``labels``) -> COCO result records, as ``tod_lightning.callbacks.CocoPredictionWriter`` and
    ``python -m tod_lightning.export predict`` write them: ``bbox`` ``[x, y, w, h]`` rounded to 0.01 px,
    ``score`` to 1e-5, ``category_id`` the dataset's own (``label + 1`` without ``category_ids``)."""
    records = []
    for image in image_results:
        for (x1, y1, x2, y2), score, label in zip(
            image["boxes_xyxy"].tolist(), image["scores"].tolist(), image["labels"].tolist()
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
    return records
