// The CUDA kernels of kernels/*.cu, compiled as host C++ for the CPU path.
//
// One definition of each array operation: the same .cu sources the GPU path
// compiles with NVRTC (and tests/support/kernel_emu.py compiles with g++) are
// included below behind a small shim that maps the CUDA built-ins to host
// code. A "launch" runs a kernel's grid-stride loop on T host threads: thread
// t is block t of a grid of T blocks of one thread each, so the loop's
// stride partitions the work exactly as on the GPU. Block reductions reduce
// over one thread (shared memory is thread-local), atomics are __atomic
// builtins, and the rounded intrinsics are plain float operations (this file
// is compiled with -ffp-contract=off, so nothing is fused behind our back).
#pragma once

#include <cstdint>

namespace segvol::kernels {

typedef long long i64;
typedef unsigned int u32;
typedef unsigned char u8;

// Threads used for a kernel over n work items (1 for small launches).
int threads_for(i64 n);
void set_max_threads(int n);

// -- resize.cu
template <typename T>
void resize_nearest(const T* src, T* dst, const i64 strides[3], const i64 start[3], const i64 extent[3],
                    const i64 out[3], bool exact);
template <typename T>
void resize_trilinear(const T* src, float* dst, const i64 strides[3], const i64 start[3], const i64 extent[3],
                      const i64 out[3]);
void upsample_then_nearest(const float* low, float* dst, const i64 low_shape[3], const i64 mid[3], const i64 out[3]);

// -- reduce.cu
// Inclusive box of x != 0 (mode 0) or x >= thr (mode 1) of a C-contiguous
// (nd, nh, nw) volume; false when no voxel passes.
bool bbox_float(const float* x, const i64 shape[3], float thr, int box[6]);
bool bbox_u8(const u8* x, const i64 shape[3], int box[6]);
void np1_leaf_sums(const float* x, i64 nleaves, float center, bool squared, float* leaf);
void np1_block_sums(const float* leaf, i64 nblocks, float* block);
void radix_histogram(const float* x, i64 n, bool filter, double thr, const u32 prefix[4], int nq, int shift, u32* hist);
void minmax_keys(const float* x, i64 n, u32 keys[2]);

// -- pointwise.cu
void normalize_affine(const float* x, float* out, i64 n, float lo, float hi, float sub1, float div1, float sub2,
                      float div2);

// -- blend.cu
void blend_accumulate(const float* win, const i64* starts, int nwin, const i64 wshape[3], float* sum, float* count,
                      i64 nh, i64 nw, const i64 region_lo[3], const i64 region_size[3]);
void blend_divide(const float* sum, const float* count, float* out, i64 n, float empty);
void paste_f32(const float* src, const i64 src_strides[3], const i64 src_shape[3], float* dst, i64 nh, i64 nw,
               const i64 at[3]);
void scan_mask(const float* crop, const i64 crop_shape[3], const float* roi, const i64 roi_start[3],
               const i64 roi_shape[3], u8* out, const i64 out_shape[3], const int perm[3], const int flips[3],
               const i64 origin[3], float thr);

}  // namespace segvol::kernels
