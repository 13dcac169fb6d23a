"""A cohort through one open runtime: :func:`iterate_cases`, behind
:meth:`segvol_rt.SegVolRuntime.segment_cases`.

Each scan (a NIfTI path, a DICOM folder or file) is read, preprocessed and
segmented for the same targets, then released before the next, so memory
stays that of one scan whatever the cohort's length; the graphs and the
encoded phrases are shared by all. A scan that fails with a
:class:`~segvol_rt.errors.SegVolError` (unreadable, not CT, a prompt out of
its bounds) gives a :class:`CaseResult` with its one-line ``error`` and the
next scan starts; any other exception propagates.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from segvol_rt.errors import SegVolError


class CaseRunner(Protocol):
    """What :func:`iterate_cases` needs of a runtime (:class:`segvol_rt.SegVolRuntime` has it)."""

    def set_volume(self, volume: Any, affine: Any = None, reorient: str | None = None, series: str | None = None) -> None: ...

    def segment_many(self, targets: Sequence[Any]) -> list[Any]: ...

    def release_volume(self) -> None: ...


@dataclass
class CaseResult:
    """One scan's outcome: ``segmentations`` (one :class:`segvol_rt.Segmentation`
    per target, in order; masks ``(I, J, K)`` in that scan's voxel grid) or the
    ``error`` line, and the seconds it took."""

    scan: str
    segmentations: list[Any] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def iterate_cases(rt: CaseRunner, scans: Iterable[str | os.PathLike[str]], targets: Sequence[Any],
                  reorient: str | None = None) -> Iterator[CaseResult]:
    """Yield one :class:`CaseResult` per scan, in order (see the module docstring)."""
    targets = list(targets)
    for scan in scans:
        start = time.perf_counter()
        try:
            rt.set_volume(scan, reorient=reorient)
            result = CaseResult(str(scan), rt.segment_many(targets))
        except SegVolError as exc:
            result = CaseResult(str(scan), error=" ".join(str(exc).split()))
        finally:
            rt.release_volume()
        result.seconds = time.perf_counter() - start
        yield result
