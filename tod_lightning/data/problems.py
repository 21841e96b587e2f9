"""Bad input: one error type and a log that either raises or counts (the ``strict`` setting).

Every reader and dataset reports what it finds in an annotation file or an image folder through a
:class:`ProblemLog`:

- :meth:`ProblemLog.error`: a record that cannot be used (a box with NaN, an unknown category, a missing
  image...). With ``strict=True`` it raises :class:`AnnotationError` naming the file and the record; with
  ``strict=False`` the record is skipped, and the skip is counted and kept for the end-of-run report.
- :meth:`ProblemLog.fix`: a record that is used after a documented correction (a box crossing the image
  border is clipped to it). Counted in both modes, never raised.
- :meth:`ProblemLog.warn`: something legal but suspicious (an annotation file with no annotations at all).

No torch, no Lightning.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterator

# Problem kinds (the ``kind`` of a :class:`Problem`): stable names, used as counter keys in logs and reports.
EMPTY_FILE = "empty_file"  # zero bytes, or no images at all
MALFORMED_FILE = "malformed_file"  # not parseable (not JSON, wrong columns, ...)
MALFORMED_RECORD = "malformed_record"  # a record missing required fields or of the wrong type
DUPLICATE_IMAGE_ID = "duplicate_image_id"
DUPLICATE_CATEGORY_ID = "duplicate_category_id"
UNKNOWN_IMAGE_ID = "unknown_image_id"  # an annotation pointing at an image that is not in the file
UNKNOWN_CATEGORY = "unknown_category"
NON_FINITE_BOX = "non_finite_box"  # NaN or inf coordinates
NON_POSITIVE_BOX = "non_positive_box"  # width or height <= 0
BOX_OUTSIDE_IMAGE = "box_outside_image"  # entirely outside the image
BOX_CLIPPED = "box_clipped"  # partly outside: clipped to the image (a fix, not an error)
BAD_AREA = "bad_area"  # an unusable COCO "area" (non-finite, <= 0): replaced by w * h (a fix)
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
IMAGE_SIZE_MISMATCH = "image_size_mismatch"  # the decoded size differs from the annotation file's
NO_ANNOTATIONS = "no_annotations"  # a warning: a file with images but not a single annotation


class AnnotationError(ValueError):
    """A record (or a whole file) that cannot be used. The message names the file and the record."""


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        kind: one of the module-level kind names (e.g. ``"unknown_category"``).
        where: the file and the record, e.g. ``"train.json: annotation id=17"`` or ``"labels/0001.txt:3"``.
        message: what is wrong, with the offending value.
        action: what was done: ``"skipped annotation"``, ``"skipped image"``, ``"clipped"``, ``"warning"``...
    """

    kind: str
    where: str
    message: str
    action: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} [{self.kind}; {self.action}]"


class ProblemLog:
    """Collects the problems of one dataset split; raises on errors when ``strict``.

    Args:
        strict: ``True``: :meth:`error` raises :class:`AnnotationError`. ``False``: it records a skip.
    """

    def __init__(self, strict: bool = True):
        self.strict = strict
        self.problems: list[Problem] = []

    def error(self, kind: str, where: str, message: str, action: str = "skipped annotation") -> None:
        """An unusable record: raise (strict) or record that it was skipped with ``action``."""
        if self.strict:
            raise AnnotationError(f"{where}: {message}")
        self.problems.append(Problem(kind, where, message, action))

    def fix(self, kind: str, where: str, message: str, action: str) -> None:
        """A record used after a documented correction (e.g. ``action="clipped"``); recorded in both modes."""
        self.problems.append(Problem(kind, where, message, action))

    def warn(self, kind: str, where: str, message: str) -> None:
        """Legal but suspicious; recorded in both modes."""
        self.problems.append(Problem(kind, where, message, "warning"))

    def counts(self) -> dict[str, int]:
        """``{kind: count}``, in first-seen order."""
        return dict(collections.Counter(p.kind for p in self.problems))

    def count(self, kind: str) -> int:
        return sum(p.kind == kind for p in self.problems)

    def extend(self, other: "ProblemLog") -> None:
        self.problems.extend(other.problems)

    def format(self, limit: int = 20) -> str:
        """A human-readable summary: counts per kind and action, then the first ``limit`` problems."""
        if not self.problems:
            return "no problems found"
        by_kind = collections.Counter((p.kind, p.action) for p in self.problems)
        lines = [f"{n:>7}  {kind} ({action})" for (kind, action), n in by_kind.items()]
        lines += [f"  {p}" for p in self.problems[:limit]]
        if len(self.problems) > limit:
            lines.append(f"  ... and {len(self.problems) - limit} more")
        return "\n".join(lines)

    def __iter__(self) -> Iterator[Problem]:
        return iter(self.problems)

    def __len__(self) -> int:
        return len(self.problems)
