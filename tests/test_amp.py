"""Mixed precision: half-precision detector outputs, float32 losses; bf16-mixed through the real CLI on CPU.

Lightning runs ``training_step`` (forward AND criterion) inside ``torch.autocast``; on CPU only bf16 is
available, which is what these tests use (16-mixed is CUDA-only in Lightning: its config is only parsed here;
``benchmarks/amp_gpu.py`` measures both on a GPU).
"""

from __future__ import annotations

import copy
import csv
import io
import math
from contextlib import redirect_stdout
from functools import partial

import pytest
import torch
import yaml
from oracle import PrecisionProbe
from tiny_cli import ROOT, quiet_trainer_args, tiny_data_args
from torchvision.ops import sigmoid_focal_loss

from tod_lightning.assigners import ATSSAssigner, IoUSimilarity, NWDSimilarity
from tod_lightning.cli import main as cli_main
from tod_lightning.losses import (
    CIoULoss,
    DCLoss,
    DetectionCriterion,
    DIoULoss,
    FocalLoss,
    GIoULoss,
    ReconstructionLoss,
)
from tod_lightning.losses.iou_loss import BoxLoss
from tod_lightning.models import FPN, DenseHead, Detector, TimmBackbone
from tod_lightning.models.necks import SRTOD
from tod_lightning.structures import DetectorOutput, Target

BF16 = torch.bfloat16
# The criterion under autocast must equal the float32 computation on the upcast outputs. It runs the very same
# float32 ops, so the only slack is for a different reduction order; bf16 arithmetic is ~1e-2 off (checked below).
RTOL, ATOL = 1e-6, 1e-7


def _detector() -> Detector:
    torch.manual_seed(0)
    return Detector(
        TimmBackbone("resnet18", out_strides=(4, 8, 16)),
        [partial(FPN, out_channels=32, min_level=2, max_level=4), SRTOD],
        partial(DenseHead, num_convs=1),
        num_classes=3,
    )


def _criterion(box_loss=None) -> DetectionCriterion:
    """Every part that must stay float32: focal, an IoU loss, NWD in the assigner, DCLoss, SR-TOD's MSE."""
    return DetectionCriterion(
        assigner=ATSSAssigner(similarity=NWDSimilarity()),
        box_loss=box_loss or GIoULoss(),
        positive_weighting=DCLoss(alpha=0.5),
        aux_losses=[ReconstructionLoss()],
    )


def _batch():
    g = torch.Generator().manual_seed(1)
    images01 = torch.rand(2, 3, 64, 64, generator=g)
    boxes = torch.tensor(  # 2-px, 5-px, 12-px and 30-px objects: every AI-TOD bin; the second image is empty
        [[10.0, 10.0, 12.0, 12.0], [30.0, 20.0, 35.0, 25.0], [40.0, 40.0, 52.0, 52.0], [2.0, 30.0, 32.0, 60.0]]
    )
    targets = [Target(boxes, torch.tensor([0, 1, 2, 0])), Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]
    return images01, targets


def _upcast(output: DetectorOutput) -> DetectorOutput:
    f32 = lambda maps: [m.float() for m in maps]
    return DetectorOutput(
        f32(output.cls_logits),
        f32(output.box_deltas),
        f32(output.quality_logits),
        output.strides,
        output.image_size,
        {k: v.float() for k, v in output.aux.items()},
    )


def _assert_terms_match(losses: dict, reference: dict) -> None:
    assert set(losses) == set(reference)
    for name, value in losses.items():
        assert value.dtype == torch.float32, name
        assert torch.isfinite(value), name
        torch.testing.assert_close(value, reference[name], rtol=RTOL, atol=ATOL, msg=name)


def test_bf16_autocast_outputs_are_bf16_but_every_loss_term_is_float32():
    detector, criterion = _detector(), _criterion()
    reference_criterion = copy.deepcopy(criterion)  # DCLoss keeps a running state: score both from the same one
    images01, targets = _batch()
    with torch.autocast("cpu", dtype=BF16):
        output = detector(images01)
        losses = criterion(output, targets, images01)
    assert {m.dtype for m in output.cls_logits + output.box_deltas + output.quality_logits} == {BF16}
    assert output.aux["srtod_recon"].dtype == BF16
    assert set(losses) == {"loss", "loss_cls", "loss_box", "loss_quality", "loss_rec", "num_pos"}
    assert losses["num_pos"] >= 4  # every ground truth got a positive: the box and DCLoss terms are exercised
    assert losses["loss_box"] > 0 and losses["loss_rec"] > 0

    reference = reference_criterion(_upcast(output), targets, images01)  # float32, autocast off
    _assert_terms_match(losses, reference)

    # The gradient reaches the bf16 graph and the float32 weights, finite everywhere.
    losses["loss"].backward()
    grads = [p.grad for p in detector.parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)

    # The tolerance is meaningful: the same focal term computed in bf16 misses it by far more.
    cls_logits = torch.cat([m.flatten(2) for m in output.cls_logits], 2).detach()
    fp32 = sigmoid_focal_loss(cls_logits.float(), torch.zeros_like(cls_logits.float()), reduction="sum")
    bf16 = sigmoid_focal_loss(cls_logits, torch.zeros_like(cls_logits), reduction="sum").float()
    assert not torch.allclose(bf16, fp32, rtol=RTOL * 100, atol=ATOL)


class _MatmulL1Loss(BoxLoss):
    """An injected box loss with a matmul, the kind of op autocast runs in bf16."""

    def forward(self, pred_xyxy, gt_xyxy):
        return (pred_xyxy - gt_xyxy).abs() @ torch.full((4,), 0.25, device=pred_xyxy.device)


def test_injected_parts_run_with_autocast_off():
    detector, criterion = _detector(), _criterion(box_loss=_MatmulL1Loss())
    reference_criterion = copy.deepcopy(criterion)
    images01, targets = _batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=BF16):
        output = detector(images01)
        losses = criterion(output, targets, images01)
        assert (torch.rand(3, 4) @ torch.rand(4)).dtype == BF16  # autocast is really on around the criterion
    _assert_terms_match(losses, reference_criterion(_upcast(output), targets, images01))


@pytest.mark.parametrize("loss", [GIoULoss(), DIoULoss(), CIoULoss()], ids=lambda m: type(m).__name__)
def test_box_losses_are_float32_for_half_inputs(loss):
    pred = torch.tensor([[10.3, 10.1, 12.6, 12.2], [30.0, 20.0, 36.0, 24.0]])
    gt = torch.tensor([[10.0, 10.0, 12.0, 12.0], [30.0, 20.0, 35.0, 25.0]])
    with torch.autocast("cpu", dtype=BF16):
        value = loss(pred.to(BF16), gt.to(BF16))
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(pred.to(BF16).float(), gt.to(BF16).float()), rtol=RTOL, atol=ATOL)


def test_focal_and_reconstruction_losses_are_float32_for_half_inputs():
    logits = torch.linspace(-8, 8, 50).reshape(5, 10)
    targets = (torch.arange(50).reshape(5, 10) % 7 == 0).float()
    with torch.autocast("cpu", dtype=BF16):
        focal = FocalLoss()(logits.to(BF16), targets.to(BF16))
    assert focal.dtype == torch.float32
    torch.testing.assert_close(focal, FocalLoss()(logits.to(BF16).float(), targets), rtol=RTOL, atol=ATOL)

    images01 = torch.rand(1, 3, 8, 8)
    recon = (images01 + 0.01 * torch.randn(1, 3, 8, 8)).to(BF16)
    output = DetectorOutput([], [], [], [], (8, 8), {"srtod_recon": recon})
    with torch.autocast("cpu", dtype=BF16):
        rec = ReconstructionLoss()(output, [], images01)["rec"]
    assert rec.dtype == torch.float32
    torch.testing.assert_close(rec, ((recon.float() - images01) ** 2).mean(), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("similarity", [NWDSimilarity(), IoUSimilarity()], ids=lambda s: type(s).__name__)
def test_assigner_similarities_stay_float32_under_autocast(similarity):
    """The assigner hands its similarity float32 priors and boxes; autocast must not lower them."""
    priors = torch.tensor([[0.0, 0.0, 16.0, 16.0], [4.0, 4.0, 8.0, 8.0], [20.0, 20.0, 24.0, 24.0]])
    gt = torch.tensor([[5.0, 5.0, 7.0, 7.0], [18.0, 19.0, 25.0, 23.0]])
    with torch.autocast("cpu", dtype=BF16):
        value = similarity(priors, gt)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, similarity(priors, gt), rtol=0, atol=0)


def _read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bf16_mixed_fit_through_cli_with_srtod(tmp_path):
    """quickstart + SR-TOD (its reconstruction MSE is the most precision-sensitive term) + amp_bf16, on CPU."""
    configs = ["configs/quickstart.yaml", "configs/model/srtod.yaml", "configs/amp_bf16.yaml"]
    logger = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path)}}
    cli = cli_main(
        [
            "fit",
            *(arg for c in configs for arg in ("--config", str(ROOT / c))),
            *tiny_data_args(tmp_path, image_size=64, num_train=4, num_val=2, batch_size=2),
            *quiet_trainer_args(tmp_path),
            f"--trainer.logger={yaml.safe_dump(logger, default_flow_style=True).strip()}",
            "--trainer.max_epochs=1",
            "--trainer.check_val_every_n_epoch=1",
            "--trainer.log_every_n_steps=1",
            "--trainer.callbacks+=oracle.PrecisionProbe",
        ]
    )
    assert cli.trainer.precision == "bf16-mixed"
    probe = next(c for c in cli.trainer.callbacks if isinstance(c, PrecisionProbe))
    assert probe.head_dtypes == [BF16, BF16]  # two training steps, forward under bf16 autocast
    assert probe.loss_dtypes == [torch.float32, torch.float32]
    rows = _read_csv(cli.trainer.logger.log_dir + "/metrics.csv")
    logged = {k: float(v) for row in rows for k, v in row.items() if v != ""}
    terms = {"train/loss", "train/loss_cls", "train/loss_box", "train/loss_quality", "train/loss_rec"}
    assert terms <= set(logged)
    assert {"val/loss", "val/AP", "val/AP50", "val/AP_vt", "val/AR"} <= set(logged)
    bad = {k: v for row in rows for k, v in row.items() if v != "" and not math.isfinite(float(v))}
    assert not bad, f"non-finite logged values: {bad}"
    assert all(logged[k] > 0 for k in terms)


def _print_config(*configs: str) -> dict:
    out = io.StringIO()
    with redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *(arg for c in configs for arg in ("--config", str(ROOT / c))), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(out.getvalue())


@pytest.mark.parametrize(
    "config, precision", [("configs/amp_bf16.yaml", "bf16-mixed"), ("configs/amp_fp16.yaml", "16-mixed")]
)
def test_amp_configs_parse(config, precision):
    """16-mixed is CUDA-only in Lightning (it rejects it on CPU), so fp16 is parsed here, run by benchmarks/."""
    resolved = _print_config("configs/quickstart.yaml", config)
    assert resolved["trainer"]["precision"] == precision
    assert resolved["model"]["backbone"]["init_args"]["model_name"] == "resnet18"  # the recipe is kept
