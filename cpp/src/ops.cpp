// Host logic of the array operations (segvol_rt/ops/cuda.py, numpy1.py, interpolate.py).
#include "ops.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "kernels_host.hpp"

namespace segvol::detail {

namespace K = segvol::detail::kernels;

static constexpr i64 NP1_BLOCK = 8192;

float positive_threshold() {
    // positive_mask is x > float32(3 * 2**-25); the next float32 up is the first accepted
    return std::nextafter(3.0f * std::ldexp(1.0f, -25), 1.0f);
}

// numpy's pairwise_sum of n float32 (pairwise.c with 8 accumulators, leaf 128).
static float pairwise(const float* a, i64 n) {
    if (n < 8) {
        float res = 0.0f;  // numpy starts from -0.0? it adds from 0 in pairwise_rows (zeros)
        for (i64 i = 0; i < n; ++i) res = res + a[i];
        return res;
    }
    if (n <= 128) {
        i64 whole = n - n % 8;
        float r[8];
        for (int j = 0; j < 8; ++j) r[j] = a[j];
        for (i64 i = 8; i < whole; i += 8)
            for (int j = 0; j < 8; ++j) r[j] += a[i + j];
        float res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (i64 i = whole; i < n; ++i) res = res + a[i];
        return res;
    }
    i64 half = n / 2;
    half -= half % 8;
    return pairwise(a, half) + pairwise(a + half, n - half);
}

float np1_pairwise(const float* x, i64 n) { return pairwise(x, n); }

float np1_sum(const float* x, i64 n, const float* center) {
    i64 nblocks = n / NP1_BLOCK;
    std::vector<float> sums;
    float c = center ? *center : 0.0f;
    if (nblocks) {
        std::vector<float> leaves((size_t)(nblocks * 64));
        K::np1_leaf_sums(x, nblocks * 64, c, center != nullptr, leaves.data());
        sums.resize((size_t)nblocks);
        K::np1_block_sums(leaves.data(), nblocks, sums.data());
    }
    if (nblocks * NP1_BLOCK < n) {
        std::vector<float> rest(x + nblocks * NP1_BLOCK, x + n);
        if (center)
            for (float& v : rest) {
                v -= c;
                v *= v;
            }
        sums.push_back(pairwise(rest.data(), (i64)rest.size()));
    }
    float acc = 0.0f;  // block sums accumulate one after another from 0, as numpy 1.x did
    for (float s : sums) acc = acc + s;
    return acc;
}

void percentile_positions(i64 n, double q, i64* prev, i64* next, double* t) {
    double v = (double)(n - 1) * (q / 100);
    if (v >= (double)(n - 1)) {
        *prev = *next = n - 1;
        *t = 0.0;
        return;
    }
    i64 p = (i64)std::floor(v);
    *prev = p;
    *next = p + 1;
    *t = v - (double)p;
}

double lerp64(double a, double b, double t) {
    double diff = (double)((float)b - (float)a);
    return t >= 0.5 ? b - diff * (1 - t) : a + diff * t;
}

static float float_of_key(K::u32 key) {
    K::u32 bits = (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
}

std::vector<float> select_ranks(const float* x, i64 n, const std::vector<i64>& ranks, bool filter, double thr) {
    std::vector<i64> wanted(ranks);
    std::sort(wanted.begin(), wanted.end());
    wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
    if (wanted.size() > 4) throw std::invalid_argument("select_ranks takes at most 4 distinct ranks");
    int nq = (int)wanted.size();
    K::u32 prefix[4] = {0, 0, 0, 0};
    std::vector<i64> remaining(wanted);
    for (int shift : {24, 16, 8, 0}) {
        std::vector<K::u32> hist((size_t)nq * 256, 0u);
        K::radix_histogram(x, n, filter, thr, prefix, nq, shift, hist.data());
        for (int q = 0; q < nq; ++q) {
            i64 cum = 0;
            int digit = 0;
            for (; digit < 256; ++digit) {
                i64 next = cum + hist[(size_t)q * 256 + digit];
                if (remaining[q] < next) break;
                cum = next;
            }
            if (digit == 256) throw std::invalid_argument("rank out of range");
            remaining[q] -= cum;
            prefix[q] |= (K::u32)digit << shift;
        }
    }
    std::vector<float> out;
    for (i64 r : ranks) {
        size_t q = (size_t)(std::lower_bound(wanted.begin(), wanted.end(), r) - wanted.begin());
        out.push_back(float_of_key(prefix[q]));
    }
    return out;
}

ForegroundStats foreground_stats(const float* x, i64 n) {
    if (n == 0) throw std::invalid_argument("empty volume");
    float threshold = (float)((double)np1_sum(x, n) / (double)n);
    if (!std::isfinite(threshold)) throw std::invalid_argument("volume contains NaN or infinite values");
    std::vector<float> sel;
    sel.reserve((size_t)(n / 2));
    for (i64 i = 0; i < n; ++i)
        if (x[i] > threshold) sel.push_back(x[i]);
    i64 m = (i64)sel.size();
    if (m == 0) throw std::invalid_argument("volume is constant: no voxel lies above its mean");
    i64 lp, ln, hp, hn;
    double lt, ht;
    percentile_positions(m, 0.05, &lp, &ln, &lt);
    percentile_positions(m, 99.95, &hp, &hn, &ht);
    std::vector<float> r = select_ranks(sel.data(), m, {lp, ln, hp, hn}, false, 0.0);
    float total = np1_sum(sel.data(), m);
    ForegroundStats s;
    s.mean = (float)((double)total / (double)m);
    float center = total / (float)m;
    s.std = std::sqrt((float)((double)np1_sum(sel.data(), m, &center) / (double)m));
    s.lower = lerp64(r[0], r[1], lt);
    s.upper = lerp64(r[2], r[3], ht);
    return s;
}

static float std_divisor(float s) { return s > 1e-8 ? s : (float)1e-8; }
static float min_max_scale(float low, float high) {
    float span = high - low;
    return span > 1e-8 ? span : (float)1e-8;
}
// normalize_into on one value: clip to float32 bounds, subtract mean, divide by std
static float normalize_one(float v, const ForegroundStats& s) {
    float lo = (float)s.lower, hi = (float)s.upper;
    v = v < lo ? lo : v;  // np.clip = minimum(maximum(x, lo), hi)
    v = v > hi ? hi : v;
    v = v - s.mean;
    return v / std_divisor(s.std);
}

void normalize_min_max(const float* x, i64 n, const ForegroundStats& s, float* out) {
    K::u32 keys[2];
    K::minmax_keys(x, n, keys);
    float lo = float_of_key(keys[0]), hi = float_of_key(keys[1]);
    float low = normalize_one(lo, s), high = normalize_one(hi, s);
    float scale = min_max_scale(low, high);
    K::normalize_affine(x, out, n, (float)s.lower, (float)s.upper, s.mean, std_divisor(s.std), low, scale);
}

// The nearest resize through the kernel (the index math's one definition).
static Volume nearest_kernel(const float* src, const Vec3& strides, const Vec3& lo, const Vec3& extent, const Vec3& out, bool exact) {
    Volume r(out);
    K::resize_nearest<float>(src, r.ptr(), strides.data(), lo.data(), extent.data(), out.data(), exact);
    return r;
}

std::vector<i64> nearest_source_index(i64 in, i64 out, bool exact) {
    // the index math of kernels/resize.cu on a 1-voxel-thick axis
    std::vector<float> src((size_t)in);
    for (i64 i = 0; i < in; ++i) src[(size_t)i] = (float)i;
    Vec3 strides{0, 0, 1}, lo{0, 0, 0}, ext{1, 1, in}, o{1, 1, out};
    Volume r = nearest_kernel(src.data(), strides, lo, ext, o, exact);
    std::vector<i64> idx((size_t)out);
    for (i64 i = 0; i < out; ++i) idx[(size_t)i] = (i64)r.data[(size_t)i];
    return idx;
}

Volume resize_nearest(const float* src, const Vec3& strides, const Vec3& lo, const Vec3& extent, const Vec3& out,
                      bool exact) {
    // a gather through the kernel's per-axis source tables (nearest is separable): the
    // kernel's result, without its per-voxel index arithmetic
    std::vector<i64> idx[3];
    for (int a = 0; a < 3; ++a) idx[a] = nearest_source_index(extent[a], out[a], exact);
    Volume r(out);
    float* o = r.ptr();
    for (i64 z : idx[0])
        for (i64 y : idx[1]) {
            const float* row = src + (lo[0] + z) * strides[0] + (lo[1] + y) * strides[1] + lo[2] * strides[2];
            if (strides[2] == 1)
                for (i64 x : idx[2]) *o++ = row[x];
            else
                for (i64 x : idx[2]) *o++ = row[x * strides[2]];
        }
    return r;
}

void resize_trilinear(const float* src, const Vec3& in, const Vec3& out, float* dst) {
    K::trilinear_separable(src, in.data(), out.data(), dst);
}

Volume resize_trilinear(const Volume& src, const Vec3& out) {
    Volume r(out);
    resize_trilinear(src.ptr(), src.shape, out, r.ptr());
    return r;
}

void blend_average_rows(const float* windows, const std::vector<Vec3>& starts, const Vec3& w, const Vec3& box_lo, const Vec3& box,
                        float* out, float empty) {
    size_t n = (size_t)(box[0] * box[1] * box[2]);
    std::vector<float> sum(n, 0.0f), count(n, 0.0f);
    const i64 wvox = w[0] * w[1] * w[2];
    for (size_t k = 0; k < starts.size(); ++k) {  // window order: each voxel's additions in the kernel's order
        Vec3 lo, hi;
        bool empty_overlap = false;
        for (int a = 0; a < 3; ++a) {
            lo[a] = std::max(starts[k][a], box_lo[a]);
            hi[a] = std::min(starts[k][a] + w[a], box_lo[a] + box[a]);
            empty_overlap = empty_overlap || hi[a] <= lo[a];
        }
        if (empty_overlap) continue;
        const float* win = windows + (i64)k * wvox;
        for (i64 z = lo[0]; z < hi[0]; ++z)
            for (i64 y = lo[1]; y < hi[1]; ++y) {
                const float* src = win + ((z - starts[k][0]) * w[1] + (y - starts[k][1])) * w[2] + (lo[2] - starts[k][2]);
                size_t at = (size_t)(((z - box_lo[0]) * box[1] + (y - box_lo[1])) * box[2] + (lo[2] - box_lo[2]));
                float* s = sum.data() + at;
                float* c = count.data() + at;
                for (i64 x = 0; x < hi[2] - lo[2]; ++x) {
                    s[x] = s[x] + src[x];
                    c[x] = c[x] + 1.0f;
                }
            }
    }
    for (size_t v = 0; v < n; ++v) out[v] = count[v] > 0.0f ? sum[v] / count[v] : empty;
}

void scan_mask_rows(const float* crop, const Vec3& crop_shape, const float* roi, const Vec3& roi_lo, const Vec3& roi_shape,
                    const Vec3& origin, const Vec3& out_shape, float thr, unsigned char* out) {
    std::memset(out, 0, (size_t)(out_shape[0] * out_shape[1] * out_shape[2]));
    Vec3 lo, hi;  // the crop's voxels inside the output, in crop coordinates
    for (int a = 0; a < 3; ++a) {
        lo[a] = std::max<i64>(0, -origin[a]);
        hi[a] = std::min<i64>(crop_shape[a], out_shape[a] - origin[a]);
        if (hi[a] <= lo[a]) return;
    }
    for (i64 z = lo[0]; z < hi[0]; ++z)
        for (i64 y = lo[1]; y < hi[1]; ++y) {
            const float* c = crop + (z * crop_shape[1] + y) * crop_shape[2];
            unsigned char* o = out + ((z + origin[0]) * out_shape[1] + (y + origin[1])) * out_shape[2] + origin[2];
            for (i64 x = lo[2]; x < hi[2]; ++x) o[x] = c[x] >= thr ? 1 : 0;
            i64 ez = z - roi_lo[0], ey = y - roi_lo[1];
            if (!roi || ez < 0 || ez >= roi_shape[0] || ey < 0 || ey >= roi_shape[1]) continue;
            const float* r = roi + (ez * roi_shape[1] + ey) * roi_shape[2];  // the ROI's logits replace the crop's
            i64 x0 = std::max(lo[2], roi_lo[2]), x1 = std::min(hi[2], roi_lo[2] + roi_shape[2]);
            for (i64 x = x0; x < x1; ++x) o[x] = r[x - roi_lo[2]] >= thr ? 1 : 0;
        }
}

Volume upsample_then_nearest(const Volume& low, const Vec3& mid, const Vec3& out) {
    return upsample_then_nearest(low.ptr(), low.shape, mid, out);
}

Volume upsample_then_nearest(const float* low, const Vec3& low_shape, const Vec3& mid, const Vec3& out) {
    // On the CPU the two resizes the fused kernel stands for (bit-identical, see
    // segvol_rt.ops.upsample_then_nearest) are cheaper: the trilinear runs once per
    // window-grid voxel instead of once per crop voxel, the nearest step is a gather.
    Volume m(mid);
    resize_trilinear(low, low_shape, mid, m.ptr());
    Vec3 strides{mid[1] * mid[2], mid[2], 1}, zero{0, 0, 0};
    return resize_nearest(m.ptr(), strides, zero, mid, out, false);
}

std::optional<Box> positive_box(const Volume& v) {
    int b[6];
    if (!K::bbox_float(v.ptr(), v.shape.data(), positive_threshold(), b)) return std::nullopt;
    return Box{b[0], b[1], b[2], b[3], b[4], b[5]};
}

std::optional<Box> positive_box(const Volume& v, const Vec3& lo, const Vec3& hi) {
    Vec3 ext{hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]};
    Volume sub(ext);
    for (i64 z = 0; z < ext[0]; ++z)
        for (i64 y = 0; y < ext[1]; ++y)
            std::memcpy(sub.ptr() + (z * ext[1] + y) * ext[2],
                        v.ptr() + ((lo[0] + z) * v.shape[1] + lo[1] + y) * v.shape[2] + lo[2],
                        sizeof(float) * (size_t)ext[2]);
    return positive_box(sub);
}

}  // namespace segvol::detail
