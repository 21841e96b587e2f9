"""The exported detector's contract (raw outputs, metadata) and a runtime that reads it back.

An exported model computes :meth:`Detector.forward` without its ``aux`` outputs and returns the raw dense
outputs as one flat tuple; decoding (points, box coder, score threshold, NMS) stays in Python, in
:class:`~tod_lightning.models.postprocess.PostProcessor`, because NMS with a per-image cap does not export
reliably. Torch and numpy only at import time: ``onnxruntime`` is imported when an :class:`OnnxDetector`
is created.
"""

from __future__ import annotations

import importlib
import inspect
import json
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from tod_lightning.models.detector import Detector
from tod_lightning.structures import DetectorOutput

INPUT_NAME = "images01"
# Metadata keys, all prefixed so that they cannot clash with other tools' props; values are JSON strings.
META_PREFIX = "tod_lightning."
FORMAT_VERSION = 1


def output_names(strides: Sequence[int]) -> list[str]:
    """Names of the exported outputs, in the order of :class:`RawOutputs`: every level's classification
    logits, then every level's box deltas, then every level's quality logits, levels by increasing stride.

    E.g. strides ``[4, 8, 16]`` give ``cls_logits_s4, cls_logits_s8, cls_logits_s16, box_deltas_s4, ...,
    quality_logits_s16``.
    """
    return [f"{kind}_s{s}" for kind in ("cls_logits", "box_deltas", "quality_logits") for s in strides]


class RawOutputs(nn.Module):
    """Wraps a :class:`Detector` for export: ``forward(images01) -> tuple of 3 * L tensors``.

    Order (``L`` levels by increasing stride, see :func:`output_names`): ``cls_logits`` ``(B, K, H_l, W_l)``
    for each level, then ``box_deltas`` ``(B, 4, H_l, W_l)``, then ``quality_logits`` ``(B, 1, H_l, W_l)``.
    Auxiliary outputs (``DetectorOutput.aux``, e.g. SR-TOD's reconstruction) are training signals and are not
    exported; the enhancement they drive inside the necks is.
    """

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector

    def forward(self, images01: Tensor) -> tuple[Tensor, ...]:
        output = self.detector(images01)
        return (*output.cls_logits, *output.box_deltas, *output.quality_logits)


def split_raw(raw: Sequence[Tensor], strides: Sequence[int], image_size: tuple[int, int]) -> DetectorOutput:
    """The inverse of :class:`RawOutputs`: a flat tuple of ``3 * L`` tensors -> :class:`DetectorOutput`."""
    levels = len(strides)
    if len(raw) != 3 * levels:
        raise ValueError(f"expected {3 * levels} raw outputs for strides {list(strides)}, got {len(raw)}")
    raw = list(raw)
    return DetectorOutput(
        cls_logits=raw[:levels],
        box_deltas=raw[levels : 2 * levels],
        quality_logits=raw[2 * levels :],
        strides=list(strides),
        image_size=image_size,
    )


def component_config(obj: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` of a plain object whose constructor arguments are stored as attributes of
    the same name (as :class:`PostProcessor` and :class:`SlicedInference` do); ``None`` for ``None``."""
    if obj is None:
        return None
    cls = type(obj)
    params = inspect.signature(cls.__init__).parameters
    init_args = {name: getattr(obj, name) for name in params if name != "self" and hasattr(obj, name)}
    return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}


def build_component(config: dict[str, Any] | None) -> Any:
    """Rebuild an object from :func:`component_config`'s output."""
    if config is None:
        return None
    module_name, _, class_name = config["class_path"].rpartition(".")
    return getattr(importlib.import_module(module_name), class_name)(**config["init_args"])


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """``{key: value}`` -> ONNX ``metadata_props`` (prefixed keys, JSON values)."""
    return {META_PREFIX + key: json.dumps(value) for key, value in values.items()}


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """The inverse of :func:`encode_metadata`; other tools' props are ignored."""
    return {k[len(META_PREFIX) :]: json.loads(v) for k, v in props.items() if k.startswith(META_PREFIX)}


class OnnxDetector:
    """An exported detector run by onnxruntime, returning the same :class:`DetectorOutput` as the PyTorch
    :class:`Detector` (without ``aux``), so the same :class:`PostProcessor` (and :class:`SlicedInference`)
    decode it.

    Everything predict needs is read from the file's metadata (written by :mod:`tod_lightning.export`):
    ``strides``, ``size_divisor``, ``num_classes``, ``category_ids``, ``class_names``, ``postprocess`` and
    ``inference`` (component configs), ``eval_image_size``, ``dynamic``, ``input_size``, ``batch_size``
    (``None``: any; an integer: the only batch the graph takes, and larger batches are run in chunks).

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers in order of preference; ``None``: CUDA if this onnxruntime
            has it, else CPU.
        intra_op_num_threads: onnxruntime's intra-op threads (``0``: its default, all cores).

    ``__call__(images01)``: ``(B, 3, H, W)`` float in [0, 1], H and W multiples of ``size_divisor`` (and equal
    to ``input_size`` for a model exported without dynamic height/width) -> :class:`DetectorOutput` of CPU
    float32 tensors.
    """

    def __init__(self, path: str, providers: Sequence[str] | None = None, intra_op_num_threads: int = 0):
        import onnxruntime as ort  # optional dependency (the "export" extra): imported only when used

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_num_threads
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        self.session = ort.InferenceSession(path, options, providers=list(providers))
        self.metadata = decode_metadata(self.session.get_modelmeta().custom_metadata_map)
        if self.metadata.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: not a tod_lightning export of format {FORMAT_VERSION} "
                f"(metadata format_version={self.metadata.get('format_version')!r}); re-export it"
            )
        self.strides: list[int] = list(self.metadata["strides"])
        self.size_divisor: int = int(self.metadata["size_divisor"])
        self.num_classes: int = int(self.metadata["num_classes"])
        self.category_ids: list[int] = list(self.metadata["category_ids"])
        self.class_names: list[str] = list(self.metadata["class_names"])
        self.output_names = [o.name for o in self.session.get_outputs()]
        if self.output_names != output_names(self.strides):
            raise ValueError(f"{path}: outputs {self.output_names} differ from {output_names(self.strides)}")

    def postprocessor(self) -> Any:
        """The post-processor the model was trained and exported with."""
        return build_component(self.metadata["postprocess"])

    def inference(self) -> Any:
        """The whole-image inference strategy (a :class:`SlicedInference`) it was exported with, or ``None``."""
        return build_component(self.metadata.get("inference"))

    def __call__(self, images01: Tensor) -> DetectorOutput:
        h, w = images01.shape[-2:]
        if h % self.size_divisor or w % self.size_divisor:
            raise ValueError(f"input size {h}x{w} is not a multiple of the size divisor {self.size_divisor}")
        if not self.metadata.get("dynamic", True) and [h, w] != list(self.metadata["input_size"]):
            raise ValueError(
                f"this model was exported for {self.metadata['input_size']} inputs only, got {h}x{w}; "
                "re-export it with --dynamic"
            )
        array = np.ascontiguousarray(images01.detach().cpu().numpy(), dtype=np.float32)  # (B, 3, H, W)
        step = self.metadata.get("batch_size") or max(1, len(array))  # a fixed-batch export runs in chunks
        chunks = [
            self.session.run(self.output_names, {INPUT_NAME: array[i : i + step]}) for i in range(0, len(array), step)
        ]
        raw = [torch.from_numpy(np.concatenate(parts)) for parts in zip(*chunks)]  # 3 * L of (B, C, H_l, W_l)
        return split_raw(raw, self.strides, (h, w))
