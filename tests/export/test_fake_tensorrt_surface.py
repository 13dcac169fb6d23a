"""The fake TensorRT modules against TensorRT's own typed surface.

``tests/support/fake_tensorrt.py`` stands in for TensorRT in every CPU test
of the builder and the runner, so its surface must be the real one: each name
our code touches must exist in TensorRT 10.x as PyPI's ``tensorrt-stubs``
(10.13, generated from the bindings) types it, the 10 fake must carry it,
and the 11 fake must carry it too unless 11 removed it. The stubs are read as
text from the folder ``.ci/setup-tensorrt-stubs.sh`` fills, never
imported; the test skips with the reason where that folder is absent.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.support import fake_tensorrt

STUBS = Path(os.environ.get("SEGVOL_RT_TRT_STUBS", Path.home() / ".cache/segvol-rt/tensorrt-stubs-10.13"))

# (stub class, attribute) pairs that segvol_rt.backends.tensorrt.build / runner use;
# "" as the class means the module itself.
USED = [
    ("", "Logger"), ("", "Builder"), ("", "OnnxParser"), ("", "Runtime"), ("", "nptype"),
    ("", "NetworkDefinitionCreationFlag"), ("", "MemoryPoolType"), ("", "TensorIOMode"), ("", "BuilderFlag"),
    ("Logger", "WARNING"),
    ("Builder", "create_network"), ("Builder", "create_builder_config"), ("Builder", "create_optimization_profile"),
    ("Builder", "build_serialized_network"),
    ("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),
    ("IBuilderConfig", "set_memory_pool_limit"), ("IBuilderConfig", "add_optimization_profile"),
    ("IBuilderConfig", "create_timing_cache"), ("IBuilderConfig", "set_timing_cache"),
    ("IBuilderConfig", "get_timing_cache"), ("ITimingCache", "serialize"), ("IOptimizationProfile", "set_shape"),
    ("MemoryPoolType", "WORKSPACE"),
    ("OnnxParser", "parse_from_file"), ("OnnxParser", "num_errors"), ("OnnxParser", "get_error"),
    ("ParserError", "node"), ("ParserError", "node_name"), ("ParserError", "node_operator"), ("ParserError", "desc"),
    ("Runtime", "deserialize_cuda_engine"),
    ("ICudaEngine", "num_io_tensors"), ("ICudaEngine", "get_tensor_name"), ("ICudaEngine", "get_tensor_mode"),
    ("ICudaEngine", "get_tensor_dtype"), ("ICudaEngine", "create_execution_context"),
    ("ICudaEngine", "device_memory_size_v2"),
    ("IExecutionContext", "set_input_shape"), ("IExecutionContext", "set_tensor_address"),
    ("IExecutionContext", "get_tensor_shape"), ("IExecutionContext", "execute_async_v3"),
    ("TensorIOMode", "INPUT"),
]
# What 11.x removed (NVIDIA's "Removed Python APIs and Replacements" for 10.x -> 11.x), all present in 10.x.
REMOVED_IN_11 = [
    *(("BuilderFlag", f) for f in fake_tensorrt.REMOVED_IN_11_FLAGS),
    ("NetworkDefinitionCreationFlag", "EXPLICIT_BATCH"),
    ("ILayer", "precision"), ("ILayer", "set_output_type"),
    ("ICudaEngine", "device_memory_size"),
]


def _stub_surface() -> dict[str, set[str]]:
    """{class name: its attribute names} of tensorrt.pyi, "" holding the module's names.

    Read line by line: the generated stub is not valid Python throughout (one
    signature puts a required argument after defaults), so ``ast`` cannot parse it."""
    path = STUBS / "tensorrt_bindings" / "tensorrt.pyi"
    if not path.is_file():
        pytest.skip(f"tensorrt-stubs not found at {STUBS} (run .ci/setup-tensorrt-stubs.sh)")
    surface: dict[str, set[str]] = {"": set()}
    current = ""
    member = re.compile(r"^    (?:def (\w+)\(|(\w+)\s*[:=])")
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("class "):
            current = re.match(r"class (\w+)", line).group(1)  # type: ignore[union-attr]
            surface[""].add(current)
            surface.setdefault(current, set())
        elif line.startswith("def "):
            current = ""
            surface[""].add(re.match(r"def (\w+)", line).group(1))  # type: ignore[union-attr]
        elif current and (found := member.match(line)):
            surface[current].add(found.group(1) or found.group(2))
    init = (STUBS / "tensorrt" / "__init__.pyi").read_text(encoding="utf-8")
    surface[""].update(re.findall(r"^from \S+ import (\w+)", init, flags=re.M))
    return surface


# How to reach a stub class on a fake module: the fakes build some objects on demand.
def _fake_object(trt, cls: str):
    if cls == "":
        return trt
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    spec_engine = fake_tensorrt.FakeEngine10 if trt.__version__.startswith("10") else fake_tensorrt.FakeEngine
    objects = {
        "Logger": trt.Logger, "Builder": builder, "NetworkDefinitionCreationFlag": trt.NetworkDefinitionCreationFlag,
        "BuilderFlag": trt.BuilderFlag, "MemoryPoolType": trt.MemoryPoolType, "TensorIOMode": trt.TensorIOMode,
        "IBuilderConfig": builder.create_builder_config(), "IOptimizationProfile": builder.create_optimization_profile(),
        "ITimingCache": builder.create_builder_config().create_timing_cache(b""),
        "OnnxParser": trt.OnnxParser(network, None), "ParserError": fake_tensorrt.ParserError(0, "", "", ""),
        "Runtime": trt.Runtime(None), "ICudaEngine": spec_engine, "IExecutionContext": fake_tensorrt.FakeContext,
        "ILayer": trt.ILayer([], "x"),
    }
    return objects[cls]


def test_every_name_we_use_is_tensorrt_10s():
    surface = _stub_surface()
    missing = [(c, a) for c, a in USED if a not in surface.get(c, set())]
    assert not missing, f"not in TensorRT 10's stubs: {missing}"
    assert all(a in surface[c] for c, a in REMOVED_IN_11), "the names 11 removed are 10.x names"


@pytest.mark.parametrize("major", [10, 11])
def test_the_fakes_carry_what_we_use(major):
    trt = fake_tensorrt.make(major)
    missing = [(c, a) for c, a in USED if not hasattr(_fake_object(trt, c), a)]
    assert not missing, f"the TensorRT {major} fake lacks {missing}"


def test_the_10_fake_has_and_the_11_fake_lacks_what_11_removed():
    ten, eleven = fake_tensorrt.make(10), fake_tensorrt.make(11)
    assert all(hasattr(_fake_object(ten, c), a) for c, a in REMOVED_IN_11)
    present = [(c, a) for c, a in REMOVED_IN_11 if hasattr(_fake_object(eleven, c), a)]
    assert not present, f"the TensorRT 11 fake still has {present}"
    with pytest.raises(AttributeError):
        eleven.BuilderFlag.FP16  # noqa: B018


def test_the_10_fake_flags_are_tensorrt_10s():
    """Flag names and NetworkDefinitionCreationFlag values as the 10.x stubs give them."""
    text = (STUBS / "tensorrt_bindings" / "tensorrt.pyi")
    if not text.is_file():
        pytest.skip(f"tensorrt-stubs not found at {STUBS} (run .ci/setup-tensorrt-stubs.sh)")
    surface = _stub_surface()
    assert {f.name for f in fake_tensorrt.BuilderFlag10} <= surface["BuilderFlag"]
    body = text.read_text(encoding="utf-8")
    for enum_class in (fake_tensorrt.NetworkDefinitionCreationFlag10, fake_tensorrt.DataType,
                       fake_tensorrt.TensorIOMode, fake_tensorrt.MemoryPoolType):
        name = enum_class.__name__.rstrip("0123456789")
        for member in enum_class:
            assert f"<{name}.{member.name}: {member.value}>" in body, member
