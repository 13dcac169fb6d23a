"""Preflight, the first seconds of a device run: what the other sections need.

Items (each ``{"ok": bool, ...}``; the driver skips the sections whose items failed):

* ``gpu``: nvidia-smi's view (name, driver, memory) and CuPy's device;
* ``kernels``: the NVRTC compile of every kernel of :mod:`segvol_rt.kernels`,
  with the compile options CuPy actually passed (it appends ``-ftz=true``);
* ``imports``: every runtime module and the packages the sections use
  (jsonschema, nibabel, onnx, torch, onnxconverter_common);
* ``onnxruntime``: which onnxruntime was imported (path, version, providers)
  and a toy session whose first provider must be CUDA;
* ``torch_cuda``: torch sees the GPU (the official-style pipeline runs there);
* ``sanitizer``: where ``compute-sanitizer`` is (checked, not assumed).
"""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import subprocess
import time
from typing import Any

from device_sections.common import Context, error

RUNTIME_MODULES = (
    "segvol_rt", "segvol_rt.runtime", "segvol_rt.io.artifacts", "segvol_rt.ops.cuda", "segvol_rt.backends.ort_cuda",
    "segvol_rt.backends.onnxruntime", "segvol_rt.demo.phantom",
)
PACKAGES = ("numpy", "jsonschema", "nibabel", "onnx", "tokenizers", "torch", "onnxconverter_common")


def run(ctx: Context) -> dict[str, Any]:
    items: dict[str, Any] = {"machine": {"python": platform.python_version(), "platform": platform.platform(),
                                         "cpus": os.cpu_count()}}
    for name, check in (("imports", imports), ("gpu", gpu), ("kernels", kernels), ("onnxruntime", onnxruntime),
                        ("torch_cuda", torch_cuda), ("sanitizer", sanitizer)):
        t0 = time.perf_counter()
        try:
            items[name] = check(ctx)
        except Exception as exc:  # noqa: BLE001 - one failed item must not hide the others
            items[name] = error(exc)
        items[name]["seconds"] = round(time.perf_counter() - t0, 3)
        print(f"[preflight] {name}: ok={items[name].get('ok')}", flush=True)
    # imports and the GPU gate the whole run; the rest gate single sections
    items["ok"] = all(items[k].get("ok") for k in ("imports",) + (() if ctx.emulate else ("gpu", "kernels")))
    return items


def imports(ctx: Context) -> dict[str, Any]:
    out: dict[str, Any] = {"modules": {}, "packages": {}}
    for name in RUNTIME_MODULES:
        try:
            importlib.import_module(name)
            out["modules"][name] = "ok"
        except Exception as exc:  # noqa: BLE001
            out["modules"][name] = f"{type(exc).__name__}: {exc}"
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
            out["packages"][name] = {"version": getattr(mod, "__version__", "?"), "path": getattr(mod, "__file__", "")}
        except Exception as exc:  # noqa: BLE001
            out["packages"][name] = {"missing": f"{type(exc).__name__}: {exc}"}
    out["ok"] = all(v == "ok" for v in out["modules"].values()) and "missing" not in out["packages"]["jsonschema"]
    return out


def gpu(ctx: Context) -> dict[str, Any]:
    if ctx.emulate:
        return {"ok": True, "emulated": True}
    out: dict[str, Any] = {}
    smi = shutil.which("nvidia-smi")
    if smi:
        q = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,memory.used,clocks.sm",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        out["nvidia_smi"] = q.stdout.strip() or q.stderr.strip()
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    out.update(cupy=cupy.__version__, gpu=name.decode() if isinstance(name, bytes) else str(name),
               compute_capability=f"{props['major']}.{props['minor']}", sms=int(props["multiProcessorCount"]),
               cuda_runtime=cupy.cuda.runtime.runtimeGetVersion(), cuda_driver=cupy.cuda.runtime.driverGetVersion())
    out["ok"] = cupy.cuda.runtime.getDeviceCount() > 0
    return out


def kernels(ctx: Context) -> dict[str, Any]:
    """Compile and load every kernel (one RawModule per .cu file), recording the
    options NVRTC was given (CuPy's compile_using_nvrtc, wrapped for the call)."""
    from segvol_rt import kernels as K

    if ctx.emulate:
        support = importlib.import_module("tests.support.kernel_emu")
        support.library()
        return {"ok": True, "emulated": True, "ftz": support.ftz_supported(),
                "kernels": sum(len(v) for v in K.NAME_EXPRESSIONS.values())}
    import cupy
    from cupy.cuda import compiler

    seen: list[list[str]] = []
    original = compiler.compile_using_nvrtc

    def recording(source: Any, options: Any = (), *args: Any, **kwargs: Any) -> Any:
        seen.append([str(o) for o in options])
        return original(source, options, *args, **kwargs)

    compiler.compile_using_nvrtc = recording
    per_file: dict[str, Any] = {}
    try:
        for file, names in K.NAME_EXPRESSIONS.items():
            t0 = time.perf_counter()
            try:
                for name in names:
                    K.function(name)
                cupy.cuda.Device().synchronize()
                per_file[file] = {"ok": True, "kernels": len(names), "seconds": round(time.perf_counter() - t0, 3)}
            except Exception as exc:  # noqa: BLE001 - the other files still compile
                per_file[file] = error(exc)
    finally:
        compiler.compile_using_nvrtc = original
    options = sorted({" ".join(o) for o in seen})
    return {"ok": all(v.get("ok") for v in per_file.values()), "files": per_file, "our_options": list(K.OPTIONS),
            "nvrtc_options_used": options or "none recorded (CuPy's kernel cache hit: compiled in an earlier run)",
            "ftz": any("-ftz=true" in o for o in options), "cache_dir": os.environ.get("CUPY_CACHE_DIR", "default")}


def onnxruntime(ctx: Context) -> dict[str, Any]:
    import onnxruntime as ort

    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    out: dict[str, Any] = {"version": ort.__version__, "path": ort.__file__, "providers": ort.get_available_providers()}
    if ctx.emulate:
        out.update(ok=True, toy_session="not run (emulated)")
        return out
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])
    graph = helper.make_graph([helper.make_node("Add", ["x", "x"], ["y"])], "toy", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)
    from segvol_rt.backends.ort_cuda import cuda_provider_options

    onnx.checker.check_model(model)
    providers = [("CUDAExecutionProvider", cuda_provider_options(0)), "CPUExecutionProvider"]
    session = ort.InferenceSession(model.SerializeToString(), providers=providers)
    value = np.arange(6, dtype=np.float32).reshape(2, 3)
    result = session.run(None, {"x": value})[0]
    out.update(session_providers=session.get_providers(), toy_result_ok=bool(np.array_equal(result, 2 * value)))
    out["ok"] = session.get_providers()[0] == "CUDAExecutionProvider" and out["toy_result_ok"]
    return out


def torch_cuda(ctx: Context) -> dict[str, Any]:
    import torch

    out = {"version": torch.__version__, "cuda": bool(torch.cuda.is_available())}
    if torch.cuda.is_available():
        out.update(device=torch.cuda.get_device_name(0), matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
                   cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    out["ok"] = out["cuda"] or ctx.emulate
    return out


def sanitizer(ctx: Context) -> dict[str, Any]:
    path = shutil.which("compute-sanitizer")
    for candidate in ("/usr/local/cuda/bin/compute-sanitizer",):
        if path is None and os.path.exists(candidate):
            path = candidate
    return {"ok": path is not None, "path": path}
