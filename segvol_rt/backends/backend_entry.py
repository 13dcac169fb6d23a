"""What a backend declares to the rest of segvol-rt: :class:`BackendEntry`
(and the :class:`Opener` it carries). The entries themselves are in
:mod:`segvol_rt.backends.entries`, the registry of them in
:mod:`segvol_rt.backends.registry`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from segvol_rt.backends.base import Backend
    from segvol_rt.io.artifacts import Artifacts

DEVICES = ("cpu", "cuda")


class Opener(Protocol):
    """Opens a backend on ``device`` (``"cpu"`` or ``"cuda"``); raises
    :class:`SegVolError` naming what is missing when it cannot."""

    def __call__(self, artifacts: Artifacts, device: str, *, checkpoint: str | os.PathLike[str] | None = None,
                 threads: int | None = None, precision: str | None = None) -> Backend: ...


@dataclass(frozen=True)
class BackendEntry:
    """What one backend declares (see the module docstring).

    Attributes:
        name: the ``--backend`` name.
        devices: the devices it runs on.
        precisions: what it can compute in (the names of
            :data:`segvol_rt.io.artifacts.PRECISIONS`); whether this machine and
            these artifacts offer one is :attr:`open`'s to say.
        auto_devices: the devices ``backend="auto"`` tries it on, in order
            (empty: only when asked for by name).
        probe: ``(artifacts, device) -> why it cannot run there, or None``;
            ``auto`` skips the entry with that reason without opening it. A
            CUDA device's presence is checked by the selection for every entry.
        open: the :class:`Opener`.
        default_device: ``() -> (device, why)`` when asked for by name with
            ``device="auto"``.
        reads: ``(artifacts, precision) -> the (relative path, sha256) of the
            manifest's files it reads besides the support files`` (its graphs at that
            precision, or its engines), which a verifying load checks before it opens
            the backend (:func:`segvol_rt.backends.select.open_backend`); None is
            the backend's default precision.
    """

    name: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    auto_devices: tuple[str, ...]
    probe: Callable[[Artifacts, str], str | None]
    open: Opener
    default_device: Callable[[], tuple[str, str]]
    reads: Callable[[Artifacts, str | None], list[tuple[str, str]]]
