// ONNX Runtime loaded at run time (dlopen), C++ API with ORT_API_MANUAL_INIT.
//
// The PyPI wheel's libonnxruntime.so.1.<minor> has versioned symbols and no
// unversioned soname, so the SDK never links it: it dlopens a library by
// path, asks OrtGetApiBase()->GetApi(N) for the newest API version N that both
// the headers (ORT_API_VERSION) and the library support, and uses only calls
// that exist since MIN_API_VERSION (ort.cpp). Run here on ORT 1.29, 1.31, 1.32. One library is loaded per process and
// stays loaded (ONNX Runtime does not support being unloaded).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "graph.hpp"

namespace segvol::detail {

struct OrtInfo {
    std::string path;     // the library that was loaded
    std::string version;  // its GetVersionString()
    int api_version = 0;  // the API version in use
    bool cuda = false;    // CUDA execution provider available
};

// Loads (once) and returns the library; throws std::runtime_error with a one-line reason.
const OrtInfo& ort_load(const std::string& requested);

// A session of one graph file (the Graph interface of graph.hpp); throws on failure.
std::unique_ptr<Graph> ort_graph(const std::string& path, const std::string& name, const GraphOptions& opt);

}  // namespace segvol::detail
