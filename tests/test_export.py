"""ONNX / TorchScript export of a trained checkpoint: raw outputs equal PyTorch's, the metadata is what predict
needs, and ONNX predict writes the same detections as ``cli.py predict``.

One tiny checkpoint (quickstart + SR-TOD + IPG recipes, one training step, trained through the real CLI) is
exported once, with dynamic batch/height/width, and shared by the tests of this module.

Tolerance of the raw-output comparisons: 1e-4 absolute. The logits here are of magnitude ~5 and onnxruntime's
float32 kernels differ from PyTorch's only by accumulation order (measured: ~6e-6), so 1e-4 has a 15x margin,
while a wrong graph (a specialised size, a missing module) is off by the order of the outputs themselves.
"""

import ast
import json

import cv2
import numpy as np
import onnx
import pytest
import torch
from tiny_cli import ROOT, fit_tiny, latest_checkpoint, quiet_trainer_args, tiny_data_args

from tod_lightning import export
from tod_lightning.cli import main as cli_main
from tod_lightning.models.ipg import IPGBackbone
from tod_lightning.models.necks import SRTOD
from tod_lightning.models.onnx_detector import OnnxDetector, RawOutputs, output_names
from tod_lightning.models.postprocess import PostProcessor

RECIPES = ("configs/model/srtod.yaml", "configs/model/ipg.yaml")
TINY = dict(image_size=64, num_train=2, num_val=1, batch_size=2)
ATOL = 1e-4
NAMES = ["vehicle", "person", "drone", "ship"]  # the synthetic dataset's categories, ids 1..4


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-step checkpoint, its ONNX and TorchScript exports (through the command line), and the data."""
    root = tmp_path_factory.mktemp("export")
    ckpt = latest_checkpoint(fit_tiny(root, *RECIPES, **TINY))
    (val_json,) = root.glob("cache/synthetic-*/annotations/val.json")
    onnx_path, ts_path = root / "model.onnx", root / "model.pt"
    export.main(
        [
            *("--ckpt", ckpt, "--out", str(onnx_path), "--height", "64", "--width", "96", "--dynamic"),
            *("--categories", str(val_json), "--torchscript", str(ts_path)),
        ]
    )
    return {"root": root, "ckpt": ckpt, "onnx": onnx_path, "ts": ts_path, "task": export.load_task(ckpt)}


def _raw(detector, images01):
    with torch.no_grad():
        return RawOutputs(detector)(images01)


def test_the_checkpoint_has_the_methods_under_test(run):
    detector = run["task"].detector
    assert isinstance(detector.backbone, IPGBackbone)
    assert any(isinstance(neck, SRTOD) for neck in detector.necks)
    assert set(detector(torch.rand(1, 3, 64, 64)).aux) == {"srtod_recon", "srtod_diff"}  # aux outputs exist...


def test_onnx_outputs_are_the_raw_outputs_in_the_documented_order(run):
    graph = onnx.load(str(run["onnx"])).graph
    # ... and is not exported: 3 kinds x 3 levels (P2-P4), in the order of output_names
    assert [o.name for o in graph.output] == [
        *("cls_logits_s4", "cls_logits_s8", "cls_logits_s16"),
        *("box_deltas_s4", "box_deltas_s8", "box_deltas_s16"),
        *("quality_logits_s4", "quality_logits_s8", "quality_logits_s16"),
    ]
    assert [i.name for i in graph.input] == ["images01"]
    dims = graph.input[0].type.tensor_type.shape.dim
    # The model needs multiples of 16 (strides 4-16); the data module it was trained with padded to 32 and stored
    # that in the checkpoint, so the export (no --config given) pads as training did.
    assert run["task"].detector.size_divisor == 16
    assert [d.dim_param or d.dim_value for d in dims] == ["batch", 3, "32*h_blocks", "32*w_blocks"]


@pytest.mark.parametrize("shape", [(1, 3, 64, 96), (2, 3, 96, 64)])
def test_onnx_raw_outputs_match_pytorch_at_two_sizes(run, shape):
    images01 = torch.rand(*shape)
    expected = _raw(run["task"].detector, images01)
    output = OnnxDetector(str(run["onnx"]))(images01)
    actual = (*output.cls_logits, *output.box_deltas, *output.quality_logits)
    b, _, h, w = shape
    for a, e, stride, channels in zip(actual, expected, [4, 8, 16] * 3, [4] * 3 + [4] * 3 + [1] * 3):
        assert a.shape == e.shape == (b, channels, h // stride, w // stride)
        torch.testing.assert_close(a, e, rtol=0, atol=ATOL)
    assert output.strides == [4, 8, 16] and output.image_size == (h, w) and output.aux == {}


def test_torchscript_matches_pytorch_and_carries_the_metadata(run):
    extra = {"tod_lightning.json": ""}
    traced = torch.jit.load(str(run["ts"]), _extra_files=extra)
    assert json.loads(extra["tod_lightning.json"])["class_names"] == NAMES
    for shape in [(1, 3, 64, 96), (2, 3, 96, 64)]:
        images01 = torch.rand(*shape)
        with torch.no_grad(), torch.jit.optimized_execution(False):  # skip the JIT's warm-up optimisation passes
            actual = traced(images01)
        for a, e in zip(actual, _raw(run["task"].detector, images01), strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=ATOL)


def test_metadata_holds_what_predict_needs(run):
    detector = OnnxDetector(str(run["onnx"]))
    meta = detector.metadata
    assert (detector.strides, detector.size_divisor, detector.num_classes) == ([4, 8, 16], 32, 4)
    assert (detector.category_ids, detector.class_names) == ([1, 2, 3, 4], NAMES)  # read from the COCO json
    assert (meta["dynamic"], meta["batch_size"], meta["input_size"], meta["eval_image_size"]) == (
        True,
        None,
        [64, 96],
        None,
    )
    post = detector.postprocessor()
    assert isinstance(post, PostProcessor)
    assert (post.score_thresh, post.nms_iou, post.pre_nms_topk, post.max_per_image) == (0.05, 0.6, 10000, 1500)
    assert detector.inference() is None
    assert meta["output_names"] == output_names([4, 8, 16])


def test_onnx_predict_writes_the_detections_of_cli_predict(run):
    root = run["root"]
    (train_dir,) = root.glob("cache/synthetic-*/images/train")
    a, b = (cv2.imread(str(p)) for p in sorted(train_dir.glob("*.png")))
    images = root / "predict_images"
    images.mkdir()
    # Two sizes that are not multiples of 32, batched together: exercises the padding and the clipping. Small
    # enough that no image reaches the 1500-detection cap, where near-equal scores could swap across the cut.
    cv2.imwrite(str(images / "a.png"), np.concatenate([a, b], axis=1)[:48, :72])  # 48 x 72
    cv2.imwrite(str(images / "b.png"), b[:40, :56])  # 40 x 56
    cli_out, onnx_out = root / "cli.json", root / "onnx.json"
    cli_main(
        [
            "predict",
            *(arg for recipe in ("configs/quickstart.yaml", *RECIPES) for arg in ("--config", str(ROOT / recipe))),
            *tiny_data_args(root, **TINY),
            *quiet_trainer_args(root),
            f"--ckpt_path={run['ckpt']}",
            f"--data.predict={images}",
            "--data.eval_batch_size=2",
            f"--predict_writer.output_file={cli_out}",
        ]
    )
    export.main(
        ["predict", "--onnx", str(run["onnx"]), "--images", str(images), "--out", str(onnx_out)] + ["--batch-size", "2"]
    )
    expected, actual = json.loads(cli_out.read_text()), json.loads(onnx_out.read_text())
    assert len(actual) == len(expected) > 0
    assert {r["file_name"] for r in actual} == {"a.png", "b.png"}
    # Same records, matched one to one. Boxes are rounded to 0.01 px when written, so a 1e-6 difference can
    # land on either side of a rounding step: boxes agree within that step plus 1e-4, scores within 1e-4.
    unmatched = list(actual)
    for record in expected:
        for i, candidate in enumerate(unmatched):
            if (
                (candidate["image_id"], candidate["file_name"], candidate["category_id"])
                == (record["image_id"], record["file_name"], record["category_id"])
                and abs(candidate["score"] - record["score"]) <= ATOL
                and max(abs(p - q) for p, q in zip(candidate["bbox"], record["bbox"])) <= 0.01 + ATOL
            ):
                del unmatched[i]
                break
        else:
            pytest.fail(f"no ONNX detection matches {record}")
    assert unmatched == []


def test_export_sizes_must_be_multiples_of_the_divisor(run, tmp_path):
    detector = run["task"].detector
    assert detector.size_divisor == 16  # the quickstart's strides 4-16
    with pytest.raises(ValueError, match="--height 80 --width 64"):
        export.export_onnx(detector, tmp_path / "x.onnx", height=70, width=64)
    with pytest.raises(ValueError, match="--height 96 --width 64"):  # a data module that padded to 32
        export.export_onnx(detector, tmp_path / "x.onnx", height=70, width=64, size_divisor=32)
    assert not (tmp_path / "x.onnx").exists()


def test_verification_rejects_an_export_that_specialised_a_size(run):
    detector = run["task"].detector
    meta = export.export_metadata(detector, dynamic=True, input_size=(64, 96))
    first, other = export.check_inputs(meta)  # the export size, then another size, batch 2
    assert first == (1, 64, 96) and other[0] == 2 and other[1:] != (64, 96)
    assert all(side % detector.size_divisor == 0 for side in other[1:])

    def correct_only_at_export_size(images01):
        outputs = _raw(detector, images01)
        return outputs if tuple(images01.shape[-2:]) == (64, 96) else tuple(o + 1e-2 for o in outputs)

    assert export.verify_export(detector, lambda x: _raw(detector, x), meta, "ONNX") < ATOL
    with pytest.raises(export.ExportVerificationError, match="cls_logits_s4 differs"):
        export.verify_export(detector, correct_only_at_export_size, meta, "ONNX")


def test_metadata_validates_categories_and_records_map_labels_to_them(run):
    detector = run["task"].detector
    with pytest.raises(ValueError, match="4 classes, got 3"):
        export.export_metadata(detector, category_ids=[1, 2, 3], class_names=["a", "b", "c"])
    image = {
        "image_id": 7,
        "file_name": "x.png",
        "boxes_xyxy": torch.tensor([[1.0, 2.0, 4.5, 10.0]]),
        "scores": torch.tensor([0.123456]),
        "labels": torch.tensor([2]),
    }
    assert export.coco_records([image], [3, 7, 11, 20]) == [
        {"image_id": 7, "file_name": "x.png", "category_id": 11, "bbox": [1.0, 2.0, 3.5, 8.0], "score": 0.12346}
    ]


def test_a_checkpoint_of_a_pretrained_recipe_loads_without_network(run, tmp_path):
    checkpoint = torch.load(run["ckpt"], map_location="cpu", weights_only=True)
    backbone = checkpoint["hyper_parameters"]["backbone"]["init_args"]["backbone"]  # IPG wraps the timm backbone
    backbone["init_args"]["pretrained"] = True  # as in configs/aitod_r50.yaml: timm would download (offline here)
    torch.save(checkpoint, tmp_path / "pretrained.ckpt")
    task = export.load_task(str(tmp_path / "pretrained.ckpt"))
    images01 = torch.rand(1, 3, 64, 64)
    for a, e in zip(_raw(task.detector, images01), _raw(run["task"].detector, images01), strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=0)  # the checkpoint's weights, not the hub's


def test_pretrained_flags_are_turned_off_for_loading(run):
    config = {"class_path": "IPG", "init_args": {"backbone": {"init_args": {"pretrained": True}}, "fusion": "sum"}}
    cleaned, changed = export.without_pretrained(config)
    assert changed and cleaned["init_args"]["backbone"]["init_args"]["pretrained"] is False
    assert config["init_args"]["backbone"]["init_args"]["pretrained"] is True  # a copy
    assert export.without_pretrained({"pretrained": False, "x": [1]}) == ({"pretrained": False, "x": [1]}, False)


def test_data_config_gives_categories_divisor_and_eval_size(run, tmp_path):
    (cache,) = {p.parent for p in run["root"].glob("cache/synthetic-*")}
    override = tmp_path / "data.yaml"
    override.write_text(
        f"data:\n  cache_dir: {cache}\n"
        "  synthetic: {image_size: 64, num_train: 2, num_val: 1, dense_fraction: 0.0}\n"
        "  size_divisor: 64\n"
        "  eval_transform: {class_path: tod_lightning.data.EvalTransform, init_args: {image_size: 80}}\n"
    )
    data = export.data_module_from_configs([str(ROOT / "configs/quickstart.yaml"), str(override)])
    assert (data.category_ids, data.class_names, data.size_divisor) == ([1, 2, 3, 4], NAMES, 64)
    assert data.eval_transform.image_size == 80


def test_models_do_not_import_onnxruntime_at_import_time():
    source = (ROOT / "tod_lightning/models/onnx_detector.py").read_text()
    top_level = [node for node in ast.parse(source).body if isinstance(node, (ast.Import, ast.ImportFrom))]
    names = [alias.name for node in top_level for alias in node.names] + [
        node.module for node in top_level if isinstance(node, ast.ImportFrom)
    ]
    assert names and not any("onnxruntime" in (n or "") for n in names)
