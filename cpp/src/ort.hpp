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

namespace segvol {

struct OrtInfo {
    std::string path;     // the library that was loaded
    std::string version;  // its GetVersionString()
    int api_version = 0;  // the API version in use
    bool cuda = false;    // CUDA execution provider available
};

// Loads (once) and returns the library; throws std::runtime_error with a one-line reason.
const OrtInfo& ort_load(const std::string& requested);

struct GraphOptions {
    int threads = 0;  // intra-op threads, 0 = all cores of this process
    bool cuda = false;
    int device_id = 0;
};

// A tensor handed to / returned by a graph: float32, int32 or int64, C order.
struct Tensor {
    std::vector<long long> shape;
    int kind = 0;  // 0 float32, 1 int32, 2 int64
    std::vector<float> f;
    std::vector<int> i32;
    std::vector<long long> i64;
};

class Graph {
   public:
    Graph(const std::string& path, const std::string& name, const GraphOptions& opt);
    ~Graph();
    Graph(const Graph&) = delete;
    Graph& operator=(const Graph&) = delete;
    // Run with named inputs; returns the graph's first output (float32) and its shape.
    std::vector<float> run(const std::vector<std::pair<std::string, const Tensor*>>& inputs,
                           std::vector<long long>* out_shape);
    const std::vector<std::string>& input_names() const;
    const std::vector<std::string>& output_names() const;

   private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace segvol
