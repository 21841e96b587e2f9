"""SR-TOD: the unit-test properties of methods.md §1.10, the reconstruction loss, and the recipe through the CLI."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_cli import fit_tiny, latest_checkpoint

from tod_lightning.losses import DetectionCriterion, ReconstructionLoss
from tod_lightning.models.necks import SRTOD
from tod_lightning.structures import DetectorOutput, Target
from tod_lightning.task import DetectionTask

STRIDES = [4, 8, 16, 32]


def _neck(channels: int = 32, **settings) -> SRTOD:
    return SRTOD([channels] * len(STRIDES), STRIDES, **settings)


def _features(batch: int, h: int, w: int, channels: int = 32) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, math.ceil(h / s), math.ceil(w / s)) for s in STRIDES]


def _reweight_by_hand(neck: SRTOD, p2: torch.Tensor) -> torch.Tensor:
    """sigmoid(MLP(avgpool) + MLP(maxpool)) * P2, with the MLP's weights applied as Linear layers."""
    ca = neck.channel_attention
    w1, b1 = ca.fc1.weight.flatten(1), ca.fc1.bias
    w2, b2 = ca.fc2.weight.flatten(1), ca.fc2.bias
    mlp = lambda v: F.linear(F.relu(F.linear(v, w1, b1)), w2, b2)
    gate = torch.sigmoid(mlp(p2.mean((2, 3))) + mlp(p2.amax((2, 3))))  # (B, C)
    return p2 * gate[:, :, None, None]


# ---------------------------------------------------------------------------------- shapes (1, 2, 3)
@pytest.mark.parametrize("channels", [128, 256])
def test_reconstruction_head_quadruples_size_in_open_unit_interval(channels):
    neck = _neck(channels)
    p2 = torch.randn(2, channels, 5, 7)
    recon = neck.reconstruction(p2)
    assert recon.shape == (2, 3, 20, 28)
    assert (recon > 0).all() and (recon < 1).all()


@pytest.mark.parametrize("h,w", [(96, 128), (256, 256), (244, 188)])  # 244x188: the contract's 61x47 P2
def test_outputs_keep_input_shapes_and_aux_is_documented(h, w):
    neck = _neck().eval()
    feats = _features(2, h, w)
    images01 = torch.rand(2, 3, h, w)
    with torch.no_grad():
        out, aux = neck(feats, images01)
    assert [o.shape for o in out] == [f.shape for f in feats]
    assert [o.dtype for o in out] == [f.dtype for f in feats]
    assert all(o is f for o, f in zip(out[1:], feats[1:])), "P3.. must pass through untouched"
    assert not torch.equal(out[0], feats[0])
    assert set(aux) == {"srtod_recon", "srtod_diff"}
    recon, diff = aux["srtod_recon"], aux["srtod_diff"]
    assert recon.shape == images01.shape  # 4 * P2 == the padded image
    assert diff.shape == (2, 1, h, w) and diff.dtype == torch.float32
    assert (diff >= 0).all() and (diff <= 1).all()
    assert torch.equal(diff, (recon - images01).abs().mean(1, keepdim=True))


def test_enhanced_p2_keeps_bf16_dtype_under_autocast():
    neck = _neck()
    feats = [f.bfloat16() for f in _features(1, 64, 64)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, aux = neck(feats, torch.rand(1, 3, 64, 64))
    assert out[0].dtype == torch.bfloat16 and out[0].shape == feats[0].shape
    assert aux["srtod_diff"].dtype == torch.float32


def test_rejects_image_not_four_times_p2_and_missing_p2():
    neck = _neck()
    with pytest.raises(ValueError, match="multiple of 32"):
        neck(_features(1, 64, 64), torch.rand(1, 3, 60, 64))
    with pytest.raises(ValueError, match="stride 4"):
        SRTOD([32, 32], [8, 16])
    with pytest.raises(ValueError, match="threshold_mode"):
        _neck(threshold_mode="learned")


# ------------------------------------------------------------------------------- parameter count (11)
def test_parameter_count_matches_official_module_at_256_channels():
    neck = SRTOD([256] * 5, [4, 8, 16, 32, 64])
    count = lambda m: sum(p.numel() for p in m.parameters())
    assert count(neck.reconstruction) == 1_025_923
    assert count(neck.channel_attention) == 8_464
    assert neck.threshold.numel() == 1
    assert count(neck) == 1_034_388
    assert [name for name, _ in neck.named_parameters() if "threshold" in name] == ["threshold"]
    assert neck.threshold.item() == pytest.approx(4 / 255)  # the official class default


# ------------------------------------------------------------------------ zero/one difference map (4)
@pytest.mark.parametrize("mode", ["official", "ste"])
@pytest.mark.parametrize("mask_resize", ["nearest", "max"])
def test_zero_difference_map_is_pure_channel_reweighting_and_one_doubles_it(mode, mask_resize):
    neck = _neck(threshold_mode=mode, mask_resize=mask_resize)
    p2 = torch.randn(2, 32, 6, 5)
    expected = _reweight_by_hand(neck, p2)
    with torch.no_grad():
        zero = neck.enhance(p2, torch.zeros(2, 1, 24, 20))
        one = neck.enhance(p2, torch.ones(2, 1, 24, 20))
        reweighted = neck.channel_attention(p2)
    assert torch.equal(zero, reweighted)  # mask 0: the factor (1 + 0) changes nothing
    assert torch.allclose(zero, expected, atol=1e-6)
    assert torch.equal(one, 2 * reweighted)
    assert torch.allclose(one, 2 * expected, atol=1e-6)


# ----------------------------------------------------------------------------------- mask values (5)
@pytest.mark.parametrize("mode", ["official", "ste"])
def test_mask_values_are_zero_half_one_with_half_only_at_the_threshold(mode):
    neck = _neck(threshold_mode=mode, t_init=0.5)
    diff = torch.rand(2, 1, 16, 16)
    diff[0, 0, 3, :] = 0.5
    mask = neck.difference_mask(diff)
    assert set(mask.unique().tolist()) == {0.0, 0.5, 1.0}
    assert torch.equal(mask == 0.5, diff == 0.5)
    assert torch.equal(mask == 1.0, diff > 0.5)


def test_threshold_is_clamped_to_unit_interval_where_used():
    neck = _neck(t_init=1.5)
    assert neck.difference_mask(torch.ones(1, 1, 4, 4)).eq(0.5).all()  # t used as 1.0, so D == t


# ---------------------------------------------------------------------------------- gradients (6, 7)
def test_threshold_gradient_is_zero_in_official_mode_and_nonzero_with_ste():
    p2 = torch.randn(2, 32, 8, 8)
    diff = 4 / 255 + 0.01 * torch.randn(2, 1, 32, 32)  # D near t
    grads = {}
    for mode in ("official", "ste"):
        torch.manual_seed(0)
        neck = _neck(threshold_mode=mode)
        neck.enhance(p2, diff).square().mean().backward()
        grads[mode] = neck.threshold.grad
    assert grads["official"] is not None and grads["official"].item() == 0.0
    assert torch.isfinite(grads["ste"]) and grads["ste"].item() != 0.0
    assert _neck(threshold_mode="official").gradient_free_parameters == ("threshold",)
    assert _neck(threshold_mode="ste").gradient_free_parameters == ()
    assert _neck(threshold_mode="soft").gradient_free_parameters == ()


def test_ste_threshold_keeps_a_gradient_when_the_difference_map_is_far_from_it():
    """An untrained head reconstructs ~0.5 everywhere; sigmoid's autograd slope would round to 0 there."""
    neck = _neck(threshold_mode="ste")
    neck.enhance(torch.randn(1, 32, 8, 8), torch.full((1, 1, 32, 32), 0.5)).square().mean().backward()
    assert neck.threshold.grad.item() != 0.0 and torch.isfinite(neck.threshold.grad)


@pytest.mark.parametrize("mode", ["official", "ste", "soft"])
def test_detection_losses_never_reach_the_reconstruction_head_but_reconstruction_loss_reaches_p2(mode):
    neck = _neck(threshold_mode=mode)
    feats = [f.requires_grad_() for f in _features(2, 64, 64)]
    images01 = torch.rand(2, 3, 64, 64)
    out, aux = neck(feats, images01)

    # A detection-style loss on the returned features only.
    sum(o.square().mean() for o in out).backward(retain_graph=True)
    for name, p in neck.reconstruction.named_parameters():
        assert p.grad is None or p.grad.abs().sum() == 0, f"detection loss reached reconstruction.{name}"
    assert all(p.grad.abs().sum() > 0 for p in neck.channel_attention.parameters())

    # The reconstruction loss alone trains RH and reaches P2 (RH's input is not detached).
    neck.zero_grad()
    feats[0].grad = None
    output = DetectorOutput([], [], [], [], (64, 64), aux)
    ReconstructionLoss()(output, [], images01)["rec"].backward()
    assert feats[0].grad is not None and feats[0].grad.abs().sum() > 0
    assert all(p.grad.abs().sum() > 0 for p in neck.reconstruction.parameters())


# ------------------------------------------------------------------------------------ mask resize (9)
def test_nearest_resize_drops_off_grid_pixels_and_max_keeps_them():
    p2 = torch.rand(1, 32, 4, 4) + 0.1  # positive, so a doubled cell is visible

    def marked_cells(mask_resize: str, diff: torch.Tensor) -> torch.Tensor:
        neck = _neck(mask_resize=mask_resize, t_init=0.5)
        with torch.no_grad():
            ratio = neck.enhance(p2, diff) / neck.channel_attention(p2)  # (1, C, 4, 4): 1 + mask
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio))
        return ratio[0, 0] - 1  # (4, 4)

    on_grid = torch.zeros(1, 1, 16, 16)
    on_grid[0, 0, 8, 4] = 1.0  # pixel (4i, 4j) with (i, j) = (2, 1)
    off_grid = torch.zeros(1, 1, 16, 16)
    off_grid[0, 0, 9, 5] = 1.0  # pixel (4i+1, 4j+1)
    blob = torch.zeros(1, 1, 16, 16)
    blob[0, 0, 9:11, 5:7] = 1.0  # a 2x2-px object inside cell (2, 1), off the sampling grid
    expected = torch.zeros(4, 4)
    expected[2, 1] = 1.0

    assert torch.allclose(marked_cells("nearest", on_grid), expected, atol=1e-6)
    assert torch.allclose(marked_cells("nearest", off_grid), torch.zeros(4, 4), atol=1e-6)
    assert torch.allclose(marked_cells("nearest", blob), torch.zeros(4, 4), atol=1e-6)
    for diff in (on_grid, off_grid, blob):
        assert torch.allclose(marked_cells("max", diff), expected, atol=1e-6)


# ---------------------------------------------------------------------- batch independence (10, 12)
def test_batch_of_two_equals_two_batches_of_one_and_eval_is_deterministic():
    neck = _neck().eval()
    feats = _features(2, 96, 128)
    images01 = torch.rand(2, 3, 96, 128)
    with torch.no_grad():
        out, aux = neck(feats, images01)
        again, aux_again = neck(feats, images01)
        singles = [neck([f[i : i + 1] for f in feats], images01[i : i + 1]) for i in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(out, again))
    assert torch.equal(aux["srtod_recon"], aux_again["srtod_recon"])
    for i, (out_i, aux_i) in enumerate(singles):
        for a, b in zip(out, out_i):
            assert torch.allclose(a[i : i + 1], b, atol=1e-5)
        assert torch.allclose(aux["srtod_recon"][i : i + 1], aux_i["srtod_recon"], atol=1e-6)


# ------------------------------------------------------------------------------ reconstruction loss (8)
def _aux_output(recon: torch.Tensor) -> DetectorOutput:
    return DetectorOutput([], [], [], [], tuple(recon.shape[-2:]), {"srtod_recon": recon})


def test_reconstruction_loss_is_weighted_mean_squared_error_over_all_elements():
    recon, images01 = torch.rand(2, 3, 8, 12), torch.rand(2, 3, 8, 12)
    by_hand = ((recon - images01) ** 2).sum() / (2 * 3 * 8 * 12)
    assert torch.allclose(ReconstructionLoss()(_aux_output(recon), [], images01)["rec"], by_hand)
    assert torch.allclose(ReconstructionLoss(rec_loss_weight=0.5)(_aux_output(recon), [], images01)["rec"], by_hand / 2)
    assert ReconstructionLoss()(_aux_output(images01.clone()), [], images01)["rec"].item() == 0.0


def test_reconstruction_loss_is_float32_under_bf16_autocast():
    recon, images01 = torch.rand(2, 3, 8, 8).bfloat16(), torch.rand(2, 3, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = ReconstructionLoss()(_aux_output(recon), [], images01)["rec"]
    assert loss.dtype == torch.float32
    assert torch.equal(loss, F.mse_loss(recon.float(), images01))


def test_reconstruction_loss_errors_name_the_missing_piece():
    with pytest.raises(KeyError, match="SRTOD"):
        ReconstructionLoss()(DetectorOutput([], [], [], [], (8, 8)), [], torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match="images01"):
        ReconstructionLoss()(_aux_output(torch.rand(1, 3, 8, 8)), [], None)


def test_criterion_adds_loss_rec_to_the_total():
    strides = [4, 8]
    maps = lambda c: [torch.randn(1, c, 32 // s, 32 // s) for s in strides]
    recon, images01 = torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)
    output = DetectorOutput(maps(2), maps(4), maps(1), strides, (32, 32), {"srtod_recon": recon})
    target = Target(torch.tensor([[4.0, 4.0, 10.0, 9.0]]), torch.tensor([1]))
    losses = DetectionCriterion(aux_losses=[ReconstructionLoss(rec_loss_weight=2.0)])(output, [target], images01)
    assert torch.allclose(losses["loss_rec"], 2 * F.mse_loss(recon, images01))
    parts = losses["loss_cls"] + losses["loss_box"] + losses["loss_quality"] + losses["loss_rec"]
    assert torch.allclose(losses["loss"], parts)


# ------------------------------------------------------------------------------------ the recipe, CLI
def test_recipe_trains_through_the_cli_logs_loss_rec_and_reloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit_tiny(tmp_path, "configs/model/srtod.yaml", extra=("--trainer.limit_val_batches=0",))
    assert cli.trainer.global_step == 2
    loss_rec = cli.trainer.callback_metrics["train/loss_rec"]
    assert torch.isfinite(loss_rec) and 0 < loss_rec < 1  # MSE of two images in [0, 1]

    neck = cli.model.detector.necks[1]
    assert isinstance(neck, SRTOD) and neck.threshold_mode == "ste" and neck.mask_resize == "nearest"
    assert 0 <= neck.threshold.item() <= 1 and neck.threshold.item() != torch.tensor(3 / 255).item()  # it learns
    # The recipe's prefix names the real parameter: the threshold sits alone in a group at lr x 0.1, no decay.
    (group,) = [g for g in cli.trainer.optimizers[0].param_groups if any(p is neck.threshold for p in g["params"])]
    assert len(group["params"]) == 1 and group["lr_mult"] == 0.1 and group["weight_decay"] == 0.0

    ckpt = latest_checkpoint(cli)
    reloaded = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    original = cli.model.eval()
    assert isinstance(reloaded.detector.necks[1], SRTOD)
    assert isinstance(reloaded.criterion.aux_losses[0], ReconstructionLoss)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = original(x), reloaded(x)
    for u, v in zip(a.cls_logits + a.box_deltas + a.quality_logits, b.cls_logits + b.box_deltas + b.quality_logits):
        assert torch.equal(u, v)
    assert torch.equal(a.aux["srtod_recon"], b.aux["srtod_recon"])
    assert torch.equal(a.aux["srtod_diff"], b.aux["srtod_diff"])
