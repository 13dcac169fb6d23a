// OpenVINO loaded at run time (dlopen of its C API, libopenvino_c.so.<version>).
//
// Link or load: the OpenVINO wheel's libraries carry the release in their soname
// (libopenvino_c.so.2641 for 2026.4.1), as ONNX Runtime's do, so a binary linked
// against one wheel would refuse every other release. The SDK links neither: it
// dlopens the C API (a stable C ABI, unlike the C++ API, whose classes would tie the
// SDK to the wheel's C++ standard library) from a path given at run time (the load
// option openvino_library, else $SEGVOL_RT_OPENVINO_LIBRARY), else the build's default (the Python wheel's
// openvino/libs/libopenvino_c.so.*, found by CMake), else libopenvino_c.so. The
// headers come from the same wheel (openvino/include) or an official release
// (-DSEGVOL_RT_OPENVINO_INCLUDE_DIR); only their types are used. Without them
// the SDK builds without the backend and refuses backend=openvino with the reason.
//
// Precision as the Python backend (segvol_rt.backends.openvino): the fp32 graphs
// compiled with INFERENCE_PRECISION_HINT f32 (set explicitly: OpenVINO picks bf16
// on CPUs with AVX512-BF16 or AMX by default) or bf16, which is offered only where
// the CPU's OPTIMIZATION_CAPABILITIES list BF16; the compiled model's hint is read
// back and a model that does not run the asked precision is refused. fp16 is refused.
//
// Memory as the Python backend's (resident.hpp): after each compile the mapped weights (graph
// file or cached blob) are given back and the heap trimmed, a first compile that wrote a blob
// is replaced by the blob's mapped load, and an image encoder of at least
// OPENVINO_DROP_PAGES_AFTER_RUN_BYTES gives the mapped pages back after every run. Not mirrored:
// Python's CompiledModel.release_memory between graphs (RELEASED_BETWEEN_GRAPHS), which the C API
// (2026.4) does not offer; freeing and recreating the infer request releases nothing (measured:
// full-size decoder 470 -> 470 MiB, release_memory 341), so each compiled model keeps its last
// run's memory (encoder about 70 MiB, decoder about 130 MiB at full size). The app's peak on the
// full-size real CT is below Python's anyway (806 against 839-847 MiB for bf16).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graph.hpp"

namespace segvol::detail {

struct OpenVinoInfo {
    std::string path;              // the library loaded
    std::string version;           // its build number
    std::string device_name;       // the CPU's FULL_DEVICE_NAME
    std::string capabilities;      // OPTIMIZATION_CAPABILITIES, space-separated
};

// The compiled-model blobs OpenVINO cached in `dir` (full paths, sorted; none for "").
std::vector<std::string> cached_blobs(const std::string& dir);

// Loads (once per process) the C API from `requested` (a path; "": $SEGVOL_RT_OPENVINO_LIBRARY,
// then the build's default, then libopenvino_c.so); throws std::runtime_error with a one-line
// reason, also when another library is already loaded.
const OpenVinoInfo& openvino_load(const std::string& requested = "");

// Throws std::invalid_argument naming what the CPU offers when `precision` cannot run here.
void openvino_check_precision(const std::string& precision);

// The inference precision ("f32", "bf16") graph `name` compiles in when `precision` is asked
// (segvol_rt.backends.openvino.graph_hint: the prompt decoder stays in f32); nullptr for an
// unknown precision.
const char* openvino_graph_hint(const std::string& precision, const std::string& name);

// Graph `name`'s file compiled for the CPU with opt.threads in openvino_graph_hint(opt.precision,
// name); models are cached in `cache_dir` (OpenVINO's CACHE_DIR; "" for none). Its input_names()
// / output_names() are those of the spec's `inputs` / `outputs` it has. Throws std::runtime_error.
std::unique_ptr<Graph> openvino_graph(const std::string& path, const std::string& name, const GraphOptions& opt,
                                      const std::string& cache_dir, const std::vector<std::string>& inputs,
                                      const std::vector<std::string>& outputs);

}  // namespace segvol::detail
