#include "openvino.hpp"

#include <dirent.h>
#include <dlfcn.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "generated/shared_constants.hpp"
#include "resident.hpp"
#include "signal_stack.hpp"
#include "system.hpp"

#ifndef SEGVOL_RT_DEFAULT_OPENVINO_LIBRARY
#define SEGVOL_RT_DEFAULT_OPENVINO_LIBRARY ""
#endif

#if SEGVOL_RT_HAVE_OPENVINO
#include <openvino/c/openvino.h>
#endif

namespace segvol::detail {

std::vector<std::string> cached_blobs(const std::string& dir) {
    std::vector<std::string> out;
    if (dir.empty()) return out;
    if (DIR* d = opendir(dir.c_str())) {
        while (dirent* e = readdir(d)) {
            std::string name = e->d_name;
            if (name.size() > 5 && name.compare(name.size() - 5, 5, ".blob") == 0) out.push_back(dir + "/" + name);
        }
        closedir(d);
    }
    std::sort(out.begin(), out.end());
    return out;
}

#if !SEGVOL_RT_HAVE_OPENVINO

const OpenVinoInfo& openvino_load(const std::string&) {
    throw std::runtime_error("this build of the SDK has no OpenVINO backend (built without the OpenVINO headers: "
                             "install the openvino wheel or pass -DSEGVOL_RT_OPENVINO_INCLUDE_DIR and rebuild)");
}
void openvino_check_precision(const std::string&) { openvino_load(""); }
std::unique_ptr<Graph> openvino_graph(const std::string&, const std::string&, const GraphOptions&, const std::string&,
                                      const std::vector<std::string>&, const std::vector<std::string>&) {
    openvino_load();
    return nullptr;
}

#else

namespace {

// The C API calls the SDK makes, resolved from the loaded library (types from the headers).
struct Api {
#define SEGVOL_OV_FN(name) decltype(&::name) name = nullptr
    SEGVOL_OV_FN(ov_core_create);
    SEGVOL_OV_FN(ov_core_free);
    SEGVOL_OV_FN(ov_core_get_property);
    SEGVOL_OV_FN(ov_core_compile_model_from_file);
    SEGVOL_OV_FN(ov_compiled_model_get_property);
    SEGVOL_OV_FN(ov_compiled_model_inputs_size);
    SEGVOL_OV_FN(ov_compiled_model_outputs_size);
    SEGVOL_OV_FN(ov_compiled_model_input_by_name);
    SEGVOL_OV_FN(ov_compiled_model_output_by_name);
    SEGVOL_OV_FN(ov_compiled_model_create_infer_request);
    SEGVOL_OV_FN(ov_compiled_model_free);
    SEGVOL_OV_FN(ov_output_const_port_free);
    SEGVOL_OV_FN(ov_infer_request_set_tensor);
    SEGVOL_OV_FN(ov_infer_request_set_output_tensor_by_index);
    SEGVOL_OV_FN(ov_infer_request_get_output_tensor_by_index);
    SEGVOL_OV_FN(ov_infer_request_infer);
    SEGVOL_OV_FN(ov_infer_request_free);
    SEGVOL_OV_FN(ov_tensor_create_from_host_ptr);
    SEGVOL_OV_FN(ov_tensor_get_shape);
    SEGVOL_OV_FN(ov_tensor_data);
    SEGVOL_OV_FN(ov_tensor_free);
    SEGVOL_OV_FN(ov_shape_create);
    SEGVOL_OV_FN(ov_shape_free);
    SEGVOL_OV_FN(ov_get_openvino_version);
    SEGVOL_OV_FN(ov_version_free);
    SEGVOL_OV_FN(ov_free);
    SEGVOL_OV_FN(ov_get_last_err_msg);
#undef SEGVOL_OV_FN
};

std::mutex g_mu;
Api g_api;
OpenVinoInfo g_info;
ov_core_t* g_core = nullptr;  // one core per process, never freed (plugins stay loaded)

const char* DEVICE = "CPU";

std::vector<std::string> candidates(const std::string& requested) {
    if (!requested.empty()) return {requested};
    if (const char* env = std::getenv("SEGVOL_RT_OPENVINO_LIBRARY"); env && *env) return {env};
    std::vector<std::string> out;
    if (*SEGVOL_RT_DEFAULT_OPENVINO_LIBRARY) out.push_back(SEGVOL_RT_DEFAULT_OPENVINO_LIBRARY);
    out.push_back("libopenvino_c.so");
    return out;
}

void check(ov_status_e status, const char* what) {
    if (status == OK) return;
    const char* msg = g_api.ov_get_last_err_msg ? g_api.ov_get_last_err_msg() : nullptr;
    std::string text = msg && *msg ? std::string(msg) : "status " + std::to_string((int)status);
    for (char& c : text)
        if (c == '\n' || c == '\r') c = ' ';
    throw std::runtime_error(std::string(what) + ": " + text.substr(0, 300));
}

std::string core_property(const char* key) {
    char* value = nullptr;
    check(g_api.ov_core_get_property(g_core, DEVICE, key, &value), key);
    std::string s = value ? value : "";
    g_api.ov_free(value);
    return s;
}

bool resolve(void* h, std::string* why) {
    bool ok = true;
    auto get = [&](auto& fn, const char* name) {
        fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
        if (!fn && ok) {
            ok = false;
            *why = std::string("no ") + name;
        }
    };
#define SEGVOL_OV_GET(name) get(g_api.name, #name)
    SEGVOL_OV_GET(ov_core_create); SEGVOL_OV_GET(ov_core_free); SEGVOL_OV_GET(ov_core_get_property);
    SEGVOL_OV_GET(ov_core_compile_model_from_file); SEGVOL_OV_GET(ov_compiled_model_get_property);
    SEGVOL_OV_GET(ov_compiled_model_inputs_size); SEGVOL_OV_GET(ov_compiled_model_outputs_size);
    SEGVOL_OV_GET(ov_compiled_model_input_by_name); SEGVOL_OV_GET(ov_compiled_model_output_by_name);
    SEGVOL_OV_GET(ov_compiled_model_create_infer_request); SEGVOL_OV_GET(ov_compiled_model_free);
    SEGVOL_OV_GET(ov_output_const_port_free); SEGVOL_OV_GET(ov_infer_request_set_tensor);
    SEGVOL_OV_GET(ov_infer_request_set_output_tensor_by_index); SEGVOL_OV_GET(ov_infer_request_get_output_tensor_by_index);
    SEGVOL_OV_GET(ov_infer_request_infer); SEGVOL_OV_GET(ov_infer_request_free); SEGVOL_OV_GET(ov_tensor_create_from_host_ptr);
    SEGVOL_OV_GET(ov_tensor_get_shape); SEGVOL_OV_GET(ov_tensor_data); SEGVOL_OV_GET(ov_tensor_free);
    SEGVOL_OV_GET(ov_shape_create); SEGVOL_OV_GET(ov_shape_free); SEGVOL_OV_GET(ov_get_openvino_version);
    SEGVOL_OV_GET(ov_version_free); SEGVOL_OV_GET(ov_free); SEGVOL_OV_GET(ov_get_last_err_msg);
#undef SEGVOL_OV_GET
    return ok;
}

ov_element_type_e ov_type(ElementType t) {
    switch (t) {
        case ElementType::F32: return F32;
        case ElementType::I32: return I32;
        case ElementType::I64: return I64;
        case ElementType::U8: return U8;
    }
    return DYNAMIC;
}

// An ov_tensor_t over host memory the caller owns (no copy); freed with the object.
class HostTensor {
   public:
    explicit HostTensor(const TensorView& v) {
        if (v.where != Where::Host) throw std::runtime_error("the OpenVINO backend takes host memory only");
        ov_shape_t shape;
        check(g_api.ov_shape_create((int64_t)v.shape.size(), v.shape.data(), &shape), "ov_shape_create");
        ov_status_e s = g_api.ov_tensor_create_from_host_ptr(ov_type(v.type), shape, v.data, &t_);
        g_api.ov_shape_free(&shape);
        check(s, "ov_tensor_create_from_host_ptr");
    }
    ~HostTensor() {
        if (t_) g_api.ov_tensor_free(t_);
    }
    HostTensor(const HostTensor&) = delete;
    HostTensor& operator=(const HostTensor&) = delete;
    ov_tensor_t* get() const { return t_; }

   private:
    ov_tensor_t* t_ = nullptr;
};

// column `column` (1: inference precision, 2: capability) of `precision`'s row, or nullptr
const char* precision_entry(const std::string& precision, int column) {
    for (const auto& row : shared::OPENVINO_PRECISIONS)
        if (precision == row[0]) return row[column];
    return nullptr;
}

// OpenVINO's element type name as its short name (what the Python backend compares)
std::string hint_name(std::string v) {
    if (v == "float32") return "f32";
    if (v == "bfloat16") return "bf16";
    if (v == "float16") return "f16";
    return v;
}

// The files whose pages this process's compiled models map (graphs and cached blobs), given
// back after a large image encoder's runs (segvol_rt.backends.openvino: _mapped).
std::mutex g_mapped_mu;
std::vector<std::string> g_mapped;

void add_mapped(const std::vector<std::string>& files) {
    std::lock_guard<std::mutex> lock(g_mapped_mu);
    for (const std::string& f : files)
        if (std::find(g_mapped.begin(), g_mapped.end(), f) == g_mapped.end()) g_mapped.push_back(f);
}

void drop_all_mapped() {
    std::vector<std::string> files;
    {
        std::lock_guard<std::mutex> lock(g_mapped_mu);
        files = g_mapped;
    }
    drop_mapped_pages(files);
}

class OvGraph final : public Graph {
   public:
    // Compiled (or loaded from `cache_dir`), then the mapped weights given back; a first
    // compile that wrote a blob is replaced by the blob's mapped load (as the Python backend).
    OvGraph(const std::string& path, const std::string& name, const char* hint, const GraphOptions& opt,
            const std::string& cache_dir);
    // The spec's tensor names this compiled model has (all of them, and no other port, for a
    // graph of the spec): the runtime compares them with the spec, as for ONNX Runtime.
    void find_ports(const std::vector<std::string>& inputs, const std::vector<std::string>& outputs);
    ~OvGraph() override {
        KeptSignalStack kept;
        free_compiled();
    }
    const std::vector<std::string>& input_names() const override { return inputs_; }
    const std::vector<std::string>& output_names() const override { return outputs_; }
    void run_into(const std::vector<Feed>& inputs, const TensorView& out) override;
    Buffer run(const std::vector<Feed>& inputs) override;
    std::string ran() const override { return ran_; }
    bool compiled_now() const override { return compiled_now_; }

   private:
    void open(const std::string& path, const std::string& name, const char* hint, const GraphOptions& opt,
              const std::string& cache_dir);
    void compile(const std::string& path, const char* hint, const GraphOptions& opt, const std::string& cache_dir);
    bool loaded_from_cache() const;
    void free_compiled();
    void after_run() const {
        if (drop_after_run_) drop_all_mapped();
    }
    void set_inputs(const std::vector<Feed>& inputs, std::vector<std::unique_ptr<HostTensor>>* keep);
    ov_compiled_model_t* compiled_ = nullptr;
    ov_infer_request_t* request_ = nullptr;  // one per graph: a handle's calls are serialised
    std::vector<std::string> inputs_, outputs_;
    std::string ran_;
    bool compiled_now_ = false;
    bool drop_after_run_ = false;
};

OvGraph::OvGraph(const std::string& path, const std::string& name, const char* hint, const GraphOptions& opt,
                 const std::string& cache_dir) {
    KeptSignalStack kept;  // compiling creates the CPU plugin on the first graph
    try {
        open(path, name, hint, opt, cache_dir);
    } catch (...) {
        free_compiled();  // a constructor that throws runs no destructor
        throw;
    }
}

void OvGraph::open(const std::string& path, const std::string& name, const char* hint, const GraphOptions& opt,
                   const std::string& cache_dir) {
    std::vector<std::string> before = cached_blobs(cache_dir);
    compile(path, hint, opt, cache_dir);
    std::vector<std::string> blobs = cached_blobs(cache_dir);
    compiled_now_ = !loaded_from_cache();
    if (compiled_now_ && blobs != before) {
        // a first compile holds the weights in memory of its own (not mapped, so not given
        // back below); the blob it just wrote loads mapped: load that instead
        free_compiled();
        trim_heap();
        compile(path, hint, opt, cache_dir);
    }
    char* value = nullptr;
    check(g_api.ov_compiled_model_get_property(compiled_, "INFERENCE_PRECISION_HINT", &value), "INFERENCE_PRECISION_HINT");
    ran_ = hint_name(value ? value : "");
    g_api.ov_free(value);
    if (ran_ != hint)
        throw std::runtime_error("OpenVINO compiled the graph to run in " + ran_ + ", not the asked " + hint + " (" + opt.precision + ")");
    check(g_api.ov_compiled_model_create_infer_request(compiled_, &request_), "ov_compiled_model_create_infer_request");
    // the weights are repacked by now: give back the mapped originals (graph file or cached blob)
    blobs.push_back(path);
    add_mapped(blobs);
    drop_mapped_pages(blobs);
    trim_heap();
    drop_after_run_ = name == shared::IMAGE_ENCODER && file_size(path) >= shared::OPENVINO_DROP_PAGES_AFTER_RUN_BYTES;
}

void OvGraph::compile(const std::string& path, const char* hint, const GraphOptions& opt, const std::string& cache_dir) {
    std::string threads = std::to_string(opt.threads > 0 ? opt.threads : cpu_cores());
    ov_status_e s;
    {
        std::lock_guard<std::mutex> lock(g_mu);
        if (cache_dir.empty())
            s = g_api.ov_core_compile_model_from_file(g_core, path.c_str(), DEVICE, 6, &compiled_, "INFERENCE_PRECISION_HINT", hint,
                                                      "INFERENCE_NUM_THREADS", threads.c_str(), "PERFORMANCE_HINT", "LATENCY");
        else
            s = g_api.ov_core_compile_model_from_file(g_core, path.c_str(), DEVICE, 8, &compiled_, "INFERENCE_PRECISION_HINT", hint,
                                                      "INFERENCE_NUM_THREADS", threads.c_str(), "PERFORMANCE_HINT", "LATENCY",
                                                      "CACHE_DIR", cache_dir.c_str());
    }
    check(s, "OpenVINO cannot compile the graph");
}

bool OvGraph::loaded_from_cache() const {
    char* value = nullptr;
    if (g_api.ov_compiled_model_get_property(compiled_, "LOADED_FROM_CACHE", &value) != OK) return false;
    std::string v = value ? value : "";
    g_api.ov_free(value);
    return v == "YES" || v == "true" || v == "1";
}

void OvGraph::free_compiled() {
    if (request_) g_api.ov_infer_request_free(request_);
    if (compiled_) g_api.ov_compiled_model_free(compiled_);
    request_ = nullptr;
    compiled_ = nullptr;
}

void OvGraph::find_ports(const std::vector<std::string>& inputs, const std::vector<std::string>& outputs) {
    // a port may carry several names (OpenVINO merges a Cast's output name into its input's): look each up by name
    auto found = [&](const std::vector<std::string>& names, bool in, std::vector<std::string>* out) {
        size_t n = 0;
        check(in ? g_api.ov_compiled_model_inputs_size(compiled_, &n) : g_api.ov_compiled_model_outputs_size(compiled_, &n), "ports");
        for (const std::string& name : names) {
            ov_output_const_port_t* port = nullptr;
            ov_status_e s = in ? g_api.ov_compiled_model_input_by_name(compiled_, name.c_str(), &port)
                               : g_api.ov_compiled_model_output_by_name(compiled_, name.c_str(), &port);
            if (s == OK && port) {
                out->push_back(name);
                g_api.ov_output_const_port_free(port);
            }
        }
        if (n != names.size()) out->push_back("(" + std::to_string(n) + " ports)");
    };
    found(inputs, true, &inputs_);
    found(outputs, false, &outputs_);
}

void OvGraph::set_inputs(const std::vector<Feed>& inputs, std::vector<std::unique_ptr<HostTensor>>* keep) {
    for (const Feed& f : inputs) {
        keep->push_back(std::make_unique<HostTensor>(f.value));
        check(g_api.ov_infer_request_set_tensor(request_, f.name.c_str(), keep->back()->get()), "set the input");
    }
}

void OvGraph::run_into(const std::vector<Feed>& inputs, const TensorView& out) {
    KeptSignalStack kept;
    std::vector<std::unique_ptr<HostTensor>> keep;
    set_inputs(inputs, &keep);
    keep.push_back(std::make_unique<HostTensor>(out));
    check(g_api.ov_infer_request_set_output_tensor_by_index(request_, 0, keep.back()->get()), "set the output");
    check(g_api.ov_infer_request_infer(request_), "OpenVINO inference failed");
    after_run();
}

Buffer OvGraph::run(const std::vector<Feed>& inputs) {
    KeptSignalStack kept;
    std::vector<std::unique_ptr<HostTensor>> keep;
    set_inputs(inputs, &keep);
    check(g_api.ov_infer_request_infer(request_), "OpenVINO inference failed");
    after_run();
    ov_tensor_t* t = nullptr;
    check(g_api.ov_infer_request_get_output_tensor_by_index(request_, 0, &t), "get the output");
    ov_shape_t shape;
    void* data = nullptr;
    ov_status_e s = g_api.ov_tensor_get_shape(t, &shape);
    if (s == OK) s = g_api.ov_tensor_data(t, &data);
    if (s != OK) {
        g_api.ov_tensor_free(t);
        check(s, "read the output");
    }
    Buffer b = Buffer::host(std::vector<int64_t>(shape.dims, shape.dims + shape.rank), ElementType::F32);
    std::memcpy(b.as<void>(), data, b.view().bytes());  // the request reuses its output tensor
    g_api.ov_shape_free(&shape);
    g_api.ov_tensor_free(t);
    return b;
}

}  // namespace

const OpenVinoInfo& openvino_load(const std::string& requested) {
    KeptSignalStack kept;
    std::lock_guard<std::mutex> lock(g_mu);
    if (g_core) {
        if (!requested.empty() && requested != g_info.path)
            throw std::runtime_error("OpenVINO " + g_info.path + " is already loaded in this process; cannot load " + requested +
                                     " as well");
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
        std::string missing;
        if (!resolve(h, &missing)) {
            dlclose(h);
            g_api = Api{};
            throw std::runtime_error(path + " is not an OpenVINO C API library the SDK can use (" + missing + ")");
        }
        ov_core_t* core = nullptr;
        check(g_api.ov_core_create(&core), "cannot create the OpenVINO core");
        g_core = core;
        g_info.path = path;
        ov_version_t v;
        if (g_api.ov_get_openvino_version(&v) == OK) {
            g_info.version = v.buildNumber ? v.buildNumber : "";
            g_api.ov_version_free(&v);
        }
        g_info.device_name = core_property("FULL_DEVICE_NAME");
        g_info.capabilities = core_property("OPTIMIZATION_CAPABILITIES");
        return g_info;
    }
    throw std::runtime_error("cannot load OpenVINO (tried " + tried + "): " + why +
                             "; set SEGVOL_RT_OPENVINO_LIBRARY to its libopenvino_c.so.*");
}

void openvino_check_precision(const std::string& precision) {
    if (precision == "fp16")
        throw std::invalid_argument("the openvino backend computes in fp32 or bf16, not fp16 (fp16 is a graph variant for "
                                    "backend onnxruntime); use precision fp32 or bf16");
    const char* need = precision_entry(precision, 2);
    if (!need) throw std::invalid_argument("the openvino backend computes in fp32 or bf16, not '" + precision + "'");
    const OpenVinoInfo& info = openvino_load("");  // loaded by the caller already
    std::istringstream words(info.capabilities);
    std::string w, offered;
    bool found = false;
    while (words >> w) {
        offered += (offered.empty() ? "" : ", ") + w;
        found = found || w == need;
    }
    if (!found)
        throw std::invalid_argument(precision + " needs a CPU on which OpenVINO offers " + need + " (AMX, AVX512-BF16 or AVX2-VNNI-2); this CPU (" +
                                    info.device_name + ") offers " + offered + "; use precision fp32");
}

const char* openvino_graph_hint(const std::string& precision, const std::string& name) {
    for (const char* graph : shared::OPENVINO_F32_GRAPHS)
        if (name == graph) return precision_entry("fp32", 1);
    return precision_entry(precision, 1);
}

std::unique_ptr<Graph> openvino_graph(const std::string& path, const std::string& name, const GraphOptions& opt,
                                      const std::string& cache_dir, const std::vector<std::string>& inputs,
                                      const std::vector<std::string>& outputs) {
    KeptSignalStack kept;
    openvino_load();
    const char* hint = openvino_graph_hint(opt.precision, name);
    if (!hint) throw std::runtime_error("the openvino backend computes in fp32 or bf16, not '" + opt.precision + "'");
    auto g = std::make_unique<OvGraph>(path, name, hint, opt, cache_dir);
    g->find_ports(inputs, outputs);
    return g;
}

#endif

}  // namespace segvol::detail
