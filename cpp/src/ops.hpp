// Array operations of the CPU path: the host logic of segvol_rt/ops/cuda.py
// around the kernels of kernels_host.hpp. Volumes are C-contiguous (D, H, W)
// float32 unless said otherwise; boxes are inclusive (d0, h0, w0, d1, h1, w1).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

namespace segvol::detail {

using i64 = long long;
using Vec3 = std::array<i64, 3>;
using Box = std::array<i64, 6>;  // inclusive

struct Volume {
    Vec3 shape{0, 0, 0};
    std::vector<float> data;
    Volume() = default;
    explicit Volume(Vec3 s, float fill = 0.0f) : shape(s), data((size_t)(s[0] * s[1] * s[2]), fill) {}
    i64 size() const { return shape[0] * shape[1] * shape[2]; }
    float* ptr() { return data.data(); }
    const float* ptr() const { return data.data(); }
};

// ForegroundNormalization statistics, as segvol_rt.ops.foreground_stats.
struct ForegroundStats {
    double lower, upper;  // numpy-1.x percentiles (float64)
    float mean, std;
};

// Smallest float32 t with torch.sigmoid(t) > 0.5 (segvol_rt.ops.cuda.positive_threshold).
float positive_threshold();

// numpy 1.x np.add.reduce of a float32 vector (or of (x - center)^2), bit for bit.
float np1_sum(const float* x, i64 n, const float* center = nullptr);
// numpy 1.x pairwise sum of a short row (n < 8192): the tail block.
float np1_pairwise(const float* x, i64 n);
// (prev, next, weight) of numpy 1.x's linear percentile q of n values.
void percentile_positions(i64 n, double q, i64* prev, i64* next, double* t);
// numpy 1.x _lerp for float32 neighbours.
double lerp64(double a, double b, double t);
// Exact order statistics sorted(x[x > thr])[r] (or of all x when !filter), up to 4 ranks.
std::vector<float> select_ranks(const float* x, i64 n, const std::vector<i64>& ranks, bool filter, double thr);
// Statistics of a volume in memory order; throws std::runtime_error as ValueError.
ForegroundStats foreground_stats(const float* x, i64 n);
// normalize then min-max, one pass (segvol_rt.ops.normalize_min_max), memory order kept.
void normalize_min_max(const float* x, i64 n, const ForegroundStats& s, float* out);

// Nearest / nearest-exact / trilinear resize of the half-open box [lo, lo+extent) of a
// strided float volume to `out` (torch F.interpolate).
Volume resize_nearest(const float* src, const Vec3& strides, const Vec3& lo, const Vec3& extent, const Vec3& out,
                      bool exact);
Volume resize_trilinear(const Volume& src, const Vec3& out);
// trilinear of a C-contiguous (D, H, W) array `src` of shape `in` into `dst` (out's voxels)
void resize_trilinear(const float* src, const Vec3& in, const Vec3& out, float* dst);
Volume upsample_then_nearest(const Volume& low, const Vec3& mid, const Vec3& out);
Volume upsample_then_nearest(const float* low, const Vec3& low_shape, const Vec3& mid, const Vec3& out);
// kernels/blend.cu blend_average on the host, row by row: the windows (n, wd, wh, ww) at
// `starts` blended (sum / count, each voxel's windows added in window order from zero, as
// the kernel does) into the box [box_lo, box_lo + box) of the padded volume, C-contiguous
// into out; voxels no window covers get `empty`.
void blend_average_rows(const float* windows, const std::vector<Vec3>& starts, const Vec3& w, const Vec3& box_lo, const Vec3& box,
                        float* out, float empty);
// kernels/blend.cu scan_mask with the identity permutation and no flips, row by row: out
// (out_shape, C order) = 1 where the crop's logits (the ROI's inside the ROI) >= thr, the
// crop at `origin`, 0 elsewhere.
void scan_mask_rows(const float* crop, const Vec3& crop_shape, const float* roi, const Vec3& roi_lo, const Vec3& roi_shape,
                    const Vec3& origin, const Vec3& out_shape, float thr, unsigned char* out);
// Host source-index table of one axis (segvol_rt.ops.nearest_source_index).
std::vector<i64> nearest_source_index(i64 in, i64 out, bool exact);

// Inclusive box of logits > threshold (sigmoid > 0.5) of a sub-box [lo, hi) of v.
std::optional<Box> positive_box(const Volume& v, const Vec3& lo, const Vec3& hi);
std::optional<Box> positive_box(const Volume& v);

}  // namespace segvol::detail
