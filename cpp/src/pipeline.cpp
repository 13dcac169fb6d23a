#include "pipeline.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <set>
#include <sstream>

#include "errors.hpp"
#include "generated/shared_constants.hpp"
#include "kernels_host.hpp"
#include "numpy_random.hpp"
#include "sizes.hpp"
#include "tokenizer.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>

namespace segvol {

// SEGVOL_RT_TRACE=1 prints each pipeline stage's seconds to stderr (profiling aid).
struct StageTimer {
    const char* name;
    std::chrono::steady_clock::time_point t0 = std::chrono::steady_clock::now();
    explicit StageTimer(const char* n) : name(n) {}
    ~StageTimer() {
        static const bool on = std::getenv("SEGVOL_RT_TRACE") && *std::getenv("SEGVOL_RT_TRACE") == '1';
        if (on)
            std::fprintf(stderr, "segvol_rt: %-16s %.4f s\n", name,
                         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
};

// OVERLAP, POINT_EXTRA_*, the token kinds, EXTRA_TOKENS, the CPU decoder batch: generated from Python
using namespace shared;
static const Box EMPTY_BOX{-1, -1, -1, -1, -1, -1};

static std::string box_str(const i64* b, int n) {
    std::ostringstream s;
    s << "(";
    for (int k = 0; k < n; ++k) s << (k ? ", " : "") << b[k];
    s << ")";
    return s.str();
}

// -- ROI, window plan -------------------------------------------------------------

Roi roi_from_box(const Box& box, const Vec3& size, const Vec3& window) {
    Roi r;
    for (int a = 0; a < 3; ++a) {
        i64 lo = box[a], hi = box[a + 3];
        i64 pad = std::max<i64>(0, window[a] - (hi - lo + 1));
        r.official[a] = std::max<i64>(0, lo - pad / 2);
        r.official[a + 3] = std::min<i64>(size[a], hi + pad / 2);
        r.lo[a] = r.official[a];
        r.hi[a] = std::min<i64>(r.official[a + 3] + 1, size[a]);
    }
    return r;
}

WindowPlan plan_windows(const Vec3& roi_shape, const Vec3& window, double overlap) {
    WindowPlan p;
    p.roi_shape = roi_shape;
    p.window = window;
    std::vector<i64> axes[3];
    for (int a = 0; a < 3; ++a) {
        i64 diff = std::max<i64>(window[a] - roi_shape[a], 0);
        p.pad_before[a] = diff / 2;
        p.padded_shape[a] = roi_shape[a] + diff;
        i64 size = std::max(roi_shape[a], window[a]), roi = window[a];
        i64 interval = roi == size ? roi : std::max<i64>((i64)((double)roi * (1 - overlap)), 1);
        i64 count = 1;
        if (interval > 0) {
            i64 n = (i64)std::ceil((double)size / (double)interval);
            for (i64 d = 0; d < n; ++d)
                if (d * interval + roi >= size) {
                    count = d + 1;
                    break;
                }
        }
        for (i64 i = 0; i < count; ++i) axes[a].push_back(std::min(i * interval, size - roi));
    }
    for (i64 d : axes[0])
        for (i64 h : axes[1])
            for (i64 w : axes[2]) p.starts.push_back({d, h, w});
    return p;
}

WindowKey window_key(const Roi& roi, const WindowPlan& plan, const Vec3& start) {
    WindowKey k;
    for (int a = 0; a < 3; ++a) {
        i64 lo = roi.lo[a] + start[a] - plan.pad_before[a];
        i64 hi = lo + plan.window[a];
        k[a] = lo;
        k[a + 3] = hi;
        k[a + 6] = std::max(lo, roi.lo[a]);
        k[a + 9] = std::min(hi, roi.hi[a]);
    }
    return k;
}

// -- window prompt rules --------------------------------------------------------------

Box generate_box(const Map8& m) {
    Box b{INT64_MAX, INT64_MAX, INT64_MAX, -1, -1, -1};
    bool any = false;
    for (i64 z = 0; z < m.shape[0]; ++z)
        for (i64 y = 0; y < m.shape[1]; ++y)
            for (i64 x = 0; x < m.shape[2]; ++x)
                if (m.at(z, y, x) > 0) {
                    any = true;
                    i64 c[3] = {z, y, x};
                    for (int a = 0; a < 3; ++a) {
                        b[a] = std::min(b[a], c[a]);
                        b[a + 3] = std::max(b[a + 3], c[a]);
                    }
                }
    return any ? b : EMPTY_BOX;
}

Points select_points(const Map8& m, NumpyGenerator& rng, int extra_pos, int extra_neg) {
    std::vector<std::array<i64, 3>> pos, neg;
    for (i64 z = 0; z < m.shape[0]; ++z)
        for (i64 y = 0; y < m.shape[1]; ++y)
            for (i64 x = 0; x < m.shape[2]; ++x) {
                unsigned char v = m.at(z, y, x);
                if (v > 0.9) pos.push_back({z, y, x});
                if (extra_neg > 0 && v < 0.1) neg.push_back({z, y, x});
            }
    Points p;
    if (pos.empty()) {
        extra_pos = 0;
        p.coords.push_back({-1, -1, -1});
        p.labels.push_back(-1);
    } else {
        p.coords.push_back(pos[(size_t)rng.integers((i64)pos.size())]);
        p.labels.push_back(1);
    }
    if (extra_pos > 0) {
        std::vector<int64_t> perm = rng.permutation((i64)pos.size());
        for (size_t i = 0; i < perm.size() && (int)i < extra_pos; ++i) {
            p.coords.push_back(pos[(size_t)perm[i]]);
            p.labels.push_back(1);
        }
    }
    if (extra_neg > 0) {
        std::vector<int64_t> perm = rng.permutation((i64)neg.size());
        for (size_t i = 0; i < perm.size() && (int)i < extra_neg; ++i) {
            p.coords.push_back(neg[(size_t)perm[i]]);
            p.labels.push_back(0);
        }
    }
    for (int i = (int)p.labels.size(); i < extra_pos + extra_neg + 1; ++i) {
        p.coords.push_back({-1, -1, -1});
        p.labels.push_back(-1);
    }
    return p;
}

Map8 slice_map(const Map8& m, const Vec3& start, const Vec3& window) {
    Vec3 lo, hi;
    Map8 out;
    for (int a = 0; a < 3; ++a) {
        lo[a] = std::min(start[a], m.shape[a]);
        hi[a] = std::max(lo[a], std::min(start[a] + window[a], m.shape[a]));
        out.shape[a] = hi[a] - lo[a];
    }
    out.v.resize((size_t)(out.shape[0] * out.shape[1] * out.shape[2]));
    size_t o = 0;
    for (i64 z = lo[0]; z < hi[0]; ++z)
        for (i64 y = lo[1]; y < hi[1]; ++y)
            for (i64 x = lo[2]; x < hi[2]; ++x) out.v[o++] = m.at(z, y, x);
    return out;
}

static Map8 pad_like_roi(const Map8& m, const WindowPlan& plan) {
    Map8 out;
    out.shape = plan.padded_shape;
    out.v.assign((size_t)(out.shape[0] * out.shape[1] * out.shape[2]), 0);
    for (i64 z = 0; z < m.shape[0]; ++z)
        for (i64 y = 0; y < m.shape[1]; ++y)
            for (i64 x = 0; x < m.shape[2]; ++x)
                out.v[(size_t)(((z + plan.pad_before[0]) * out.shape[1] + y + plan.pad_before[1]) * out.shape[2] + x +
                               plan.pad_before[2])] = m.at(z, y, x);
    return out;
}

Box resized_box(const Box& box, const Vec3& in, const Vec3& out, bool exact, bool* empty) {
    Box r;
    *empty = false;
    for (int a = 0; a < 3; ++a) {
        std::vector<i64> src = nearest_source_index(in[a], out[a], exact);
        i64 first = -1, last = -1;
        for (i64 o = 0; o < out[a]; ++o)
            if (src[(size_t)o] >= box[a] && src[(size_t)o] <= box[a + 3]) {
                if (first < 0) first = o;
                last = o;
            }
        if (first < 0) {
            *empty = true;
            return EMPTY_BOX;
        }
        r[a] = first;
        r[a + 3] = last;
    }
    return r;
}

Tokens decoder_tokens(const Points* points, const Box* box, bool text) {
    Tokens t;
    auto add = [&](float a, float b, float c, int label) {
        t.coords.insert(t.coords.end(), {a, b, c});
        t.labels.push_back(label);
    };
    if (points) {
        for (size_t i = 0; i < points->labels.size(); ++i)
            add((float)points->coords[i][0], (float)points->coords[i][1], (float)points->coords[i][2],
                (int)points->labels[i]);
        if (!box) add(0, 0, 0, LABEL_PAD);
    }
    if (box) {
        add((float)(*box)[0], (float)(*box)[1], (float)(*box)[2], LABEL_BOX_MIN);
        add((float)(*box)[3], (float)(*box)[4], (float)(*box)[5], LABEL_BOX_MAX);
    }
    if (text) add(0, 0, 0, LABEL_TEXT);
    if (t.labels.empty()) fail(SEGVOL_ERR_INVALID_ARGUMENT, "give at least one prompt: text, box or points");
    return t;
}

std::string normalize_name(const std::string& text) {
    // lowercase (ASCII: the table's names), trimmed, inner whitespace collapsed
    std::string out;
    bool space = false;
    for (unsigned char c : text) {
        if (std::isspace(c)) {
            space = !out.empty();
            continue;
        }
        if (space) out += ' ';
        space = false;
        out += (char)std::tolower(c);
    }
    return out;
}

// -- the runtime ----------------------------------------------------------------------

struct Runtime::Vol {
    std::array<i64, 3> scan_shape;  // (I, J, K)
    Vec3 model_shape;               // (K, J, I)
    Vec3 crop_lo;                   // crop start in model space
    Volume crop, zoom;              // crop image, zoom-out image
    std::vector<float> zoom_embedding;
    // window embeddings: key -> (embedding), least recently used first out
    std::map<WindowKey, std::pair<std::vector<float>, std::list<WindowKey>::iterator>> cache;
    std::list<WindowKey> lru;
    unsigned long long cache_bytes = 0, windows_encoded = 0;
};

struct Runtime::Target {
    const std::vector<float>* text = nullptr;
    std::optional<Box> box_zoom;
    std::optional<Points> points_zoom;
    unsigned long long seed = 0;
};

static Vec3 v3(const std::array<long long, 3>& a) { return {a[0], a[1], a[2]}; }

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

template <typename T>
static void to_float(const void* data, size_t n, float* out) {
    const T* p = static_cast<const T*>(data);
    for (size_t i = 0; i < n; ++i) out[i] = (float)p[i];
}

void Runtime::set_volume(const void* data, DType dtype, const std::array<i64, 3>& dims, const double* affine) {
    size_t n = checked_voxels(dims);  // before any product of dims is formed
    if (affine)
        for (int k = 0; k < 16; ++k)
            if (!std::isfinite(affine[k])) fail(SEGVOL_ERR_INVALID_ARGUMENT, "affine must be a finite real 4x4 array");
    std::vector<float> f(n);
    switch (dtype) {
        case DType::U8: to_float<uint8_t>(data, n, f.data()); break;
        case DType::I8: to_float<int8_t>(data, n, f.data()); break;
        case DType::U16: to_float<uint16_t>(data, n, f.data()); break;
        case DType::I16: to_float<int16_t>(data, n, f.data()); break;
        case DType::U32: to_float<uint32_t>(data, n, f.data()); break;
        case DType::I32: to_float<int32_t>(data, n, f.data()); break;
        case DType::I64: to_float<int64_t>(data, n, f.data()); break;
        case DType::F32: std::memcpy(f.data(), data, n * 4); break;
        case DType::F64: to_float<double>(data, n, f.data()); break;
    }
    vol_.reset();
    auto v = std::make_unique<Vol>();
    v->scan_shape = dims;
    v->model_shape = {dims[2], dims[1], dims[0]};
    ForegroundStats st;
    try {
        StageTimer timer("stats");
        st = foreground_stats(f.data(), (i64)n);
    } catch (const std::invalid_argument& e) {
        fail(SEGVOL_ERR_SCAN, std::string("cannot normalise the scan: ") + e.what());
    }
    if (!std::isfinite(st.lower) || !std::isfinite(st.upper) || !std::isfinite(st.mean) || !std::isfinite(st.std))
        fail(SEGVOL_ERR_SCAN, "cannot normalise the scan: its values overflow the float32 intensity statistics of the official pipeline");
    StageTimer timer("normalize+crop");
    normalize_min_max(f.data(), (i64)n, st, f.data());
    int b[6];
    if (!kernels::bbox_float(f.data(), v->model_shape.data(), std::numeric_limits<float>::denorm_min(), b))
        fail(SEGVOL_ERR_SCAN, (float)st.lower == (float)st.upper
                                  ? "the scan has no foreground after normalisation: its voxels above the mean nearly all have one value; is it a binary mask or a label map rather than a CT?"
                                  : "the scan has no foreground after normalisation: its normalised intensities are all equal");
    Vec3 ext{b[3] - b[0] + 1, b[4] - b[1] + 1, b[5] - b[2] + 1};
    v->crop_lo = {b[0], b[1], b[2]};
    Vec3 ms = v->model_shape;
    Vec3 strides{ms[1] * ms[2], ms[2], 1};
    // the crop (a plain copy: nearest at scale 1 is the identity) and the zoom-out image
    v->crop = Volume(ext);
    for (i64 z = 0; z < ext[0]; ++z)
        for (i64 y = 0; y < ext[1]; ++y)
            std::memcpy(v->crop.ptr() + (z * ext[1] + y) * ext[2], f.data() + (b[0] + z) * strides[0] + (b[1] + y) * strides[1] + b[2],
                        sizeof(float) * (size_t)ext[2]);
    Vec3 zero{0, 0, 0}, cs{ext[1] * ext[2], ext[2], 1};
    v->zoom = resize_nearest(v->crop.ptr(), cs, zero, ext, v3(art_.spatial_size), true);
    vol_ = std::move(v);
}

static std::string strip(const std::string& t) {
    size_t s = t.find_first_not_of(" \t\n\r\f\v"), e = t.find_last_not_of(" \t\n\r\f\v");
    return s == std::string::npos ? std::string() : t.substr(s, e - s + 1);
}

std::vector<std::vector<float>> Runtime::text_embeddings(const std::vector<std::string>& texts) {
    // as SegVolRuntime.text_embeddings: table rows, then cached phrases, then the new
    // phrases through the text encoder, text_batch_ per call, in first-seen order
    std::vector<std::string> keys, fresh;
    std::map<std::string, std::string> raw;
    for (const std::string& t : texts) {
        keys.push_back(normalize_name(t));
        raw[keys.back()] = strip(t);
    }
    for (const std::string& k : keys)
        if (!table_.count(k) && !phrases_.count(k) && std::find(fresh.begin(), fresh.end(), k) == fresh.end()) fresh.push_back(k);
    if (!fresh.empty() && !tokenizer_) {
        tokenizer_ = Tokenizer::from_dir(art_.path(art_.tokenizer_dir), 0);  // max_length as Python: tokenizer_config.json, else 77
        GraphOptions go;
        go.threads = opt_.threads;
        go.cuda = cuda_;
        text_encoder_ = open_graph("text_encoder", go);
    }
    for (size_t i = 0; i < fresh.size(); i += (size_t)text_batch_) {
        size_t n = std::min(fresh.size() - i, (size_t)text_batch_);
        Tensor ids;
        ids.kind = 2;
        for (size_t j = 0; j < n; ++j) {
            std::string sentence = art_.prompt_template;
            size_t at = sentence.find("{}");
            if (at != std::string::npos) sentence.replace(at, 2, raw[fresh[i + j]]);
            std::vector<long long> row = tokenizer_->encode(sentence);
            ids.i64.insert(ids.i64.end(), row.begin(), row.end());
        }
        ids.shape = {(long long)n, (long long)(ids.i64.size() / n)};
        std::vector<long long> shape;
        std::vector<float> out = text_encoder_->run({{art_.graphs["text_encoder"].inputs[0], &ids}}, &shape);
        size_t per = out.size() / n;
        for (size_t j = 0; j < n; ++j)
            phrases_[fresh[i + j]] = std::vector<float>(out.begin() + (long)(j * per), out.begin() + (long)((j + 1) * per));
    }
    std::vector<std::vector<float>> rows;
    for (const std::string& k : keys) rows.push_back(table_.count(k) ? table_.at(k) : phrases_.at(k));
    return rows;
}

std::vector<std::vector<float>> Runtime::decode(const std::vector<const std::vector<float>*>& embeddings,
                                                const std::vector<Tokens>& tokens,
                                                const std::vector<const std::vector<float>*>& texts) {
    // rows with the same labels share calls (zoom.decode_batched), groups in first-seen order
    std::vector<std::pair<std::vector<int>, std::vector<size_t>>> groups;
    for (size_t i = 0; i < tokens.size(); ++i) {
        auto g = std::find_if(groups.begin(), groups.end(), [&](auto& x) { return x.first == tokens[i].labels; });
        if (g == groups.end()) groups.push_back({tokens[i].labels, {i}});
        else g->second.push_back(i);
    }
    const GraphEntry& spec = art_.graphs["prompt_decoder"];
    std::vector<std::vector<float>> out(tokens.size());
    for (auto& [labels, rows] : groups) {
        for (size_t j = 0; j < rows.size(); j += (size_t)dec_batch_) {
            std::vector<size_t> idx(rows.begin() + (long)j, rows.begin() + (long)std::min(rows.size(), j + (size_t)dec_batch_));
            long long B = (long long)idx.size(), N = (long long)labels.size(), C = art_.embed_dim;
            Tensor emb, coords, lab, text;
            size_t per = embeddings[idx[0]]->size();
            emb.f.reserve(per * idx.size());
            for (size_t i : idx) emb.f.insert(emb.f.end(), embeddings[i]->begin(), embeddings[i]->end());
            for (size_t i : idx) {
                coords.f.insert(coords.f.end(), tokens[i].coords.begin(), tokens[i].coords.end());
                lab.i32.insert(lab.i32.end(), tokens[i].labels.begin(), tokens[i].labels.end());
                if (texts[i]) text.f.insert(text.f.end(), texts[i]->begin(), texts[i]->end());
                else text.f.insert(text.f.end(), (size_t)C, 0.0f);
            }
            emb.shape = emb_shape_;
            emb.shape[0] = B;
            coords.shape = {B, N, 3};
            lab.kind = 1;
            lab.shape = {B, N};
            text.shape = {B, C};
            std::vector<std::pair<std::string, const Tensor*>> feeds;
            const Tensor* by_pos[4] = {&emb, &coords, &lab, &text};
            for (size_t k = 0; k < 4; ++k) feeds.push_back({spec.inputs[k], by_pos[k]});
            std::vector<long long> shape;
            std::vector<float> logits = decoder_->run(feeds, &shape);
            size_t row = logits.size() / (size_t)B;
            for (size_t r = 0; r < idx.size(); ++r) out[idx[r]].assign(logits.begin() + (long)(r * row), logits.begin() + (long)((r + 1) * row));
            low_shape_ = {shape[2], shape[3], shape[4]};
        }
    }
    return out;
}

}  // namespace segvol

namespace segvol {

std::vector<float> Runtime::encode(const std::vector<float>& batch, long long n) {
    Tensor img;
    img.f = batch;
    img.shape = {n, 1, art_.spatial_size[0], art_.spatial_size[1], art_.spatial_size[2]};
    std::vector<long long> shape;
    std::vector<float> out = encoder_->run({{art_.graphs["image_encoder"].inputs[0], &img}}, &shape);
    emb_shape_ = shape;
    return out;
}

// The window image of a key: crop voxels inside the ROI, zeros elsewhere (zoom.window_batch).
static void window_image(const Volume& crop, const WindowKey& k, float* out) {
    Vec3 size{k[3] - k[0], k[4] - k[1], k[5] - k[2]};
    std::fill(out, out + size[0] * size[1] * size[2], 0.0f);
    for (i64 z = k[6]; z < k[9]; ++z)
        for (i64 y = k[7]; y < k[10]; ++y) {
            if (k[11] <= k[8]) continue;
            std::memcpy(out + ((z - k[0]) * size[1] + (y - k[1])) * size[2] + (k[8] - k[2]),
                        crop.ptr() + (z * crop.shape[1] + y) * crop.shape[2] + k[8], sizeof(float) * (size_t)(k[11] - k[8]));
        }
}

void Runtime::ensure_windows(const std::vector<WindowKey>& keys) {
    Vol& v = *vol_;
    std::vector<WindowKey> todo;
    std::set<WindowKey> seen;
    for (const WindowKey& k : keys) {
        if (!seen.insert(k).second) continue;
        auto it = v.cache.find(k);
        if (it != v.cache.end()) {  // mark as used
            v.lru.splice(v.lru.end(), v.lru, it->second.second);
            continue;
        }
        todo.push_back(k);
    }
    Vec3 w = v3(art_.spatial_size);
    size_t vox = (size_t)(w[0] * w[1] * w[2]);
    for (size_t i = 0; i < todo.size(); i += (size_t)enc_batch_) {
        size_t n = std::min(todo.size() - i, (size_t)enc_batch_);
        std::vector<float> batch(vox * n);
        for (size_t j = 0; j < n; ++j) window_image(v.crop, todo[i + j], batch.data() + j * vox);
        std::vector<float> emb = encode(batch, (long long)n);
        size_t per = emb.size() / n;
        v.windows_encoded += n;
        for (size_t j = 0; j < n; ++j) {
            v.lru.push_back(todo[i + j]);
            v.cache[todo[i + j]] = {std::vector<float>(emb.begin() + (long)(j * per), emb.begin() + (long)((j + 1) * per)),
                                    std::prev(v.lru.end())};
            v.cache_bytes += per * sizeof(float);
        }
    }
}

void Runtime::trim_cache(const std::set<WindowKey>& pinned) {
    Vol& v = *vol_;
    for (auto it = v.lru.begin(); it != v.lru.end() && v.cache_bytes > opt_.cache_bytes;) {
        if (pinned.count(*it)) {
            ++it;
            continue;
        }
        auto c = v.cache.find(*it);
        v.cache_bytes -= c->second.first.size() * sizeof(float);
        v.cache.erase(c);
        it = v.lru.erase(it);
    }
}

// resize(binary map of zoom shape, crop shape, "nearest")[roi] from the index tables
template <typename F>
static Map8 nearest_to_roi(const Vec3& zoom_shape, const Vec3& crop_shape, const Roi& roi, F value) {
    std::vector<i64> idx[3];
    Map8 m;
    for (int a = 0; a < 3; ++a) {
        std::vector<i64> t = nearest_source_index(zoom_shape[a], crop_shape[a], false);
        idx[a].assign(t.begin() + roi.lo[a], t.begin() + roi.hi[a]);
        m.shape[a] = roi.hi[a] - roi.lo[a];
    }
    m.v.resize((size_t)(m.shape[0] * m.shape[1] * m.shape[2]));
    size_t o = 0;
    for (i64 z : idx[0])
        for (i64 y : idx[1])
            for (i64 x : idx[2]) m.v[o++] = value(z, y, x);
    return m;
}

static Box global_preds_box(const Volume& coarse, const WindowKey& k) {
    for (int a = 0; a < 3; ++a)
        if (k[a + 9] <= k[a + 6]) return EMPTY_BOX;
    std::optional<Box> b = positive_box(coarse, {k[6], k[7], k[8]}, {k[9], k[10], k[11]});
    if (!b) return EMPTY_BOX;
    Box r;
    for (int a = 0; a < 3; ++a) {
        r[a] = (*b)[a] + k[a + 6] - k[a];
        r[a + 3] = (*b)[a + 3] + k[a + 6] - k[a];
    }
    return r;
}

// -- segment: prompts -> coarse pass -> zoom-in plans -> zoom-in -> masks ----------------

// A scan-space box (validated) in zoom-out space, as prompts.to_model_space: scan (i, j, k)
// -> model (k, j, i) -> crop (minus the crop start, clipped) -> the bounding box of its
// nearest-exact resize; a box thinner than one zoom-out voxel keeps its corners' voxels.
static Box box_to_zoom(const std::array<i64, 6>& b, const std::array<i64, 3>& scan, const Vec3& crop_lo,
                       const Vec3& crop_shape, const Vec3& spatial, const std::string& where) {
    for (int a = 0; a < 3; ++a)
        if (b[a] > b[a + 3]) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "box " + box_str(b.data(), 6) + " is empty: need i0<=i1, j0<=j1, k0<=k1");
    for (int a = 0; a < 3; ++a)
        if (b[a] < 0 || b[a + 3] >= scan[a])
            fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "box " + box_str(b.data(), 6) + " is outside the scan of shape " + box_str(scan.data(), 3));
    Box crop;
    for (int a = 0; a < 3; ++a) {
        crop[a] = std::max<i64>(b[2 - a] - crop_lo[a], 0);
        crop[a + 3] = std::min<i64>(b[5 - a] - crop_lo[a], crop_shape[a] - 1);
        if (crop[a] > crop[a + 3])
            fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "box " + box_str(b.data(), 6) + " lies outside the scan's foreground crop; nothing to segment there");
    }
    bool empty;
    Box zoom = resized_box(crop, crop_shape, spatial, true, &empty);
    if (empty)
        for (int a = 0; a < 3; ++a) {
            zoom[a] = ((2 * crop[a] + 1) * spatial[a]) / (2 * crop_shape[a]);
            zoom[a + 3] = ((2 * crop[a + 3] + 1) * spatial[a]) / (2 * crop_shape[a]);
        }
    return zoom;
}

// Scan-space points (validated) as the zoom-out voxels holding their crop voxels' centres.
static Points points_to_zoom(const std::vector<std::array<i64, 4>>& pts, const std::array<i64, 3>& scan, const Vec3& crop_lo,
                             const Vec3& crop_shape, const Vec3& spatial, int max_points, const std::string& where) {
    if ((int)pts.size() > max_points)
        fail(SEGVOL_ERR_INVALID_ARGUMENT, where + std::to_string(pts.size()) + " points given; the artifacts take at most " + std::to_string(max_points));
    Points pz;
    for (const auto& p : pts) {
        if (p[3] != 0 && p[3] != 1) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "point " + box_str(p.data(), 4) + ": label must be 1 (positive) or 0 (negative)");
        for (int a = 0; a < 3; ++a)
            if (p[a] < 0 || p[a] >= scan[a])
                fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "point " + box_str(p.data(), 3) + " is outside the scan of shape " + box_str(scan.data(), 3));
        std::array<i64, 3> z;
        for (int a = 0; a < 3; ++a) {
            i64 c = p[2 - a] - crop_lo[a];
            if (c < 0 || c >= crop_shape[a])
                fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "point " + box_str(p.data(), 3) + " lies outside the scan's foreground crop; nothing to segment there");
            z[a] = ((2 * c + 1) * spatial[a]) / (2 * crop_shape[a]);
        }
        pz.coords.push_back(z);
        pz.labels.push_back(p[3]);
    }
    return pz;
}

// Validated model-space targets of the requests, their text rows in `texts` (kept alive by the caller).
std::vector<Runtime::Target> Runtime::model_targets(const std::vector<Request>& requests, std::vector<std::vector<float>>* texts) {
    const Vol& v = *vol_;
    Vec3 spatial = v3(art_.spatial_size);
    std::vector<Target> targets(requests.size());
    for (size_t t = 0; t < requests.size(); ++t) {
        const Request& r = requests[t];
        std::string where = requests.size() > 1 ? "targets[" + std::to_string(t) + "]: " : "";
        if (!r.text && !r.box && r.points.empty()) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "give at least one prompt: text, box or points");
        if (r.text && normalize_name(*r.text).empty()) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "text prompt is empty");
        targets[t].seed = r.seed;
        if (r.box) targets[t].box_zoom = box_to_zoom(*r.box, v.scan_shape, v.crop_lo, v.crop.shape, spatial, where);
        if (!r.points.empty())
            targets[t].points_zoom = points_to_zoom(r.points, v.scan_shape, v.crop_lo, v.crop.shape, spatial, max_points_, where);
    }
    std::vector<std::string> phrases;
    for (const Request& r : requests)
        if (r.text) phrases.push_back(*r.text);
    texts->assign(requests.size(), {});
    if (!phrases.empty()) {
        std::vector<std::vector<float>> rows = text_embeddings(phrases);
        for (size_t t = 0, j = 0; t < requests.size(); ++t)
            if (requests[t].text) {
                (*texts)[t] = std::move(rows[j++]);
                targets[t].text = &(*texts)[t];
            }
    }
    return targets;
}

// The coarse crop logits (D, H, W) per target: the zoom-out embedding (encoded once per
// volume) decoded with the zoom-out prompts, trilinear to the window, nearest to the crop.
std::vector<Volume> Runtime::coarse_pass(const std::vector<Target>& targets) {
    Vol& v = *vol_;
    if (v.zoom_embedding.empty()) {
        StageTimer timer("encode_zoom_out");
        v.zoom_embedding = encode(v.zoom.data, 1);
    }
    std::vector<Tokens> tokens;
    std::vector<const std::vector<float>*> embs, txt;
    for (const Target& tg : targets) {
        tokens.push_back(decoder_tokens(tg.points_zoom ? &*tg.points_zoom : nullptr, tg.box_zoom ? &*tg.box_zoom : nullptr, tg.text != nullptr));
        embs.push_back(&v.zoom_embedding);
        txt.push_back(tg.text);
    }
    StageTimer timer("coarse_pass");
    std::vector<std::vector<float>> low = decode(embs, tokens, txt);
    std::vector<Volume> coarse;
    for (auto& l : low) {
        Volume lv(low_shape_);
        lv.data = std::move(l);
        coarse.push_back(upsample_then_nearest(lv, v3(art_.spatial_size), v.crop.shape));
    }
    return coarse;
}

// A target's zoom-in (zoom.plan_zoom_in): ROI around the coarse positives `pos`, the window
// plan, each window's cache key and decoder tokens (window prompts by the official rules).
Runtime::ZoomPlan Runtime::plan_zoom_in(const Target& tg, const Volume& coarse, const Box& pos, bool aligned) const {
    Vec3 spatial = v3(art_.spatial_size), crop_shape = coarse.shape;
    ZoomPlan p;
    p.roi = roi_from_box(pos, crop_shape, spatial);
    p.windows = plan_windows(p.roi.shape(), spatial, OVERLAP);
    bool single = p.windows.starts.size() == 1;
    std::optional<Map8> cube, point_map;
    if (tg.box_zoom && single) {  // the cube is read only with a single window
        const Box& bz = *tg.box_zoom;
        cube = nearest_to_roi(spatial, crop_shape, p.roi, [&](i64 z, i64 y, i64 x) {
            i64 c[3] = {z, y, x};
            for (int a = 0; a < 3; ++a)
                if (c[a] < std::max<i64>(bz[a], 0) || c[a] > bz[a + 3]) return (unsigned char)0;
            return (unsigned char)1;
        });
    }
    if (tg.points_zoom) {
        std::set<std::array<i64, 3>> positive;
        for (size_t i = 0; i < tg.points_zoom->labels.size(); ++i)
            if (tg.points_zoom->labels[i] == 1) positive.insert(tg.points_zoom->coords[i]);
        point_map = nearest_to_roi(spatial, crop_shape, p.roi,
                                   [&](i64 z, i64 y, i64 x) { return (unsigned char)(positive.count({z, y, x}) ? 1 : 0); });
    }
    if (aligned) {
        if (cube) cube = pad_like_roi(*cube, p.windows);
        if (point_map) point_map = pad_like_roi(*point_map, p.windows);
    }
    NumpyGenerator rng(tg.seed);
    for (const Vec3& start : p.windows.starts) {
        WindowKey key = window_key(p.roi, p.windows, start);
        std::optional<Box> box;
        std::optional<Points> points;
        if (tg.box_zoom) box = single ? generate_box(slice_map(*cube, start, spatial)) : global_preds_box(coarse, key);
        if (point_map) {
            points = select_points(slice_map(*point_map, start, spatial), rng, POINT_EXTRA_POSITIVE, POINT_EXTRA_NEGATIVE);
            if (!box) box = global_preds_box(coarse, key);
        }
        p.keys.push_back(key);
        p.tokens.push_back(decoder_tokens(points ? &*points : nullptr, box ? &*box : nullptr, tg.text != nullptr));
    }
    return p;
}

// ROI logits of one planned target: its windows decoded (embeddings from the cache),
// trilinear to the window, blended in window order (MONAI constant), padding cut away.
Volume Runtime::zoom_in(const ZoomPlan& p, const Target& tg) {
    Vec3 spatial = v3(art_.spatial_size);
    std::vector<const std::vector<float>*> e, tx;
    for (const WindowKey& k : p.keys) {
        e.push_back(&vol_->cache.at(k).first);
        tx.push_back(tg.text);
    }
    std::vector<std::vector<float>> wl = decode(e, p.tokens, tx);
    Volume total(p.windows.padded_shape), count(p.windows.padded_shape);
    for (size_t i = 0; i < wl.size(); ++i) {
        Volume lv(low_shape_);
        lv.data = std::move(wl[i]);
        Volume full = resize_trilinear(lv, spatial);
        long long start[3] = {p.windows.starts[i][0], p.windows.starts[i][1], p.windows.starts[i][2]};
        kernels::blend_accumulate(full.ptr(), start, 1, spatial.data(), total.ptr(), count.ptr(), total.shape[1], total.shape[2],
                                  start, spatial.data());
    }
    Volume avg(total.shape);
    kernels::blend_divide(total.ptr(), count.ptr(), avg.ptr(), avg.size(), std::numeric_limits<float>::quiet_NaN());
    Vec3 rs = p.roi.shape();
    Volume roi(rs);
    const Vec3& pb = p.windows.pad_before;
    for (i64 z = 0; z < rs[0]; ++z)
        for (i64 y = 0; y < rs[1]; ++y)
            std::memcpy(roi.ptr() + (z * rs[1] + y) * rs[2], avg.ptr() + ((z + pb[0]) * avg.shape[1] + y + pb[1]) * avg.shape[2] + pb[2],
                        sizeof(float) * (size_t)rs[2]);
    return roi;
}

// The scan-space result: the uint8 mask straight from the coarse and ROI logits (one
// kernel, no paste), and the probabilities (paste, sigmoid) when asked for.
Result Runtime::finish(const Volume& coarse, const ZoomPlan* plan, const Volume* roi, bool found, bool probabilities) const {
    const Vol& v = *vol_;
    const std::array<i64, 3>& scan = v.scan_shape;
    Vec3 crop_shape = coarse.shape, zero{0, 0, 0};
    Vec3 out_shape{scan[2], scan[1], scan[0]};  // (K, J, I) C-ordered = (I, J, K) with i fastest
    int perm[3] = {0, 1, 2}, flips[3] = {0, 0, 0};
    Result r;
    r.no_foreground = !found;
    r.mask.resize((size_t)(scan[0] * scan[1] * scan[2]));
    Vec3 rstart = plan ? plan->roi.lo : zero;
    Vec3 rshape = roi ? roi->shape : zero;
    kernels::scan_mask(coarse.ptr(), crop_shape.data(), roi ? roi->ptr() : coarse.ptr(), rstart.data(), rshape.data(), r.mask.data(),
                       out_shape.data(), perm, flips, v.crop_lo.data(), positive_threshold());
    if (plan) {
        r.roi = plan->roi;
        r.n_windows = (int)plan->keys.size();
        r.zoom_in_applied = true;
    }
    if (probabilities) {
        Volume logits = coarse;
        if (roi) {
            Vec3 st{rshape[1] * rshape[2], rshape[2], 1};
            kernels::paste_f32(roi->ptr(), st.data(), rshape.data(), logits.ptr(), crop_shape[1], crop_shape[2], rstart.data());
        }
        r.probabilities.assign(r.mask.size(), 0.0f);
        for (i64 z = 0; z < crop_shape[0]; ++z)
            for (i64 y = 0; y < crop_shape[1]; ++y)
                for (i64 x = 0; x < crop_shape[2]; ++x) {
                    float l = logits.data[(size_t)((z * crop_shape[1] + y) * crop_shape[2] + x)];
                    i64 m0 = z + v.crop_lo[0], m1 = y + v.crop_lo[1], m2 = x + v.crop_lo[2];
                    r.probabilities[(size_t)((m0 * out_shape[1] + m1) * out_shape[2] + m2)] = 1.0f / (1.0f + std::exp(-l));
                }
    }
    return r;
}

std::vector<Result> Runtime::segment(const std::vector<Request>& requests) {
    if (!vol_) fail(SEGVOL_ERR_NO_VOLUME, "no volume: call set_volume before segment");
    std::vector<std::vector<float>> texts;
    std::vector<Target> targets = model_targets(requests, &texts);
    std::vector<Volume> coarse = coarse_pass(targets);
    std::vector<std::optional<ZoomPlan>> plans(requests.size());
    std::vector<bool> found(requests.size());
    for (size_t t = 0; t < requests.size(); ++t) {
        std::optional<Box> pos = positive_box(coarse[t]);  // "no foreground" when None
        found[t] = pos.has_value();
        if (requests[t].zoom_in && pos) plans[t] = plan_zoom_in(targets[t], coarse[t], *pos, requests[t].aligned);
    }
    // every distinct window of every target through the encoder once, then each target's windows
    std::vector<WindowKey> all;
    for (auto& p : plans)
        if (p) all.insert(all.end(), p->keys.begin(), p->keys.end());
    {
        StageTimer timer("encode_windows");
        ensure_windows(all);
    }
    std::vector<Volume> roi_logits(requests.size());
    {
        StageTimer timer("zoom_in");
        for (size_t t = 0; t < requests.size(); ++t)
            if (plans[t]) roi_logits[t] = zoom_in(*plans[t], targets[t]);
    }
    trim_cache({});  // back to the bound, least recently used out
    StageTimer timer("masks");
    std::vector<Result> results;
    for (size_t t = 0; t < requests.size(); ++t)
        results.push_back(finish(coarse[t], plans[t] ? &*plans[t] : nullptr, plans[t] ? &roi_logits[t] : nullptr, found[t],
                                 requests[t].probabilities));
    return results;
}

}  // namespace segvol
