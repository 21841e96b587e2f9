"""SGDM / RDConv (methods.md §3.4): shapes, the zero-weight value, transpose equivariance of the shared static
kernel, per-sample dynamic kernels, gradients, parameter counts, level selection, and the CLI recipe."""

import pytest
import torch
from tiny_cli import fit_tiny, latest_checkpoint

from tod_lightning.models.necks import SGDM
from tod_lightning.models.necks.sgdm import RDConv
from tod_lightning.task import DetectionTask

MODES = ["compact", "depthwise"]


def _perturb_generators(block: RDConv, std: float = 0.01) -> None:
    """Move the zero-initialised generators away from zero, so the dynamic kernels depend on the input."""
    with torch.no_grad():
        for p in [*block.spatial_branch.parameters(), *block.global_branch.parameters()]:
            p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels,h,w", [(64, 20, 16), (64, 13, 7), (256, 9, 11), (256, 1, 1)])
def test_shape_and_attention_range(mode, channels, h, w):
    block = RDConv(channels, kernel_mode=mode)
    _perturb_generators(block, std=0.01)
    x = torch.randn(2, channels, h, w)
    y = block(x)
    assert y.shape == x.shape
    a = block.attention(x)
    assert a.shape == ((2, 1, h, w) if mode == "compact" else (2, channels, h, w))
    assert (a > 0).all() and (a < 1).all()
    assert torch.allclose(y, x * a)  # the compact map broadcasts over channels
    assert a.std() > 1e-3, "perturbed generators must make a non-constant attention map"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("residual,factor", [(False, 0.5), (True, 1.5)])
def test_all_zero_weights_give_half_attention(mode, residual, factor):
    block = RDConv(32, kernel_mode=mode, residual=residual)
    _perturb_generators(block)
    with torch.no_grad():
        for p in [*block.spatial_branch.parameters(), *block.global_branch.parameters()]:
            p.zero_()
        block.static_weight.zero_()
        block.static_bias.zero_()
    x = torch.randn(2, 32, 15, 10)
    assert torch.equal(block.attention(x), torch.full_like(block.attention(x), 0.5))
    assert torch.allclose(block(x), factor * x, atol=0, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_starts_as_pure_static_attention(mode):
    block = RDConv(32, kernel_mode=mode)
    x = torch.randn(2, 32, 12, 9)
    r = block.razor(x)
    assert torch.equal(block.dynamic_kernels(x, r), torch.zeros_like(block.dynamic_kernels(x, r)))
    assert block.static_weight.abs().sum() > 0  # v ~ N(0, 0.01), b = 0
    assert torch.allclose(block.attention(x), torch.sigmoid(block.static_attention(r)).expand_as(block.attention(x)))


def test_static_kernel_is_transpose_equivariant():
    """Shared 1×k / k×1 weights: A_st(X^T) == A_st(X)^T, and with W_dyn = 0 the whole block commutes with ^T."""
    block = RDConv(24, kernel_size=7)
    with torch.no_grad():
        block.static_weight.copy_(torch.randn(2, 7))  # a clearly asymmetric 1×k kernel
        block.static_bias.fill_(0.3)
    x = torch.randn(2, 24, 11, 17)
    xt = x.transpose(-1, -2)  # (B, C, W, H)
    a_st = block.static_attention(block.razor(x))
    a_st_t = block.static_attention(block.razor(xt))
    torch.testing.assert_close(a_st_t, a_st.transpose(-1, -2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(block(xt), block(x).transpose(-1, -2), atol=1e-5, rtol=1e-5)
    # The property is the shared weights': the horizontal term alone does not commute with ^T.
    k, p = 7, 3
    r, rt = block.razor(x), block.razor(xt)
    a_h = torch.nn.functional.conv2d(r, block.static_weight.view(1, 2, 1, k), padding=(0, p))
    a_h_t = torch.nn.functional.conv2d(rt, block.static_weight.view(1, 2, 1, k), padding=(0, p))
    assert not torch.allclose(a_h_t, a_h.transpose(-1, -2), atol=1e-3)


@pytest.mark.parametrize("mode", MODES)
def test_dynamic_kernels_are_per_sample_and_batch_independent(mode):
    block = RDConv(32, kernel_mode=mode).eval()
    _perturb_generators(block)
    x = torch.randn(2, 32, 13, 19)
    kernels = block.dynamic_kernels(x, block.razor(x))
    assert not torch.allclose(kernels[0], kernels[1], atol=1e-4), "two samples must get two kernels"
    with torch.no_grad():
        both = block(x)
        one_by_one = torch.cat([block(x[:1]), block(x[1:])])
    torch.testing.assert_close(both, one_by_one, atol=1e-6, rtol=1e-5)
    # A kernel is that sample's own: changing sample 1 leaves sample 0's output unchanged.
    x2 = x.clone()
    x2[1] = torch.randn_like(x2[1])
    with torch.no_grad():
        torch.testing.assert_close(block(x2)[0], both[0], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_static_weights_both_branches_and_input(mode):
    block = RDConv(32, kernel_mode=mode)
    x = torch.randn(2, 32, 10, 14, requires_grad=True)
    target = torch.randn(2, 32, 10, 14)
    (block(x) - target).square().mean().backward()
    # At init (W_dyn = 0) the generators' zero last layers already learn: ∂L/∂W_dyn ≠ 0.
    for p in (block.static_weight, block.static_bias, block.spatial_branch[1].weight, block.global_branch[-1].weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0
    # Once they moved, every parameter of both branches gets a gradient (the hidden FC too).
    block.zero_grad()
    _perturb_generators(block)
    (block(x) - target).square().mean().backward()
    for name, p in block.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("channels", [64, 256])
def test_parameter_count_matches_formula(mode, channels):
    k, r = 7, 16
    hidden = max(channels // r, 8)
    kc = 2 if mode == "compact" else channels  # kernel channels: 2 (razor map) or C (depthwise)
    expected = (
        (channels * hidden + hidden)  # global FC C -> C/r
        + (hidden * kc * k * k + kc * k * k)  # global FC C/r -> K k²
        + (2 * kc + kc)  # spatial-branch 1×1 conv 2 -> K
        + (2 * k + 1)  # shared static vector v (2, k) and bias b
    )
    block = RDConv(channels, kernel_size=k, reduction=r, kernel_mode=mode)
    assert sum(p.numel() for p in block.parameters()) == expected
    if channels == 256:  # the spec's orders of magnitude: ≈6k (compact), ≈0.2M (depthwise, the paper's budget)
        assert (5_000 < expected < 7_000) if mode == "compact" else (150_000 < expected < 250_000)


def test_neck_enhances_selected_levels_only():
    feats = [torch.randn(1, c, s, s) for c, s in zip([16, 32, 48], [24, 12, 6])]
    neck = SGDM([16, 32, 48], [4, 8, 16], levels=[0, -1])
    assert neck.levels == [0, 2] and len(neck.blocks) == 2
    assert neck.out_channels == [16, 32, 48] and neck.out_strides == [4, 8, 16]
    out, aux = neck(feats, torch.rand(1, 3, 96, 96))
    assert aux == {}
    assert out[1] is feats[1]
    for i in (0, 2):
        assert out[i].shape == feats[i].shape and not torch.allclose(out[i], feats[i])
    assert len(SGDM([16, 32, 48], [4, 8, 16]).blocks) == 3  # default: every level
    with pytest.raises(ValueError, match="levels"):
        SGDM([16, 32], [4, 8], levels=[2])
    with pytest.raises(ValueError, match="odd"):
        RDConv(16, kernel_size=4)


def test_cli_recipe_trains_and_reloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit_tiny(tmp_path, "configs/model/sgdm.yaml", image_size=64, num_train=4, num_val=2, batch_size=2)
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2
    assert torch.isfinite(metrics["train/loss"]) and "val/AP" in metrics
    neck = cli.model.detector.necks[1]
    assert isinstance(neck, SGDM) and len(neck.blocks) == 3  # P2..P4 of the quickstart FPN
    # The zero-initialised generators moved: training reached them.
    assert neck.blocks[0].global_branch[-1].weight.abs().sum() > 0
    ckpt = latest_checkpoint(cli)
    reloaded = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    assert isinstance(reloaded.detector.necks[1], SGDM)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = cli.model.eval()(x), reloaded(x)
    for u, v in zip(a.cls_logits + a.box_deltas + a.quality_logits, b.cls_logits + b.box_deltas + b.quality_logits):
        assert torch.equal(u, v)
