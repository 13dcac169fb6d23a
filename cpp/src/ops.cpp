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

std::vector<i64> nearest_source_index(i64 in, i64 out, bool exact) {
    // the index math of kernels/resize.cu on a 1-voxel-thick axis
    std::vector<float> src((size_t)in);
    for (i64 i = 0; i < in; ++i) src[(size_t)i] = (float)i;
    Vec3 strides{0, 0, 1}, lo{0, 0, 0}, ext{1, 1, in}, o{1, 1, out};
    Volume r = resize_nearest(src.data(), strides, lo, ext, o, exact);
    std::vector<i64> idx((size_t)out);
    for (i64 i = 0; i < out; ++i) idx[(size_t)i] = (i64)r.data[(size_t)i];
    return idx;
}

Volume resize_nearest(const float* src, const Vec3& strides, const Vec3& lo, const Vec3& extent, const Vec3& out,
                      bool exact) {
    Volume r(out);
    K::resize_nearest<float>(src, r.ptr(), strides.data(), lo.data(), extent.data(), out.data(), exact);
    return r;
}

Volume resize_trilinear(const Volume& src, const Vec3& out) {
    Volume r(out);
    Vec3 strides{src.shape[1] * src.shape[2], src.shape[2], 1}, lo{0, 0, 0};
    K::resize_trilinear<float>(src.ptr(), r.ptr(), strides.data(), lo.data(), src.shape.data(), out.data());
    return r;
}

Volume upsample_then_nearest(const Volume& low, const Vec3& mid, const Vec3& out) {
    // On the CPU the two resizes the fused kernel stands for (bit-identical, see
    // segvol_rt.ops.upsample_then_nearest) are cheaper: the trilinear runs once per
    // window-grid voxel instead of once per crop voxel, the nearest step is a gather.
    Volume m = resize_trilinear(low, mid);
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
