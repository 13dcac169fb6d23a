"""DICOMweb pull (WADO-RS) and push (STOW-RS) for ``segvol-rt infer URL --store URL``.

* The input is a series URL, ``https://HOST/dicom-web/studies/STUDY/series/SERIES``;
  its instances are fetched with ``application/dicom; transfer-syntax=*`` (the
  stored syntax: Orthanc 1.10 cannot transcode JPEG 2000, and a transcode
  would be a change we did not ask for).
* The SEG is written and validated locally first (a store cannot be rolled
  back), then stored last with STOW-RS.
* Credentials come from ``--dicomweb-auth USER:PASSWORD`` or the environment
  variable :data:`AUTH_ENV`, never from the URL: a URL with ``user:password@``
  is refused, as URLs end up in logs, sidecars and error messages.

Dependencies: dicomweb-client and requests (the ``dicom`` extra), lazily.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from segvol_rt._optional import require
from segvol_rt.errors import SegVolError

AUTH_ENV = "SEGVOL_RT_DICOMWEB_AUTH"
STORED_SYNTAX = (("application/dicom", "*"),)
_SERIES = re.compile(r"^(?P<base>https?://[^?#]+?)/studies/(?P<study>[^/?#]+)/series/(?P<series>[^/?#]+)/?$")


@dataclass(frozen=True)
class SeriesURL:
    """A DICOMweb series: the service root and the study and series UIDs."""

    base: str
    study: str
    series: str

    def __str__(self) -> str:
        return f"{self.base}/studies/{self.study}/series/{self.series}"


def is_url(text: str) -> bool:
    return str(text).lower().startswith(("http://", "https://"))


def _no_userinfo(url: str, what: str) -> None:
    if "@" in urlsplit(url).netloc:
        raise SegVolError(f"{what}: put no credentials in the URL (it gets logged); "
                          f"use --dicomweb-auth USER:PASSWORD or the {AUTH_ENV} environment variable")


def parse_series_url(url: str) -> SeriesURL:
    """``.../studies/STUDY/series/SERIES`` -> :class:`SeriesURL`; raises SegVolError."""
    _no_userinfo(url, "the series URL")
    match = _SERIES.match(str(url).strip())
    if match is None:
        raise SegVolError(f"{url} is not a DICOMweb series URL (expected https://HOST/dicom-web/studies/STUDY/series/SERIES)")
    return SeriesURL(match["base"], match["study"], match["series"])


def parse_store_url(url: str) -> str:
    """The service root for STOW-RS (``https://HOST/dicom-web``)."""
    _no_userinfo(url, "--store")
    if not is_url(url):
        raise SegVolError(f"--store {url} is not an http(s) DICOMweb URL (e.g. https://HOST/dicom-web)")
    return str(url).rstrip("/")


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    """``USER:PASSWORD`` -> (user, password); None for no authentication."""
    if auth is None or auth == "":
        return None
    user, sep, password = auth.partition(":")
    if not sep or not user:
        raise SegVolError(f"DICOMweb credentials must be USER:PASSWORD (--dicomweb-auth or {AUTH_ENV})")
    return user, password


def _client(base: str, auth: tuple[str, str] | None) -> Any:
    requests = require("requests")
    web = require("dicomweb_client.api")
    session = requests.Session()
    if auth is not None:
        session.auth = auth
    return web.DICOMwebClient(url=base, session=session)


def _failed(what: str, url: str, exc: BaseException) -> SegVolError:
    response = getattr(exc, "response", None)
    status = getattr(response, "status_code", None)
    reason = f"HTTP {status}" if status is not None else f"{exc.__class__.__name__}: {' '.join(str(exc).split())[:200]}"
    return SegVolError(f"{what} {url} failed: {reason}")


def fetch_series(url: SeriesURL, auth: tuple[str, str] | None) -> list[Any]:
    """Every instance of the series, as pydicom datasets in their stored transfer syntax."""
    client = _client(url.base, auth)
    try:
        datasets = client.retrieve_series(url.study, url.series, media_types=STORED_SYNTAX)
    except Exception as exc:  # noqa: BLE001 - requests and dicomweb-client raise many types
        raise _failed("WADO-RS retrieve of", str(url), exc) from exc
    if not datasets:
        raise SegVolError(f"WADO-RS retrieve of {url} returned no instances")
    return list(datasets)


def store(base: str, auth: tuple[str, str] | None, files: Sequence[Path]) -> list[str]:
    """STOW-RS the files (already written and validated); their SOP Instance UIDs."""
    pydicom = require("pydicom")
    datasets = [pydicom.dcmread(p) for p in files]
    client = _client(base, auth)
    try:
        response = client.store_instances(datasets)
    except Exception as exc:  # noqa: BLE001 - requests and dicomweb-client raise many types
        raise _failed("STOW-RS store to", base, exc) from exc
    failed = list(getattr(response, "FailedSOPSequence", None) or [])
    if failed:  # HTTP 200/202 with a failure list: the server refused some instances
        reasons = ", ".join(f"{getattr(f, 'ReferencedSOPInstanceUID', '?')} (reason {getattr(f, 'FailureReason', '?')})"
                            for f in failed)
        raise SegVolError(f"STOW-RS store to {base}: the server refused {len(failed)} instance(s): {reasons}; "
                          "the local files are kept")
    stored = {str(getattr(r, "ReferencedSOPInstanceUID", "")) for r in (getattr(response, "ReferencedSOPSequence", None) or [])}
    missing = [str(ds.SOPInstanceUID) for ds in datasets if stored and str(ds.SOPInstanceUID) not in stored]
    if missing:
        raise SegVolError(f"STOW-RS store to {base}: the server did not confirm {', '.join(missing)}; the local files are kept")
    return [str(ds.SOPInstanceUID) for ds in datasets]
