// The zoom-out-zoom-in pipeline of segvol_rt/pipeline (preprocess.py,
// geometry.py, prompts.py, zoom.py) and segvol_rt/runtime.py, on the CPU.
// Scan arrays are (I, J, K) with i fastest; the model space is the same memory
// read as C-ordered (D, H, W) = (K, J, I) (the official DimTranspose), so no
// volume is ever transposed.
#pragma once

#include <array>
#include <list>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "artifacts.hpp"
#include "device.hpp"
#include "graph.hpp"
#include "ops.hpp"
#include "orientation.hpp"
#include "ort.hpp"
#include "thread_pool.hpp"

namespace segvol::detail {

class Tokenizer;

// -- host logic (ported from zoom.py / prompts.py; golden-tested against them) --

struct Roi {
    std::array<i64, 6> official;  // logits2roi_coor's (min d,h,w, max d,h,w)
    Vec3 lo, hi;                  // the half-open slice it denotes
    Vec3 shape() const { return {hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]}; }
};
Roi roi_from_box(const Box& box, const Vec3& size, const Vec3& window);

struct WindowPlan {
    Vec3 roi_shape, window, pad_before, padded_shape;
    std::vector<Vec3> starts;  // padded-space corners, meshgrid order
};
WindowPlan plan_windows(const Vec3& roi_shape, const Vec3& window, double overlap);

using WindowKey = std::array<i64, 12>;
WindowKey window_key(const Roi& roi, const WindowPlan& plan, const Vec3& start);

struct Points {
    std::vector<std::array<i64, 3>> coords;
    std::vector<i64> labels;
};
// A uint8 map (D, H, W) C-ordered, small (window prompts).
struct Map8 {
    Vec3 shape{0, 0, 0};
    std::vector<unsigned char> v;
    unsigned char at(i64 a, i64 b, i64 c) const { return v[(size_t)((a * shape[1] + b) * shape[2] + c)]; }
};
Box generate_box(const Map8& m);
class NumpyGenerator;
Points select_points(const Map8& m, NumpyGenerator& rng, int extra_pos, int extra_neg);
// map[start:start+window] with numpy's slice clamping
Map8 slice_map(const Map8& m, const Vec3& start, const Vec3& window);
Box resized_box(const Box& box, const Vec3& in, const Vec3& out, bool exact, bool* empty);

struct Tokens {
    std::vector<float> coords;  // (N, 3)
    std::vector<int> labels;    // (N,)
};
Tokens decoder_tokens(const Points* points, const Box* box, bool text);

// -- the runtime ----------------------------------------------------------------

struct LoadOptions {
    std::string backend = "auto", device = "auto", precision = "fp32", ort_library, openvino_library;
    int threads = 0;
    bool verify = true;
    unsigned long long cache_bytes = 512ull << 20;
    // axis codes to reorient each scan to, or "stored"; none: the manifest's voxel_orientation
    std::optional<std::string> reorient;
};

struct Request {
    std::optional<std::string> text;
    std::optional<std::array<i64, 6>> box;
    std::vector<std::array<i64, 4>> points;  // i, j, k, label
    bool zoom_in = true;
    bool aligned = false;
    unsigned long long seed = 0;
    bool probabilities = false;
    // The caller's buffers (I*J*K voxels, sized by the caller): the mask, and the
    // probabilities when asked for, are written there once, at the end (after every
    // graph ran), instead of into Result. nullptr: into Result.
    unsigned char* mask_out = nullptr;
    float* probabilities_out = nullptr;
};

struct Result {
    std::vector<unsigned char> mask;  // I*J*K, i fastest
    std::vector<float> probabilities;
    std::optional<Roi> roi;
    int n_windows = 0;
    bool zoom_in_applied = false, no_foreground = false;
};

enum class DType { U8, I8, U16, I16, U32, I32, I64, F32, F64 };

class Runtime {
   public:
    explicit Runtime(const std::string& artifacts_dir, const LoadOptions& opt);
    ~Runtime();
    void set_volume(const void* data, DType dtype, const std::array<i64, 3>& dims, const double* affine);
    void release_volume();
    std::vector<Result> segment(const std::vector<Request>& requests);
    std::string describe() const;
    // the graphs OpenVINO compiled while loading (none came from its model cache), in load order
    const std::vector<std::string>& compiled_now() const { return compiled_now_; }
    unsigned long long windows_encoded() const;
    bool has_volume() const { return vol_ != nullptr; }
    std::array<i64, 3> volume_dims() const;  // (I, J, K) of the volume set; has_volume() first
    // the axis codes each scan is reoriented to before the model, or none (its stored order)
    const std::optional<std::string>& orientation() const { return orientation_; }
    int max_points() const { return max_points_; }

   private:
    struct Vol;
    struct Target;
    struct ZoomPlan {
        Roi roi;
        WindowPlan windows;
        std::vector<WindowKey> keys;
        std::vector<Tokens> tokens;
    };
    Artifacts art_;
    LoadOptions opt_;
    std::string describe_;
    std::vector<std::string> compiled_now_;
    std::optional<std::string> orientation_;
    std::unique_ptr<Graphs> graphs_;       // image encoder + prompt decoder (Python's Graphs protocol)
    std::unique_ptr<Graph> text_encoder_;  // opened on the first free phrase
    std::unique_ptr<Tokenizer> tokenizer_;
    std::map<std::string, std::vector<float>> table_;
    std::map<std::string, std::vector<float>> phrases_;
    std::unique_ptr<Vol> vol_;
    std::vector<long long> emb_shape_;  // (B, C, d, h, w) of the image encoder's output
    Vec3 low_shape_{0, 0, 0};           // (4d, 4h, 4w) of the decoder's logits
    int enc_batch_ = 1, dec_batch_ = 1, text_batch_ = 1, max_points_ = 16;

    bool cuda_ = false, openvino_ = false;
    std::string ov_cache_;              // OpenVINO's model cache directory
    std::unique_ptr<ThreadPool> pool_;  // this handle's threads for the host kernels
    // device=cuda: the handle's stream; the image embeddings the encoder writes there stay
    // on the device (the window cache) until the decoder reads them (never run: no GPU here)
    Stream stream_;
    Buffer tokens_scratch_[3];          // decoder coords, labels, text rows (reused across calls)
    std::string open_backend(const LoadOptions& opt, bool* cuda);
    std::vector<std::vector<float>> text_embeddings(const std::vector<std::string>& texts);
    // Low-res logits (n, 1, 4d, 4h, 4w) of n decoder rows, in row order: each graph call writes
    // its rows straight into the result (batches of one row: no copy in or out).
    Buffer decode(const std::vector<const Buffer*>& embeddings, const std::vector<Tokens>& tokens,
                  const std::vector<const std::vector<float>*>& texts);
    std::unique_ptr<Graph> open_graph(const std::string& name, const GraphOptions& go);
    std::vector<Target> model_targets(const std::vector<Request>& requests, std::vector<std::vector<float>>* texts);
    // The zoom-out's low-res logits (n, 1, 4d, 4h, 4w) of the targets, and target t's crop
    // logits (D, H, W) from them (trilinear to the window, nearest to the crop).
    Buffer coarse_pass(const std::vector<Target>& targets);
    Volume coarse_crop_logits(const Buffer& low, size_t t) const;
    ZoomPlan plan_zoom_in(const Target& target, const Volume& coarse, const Box& positive, bool aligned) const;
    Volume zoom_in(const ZoomPlan& plan, const Target& target);
    Result finish(const Volume& coarse, const ZoomPlan* plan, const Volume* roi, bool found, const Request& request) const;
    Buffer encode(const TensorView& batch);  // (n, 1, D, H, W) -> (n, C, d, h, w)
    void ensure_windows(const std::vector<WindowKey>& keys);
    void trim_cache(const std::set<WindowKey>& pinned);
};

std::string normalize_name(const std::string& text);

}  // namespace segvol::detail
