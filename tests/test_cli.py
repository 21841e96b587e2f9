"""Through the real LightningCLI: every config parses, a tiny run trains, checkpoints reload, predict writes COCO."""

import json
import os
from pathlib import Path

import pytest
import torch
from tiny_cli import ROOT, latest_checkpoint, quiet_trainer_args, tiny_data_args

from tod_lightning.cli import main as cli_main
from tod_lightning.task import DetectionTask

# Every LightningCLI config (configs/sweeps/ holds W&B sweep files, tested in tests/test_sweeps.py).
CONFIGS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").rglob("*.yaml") if p.parent.name != "sweeps")


def test_configs_exist():
    assert "configs/quickstart.yaml" in CONFIGS and "configs/aitod_r50.yaml" in CONFIGS


@pytest.mark.parametrize("config", CONFIGS)
def test_every_config_parses(config, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    # Recipes in sub-folders (configs/model/, configs/data/) and the tiled recipe are layered on the base
    # config, as users run them; a top-level config stands alone.
    layered = "/" in config.removeprefix("configs/") or config == "configs/tiled.yaml"
    layers = ["configs/quickstart.yaml", config] if layered else [config]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *(a for c in layers for a in ("--config", c)), "--print_config"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "model:" in printed and "data:" in printed


def test_quickstart_trains_validates_reloads_and_predicts(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs/quickstart.yaml"), *tiny_data_args(tmp_path), *quiet_trainer_args(tmp_path)]
    cli = cli_main(["fit", *args, "--trainer.max_epochs=2", "--trainer.check_val_every_n_epoch=1"])
    trainer = cli.trainer
    assert trainer.global_step == 4  # 2 epochs x ceil(6 / 3) batches
    metrics = trainer.callback_metrics
    for key in ("val/AP", "val/AP50", "val/AP75", "val/AP_vt", "val/AP_t", "val/AP_s", "val/AP_m", "val/AR"):
        assert key in metrics, key
    assert torch.isfinite(metrics["train/loss"])
    assert cli.model.detector.head.num_classes == cli.datamodule.num_classes == 4  # linked from the data

    # W&B (offline in tests) holds the resolved config of this run
    saved = list(tmp_path.glob("wandb/offline-run-*/files/lightning_config.yaml"))
    assert len(saved) == 1 and "class_path: tod_lightning.models.FPN" in saved[0].read_text()
    # ... and the validation images the ValidationImageLogger sent (2 epochs x 3 images)
    media = list(saved[0].parent.glob("media/images/val/images/image_*.png"))
    assert len(media) == 6, media

    ckpt = latest_checkpoint(cli)
    assert Path(ckpt).name == "last.ckpt"
    assert torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"] == 4, "latest weights, not stale"
    # Round trip: the checkpoint rebuilds the injected parts and gives identical outputs.
    reloaded = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    original = cli.model.eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = original(x), reloaded(x)
    for u, v in zip(a.cls_logits + a.box_deltas, b.cls_logits + b.box_deltas):
        assert torch.equal(u, v)
    assert reloaded.detector.necks[0].out_channels[0] == 64  # rebuilt from the saved config, not defaults

    # the checkpoint keeps the dataset's categories and padding divisor (predict on a bare folder and export read them)
    saved = torch.load(ckpt, map_location="cpu", weights_only=False)["DetectionDataModule"]
    assert saved == {"category_ids": [1, 2, 3, 4], "class_names": cli.datamodule.class_names, "size_divisor": 32}

    # validate from the checkpoint logs the same rows once
    val = cli_main(["validate", *args, f"--ckpt_path={ckpt}"])
    assert set(k for k in val.trainer.callback_metrics if k.startswith("val/AP")) >= {"val/AP", "val/AP_vt"}

    # predict on a bare image folder writes COCO results with original category ids
    images = Path(val.datamodule.splits["val"].images_dir)
    out_file = tmp_path / "dets.json"
    cli_main(
        [
            "predict",
            *args,
            f"--ckpt_path={ckpt}",
            f"--data.predict={images}",
            f"--predict_writer.output_file={out_file}",
        ]
    )
    records = json.loads(out_file.read_text())
    assert records, "an untrained model still emits low-score detections above 0.05"
    assert set(records[0]) >= {"image_id", "category_id", "bbox", "score"}
    assert {r["category_id"] for r in records} <= {1, 2, 3, 4}
    assert {r["image_id"] for r in records} <= {1, 2, 3}
    for r in records[:50]:
        x0, y0, w, h = r["bbox"]
        assert 0 <= x0 and 0 <= y0 and w >= 0 and h >= 0 and x0 + w <= 96.01 and y0 + h <= 96.01


def test_aitod_recipe_builds_without_pretraining_and_trains_one_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = cli_main(
        [
            "fit",
            "--config",
            str(ROOT / "configs/aitod_r50.yaml"),
            "--model.backbone.init_args.pretrained=false",
            "--data.train=null",
            "--data.val=null",
            *tiny_data_args(tmp_path),
            "--data.train_augmentation.init_args.image_size=128",
            "--data.eval_transform.init_args.image_size=128",
            "--trainer.precision=32-true",
            "--trainer.accelerator=cpu",
            "--trainer.devices=1",
            "--trainer.max_steps=1",
            "--trainer.limit_val_batches=0",
            *quiet_trainer_args(tmp_path),
        ]
    )
    model = cli.model
    assert cli.trainer.global_step == 1
    assert model.detector.backbone.out_channels == [256, 512, 1024, 2048]
    assert model.detector.strides == [4, 8, 16, 32, 64]
    assert model.detector.necks[0].out_channels[0] == 256
    assert model.postprocess.max_per_image == 1500


def test_wandb_goes_offline_without_credentials(tmp_path, monkeypatch):
    from tod_lightning.cli import _wandb_offline_without_credentials

    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    _wandb_offline_without_credentials()
    assert os.environ["WANDB_MODE"] == "offline"

    monkeypatch.delenv("WANDB_MODE")
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    _wandb_offline_without_credentials()
    assert "WANDB_MODE" not in os.environ, "credentials present: leave W&B online"

    monkeypatch.setenv("WANDB_MODE", "disabled")
    _wandb_offline_without_credentials()
    assert os.environ["WANDB_MODE"] == "disabled", "an explicit user choice is kept"


def test_combined_recipe_builds_every_method_and_trains_a_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["--config", str(ROOT / "configs/quickstart.yaml"), "--config", str(ROOT / "configs/model/all.yaml")]
    cli = cli_main(["fit", *args, *tiny_data_args(tmp_path), *quiet_trainer_args(tmp_path), "--trainer.max_epochs=1",
                    "--trainer.limit_val_batches=0"])  # fmt: skip
    det = cli.model.detector
    assert type(det.backbone).__name__ == "IPGBackbone"
    assert [type(n).__name__ for n in det.necks] == ["FPN", "CEM", "FBSM", "SGDM", "SRTOD"]
    assert type(cli.model.criterion.positive_weighting).__name__ == "DCLoss"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss_rec"])
    groups = cli.trainer.optimizers[0].param_groups
    (threshold_group,) = [g for g in groups if any(p is det.necks[4].threshold for p in g["params"])]
    assert len(threshold_group["params"]) == 1 and threshold_group["weight_decay"] == 0.0
    # ... and its checkpoint (IPG hooks, DCLoss running counts, SR-TOD threshold) reloads to identical outputs
    ckpt = latest_checkpoint(cli)
    reloaded = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = cli.model.eval()(x), reloaded(x)
    for u, v in zip(
        a.cls_logits + a.box_deltas + [a.aux["srtod_diff"]], b.cls_logits + b.box_deltas + [b.aux["srtod_diff"]]
    ):
        assert torch.equal(u, v)
