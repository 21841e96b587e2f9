"""Callbacks that do not need a full run: image panels and zoomed crops for W&B, the run id in checkpoints."""

import contextlib
from types import SimpleNamespace

import numpy as np
import torch

from tod_lightning.callbacks import (
    WANDB_RUN_ID_KEY,
    ValidationImageLogger,
    WandbRunId,
    boxes_in_window,
    crop_windows,
    densest_first,
    image_panels,
    pad_to_common_size,
    read_wandb_run_id,
    smallest_first,
    zoom_nearest,
)
from tod_lightning.structures import Batch, Detections, DetectorOutput, Target


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


# ------------------------------------------------------------------------------------ zoomed crops
def test_crop_windows_follow_the_given_order_stay_inside_and_skip_covered_boxes():
    boxes = torch.tensor(
        [
            [10.0, 10.0, 14.0, 14.0],  # near the top-left corner: the window is shifted inside the image
            [12.0, 20.0, 15.0, 23.0],  # inside the first window: no window of its own
            [80.0, 80.0, 84.0, 84.0],  # near the bottom-right corner
            [40.0, 30.0, 60.0, 45.0],  # longest side 20 px: window 40 px
        ]
    )
    assert crop_windows(boxes, (96, 96), 3, 32) == [(0, 0, 32, 32), (64, 64, 96, 96), (30, 18, 70, 58)]
    assert crop_windows(boxes, (96, 96), 1, 32) == [(0, 0, 32, 32)]
    assert crop_windows(boxes, (96, 96), 0, 32) == []
    # an image smaller than a window: the window is the image along that axis
    assert crop_windows(torch.tensor([[5.0, 2.0, 9.0, 6.0]]), (20, 96), 2, 32) == [(0, 0, 32, 20)]
    assert crop_windows(torch.zeros(0, 4), (96, 96), 2, 32) == []


def test_smallest_first_and_densest_first_orders():
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [50.0, 50.0, 53.0, 53.0], [0.0, 0.0, 3.0, 3.0], [60.0, 0.0, 63.0, 3.0]])
    assert smallest_first(boxes).tolist() == [
        boxes[1].tolist(),
        boxes[2].tolist(),
        boxes[3].tolist(),
        boxes[0].tolist(),
    ]
    group = torch.tensor(
        [[0.0, 0.0, 2.0, 2.0], [70.0, 70.0, 72.0, 72.0], [71.0, 75.0, 73.0, 77.0], [75.0, 70.0, 77.0, 72.0]]
    )
    assert densest_first(group, 16).tolist()[0] == [70.0, 70.0, 72.0, 72.0]  # 3 centres within 8 px
    assert densest_first(group, 16).tolist()[-1] == [0.0, 0.0, 2.0, 2.0]


def test_boxes_in_window_clip_shift_and_scale():
    boxes = torch.tensor([[10.0, 10.0, 14.0, 13.0], [30.0, 5.0, 40.0, 9.0], [50.0, 50.0, 60.0, 60.0]])
    index, mapped = boxes_in_window(boxes, (8, 4, 40, 36), 8)
    assert index.tolist() == [0, 1]  # the third lies outside
    assert mapped.tolist() == [[16.0, 48.0, 48.0, 72.0], [176.0, 8.0, 256.0, 40.0]]
    index, mapped = boxes_in_window(boxes, (14, 0, 30, 16), 2)  # touching an edge is no overlap
    assert index.tolist() == [] and mapped.shape == (0, 4)


def test_zoom_nearest_makes_exact_blocks():
    frame = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    big = zoom_nearest(frame, 4)
    assert big.shape == (8, 12, 3)
    assert (big[4:8, 8:12] == frame[1, 2]).all() and (big[0:4, 0:4] == frame[0, 0]).all()


def test_pad_to_common_size_keeps_pixels_at_their_place():
    frames = [np.full((2, 3, 3), 7, np.uint8), np.full((4, 1, 3), 9, np.uint8)]
    padded = pad_to_common_size(frames)
    assert [f.shape for f in padded] == [(4, 3, 3), (4, 3, 3)]
    assert (padded[0][:2] == 7).all() and (padded[0][2:] == 0).all()
    assert (padded[1][:, :1] == 9).all() and (padded[1][:, 1:] == 0).all()


def test_render_logs_every_list_at_one_size():
    """Images of different sizes and crops of different zooms: W&B shows a list at its first image's size (and
    warns "Images sizes do not match" when it logs one), so each list comes out at one size, boxes in place."""
    images = torch.randint(0, 255, (2, 3, 48, 64), dtype=torch.uint8)
    targets = [
        Target(boxes_xyxy=torch.tensor([[4.0, 4.0, 9.0, 9.0], [30.0, 20.0, 33.0, 22.0]]), labels=torch.tensor([1, 0])),
        Target(boxes_xyxy=torch.tensor([[2.0, 3.0, 30.0, 36.0]]), labels=torch.tensor([1])),  # a big box: wider crop
    ]
    batch = Batch(images=images, targets=targets, image_sizes=torch.tensor([[48, 64], [40, 50]]))
    aux = {"recon": images.float() / 255}
    logged = ValidationImageLogger(min_score=0.0).render(batch, 2, _dets(2), aux, ["a", "b"])
    for key in ("val/images/image", "val/images/crops", "val/images/recon"):
        assert len({img.image.size for img in logged[key]}) == 1, key
    assert logged["val/images/image"][1].image.size == (64, 48)  # (w, h) of the larger image
    assert len(logged["val/images/crops"]) == 3  # two windows on the first image, one on the second
    box = logged["val/images/image"][1]._boxes["ground_truth"]._val[0]["position"]
    assert box == {"minX": 2.0, "minY": 3.0, "maxX": 30.0, "maxY": 36.0}  # padding at the bottom/right: unmoved


# ------------------------------------------------------------------------- where the boxes come from
class _Precision:
    def val_step_context(self):
        return contextlib.nullcontext()


_TRAINER = SimpleNamespace(strategy=SimpleNamespace(precision_plugin=_Precision()))


def _batch(n=3, size=32):
    targets = [Target(boxes_xyxy=torch.tensor([[4.0, 4.0, 9.0, 9.0]]), labels=torch.tensor([1])) for _ in range(n)]
    images = torch.randint(0, 255, (n, 3, size, size), dtype=torch.uint8)
    return Batch(images=images, targets=targets, image_sizes=torch.tensor([[size, size]] * n))


class _CountingDetector(torch.nn.Module):
    def __init__(self, maps: bool):
        super().__init__()
        self.maps, self.calls = maps, []

    def forward(self, images01):
        self.calls.append(len(images01))
        aux = {"recon": images01.clone()} if self.maps else {"features": torch.zeros(len(images01), 8, 4, 4)}
        return DetectorOutput([], [], [], [4], tuple(images01.shape[-2:]), aux)


def _dets(n):
    return [Detections(torch.tensor([[1.0, 1.0, 5.0, 5.0]]), torch.tensor([0.9]), torch.tensor([0])) for _ in range(n)]


def test_detections_exposed_by_the_task_are_used_without_running_the_detector():
    detector = _CountingDetector(maps=True)
    exposed = _dets(3)
    module = SimpleNamespace(detector=detector, last_eval_detections=exposed, last_eval_aux={"x": torch.zeros(3)})
    dets, aux = ValidationImageLogger().detections_and_maps(_TRAINER, module, _batch(3), 2)
    assert dets == exposed[:2] and set(aux) == {"x"} and detector.calls == []

    module.last_eval_aux = None  # e.g. sliced inference: boxes exposed, maps from whole-image passes
    dets, aux = ValidationImageLogger().detections_and_maps(_TRAINER, module, _batch(3), 2)
    assert dets == exposed[:2] and aux["recon"].shape == (2, 3, 32, 32) and detector.calls == [1, 1]

    stale = SimpleNamespace(
        detector=_CountingDetector(maps=False),
        last_eval_detections=_dets(5),  # another batch's: not used
        postprocess=lambda out, sizes: _dets(len(sizes)),
        inference=None,
    )
    dets, aux = ValidationImageLogger().detections_and_maps(_TRAINER, stale, _batch(3), 2)
    assert len(dets) == 2 and stale.detector.calls == [2] and set(aux) == {"features"}


def test_without_exposed_detections_one_whole_image_pass_gives_boxes_and_maps():
    detector = _CountingDetector(maps=True)
    module = SimpleNamespace(detector=detector, postprocess=lambda out, sizes: _dets(len(sizes)), inference=None)
    dets, aux = ValidationImageLogger().detections_and_maps(_TRAINER, module, _batch(3), 2)
    assert len(dets) == 2 and detector.calls == [2] and aux["recon"].shape == (2, 3, 32, 32)


def test_sliced_inference_draws_its_own_boxes_and_looks_for_maps_one_image_at_a_time():
    seen = []

    def inference(detector, postprocess, images01, image_sizes):
        seen.append(len(images01))
        return _dets(len(images01))

    for maps, calls in ((True, [1, 1, 1]), (False, [1])):  # no image-like maps: stop after the first image
        detector = _CountingDetector(maps=maps)
        module = SimpleNamespace(detector=detector, postprocess=None, inference=inference)
        dets, aux = ValidationImageLogger().detections_and_maps(_TRAINER, module, _batch(3), 3)
        assert len(dets) == 3 and detector.calls == calls
        assert (aux["recon"].shape == (3, 3, 32, 32)) if maps else aux == {}
    assert seen == [3, 3]


# ---------------------------------------------------------------------------------- the W&B run id
def test_run_id_is_stored_in_checkpoints_and_read_back(tmp_path):
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    checkpoint = {}
    trainer = SimpleNamespace(loggers=[CSVLogger(tmp_path), WandbLogger(id="run42", save_dir=str(tmp_path))])
    WandbRunId().on_save_checkpoint(trainer, None, checkpoint)
    assert checkpoint == {WANDB_RUN_ID_KEY: "run42"}
    torch.save({**checkpoint, "state_dict": {"w": torch.zeros(3)}}, tmp_path / "a.ckpt")
    assert read_wandb_run_id(tmp_path / "a.ckpt") == "run42"

    checkpoint = {}
    WandbRunId().on_save_checkpoint(SimpleNamespace(loggers=[CSVLogger(tmp_path)]), None, checkpoint)
    assert checkpoint == {}  # no W&B logger, nothing stored
    torch.save(checkpoint, tmp_path / "b.ckpt")
    assert read_wandb_run_id(tmp_path / "b.ckpt") is None
    assert read_wandb_run_id(tmp_path / "missing.ckpt") is None
