#include "ort.hpp"
#include "system.hpp"

#include <dlfcn.h>
#include <sched.h>

#include <mutex>
#include <stdexcept>

#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>
#undef ORT_API_MANUAL_INIT

#ifndef SEGVOL_RT_DEFAULT_ORT_LIBRARY
#define SEGVOL_RT_DEFAULT_ORT_LIBRARY ""
#endif

namespace segvol {

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

struct Graph::Impl {
    std::string name;
    std::unique_ptr<Ort::Session> session;
    std::vector<std::string> inputs, outputs;
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
};

Graph::Graph(const std::string& path, const std::string& name, const GraphOptions& opt) : impl_(new Impl) {
    impl_->name = name;
    Ort::SessionOptions so;
    // the Python runtime's session options (segvol_rt.backends.onnxruntime.session_options)
    so.SetIntraOpNumThreads(opt.threads > 0 ? opt.threads : cpu_cores());
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    so.SetLogSeverityLevel(ORT_LOGGING_LEVEL_ERROR);
    so.EnableCpuMemArena();
    so.DisableMemPattern();
    // ORT's pool threads would spin after each run, on the cores the pipeline's own
    // kernels run on next (the Python runtime's NumPy is single-threaded); no effect on results
    so.AddConfigEntry("session.intra_op.allow_spinning", "0");
    if (opt.cuda) {
        OrtCUDAProviderOptions cuda{};
        cuda.device_id = opt.device_id;
        so.AppendExecutionProvider_CUDA(cuda);
    }
    impl_->session = std::make_unique<Ort::Session>(env(), path.c_str(), so);
    Ort::AllocatorWithDefaultOptions alloc;
    for (size_t i = 0; i < impl_->session->GetInputCount(); ++i)
        impl_->inputs.push_back(impl_->session->GetInputNameAllocated(i, alloc).get());
    for (size_t i = 0; i < impl_->session->GetOutputCount(); ++i)
        impl_->outputs.push_back(impl_->session->GetOutputNameAllocated(i, alloc).get());
}

Graph::~Graph() = default;

const std::vector<std::string>& Graph::input_names() const { return impl_->inputs; }
const std::vector<std::string>& Graph::output_names() const { return impl_->outputs; }

std::vector<float> Graph::run(const std::vector<std::pair<std::string, const Tensor*>>& inputs,
                              std::vector<long long>* out_shape) {
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names, out_names;
    for (size_t k = 0; k < inputs.size(); ++k) {
        const Tensor* t = inputs[k].second;
        const int64_t* dims = reinterpret_cast<const int64_t*>(t->shape.data());
        if (t->kind == 0)
            values.push_back(Ort::Value::CreateTensor<float>(impl_->mem, const_cast<float*>(t->f.data()), t->f.size(),
                                                             dims, t->shape.size()));
        else if (t->kind == 1)
            values.push_back(Ort::Value::CreateTensor<int32_t>(impl_->mem, const_cast<int32_t*>(t->i32.data()),
                                                               t->i32.size(), dims, t->shape.size()));
        else
            values.push_back(Ort::Value::CreateTensor<int64_t>(impl_->mem,
                                                               reinterpret_cast<int64_t*>(const_cast<long long*>(t->i64.data())),
                                                               t->i64.size(), dims, t->shape.size()));
        in_names.push_back(inputs[k].first.c_str());
    }
    out_names.push_back(impl_->outputs[0].c_str());
    auto outs = impl_->session->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(),
                                    out_names.data(), 1);
    auto info = outs[0].GetTensorTypeAndShapeInfo();
    std::vector<int64_t> shape = info.GetShape();
    out_shape->assign(shape.begin(), shape.end());
    const float* p = outs[0].GetTensorData<float>();
    return std::vector<float>(p, p + info.GetElementCount());
}

}  // namespace segvol
