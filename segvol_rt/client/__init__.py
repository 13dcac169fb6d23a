"""Torch-free client of ``segvol-rt serve`` (the ``client`` extra).

:class:`SegVolClient` (``segvol_rt.client.client``) talks to the server;
:mod:`segvol_rt.wire` is the wire format both sides share.
Importing this package loads neither tritonclient nor any backend.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from segvol_rt.client.client import RemoteSession, SegVolClient, SessionGoneError

__all__ = ["RemoteSession", "SegVolClient", "SessionGoneError"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from segvol_rt.client import client

        return getattr(client, name)
    raise AttributeError(name)
