"""E-FPN-BS (methods.md §2.4): CEM and FBSM necks, DCLoss positive weighting, and the recipe through the CLI."""

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_cli import fit_tiny, latest_checkpoint

from tod_lightning.losses import DCLoss, DetectionCriterion
from tod_lightning.models.necks import CEM, FBSM
from tod_lightning.structures import DetectorOutput, Target
from tod_lightning.task import DetectionTask

STRIDES_P2_P6 = [4, 8, 16, 32, 64]


def _pyramid(channels: int, h: int, w: int, strides=STRIDES_P2_P6, batch: int = 2) -> list[torch.Tensor]:
    return [torch.randn(batch, channels, math.ceil(h / s), math.ceil(w / s)) for s in strides]


def _perturb(module: torch.nn.Module, std: float = 0.01) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


def _rel_diff(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).norm() / ref.norm()).item()


# ----------------------------------------------------------------------------------------------- CEM / FBSM
@pytest.mark.parametrize("channels", [128, 256])
def test_shapes_p2_to_p6_and_coarse_levels_unchanged(channels):
    """§2.4.1: shapes equal input shapes on P2..P6; CEM leaves P5/P6 alone, FBSM leaves P5/P6 alone."""
    h, w = 244, 188  # P2 61x47; coarse levels are not exact halves (31x24, 16x12, 8x6, 4x3)
    feats = _pyramid(channels, h, w)
    cem = CEM([channels] * 5, STRIDES_P2_P6)
    fbsm = FBSM([channels] * 5, STRIDES_P2_P6)
    assert cem.levels == [0, 1] and cem.source_levels == [3, 4] and fbsm.levels == [0, 1, 2]
    _perturb(cem)  # move the zero-initialised injection away from the identity
    _perturb(fbsm)
    images01 = torch.rand(2, 3, h, w)
    for neck in (cem, fbsm):
        assert neck.out_channels == [channels] * 5 and neck.out_strides == STRIDES_P2_P6
        with torch.no_grad():
            out, aux = neck(feats, images01)
        assert aux == {}
        assert [o.shape for o in out] == [f.shape for f in feats]
        assert out[3] is feats[3] and out[4] is feats[4]
        assert not torch.equal(out[0], feats[0]) and not torch.equal(out[1], feats[1])
    assert torch.equal(cem(feats, images01)[0][2], feats[2])  # P4 is neither injected nor a source


def test_cem_is_exact_identity_at_init_and_fbsm_within_one_percent():
    """§2.4.2: CEM returns its input exactly; FBSM multiplies by exactly 1 + π = 1.01 (relative change 1%)."""
    feats = _pyramid(64, 244, 188)
    images01 = torch.rand(2, 3, 244, 188)
    out, _ = CEM([64] * 5, STRIDES_P2_P6)(feats, images01)
    for o, f in zip(out, feats):
        assert torch.equal(o, f)
    fbsm = FBSM([64] * 5, STRIDES_P2_P6, return_masks=True)
    out, aux = fbsm(feats, images01)
    for i, (o, f) in enumerate(zip(out, feats)):
        if i in fbsm.levels:
            torch.testing.assert_close(o, f * 1.01, rtol=1e-6, atol=1e-7)
            assert _rel_diff(o, f) <= 0.01 + 1e-5
        else:
            assert torch.equal(o, f)
    for stride in (4, 8, 16):
        torch.testing.assert_close(aux[f"fbsm_mask_s{stride}"], torch.full_like(aux[f"fbsm_mask_s{stride}"], 0.01))


def test_cem_gradient_reaches_coarse_levels_only_once_injection_moves():
    """§2.4.3: at exact init only the injection convs get gradient from a P2 loss; after they move, every
    CEM parameter and the P5/P6 inputs do (the stated purpose: coarse levels learn through P2)."""
    cem = CEM([32] * 5, STRIDES_P2_P6)
    feats = [f.requires_grad_(True) for f in _pyramid(32, 128, 96)]
    out, _ = cem(feats, torch.rand(2, 3, 128, 96))
    out[0].square().mean().backward()
    for name, p in cem.named_parameters():
        if name.startswith("inject.0."):
            assert p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None or p.grad.abs().sum() == 0, name
    for level in (3, 4):
        assert feats[level].grad is None or feats[level].grad.abs().sum() == 0

    with torch.no_grad():
        for conv in cem.inject:
            conv.weight.normal_(0, 0.01)
    feats = [f.detach().requires_grad_(True) for f in feats]
    cem.zero_grad()
    out, _ = cem(feats, torch.rand(2, 3, 128, 96))
    out[0].square().mean().backward()
    for name, p in cem.named_parameters():
        if name.startswith("inject.1."):
            assert p.grad is None or p.grad.abs().sum() == 0, "P3's injection does not affect P2"
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for level in (3, 4):
        assert torch.isfinite(feats[level].grad).all() and feats[level].grad.abs().sum() > 0


def test_cem_matches_resize_then_project_reference():
    """The cheap project-then-resize equals the spec's written order (resize Ctx, then the 1x1 conv)."""
    cem = CEM([16] * 4, [4, 8, 16, 32])
    _perturb(cem, 0.1)
    feats = _pyramid(16, 244, 188, strides=[4, 8, 16, 32], batch=1)
    with torch.no_grad():
        out, _ = cem(feats, torch.zeros(1, 3, 244, 188))
        ctx = cem.context(feats)  # (1, 16, 8, 6) at P5's size
        for conv, i in zip(cem.inject, cem.levels):
            up = F.interpolate(ctx, size=feats[i].shape[-2:], mode="bilinear", align_corners=False)
            torch.testing.assert_close(out[i], feats[i] + conv(up), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "sizes",
    [
        [(61, 47)],
        [(61, 47), (29, 25)],
        [(61, 47), (30, 24), (17, 11), (5, 7)],  # arbitrary ratios: only interpolation to the target size works
    ],
)
def test_any_number_of_levels_and_sizes(sizes):
    feats = [torch.randn(1, 8, h, w) for h, w in sizes]
    strides = [4 * 2**i for i in range(len(sizes))]
    for neck in (CEM([8] * len(sizes), strides), FBSM([8] * len(sizes), strides)):
        _perturb(neck)
        out, _ = neck(feats, torch.zeros(1, 3, 244, 188))
        assert [o.shape for o in out] == [f.shape for f in feats]
        assert all(torch.isfinite(o).all() for o in out)
    assert CEM([8] * len(sizes), strides).levels == list(range(min(2, len(sizes))))
    assert FBSM([8] * len(sizes), strides).levels == list(range(min(3, len(sizes))))


def test_declared_levels_are_the_ones_changed():
    feats = _pyramid(16, 128, 96, strides=[4, 8, 16, 32])
    cem = CEM([16] * 4, [4, 8, 16, 32], levels=[1, 2], source_levels=[-1])
    fbsm = FBSM([16] * 4, [4, 8, 16, 32], levels=[3])
    assert cem.levels == [1, 2] and cem.source_levels == [3] and fbsm.levels == [3]
    _perturb(cem)
    _perturb(fbsm)
    with torch.no_grad():
        for neck, changed in ((cem, {1, 2}), (fbsm, {3})):
            out, _ = neck(feats, torch.zeros(2, 3, 128, 96))
            for i, (o, f) in enumerate(zip(out, feats)):
                assert torch.equal(o, f) != (i in changed), (type(neck).__name__, i)
    with pytest.raises(ValueError, match="levels"):
        CEM([16] * 4, [4, 8, 16, 32], levels=[4])
    with pytest.raises(ValueError, match="source_levels"):
        CEM([16] * 4, [4, 8, 16, 32], source_levels=[-5])
    with pytest.raises(ValueError, match="levels"):
        FBSM([16] * 4, [4, 8, 16, 32], levels=[])
    with pytest.raises(ValueError, match="prior"):
        FBSM([16] * 4, [4, 8, 16, 32], prior=0.0)


def test_fbsm_mask_is_a_broadcast_gate_in_zero_one():
    """§2.4.4: after perturbation 0 < M < 1, M has shape (B, 1, h, w), and out = in * (1 + M) channel-wise."""
    fbsm = FBSM([32] * 4, [4, 8, 16, 32], return_masks=True)
    _perturb(fbsm, 0.5)  # a large perturbation: the mask varies in space
    feats = _pyramid(32, 244, 188, strides=[4, 8, 16, 32])
    with torch.no_grad():
        out, aux = fbsm(feats, torch.zeros(2, 3, 244, 188))
    for i, stride in zip(fbsm.levels, (4, 8, 16)):
        mask = aux[f"fbsm_mask_s{stride}"]
        assert mask.shape == (2, 1, *feats[i].shape[-2:])
        assert (mask > 0).all() and (mask < 1).all() and mask.std() > 1e-3
        torch.testing.assert_close(out[i], feats[i] * (1 + mask))
    assert out[3] is feats[3]


# ------------------------------------------------------------------------------------------------- DCLoss
def _boxes(areas_side: list[float]) -> torch.Tensor:
    """Square boxes of the given sides, ``(N, 4)`` xyxy pixels."""
    sides = torch.tensor(areas_side, dtype=torch.float32)
    return torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], dim=1)


def test_size_bins_follow_aitod_edges():
    # areas 64 -> very tiny, 64.x -> tiny, 256 -> tiny, 1024 -> small, 1025 -> medium
    boxes = torch.tensor([[0, 0, 8, 8], [0, 0, 8, 8.01], [0, 0, 16, 16], [0, 0, 32, 32], [0, 0, 41, 25], [5, 5, 4, 4]])
    assert DCLoss().size_bins(boxes.float()).tolist() == [0, 1, 1, 2, 3, 0]


def test_dcloss_mean_one_and_fewer_positives_weigh_more():
    dc = DCLoss(alpha=0.5, momentum=0.0)
    boxes = _boxes([4.0] * 10 + [12.0] * 20)  # 10 very tiny, 20 tiny positives
    w = dc(boxes)
    assert w.shape == (30,) and not w.requires_grad
    assert w.mean().item() == pytest.approx(1.0, abs=1e-6)  # total loss scale preserved
    # masses 10, 20; mean 15 -> raw weights (1.5)^0.5 and (0.75)^0.5, then renormalised to mean 1
    raw = torch.tensor([1.5**0.5] * 10 + [0.75**0.5] * 20)
    torch.testing.assert_close(w, raw * 30 / raw.sum())
    assert w[0] > w[-1]
    # Equilibrium: at alpha=1 (no clipping) each present bin carries the same total weight.
    w1 = DCLoss(alpha=1.0, momentum=0.0)(boxes)
    assert w1[:10].sum().item() == pytest.approx(w1[10:].sum().item(), rel=1e-5)


def test_dcloss_halving_a_bins_mass_raises_its_relative_weight():
    dc = DCLoss(alpha=0.5)
    present = torch.ones(4, dtype=torch.bool)
    base = dc.bin_weights(torch.tensor([40.0, 40.0, 20.0, 10.0]), present)
    halved = dc.bin_weights(torch.tensor([20.0, 40.0, 20.0, 10.0]), present)
    assert halved[0] / halved[1] > base[0] / base[1]
    assert halved[0] / halved[3] > base[0] / base[3]
    # An empty bin is skipped: finite weights, zero for the empty bin, unaffected mean over the others.
    partial = dc.bin_weights(torch.tensor([0.0, 40.0, 20.0, 0.0]), torch.tensor([False, True, True, False]))
    assert torch.isfinite(partial).all() and partial[0] == 0 and partial[3] == 0
    torch.testing.assert_close(partial[1:3], torch.tensor([(30 / 40) ** 0.5, (30 / 20) ** 0.5]))
    # Clipping bounds the per-bin weight before renormalisation.
    clipped = dc.bin_weights(torch.tensor([1.0, 1000.0]), torch.ones(2, dtype=torch.bool))
    assert clipped.tolist() == pytest.approx([min((500.5 / 1.0) ** 0.5, 5.0), max((500.5 / 1000) ** 0.5, 0.5)])


def test_dcloss_ema_moves_in_training_only_and_is_saved():
    dc = DCLoss(alpha=0.5, momentum=0.9)
    dc(_boxes([4.0] * 10 + [12.0] * 20))
    torch.testing.assert_close(dc.count_ema, torch.tensor([10.0, 20.0, 0.0, 0.0]))  # first batch sets it
    dc(_boxes([4.0] * 20))
    torch.testing.assert_close(dc.count_ema, torch.tensor([11.0, 18.0, 0.0, 0.0]))
    dc.eval()
    w_eval = dc(_boxes([4.0] * 3 + [12.0] * 3))
    torch.testing.assert_close(dc.count_ema, torch.tensor([11.0, 18.0, 0.0, 0.0]))  # validation leaves it
    assert w_eval[0] > w_eval[-1]  # the running counts (11 vs 18) decide, not this batch's (3 vs 3)
    restored = DCLoss()
    restored.load_state_dict(dc.state_dict())
    assert torch.equal(restored.count_ema, dc.count_ema) and restored.num_updates.item() == 2


def test_dcloss_empty_input():
    w = DCLoss()(torch.zeros(0, 4))
    assert w.shape == (0,) and w.dtype == torch.float32


STRIDES = [4, 8, 16]


def _output(batch: int = 2, size: int = 64) -> DetectorOutput:
    def maps(c):
        return [torch.randn(batch, c, size // s, size // s, requires_grad=True) for s in STRIDES]

    return DetectorOutput(maps(3), maps(4), maps(1), STRIDES, (size, size))


def _targets() -> list[Target]:
    boxes = torch.tensor([[5.0, 5.0, 9.0, 8.0], [20.0, 20.0, 26.0, 30.0], [30.0, 2.0, 60.0, 30.0]])
    more_tiny = torch.tensor([[40.0, 40.0, 44.0, 45.0], [10.0, 40.0, 16.0, 46.0]])
    return [Target(boxes, torch.tensor([0, 1, 2])), Target(more_tiny, torch.tensor([1, 0]))]


def test_alpha_zero_is_the_plain_criterion_exactly():
    out = _output()
    plain = DetectionCriterion()(out, _targets())
    grads_plain = torch.autograd.grad(plain["loss"], out.cls_logits + out.box_deltas + out.quality_logits)
    weighted = DetectionCriterion(positive_weighting=DCLoss(alpha=0.0))(out, _targets())
    grads_weighted = torch.autograd.grad(weighted["loss"], out.cls_logits + out.box_deltas + out.quality_logits)
    for key in ("loss", "loss_cls", "loss_box", "loss_quality", "num_pos"):
        assert torch.equal(plain[key], weighted[key]), key
    for a, b in zip(grads_plain, grads_weighted):
        assert torch.equal(a, b)


def test_alpha_positive_reweights_positives_with_finite_gradients():
    out = _output()
    plain = DetectionCriterion()(out, _targets())
    crit = DetectionCriterion(positive_weighting=DCLoss(alpha=1.0))
    weighted = crit(out, _targets())
    assert weighted["num_pos"] == plain["num_pos"]
    assert not torch.allclose(weighted["loss_box"], plain["loss_box"])
    counts = crit.positive_weighting.count_ema
    assert counts.sum() == plain["num_pos"]  # every positive was binned
    assert counts[0] > counts[2] > 0, "fixture: more very-tiny positives than small ones"
    weighted["loss"].backward()
    for maps in (out.cls_logits, out.box_deltas, out.quality_logits):
        assert all(torch.isfinite(t.grad).all() for t in maps)
        assert sum(t.grad.abs().sum() for t in maps) > 0  # levels without positives get no box gradient


def test_no_positives_gives_finite_criterion():
    out = _output()
    empty = [Target(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)) for _ in range(2)]
    crit = DetectionCriterion(positive_weighting=DCLoss())
    result = crit(out, empty)
    assert result["num_pos"] == 0 and result["loss_box"].item() == 0.0
    assert torch.isfinite(result["loss"]) and result["loss_cls"] > 0
    assert crit.positive_weighting.num_updates.item() == 0  # no positives: nothing to count
    result["loss"].backward()
    assert torch.isfinite(out.cls_logits[0].grad).all()


# ---------------------------------------------------------------------------------------------------- CLI
def test_recipe_trains_through_cli_and_checkpoint_reloads(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit_tiny(tmp_path, "configs/model/efpn_bs.yaml", num_train=3)
    model = cli.model
    necks = model.detector.necks
    assert [type(n).__name__ for n in necks] == ["FPN", "CEM", "FBSM"]
    assert isinstance(model.criterion.positive_weighting, DCLoss)
    metrics = cli.trainer.callback_metrics
    assert torch.isfinite(metrics["train/loss"]) and "val/AP" in metrics and "val/AP_vt" in metrics
    assert cli.trainer.global_step == 1
    assert model.criterion.positive_weighting.num_updates.item() == 1  # the training batch; validation excluded
    assert any(conv.weight.abs().sum() > 0 for conv in necks[1].inject), "the injection learned from step one"

    ckpt = latest_checkpoint(cli)
    reloaded = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    original = model.eval()
    assert [type(n).__name__ for n in reloaded.detector.necks] == ["FPN", "CEM", "FBSM"]
    assert reloaded.detector.necks[2].levels == [0, 1, 2] and reloaded.detector.necks[1].source_levels == [1, 2]
    assert torch.equal(reloaded.criterion.positive_weighting.count_ema, model.criterion.positive_weighting.count_ema)
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = original(x), reloaded(x)
    for u, v in zip(a.cls_logits + a.box_deltas + a.quality_logits, b.cls_logits + b.box_deltas + b.quality_logits):
        assert torch.equal(u, v)
