// The runtime's life cycle: load (options, backend, graphs checked against their specs),
// describe, the volume's release.
#include "pipeline_internal.hpp"

#include <unistd.h>

#include <cstring>

#include "openvino.hpp"
#include "system.hpp"

namespace segvol::detail {

static void fail_cache(const std::string& dir, const std::string& why) {
    fail(SEGVOL_ERR_BACKEND, "cannot write the OpenVINO model cache " + dir + " (" + why +
                                 "); set SEGVOL_RT_CACHE to a writable directory");
}

// mkdir -p `dir`, one line (as the Python backend's) where it cannot be made.
static void make_cache_dir(const std::string& dir) {
    if (int err = make_dirs(dir)) fail_cache(dir, std::strerror(err));
}

// The OpenVINO model cache, as the Python backend's (segvol_rt.backends.openvino.default_cache_dir):
// <$SEGVOL_RT_CACHE or ~/.cache/segvol-rt>/openvino, never the artifacts directory.
static std::string openvino_cache_dir() {
    std::string root = user_cache_root();
    if (root.empty()) return "";
    std::string dir = root + "/openvino";
    make_cache_dir(dir);
    return dir;
}

// Graph `sha256`'s folder of the model cache (segvol_rt.backends.openvino.graph_cache_dir), made
// here: OpenVINO takes a blob as current while the graph's path, size and mtime second are
// unchanged, so a graph replaced in place by one of the same size ran the old weights. A folder
// that cannot be written and holds no blob is refused, as in Python (OpenVINO would compile every
// time without a word); a read-only one prepared with the blobs serves.
static std::string graph_cache_dir(const std::string& cache, const std::string& sha256) {
    if (cache.empty()) return "";
    std::string dir = cache + "/" + sha256;
    make_cache_dir(dir);
    bool blob = !cached_blobs(dir).empty();
    if (!blob && access(dir.c_str(), W_OK) != 0)
        fail_cache(dir, "not writable, and it holds no compiled model of this graph");
    return dir;
}

// The backend's library and precision: checked before any graph is opened (the Python
// backends' order: an unusable precision is refused before compiling anything).
std::string Runtime::open_backend(const LoadOptions& opt, bool* cuda) {
    if (opt.backend == "openvino") {
        if (opt.device == "cuda") fail(SEGVOL_ERR_INVALID_ARGUMENT, "backend openvino runs on the CPU: use device cpu (or auto)");
        if (opt.precision != "fp32" && opt.precision != "bf16")
            fail(SEGVOL_ERR_INVALID_ARGUMENT, opt.precision == "fp16"
                                                  ? "the openvino backend computes in fp32 or bf16, not fp16 (fp16 is a graph variant for backend onnxruntime); use precision fp32 or bf16"
                                                  : "the openvino backend computes in fp32 or bf16, not '" + opt.precision + "'");
        try {
            const OpenVinoInfo& info = openvino_load(opt.openvino_library);
            openvino_check_precision(opt.precision);
            *cuda = false;
            ov_cache_ = openvino_cache_dir();
            return "openvino " + info.version;
        } catch (const std::exception& e) {
            fail(SEGVOL_ERR_BACKEND, e.what());
        }
    }
    const OrtInfo* info;
    try {
        info = &ort_load(opt.ort_library);
    } catch (const std::runtime_error& e) {
        fail(SEGVOL_ERR_BACKEND, e.what());
    }
    *cuda = opt.device == "cuda" || (opt.device == "auto" && info->cuda);
    if (opt.device == "cuda" && !info->cuda)
        fail(SEGVOL_ERR_BACKEND, "device cuda: the ONNX Runtime at " + info->path + " has no CUDAExecutionProvider");
    return "onnxruntime " + info->version;
}

Runtime::Runtime(const std::string& dir, const LoadOptions& opt) : opt_(opt) {
    if (opt.backend != "auto" && opt.backend != "onnxruntime" && opt.backend != "openvino")
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "backend '" + opt.backend + "': the C++ SDK runs onnxruntime or openvino (or auto: onnxruntime)");
    if (opt.device != "auto" && opt.device != "cpu" && opt.device != "cuda")
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "device '" + opt.device + "': choose auto, cpu or cuda");
    if (opt.threads < 0) fail(SEGVOL_ERR_INVALID_ARGUMENT, "threads must be >= 0");
    openvino_ = opt.backend == "openvino";
    // OpenVINO compiles the fp32 graphs in the asked inference precision (no graph variant)
    art_ = Artifacts::load(dir, openvino_ ? "fp32" : opt.precision);
    orientation_ = model_orientation(opt.reorient, art_.voxel_orientation);
    if (opt.verify) art_.verify();
    bool cuda = false;
    std::string library = open_backend(opt, &cuda);
    cuda_ = cuda;
    pool_ = std::make_unique<ThreadPool>(opt.threads > 0 ? opt.threads : cpu_cores());
    if (cuda) {
        try {
            stream_ = Stream::cuda(0);
        } catch (const std::exception& e) {
            fail(SEGVOL_ERR_BACKEND, std::string("device cuda: ") + e.what());
        }
    }
    GraphOptions go;
    go.threads = opt.threads;
    go.cuda = cuda;
    go.precision = opt.precision;
    std::unique_ptr<Graph> encoder = open_graph(IMAGE_ENCODER, go);  // in this order: the encoder's error first
    std::unique_ptr<Graph> decoder = open_graph(PROMPT_DECODER, go);
    for (const Graph* g : {encoder.get(), decoder.get()})  // what loading compiled (the text encoder opens later)
        if (g->compiled_now()) compiled_now_.push_back(g == encoder.get() ? IMAGE_ENCODER : PROMPT_DECODER);
    try {
        graphs_ = std::make_unique<Graphs>(std::move(encoder), art_.graphs[IMAGE_ENCODER].inputs, std::move(decoder),
                                           art_.graphs[PROMPT_DECODER].inputs);
    } catch (const std::invalid_argument& e) {
        fail(SEGVOL_ERR_ARTIFACTS, std::string(e.what()) + "; export the artifacts again");
    }
    // preferred batches as the Python backend's (segvol_rt.backends.base.preferred_batch)
    enc_batch_ = cuda ? art_.graphs[IMAGE_ENCODER].batch[2] : std::max(1, art_.graphs[IMAGE_ENCODER].batch[0]);
    const std::array<int, 3>& dec = art_.graphs[PROMPT_DECODER].batch;  // (min, opt, max)
    int cpu_dec = openvino_ ? CPU_DECODER_BATCH_OPENVINO : CPU_DECODER_BATCH_ONNXRUNTIME;
    dec_batch_ = cuda ? dec[2] : std::max(dec[0], std::min(dec[2], cpu_dec));
    text_batch_ = art_.graphs[TEXT_ENCODER].batch[2];
    max_points_ = art_.graphs[PROMPT_DECODER].tokens[2] - EXTRA_TOKENS;
    std::vector<std::string> names;
    std::vector<float> rows;
    art_.text_table(&names, &rows);
    for (size_t i = 0; i < names.size(); ++i)
        table_[normalize_name(names[i])] =
            std::vector<float>(rows.begin() + (long)i * art_.embed_dim, rows.begin() + (long)(i + 1) * art_.embed_dim);
    std::ostringstream d;
    d << library << " (" << (cuda ? "cuda" : "cpu") << ", " << (opt.threads > 0 ? std::to_string(opt.threads) : std::string("all"))
      << " threads, " << opt.precision << ")";
    describe_ = d.str();
}

// the volume (device buffers among its cached embeddings) goes before the stream they were made on
Runtime::~Runtime() { vol_.reset(); }

// A session of graph `name`, its inputs and outputs checked against the manifest's spec
// (as segvol_rt.backends.onnxruntime.check_session_io): a graph from another export is
// refused at load, not mid-run.
std::unique_ptr<Graph> Runtime::open_graph(const std::string& name, const GraphOptions& go) {
    const GraphEntry& e = art_.graphs.at(name);
    std::string path = art_.path(e.file);
    std::string cache = openvino_ ? graph_cache_dir(ov_cache_, e.sha256) : std::string();
    std::unique_ptr<Graph> g;
    try {
        g = openvino_ ? openvino_graph(path, name, go, cache, e.inputs, e.outputs) : ort_graph(path, name, go);
    } catch (const std::exception& ex) {
        fail(SEGVOL_ERR_BACKEND, "cannot open " + path + ": " + std::string(ex.what()).substr(0, 300));
    }
    auto names = [](const std::vector<std::string>& v) {
        std::string s;
        for (const std::string& x : v) s += (s.empty() ? "" : ", ") + x;
        return s;
    };
    std::vector<std::string> want_in(e.inputs), got_in(g->input_names());
    std::sort(want_in.begin(), want_in.end());
    std::sort(got_in.begin(), got_in.end());
    if (want_in != got_in || g->output_names().empty() || e.outputs.empty() || g->output_names()[0] != e.outputs[0])
        fail(SEGVOL_ERR_ARTIFACTS, path + " is not the " + name + " graph its spec describes (inputs " + names(g->input_names()) +
                                       ", expected " + names(e.inputs) + "); export the artifacts again");
    return g;
}

std::string Runtime::describe() const { return describe_; }

unsigned long long Runtime::windows_encoded() const { return vol_ ? vol_->windows_encoded : 0; }

std::array<i64, 3> Runtime::volume_dims() const {
    if (!vol_) fail(SEGVOL_ERR_NO_VOLUME, "no volume: call set_volume first");
    return vol_->scan_shape;
}

void Runtime::release_volume() { vol_.reset(); }

}  // namespace segvol::detail
