"""Box-only copy-paste of tiny objects (no masks), in the spirit of Kisantal et al. 2019, "Augmentation for small
object detection" (https://arxiv.org/abs/1902.07296): small objects are oversampled by pasting copies of them
at free places of the training image.

Works on raw samples (see :class:`tod_lightning.data.dataset.MixTransform`), in raw-sample pixels, before the
per-image transform. No torch, no Lightning.
"""

from __future__ import annotations

import numpy as np

from tod_lightning.data.dataset import MixTransform, RawSample


def overlap_matrix(a_xyxy: np.ndarray, b_xyxy: np.ndarray) -> np.ndarray:
    """``(A, B)`` bool: whether box ``i`` of ``a_xyxy`` ``(A, 4)`` and box ``j`` of ``b_xyxy`` ``(B, 4)`` share a
    positive area (touching edges do not count)."""
    a_xyxy, b_xyxy = np.asarray(a_xyxy, np.float32), np.asarray(b_xyxy, np.float32)
    # outer min/max on float32: half the time of broadcasting (A, 1, 4) against (1, B, 4) in float64
    hit = np.minimum.outer(a_xyxy[:, 2], b_xyxy[:, 2]) > np.maximum.outer(a_xyxy[:, 0], b_xyxy[:, 0])  # (A, B)
    hit &= np.minimum.outer(a_xyxy[:, 3], b_xyxy[:, 3]) > np.maximum.outer(a_xyxy[:, 1], b_xyxy[:, 1])
    return hit


def overlaps_any(rects_xyxy: np.ndarray, others_xyxy: np.ndarray) -> np.ndarray:
    """``(T,)`` bool: whether each of ``rects_xyxy`` ``(T, 4)`` shares a positive area with any of ``others_xyxy``
    ``(M, 4)``."""
    return overlap_matrix(rects_xyxy, others_xyxy).any(1)


def feather_alpha(box_xyxy: np.ndarray, patch_xyxy: np.ndarray, context: float) -> np.ndarray:
    """``(h, w)`` float32 opacity of a patch: 1 on the pixels whose centre is inside the box, falling linearly to
    0 at ``context`` px outside it (separable in x and y, so the corners are rounded off too).

    Args:
        box_xyxy: ``(4,)`` the object's box, px in the same frame as the patch.
        patch_xyxy: ``(4,)`` integer pixel window of the patch.
        context: width of the soft edge (px); ``0``: a hard edge (pixels whose centre is outside the box are
            not pasted).
    """
    x0, y0, x1, y1 = (int(v) for v in patch_xyxy)
    centres_x = np.arange(x0, x1, dtype=np.float32) + 0.5  # (w,)
    centres_y = np.arange(y0, y1, dtype=np.float32) + 0.5  # (h,)
    out_x = np.maximum(np.maximum(box_xyxy[0] - centres_x, centres_x - box_xyxy[2]), 0)  # px outside the box
    out_y = np.maximum(np.maximum(box_xyxy[1] - centres_y, centres_y - box_xyxy[3]), 0)
    if context > 0:
        alpha_x, alpha_y = np.clip(1 - out_x / context, 0, 1), np.clip(1 - out_y / context, 0, 1)
    else:
        alpha_x, alpha_y = (out_x == 0).astype(np.float32), (out_y == 0).astype(np.float32)
    return (alpha_y[:, None] * alpha_x[None, :]).astype(np.float32)  # (h, w)


class TinyCopyPaste(MixTransform):
    """Paste copies of tiny objects of other training images (and optionally of the image itself) into free
    places of the image: oversampling of tiny (and, with ``class_balance``, rare) objects without masks.

    A candidate is an object of a source with its longer side ``<= max_object_size`` and both sides
    ``>= min_box_size`` px, whose margin (its box plus ``context`` px on each side, rounded outwards to the pixel
    grid) contains no part of another object or ignore region of its source (that part would be pasted without
    a box). Ignore regions are never pasted. Each paste is placed at a whole-pixel shift (the pixels are
    copied, never resampled) at a random place where its whole margin lies inside the image and overlaps no
    object box, ignore region or earlier paste's margin; the part of the margin inside the source image is
    blended in with an opacity that is 1 on the pixels whose centre is inside the box and falls linearly to 0
    across the ``context`` margin, so no hard rectangle is left. A paste with no free place after ``max_tries``
    random places is not made.

    The output keeps the input objects unchanged and in order, followed by the pasted ones:
    ``len(out boxes) == len(in boxes) + pasted``; ``ignore_xyxy`` and ``num_dropped`` are the input's (objects of
    the sources that are not pasted are not part of this sample, so they are not counted as dropped).

    Args:
        p: probability that it is applied to a sample.
        num_sources: other raw samples drawn (by the dataset) as sources of objects.
        include_self: also take candidates from the image itself.
        max_object_size: a candidate's longer side is at most this (px).
        min_box_size: a candidate's shorter side is at least this (px; pasting an object that the per-image
            transform would turn into an ignore region is pointless).
        context: margin (px) copied around the box and used as the soft edge.
        num_paste: ``(min, max)`` pastes per image, drawn uniformly (inclusive); fewer if there are fewer
            candidates (a candidate is pasted at most once) or free places.
        class_balance: draw candidates with probability inversely proportional to their class's frequency
            among the candidates (each class is then equally likely), instead of uniformly.
        max_tries: random places tried for each paste.
    """

    def __init__(
        self,
        p: float = 0.5,
        num_sources: int = 2,
        include_self: bool = True,
        max_object_size: float = 16.0,
        min_box_size: float = 2.0,
        context: int = 2,
        num_paste: tuple[int, int] = (1, 8),
        class_balance: bool = True,
        max_tries: int = 16,
    ):
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"p is a probability, got {p}")
        if num_sources < 0 or (num_sources == 0 and not include_self):
            raise ValueError(f"no source of objects: num_sources={num_sources}, include_self={include_self}")
        low, high = num_paste
        if not 0 <= low <= high:
            raise ValueError(f"num_paste must be (min, max) with 0 <= min <= max, got {num_paste}")
        if not 0 <= min_box_size <= max_object_size:
            raise ValueError(f"need 0 <= min_box_size <= max_object_size, got {min_box_size}, {max_object_size}")
        if context < 0 or max_tries < 1:
            raise ValueError(f"need context >= 0 and max_tries >= 1, got {context}, {max_tries}")
        self.p, self.num_sources, self.include_self = p, num_sources, include_self
        self.max_object_size, self.min_box_size, self.context = float(max_object_size), float(min_box_size), context
        self.num_paste, self.class_balance, self.max_tries = (int(low), int(high)), class_balance, max_tries

    def candidates(self, raw: RawSample) -> tuple[np.ndarray, np.ndarray]:
        """The objects of ``raw`` that may be pasted: ``(indices (C,), margins_xyxy (C, 4) int64)``, the margin
        being the box plus ``context`` px on each side, rounded outwards to the pixel grid (not clipped to the
        image: the part inside the image is the patch that gets copied)."""
        boxes_xyxy = np.asarray(raw["boxes_xyxy"], np.float32).reshape(-1, 4)
        ignore_xyxy = np.asarray(raw["ignore_xyxy"], np.float32).reshape(-1, 4)
        wh = boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]  # (N, 2)
        tiny = (wh.max(1) <= self.max_object_size) & (wh.min(1) >= self.min_box_size)
        margins_xyxy = np.concatenate(
            [np.floor(boxes_xyxy[:, :2] - self.context), np.ceil(boxes_xyxy[:, 2:] + self.context)], 1
        ).astype(np.int64)  # (N, 4)
        # A patch must not carry a fragment of a neighbour (it would be pasted without a box): test each margin
        # against every other box of the image and every ignore region, all at once.
        touches = overlap_matrix(margins_xyxy, boxes_xyxy)  # (N, N)
        np.fill_diagonal(touches, False)  # its own box
        clean = ~touches.any(1) & ~overlaps_any(margins_xyxy, ignore_xyxy)
        keep = np.flatnonzero(tiny & clean)
        return keep, margins_xyxy[keep]

    def __call__(self, raw: RawSample, sources: list[RawSample], rng: np.random.Generator) -> RawSample:
        pool = ([raw] if self.include_self else []) + list(sources)
        found = [(s, *self.candidates(s)) for s in pool]
        source_of = np.concatenate([np.full(len(idx), k) for k, (_, idx, _) in enumerate(found)]).astype(np.int64)
        index = np.concatenate([idx for _, idx, _ in found]).astype(np.int64)  # (C,) row in its source
        margins_xyxy = np.concatenate([m for _, _, m in found]).reshape(-1, 4)  # (C, 4) in its source
        labels = np.concatenate([np.asarray(s["labels"], np.int64).reshape(-1)[i] for s, i, _ in found])  # (C,)

        image = raw["image"].copy()  # the input may be shared (a source can be the same record)
        boxes_xyxy = np.asarray(raw["boxes_xyxy"], np.float32).reshape(-1, 4)
        out_labels = np.asarray(raw["labels"], np.int64).reshape(-1)
        ignore_xyxy = np.asarray(raw["ignore_xyxy"], np.float32).reshape(-1, 4)
        wanted = int(rng.integers(self.num_paste[0], self.num_paste[1] + 1))
        if wanted == 0 or len(index) == 0:
            return {**raw, "image": image}

        if self.class_balance:
            _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
            weights = 1.0 / counts[inverse]  # (C,): each class gets the same total probability
        else:
            weights = np.ones(len(labels))
        chosen = rng.choice(len(labels), size=min(wanted, len(labels)), replace=False, p=weights / weights.sum())

        height, width = image.shape[:2]
        occupied_xyxy = np.concatenate([boxes_xyxy, ignore_xyxy])  # (N + M, 4); pastes' margins are added
        pasted_xyxy, pasted_labels = [], []
        for c in chosen:  # a handful of pastes; the checks inside are vectorised
            source = found[source_of[c]][0]
            margin_w, margin_h = margins_xyxy[c, 2:] - margins_xyxy[c, :2]
            if margin_w > width or margin_h > height:
                continue
            # the whole margin goes inside the image, on free ground
            tops_left = rng.integers(0, [width - margin_w + 1, height - margin_h + 1], size=(self.max_tries, 2))
            tries_xyxy = np.concatenate([tops_left, tops_left + [margin_w, margin_h]], 1).astype(np.float32)  # (T, 4)
            free = np.flatnonzero(~overlaps_any(tries_xyxy, occupied_xyxy))
            if len(free) == 0:
                continue
            dx, dy = (int(v) for v in tops_left[free[0]] - margins_xyxy[c, :2])  # whole-pixel shift
            # the patch: the part of the margin inside the source image
            src_h, src_w = source["image"].shape[:2]
            x0, y0 = max(int(margins_xyxy[c, 0]), 0), max(int(margins_xyxy[c, 1]), 0)
            x1, y1 = min(int(margins_xyxy[c, 2]), src_w), min(int(margins_xyxy[c, 3]), src_h)
            box_xyxy = np.asarray(source["boxes_xyxy"], np.float32)[index[c]]
            alpha = feather_alpha(box_xyxy, np.array([x0, y0, x1, y1]), self.context)[..., None]  # (h, w, 1)
            src = source["image"][y0:y1, x0:x1].astype(np.float32)  # (h, w, 3)
            dst = image[y0 + dy : y1 + dy, x0 + dx : x1 + dx].astype(np.float32)  # (h, w, 3)
            # dst + 1 * (src - dst) == src exactly in float32 for 8-bit values: the box's pixels are copied as is.
            image[y0 + dy : y1 + dy, x0 + dx : x1 + dx] = np.rint(dst + alpha * (src - dst)).astype(image.dtype)
            pasted_xyxy.append(box_xyxy + np.array([dx, dy, dx, dy], np.float32))
            pasted_labels.append(labels[c])
            occupied_xyxy = np.concatenate([occupied_xyxy, tries_xyxy[free[:1]]])

        if not pasted_xyxy:
            return {**raw, "image": image}
        return {
            **raw,
            "image": image,
            "boxes_xyxy": np.concatenate([boxes_xyxy, np.stack(pasted_xyxy)]).astype(np.float32),  # (N + P, 4)
            "labels": np.concatenate([out_labels, np.asarray(pasted_labels, np.int64)]),  # (N + P,)
            "ignore_xyxy": ignore_xyxy,
            "num_dropped": int(raw.get("num_dropped", 0)),
        }
