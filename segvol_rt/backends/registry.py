"""The backend registry: what each backend declares, in one place.

A backend is known to the rest of segvol-rt through one :class:`BackendEntry`:
its name, the devices and precisions it runs, the devices ``auto`` may pick
it on (in order), a :attr:`~BackendEntry.probe` that says why it cannot run
here (cheap: no session is opened), the device it takes when asked for by
name with ``device="auto"``, and :attr:`~BackendEntry.open`. The type is
:mod:`segvol_rt.backends.backend_entry`'s, the built-in entries are
:mod:`segvol_rt.backends.entries`;
:mod:`segvol_rt.backends.select` iterates them, in :data:`REGISTRY` order
(the ``auto`` order), and never names a backend itself.

Whether an opened backend's calls may overlap, and its threads, are
attributes of the opened backend (:class:`segvol_rt.backends.base.Backend`),
since they depend on how it was opened (ONNX Runtime on the CPU may, on CUDA
with IO binding it may not).
"""

from __future__ import annotations

from segvol_rt.backends.backend_entry import BackendEntry
from segvol_rt.backends.entries import BUILT_IN

# Built-in backends first, in ``auto`` order; :func:`register` adds after them.
REGISTRY: dict[str, BackendEntry] = {e.name: e for e in BUILT_IN}


def register(entry: BackendEntry) -> BackendEntry:
    """Add ``entry`` (after the ones already there: ``auto`` tries it later)."""
    REGISTRY[entry.name] = entry
    return entry


def entries() -> tuple[BackendEntry, ...]:
    """Every registered backend, built-in ones first, in ``auto`` order."""
    return tuple(REGISTRY.values())


def names() -> tuple[str, ...]:
    """The backend names ``--backend`` accepts (``auto`` first)."""
    return ("auto", *(e.name for e in entries()))


def entry(name: str) -> BackendEntry:
    """The entry of a registered backend (``name`` was checked by the caller)."""
    return REGISTRY[name]
