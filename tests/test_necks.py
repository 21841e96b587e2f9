"""The neck contract: every class in ``tod_lightning.models.necks.__all__`` joins automatically."""

import math

import pytest
import torch

from tod_lightning.models import necks

# Contract inputs look like an FPN's output (equal channels), which is what enhancers after the FPN see;
# the FPN itself takes them too. Backbone-like unequal channels are tested on the FPN below.
IN_CHANNELS = [32, 32, 32, 32]
BACKBONE_CHANNELS = [24, 40, 112, 320]
BACKBONE_STRIDES = [4, 8, 16, 32]


def _backbone_features(batch: int, h: int, w: int, channels: list[int] = BACKBONE_CHANNELS) -> list[torch.Tensor]:
    return [torch.randn(batch, c, math.ceil(h / s), math.ceil(w / s)) for c, s in zip(channels, BACKBONE_STRIDES)]


def _build(name: str):
    return getattr(necks, name)(IN_CHANNELS, BACKBONE_STRIDES)


@pytest.mark.parametrize("name", necks.__all__)
@pytest.mark.parametrize("batch,h,w", [(2, 128, 96), (1, 244, 188)])  # 244x188 gives a 61x47 P2 map
def test_declared_shapes(name, batch, h, w):
    neck = _build(name).eval()
    with torch.no_grad():
        out, aux = neck(_backbone_features(batch, h, w, IN_CHANNELS), torch.rand(batch, 3, h, w))
    assert isinstance(aux, dict)
    assert len(out) == len(neck.out_channels) == len(neck.out_strides)
    for feat, c, s in zip(out, neck.out_channels, neck.out_strides):
        assert feat.shape == (batch, c, math.ceil(h / s), math.ceil(w / s)), (name, s)
        assert torch.isfinite(feat).all()


@pytest.mark.parametrize("name", necks.__all__)
def test_empty_image_and_finite_gradients(name):
    neck = _build(name)
    # Identity-initialised enhancers have zero gradients at init for some weights; perturb first.
    with torch.no_grad():
        for p in neck.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    h, w = 64, 96
    images01 = torch.zeros(1, 3, h, w)  # an empty (all-black) image must not produce NaN
    out, aux = neck(_backbone_features(1, h, w, IN_CHANNELS), images01)
    loss = sum(o.square().mean() for o in out) + sum(a.float().square().mean() for a in aux.values())
    loss.backward()
    for pname, p in neck.named_parameters():
        if pname in neck.gradient_free_parameters:
            continue
        assert p.grad is not None, f"{name}.{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}.{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}.{pname} has an all-zero gradient"


def test_fpn_levels_p2_to_p7():
    fpn = necks.FPN(BACKBONE_CHANNELS, BACKBONE_STRIDES, out_channels=32, min_level=2, max_level=7)
    assert fpn.out_strides == [4, 8, 16, 32, 64, 128]
    out, _ = fpn(_backbone_features(1, 256, 256), torch.rand(1, 3, 256, 256))
    assert [o.shape[-1] for o in out] == [64, 32, 16, 8, 4, 2]
    fpn3 = necks.FPN(BACKBONE_CHANNELS, BACKBONE_STRIDES, out_channels=32, min_level=3, max_level=5)
    assert fpn3.out_strides == [8, 16, 32]


def test_fpn_rejects_missing_p2_input():
    with pytest.raises(ValueError, match="stride 4"):
        necks.FPN([128, 256, 512], [8, 16, 32], min_level=2)
    with pytest.raises(ValueError, match="min_level"):
        necks.FPN(BACKBONE_CHANNELS, BACKBONE_STRIDES, min_level=1)


def test_fpn_top_down_path_reaches_p2():
    """P2 must depend on C5 (the top-down path), or the finest level sees no context."""
    fpn = necks.FPN(BACKBONE_CHANNELS, BACKBONE_STRIDES, out_channels=16, max_level=5)
    feats = _backbone_features(1, 64, 64)
    feats[-1].requires_grad_(True)
    out, _ = fpn(feats, torch.rand(1, 3, 64, 64))
    out[0].sum().backward()
    assert feats[-1].grad.abs().sum() > 0
