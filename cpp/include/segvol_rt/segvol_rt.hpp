// segvol-rt C++17 API: RAII wrappers over the C ABI (segvol_rt.h).
//
//   segvol::Runtime rt("artifacts/");                       // throws segvol::Error
//   rt.set_volume(volume, {I, J, K}, &affine);              // std::vector<int16_t> (or any segvol dtype)
//   segvol::Target liver; liver.text = "liver";
//   segvol::Segmentation s = rt.segment(liver);             // s.mask: I*J*K, i fastest; s.dims
//
// Header-only: every call goes through the C ABI, so the C++ standard
// library of the application never has to match the SDK's. Errors become
// segvol::Error (the status and the calling thread's one-line message). Same
// thread safety as the C ABI: one Runtime may be shared, its calls are
// serialised, and segment() sizes its buffers from the volume the call
// actually segmented (Segmentation::dims), so another thread's set_volume in
// between can change the result's volume but never overrun a buffer.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "segvol_rt/segvol_rt.h"

namespace segvol {

class Error : public std::runtime_error {
   public:
    Error(segvol_status status, const std::string& message) : std::runtime_error(message), status_(status) {}
    segvol_status status() const noexcept { return status_; }

   private:
    segvol_status status_;
};

struct LoadOptions {
    std::string backend = "auto", device = "auto", precision = "fp32", ort_library, openvino_library;
    int threads = 0;
    bool verify = true;
    uint64_t cache_bytes = 512ull << 20;
    // axis codes such as "RAS", or "stored"; none: the model's declared voxel_orientation
    std::optional<std::string> reorient;
};

struct Target {
    std::optional<std::string> text;
    std::optional<std::array<int64_t, 6>> box;  // i0, j0, k0, i1, j1, k1 inclusive
    std::vector<std::array<int64_t, 4>> points; // i, j, k, label
    bool zoom_in = true;
    segvol_window_prompts window_prompts = SEGVOL_WINDOW_PROMPTS_OFFICIAL;
    uint64_t seed = 0;
    bool probabilities = false;
};

struct Segmentation {
    std::array<int64_t, 3> dims{};    // (I, J, K) of the volume segmented
    std::vector<uint8_t> mask;        // I*J*K, the volume's layout, each voxel 0 or 1
    std::vector<float> probabilities; // empty unless asked for
    segvol_result_info info{};
};

// The C ABI's dtype of an element type (a compile error for any other type).
template <typename T> struct dtype_of;
template <> struct dtype_of<uint8_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_UINT8; };
template <> struct dtype_of<int8_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_INT8; };
template <> struct dtype_of<uint16_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_UINT16; };
template <> struct dtype_of<int16_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_INT16; };
template <> struct dtype_of<uint32_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_UINT32; };
template <> struct dtype_of<int32_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_INT32; };
template <> struct dtype_of<int64_t> { static constexpr segvol_dtype value = SEGVOL_DTYPE_INT64; };
template <> struct dtype_of<float> { static constexpr segvol_dtype value = SEGVOL_DTYPE_FLOAT32; };
template <> struct dtype_of<double> { static constexpr segvol_dtype value = SEGVOL_DTYPE_FLOAT64; };

class Runtime {
   public:
    explicit Runtime(const std::string& artifacts_dir, const LoadOptions& options = {}) : h_(segvol_create()) {
        if (!h_) throw Error(SEGVOL_ERR_OUT_OF_MEMORY, segvol_last_error());
        segvol_load_options o;
        segvol_load_options_init(&o);
        o.backend = options.backend.c_str();
        o.device = options.device.c_str();
        o.precision = options.precision.c_str();
        o.ort_library = options.ort_library.empty() ? nullptr : options.ort_library.c_str();
        o.openvino_library = options.openvino_library.empty() ? nullptr : options.openvino_library.c_str();
        o.threads = options.threads;
        o.verify = options.verify ? 1 : 0;
        o.cache_bytes = options.cache_bytes;
        o.reorient = options.reorient ? options.reorient->c_str() : nullptr;
        check(segvol_load(h_, artifacts_dir.c_str(), &o));
    }
    ~Runtime() { segvol_destroy(h_); }
    Runtime(const Runtime&) = delete;
    Runtime& operator=(const Runtime&) = delete;
    Runtime(Runtime&& o) noexcept : h_(std::exchange(o.h_, nullptr)), voxels_(o.voxels_) {}
    Runtime& operator=(Runtime&& o) noexcept {
        if (this != &o) {
            segvol_destroy(h_);
            h_ = std::exchange(o.h_, nullptr);
            voxels_ = o.voxels_;
        }
        return *this;
    }

    std::string backend() const { return segvol_backend(h_); }
    // the graphs OpenVINO compiled while loading (segvol_compiled_graphs), comma-separated
    std::string compiled_graphs() const { return segvol_compiled_graphs(h_); }

    // data holds data_size bytes (at least I*J*K elements of dtype).
    void set_volume(const void* data, size_t data_size, segvol_dtype dtype, const std::array<int64_t, 3>& dims,
                    const std::array<double, 16>* affine = nullptr) {
        voxels_ = 0;
        check(segvol_set_volume(h_, data, data_size, dtype, dims.data(), affine ? affine->data() : nullptr));
        voxels_ = voxels(dims);  // the library checked the product
    }
    template <typename T>
    void set_volume(const std::vector<T>& data, const std::array<int64_t, 3>& dims,
                    const std::array<double, 16>* affine = nullptr) {
        set_volume(data.data(), data.size() * sizeof(T), dtype_of<T>::value, dims, affine);
    }
    void release_volume() {
        check(segvol_release_volume(h_));
        voxels_ = 0;
    }

    Segmentation segment(const Target& target) { return std::move(segment_many({target}).at(0)); }

    std::vector<Segmentation> segment_many(const std::vector<Target>& targets) {
        std::vector<Segmentation> out(targets.size());
        std::vector<uint8_t*> masks(targets.size());
        std::vector<float*> probs(targets.size(), nullptr);
        std::vector<segvol_result_info> info;
        // Sized for the volume this object set; if another thread sharing the handle set a
        // larger one meanwhile, the library refuses and says its dims: resize and ask again.
        std::array<int64_t, 3> dims{};
        size_t capacity = voxels_;
        for (;;) {
            for (size_t i = 0; i < targets.size(); ++i) {
                out[i].mask.resize(capacity);
                masks[i] = out[i].mask.data();
                if (targets[i].probabilities) {
                    out[i].probabilities.resize(capacity);
                    probs[i] = out[i].probabilities.data();
                }
            }
            segvol_status s = segment_status(targets, masks.data(), probs.data(), capacity, &dims, &info);
            if (s != SEGVOL_ERR_BUFFER_TOO_SMALL) {
                check(s);
                break;
            }
            capacity = voxels(dims);
        }
        size_t used = voxels(dims);
        for (size_t i = 0; i < targets.size(); ++i) {
            out[i].dims = dims;
            out[i].info = info[i];
            out[i].mask.resize(used);
            if (targets[i].probabilities) out[i].probabilities.resize(used);
        }
        return out;
    }

    // Segments the targets into the caller's memory: masks[i] (uint8, the volume's layout) and,
    // for a target that asks for them, probabilities[i] (float32; NULL entries otherwise, or
    // probabilities NULL), each `capacity` elements; returns the dims segmented (I*J*K elements
    // written) and fills `info` (one entry per target) where given. Memory the library writes
    // only when it finishes each target, so buffers allocated without initialising stay out of
    // the resident set until then (segment_many's vectors are zero-filled when made). A capacity
    // below the volume's throws Error(SEGVOL_ERR_BUFFER_TOO_SMALL) and writes nothing.
    std::array<int64_t, 3> segment_into(const std::vector<Target>& targets, uint8_t* const* masks, float* const* probabilities,
                                        size_t capacity, std::vector<segvol_result_info>* info = nullptr) {
        std::array<int64_t, 3> dims{};
        std::vector<segvol_result_info> got;
        check(segment_status(targets, masks, probabilities, capacity, &dims, &got));
        if (info) *info = std::move(got);
        return dims;
    }

    uint64_t windows_encoded() const {
        uint64_t n = 0;
        check(segvol_windows_encoded(h_, &n));
        return n;
    }

    segvol_runtime* handle() const noexcept { return h_; }

   private:
    segvol_runtime* h_;
    size_t voxels_ = 0;

    // One segvol_segment call for `targets`; the dims and one info per target come back.
    segvol_status segment_status(const std::vector<Target>& targets, uint8_t* const* masks, float* const* probabilities,
                                 size_t capacity, std::array<int64_t, 3>* dims, std::vector<segvol_result_info>* info) {
        std::vector<segvol_target> c(targets.size());
        std::vector<std::vector<int64_t>> pts(targets.size());
        for (size_t i = 0; i < targets.size(); ++i) {
            const Target& t = targets[i];
            segvol_target_init(&c[i]);
            c[i].text = t.text ? t.text->c_str() : nullptr;
            c[i].box = t.box ? t.box->data() : nullptr;
            for (const auto& p : t.points) pts[i].insert(pts[i].end(), p.begin(), p.end());
            c[i].points = t.points.empty() ? nullptr : pts[i].data();
            c[i].n_points = t.points.size();
            c[i].zoom_in = t.zoom_in ? 1 : 0;
            c[i].window_prompts = t.window_prompts;
            c[i].seed = t.seed;
        }
        info->assign(targets.size(), segvol_result_info{});
        return segvol_segment(h_, c.data(), c.size(), masks, probabilities, capacity, dims->data(), info->data());
    }

    void check(segvol_status s) const {
        if (s != SEGVOL_OK) throw Error(s, segvol_last_error());
    }
    // I*J*K of dims the library reported or accepted (so the product fits), 0 for none.
    static size_t voxels(const std::array<int64_t, 3>& d) {
        size_t n = 1;
        for (int64_t v : d) {
            if (v <= 0) return 0;
            if ((uint64_t)v > SIZE_MAX / n) throw Error(SEGVOL_ERR_INVALID_ARGUMENT, "dims overflow the address space");
            n *= (size_t)v;
        }
        return n;
    }
};

}  // namespace segvol
