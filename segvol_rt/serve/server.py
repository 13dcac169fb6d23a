"""``segvol-rt serve``: the Triton Inference Server (through PyTriton) with the
session models of :mod:`segvol_rt.serve.models`.

Triton gives the HTTP and gRPC endpoints, health (``/v2/health/ready``) and
metadata; PyTriton runs the models' Python callables in this process, behind
Triton's Python backend stub. One :class:`~segvol_rt.runtime.SegVolRuntime`
backend is opened and shared by every session (see :func:`open_first_runtime`
for which backends may run calls at once).

Safety: the default host is loopback; any other host needs an API key, which
Triton itself checks (``--http-restricted-api``/``--grpc-restricted-protocol``
through PyTriton's security config, header ``triton-access-token``) on every
endpoint but health. Metrics are off unless asked for, and then bound to the
serving host. Uploaded volumes stay in memory (PyTriton moves tensors through
shared memory, ``/dev/shm``, a RAM file system); logs carry session ids and
voxel counts only.

Runs in the ``serve`` extra's environment (PyTriton needs numpy<2).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segvol_rt import wire as W
from segvol_rt._optional import require
from segvol_rt.errors import SegVolError
from segvol_rt.serve.models import Handlers, ld_library_path_with, served
from segvol_rt.serve.sessions import SessionLimits, SessionStore, Sweeper

API_KEY_ENV = "SEGVOL_API_KEY"
LOG = logging.getLogger("segvol_rt.serve")

@dataclass(frozen=True)
class ServeOptions:
    """What ``segvol-rt serve`` is asked; see ``segvol-rt serve --help``."""

    artifacts: Path
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int | None = None  # None: metrics off
    instances: int = 2
    backend: str = "auto"
    device: str = "auto"
    precision: str | None = None
    threads: int | None = None
    limits: SessionLimits = SessionLimits()
    api_key: str | None = None
    allow_path_root: Path | None = None
    workspace: Path | None = None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(opts: ServeOptions) -> None:
    """Refuse what the server must not do (before anything starts)."""
    if not is_loopback(opts.host) and not opts.api_key:
        raise SegVolError(f"--host {opts.host} is not loopback: serving beyond this machine needs an API key "
                          f"(--api-key or ${API_KEY_ENV})")
    if opts.api_key is not None:
        W.check_api_key(opts.api_key)  # the client's own check: a key one accepts, the other does
    ports = [p for p in (opts.http_port, opts.grpc_port, opts.metrics_port) if p is not None]
    if len(set(ports)) != len(ports) or not all(0 < p < 65536 for p in ports):
        raise SegVolError(f"ports {ports} must be distinct, between 1 and 65535")
    if opts.instances < 1:
        raise SegVolError("--instances must be at least 1")


def check_ports_free(opts: ServeOptions) -> None:
    """Each port can be bound on ``opts.host`` now (Triton, failing to bind one
    later, would leave PyTriton waiting instead of exiting)."""
    import socket

    for name, port in (("--http-port", opts.http_port), ("--grpc-port", opts.grpc_port), ("--metrics-port", opts.metrics_port)):
        if port is None:
            continue
        family = socket.AF_INET6 if ":" in opts.host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((opts.host, port))
            except OSError as exc:
                raise SegVolError(f"{name} {port}: cannot listen on {opts.host}:{port} ({exc.strerror or exc})") from None


def runtime_options(opts: ServeOptions) -> dict[str, Any]:
    """Keyword arguments of SegVolRuntime.load (``precision`` None: the backend's default)."""
    return {"backend": opts.backend, "device": opts.device, "threads": opts.threads, "precision": opts.precision,
            "cache_bytes": opts.limits.cache_bytes, "text_cache_bytes": opts.limits.text_cache_bytes}


def open_first_runtime(opts: ServeOptions) -> Any:
    """The first :class:`~segvol_rt.runtime.SegVolRuntime`, loaded and verified
    now; every session's runtime shares its backend. A backend that does not
    declare its calls may overlap (``Backend.concurrent``: ONNX Runtime and
    OpenVINO on the CPU do; ONNX Runtime CUDA with IO binding, TensorRT's
    execution contexts and CUDA graphs, torch do not) runs one graph call at a
    time (:func:`segvol_rt.backends.wrap.shareable`)."""
    from segvol_rt.backends.wrap import shareable
    from segvol_rt.runtime import SegVolRuntime

    first = SegVolRuntime.load(opts.artifacts, **runtime_options(opts))
    first.backend = shareable(first.backend)
    return first


def triton_config(opts: ServeOptions) -> Any:
    pytriton_triton = require("pytriton.triton")
    metrics = opts.metrics_port is not None
    return pytriton_triton.TritonConfig(
        http_address=opts.host, http_port=opts.http_port, grpc_address=opts.host, grpc_port=opts.grpc_port,
        allow_metrics=metrics, allow_gpu_metrics=metrics, allow_cpu_metrics=metrics,
        metrics_address=opts.host if metrics else None, metrics_port=opts.metrics_port if metrics else None,
        exit_on_error=True, strict_readiness=True, log_verbose=0,
    )


def security_config(opts: ServeOptions) -> Any:
    """Triton's token check: with an API key, every endpoint but health needs it."""
    pytriton_triton = require("pytriton.triton")
    if opts.api_key is None:
        return None  # PyTriton's default: a random token guards its management endpoints
    endpoints = sorted(pytriton_triton.VALID_TRITON_ENDPOINTS - {"health"})
    return pytriton_triton.TritonSecurityConfig(access_token=opts.api_key, restricted_endpoints=endpoints)


def models_before_endpoints() -> Any:
    """PyTriton's lifecycle in which "ready" means the models can serve.

    By default PyTriton starts tritonserver on an empty model store and then
    loads each model through the repository API: in between, Triton's
    ``/v2/health/ready`` is already true (no model is loaded, so strict
    readiness has nothing to wait for) and every request is a 404 "unknown
    model". With a local model store and a deferred launch, :meth:`bind`
    writes the models' configurations into the store and tritonserver
    (``--model-control-mode=explicit --load-model=*``) loads them all before
    it opens its HTTP and gRPC endpoints: the endpoints, readiness included,
    exist only once the three models do. A request that arrives before
    PyTriton has connected a model's Python callable waits for it (the stub's
    request socket queues) rather than failing."""
    pytriton_triton = require("pytriton.triton")
    return pytriton_triton.TritonLifecyclePolicy(launch_triton_on_startup=False, local_model_store=True)


def bind_models(triton: Any, handlers: Handlers, instances: int) -> None:
    """The three models, ``instances`` callables each (PyTriton runs each
    instance's requests in a thread of its own)."""
    mc = require("pytriton.model_config")

    def tensor(name: str, dtype: Any = bytes, shape: tuple[int, ...] = (1,)) -> Any:
        return mc.Tensor(name=name, dtype=dtype, shape=shape)

    config = mc.ModelConfig(batching=False)
    session_in = tensor("session")
    triton.bind(model_name=W.OPEN_MODEL, infer_func=[served(handlers.open)] * instances,
                inputs=[session_in, tensor("meta"), tensor("chunk")], outputs=[tensor("info")], config=config)
    triton.bind(model_name=W.SEGMENT_MODEL, infer_func=[served(handlers.segment)] * instances,
                inputs=[session_in, tensor("request")],
                outputs=[tensor("mask"), tensor("box", np.int64, (6,)), tensor("info")], config=config)
    triton.bind(model_name=W.CLOSE_MODEL, infer_func=[served(handlers.close)],
                inputs=[session_in], outputs=[tensor("info")], config=config)


def make_store(opts: ServeOptions) -> tuple[SessionStore, dict[str, Any]]:
    """The session store on one shared backend (loaded and verified now), and its provenance."""
    from segvol_rt.runtime import SegVolRuntime

    first = open_first_runtime(opts)
    lim = opts.limits

    def make_runtime() -> SegVolRuntime:
        return SegVolRuntime(first.artifacts, first.backend, first.backend_reason, cache_bytes=lim.cache_bytes,
                             text_cache_bytes=lim.text_cache_bytes)

    zoom_voxels = int(np.prod(first.config.spatial_size))
    return SessionStore(make_runtime, lim, zoom_voxels), first.provenance


def serve(opts: ServeOptions, ready: Any = None) -> None:
    """Start Triton with the session models and serve until interrupted.
    ``ready(url)`` is called once the models are loaded."""
    check_options(opts)
    pytriton_triton = require("pytriton.triton")
    check_ports_free(opts)
    # the Python backend stub, started by tritonserver, must find this interpreter's libpython
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        os.environ["LD_LIBRARY_PATH"] = ld_library_path_with(str(libdir))
    # PyTriton logs every failed request's error text as a warning; ours may quote
    # prompts or paths, and segvol_rt.serve.models logs what is needed instead
    logging.getLogger("pytriton.proxy.inference").setLevel(logging.ERROR)
    store, prov = make_store(opts)
    handlers = Handlers(store, opts.allow_path_root, prov)
    sweeper = Sweeper(store, max(1.0, min(60.0, opts.limits.ttl_s / 4)))
    sweeper.start()
    workspace = str(opts.workspace) if opts.workspace is not None else None
    try:
        with pytriton_triton.Triton(config=triton_config(opts), workspace=workspace, security_config=security_config(opts),
                                    triton_lifecycle_policy=models_before_endpoints()) as triton:
            bind_models(triton, handlers, opts.instances)  # written into the model store, not loaded yet
            triton.run()  # tritonserver loads the store, then opens its endpoints; PyTriton connects the callables
            LOG.info("serving on %s:%d (HTTP), %d (gRPC)", opts.host, opts.http_port, opts.grpc_port)
            if ready is not None:
                ready(f"http://{opts.host}:{opts.http_port}")
            triton.serve()
    finally:
        sweeper.stop()
