// Threads for the host kernels and the dispatch to the generic or the FMA
// build of kernels/*.cu (kernels_generic.cpp, kernels_fma.cpp). Both builds
// compute the same bits (see kernels_fma.cpp); FMA is only faster.
#include "kernels_host.hpp"
#include "system.hpp"
#include "thread_pool.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

namespace segvol::detail::kernels {

// The calling thread's pool (thread_pool.hpp): the handle whose call this is sets it, so
// the thread count is the handle's own; none (a bare kernel call): the calling thread alone.
int threads_for(i64 n) {
    ThreadPool* pool = current_pool();
    int hw = pool ? pool->threads() : 1;
    i64 by_work = n / (1 << 16);  // a thread is worth it from ~64k items on
    return (int)std::max<i64>(1, std::min<i64>(hw, by_work));
}

void run_blocks(i64 n, void (*one)(void*, int, int), void* ctx) {
    int t = threads_for(n);
    if (t <= 1) {
        one(ctx, 0, 1);
        return;
    }
    current_pool()->run(t, one, ctx);  // no thread is started: the pool's workers wake up
}

#if defined(__x86_64__) && defined(__GNUC__)
// SEGVOL_RT_KERNELS=generic forces the generic build (tests compare the two)
static bool cpu_has_fma() {
    static const bool yes = __builtin_cpu_supports("fma") &&
                            !(std::getenv("SEGVOL_RT_KERNELS") && std::string(std::getenv("SEGVOL_RT_KERNELS")) == "generic");
    return yes;
}
#define SEGVOL_DISPATCH(call) (cpu_has_fma() ? fma::call : generic::call)
#else
#define SEGVOL_DISPATCH(call) (generic::call)
#endif

template <typename T>
void resize_nearest(const T* src, T* dst, const i64 s[3], const i64 b[3], const i64 e[3], const i64 o[3], bool exact) {
    SEGVOL_DISPATCH(resize_nearest<T>(src, dst, s, b, e, o, exact));
}
template void resize_nearest<float>(const float*, float*, const i64*, const i64*, const i64*, const i64*, bool);
template void resize_nearest<u8>(const u8*, u8*, const i64*, const i64*, const i64*, const i64*, bool);

template <typename T>
void resize_trilinear(const T* src, float* dst, const i64 s[3], const i64 b[3], const i64 e[3], const i64 o[3]) {
    SEGVOL_DISPATCH(resize_trilinear<T>(src, dst, s, b, e, o));
}
template void resize_trilinear<float>(const float*, float*, const i64*, const i64*, const i64*, const i64*);

void upsample_then_nearest(const float* low, float* dst, const i64 l[3], const i64 m[3], const i64 o[3]) {
    SEGVOL_DISPATCH(upsample_then_nearest(low, dst, l, m, o));
}
void trilinear_separable(const float* src, const i64 in[3], const i64 out[3], float* dst) {
    SEGVOL_DISPATCH(trilinear_separable(src, in, out, dst));
}
bool bbox_float(const float* x, const i64 shape[3], float thr, int box[6]) {
    return SEGVOL_DISPATCH(bbox_float(x, shape, thr, box));
}
bool bbox_u8(const u8* x, const i64 shape[3], int box[6]) { return SEGVOL_DISPATCH(bbox_u8(x, shape, box)); }
void np1_leaf_sums(const float* x, i64 nleaves, float center, bool squared, float* leaf) {
    SEGVOL_DISPATCH(np1_leaf_sums(x, nleaves, center, squared, leaf));
}
void np1_block_sums(const float* leaf, i64 nblocks, float* block) { SEGVOL_DISPATCH(np1_block_sums(leaf, nblocks, block)); }
void radix_histogram(const float* x, i64 n, bool filter, double thr, const u32 prefix[4], int nq, int shift, u32* hist) {
    SEGVOL_DISPATCH(radix_histogram(x, n, filter, thr, prefix, nq, shift, hist));
}
void minmax_keys(const float* x, i64 n, u32 keys[2]) { SEGVOL_DISPATCH(minmax_keys(x, n, keys)); }
void normalize_affine(const float* x, float* out, i64 n, float lo, float hi, float sub1, float div1, float sub2,
                      float div2) {
    SEGVOL_DISPATCH(normalize_affine(x, out, n, lo, hi, sub1, div1, sub2, div2));
}
void blend_accumulate(const float* win, const i64* starts, int nwin, const i64 w[3], float* sum, float* count, i64 nh,
                      i64 nw, const i64 r[3], const i64 rs[3]) {
    SEGVOL_DISPATCH(blend_accumulate(win, starts, nwin, w, sum, count, nh, nw, r, rs));
}
void blend_divide(const float* sum, const float* count, float* out, i64 n, float empty) {
    SEGVOL_DISPATCH(blend_divide(sum, count, out, n, empty));
}
void paste_f32(const float* src, const i64 t[3], const i64 s[3], float* dst, i64 nh, i64 nw, const i64 at[3]) {
    SEGVOL_DISPATCH(paste_f32(src, t, s, dst, nh, nw, at));
}
void scan_mask(const float* crop, const i64 c[3], const float* roi, const i64 r0[3], const i64 rs[3], u8* out,
               const i64 n[3], const int p[3], const int f[3], const i64 g[3], float thr) {
    SEGVOL_DISPATCH(scan_mask(crop, c, roi, r0, rs, out, n, p, f, g, thr));
}

}  // namespace segvol::detail::kernels
