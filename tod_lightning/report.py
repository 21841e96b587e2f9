"""Dataset report: what each split holds, measured against the AI-TOD size bins and the detector's settings.

Run as ``python -m tod_lightning.report --config configs/quickstart.yaml [--config ...] [--json report.json]``
(the training configs: the ``data`` splits are reported, the model's strides and detection cap are read from
the ``model`` section without building it), or on one split given directly
(``--split.class_path tod_lightning.data.CocoSplit --split.init_args.images_dir ... --split.init_args.ann_file
...``). Output sections and how to read them: docs/data/report.md.

Every split is read with ``strict=False``, so every problem of the annotation file is collected instead of
the first one raising; image files are then checked from their headers (PIL, pixels are not decoded).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Optional, Sequence, Union

import numpy as np
from jsonargparse import ActionConfigFile, ArgumentParser, Namespace
from PIL import Image

from tod_lightning.data.problems import (
    CORRUPT_IMAGE,
    IMAGE_SIZE_MISMATCH,
    MISSING_IMAGE,
    AnnotationError,
    ProblemLog,
)
from tod_lightning.data.records import AnnotationSet, ImageRecord
from tod_lightning.data.splits import SplitSource
from tod_lightning.data.synthetic import SyntheticSpec, ensure_synthetic_dataset
from tod_lightning.metrics import DEFAULT_AREA_RANGES

# Lower edges (px) of the box-side histogram; the last bin is open-ended. Powers of two, so that the rows
# line up with the detector's strides (4, 8, 16, ...).
SIDE_EDGES = (0.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0)
SPLIT_NAMES = ("train", "val", "test")
# What a ``strict=False`` run does with an image whose file fails the header check (the dataset skips it).
IMAGE_ACTION = "skipped image"


# ----------------------------------------------------------------------------------------------- results
@dataclass
class SizeBin:
    """Objects of one AI-TOD size bin.

    Attributes:
        name: the bin's name (``vt``, ``t``, ``s``, ``m``).
        low, high: bounds on the annotation ``area``, px²; the first bin is ``[low, high]``, the others
            ``(low, high]``: an area equal to a bound shared by two bins is counted once, in the lower bin.
        count: objects in the bin; ``share``: ``count / objects`` (0 when there are no objects).
    """

    name: str
    low: float
    high: float
    count: int
    share: float


@dataclass
class StrideRow:
    """Objects smaller than one feature cell of a detector level.

    Attributes:
        stride: the level's stride, px.
        below: objects with ``sqrt(area) < stride``; ``share_below``: as a share of all objects.
        short_side_below: objects whose shorter box side is ``< stride``; ``share_short_side_below``: share.
    """

    stride: int
    below: int
    share_below: float
    short_side_below: int
    share_short_side_below: float


@dataclass
class SplitReport:
    """The report of one split (see docs/data/report.md for each number).

    Attributes:
        name: ``train``/``val``/``test`` (or ``split`` for ``--split``).
        source: the annotation file or folder; ``images_dir``: the images folder.
        images: image records the reader kept; ``objects``: their annotations that are not ignore regions;
            ``ignore_regions``: their ignore regions (COCO crowds, VisDrone ignored regions); ``empty_images``:
            images with no object.
        size_bins: objects per AI-TOD bin (areas in px²).
        on_shared_bound: objects whose area equals a bound shared by two bins (64, 256, 1024): counted once in
            ``size_bins`` (lower bin), but in BOTH bins by the COCOeval-style evaluator (inclusive bounds).
        outside_bins: objects whose area lies in no bin (negative, or above the last bound).
        objects_per_image_mean, objects_per_image_median, objects_per_image_max: over all images, empty ones
            included.
        max_per_image: the detection cap (post-processor ``max_per_image``); ``images_above_cap``: images with
            more objects than it; ``share_above_cap``: as a share of the images.
        strides: one :class:`StrideRow` per detector stride.
        side_edges: lower edges (px) of the side histogram bins (``[e_i, e_{i+1})``, the last open-ended).
        side_counts: ``{"sqrt_area": [...], "short_side": [...], "long_side": [...]}``, objects per bin.
        problem_counts: ``{kind: count}``; ``problems``: every problem, as ``{kind, where, message, action}``
            (``action``: what a ``strict=False`` run does with it).
        error: a fatal error of the annotation file (empty, not parseable, no images): nothing else is set.
    """

    name: str
    source: str
    images_dir: str
    images: int = 0
    objects: int = 0
    ignore_regions: int = 0
    empty_images: int = 0
    size_bins: list[SizeBin] = field(default_factory=list)
    on_shared_bound: int = 0
    outside_bins: int = 0
    objects_per_image_mean: float = 0.0
    objects_per_image_median: float = 0.0
    objects_per_image_max: int = 0
    max_per_image: int = 0
    images_above_cap: int = 0
    share_above_cap: float = 0.0
    strides: list[StrideRow] = field(default_factory=list)
    side_edges: list[float] = field(default_factory=lambda: list(SIDE_EDGES))
    side_counts: dict[str, list[int]] = field(default_factory=dict)
    problem_counts: dict[str, int] = field(default_factory=dict)
    problems: list[dict[str, str]] = field(default_factory=list)
    error: str | None = None


# ------------------------------------------------------------------------------------------- measuring
def _share(count: int | np.ndarray, total: int) -> float | np.ndarray:
    return count / total if total else count * 0.0


def size_bin_counts(
    areas: np.ndarray, area_ranges: Mapping[str, tuple[float, float]] = DEFAULT_AREA_RANGES
) -> tuple[list[SizeBin], int, int]:
    """Objects per area bin, each object counted once.

    Args:
        areas: ``(N,)`` annotation areas, px².
        area_ranges: ``{name: (low, high)}`` contiguous bins (``high`` of one is ``low`` of the next), as
            :data:`tod_lightning.metrics.DEFAULT_AREA_RANGES`.

    Returns:
        ``(bins, on_shared_bound, outside)``: the bins in order of ``low`` (the first closed ``[low, high]``,
        the others ``(low, high]``), the number of areas equal to a shared bound, the number in no bin.
    """
    ranges = sorted(area_ranges.items(), key=lambda item: item[1][0])
    lows = np.array([lo for _, (lo, _) in ranges], np.float64)  # (K,)
    highs = np.array([hi for _, (_, hi) in ranges], np.float64)  # (K,)
    if np.any(lows[1:] != highs[:-1]):
        raise ValueError(f"area ranges must be contiguous, got {dict(ranges)}")
    areas = np.asarray(areas, np.float64).reshape(-1, 1)  # (N, 1)
    above_low = (areas > lows) | ((areas == lows) & (np.arange(len(lows)) == 0))  # (N, K): first bin closed
    in_bin = above_low & (areas <= highs)  # (N, K), at most one True per row
    counts = in_bin.sum(0)
    total = len(areas)
    bins = [
        SizeBin(name, float(lo), float(hi), int(n), float(_share(int(n), total)))
        for (name, (lo, hi)), n in zip(ranges, counts)
    ]
    on_bound = int(np.isin(areas, highs[:-1]).sum())
    return bins, on_bound, int(total - counts.sum())


def stride_rows(sides_px: np.ndarray, short_sides_px: np.ndarray, strides: Sequence[int]) -> list[StrideRow]:
    """Per stride, the objects smaller than one feature cell: ``sides_px`` (``(N,)`` sqrt(area)) and
    ``short_sides_px`` (``(N,)`` the shorter box side) compared with ``stride``."""
    strides_arr = np.asarray(strides, np.float64).reshape(1, -1)  # (1, S)
    below = (np.reshape(sides_px, (-1, 1)) < strides_arr).sum(0)  # (S,)
    short_below = (np.reshape(short_sides_px, (-1, 1)) < strides_arr).sum(0)  # (S,)
    n = len(sides_px)
    return [
        StrideRow(int(s), int(b), float(_share(int(b), n)), int(sb), float(_share(int(sb), n)))
        for s, b, sb in zip(strides, below, short_below)
    ]


def side_histogram(values_px: np.ndarray, edges: Sequence[float] = SIDE_EDGES) -> list[int]:
    """Counts of ``values_px`` in ``[edges[i], edges[i + 1])``, the last bin ``[edges[-1], inf)``."""
    index = np.searchsorted(np.asarray(edges, np.float64), np.asarray(values_px, np.float64), side="right") - 1
    return np.bincount(index[index >= 0], minlength=len(edges)).tolist()


@contextlib.contextmanager
def _no_pixel_limit() -> Iterator[None]:
    # PIL refuses to open images above ~179 Mpx ("decompression bomb") although it only reads the header;
    # orthomosaics are that large and OpenCV (what the dataset decodes with) reads up to 1 Gpx.
    limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def check_image_headers(images: Sequence[ImageRecord], images_dir: str, problems: ProblemLog) -> None:
    """Check each record's image file from its header (pixels are not decoded), recording in ``problems``:
    :data:`MISSING_IMAGE`, :data:`CORRUPT_IMAGE` (no readable header) and :data:`IMAGE_SIZE_MISMATCH` (the
    header's size differs from the record's).
    A record of unknown size (``height == width == 0``) is not size-checked. A file whose header is fine but
    whose pixel data is truncated is only found when the dataset decodes it."""
    with _no_pixel_limit():
        for record in images:
            path = os.path.join(images_dir, record.file_name)
            where = f"{path}: image id={record.image_id}"
            if not os.path.isfile(path):
                problems.error(MISSING_IMAGE, where, "file not found", IMAGE_ACTION)
                continue
            try:
                with Image.open(path) as image:
                    width, height = image.size  # the stored pixel grid: the dataset ignores EXIF orientation too
            except Exception as error:  # PIL raises OSError, SyntaxError, ValueError... for a broken header
                problems.error(CORRUPT_IMAGE, where, f"cannot read the image header ({error})", IMAGE_ACTION)
                continue
            if record.height and record.width and (height, width) != (record.height, record.width):
                problems.error(
                    IMAGE_SIZE_MISMATCH,
                    where,
                    f"header size {width}x{height} (w x h) differs from the annotation's "
                    f"{record.width}x{record.height}",
                    IMAGE_ACTION,
                )


def summarize(
    name: str,
    annotations: AnnotationSet,
    images_dir: str,
    problems: ProblemLog,
    strides: Sequence[int],
    max_per_image: int,
    area_ranges: Mapping[str, tuple[float, float]] = DEFAULT_AREA_RANGES,
) -> SplitReport:
    """The numbers of one parsed split (see :class:`SplitReport`); ``problems`` are listed as they are."""
    images = annotations.images
    n_images = len(images)
    counts = np.array([len(image.areas) for image in images], np.int64)  # (I,) annotations per image
    owner = np.repeat(np.arange(n_images), counts)  # (A,) image index of each annotation
    crowd = np.concatenate([image.iscrowd for image in images] or [np.zeros(0, bool)])  # (A,)
    areas = np.concatenate([image.areas for image in images] or [np.zeros(0, np.float32)])[~crowd]  # (N,)
    boxes_xyxy = np.concatenate([image.boxes_xyxy for image in images] or [np.zeros((0, 4), np.float32)])[~crowd]
    wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]  # (N, 2)
    per_image = np.bincount(owner[~crowd], minlength=n_images)  # (I,) objects per image
    n_objects = len(areas)

    bins, on_bound, outside = size_bin_counts(areas, area_ranges)
    sides_px = np.sqrt(np.clip(areas.astype(np.float64), 0, None))  # (N,) side of the square of equal area
    short_px, long_px = wh.min(1, initial=np.inf), wh.max(1, initial=0.0)  # (N,), (N,)
    above_cap = int((per_image > max_per_image).sum())
    return SplitReport(
        name=name,
        source=annotations.source,
        images_dir=images_dir,
        images=n_images,
        objects=n_objects,
        ignore_regions=int(crowd.sum()),
        empty_images=int((per_image == 0).sum()),
        size_bins=bins,
        on_shared_bound=on_bound,
        outside_bins=outside,
        objects_per_image_mean=float(per_image.mean()) if n_images else 0.0,
        objects_per_image_median=float(np.median(per_image)) if n_images else 0.0,
        objects_per_image_max=int(per_image.max(initial=0)),
        max_per_image=int(max_per_image),
        images_above_cap=above_cap,
        share_above_cap=float(_share(above_cap, n_images)),
        strides=stride_rows(sides_px, short_px, strides),
        side_counts={
            "sqrt_area": side_histogram(sides_px),
            "short_side": side_histogram(short_px),
            "long_side": side_histogram(long_px),
        },
        problem_counts=problems.counts(),
        problems=[dataclasses.asdict(p) for p in problems],
    )


def report_split(
    name: str,
    split: SplitSource,
    strides: Sequence[int],
    max_per_image: int,
    area_ranges: Mapping[str, tuple[float, float]] = DEFAULT_AREA_RANGES,
    check_images: bool = True,
) -> SplitReport:
    """Read ``split`` with ``strict=False`` (every problem collected), check its image headers (if
    ``check_images``) and measure it. A fatal error of the annotation file (empty, not parseable, not found)
    gives a report with only ``error`` set."""
    try:
        annotations = split.load(strict=False)
    except (AnnotationError, OSError) as error:  # nothing to skip to: the file itself is unusable
        return SplitReport(name, split.source, split.images_dir, error=str(error))
    problems = ProblemLog(strict=False)
    problems.extend(annotations.problems)
    if check_images:
        check_image_headers(annotations.images, split.images_dir, problems)
    return summarize(name, annotations, split.images_dir, problems, strides, max_per_image, area_ranges)


# ------------------------------------------------------------------------------------------ printing
def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], indent: str = "  ", left: int = 1) -> list[str]:
    """Plain-text table: the first ``left`` columns left-aligned, the others (numbers) right-aligned."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        return indent + "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))

    return [fmt(cells[0]), indent + "  ".join("-" * w for w in widths)] + [fmt(row) for row in cells[1:]]


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _num(value: float) -> str:
    return f"{value:g}" if value < 1e6 else f"{value:.0e}".replace("e+", "e")


def format_split(report: SplitReport, max_problems: int | None = 100) -> str:
    """The plain-text report of one split; at most ``max_problems`` problems are listed (``None``: all)."""
    lines = [f"== {report.name}: {report.source} (images in {report.images_dir})"]
    if report.error is not None:
        return "\n".join(lines + [f"  FATAL: {report.error}"])
    lines.append(
        f"  images {report.images}, objects {report.objects}, ignore regions {report.ignore_regions}, "
        f"empty images {report.empty_images}"
    )
    lines += ["", "  AI-TOD size bins (annotation area, px²; first bin [low, high], others (low, high])"]
    rows = [
        (b.name, f"{'[' if i == 0 else '('}{_num(b.low)}, {_num(b.high)}]", b.count, _pct(b.share))
        for i, b in enumerate(report.size_bins)
    ]
    lines += _table(("bin", "area px²", "objects", "share"), rows)
    lines.append(
        f"  {report.on_shared_bound} objects have an area equal to a shared bound: counted above in the lower bin, "
        "in both bins by the evaluator"
    )
    if report.outside_bins:
        lines.append(f"  {report.outside_bins} objects have an area in no bin (negative or too large)")
    lines += [
        "",
        f"  objects per image: mean {report.objects_per_image_mean:.2f}, median {report.objects_per_image_median:g}, "
        f"max {report.objects_per_image_max}",
        f"  images with more objects than the detection cap (max_per_image={report.max_per_image}): "
        f"{report.images_above_cap} of {report.images} ({_pct(report.share_above_cap)})",
    ]
    if report.images_above_cap:
        lines.append(
            "  WARNING: the detector keeps at most max_per_image detections per image, so recall on these images "
            "is capped: raise model.postprocess.init_args.max_per_image (the evaluator scores up to 1500 per image) "
            "and watch val/capped_images"
        )
    lines += ["", "  objects smaller than one feature cell of each detector level"]
    rows = [
        (r.stride, r.below, _pct(r.share_below), r.short_side_below, _pct(r.share_short_side_below))
        for r in report.strides
    ]
    lines += _table(("stride px", "sqrt(area) < stride", "share", "short side < stride", "share"), rows)
    lines += ["", "  box sides, px (objects per bin)"]
    edges = report.side_edges
    labels = [f"[{_num(lo)}, {_num(hi)})" for lo, hi in zip(edges, edges[1:])] + [f">= {_num(edges[-1])}"]
    counts = report.side_counts
    rows = list(zip(labels, counts["sqrt_area"], counts["short_side"], counts["long_side"]))
    lines += _table(("side px", "sqrt(area)", "short side", "long side"), rows)
    lines += ["", f"  problems: {len(report.problems)}"]
    if report.problems:
        by_kind = collections.Counter((p["kind"], p["action"]) for p in report.problems)  # first-seen order
        lines += _table(("kind", "action", "count"), [(k, a, n) for (k, a), n in by_kind.items()], "    ", left=2)
        shown = report.problems if max_problems is None else report.problems[:max_problems]
        lines += [f"    {p['where']}: {p['message']} [{p['kind']}; {p['action']}]" for p in shown]
        if len(shown) < len(report.problems):
            lines.append(f"    ... and {len(report.problems) - len(shown)} more (all of them in --json)")
    return "\n".join(lines)


def format_report(report: Mapping[str, Any], max_problems: int | None = 100) -> str:
    """The plain-text report of :func:`build_report`'s result."""
    head = [
        f"detector strides {report['strides']} ({report['strides_from']}); "
        f"detection cap max_per_image={report['max_per_image']} ({report['max_per_image_from']})"
    ]
    return "\n\n".join(head + [format_split(r, max_problems) for r in report["split_reports"]])


# ----------------------------------------------------------------------------------------- configs
def _resolve(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


def _find_key(node: Any, key: str) -> Any:
    """The first value of ``key`` in a nested config (depth first), e.g. ``out_strides`` of a backbone that
    wraps another (IPG-Net's ``init_args.backbone.init_args.out_strides``)."""
    if isinstance(node, Namespace):
        node = node.as_dict()
    if isinstance(node, dict):
        if node.get(key) is not None:
            return node[key]
        for value in node.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    if isinstance(node, list):
        for value in node:
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def fpn_strides(in_strides: Sequence[int], min_level: int, max_level: int) -> list[int]:
    """The output strides of :class:`tod_lightning.models.FPN` on a backbone of ``in_strides`` (its rule:
    backbone levels from ``2**min_level`` to ``2**max_level``, then doubling up to ``max_level``)."""
    used = [int(s) for s in in_strides if 2**min_level <= s <= 2**max_level]
    if not used:
        return [int(s) for s in in_strides]
    return used + [used[-1] * 2 ** (i + 1) for i in range(max_level - min_level + 1 - len(used))]


def detector_strides(model: Namespace | None) -> tuple[list[int], str]:
    """The detector's level strides from a parsed ``model`` section, without building it: the backbone's
    ``out_strides`` (the default backbone's when absent), restricted to the FPN levels when the neck chain
    has an FPN (the other necks keep their input strides). Returns ``(strides, where they came from)``."""
    from tod_lightning.models import FPN, TimmBackbone

    backbone = getattr(model, "backbone", None)
    in_strides = _find_key(backbone, "out_strides") if backbone is not None else None
    where = "model.backbone out_strides"
    if in_strides is None:
        in_strides = inspect.signature(TimmBackbone).parameters["out_strides"].default
        where = "the default backbone's out_strides"
    necks = getattr(model, "necks", None)
    if necks is None:  # DetectionTask's default neck chain: one FPN with its default levels
        params = inspect.signature(FPN).parameters
        levels = (params["min_level"].default, params["max_level"].default)
    else:
        fpns = [n for n in necks if isinstance(n, Namespace) and _resolve(str(n.get("class_path"))) is FPN]
        levels = (fpns[0].init_args.min_level, fpns[0].init_args.max_level) if fpns else None
    if levels is None:
        return [int(s) for s in in_strides], where
    return fpn_strides(in_strides, *levels), f"{where} {list(in_strides)}, FPN levels P{levels[0]}-P{levels[1]}"


def detection_cap(model: Namespace | None) -> tuple[int, str]:
    """``model.postprocess.init_args.max_per_image``, or :class:`PostProcessor`'s default."""
    from tod_lightning.models.postprocess import PostProcessor

    value = _find_key(getattr(model, "postprocess", None), "max_per_image")
    if value is not None:
        return int(value), "model.postprocess"
    return inspect.signature(PostProcessor).parameters["max_per_image"].default, "PostProcessor default"


def build_parser() -> ArgumentParser:
    """The command's arguments: the training configs' sections (``data`` and ``model`` typed as in training,
    so layered configs and dotted overrides merge the same way; the others accepted and ignored), or
    ``--split``; plus the report's own options."""
    from tod_lightning.data.datamodule import DetectionDataModule
    from tod_lightning.task import DetectionTask

    parser = ArgumentParser(
        prog="python -m tod_lightning.report",
        description="Dataset report: sizes per AI-TOD bin, objects per image vs the detection cap, sizes vs the "
        "detector's strides, and every problem of the annotation file and the image files.",
    )
    parser.add_argument("--config", action=ActionConfigFile, help="training config(s), as for cli.py")
    parser.add_class_arguments(DetectionDataModule, "data", fail_untyped=False, instantiate=False, sub_configs=True)
    parser.add_class_arguments(DetectionTask, "model", fail_untyped=False, instantiate=False, sub_configs=True)
    for key in ("trainer", "predict_writer"):  # sections of a training config the report does not use
        parser.add_argument(f"--{key}", type=Optional[dict], default=None, help="ignored")
    parser.add_argument("--seed_everything", type=Union[bool, int], default=True, help="ignored")
    parser.add_argument("--ckpt_path", type=Optional[str], default=None, help="ignored")
    parser.add_argument("--split", type=Optional[SplitSource], default=None, help="one split to report")
    parser.add_argument("--strides", type=Optional[list[int]], default=None, help="override the detector strides")
    parser.add_argument("--max_per_image", type=Optional[int], default=None, help="override the detection cap")
    parser.add_argument("--check_images", type=bool, default=True, help="check image files from their headers")
    parser.add_argument("--max_problems", type=Optional[int], default=100, help="problems printed per split")
    parser.add_argument("--json", type=Optional[str], default=None, help="also write the report as JSON here")
    return parser


def _splits_of(cfg: Namespace) -> dict[str, SplitSource]:
    """Instantiate the configured splits (and, as the data module does, generate the synthetic dataset to
    fill the train/val/test splits that are not set), plus ``--split``. Nothing else is built."""
    parser = ArgumentParser()
    for key in (*SPLIT_NAMES, "split"):
        parser.add_argument(f"--{key}", type=Optional[SplitSource], default=None)
    parser.add_argument("--synthetic", type=Optional[SyntheticSpec], default=None)
    values = {key: cfg.data.get(key) for key in (*SPLIT_NAMES, "synthetic")}
    init = parser.instantiate(Namespace(**values, split=cfg.split))
    splits = {name: getattr(init, name) for name in SPLIT_NAMES}
    if init.synthetic is not None:
        generated = ensure_synthetic_dataset(cfg.data.cache_dir, init.synthetic)
        splits = {name: split or generated.get(name) for name, split in splits.items()}
    if init.split is not None:
        splits["split"] = init.split
    return {name: split for name, split in splits.items() if split is not None}


def build_report(cfg: Namespace) -> dict[str, Any]:
    """The report of a parsed command line: ``{"strides", "strides_from", "max_per_image",
    "max_per_image_from", "area_ranges", "split_reports": [SplitReport, ...]}``."""
    splits = _splits_of(cfg)
    if not splits:
        raise ValueError("nothing to report: give --config with a data section (train/val/test) or --split")
    strides, strides_from = detector_strides(cfg.get("model"))
    if cfg.strides is not None:
        strides, strides_from = list(cfg.strides), "--strides"
    max_per_image, cap_from = detection_cap(cfg.get("model"))
    if cfg.max_per_image is not None:
        max_per_image, cap_from = cfg.max_per_image, "--max_per_image"
    area_ranges = cfg.get("model.area_ranges") or DEFAULT_AREA_RANGES
    return {
        "strides": strides,
        "strides_from": strides_from,
        "max_per_image": max_per_image,
        "max_per_image_from": cap_from,
        "area_ranges": {k: list(v) for k, v in area_ranges.items()},
        "split_reports": [
            report_split(name, split, strides, max_per_image, area_ranges, cfg.check_images)
            for name, split in splits.items()
        ],
    }


def to_json(report: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`build_report`'s result as plain JSON data (``split_reports`` become ``splits``: name -> dict)."""
    out = {k: v for k, v in report.items() if k != "split_reports"}
    out["splits"] = {r.name: dataclasses.asdict(r) for r in report["split_reports"]}
    return out


def main(args: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the command on ``args`` (default ``sys.argv``): print the report, write ``--json``, return the JSON
    data."""
    parser = build_parser()
    cfg = parser.parse_args(args)
    try:
        report = build_report(cfg)
    except ValueError as error:
        parser.error(str(error))
    print(format_report(report, cfg.max_problems))
    data = to_json(report)
    if cfg.json:
        os.makedirs(os.path.dirname(os.path.abspath(cfg.json)), exist_ok=True)
        with open(cfg.json, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, allow_nan=False)
    return data


if __name__ == "__main__":
    result = main()
    # A split whose annotation file cannot be read at all is a failure (e.g. in a CI check of a dataset).
    sys.exit(1 if any(split["error"] for split in result["splits"].values()) else 0)
