"""The embedded synthetic dataset: seeded aerial-like scenes of tiny objects, written as plain COCO.

Nothing is downloaded. ``ensure_synthetic_dataset`` renders a ``SyntheticSpec`` once into
``<root>/synthetic-<fingerprint>/`` (PNG images + one COCO json per split) and is safe to call from
many processes at once (DDP ranks, dataloader workers): one generates, the others wait and reuse it.

A scene is a textured, cluttered background (multi-octave noise in earthy tones, fields, roads,
roofs, trees, low-saturation blobs and specks) with tiny objects composited on top. Every class has
its own shape AND its own hue/brightness family, because at 2-4 px only the colour survives.
Torch, Lightning and W&B are not imported here.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from tod_lightning.data.splits import CocoSplit

logger = logging.getLogger(__name__)

GENERATOR_VERSION = "1"  # bump whenever the rendered pixels or annotations change: it renames the cache
SPLITS = ("train", "val", "test")
DONE_MARKER = "DONE"
CLASS_NAMES = ("vehicle", "person", "drone", "ship", "airplane")
# Per class: base RGB (a distinct hue/brightness family) and the (min, max) long/short side ratio.
_CLASS_RGB = ((225, 40, 35), (245, 215, 40), (40, 165, 250), (238, 238, 232), (170, 80, 235))
_CLASS_ASPECT = ((1.6, 2.1), (1.0, 1.3), (1.0, 1.15), (2.5, 3.8), (1.0, 1.25))
# Area bins (px²) of ``SyntheticSpec.size_mix``, (low, high]; the first bin starts at a 2.5 px side.
AREA_BINS = ((6.25, 64.0), (64.0, 256.0), (256.0, 1024.0), (1024.0, 2304.0))
# Background tones (RGB): grass, dry grass, soil, sand, concrete, dark vegetation, dark soil.
_GROUND_RGB = np.array(
    [(92, 112, 64), (122, 128, 80), (128, 108, 82), (150, 140, 110), (112, 112, 106), (70, 88, 56), (104, 96, 88)],
    np.float32,
)
DENSE_LARGE_DAMPING = 0.15  # weight of the two large size bins in dense scenes: crowds are made of small things
_BACKGROUND_MAX = 190.0  # keep clutter darker than the white/bright classes so it never mimics them


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Equal specs give the same folder and, with the same numpy/OpenCV, identical bytes.

    Attributes:
        image_size: side of the square images, px; or ``(height, width)`` px for other frames (large
            scenes such as ``(1500, 2000)`` for tiled training).
        num_train: images in the ``train`` split.
        num_val: images in the ``val`` split.
        num_test: images in the ``test`` split (0: the split is not written).
        seed: master seed (>= 0); each split draws from ``(seed, split)``, so resizing one split
            leaves the others unchanged.
        num_classes: how many of ``CLASS_NAMES`` to use (1..5); category ids are ``1..num_classes``.
        size_mix: fraction of objects per area bin, px²: [6.25, 64], (64, 256], (256, 1024],
            (1024, 2304]; normalised to sum 1. Box sides are integers >= 2 px.
        empty_fraction: fraction of images with no object.
        dense_fraction: fraction of dense images, with ``dense_min``..``dense_max`` objects requested
            (a few are dropped when no free spot is found). Their two large size bins are weighted by
            ``DENSE_LARGE_DAMPING``, so the measured mix is smaller than ``size_mix``.
        dense_min: fewest objects requested in a dense image.
        dense_max: most objects requested in a dense image.
        max_objects: most objects in the other images (1..max_objects, skewed towards few).
        density_side: if set, ``max_objects``, ``dense_min`` and ``dense_max`` count objects per
            ``density_side`` x ``density_side`` px of frame: an H x W image requests ``H * W / density_side**2``
            times as many (rounded), so object density does not depend on the frame size (a 2000 x 1500
            scene with ``density_side=256`` holds ~46x the objects of a 256 x 256 one). ``None``: they
            count objects per image, whatever its size.
    """

    image_size: int | tuple[int, int] = 256
    num_train: int = 400
    num_val: int = 60
    num_test: int = 0
    seed: int = 0
    num_classes: int = 4
    size_mix: tuple[float, float, float, float] = (0.35, 0.45, 0.15, 0.05)
    empty_fraction: float = 0.08
    dense_fraction: float = 0.1
    dense_min: int = 150
    dense_max: int = 300
    max_objects: int = 40
    density_side: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "size_mix", tuple(float(f) for f in self.size_mix))  # configs give lists
        if not isinstance(self.image_size, int):
            if len(self.image_size) != 2:
                raise ValueError(f"image_size must be a side or (height, width), got {self.image_size}")
            object.__setattr__(self, "image_size", tuple(int(v) for v in self.image_size))
        if not 1 <= self.num_classes <= len(CLASS_NAMES):
            raise ValueError(f"num_classes must be in 1..{len(CLASS_NAMES)}, got {self.num_classes}")
        if len(self.size_mix) != len(AREA_BINS) or min(self.size_mix) < 0 or sum(self.size_mix) <= 0:
            raise ValueError(f"size_mix needs {len(AREA_BINS)} non-negative fractions, got {self.size_mix}")
        if self.empty_fraction < 0 or self.dense_fraction < 0 or self.empty_fraction + self.dense_fraction > 1:
            raise ValueError("empty_fraction and dense_fraction must be >= 0 and sum to <= 1")
        if min(self.frame_hw) < 32 or self.seed < 0 or min(self.num_train, self.num_val, self.num_test) < 0:
            raise ValueError("need image_size >= 32, seed >= 0 and non-negative split sizes")
        if self.max_objects < 1 or not 1 <= self.dense_min <= self.dense_max:
            raise ValueError("need max_objects >= 1 and 1 <= dense_min <= dense_max")
        if self.density_side is not None and self.density_side < 1:
            raise ValueError(f"density_side must be >= 1 px or None, got {self.density_side}")

    @property
    def frame_hw(self) -> tuple[int, int]:
        """``(height, width)`` of the generated images, px."""
        if isinstance(self.image_size, int):
            return self.image_size, self.image_size
        return self.image_size

    @property
    def count_area(self) -> int:
        """Area (px²) that ``max_objects``/``dense_min``/``dense_max`` count objects in (see ``density_side``)."""
        if self.density_side is not None:
            return self.density_side**2
        height, width = self.frame_hw
        return height * width

    def as_dict(self) -> dict:
        """The fields as plain JSON values, leaving out the fields added after version 1 while they have their
        default: specs written before those fields existed keep their fingerprint (so their cache folder) and
        their annotation files byte for byte."""
        out = asdict(self)
        for name in _ADDED_FIELDS:
            if out[name] == _DEFAULTS[name]:
                del out[name]
        return out

    def fingerprint(self) -> str:
        """Stable 10-hex-digit hash of every field (see :meth:`as_dict`) and ``GENERATOR_VERSION`` (names the
        cache folder)."""
        payload = json.dumps({"version": GENERATOR_VERSION, **self.as_dict()}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:10]


_ADDED_FIELDS = ("density_side",)  # fields added after GENERATOR_VERSION 1 (see SyntheticSpec.as_dict)
_DEFAULTS = {f.name: f.default for f in fields(SyntheticSpec)}


# ----------------------------------------------------------------------------------------- background
def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: tuple[int, ...]) -> np.ndarray:
    """Multi-octave value noise in [0, 1], float32 (h, w); ``cells`` are feature sizes in px, coarse first."""
    out, total = np.zeros((h, w), np.float32), 0.0
    for octave, cell in enumerate(cells):
        gh, gw = h // cell + 2, w // cell + 2
        grid = rng.random((gh, gw), dtype=np.float32)
        weight = 0.55**octave
        out += weight * cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)[:h, :w]
        total += weight
    return np.clip(out / total, 0.0, 1.0)


def _dull(rgb: np.ndarray, saturation: float) -> np.ndarray:
    """Pull colours towards their grey level (``saturation`` 0: grey, 1: unchanged)."""
    grey = rgb.mean(axis=-1, keepdims=True)
    return grey + saturation * (rgb - grey)


def _c(rgb) -> tuple[float, ...]:
    """A colour as the plain float tuple cv2's drawing functions accept."""
    return tuple(float(v) for v in rgb)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Textured cluttered ground, float32 (h, w, 3) RGB in [0, ``_BACKGROUND_MAX``]."""
    per_256 = h * w / 256**2  # clutter counts scale with the area
    tones = _GROUND_RGB[rng.choice(len(_GROUND_RGB), 3, replace=False)]
    t = _smooth_noise(rng, h, w, (128, 64, 32))[..., None] * 2.0  # piecewise blend of 3 tones
    img = np.where(t < 1.0, tones[0] + t * (tones[1] - tones[0]), tones[1] + (t - 1.0) * (tones[2] - tones[1]))
    img *= (0.82 + 0.36 * _smooth_noise(rng, h, w, (16, 8, 4, 2)))[..., None]  # fine grain
    # Fields: rotated rectangles of another tone with crop-row stripes.
    for _ in range(rng.poisson(2.5 * per_256)):
        centre, size = rng.uniform((0, 0), (w, h)), rng.uniform(30, 130, 2)
        poly = cv2.boxPoints((tuple(centre), tuple(size), float(rng.uniform(0, 180)))).astype(np.int32)
        x0, y0 = np.clip(poly.min(0), 0, (w, h))
        x1, y1 = np.clip(poly.max(0) + 1, 0, (w, h))
        if x1 <= x0 or y1 <= y0:
            continue
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(mask, [poly - (x0, y0)], 1.0)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 9)
        rows = 1.0 + 0.1 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        tone = _GROUND_RGB[rng.integers(len(_GROUND_RGB))] * rng.uniform(0.85, 1.15)
        alpha = (mask * rng.uniform(0.5, 0.85))[..., None]
        roi = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = roi * (1 - alpha) + alpha * (tone * rows[..., None]) * (roi / roi.mean((0, 1)))
    # Roads: border-to-border polylines, asphalt or dirt, with darker verges.
    for _ in range(rng.poisson(1.0 * np.sqrt(per_256))):
        pts = rng.uniform((0, 0), (w, h), (3, 2))
        pts[0] = (0, pts[0, 1]) if rng.random() < 0.5 else (pts[0, 0], 0)
        pts[2] = (w - 1, pts[2, 1]) if rng.random() < 0.5 else (pts[2, 0], h - 1)
        pts = pts.astype(np.int32).reshape(-1, 1, 2)
        width = int(rng.integers(4, 11))
        road = np.full(3, rng.uniform(85, 115)) if rng.random() < 0.6 else np.array([145.0, 128.0, 100.0])
        cv2.polylines(img, [pts], False, _c(0.75 * road), width + 2)
        cv2.polylines(img, [pts], False, _c(road), width)
    # Roofs: low-saturation rectangles, bigger than most objects, with a shadow and a ridge.
    for _ in range(rng.poisson(rng.uniform(0, 12) * per_256)):
        x, y, bw, bh = (int(v) for v in rng.integers((0, 0, 12, 12), (w, h, 40, 40)))
        roof = _dull(rng.uniform(90, 170, 3), 0.35)
        cv2.rectangle(img, (x + 2, y + 2), (x + bw + 2, y + bh + 2), _c(0.55 * img[y, x]), -1)
        cv2.rectangle(img, (x, y), (x + bw, y + bh), _c(roof), -1)
        cv2.rectangle(img, (x, y), (x + bw, y + bh // 2), _c(0.85 * roof), -1)
    # Trees: clusters of dark green discs with a shadow.
    for _ in range(rng.poisson(rng.uniform(0, 6) * per_256)):
        cx, cy = rng.uniform((0, 0), (w, h))
        for dx, dy, r in zip(*rng.normal(0, 10, (2, 12)), rng.integers(2, 7, 12)):
            green = _c(rng.uniform((35, 55, 30), (60, 85, 45)))
            centre = (int(cx + dx), int(cy + dy))
            cv2.circle(img, (centre[0] + 2, centre[1] + 2), int(r), (25.0, 30.0, 22.0), -1)
            cv2.circle(img, centre, int(r), green, -1)
    # Clutter blobs and specks: darker/lighter copies of the local ground, never saturated.
    for _ in range(rng.poisson(40 * per_256)):
        cx, cy = int(rng.integers(0, w)), int(rng.integers(0, h))
        colour = _dull(img[cy, cx] * rng.uniform(0.6, 1.35), 0.4)
        axes = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
        cv2.ellipse(img, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, _c(colour), -1)
    n_specks = int(h * w / 200)
    ys, xs = rng.integers(0, h - 1, n_specks), rng.integers(0, w - 1, n_specks)
    specks = _dull(img[ys, xs] * rng.uniform(0.55, 1.4, (n_specks, 1)).astype(np.float32), 0.5)
    img[ys, xs] = specks
    big = rng.random(n_specks) < 0.3  # some specks are 2x2
    for dy, dx in ((0, 1), (1, 0), (1, 1)):
        img[ys[big] + dy, xs[big] + dx] = specks[big]
    img = cv2.GaussianBlur(img, (3, 3), 0.6)  # soften the hard-drawn clutter like an optical PSF
    return np.clip(img * rng.uniform(0.88, 1.1), 0, _BACKGROUND_MAX)


# ------------------------------------------------------------------------------------------- objects
def _draw_object(rng: np.random.Generator, cls: int, length: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ``cls`` (0-based) pointing along +x in a ``width`` x ``length`` px box.

    Returns premultiplied RGB float32 (width, length, 3) and alpha float32 (width, length) in [0, 1].
    It is drawn 4x (2x when large) supersampled and area-downsampled (antialiasing); the shape
    touches all four sides, so the box is its tight extent.
    """
    s = 4 if length <= 24 else 2
    big_l, big_w = length * s, width * s
    colour = np.zeros((big_w, big_l, 3), np.float32)
    mask = np.zeros((big_w, big_l), np.float32)
    base = np.clip(np.array(_CLASS_RGB[cls], np.float32) * rng.uniform(0.88, 1.06) + rng.normal(0, 8, 3), 0, 255)
    ink = lambda draw, rgb: (draw(colour, _c(rgb)), draw(mask, 1.0))  # noqa: E731
    short, xe, ye = min(big_l, big_w), big_l - 1, big_w - 1
    if cls == 0:  # vehicle: rectangle, dark windshield stripe towards the front
        ink(lambda im, c: cv2.rectangle(im, (0, 0), (xe, ye), c, -1), base)
        x0 = int(big_l * rng.uniform(0.6, 0.68))
        cv2.rectangle(
            colour, (x0, int(0.15 * big_w)), (x0 + max(s, int(0.14 * big_l)), int(0.85 * big_w)), (35.0, 35.0, 50.0), -1
        )
    elif cls == 1:  # person: round blob seen from above, darker head in the middle
        ink(lambda im, c: cv2.ellipse(im, (big_l // 2, big_w // 2), (big_l // 2, big_w // 2), 0, 0, 360, c, -1), base)
        cv2.circle(colour, (big_l // 2, big_w // 2), max(1, int(0.28 * short)), _c(0.45 * base), -1)
    elif cls == 2:  # drone: X of arms with rotor tips and a bright centre
        arm = max(int(1.5 * s), int(0.28 * short))
        ink(lambda im, c: cv2.line(im, (0, 0), (xe, ye), c, arm), base)
        ink(lambda im, c: cv2.line(im, (0, ye), (xe, 0), c, arm), base)
        cv2.circle(colour, (big_l // 2, big_w // 2), max(1, int(0.2 * short)), (225.0, 250.0, 255.0), -1)
    elif cls == 3:  # ship: pointed hull, white with a dark outline and a grey superstructure
        hull = np.array([(0, 0.18 * ye), (0.68 * xe, 0), (xe, 0.5 * ye), (0.68 * xe, ye), (0, 0.82 * ye)], np.int32)
        ink(lambda im, c: cv2.fillPoly(im, [hull], c), base)
        if width >= 4:  # an outline on a 2-3 px ship would turn it dark grey
            cv2.polylines(colour, [hull], True, (35.0, 35.0, 45.0), max(s, int(0.12 * big_w)))
        if width >= 5:
            cv2.rectangle(
                colour, (int(0.18 * xe), int(0.32 * ye)), (int(0.42 * xe), int(0.68 * ye)), (150.0, 150.0, 150.0), -1
            )
    else:  # airplane: fuselage, swept wings, tail
        body = max(s, int(0.22 * big_w))
        ink(lambda im, c: cv2.rectangle(im, (0, ye // 2 - body // 2), (xe, ye // 2 + body // 2), c, -1), base)
        wing = np.array(
            [
                (0.4 * xe, 0),
                (0.55 * xe, 0),
                (0.7 * xe, 0.5 * ye),
                (0.55 * xe, ye),
                (0.4 * xe, ye),
                (0.5 * xe, 0.5 * ye),
            ],
            np.int32,
        )
        ink(lambda im, c: cv2.fillPoly(im, [wing], c), base)
        ink(lambda im, c: cv2.rectangle(im, (0, int(0.28 * ye)), (int(0.12 * xe), int(0.72 * ye)), c, -1), base)
    colour = cv2.resize(colour * mask[..., None], (length, width), interpolation=cv2.INTER_AREA)
    alpha = cv2.resize(mask, (length, width), interpolation=cv2.INTER_AREA)
    return colour.reshape(width, length, 3), alpha.reshape(width, length)


def _sample_sides(rng: np.random.Generator, cls: int, area_bin: int) -> tuple[int, int]:
    """Integer (long, short) sides >= 2 px whose product falls in ``AREA_BINS[area_bin]``."""
    low, high = AREA_BINS[area_bin]
    for _ in range(50):
        area = rng.uniform(np.sqrt(low), np.sqrt(high)) ** 2  # uniform in side length, not in area
        aspect = rng.uniform(*_CLASS_ASPECT[cls])
        short = max(2, round(np.sqrt(area / aspect)))
        long = max(short, round(short * aspect))
        if low < long * short <= high:
            return long, short
    side = int(np.sqrt(high))  # fall back to the largest square of the bin
    return side, side


def _boxes_ok(candidate_xyxy: np.ndarray, placed_xyxy: np.ndarray) -> bool:
    """IoU < 0.3 with every placed box, and no box covers more than a fifth of a smaller one
    (IoU alone would let a small object sit inside a large one's box and be painted over)."""
    if len(placed_xyxy) == 0:
        return True
    lt = np.maximum(candidate_xyxy[:2], placed_xyxy[:, :2])
    rb = np.minimum(candidate_xyxy[2:], placed_xyxy[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area_c = np.prod(candidate_xyxy[2:] - candidate_xyxy[:2])
    area_p = np.prod(placed_xyxy[:, 2:] - placed_xyxy[:, :2], axis=1)
    iou = inter / (area_c + area_p - inter)
    return bool(np.all(iou < 0.3) and np.all(inter <= 0.2 * np.minimum(area_c, area_p)))


def _sample_count(rng: np.random.Generator, spec: SyntheticSpec, kind: str) -> int:
    """Objects to request per ``spec.count_area`` px² for an image of ``kind`` ("empty", "dense" or "normal")."""
    if kind == "empty":
        return 0
    if kind == "dense":
        return int(rng.integers(spec.dense_min, spec.dense_max + 1))
    return 1 + int((spec.max_objects - 1) * rng.random() ** 2.5)  # skewed: ~40 % have <= 5 objects


def _scale_count(count: int, spec: SyntheticSpec, height: int, width: int) -> int:
    """``count`` objects per ``spec.count_area`` px², scaled to an ``height`` x ``width`` px frame."""
    area = spec.count_area
    return count if height * width == area else round(count * height * width / area)


def render_scene(
    rng: np.random.Generator,
    spec: SyntheticSpec,
    num_objects: int | None = None,
    height: int | None = None,
    width: int | None = None,
) -> tuple[np.ndarray, list[dict]]:
    """Render one scene: (height, width, 3) uint8 RGB and its annotations.

    ``height``/``width`` default to ``spec.frame_hw``. ``num_objects`` is how many to request
    (objects that find no free spot are dropped); by default it is drawn like a dataset image
    (empty / dense / normal) and scaled by the area relative to ``spec.count_area``. Each annotation has
    ``bbox`` = integer ``[x, y, w, h]`` fully inside the image, ``category_id`` in ``1..num_classes``
    and ``area`` = ``w * h``. Objects are clustered in places, never overlap with IoU >= 0.3.
    """
    h, w = height or spec.frame_hw[0], width or spec.frame_hw[1]
    if num_objects is None:
        p_normal = 1.0 - spec.empty_fraction - spec.dense_fraction
        kind = rng.choice(["empty", "dense", "normal"], p=[spec.empty_fraction, spec.dense_fraction, p_normal])
        num_objects = round(_sample_count(rng, spec, str(kind)) * h * w / spec.count_area)
    img = _background(rng, h, w)
    mix = np.asarray(spec.size_mix, np.float64)
    if num_objects * spec.count_area > spec.max_objects * h * w:  # a dense scene (integers: exact)
        mix[2:] *= DENSE_LARGE_DAMPING
    mix /= mix.sum()
    clusters = rng.uniform((0, 0), (w, h), (int(rng.integers(1, 5)), 2))
    spread = rng.uniform(10, 40)
    placed_xyxy = np.zeros((0, 4), np.float32)
    annotations = []
    classes = rng.integers(spec.num_classes, size=num_objects)
    area_bins = rng.choice(len(mix), num_objects, p=mix)
    sides = [_sample_sides(rng, int(cls), int(b)) for cls, b in zip(classes, area_bins)]
    for i in sorted(range(num_objects), key=lambda i: -sides[i][0] * sides[i][1]):  # large first, small fill gaps
        cls = int(classes[i])
        colour, alpha = _draw_object(rng, cls, *sides[i])
        k = int(rng.integers(4))  # heading: right / up / left / down
        colour, alpha = np.rot90(colour, k), np.rot90(alpha, k)
        bh, bw = alpha.shape
        if bw > w or bh > h:
            continue
        for _attempt in range(30):
            if rng.random() < 0.5:  # half the objects gather (parking lots, crowds, harbours)
                centre = rng.normal(clusters[rng.integers(len(clusters))], spread)
            else:
                centre = rng.uniform((0, 0), (w, h))
            x = int(np.clip(centre[0] - bw / 2, 0, w - bw))
            y = int(np.clip(centre[1] - bh / 2, 0, h - bh))
            box_xyxy = np.array([x, y, x + bw, y + bh], np.float32)
            if _boxes_ok(box_xyxy, placed_xyxy):
                break
        else:
            continue  # no free spot: drop it rather than pile objects up
        placed_xyxy = np.vstack([placed_xyxy, box_xyxy])
        roi = img[y : y + bh, x : x + bw]
        img[y : y + bh, x : x + bw] = roi * (1.0 - alpha[..., None]) + colour  # colour is premultiplied
        annotations.append({"bbox": [x, y, bw, bh], "category_id": cls + 1, "area": bw * bh})
    img += rng.standard_normal(img.shape, dtype=np.float32) * 2.0  # sensor noise
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), annotations


# ------------------------------------------------------------------------------------------ the cache
def _split_sizes(spec: SyntheticSpec) -> dict[str, int]:
    """Images per split, for the splits that have any."""
    sizes = dict(zip(SPLITS, (spec.num_train, spec.num_val, spec.num_test)))
    return {split: n for split, n in sizes.items() if n > 0}


def _write_split(out_dir: Path, split: str, count: int, spec: SyntheticSpec) -> int:
    """Render ``count`` images of ``split`` into ``out_dir``; returns the number of objects."""
    split_id = SPLITS.index(split)
    n_empty, n_dense = round(spec.empty_fraction * count), round(spec.dense_fraction * count)
    kinds = ["empty"] * n_empty + ["dense"] * n_dense + ["normal"] * (count - n_empty - n_dense)
    kinds = [kinds[i] for i in np.random.default_rng([spec.seed, 7, split_id]).permutation(count)]
    (out_dir / "images" / split).mkdir(parents=True)
    images, annotations = [], []
    for index, kind in enumerate(kinds):
        rng = np.random.default_rng([spec.seed, 7, split_id, index + 1])  # one stream per image
        num_objects = _scale_count(_sample_count(rng, spec, kind), spec, *spec.frame_hw)
        image, anns = render_scene(rng, spec, num_objects=num_objects)
        file_name = f"{index:06d}.png"
        cv2.imwrite(str(out_dir / "images" / split / file_name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        images.append({"id": index + 1, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": index + 1, "iscrowd": 0, **ann})
    coco = {
        "info": {
            "description": "tod_lightning synthetic tiny objects",
            "generator_version": GENERATOR_VERSION,
            "fingerprint": spec.fingerprint(),
            "split": split,
            "spec": spec.as_dict(),
        },
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": k + 1, "name": name, "supercategory": "object"}
            for k, name in enumerate(CLASS_NAMES[: spec.num_classes])
        ],
    }
    (out_dir / "annotations").mkdir(exist_ok=True)
    (out_dir / "annotations" / f"{split}.json").write_text(json.dumps(coco))
    return len(annotations)


def ensure_synthetic_dataset(root: str | os.PathLike, spec: SyntheticSpec = SyntheticSpec()) -> dict[str, CocoSplit]:
    """Make sure ``<root>/synthetic-<fingerprint>/`` holds ``spec``'s dataset; return its splits.

    Returns ``{split: CocoSplit}`` for the splits with at least one image. Safe under concurrent
    calls: an exclusive ``flock`` on ``<root>/synthetic-<fingerprint>.lock`` serialises them; the
    holder returns at once if the ``DONE`` marker exists, else renders into a temporary sibling folder,
    ``os.replace``s it into place and only then writes the marker, so a crashed run is redone.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    name = f"synthetic-{spec.fingerprint()}"
    final = root / name
    with open(root / f"{name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released on close, also when the process dies
        if (final / DONE_MARKER).is_file():
            logger.debug("synthetic dataset found at %s", final)
        else:
            start = time.perf_counter()
            for stale in [final, *root.glob(f".{name}.tmp-*")]:  # leftovers of a crashed run
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
            # OpenCV's thread pool must not exist in this process when DataLoader workers fork later:
            # a forked child inherits its locked state and hangs on its first parallel cv2 call.
            threads = cv2.getNumThreads()
            cv2.setNumThreads(0)
            try:
                num_objects = sum(_write_split(tmp, split, n, spec) for split, n in _split_sizes(spec).items())
            finally:
                cv2.setNumThreads(threads)
            os.replace(tmp, final)
            seconds = time.perf_counter() - start
            marker = {"fingerprint": spec.fingerprint(), "pid": os.getpid(), "seconds": round(seconds, 2)}
            (final / DONE_MARKER).write_text(json.dumps(marker))
            logger.info(
                "generated synthetic dataset (%s images, %d objects) at %s in %.1f s",
                _split_sizes(spec),
                num_objects,
                final,
                seconds,
            )
    images_dir, ann_dir = final / "images", final / "annotations"
    return {split: CocoSplit(str(images_dir / split), str(ann_dir / f"{split}.json")) for split in _split_sizes(spec)}


def size_histogram(ann_file: str | os.PathLike) -> dict[str, float]:
    """Fractions of objects per area bin (px²: [0, 64], (64, 256], (256, 1024], > 1024) and
    objects-per-image stats (min / mean / max, number of empty images) of a COCO json."""
    coco = json.loads(Path(ann_file).read_text())
    areas = np.array([a["area"] for a in coco["annotations"]], np.float64)
    image_index = {img["id"]: i for i, img in enumerate(coco["images"])}
    owners = np.array([image_index[a["image_id"]] for a in coco["annotations"]], np.int64)
    per_image = np.bincount(owners, minlength=len(image_index))
    n = max(len(areas), 1)
    return {
        "area_0_64": float(np.sum(areas <= 64) / n),
        "area_64_256": float(np.sum((areas > 64) & (areas <= 256)) / n),
        "area_256_1024": float(np.sum((areas > 256) & (areas <= 1024)) / n),
        "area_gt_1024": float(np.sum(areas > 1024) / n),
        "num_images": float(len(per_image)),
        "num_objects": float(len(areas)),
        "objects_per_image_min": float(per_image.min() if len(per_image) else 0),
        "objects_per_image_mean": float(per_image.mean() if len(per_image) else 0),
        "objects_per_image_max": float(per_image.max(initial=0)),
        "empty_images": float(np.sum(per_image == 0)),
    }
