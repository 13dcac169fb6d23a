#include "ort.hpp"

#include "generated/shared_constants.hpp"
#include "resident.hpp"
#include "system.hpp"

#include <dlfcn.h>
#include <sched.h>

#include <cstring>
#include <mutex>
#include <stdexcept>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#ifndef SEGVOL_RT_DEFAULT_ORT_LIBRARY
#define SEGVOL_RT_DEFAULT_ORT_LIBRARY ""
#endif

namespace segvol::detail {

// The oldest API version the SDK asks for: the calls it makes date from ORT 1.16 or
// earlier. Run here on the 1.29, 1.31 and 1.32 libraries only.
static constexpr int MIN_API_VERSION = 16;

static std::mutex g_mu;
static OrtInfo g_info;
static void* g_handle = nullptr;

static std::vector<std::string> candidates(const std::string& requested) {
    std::vector<std::string> out;
    if (!requested.empty()) return {requested};
    if (const char* env = std::getenv("SEGVOL_RT_ORT_LIBRARY"); env && *env) return {env};
    if (*SEGVOL_RT_DEFAULT_ORT_LIBRARY) out.push_back(SEGVOL_RT_DEFAULT_ORT_LIBRARY);
    out.push_back("libonnxruntime.so.1");
    out.push_back("libonnxruntime.so");
    return out;
}

const OrtInfo& ort_load(const std::string& requested) {
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_handle) {
        if (!requested.empty() && requested != g_info.path)
            throw std::runtime_error("ONNX Runtime " + g_info.path + " is already loaded in this process; cannot load " +
                                     requested + " as well");
        return g_info;
    }
    std::string tried, why;
    for (const std::string& path : candidates(requested)) {
        void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
        if (!h) {
            const char* e = dlerror();
            why = e ? e : "dlopen failed";
            tried += (tried.empty() ? "" : ", ") + path;
            continue;
        }
        using GetApiBase = const OrtApiBase* (*)();
        auto base_fn = reinterpret_cast<GetApiBase>(dlsym(h, "OrtGetApiBase"));
        if (!base_fn) {
            dlclose(h);
            throw std::runtime_error(path + " is not an ONNX Runtime library (no OrtGetApiBase)");
        }
        const OrtApiBase* base = base_fn();
        const OrtApi* api = nullptr;
        int n = ORT_API_VERSION;
        for (; n >= MIN_API_VERSION && !api; --n) api = base->GetApi(n);
        if (!api) {
            std::string v = base->GetVersionString();
            dlclose(h);
            throw std::runtime_error("ONNX Runtime " + v + " at " + path + " is too old: the SDK needs API version " +
                                     std::to_string(MIN_API_VERSION) + " (ORT 1.16) or newer");
        }
        Ort::InitApi(api);
        g_handle = h;
        g_info.path = path;
        g_info.version = base->GetVersionString();
        g_info.api_version = n + 1;
        for (const std::string& p : Ort::GetAvailableProviders())
            if (p == "CUDAExecutionProvider") g_info.cuda = true;
        return g_info;
    }
    throw std::runtime_error("cannot load ONNX Runtime (tried " + tried + "): " + why +
                             "; pass its path (libonnxruntime.so.1.*) or set SEGVOL_RT_ORT_LIBRARY");
}

static Ort::Env& env() {
    static Ort::Env e(ORT_LOGGING_LEVEL_ERROR, "segvol_rt");
    return e;
}

// The process's shared CPU arena, registered with the environment once (as
// segvol_rt.backends.onnxruntime.register_shared_arena): regions of exactly the requested
// size (arena_extend_strategy 1) rather than the next power of two.
static void register_shared_arena() {
    static std::once_flag once;
    std::call_once(once, [] {
        Ort::MemoryInfo cpu = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
        Ort::ArenaCfg cfg(0, 1, -1, -1);
        env().CreateAndRegisterAllocator(cpu, cfg);
    });
}

// Every run's options (segvol_rt.backends.onnxruntime.run_options): the CPU arena gives its
// unused regions back at the run's end when SESSION_MEMORY asks.
static constexpr bool SHRINK = shared::ORT_ARENA && shared::ORT_SHRINK_ARENA;

static Ort::RunOptions run_options() {
    Ort::RunOptions ro;
    if (SHRINK) ro.AddConfigEntry("memory.enable_memory_arena_shrinkage", "cpu:0");
    return ro;
}

static ONNXTensorElementDataType onnx_type(ElementType t) {
    switch (t) {
        case ElementType::F32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        case ElementType::I32: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32;
        case ElementType::I64: return ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64;
        case ElementType::U8: return ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8;
    }
    return ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
}

namespace {

class OrtGraph final : public Graph {
   public:
    OrtGraph(const std::string& path, const GraphOptions& opt);
    const std::vector<std::string>& input_names() const override { return inputs_; }
    const std::vector<std::string>& output_names() const override { return outputs_; }
    void run_into(const std::vector<Feed>& inputs, const TensorView& out) override;
    Buffer run(const std::vector<Feed>& inputs) override;

   private:
    // An Ort::Value over the view's memory (no copy): host memory, or a CUDA device's
    // (never run here: no GPU on the build machine).
    Ort::Value value_of(const TensorView& v) const;
    void prepare(const std::vector<Feed>& inputs);
    // what the shrunk arena gave back under glibc's mmap threshold stays in the heap otherwise
    static void after_run() {
        if (SHRINK) trim_heap();
    }
    std::unique_ptr<Ort::Session> session_;
    std::vector<std::string> inputs_, outputs_;
    Ort::MemoryInfo host_ = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    std::vector<Ort::Value> values_;        // this run's input values (views)
    std::vector<const char*> in_names_;
};

OrtGraph::OrtGraph(const std::string& path, const GraphOptions& opt) {
    Ort::SessionOptions so;
    // the Python runtime's session options (segvol_rt.backends.onnxruntime.session_options)
    so.SetIntraOpNumThreads(opt.threads > 0 ? opt.threads : cpu_cores());
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.SetLogSeverityLevel(ORT_LOGGING_LEVEL_ERROR);
    // the Python runtime's memory options (segvol_rt.backends.onnxruntime.SESSION_MEMORY)
    if (shared::ORT_ARENA) so.EnableCpuMemArena();
    else so.DisableCpuMemArena();
    if (shared::ORT_MEM_PATTERN) so.EnableMemPattern();
    else so.DisableMemPattern();
    if (!shared::ORT_PREPACKING) so.AddConfigEntry("session.disable_prepacking", "1");
    if (shared::ORT_ARENA && shared::ORT_SHARED_ARENA) {
        register_shared_arena();
        so.AddConfigEntry("session.use_env_allocators", "1");
    }
    // ORT's pool threads would spin after each run, on the cores the pipeline's own
    // kernels run on next (the Python runtime's NumPy is single-threaded); no effect on results
    so.AddConfigEntry("session.intra_op.allow_spinning", "0");
    if (opt.cuda) {
        OrtCUDAProviderOptions cuda{};
        cuda.device_id = opt.device_id;
        so.AppendExecutionProvider_CUDA(cuda);
    }
    session_ = std::make_unique<Ort::Session>(env(), path.c_str(), so);
    Ort::AllocatorWithDefaultOptions alloc;
    for (size_t i = 0; i < session_->GetInputCount(); ++i) inputs_.push_back(session_->GetInputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < session_->GetOutputCount(); ++i) outputs_.push_back(session_->GetOutputNameAllocated(i, alloc).get());
    trim_heap();  // what loading left free in the heap (the parsed protobuf, the staged initializers)
}

Ort::Value OrtGraph::value_of(const TensorView& v) const {
    const int64_t* dims = v.shape.data();
    if (v.where == Where::Host)
        return Ort::Value::CreateTensor(host_, v.data, v.bytes(), dims, v.shape.size(), onnx_type(v.type));
    Ort::MemoryInfo cuda("Cuda", OrtDeviceAllocator, v.device, OrtMemTypeDefault);
    return Ort::Value::CreateTensor(cuda, v.data, v.bytes(), dims, v.shape.size(), onnx_type(v.type));
}

void OrtGraph::prepare(const std::vector<Feed>& inputs) {
    values_.clear();
    in_names_.clear();
    for (const Feed& f : inputs) {
        values_.push_back(value_of(f.value));
        in_names_.push_back(f.name.c_str());
    }
}

void OrtGraph::run_into(const std::vector<Feed>& inputs, const TensorView& out) {
    prepare(inputs);
    Ort::Value o = value_of(out);
    const char* out_name = outputs_[0].c_str();
    session_->Run(run_options(), in_names_.data(), values_.data(), values_.size(), &out_name, &o, 1);
    after_run();
}

Buffer OrtGraph::run(const std::vector<Feed>& inputs) {
    prepare(inputs);
    const char* out_name = outputs_[0].c_str();
    auto outs = session_->Run(run_options(), in_names_.data(), values_.data(), values_.size(), &out_name, 1);
    auto info = outs[0].GetTensorTypeAndShapeInfo();
    if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
        throw std::runtime_error("graph output " + outputs_[0] + " is not float32");
    Buffer b = Buffer::host(info.GetShape(), ElementType::F32);
    std::memcpy(b.as<void>(), outs[0].GetTensorData<float>(), b.view().bytes());
    outs.clear();
    after_run();
    return b;
}

}  // namespace

std::unique_ptr<Graph> ort_graph(const std::string& path, const std::string& name, const GraphOptions& opt) {
    return std::make_unique<OrtGraph>(path, opt);
}

}  // namespace segvol::detail
