"""Export a trained detector to ONNX (and TorchScript), and detect on a folder of images with the ONNX file.

Export (``python -m tod_lightning.export --ckpt last.ckpt --out model.onnx [--height H --width W] [--dynamic]``)
writes the detector's RAW dense outputs (see :class:`~tod_lightning.models.onnx_detector.RawOutputs` for the
order) with ``torch.onnx.export``'s default, torch.export-based ("dynamo") exporter, and stores in the file's
``metadata_props`` everything predict needs: strides, size divisor, category ids and class names,
post-processing and sliced-inference settings, the evaluation resize. Decoding and NMS stay in Python
(:class:`~tod_lightning.models.postprocess.PostProcessor`): the exported graph is only the network.

Predict (``python -m tod_lightning.export predict --onnx model.onnx --images DIR --out detections.json``) writes
the COCO results json of ``cli.py predict``, from the ``.onnx`` file alone. The guide is ``docs/deploy.md``.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import os
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from tod_lightning.coco_results import coco_records  # noqa: F401  (re-exported: part of this module's API)
from tod_lightning.models.detector import Detector
from tod_lightning.models.onnx_detector import (
    FORMAT_VERSION,
    INPUT_NAME,
    OnnxDetector,
    RawOutputs,
    component_config,
    encode_metadata,
    output_names,
)
from tod_lightning.models.postprocess import PostProcessor

log = logging.getLogger(__name__)

# Opset 18 runs on every onnxruntime since 1.14 and on TensorRT 10; nothing in these models needs a newer one.
DEFAULT_OPSET = 18
# Upper bound of the dynamic height/width (px): far above any frame, it only has to be finite for torch.export.
MAX_DYNAMIC_SIDE = 16384
MAX_DYNAMIC_BATCH = 1024


# ------------------------------------------------------------------------------------------ checkpoint
def without_pretrained(config: Any) -> tuple[Any, bool]:
    """A copy of a (nested) config with every ``pretrained: true`` set to false, and whether any was."""
    if isinstance(config, dict):
        changed = False
        out = {}
        for key, value in config.items():
            if key == "pretrained" and value is True:
                out[key], changed = False, True
            else:
                out[key], sub = without_pretrained(value)
                changed |= sub
        return out, changed
    if isinstance(config, list):
        items = [without_pretrained(v) for v in config]
        return [v for v, _ in items], any(c for _, c in items)
    return config, False


def load_task(ckpt_path: str):
    """The :class:`DetectionTask` of a LightningCLI checkpoint, on CPU, in eval mode.

    The model is rebuilt from the config stored in the checkpoint with every ``pretrained`` flag turned off:
    the trained weights come from the checkpoint, so no hub download (and no network) is needed.
    """
    from tod_lightning.task import DetectionTask  # Lightning: only the checkpoint path needs it

    hparams = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    overrides = {}
    for key, value in hparams.items():
        value, changed = without_pretrained(value)
        if changed:
            overrides[key] = value
    task = DetectionTask.load_from_checkpoint(ckpt_path, map_location="cpu", **overrides)
    return task.eval()


def _checkpoint_data_state(ckpt_path: str) -> dict:
    """What the data module stored in the checkpoint (its ``state_dict``: categories, size divisor), or ``{}``."""
    checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
    for value in checkpoint.values():
        if isinstance(value, dict) and ("category_ids" in value or "size_divisor" in value):
            return value
    return {}


def _checkpoint_categories(ckpt_path: str) -> tuple[list[int], list[str]] | None:
    """Categories a data module stored in the checkpoint, if it did."""
    state = _checkpoint_data_state(ckpt_path)
    if "category_ids" not in state:
        return None
    return [int(i) for i in state["category_ids"]], [str(n) for n in state["class_names"]]


def _merge(base: dict, update: dict) -> dict:
    """Merge of two LightningCLI config sections: dicts merge key by key, anything else is replaced; a new
    ``class_path`` discards the old ``init_args`` (as jsonargparse does)."""
    out = dict(base)
    if "class_path" in update and update.get("class_path") != base.get("class_path"):
        out.pop("init_args", None)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def data_module_from_configs(config_files: Sequence[str]):
    """The :class:`DetectionDataModule` of the ``data`` sections of LightningCLI config files (later files
    override earlier ones). Its categories, ``size_divisor`` and evaluation resize are what the run used."""
    import yaml
    from jsonargparse import ArgumentParser

    from tod_lightning.data.datamodule import DetectionDataModule

    data: dict = {}
    for path in config_files:
        with open(path, encoding="utf-8") as f:
            data = _merge(data, (yaml.safe_load(f) or {}).get("data") or {})
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(DetectionDataModule, "data")
    return parser.instantiate_classes(parser.parse_object({"data": data})).data


# ---------------------------------------------------------------------------------------------- export
def export_metadata(
    detector: Detector,
    *,
    category_ids: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    postprocess: PostProcessor | None = None,
    inference: Any = None,
    size_divisor: int | None = None,
    eval_image_size: int | None = None,
    dynamic: bool = False,
    input_size: tuple[int, int] = (0, 0),
) -> dict[str, Any]:
    """The metadata an export stores (the keys :class:`OnnxDetector` reads), validated.

    ``category_ids``/``class_names`` default to ``1..K`` (the fallback of ``cli.py predict`` without
    categories); ``size_divisor`` defaults to, and may not be below, the detector's.
    """
    k = detector.num_classes
    if category_ids is None:
        category_ids = list(range(1, k + 1))
    if class_names is None:
        class_names = [str(i) for i in category_ids]
    if len(category_ids) != k or len(class_names) != k:
        raise ValueError(f"the model has {k} classes, got {len(category_ids)} category ids, {len(class_names)} names")
    divisor = int(size_divisor or detector.size_divisor)
    if divisor % detector.size_divisor:
        raise ValueError(f"size_divisor {divisor} is not a multiple of the model's {detector.size_divisor}")
    return {
        "format_version": FORMAT_VERSION,
        "input_name": INPUT_NAME,
        "output_names": output_names(detector.strides),
        "strides": [int(s) for s in detector.strides],
        "size_divisor": divisor,
        "num_classes": k,
        "category_ids": [int(i) for i in category_ids],
        "class_names": [str(n) for n in class_names],
        "postprocess": component_config(postprocess or PostProcessor()),
        "inference": component_config(inference),
        "eval_image_size": eval_image_size,
        "dynamic": bool(dynamic),
        "input_size": [int(v) for v in input_size],
        "box_coder": component_config(PostProcessor().coder),
        "torch_version": torch.__version__,
    }


def _check_size(height: int, width: int, divisor: int) -> None:
    if height <= 0 or width <= 0 or height % divisor or width % divisor:
        up = lambda v: max(divisor, -(-v // divisor) * divisor)  # noqa: E731 -- ceil to a multiple
        raise ValueError(
            f"export size {height}x{width} must be positive multiples of the size divisor {divisor}; "
            f"use --height {up(height)} --width {up(width)}"
        )


_ADVICE = {
    "ONNX": "export it for the fixed size you will run (no --dynamic)",
    "TorchScript": "this model does not trace for other sizes or batches: use the ONNX export",
}


class ExportVerificationError(RuntimeError):
    """The exported model's outputs differ from PyTorch's (or it fails) on a check input."""


def export_onnx(
    detector: Detector,
    path: str | os.PathLike,
    *,
    height: int,
    width: int,
    dynamic: bool = False,
    opset: int = DEFAULT_OPSET,
    verify: bool = True,
    **metadata_kwargs: Any,
) -> dict[str, Any]:
    """Export ``detector``'s raw outputs to a single ONNX file and return the metadata stored in it.

    Args:
        detector: the PyTorch detector (put in eval mode here).
        path: the ``.onnx`` file to write (weights inside, no external data file).
        height, width: example input size (px, multiples of the size divisor); the only accepted size unless
            ``dynamic``.
        dynamic: export height and width as dynamic (any multiple of the size divisor). The batch size is
            dynamic unless a module cannot export one (SGDM: then it is 1 and :class:`OnnxDetector` runs a
            batch image by image; metadata ``batch_size``).
        opset: ONNX opset.
        verify: run the file with onnxruntime and compare with PyTorch (see :func:`verify_export`); raises
            :class:`ExportVerificationError` if they differ.
        metadata_kwargs: passed to :func:`export_metadata` (categories, post-processing, ...).

    Input ``images01``: ``(B, 3, H, W)`` float32 RGB in [0, 1] (normalisation is inside the graph).
    """
    import onnx

    detector = detector.eval()
    metadata = export_metadata(detector, dynamic=dynamic, input_size=(height, width), **metadata_kwargs)
    divisor = metadata["size_divisor"]
    _check_size(height, width, divisor)
    for dynamic_batch in (True, False):  # a fixed batch of 1 if the graph cannot have a dynamic one
        try:
            _torch_onnx_export(detector, path, height, width, divisor, dynamic, dynamic_batch, metadata, opset)
            break
        except Exception as error:  # noqa: BLE001 -- the exporter raises many types; the retry reports it
            if not dynamic_batch:
                raise
            # A module whose ONNX op needs the batch size as a constant (SGDM's per-sample kernels are one
            # grouped conv with groups = batch, and ONNX's Conv takes ``group`` as an attribute).
            log.warning("export with a dynamic batch failed (%s); exporting with a batch of 1", _first_line(error))
    metadata["batch_size"] = None if dynamic_batch else 1
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, encode_metadata(metadata))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    if verify:
        onnx_detector = OnnxDetector(str(path), providers=["CPUExecutionProvider"])
        try:
            verify_export(detector, lambda x: flat_outputs(onnx_detector(x)), metadata, "ONNX")
        except ExportVerificationError:
            os.remove(path)  # never leave a wrong model behind
            raise
    return metadata


def flat_outputs(output) -> tuple[torch.Tensor, ...]:
    """A :class:`DetectorOutput` as the flat tuple of the exported graph's outputs (the order of ``output_names``)."""
    return (*output.cls_logits, *output.box_deltas, *output.quality_logits)


def check_inputs(metadata: dict[str, Any]) -> list[tuple[int, int, int]]:
    """``(batch, height, width)`` of the inputs an export is verified on: the export size, and if the export
    is dynamic, a second, different size with a batch of 2 (a batch of 1 runs chunked when the batch is
    fixed). A graph that specialised a size it should not have (e.g. adaptive pooling to a fixed grid, which
    the exporter decomposes with the example's indices) fails there."""
    d = metadata["size_divisor"]
    height, width = metadata["input_size"]
    if not metadata["dynamic"]:
        return [(1 if metadata.get("batch_size") else 2, height, width)]
    other = (2 * d, 3 * d) if (2 * d, 3 * d) != (height, width) else (3 * d, 2 * d)
    return [(1, height, width), (2, *other)]


def verify_export(
    detector: Detector,
    run: Any,
    metadata: dict[str, Any],
    kind: str,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> float:
    """Compare ``run(images01)`` (the exported model's flat raw outputs) with PyTorch's on
    :func:`check_inputs`; return the largest absolute difference.

    float32 kernels of two runtimes differ by accumulation order, a few 1e-6 on logits of magnitude ~10
    here; ``atol + rtol * |torch|`` leaves room for deeper models and still fails on a wrong graph, whose
    errors are of the order of the outputs themselves.
    """
    worst = 0.0
    generator = torch.Generator().manual_seed(0)
    for batch, height, width in check_inputs(metadata):
        images01 = torch.rand(batch, 3, height, width, generator=generator)
        with torch.no_grad():
            expected = RawOutputs(detector)(images01)
        try:
            actual = run(images01)
            if [tuple(a.shape) for a in actual] != [tuple(e.shape) for e in expected]:
                raise ValueError(f"output shapes {[tuple(a.shape) for a in actual]}")
        except Exception as error:  # noqa: BLE001 -- any failure of the exported graph is a failed check
            raise ExportVerificationError(
                f"the {kind} export fails on a {batch}x3x{height}x{width} input ({_first_line(error)}): a module "
                f"passes a size as a constant; {_ADVICE[kind]}"
            ) from error
        for name, a, e in zip(metadata["output_names"], actual, expected):
            diff = float((a - e).abs().max()) if a.numel() else 0.0
            worst = max(worst, diff)
            if not torch.allclose(a, e, rtol=rtol, atol=atol):
                raise ExportVerificationError(
                    f"the {kind} export's output {name} differs from PyTorch's by up to {diff:.3g} on a "
                    f"{batch}x3x{height}x{width} input; {_ADVICE[kind]}"
                )
    log.info("%s export verified against PyTorch on %s: max |diff| %.3g", kind, check_inputs(metadata), worst)
    return worst


def _first_line(error: Exception) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).strip()  # the exporter colours its messages
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _torch_onnx_export(
    detector: Detector,
    path: str | os.PathLike,
    height: int,
    width: int,
    divisor: int,
    dynamic: bool,
    dynamic_batch: bool,
    metadata: dict[str, Any],
    opset: int,
) -> None:
    shapes: dict[int, Any] = {}
    if dynamic_batch:
        shapes[0] = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
    if dynamic:
        # Sides as divisor * blocks: torch.export then proves the detector's divisibility check, and the
        # ONNX input shape says it ("64*h_blocks").
        blocks = MAX_DYNAMIC_SIDE // divisor
        shapes[2] = divisor * torch.export.Dim("h_blocks", min=1, max=blocks)
        shapes[3] = divisor * torch.export.Dim("w_blocks", min=1, max=blocks)
    # A dynamic batch needs an example batch of 2: torch.export specialises a dimension whose example size is 1.
    example = torch.rand(2 if dynamic_batch else 1, 3, height, width)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)  # exporter chatter about its own internals
        torch.onnx.export(
            RawOutputs(detector),
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=metadata["output_names"],
            dynamic_shapes={INPUT_NAME: shapes},
            opset_version=opset,
            dynamo=True,
            external_data=False,
            verbose=False,
        )


def export_torchscript(
    detector: Detector,
    path: str | os.PathLike,
    *,
    height: int,
    width: int,
    verify: bool = True,
    **metadata_kwargs: Any,
) -> dict[str, Any]:
    """Trace ``detector``'s raw outputs with ``torch.jit.trace`` (same order as the ONNX outputs) and save it,
    with the same metadata as an ONNX export in the extra file ``tod_lightning.json``.

    The trace records size arithmetic as ops, so it accepts other batch sizes and other multiples of the size
    divisor; ``verify`` checks that on :func:`check_inputs` of a dynamic export (a module that passes a size
    as a plain int, such as SGDM's ``groups=batch``, fails there). ``torch.jit`` is deprecated upstream:
    prefer the ONNX export; this path is for LibTorch deployments that need it.
    """
    detector = detector.eval()
    metadata = export_metadata(detector, dynamic=True, input_size=(height, width), **metadata_kwargs)
    metadata["batch_size"] = None
    _check_size(height, width, metadata["size_divisor"])
    with warnings.catch_warnings(), torch.no_grad():
        # TracerWarning: the detector's divisibility check is traced as a constant (the input is valid);
        # FutureWarning/DeprecationWarning: torch.jit's deprecation notice.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(RawOutputs(detector), torch.rand(1, 3, height, width), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"tod_lightning.json": json.dumps(metadata)})
    if verify:
        loaded = torch.jit.load(str(path))
        try:
            with torch.no_grad(), torch.jit.optimized_execution(False):  # no JIT warm-up passes for two runs
                verify_export(detector, lambda x: tuple(loaded(x)), metadata, "TorchScript")
        except ExportVerificationError:
            os.remove(path)
            raise
    return metadata


# --------------------------------------------------------------------------------------------- predict
def predict_onnx(
    onnx_path: str,
    images_dir: str,
    *,
    batch_size: int = 1,
    image_size: int | None = -1,
    providers: Sequence[str] | None = None,
    strict: bool = True,
) -> list[dict]:
    """COCO result records of every image of a folder (sorted by name, ``image_id`` = 1-based position), as
    ``cli.py predict --data.predict DIR`` gives them.

    Args:
        onnx_path: a file written by :func:`export_onnx`.
        images_dir: the folder (not recursive).
        batch_size: images per run; each batch is zero-padded to its largest image, rounded up to the size
            divisor, as the data module's collate does (for the same detections as ``cli.py predict``, use
            its ``data.eval_batch_size``).
        image_size: longest-side resize before detection (``data.eval_transform``); ``-1``: the value stored
            at export; ``None``: no resize.
        providers: onnxruntime execution providers (``None``: CUDA if available, else CPU).
        strict: as the data module's ``strict`` (unreadable images raise, or are skipped and logged).
    """
    from torch.utils.data import DataLoader

    from tod_lightning.data.collate import collate_detection
    from tod_lightning.data.dataset import ImageFolderDataset
    from tod_lightning.data.transforms import EvalTransform

    detector = OnnxDetector(onnx_path, providers=providers)
    postprocess, inference = detector.postprocessor(), detector.inference()
    if image_size == -1:
        image_size = detector.metadata.get("eval_image_size")
    dataset = ImageFolderDataset(images_dir, EvalTransform(image_size), strict=strict)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=0,
        collate_fn=functools.partial(collate_detection, size_divisor=detector.size_divisor),
    )
    results = []
    for batch in loader:
        for message in batch.skipped:
            log.warning("skipped: %s", message)
        if len(batch) == 0:
            continue
        images01 = batch.images01()
        if not detector.metadata["dynamic"]:
            # A fixed-size model: pad bottom/right to its size (a larger image needs --image-size or --dynamic).
            h, w = detector.metadata["input_size"]
            if images01.shape[-2] > h or images01.shape[-1] > w:
                raise ValueError(
                    f"{batch.file_names}: padded size {tuple(images01.shape[-2:])} exceeds the exported size "
                    f"{(h, w)}; resize with --image-size or re-export with --dynamic"
                )
            images01 = F.pad(images01, (0, w - images01.shape[-1], 0, h - images01.shape[-2]))
        if inference is None:
            detections = postprocess(detector(images01), batch.image_sizes)
        else:
            detections = inference(detector, postprocess, images01, batch.image_sizes)
        for i, (det, target) in enumerate(zip(detections, batch.targets)):
            det = det.to_original(target.scale, target.orig_size)
            results.append(
                {
                    "image_id": target.image_id,
                    "file_name": batch.file_names[i],
                    "boxes_xyxy": det.boxes_xyxy,
                    "scores": det.scores,
                    "labels": det.labels,
                }
            )
    return coco_records(results, detector.category_ids)


# ------------------------------------------------------------------------------------------------- CLI
def _export_main(args: argparse.Namespace) -> None:
    task = load_task(args.ckpt)
    categories = None
    size_divisor, eval_image_size = None, args.eval_image_size
    if args.config:
        data = data_module_from_configs(args.config)
        categories = (data.category_ids, data.class_names)
        size_divisor = data.size_divisor
        if eval_image_size is None:
            eval_image_size = getattr(data.eval_transform, "image_size", None)
    if args.categories:
        from tod_lightning.data.coco import read_categories

        categories = read_categories(args.categories)
    if categories is None:
        categories = _checkpoint_categories(args.ckpt)
    if size_divisor is None:  # pad as training's data module did (it may pad to more than the model needs)
        size_divisor = _checkpoint_data_state(args.ckpt).get("size_divisor")
    if categories is None:
        log.warning(
            "no categories given (--categories COCO_JSON or --config TRAIN_CONFIG): category ids 1..%d are stored",
            task.detector.num_classes,
        )
    detector = task.detector
    # The data module pads to its own divisor; the detector needs its own: both hold for their lcm.
    divisor = math.lcm(int(size_divisor or 1), detector.size_divisor)
    height = args.height or -(-(eval_image_size or 800) // divisor) * divisor
    width = args.width or height
    kwargs = {
        "category_ids": categories[0] if categories else None,
        "class_names": categories[1] if categories else None,
        "postprocess": task.postprocess,
        "inference": task.inference,
        "size_divisor": divisor,
        "eval_image_size": eval_image_size,
    }
    start = time.perf_counter()
    verify = not args.no_verify
    export_onnx(
        detector, args.out, height=height, width=width, dynamic=args.dynamic, opset=args.opset, verify=verify, **kwargs
    )
    print(f"wrote {args.out} ({time.perf_counter() - start:.1f} s)")
    if args.torchscript:
        export_torchscript(detector, args.torchscript, height=height, width=width, verify=verify, **kwargs)
        print(f"wrote {args.torchscript}")


def _predict_main(args: argparse.Namespace) -> None:
    providers = args.providers.split(",") if args.providers else None
    records = predict_onnx(
        args.onnx,
        args.images,
        batch_size=args.batch_size,
        image_size=None if args.image_size == 0 else args.image_size,
        providers=providers,
        strict=not args.lenient,
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(records))
    print(f"Wrote {len(records)} detections to {os.path.abspath(args.out)}")


def _parser(command: str) -> argparse.ArgumentParser:
    if command == "predict":
        p = argparse.ArgumentParser(
            prog="python -m tod_lightning.export predict",
            description="Detect on a folder of images with an exported .onnx file; write COCO results json.",
        )
        p.add_argument("--onnx", required=True, help="file written by the export")
        p.add_argument("--images", required=True, help="folder of images (sorted by name; image_id = position)")
        p.add_argument("--out", required=True, help="COCO results json to write")
        p.add_argument("--batch-size", type=int, default=1, help="images per run (as data.eval_batch_size)")
        p.add_argument(
            "--image-size", type=int, default=-1, help="longest-side resize; -1: as exported (default); 0: none"
        )
        p.add_argument("--providers", default=None, help="onnxruntime providers, comma-separated (default: auto)")
        p.add_argument("--lenient", action="store_true", help="skip unreadable images instead of stopping")
        return p
    p = argparse.ArgumentParser(
        prog="python -m tod_lightning.export",
        description="Export a checkpoint's detector (raw outputs) to ONNX; `predict` runs the exported file.",
    )
    p.add_argument("--ckpt", required=True, help="checkpoint written by cli.py fit")
    p.add_argument("--out", required=True, help=".onnx file to write")
    p.add_argument("--height", type=int, default=None, help="input height (px); default: eval size or 800, rounded")
    p.add_argument("--width", type=int, default=None, help="input width (px); default: the height")
    p.add_argument("--dynamic", action="store_true", help="accept any height/width that are multiples of the divisor")
    p.add_argument("--config", action="append", default=[], help="training config(s): categories, divisor, resize")
    p.add_argument("--categories", default=None, help="COCO json whose categories the model was trained on")
    p.add_argument("--eval-image-size", type=int, default=None, help="longest-side resize predict applies")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--torchscript", default=None, help="also write a traced TorchScript file here")
    p.add_argument("--no-verify", action="store_true", help="skip the onnxruntime-vs-PyTorch check after export")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    """``[export] --ckpt ... --out ...`` or ``predict --onnx ... --images ... --out ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in ("export", "predict") else "export"
    args = _parser(command).parse_args(argv)
    (_predict_main if command == "predict" else _export_main)(args)


if __name__ == "__main__":
    # Our progress messages (INFO), but not the exporter's own INFO chatter. Only here: main() called from Python
    # (tests, notebooks) leaves the caller's logging alone.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("tod_lightning").setLevel(logging.INFO)
    main()
