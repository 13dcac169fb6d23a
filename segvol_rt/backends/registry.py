"""The backend registry: what each backend declares, in one place.

A backend is known to the rest of segvol-rt through one :class:`BackendEntry`:
its name, the devices and precisions it runs, the devices ``auto`` may pick
it on (in order), a :attr:`~BackendEntry.probe` that says why it cannot run
here (cheap: no session is opened), the device it takes when asked for by
name with ``device="auto"``, and :attr:`~BackendEntry.open`. The entries of
the built-in backends live in :mod:`segvol_rt.backends.entries`;
:mod:`segvol_rt.backends.select` iterates them, in :data:`REGISTRY` order
(the ``auto`` order), and never names a backend itself.

Whether an opened backend's calls may overlap, and its threads, are
attributes of the opened backend (:class:`segvol_rt.backends.base.Backend`),
since they depend on how it was opened (ONNX Runtime on the CPU may, on CUDA
with IO binding it may not).
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
    """

    name: str
    devices: tuple[str, ...]
    precisions: tuple[str, ...]
    auto_devices: tuple[str, ...]
    probe: Callable[[Artifacts, str], str | None]
    open: Opener
    default_device: Callable[[], tuple[str, str]]


REGISTRY: dict[str, BackendEntry] = {}


def register(entry: BackendEntry) -> BackendEntry:
    """Add ``entry`` (after the ones already there: ``auto`` tries it later)."""
    REGISTRY[entry.name] = entry
    return entry


def entries() -> tuple[BackendEntry, ...]:
    """Every registered backend, built-in ones first, in ``auto`` order."""
    import segvol_rt.backends.entries  # noqa: F401 - registers the built-in backends

    return tuple(REGISTRY.values())


def names() -> tuple[str, ...]:
    """The backend names ``--backend`` accepts (``auto`` first)."""
    return ("auto", *(e.name for e in entries()))


def entry(name: str) -> BackendEntry:
    """The entry of a registered backend (``name`` was checked by the caller)."""
    entries()
    return REGISTRY[name]
