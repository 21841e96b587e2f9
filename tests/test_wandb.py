"""The W&B workflow, read back from what offline runs wrote to disk (no account, no network).

Two real CLI fits share one module fixture: one epoch, then ``fit --ckpt_path last.ckpt`` for one more with
``log_model: true``. Each W&B run is read from its ``offline-run-*/run-<id>.wandb`` transaction log (the records
``wandb sync`` would upload) and from the media files beside it.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml
from jsonargparse import Namespace
from PIL import Image
from tiny_cli import ROOT, fit_tiny, latest_checkpoint
from wandb.proto.wandb_internal_pb2 import Record

from tod_lightning.callbacks import WANDB_RUN_ID_KEY
from tod_lightning.cli import continue_wandb_run

NUM_IMAGES, MAX_BOXES, NUM_CROPS, CROP_SIZE, ZOOM = 2, 5, 2, 32, 8
EVAL_KEYS = ("val/AP", "val/AP50", "val/AP_vt", "val/AP_t", "val/AP_s")


# ---------------------------------------------------------------------------------- reading a .wandb file
def read_records(path: Path) -> list[Record]:
    """The protobuf records of a ``.wandb`` file.

    wandb 0.31 writes it from Go and ships no Python reader, only the ``Record`` message. The framing is
    LevelDB's log format behind a 7-byte header (``:W&B``, magic 0xBEE1, version 0): 32 KiB blocks of chunks
    ``crc32 (4) | length (2) | type (1) | payload``, type 1 a whole record, 2/3/4 its first/middle/last part;
    fewer than 7 bytes left in a block are padding. The CRC (of the type byte and the payload) is checked, so
    a framing error cannot go unnoticed. A last chunk shorter than its length is still being written: reading
    stops before it.
    """
    data = path.read_bytes()
    assert data[:7] == b":W&B\xe1\xbe\x00", data[:7]
    block, pos, payloads, parts = 32768, 7, [], []
    while pos + 7 <= len(data):
        if block - pos % block < 7:
            pos += block - pos % block
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if pos + 7 + length > len(data):
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:  # zero-filled tail of the last block
            continue
        assert zlib.crc32(bytes([kind]) + chunk) & 0xFFFFFFFF == crc, f"bad chunk at {pos}"
        parts.append(chunk)
        if kind in (1, 4):  # FULL or LAST
            payloads.append(b"".join(parts))
            parts = []
    return [Record.FromString(p) for p in payloads]


def history(records: list[Record]) -> list[dict]:
    """The logged rows; a media value becomes a dict (``{"filenames": [...], "captions": [...], ...}``)."""
    rows = []
    for record in records:
        if record.WhichOneof("record_type") == "history":
            row: dict = {}
            for item in record.history.item:
                keys = list(item.nested_key) or [item.key]
                node = row
                for key in keys[:-1]:
                    node = node.setdefault(key, {})
                node[keys[-1]] = json.loads(item.value_json)
            rows.append(row)
    return rows


def run_config(records: list[Record]) -> dict:
    config: dict = {}
    for record in records:
        if record.WhichOneof("record_type") == "config":
            config.update({u.key: json.loads(u.value_json) for u in record.config.update})
    return config


def artifacts(records: list[Record]) -> list:
    return [r.artifact for r in records if r.WhichOneof("record_type") == "artifact"]


def read_run(run_dir: Path, timeout: float = 60.0) -> SimpleNamespace:
    """The run's records once its log is complete. W&B's service process writes the log, and its last records
    can land after ``wandb.finish()`` has returned (seen on a loaded 2-core machine: the validation rows and the
    artifact missing at the read, present a moment later), so wait for the ``exit`` record, the last it writes."""
    (log,) = run_dir.glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        records = read_records(log)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert records[-1].WhichOneof("record_type") == "exit", f"{log}: no exit record after {timeout} s"
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    return SimpleNamespace(dir=run_dir, id=run.run_id, records=records, history=history(records))


# ------------------------------------------------------------------------------------------- the two fits
@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    import wandb

    tmp_path = tmp_path_factory.mktemp("wandb_workflow")
    base = yaml.safe_load((ROOT / "configs/quickstart.yaml").read_text())
    # the quickstart's callbacks without the AP50-monitored checkpoint: "last" alone keeps the disk writes small
    callbacks = [c for c in base["trainer"]["callbacks"] if c.get("init_args", {}).get("monitor") is None]
    (logger_cb,) = [c for c in callbacks if c["class_path"].endswith("ValidationImageLogger")]
    logger_cb["init_args"] = dict(
        num_images=NUM_IMAGES, min_score=0.0, max_boxes=MAX_BOXES, num_crops=NUM_CROPS, crop_size=CROP_SIZE, zoom=ZOOM
    )
    recipe = tmp_path / "images.yaml"
    recipe.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
    # score_thresh 0: even an untrained detector has more than MAX_BOXES detections per image to draw
    extra = ("--model.postprocess.init_args.score_thresh=0.0",)
    data = dict(num_train=3, num_val=2)  # an epoch is one step and one validation batch
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(tmp_path)
        mp.setenv("WANDB_DIR", str(tmp_path))
        mp.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))  # offline artifacts are staged here
        mp.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
        mp.delenv("WANDB_RUN_ID", raising=False)
        first = fit_tiny(tmp_path, str(recipe), extra=extra, **data)
        # A new process in real use: Lightning leaves the run open, and a second WandbLogger in this process
        # would silently reuse it whatever its id.
        wandb.finish()
        ckpt = latest_checkpoint(first)
        second = fit_tiny(
            tmp_path,
            str(recipe),
            extra=(
                *extra,
                "--trainer.max_epochs=2",
                f"--ckpt_path={ckpt}",
                "--trainer.logger.init_args.log_model=true",
            ),
            **data,
        )
        wandb.finish()
    run_dirs = sorted((tmp_path / "wandb").glob("offline-run-*"))  # named by start time
    assert len(run_dirs) == 2, run_dirs
    yield SimpleNamespace(
        tmp_path=tmp_path, first=first, second=second, ckpt=ckpt, run1=read_run(run_dirs[0]), run2=read_run(run_dirs[1])
    )
    shutil.rmtree(tmp_path / "wandb_data", ignore_errors=True)  # the staged checkpoint copies (70 MB each)


def _media_row(run, key: str) -> dict:
    rows = [r for r in run.history if key in r]
    assert len(rows) == 1, f"{key}: {len(rows)} rows"  # one validation epoch per run
    return rows[0]


def _val_split(cli):
    split = cli.datamodule.splits["val"]
    coco = json.loads(Path(split.ann_file).read_text())
    files = {im["id"]: Path(split.images_dir) / im["file_name"] for im in coco["images"]}
    boxes = {i: [] for i in files}
    for a in coco["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[a["image_id"]].append([x, y, x + w, y + h])
    return files, boxes


def _box_sets(run, value: dict, index: int) -> dict[str, dict]:
    return {
        name: json.loads((run.dir / "files" / meta["path"]).read_text())
        for name, meta in value["all_boxes"][index].items()
    }


def _positions(box_data: list[dict]) -> list[list[float]]:
    return sorted([b["position"][k] for k in ("minX", "minY", "maxX", "maxY")] for b in box_data)


# ------------------------------------------------------------------------------------------------- tests
def test_history_holds_the_validation_metrics_of_the_trainer(runs):
    for cli, run in ((runs.first, runs.run1), (runs.second, runs.run2)):
        row = _media_row(run, "val/AP_vt")
        for key in EVAL_KEYS:
            assert row[key] == float(cli.trainer.callback_metrics[key]), key
    assert _media_row(runs.run1, "val/AP_t")["epoch"] == 0 and _media_row(runs.run2, "val/AP_t")["epoch"] == 1


def test_images_show_ground_truth_and_predictions(runs):
    run = runs.run1
    value = _media_row(run, "val/images/image")["val/images/image"]
    assert value["_type"] == "images/separated" and value["count"] == NUM_IMAGES
    files, gt = _val_split(runs.first)
    names = {str(i): n for i, n in enumerate(runs.first.datamodule.class_names)}
    for index, caption in enumerate(value["captions"]):
        image_id = int(re.fullmatch(r"image_id (\d+)", caption).group(1))
        # the logged picture is the validation image itself (padding removed), pixel for pixel
        logged = np.asarray(Image.open(run.dir / "files" / value["filenames"][index]).convert("RGB"))
        assert np.array_equal(logged, np.asarray(Image.open(files[image_id]).convert("RGB")))
        sets = _box_sets(run, value, index)
        assert set(sets) == {"ground_truth", "predictions"}
        assert _positions(sets["ground_truth"]["box_data"]) == sorted(gt[image_id])  # every object, exactly
        predictions = sets["predictions"]["box_data"]
        assert len(predictions) == MAX_BOXES  # min_score 0: the MAX_BOXES best of many
        scores = [b["scores"]["score"] for b in predictions]
        assert scores == sorted(scores, reverse=True)
        assert all(b["box_caption"] == f"{names[str(b['class_id'])]} {b['scores']['score']:.2f}" for b in predictions)
        assert sets["predictions"]["class_labels"] == names


def test_zoomed_crops_around_the_smallest_objects(runs):
    run = runs.run1
    value = _media_row(run, "val/images/crops")["val/images/crops"]
    files, gt = _val_split(runs.first)
    shown = [
        int(re.fullmatch(r"image_id (\d+)", c).group(1))
        for c in _media_row(run, "val/images/image")["val/images/image"]["captions"]
    ]
    crops_of = {i: [] for i in shown}
    for index, caption in enumerate(value["captions"]):
        match = re.fullmatch(r"image_id (\d+) x(\d+) \[(\d+), (\d+), (\d+), (\d+)\]", caption)
        image_id, factor, x0, y0, x1, y1 = map(int, match.groups())
        crops_of[image_id].append((x0, y0, x1, y1))
        side = max(x1 - x0, y1 - y0)  # CROP_SIZE, or twice a larger object's side
        assert side >= CROP_SIZE and factor == max(1, CROP_SIZE * ZOOM // side)
        # nearest-neighbour: every source pixel is an exact factor x factor block
        source = np.asarray(Image.open(files[image_id]).convert("RGB"))[y0:y1, x0:x1]
        logged = np.asarray(Image.open(run.dir / "files" / value["filenames"][index]).convert("RGB"))
        assert np.array_equal(logged, source.repeat(factor, 0).repeat(factor, 1))
        # the ground truth is mapped into the crop: clipped to the window, shifted, scaled
        expected = []
        for bx1, by1, bx2, by2 in gt[image_id]:
            cx1, cy1, cx2, cy2 = max(bx1, x0), max(by1, y0), min(bx2, x1), min(by2, y1)
            if cx2 > cx1 and cy2 > cy1:
                expected.append([(cx1 - x0) * factor, (cy1 - y0) * factor, (cx2 - x0) * factor, (cy2 - y0) * factor])
        sets = _box_sets(run, value, index)
        assert set(sets) == {"ground_truth", "predictions"}
        assert _positions(sets["ground_truth"]["box_data"]) == sorted(expected)
        assert all(
            0 <= b["position"]["minX"] < b["position"]["maxX"] <= (x1 - x0) * factor
            for b in sets["predictions"]["box_data"]
        )
    assert value["count"] >= 1
    for image_id, windows in crops_of.items():
        # without ground truth the crops go to the densest predictions
        assert 1 <= len(windows) <= NUM_CROPS
        if gt[image_id]:  # the first crop shows a smallest object whole
            area = lambda box: (box[2] - box[0]) * (box[3] - box[1])
            smallest = [box for box in gt[image_id] if area(box) == min(map(area, gt[image_id]))]
            a, b, c, d = windows[0]
            assert any(a <= x1 and b <= y1 and x2 <= c and y2 <= d for x1, y1, x2, y2 in smallest)


def test_run_config_is_the_resolved_cli_config(runs):
    config = run_config(runs.run1.records)
    assert config["model"]["backbone"]["init_args"]["model_name"] == "resnet18"
    assert config["data"]["synthetic"]["image_size"] == 96  # a command-line override: resolved, not the file
    assert config["trainer"]["logger"]["init_args"]["id"] is None
    # the resumed run's config records the id it continued
    assert run_config(runs.run2.records)["trainer"]["logger"]["init_args"]["id"] == runs.run1.id
    assert (runs.run1.dir / "files" / "lightning_config.yaml").exists()


def test_resume_from_checkpoint_continues_the_same_run(runs):
    ckpt = torch.load(runs.ckpt, map_location="cpu", weights_only=False, mmap=True)
    assert ckpt[WANDB_RUN_ID_KEY] == runs.run1.id
    assert runs.run2.dir != runs.run1.dir  # offline: a second directory, `wandb sync` merges them by id
    assert runs.run2.id == runs.run1.id and (runs.run2.dir / f"run-{runs.run1.id}.wandb").exists()
    assert runs.first.trainer.global_step == 1 and runs.second.trainer.global_step == 2  # resumed, one more step
    (step,) = [r["trainer/global_step"] for r in runs.run2.history if "val/AP" in r]
    assert step >= max(r["trainer/global_step"] for r in runs.run1.history), "the resumed run logs after the first"


def test_log_model_records_the_checkpoint_artifact(runs):
    assert artifacts(runs.run1.records) == []  # default: no checkpoint upload
    logged = artifacts(runs.run2.records)
    assert logged and {a.type for a in logged} == {"model"} and {a.name for a in logged} == {f"model-{runs.run1.id}"}
    last = [a for a in logged if json.loads(a.metadata)["original_filename"] == "last.ckpt"]
    (entry,) = last[0].manifest.contents
    assert entry.path == "model.ckpt" and entry.size == Path(latest_checkpoint(runs.second)).stat().st_size
    assert Path(entry.local_path).is_relative_to(runs.tmp_path / "wandb_data"), "staged copy awaits `wandb sync`"


# ------------------------------------------------------------------------- the id rule, on parsed configs
def _fit_config(ckpt_path, **init_args):
    logger = Namespace(class_path="lightning.pytorch.loggers.WandbLogger", init_args=Namespace(id=None, version=None))
    for key, value in init_args.items():
        logger.init_args[key] = value
    return Namespace(ckpt_path=ckpt_path, resume_wandb_run=True, trainer=Namespace(logger=logger))


def test_stored_id_is_used_unless_the_user_chose(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    ckpt = tmp_path / "a.ckpt"
    torch.save({WANDB_RUN_ID_KEY: "stored1"}, ckpt)

    config = _fit_config(str(ckpt))
    assert continue_wandb_run(config) == "stored1" and config.trainer.logger.init_args.id == "stored1"

    config = _fit_config(str(ckpt), id="mine")  # an explicit id wins
    assert continue_wandb_run(config) is None and config.trainer.logger.init_args.id == "mine"
    config = _fit_config(str(ckpt), version="v7")
    assert continue_wandb_run(config) is None and config.trainer.logger.init_args.id is None

    config = _fit_config(str(ckpt))
    config.resume_wandb_run = False  # force a new run
    assert continue_wandb_run(config) is None and config.trainer.logger.init_args.id is None

    monkeypatch.setenv("WANDB_RUN_ID", "agent9")  # set by sweep agents
    config = _fit_config(str(ckpt))
    assert continue_wandb_run(config) is None and config.trainer.logger.init_args.id is None
    monkeypatch.delenv("WANDB_RUN_ID")

    config = _fit_config(str(tmp_path / "missing.ckpt"))
    assert continue_wandb_run(config) is None and config.trainer.logger.init_args.id is None
    torch.save({"state_dict": {}}, tmp_path / "old.ckpt")  # saved before run ids were stored
    assert continue_wandb_run(_fit_config(str(tmp_path / "old.ckpt"))) is None

    other = Namespace(ckpt_path=str(ckpt), resume_wandb_run=True, trainer=Namespace(logger=[
        Namespace(class_path="lightning.pytorch.loggers.CSVLogger", init_args=Namespace(save_dir=".")),
        _fit_config(None).trainer.logger,
    ]))  # fmt: skip
    assert continue_wandb_run(other) == "stored1" and other.trainer.logger[1].init_args.id == "stored1"
