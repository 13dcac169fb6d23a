"""Console reporting and runtime loading shared by the commands (``infer``,
``demo``): what a run tells its user (:class:`Reporter`, printed by
:class:`ConsoleReporter`; stdout lines through :func:`say`, which a closed
stdout cannot break), :func:`load_runtime`, which opens the given artifacts
or the demo model's (exported on first use, :func:`demo_artifacts`), and the
:func:`provenance` every output records.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segvol_rt._optional import require
from segvol_rt.demo.model import (  # noqa: F401  (re-exported: the cache's names)
    CACHE_ENV,
    DEMO_ARTIFACTS_ENV,
    DEMO_BANNER,
    WEIGHTS_FILE,
    cache_root,
    cached_demo_artifacts,
    demo_cache_dir,
    demo_checkpoint_dir,
)
from segvol_rt.errors import SegVolError
from segvol_rt.runtime import SegVolRuntime

Say = Callable[[str], None]


# -- stdout --------------------------------------------------------------------------------

_stdout_closed = False


def say(line: str) -> None:
    """Print ``line`` on stdout. When the reader has gone (``segvol-rt infer ... | head -1``)
    the printing stops and the run goes on: stdout is pointed at the null device, as
    Python's documentation on SIGPIPE recommends, so no later write or the final flush fails."""
    global _stdout_closed
    if _stdout_closed:
        return
    try:
        print(line, flush=True)
    except BrokenPipeError:
        _stdout_closed = True
        silence_stdout()


def silence_stdout() -> None:
    """Point file descriptor 1 at the null device (what is still buffered goes there)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real descriptor (captured): drop the stream
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the process


# -- progress and messages -------------------------------------------------------------


class Reporter:
    """What a run tells its user. This base is silent; :class:`ConsoleReporter` prints."""

    def note(self, line: str) -> None:
        """An information line (stdout)."""

    def warn(self, line: str) -> None:
        """A warning line (stderr)."""

    def log(self, line: str) -> None:
        """A progress message of a long step (stderr), e.g. the demo model's export."""

    def stage(self, description: str, total: int = 1) -> None:
        """A new progress stage of ``total`` steps."""

    def advance(self, description: str | None = None) -> None:
        """One step of the current stage done."""

    def close(self) -> None:
        """Remove the progress display."""


class ConsoleReporter(Reporter):
    """stdout notes, stderr warnings and a rich progress bar on stderr when it is a terminal.

    ``quiet`` keeps warnings only; results the caller prints are its own business."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._progress: Any = None
        self._task: Any = None
        if not quiet and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                SpinnerColumn,
                TextColumn,
                TimeElapsedColumn,
            )

            self._progress = Progress(
                SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
                redirect_stdout=False, redirect_stderr=False,
            )
            self._progress.start()

    def note(self, line: str) -> None:
        if self.quiet:
            return
        if self._progress is not None and sys.stdout.isatty():
            # same terminal: print above the live bar instead of through it
            self._progress.console.print(line, markup=False, highlight=False, soft_wrap=True)
            return
        say(line)

    def warn(self, line: str) -> None:
        if self._progress is not None:
            self._progress.console.print(f"warning: {line}", markup=False, highlight=False)
        else:
            print(f"warning: {line}", file=sys.stderr, flush=True)

    def log(self, line: str) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, file=sys.stderr, flush=True)

    def stage(self, description: str, total: int = 1) -> None:
        if self._progress is None:
            return
        if self._task is not None:  # one line: the stage running now
            self._progress.update(self._task, visible=False)
        self._task = self._progress.add_task(description, total=total)

    def advance(self, description: str | None = None) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, **({"description": description} if description else {}))

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


# -- the model ---------------------------------------------------------------------


def load_runtime(artifacts: str | None, backend: str, device: str, report: Reporter, threads: int | None = None,
                 cache_bytes: int | None = None, precision: str | None = None) -> SegVolRuntime:
    """The runtime on ``artifacts`` (default: the demo model, exported on demand).

    ``threads``: CPU threads of the backend (None: all cores); ``cache_bytes``:
    the runtime's embedding-cache bound (None: its default); ``precision``:
    fp32 or fp16 (None: the backend's default). The first line printed names
    the backend and the precision that runs, and the voxel orientation the
    model declares (its scans are reoriented to it)."""
    options: dict[str, Any] = {"backend": backend, "device": device, "threads": threads, "precision": precision}
    if cache_bytes is not None:  # else the runtime's own default
        options["cache_bytes"] = cache_bytes
    if artifacts is None:
        directory = demo_artifacts(say=report.log)
        rt = SegVolRuntime.load(directory, **options)
        _note_load(rt, report, directory)
        report.note(DEMO_BANNER)
        return rt
    check_artifacts_dir(artifacts)
    rt = SegVolRuntime.load(artifacts, **options)
    _note_load(rt, report, artifacts)
    return rt


def _note_load(rt: SegVolRuntime, report: Reporter, artifacts: str | os.PathLike[str]) -> None:
    """The first line, and what OpenVINO compiled while loading (a first run on this machine)."""
    report.note(first_line(rt))
    compiled = compiled_now(rt)
    if compiled:
        report.note(f"OpenVINO compiled {' and '.join(compiled)} for this machine (a first run; later runs load them "
                    f"from the model cache): `segvol-rt build --artifacts {shlex.quote(str(artifacts))} --backend "
                    f"openvino --precision {rt.provenance['precision']}` compiles every graph ahead of time")


def compiled_now(rt: SegVolRuntime) -> list[str]:
    """The graphs OpenVINO compiled while ``rt`` loaded (none came from its model cache)."""
    from segvol_rt.backends.openvino import OpenVinoBackend  # the module imports openvino only when it opens

    backend = rt.backend
    return [g for g, hit in backend.from_cache.items() if not hit] if isinstance(backend, OpenVinoBackend) else []


def first_line(rt: SegVolRuntime) -> str:
    """``backend: ...``, and the voxel orientation the model declares when it declares one."""
    line = f"backend: {rt.backend_reason}"
    if rt.voxel_orientation is not None:
        line += (f"; the model declares voxel orientation {rt.voxel_orientation}: each scan is reoriented to it"
                 " and the masks mapped back")
    return line


def check_artifacts_dir(artifacts: str | os.PathLike[str]) -> None:
    """A one-line error when ``artifacts`` is no directory (before any heavier check)."""
    if not Path(artifacts).is_dir():
        raise SegVolError(
            f"artifacts directory {artifacts} does not exist or is not a directory (write one with `segvol-rt export`)"
        )


def check_choices(backend: str, device: str, precision: str | None = None) -> None:
    """``--backend``, ``--device`` and ``--precision`` are known names (before any file is read)."""
    from segvol_rt.backends.select import check_names

    check_names(backend, device, precision)


def provenance(rt: SegVolRuntime, window_prompts: str) -> dict[str, Any]:
    """What produced an output: the runtime's :attr:`~segvol_rt.runtime.SegVolRuntime.provenance`
    (version, checkpoint sha256, backend, device, precision, threads) and the window-prompts mode."""
    return {**rt.provenance, "window_prompts": window_prompts}


def provenance_line(prov: dict[str, Any]) -> str:
    """``segvol-rt 0.1.0, checkpoint sha256 <hex>, onnxruntime on cpu, fp32, 8 threads, window prompts official``."""
    parts = [f"segvol-rt {prov['segvol_rt_version']}", f"checkpoint sha256 {prov['checkpoint_sha256'] or 'unknown'}",
             f"{prov['backend']} on {prov['device']}", str(prov["precision"])]
    if prov.get("threads"):
        parts.append(f"{prov['threads']} threads")
    return ", ".join([*parts, f"window prompts {prov['window_prompts']}"])




def demo_artifacts(say: Say | None = None) -> Path:
    """The demo model's artifacts directory, exported first if needed.

    Raises :class:`segvol_rt.errors.MissingDependencyError` naming the
    ``export`` extra when an export is needed and torch or onnx is missing."""
    found = cached_demo_artifacts()
    return found if found is not None else export_demo(demo_cache_dir(), say)


def export_demo(target: Path, say: Say | None = None) -> Path:
    """Export the shipped demo checkpoint into ``target`` (needs the ``export`` extra)."""
    for module in ("torch", "onnx"):
        require(module)  # the error names the `export` extra
    from segvol_rt.export.exporter import export_demo_model

    return export_demo_model(demo_checkpoint_dir(), target, say)
