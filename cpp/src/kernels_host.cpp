// Host build of kernels/*.cu; see kernels_host.hpp. Compiled with -ffp-contract=off.
#include "kernels_host.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <thread>
#include <vector>

namespace segvol::kernels {
namespace cuda_shim {

struct emu_dim3 {
    unsigned int x, y, z;
};
// blockIdx / gridDim differ per host thread; a block has one thread.
static thread_local emu_dim3 blockIdx = {0, 0, 0};
static thread_local emu_dim3 gridDim = {1, 1, 1};
static const emu_dim3 threadIdx = {0, 0, 0};
static const emu_dim3 blockDim = {1, 1, 1};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __restrict__ __restrict

inline void __syncthreads() {}
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __double2float_rn(double d) { return (float)d; }
inline unsigned int __float_as_uint(float f) {
    unsigned int u;
    std::memcpy(&u, &f, 4);
    return u;
}
inline float __uint_as_float(unsigned int u) {
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned int min(unsigned int a, unsigned int b) { return a < b ? a : b; }
inline unsigned int max(unsigned int a, unsigned int b) { return a > b ? a : b; }

template <typename T>
inline T atomicMin(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v < old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <typename T>
inline T atomicMax(T* p, T v) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > old && !__atomic_compare_exchange_n(p, &old, v, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
template <typename T>
inline T atomicAdd(T* p, T v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}

#include "common.cuh"
#include "resize.cu"
#include "reduce.cu"
#include "pointwise.cu"
#include "blend.cu"

#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __shared__
#undef __restrict__

// Run body() as blocks 0..T-1 of a T-block grid, one host thread each.
template <typename F>
void launch(i64 n, F body) {
    int t = threads_for(n);
    if (t <= 1) {
        blockIdx = {0, 0, 0};
        gridDim = {1, 1, 1};
        body();
        return;
    }
    std::vector<std::thread> pool;
    pool.reserve(t - 1);
    for (int b = 1; b < t; ++b)
        pool.emplace_back([b, t, &body] {
            blockIdx = {(unsigned)b, 0, 0};
            gridDim = {(unsigned)t, 1, 1};
            body();
        });
    blockIdx = {0, 0, 0};
    gridDim = {(unsigned)t, 1, 1};
    body();
    for (auto& th : pool) th.join();
    gridDim = {1, 1, 1};
}

}  // namespace cuda_shim

using namespace cuda_shim;

static int g_max_threads = 0;  // 0: hardware concurrency

void set_max_threads(int n) { g_max_threads = n; }

int threads_for(i64 n) {
    int hw = g_max_threads > 0 ? g_max_threads : (int)std::max(1u, std::thread::hardware_concurrency());
    i64 by_work = n / (1 << 16);  // a thread is worth it from ~64k items on
    return (int)std::max<i64>(1, std::min<i64>(hw, by_work));
}

static float scale_of(i64 in, i64 out) { return (float)in / (float)out; }

template <typename T>
void resize_nearest(const T* src, T* dst, const i64 s[3], const i64 b[3], const i64 e[3], const i64 o[3], bool exact) {
    float scd = scale_of(e[0], o[0]), sch = scale_of(e[1], o[1]), scw = scale_of(e[2], o[2]);
    launch(o[0] * o[1] * o[2], [&] {
        if (exact)
            cuda_shim::resize_nearest<T, 1>(src, dst, s[0], s[1], s[2], b[0], b[1], b[2], e[0], e[1], e[2], o[0], o[1],
                                            o[2], scd, sch, scw);
        else
            cuda_shim::resize_nearest<T, 0>(src, dst, s[0], s[1], s[2], b[0], b[1], b[2], e[0], e[1], e[2], o[0], o[1],
                                            o[2], scd, sch, scw);
    });
}
template void resize_nearest<float>(const float*, float*, const i64*, const i64*, const i64*, const i64*, bool);
template void resize_nearest<u8>(const u8*, u8*, const i64*, const i64*, const i64*, const i64*, bool);

template <typename T>
void resize_trilinear(const T* src, float* dst, const i64 s[3], const i64 b[3], const i64 e[3], const i64 o[3]) {
    float scd = scale_of(e[0], o[0]), sch = scale_of(e[1], o[1]), scw = scale_of(e[2], o[2]);
    launch(o[0] * o[1] * o[2], [&] {
        cuda_shim::resize_trilinear<T>(src, dst, s[0], s[1], s[2], b[0], b[1], b[2], e[0], e[1], e[2], o[0], o[1], o[2],
                                       scd, sch, scw);
    });
}
template void resize_trilinear<float>(const float*, float*, const i64*, const i64*, const i64*, const i64*);

void upsample_then_nearest(const float* low, float* dst, const i64 l[3], const i64 m[3], const i64 o[3]) {
    launch(o[0] * o[1] * o[2], [&] {
        cuda_shim::upsample_then_nearest(low, dst, l[1] * l[2], l[2], 1, l[0], l[1], l[2], m[0], m[1], m[2], o[0], o[1],
                                         o[2], scale_of(l[0], m[0]), scale_of(l[1], m[1]), scale_of(l[2], m[2]),
                                         scale_of(m[0], o[0]), scale_of(m[1], o[1]), scale_of(m[2], o[2]));
    });
}

static bool box_result(const int box[6]) { return box[3] >= 0; }

bool bbox_float(const float* x, const i64 shape[3], float thr, int box[6]) {
    int init[6] = {0x7fffffff, 0x7fffffff, 0x7fffffff, -1, -1, -1};
    std::memcpy(box, init, sizeof init);
    launch(shape[0] * shape[1] * shape[2], [&] { cuda_shim::bbox<float, 1>(x, shape[0], shape[1], shape[2], thr, box); });
    return box_result(box);
}

bool bbox_u8(const u8* x, const i64 shape[3], int box[6]) {
    int init[6] = {0x7fffffff, 0x7fffffff, 0x7fffffff, -1, -1, -1};
    std::memcpy(box, init, sizeof init);
    launch(shape[0] * shape[1] * shape[2], [&] { cuda_shim::bbox<u8, 0>(x, shape[0], shape[1], shape[2], 0.0f, box); });
    return box_result(box);
}

void np1_leaf_sums(const float* x, i64 nleaves, float center, bool squared, float* leaf) {
    launch(nleaves * 128, [&] { cuda_shim::np1_leaf_sums(x, nleaves, center, squared ? 1 : 0, leaf); });
}

void np1_block_sums(const float* leaf, i64 nblocks, float* block) {
    launch(nblocks * 64, [&] { cuda_shim::np1_block_sums(leaf, nblocks, block); });
}

void radix_histogram(const float* x, i64 n, bool filter, double thr, const u32 prefix[4], int nq, int shift, u32* hist) {
    launch(n, [&] { cuda_shim::radix_histogram(x, n, filter ? 1 : 0, thr, prefix, nq, shift, hist); });
}

void minmax_keys(const float* x, i64 n, u32 keys[2]) {
    keys[0] = 0xffffffffu;
    keys[1] = 0u;
    launch(n, [&] { cuda_shim::minmax_keys(x, n, keys); });
}

void normalize_affine(const float* x, float* out, i64 n, float lo, float hi, float sub1, float div1, float sub2,
                      float div2) {
    launch(n, [&] { cuda_shim::normalize_affine(x, out, n, lo, hi, sub1, div1, sub2, div2); });
}

void blend_accumulate(const float* win, const i64* starts, int nwin, const i64 w[3], float* sum, float* count, i64 nh,
                      i64 nw, const i64 r[3], const i64 rs[3]) {
    launch(rs[0] * rs[1] * rs[2], [&] {
        cuda_shim::blend_accumulate(win, starts, nwin, w[0], w[1], w[2], sum, count, nh, nw, r[0], r[1], r[2], rs[0],
                                    rs[1], rs[2]);
    });
}

void blend_divide(const float* sum, const float* count, float* out, i64 n, float empty) {
    launch(n, [&] { cuda_shim::blend_divide(sum, count, out, n, empty); });
}

void paste_f32(const float* src, const i64 t[3], const i64 s[3], float* dst, i64 nh, i64 nw, const i64 at[3]) {
    launch(s[0] * s[1] * s[2], [&] {
        cuda_shim::paste<float>(src, t[0], t[1], t[2], s[0], s[1], s[2], dst, nh, nw, at[0], at[1], at[2]);
    });
}

void scan_mask(const float* crop, const i64 c[3], const float* roi, const i64 r0[3], const i64 rs[3], u8* out,
               const i64 n[3], const int p[3], const int f[3], const i64 g[3], float thr) {
    launch(n[0] * n[1] * n[2], [&] {
        cuda_shim::scan_mask(crop, c[0], c[1], c[2], roi, r0[0], r0[1], r0[2], rs[0], rs[1], rs[2], out, n[0], n[1],
                             n[2], p[0], p[1], p[2], f[0], f[1], f[2], g[0], g[1], g[2], thr);
    });
}

}  // namespace segvol::kernels
