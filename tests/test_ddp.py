"""DDP through the real CLI on CPU (2 processes, gloo): evaluation is exact, and a short fit runs.

The model evaluated is an oracle (``tests/oracle.py``, selected as ``model.inference`` by ``class_path``):
its detections are the ground truth with deterministic drops, jitter and false positives, keyed by the image,
so AP is far from 0 and 1 without a trained checkpoint and any image counted twice or lost would show.
7 validation images on 2 ranks: Lightning's DistributedSampler pads rank 1 with a copy of image 1; with
eval batches of 3, one process sees batches of 3, 3, 1 and each rank 3, 1.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from oracle import OracleInference
from tiny_cli import ROOT

from tod_lightning.cli import main as cli_main
from tod_lightning.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.metrics import AITODMetric
from tod_lightning.task import DetectionTask

SPEC = SyntheticSpec(image_size=96, num_train=4, num_val=7, dense_fraction=0.0)
ROWS = ["AP", "AP50", "AP75", "AP_vt", "AP_t", "AP_s", "AP_m", "AR", "AR_vt", "AR_t", "AR_s", "AR_m"]
CPU_DDP = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.sync_batchnorm=false"]


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def _args(root: Path, val, name: str) -> list[str]:
    """Data, oracle, CSV logger and eval recorder arguments shared by every run (``name``: its output folder)."""
    logger = {
        "class_path": "lightning.pytorch.loggers.CSVLogger",
        "init_args": {"save_dir": str(root), "name": "csv", "version": name},
    }
    recorder = {"class_path": "oracle.EvalRecorder", "init_args": {"output_file": str(root / f"{name}_ids.json")}}
    return [
        f"--data.cache_dir={root / 'cache'}",
        f"--data.synthetic.image_size={SPEC.image_size}",
        f"--data.synthetic.num_train={SPEC.num_train}",
        f"--data.synthetic.num_val={SPEC.num_val}",
        "--data.synthetic.dense_fraction=0.0",
        "--data.batch_size=1",
        "--data.eval_batch_size=3",
        "--data.num_workers=0",
        "--model.inference=oracle.OracleInference",
        f"--model.inference.init_args.images_dir={val.images_dir}",
        f"--model.inference.init_args.ann_file={val.ann_file}",
        f"--trainer.default_root_dir={root}",
        f"--trainer.logger={_flow(logger)}",
        f"--trainer.callbacks+={_flow(recorder)}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]


def _run_cli(args: list[str]) -> None:
    """``python cli.py ARGS`` in a fresh process (Lightning's DDP launcher re-runs that command per rank)."""
    env = dict(os.environ, WANDB_MODE="offline", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "cli.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"cli.py {args[0]} failed:\n{proc.stderr[-4000:]}"


def _logged_rows(root: Path, name: str) -> list[dict[str, float]]:
    with open(root / "csv" / name / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def _eval_rows(rows: list[dict[str, float]]) -> dict[str, float]:
    (row,) = [r for r in rows if "val/AP" in r]  # one evaluation per run
    return {k: row[f"val/{k}"] for k in ROWS}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """2-process fit, then 2-process and 1-process ``validate`` of its last checkpoint, on the same split."""
    root = tmp_path_factory.mktemp("ddp")
    val = ensure_synthetic_dataset(root / "cache", SPEC)["val"]  # generated once, read by every process
    quickstart = ["--config", str(ROOT / "configs/quickstart.yaml")]

    # 4 training images, batch 1, 2 ranks: 2 optimizer steps, validated by the oracle at the epoch end.
    fit = ["fit", *quickstart, "--config", str(ROOT / "configs/ddp.yaml"), *CPU_DDP, *_args(root, val, "fit")]
    _run_cli([*fit, "--trainer.max_epochs=1", "--trainer.check_val_every_n_epoch=1", "--trainer.log_every_n_steps=1"])
    (ckpt,) = (root / "csv" / "fit" / "checkpoints").glob("last.ckpt")

    validate = ["validate", *quickstart, "--trainer.accelerator=cpu", f"--ckpt_path={ckpt}"]
    _run_cli([*validate, *_args(root, val, "ddp"), "--trainer.strategy=ddp", "--trainer.devices=2"])
    cli_main([*validate, *_args(root, val, "single"), "--trainer.devices=1"])  # the same command, one process

    ids = {name: json.loads((root / f"{name}_ids.json").read_text()) for name in ("fit", "ddp", "single")}
    val_ids = sorted(image["id"] for image in json.loads(Path(val.ann_file).read_text())["images"])
    return {
        "root": root,
        "ckpt": ckpt,
        "ids": ids,
        "val_ids": val_ids,
        "val_ann_file": val.ann_file,
        "val_images_dir": val.images_dir,
    }


def test_ddp_validate_equals_single_process(runs):
    single = _eval_rows(_logged_rows(runs["root"], "single"))
    ddp = _eval_rows(_logged_rows(runs["root"], "ddp"))
    assert 0.3 <= single["AP50"] <= 0.99, single  # the oracle detects something, imperfectly
    assert 0.0 < single["AP"] < single["AP50"] and 0.0 < single["AR"] < 1.0
    for k in ROWS:
        assert math.isfinite(ddp[k]) and abs(ddp[k] - single[k]) <= 1e-6, (k, ddp[k], single[k])


def test_ddp_metric_counts_every_image_once(runs):
    val_ids = runs["val_ids"]
    assert len(val_ids) == SPEC.num_val == 7
    single, ddp = runs["ids"]["single"], runs["ids"]["ddp"]
    assert single["world_size"] == 1 and sorted(single["gathered_image_ids"]) == val_ids
    # Gathered from both ranks: 8 = 7 + the sampler's padded duplicate, which the metric drops by image id.
    assert ddp["world_size"] == 2 and len(ddp["gathered_image_ids"]) == 8
    counts = collections.Counter(ddp["gathered_image_ids"])
    assert sorted(counts) == val_ids and sorted(counts.values()) == [1] * 6 + [2]
    assert len(ddp["rank_image_ids"]) == 4  # rank 0's share: the split was really divided


def test_a_double_counted_image_would_change_the_rows(runs):
    """The comparison above can fail: scoring the padded copy of image 1 as an image of its own moves the rows."""
    val_ids = runs["val_ids"]
    ann = json.loads(Path(runs["val_ann_file"]).read_text())
    oracle = OracleInference(runs["val_images_dir"], runs["val_ann_file"])
    by_id = {image_id: (gt_xyxy, gt_labels, k) for image_id, gt_xyxy, gt_labels, k in oracle._build_index().values()}
    sizes = {image["id"]: (image["height"], image["width"]) for image in ann["images"]}

    def rows(image_ids: list[int]) -> dict[str, float]:
        metric = AITODMetric()
        for n, image_id in enumerate(image_ids):
            gt_xyxy, gt_labels, k = by_id[image_id]
            boxes, scores, labels = oracle.detections_for(image_id, gt_xyxy, gt_labels, k, sizes[image_id])
            pred = {"boxes_xyxy": torch.as_tensor(boxes), "scores": torch.as_tensor(scores), "labels": labels}
            # Ids by position: a repeated image counts as one more image, as without deduplication.
            target = {"boxes_xyxy": torch.as_tensor(gt_xyxy), "labels": gt_labels, "image_id": n + 1}
            metric.update([pred], [target])
        return {k: float(v) for k, v in metric.compute().items() if k in ROWS}

    single = _eval_rows(_logged_rows(runs["root"], "single"))
    once = rows(val_ids)
    assert all(abs(once[k] - single[k]) <= 1e-6 for k in ROWS), (once, single)  # the oracle, recomputed here
    twice = rows([*val_ids, val_ids[0]])
    assert max(abs(twice[k] - single[k]) for k in ROWS) > 1e-3, twice


def test_ddp_fit_trains_logs_and_checkpoints(runs):
    rows = _logged_rows(runs["root"], "fit")
    losses = [r["train/loss"] for r in rows if "train/loss" in r]
    assert len(losses) == 2 and all(math.isfinite(v) and v > 0 for v in losses)
    # Validation inside fit (DDP, padded sampler) gives the same rows as the single-process validate.
    fit_eval, single = _eval_rows(rows), _eval_rows(_logged_rows(runs["root"], "single"))
    assert all(abs(fit_eval[k] - single[k]) <= 1e-6 for k in ROWS), (fit_eval, single)
    assert len(runs["ids"]["fit"]["gathered_image_ids"]) == 8

    checkpoint = torch.load(runs["ckpt"], map_location="cpu", weights_only=False)
    assert checkpoint["global_step"] == 2  # 4 images / 2 ranks / batch 1 (one process would take 4 steps)
    task = DetectionTask.load_from_checkpoint(runs["ckpt"], map_location="cpu")
    state = task.state_dict()
    assert state.keys() == checkpoint["state_dict"].keys()
    assert all(torch.equal(state[k], v) for k, v in checkpoint["state_dict"].items())
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_ddp_tiled_fit_decodes_each_frame_once(tmp_path):
    """Frame groups under real DDP: the data module passes the trainer's world size and rank to the sampler, which
    deals its order out itself (Lightning's wrapper would reshuffle it: each rank then decoded 5 of the 4 frames for
    its 8 tiles), and each rank trains on tiles of frames of its own, so the 4 frames are decoded 4 times in all."""
    val = ensure_synthetic_dataset(tmp_path / "cache", SPEC)["val"]
    tiling = {"class_path": "tod_lightning.data.TileSpec", "init_args": {"tile_size": 64, "overlap": 16}}
    tiling["init_args"]["empty_tile_ratio"] = 1.0  # 4 tiles of every 96 x 96 frame, 16 in all
    recorder = {"class_path": "oracle.FrameDecodeRecorder", "init_args": {"output_dir": str(tmp_path)}}
    args = ["fit", "--config", str(ROOT / "configs/quickstart.yaml"), *CPU_DDP, *_args(tmp_path, val, "tiled")]
    args += [f"--data.train_tiling={_flow(tiling)}", "--data.train_frames_per_group=2"]
    _run_cli([*args, f"--trainer.callbacks+={_flow(recorder)}", "--trainer.max_epochs=1"])
    ranks = [json.loads((tmp_path / f"frames_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert [len(r["frames"]) for r in ranks] == [8, 8]  # 16 tiles dealt out to 2 ranks, batch 1
    assert [r["decodes"] for r in ranks] == [2, 2] and [r["hits"] for r in ranks] == [6, 6]
    assert not set(ranks[0]["frames"]) & set(ranks[1]["frames"])  # no frame read by both ranks


def test_ddp_config_layers_on_the_quickstart(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            [
                "fit",
                "--config",
                str(ROOT / "configs/quickstart.yaml"),
                "--config",
                str(ROOT / "configs/ddp.yaml"),
                "--print_config",
            ]
        )
    assert exit_info.value.code in (0, None)
    trainer = yaml.safe_load(capsys.readouterr().out)["trainer"]
    assert trainer["strategy"]["class_path"] == "lightning.pytorch.strategies.DDPStrategy"
    assert trainer["strategy"]["init_args"]["find_unused_parameters"] is True
    assert (trainer["accelerator"], trainer["devices"], trainer["num_nodes"]) == ("gpu", 4, 1)
    assert trainer["sync_batchnorm"] is False and trainer["precision"] == "32-true"
