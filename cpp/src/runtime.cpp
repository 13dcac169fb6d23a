// The runtime's life cycle: load (options, backend, graphs checked against their specs),
// describe, the volume's release.
#include "pipeline_internal.hpp"

namespace segvol::detail {

Runtime::Runtime(const std::string& dir, const LoadOptions& opt) : opt_(opt) {
    if (opt.backend != "auto" && opt.backend != "onnxruntime")
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "backend '" + opt.backend + "': the C++ SDK runs onnxruntime (or auto)");
    if (opt.device != "auto" && opt.device != "cpu" && opt.device != "cuda")
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "device '" + opt.device + "': choose auto, cpu or cuda");
    if (opt.threads < 0) fail(SEGVOL_ERR_INVALID_ARGUMENT, "threads must be >= 0");
    art_ = Artifacts::load(dir, opt.precision);
    if (opt.verify) art_.verify();
    const OrtInfo* info;
    try {
        info = &ort_load(opt.ort_library);
    } catch (const std::runtime_error& e) {
        fail(SEGVOL_ERR_BACKEND, e.what());
    }
    bool cuda = opt.device == "cuda" || (opt.device == "auto" && info->cuda);
    cuda_ = cuda;
    if (opt.device == "cuda" && !info->cuda)
        fail(SEGVOL_ERR_BACKEND, "device cuda: the ONNX Runtime at " + info->path + " has no CUDAExecutionProvider");
    GraphOptions go;
    go.threads = opt.threads;
    go.cuda = cuda;
    kernels::set_max_threads(opt.threads);
    auto open = [&](const char* name) { return open_graph(name, go); };
    encoder_ = open("image_encoder");
    decoder_ = open("prompt_decoder");
    // preferred batches as the Python backend's (segvol_rt.backends.base.preferred_batch)
    enc_batch_ = cuda ? art_.graphs["image_encoder"].batch[2] : std::max(1, art_.graphs["image_encoder"].batch[0]);
    const std::array<int, 3>& dec = art_.graphs[PROMPT_DECODER].batch;  // (min, opt, max)
    dec_batch_ = cuda ? dec[2] : std::max(dec[0], std::min(dec[2], CPU_DECODER_BATCH_ONNXRUNTIME));
    text_batch_ = art_.graphs["text_encoder"].batch[2];
    max_points_ = art_.graphs[PROMPT_DECODER].tokens[2] - EXTRA_TOKENS;
    std::vector<std::string> names;
    std::vector<float> rows;
    art_.text_table(&names, &rows);
    for (size_t i = 0; i < names.size(); ++i)
        table_[normalize_name(names[i])] =
            std::vector<float>(rows.begin() + (long)i * art_.embed_dim, rows.begin() + (long)(i + 1) * art_.embed_dim);
    std::ostringstream d;
    d << "onnxruntime " << info->version << " (" << (cuda ? "cuda" : "cpu") << ", "
      << (opt.threads > 0 ? std::to_string(opt.threads) : std::string("all")) << " threads, " << opt.precision << ")";
    describe_ = d.str();
}

Runtime::~Runtime() = default;

// A session of graph `name`, its inputs and outputs checked against the manifest's spec
// (as segvol_rt.backends.onnxruntime.check_session_io): a graph from another export is
// refused at load, not mid-run.
std::unique_ptr<Graph> Runtime::open_graph(const char* name, const GraphOptions& go) {
    const GraphEntry& e = art_.graphs.at(name);
    std::string path = art_.path(e.file);
    std::unique_ptr<Graph> g;
    try {
        g = std::make_unique<Graph>(path, name, go);
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
