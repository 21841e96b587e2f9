"""IPG-Net image-pyramid guidance (methods.md §4.4): identity at init, shapes, pyramid sizes, propagation into the
next stage through timm forward hooks, gradients, batch independence, copies, and the CLI recipe with reload."""

import copy
import pickle

import pytest
import torch
from tiny_cli import fit_tiny, latest_checkpoint

from tod_lightning.models import IPGBackbone, TimmBackbone
from tod_lightning.task import DetectionTask

# Small members of each family keep the test fast; a 1-block Swin still has NHWC stage outputs.
CATALOGUE = {
    "resnet": ("resnet18", {}),
    "convnext": ("convnext_atto", {}),
    "efficientnet": ("efficientnet_b0", {}),
    "swin": (
        "swin_tiny_patch4_window7_224",
        {"strict_img_size": False, "embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)},
    ),
}
H, W = 96, 64  # multiples of 32, not square (H != W keeps NCHW and NHWC shapes distinct)


def _pair(family: str, **settings) -> tuple[TimmBackbone, IPGBackbone]:
    """A plain backbone and an IPG wrapper around an exact copy of it (same weights), both in eval mode."""
    name, kwargs = CATALOGUE[family]
    plain = TimmBackbone(name, out_strides=(4, 8, 16, 32), model_kwargs=kwargs).eval()
    return plain, IPGBackbone(copy.deepcopy(plain), **settings).eval()


def _perturb(module: torch.nn.Module, std: float = 0.1) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)


@pytest.mark.parametrize("family", list(CATALOGUE))
def test_identity_at_init_shapes_and_propagation(family):
    plain, ipg = _pair(family)
    assert ipg.out_channels == plain.out_channels and ipg.out_strides == plain.out_strides == [4, 8, 16, 32]
    assert ipg.mean == plain.mean and ipg.std == plain.std
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        base, guided = plain(x), ipg(x)
    for b, g, c, s in zip(base, guided, ipg.out_channels, ipg.out_strides):
        assert g.shape == b.shape == (2, c, H // s, W // s)
        assert torch.equal(g, b), f"{family}: not the plain backbone at init (stride {s})"
    # Perturb only the stride-4 guidance: that level changes, and through the next stages' inputs every
    # deeper level too (the hook's output is what the next stage consumes).
    _perturb(ipg.guidance[0])
    with torch.no_grad():
        changed = ipg(x)
    for b, g, s in zip(base, changed, ipg.out_strides):
        assert (g - b).abs().max() > 1e-4, f"{family}: stride {s} did not change after perturbing stride-4 guidance"


def test_without_propagation_only_the_fused_level_changes():
    _, ipg = _pair("resnet", propagate=False)
    plain = ipg.backbone
    x = torch.randn(1, 3, H, W)
    with torch.no_grad():
        base = plain(x)
        assert all(torch.equal(b, g) for b, g in zip(base, ipg(x)))
        _perturb(ipg.guidance[0])
        changed = ipg(x)
    assert (changed[0] - base[0]).abs().max() > 1e-4
    assert all(torch.equal(b, g) for b, g in zip(base[1:], changed[1:])), "propagate=False must not feed stage 2"


def test_concat_fusion_is_identity_at_init_and_propagates():
    plain, ipg = _pair("resnet", fusion="concat")
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        assert all(torch.equal(b, g) for b, g in zip(plain(x), ipg(x)))
        ipg.guidance[0].mix.weight[:, ipg.out_channels[0] :] += 0.05  # open the guidance half of [I | 0]
        changed = ipg(x)
    assert all((g - b).abs().max() > 1e-4 for b, g in zip(plain(x), changed))


@pytest.mark.parametrize("family", ["resnet", "swin"])
def test_pyramid_image_has_the_stage_size_and_hooks_see_the_native_layout(family):
    _, ipg = _pair(family)
    seen = []
    for guidance in ipg.guidance:
        guidance.register_forward_hook(lambda m, inputs, out: seen.append((inputs[0].shape, inputs[1].shape)))
    layouts = []
    for name in ipg.feature_module_names:
        module = ipg.backbone.model.get_submodule(name)
        module.register_forward_hook(lambda m, inputs, out: layouts.append(tuple(out.shape)), prepend=True)
    with torch.no_grad():
        features = ipg(torch.randn(1, 3, H, W))
    assert len(seen) == 4
    for (x_shape, image_shape), feat in zip(seen, features):
        assert image_shape[1] == 3 and image_shape[-2:] == x_shape[-2:] == feat.shape[-2:]
    expected = [
        (1, h, w, c) if family == "swin" else (1, c, h, w)
        for c, h, w in ((f.shape[1], f.shape[2], f.shape[3]) for f in features)
    ]
    assert layouts == expected  # Swin's stages are NHWC: fused in NCHW, handed on in NHWC


def test_gradients_reach_every_guidance_parameter_after_one_step():
    _, ipg = _pair("resnet")
    ipg.train()
    x = torch.randn(2, 3, 64, 64)
    loss = sum(f.square().mean() for f in ipg(x))
    loss.backward()
    # At init (BN_0 γ = 0) only the last BN's affine parameters learn; one step opens the rest.
    last_bn = {f"{j}.transform.2.1.{p}" for j in range(4) for p in ("weight", "bias")}
    for name, p in ipg.guidance.named_parameters():
        assert p.grad is not None
        assert (p.grad.abs().sum() > 0) == (name in last_bn), name
    with torch.no_grad():
        for p in ipg.guidance.parameters():
            p -= 0.1 * p.grad
    ipg.zero_grad()
    sum(f.square().mean() for f in ipg(x)).backward()
    for name, p in ipg.guidance.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_batch_of_two_equals_two_batches_of_one():
    _, ipg = _pair("convnext")
    _perturb(ipg.guidance, std=0.05)
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        both = ipg(x)
        singles = [ipg(x[i : i + 1]) for i in range(2)]
    for level, feat in enumerate(both):
        torch.testing.assert_close(feat, torch.cat([s[level] for s in singles]), atol=1e-5, rtol=1e-5)


def test_copies_keep_their_own_hooks():
    _, ipg = _pair("resnet")
    _perturb(ipg.guidance, std=0.05)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        reference = ipg(x)
        for clone in (copy.deepcopy(ipg), pickle.loads(pickle.dumps(ipg))):
            assert all(torch.equal(a, b) for a, b in zip(reference, clone(x)))
            _perturb(clone.guidance[0])  # the clone's hooks use the clone's guidance, not the original's
            assert not torch.equal(clone(x)[1], reference[1])
            assert all(torch.equal(a, b) for a, b in zip(reference, ipg(x)))
        # The inner backbone called on its own runs unguided.
        assert not torch.equal(ipg.backbone(x)[1], reference[1])


def test_guided_strides_and_errors():
    _, ipg = _pair("resnet", guided_strides=[8, 16])
    assert ipg.guided_levels == [1, 2] and len(ipg.guidance) == 2
    assert ipg.feature_module_names == ["layer2", "layer3"]
    with pytest.raises(ValueError, match="guided_strides"):
        IPGBackbone(TimmBackbone("resnet18"), guided_strides=[64])
    with pytest.raises(ValueError, match="fusion"):
        IPGBackbone(TimmBackbone("resnet18"), fusion="max")


def test_parameter_count_matches_the_spec_formula():
    _, ipg = _pair("resnet")
    hidden = 64
    # conv3x3 3->64 + BN, conv3x3 64->64 + BN, conv1x1 64->C + BN (convs without bias: a BN follows)
    per_level = [
        (3 * 9 * hidden + 2 * hidden) + (hidden * 9 * hidden + 2 * hidden) + (hidden * c + 2 * c)
        for c in ipg.out_channels
    ]
    assert sum(p.numel() for p in ipg.guidance.parameters()) == sum(per_level)


def test_cli_recipe_trains_and_reloads_with_hooks(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = fit_tiny(tmp_path, "configs/model/ipg.yaml", image_size=64, num_train=4, num_val=2, batch_size=2)
    metrics = cli.trainer.callback_metrics
    assert cli.trainer.global_step == 2
    assert torch.isfinite(metrics["train/loss"]) and "val/AP" in metrics
    backbone = cli.model.detector.backbone
    assert isinstance(backbone, IPGBackbone)
    assert backbone.guidance[0].transform[-1][1].weight.abs().sum() > 0, "training moved the zero-initialised γ"
    ckpt = latest_checkpoint(cli)
    reloaded = DetectionTask.load_from_checkpoint(ckpt, map_location="cpu").eval()
    original = cli.model.eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        a, b = original(x), reloaded(x)
        for u, v in zip(a.cls_logits + a.box_deltas + a.quality_logits, b.cls_logits + b.box_deltas + b.quality_logits):
            assert torch.equal(u, v)
        # The reloaded model is guided (its hooks were registered in __init__): not its inner backbone alone.
        bb = reloaded.detector.backbone
        x_norm = (x - reloaded.detector.pixel_mean) / reloaded.detector.pixel_std
        assert not torch.equal(bb(x_norm)[0], bb.backbone(x_norm)[0])
