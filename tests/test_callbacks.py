"""Callbacks that do not need a full run: image panels for W&B, COCO prediction records."""

import torch

from tod_lightning.callbacks import image_panels


def test_image_panels_take_image_sized_aux_maps_only():
    images01 = torch.rand(2, 3, 32, 48)
    aux = {
        "recon": torch.rand(2, 3, 32, 48),
        "diff": torch.full((2, 1, 32, 48), 0.02),  # faint: stretched to full range
        "features": torch.rand(2, 16, 8, 12),  # not image-shaped: skipped
        "scalar": torch.tensor(1.0),
    }
    panels = image_panels(images01, aux)
    assert set(panels) == {"image", "recon", "diff"}
    assert len(panels["image"]) == 2 and panels["image"][0].shape == (32, 48, 3)
    assert panels["image"][0].dtype.name == "uint8"
    assert panels["diff"][0].max() == 255 and panels["diff"][0].shape == (32, 48, 3)
    expected = (images01[1].permute(1, 2, 0) * 255).round().byte().numpy()
    assert (panels["image"][1] == expected).all()
