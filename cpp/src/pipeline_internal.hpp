// What the pipeline's stage files (runtime.cpp, preprocess.cpp, prompts.cpp, caches.cpp,
// zoom.cpp, flow.cpp) share: the volume state, a target in model space, small helpers.
// Private to the library (src/ is not an include directory of any consumer).
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <list>
#include <set>
#include <sstream>

#include "errors.hpp"
#include "generated/shared_constants.hpp"
#include "kernels_host.hpp"
#include "numpy_random.hpp"
#include "pipeline.hpp"
#include "sizes.hpp"
#include "tokenizer.hpp"

namespace segvol::detail {

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
inline const Box EMPTY_BOX{-1, -1, -1, -1, -1, -1};

inline std::string box_str(const i64* b, int n) {
    std::ostringstream s;
    s << "(";
    for (int k = 0; k < n; ++k) s << (k ? ", " : "") << b[k];
    s << ")";
    return s.str();
}

struct Runtime::Vol {
    std::array<i64, 3> scan_shape;  // (I, J, K)
    // the reorientation to the model's voxel order (none: the stored order, or one that changes nothing);
    // scan prompts go through it, masks come back through it
    std::optional<Orientation> orient;
    Vec3 model_shape;               // (K', J', I') of the (reoriented) scan
    Vec3 crop_lo;                   // crop start in model space
    Volume crop, zoom;              // crop image, zoom-out image
    Buffer zoom_embedding;  // (1, C, d, h, w)
    // window embeddings (1, C, d, h, w): key -> (embedding), least recently used first out;
    // the decoder reads them where they are (no copy)
    std::map<WindowKey, std::pair<Buffer, std::list<WindowKey>::iterator>> cache;
    std::list<WindowKey> lru;
    unsigned long long cache_bytes = 0, windows_encoded = 0;
};

struct Runtime::Target {
    const std::vector<float>* text = nullptr;
    std::optional<Box> box_zoom;
    std::optional<Points> points_zoom;
    unsigned long long seed = 0;
};

inline Vec3 v3(const std::array<long long, 3>& a) { return {a[0], a[1], a[2]}; }

// map (the ROI's shape) placed in the padded ROI of plan, zeros around (prompts.py, aligned)
Map8 pad_like_roi(const Map8& m, const WindowPlan& plan);

}  // namespace segvol::detail
