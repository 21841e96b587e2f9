"""Backbone contract: any hierarchical timm model; channels and strides come from feature_info."""

import pytest
import torch

from tod_lightning.models import TimmBackbone

CATALOGUE = [
    ("resnet18", {}),
    ("convnext_atto", {}),
    ("efficientnet_b0", {}),
    ("swin_tiny_patch4_window7_224", {"strict_img_size": False}),
]


@pytest.mark.parametrize("name,kwargs", CATALOGUE)
def test_declared_channels_and_strides_match_outputs(name, kwargs):
    backbone = TimmBackbone(name, pretrained=False, out_strides=(4, 8, 16, 32), model_kwargs=kwargs).eval()
    h, w = 224, 160  # Swin's window of 7 needs H/32 and W/32 to divide into its windows when padded; timm pads
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, h, w))
    assert backbone.out_strides == [4, 8, 16, 32]
    assert len(features) == 4
    for feat, c, s in zip(features, backbone.out_channels, backbone.out_strides):
        assert feat.shape == (1, c, h // s, w // s)
    assert len(backbone.mean) == 3 and len(backbone.std) == 3


def test_subset_of_strides():
    backbone = TimmBackbone("resnet18", out_strides=(8, 16, 32))
    feats = backbone(torch.rand(2, 3, 64, 96))
    assert [f.shape[1] for f in feats] == backbone.out_channels == [128, 256, 512]


def test_model_without_needed_strides_is_rejected_clearly():
    with pytest.raises(ValueError, match=r"feature strides \[16, 16, 16\].*missing"):
        TimmBackbone("vit_tiny_patch16_224", out_strides=(4, 8, 16, 32))
