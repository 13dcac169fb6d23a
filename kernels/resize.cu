// Crop + resize of (D, H, W) volumes, exactly as torch.nn.functional.interpolate
// on a (1, 1, D, H, W) tensor with an explicit `size`, align_corners=False.
// NumPy twins: segvol_rt.ops.resize and segvol_rt.ops.upsample_then_nearest.
//
// Index math and rounding are those of torch's x86 CPU kernels (ATen
// UpSample.h / UpSampleKernel.cpp, built with FMA contraction), in float32,
// exactly as the NumPy twin reproduces them:
//   scale          = (float)in / (float)out                  (passed in by the host)
//   src(o)         = max(fma(scale, o + 0.5f, -0.5f), 0)      (align_corners=False)
//   nearest        : min(floor((float)o * scale), in - 1)
//   nearest-exact  : min(floor((float)((double)src(o) + 0.5)), in - 1)
//   trilinear      : i0 = min(floor(src), in - 1), i1 = i0 + (i0 < in - 1),
//                    w1 = clamp(src - i0, 0, 1), w0 = 1 - w1,
//                    lerp(a, b) = fma(a, w0, b * w1)
// blended W first, then H, then D (ATen's nesting = the separable twin's pass
// order). Every rounding is explicit (__fmaf_rn, __fmul_rn, ...), so nothing
// depends on the compiler's contraction choices. (torch's CUDA kernels round
// differently in the last bit; the CPU result is the reference here.)
//
// The source box is half-open: origin (b0, b1, b2), extent (id, ih, iw), in a
// volume with element strides (s0, s1, s2). Output is C-contiguous (od, oh, ow).

__device__ __forceinline__ float source_coordinate(i64 o, float scale) {
    float src = __fmaf_rn(scale, __fadd_rn((float)o, 0.5f), -0.5f);
    return src < 0.0f ? 0.0f : src;
}

__device__ __forceinline__ i64 nearest_src(i64 o, i64 in, float scale) {
    i64 s = (i64)floorf(__fmul_rn((float)o, scale));
    return s < in - 1 ? s : in - 1;
}

__device__ __forceinline__ i64 nearest_exact_src(i64 o, i64 in, float scale) {
    float r = __double2float_rn((double)source_coordinate(o, scale) + 0.5);
    i64 s = (i64)floorf(r);
    return s < in - 1 ? s : in - 1;
}

template <int EXACT>
__device__ __forceinline__ i64 nearest_index(i64 o, i64 in, float scale) {
    return EXACT ? nearest_exact_src(o, in, scale) : nearest_src(o, in, scale);
}

struct Linear {
    i64 i0, i1;
    float w0, w1;
};

__device__ __forceinline__ Linear linear_src(i64 o, i64 in, float scale) {
    Linear r;
    float src = source_coordinate(o, scale);
    i64 i0 = (i64)floorf(src);
    if (i0 > in - 1) i0 = in - 1;
    float w1 = __fsub_rn(src, (float)i0);
    w1 = w1 < 0.0f ? 0.0f : (w1 > 1.0f ? 1.0f : w1);
    r.i0 = i0;
    r.i1 = i0 + (i0 < in - 1 ? 1 : 0);
    r.w1 = w1;
    r.w0 = __fsub_rn(1.0f, w1);
    return r;
}

__device__ __forceinline__ float lerp2(float a, float wa, float b, float wb) {
    return __fmaf_rn(a, wa, __fmul_rn(b, wb));
}

// One trilinear sample; `base` points at the box origin.
template <typename T>
__device__ __forceinline__ float trilinear_sample(const T* __restrict__ base, i64 s0, i64 s1,
                                                  i64 s2, Linear d, Linear h, Linear w) {
    const T* p00 = base + d.i0 * s0 + h.i0 * s1;
    const T* p01 = base + d.i0 * s0 + h.i1 * s1;
    const T* p10 = base + d.i1 * s0 + h.i0 * s1;
    const T* p11 = base + d.i1 * s0 + h.i1 * s1;
    float a00 = lerp2((float)p00[w.i0 * s2], w.w0, (float)p00[w.i1 * s2], w.w1);
    float a01 = lerp2((float)p01[w.i0 * s2], w.w0, (float)p01[w.i1 * s2], w.w1);
    float a10 = lerp2((float)p10[w.i0 * s2], w.w0, (float)p10[w.i1 * s2], w.w1);
    float a11 = lerp2((float)p11[w.i0 * s2], w.w0, (float)p11[w.i1 * s2], w.w1);
    float b0 = lerp2(a00, h.w0, a01, h.w1);
    float b1 = lerp2(a10, h.w0, a11, h.w1);
    return lerp2(b0, d.w0, b1, d.w1);
}

// mode "nearest" (EXACT = 0) or "nearest-exact" (EXACT = 1); dtype kept.
template <typename T, int EXACT>
__global__ void resize_nearest(const T* __restrict__ src, T* __restrict__ dst,
                               i64 s0, i64 s1, i64 s2,
                               i64 b0, i64 b1, i64 b2,
                               i64 id, i64 ih, i64 iw,
                               i64 od, i64 oh, i64 ow,
                               float scd, float sch, float scw) {
    const T* base = src + b0 * s0 + b1 * s1 + b2 * s2;
    SEGVOL_GRID_STRIDE(o, od * oh * ow) {
        Idx3 q = unravel3(o, oh, ow);
        i64 z = nearest_index<EXACT>(q.z, id, scd);
        i64 y = nearest_index<EXACT>(q.y, ih, sch);
        i64 x = nearest_index<EXACT>(q.x, iw, scw);
        dst[o] = base[z * s0 + y * s1 + x * s2];
    }
}

// mode "trilinear", align_corners=False; float32 output for any input dtype.
template <typename T>
__global__ void resize_trilinear(const T* __restrict__ src, float* __restrict__ dst,
                                 i64 s0, i64 s1, i64 s2,
                                 i64 b0, i64 b1, i64 b2,
                                 i64 id, i64 ih, i64 iw,
                                 i64 od, i64 oh, i64 ow,
                                 float scd, float sch, float scw) {
    const T* base = src + b0 * s0 + b1 * s1 + b2 * s2;
    SEGVOL_GRID_STRIDE(o, od * oh * ow) {
        Idx3 q = unravel3(o, oh, ow);
        dst[o] = trilinear_sample(base, s0, s1, s2,
                                  linear_src(q.z, id, scd),
                                  linear_src(q.y, ih, sch),
                                  linear_src(q.x, iw, scw));
    }
}

// trilinear low (ld, lh, lw) -> mid (md, mh, mw), then nearest mid -> out
// (od, oh, ow), fused: the nearest step picks one sample of the mid grid, so
// only that sample is computed - the result is exactly the two-step one.
// Scales: sl* = (float)l / (float)m, sm* = (float)m / (float)o.
__global__ void upsample_then_nearest(const float* __restrict__ low, float* __restrict__ dst,
                                      i64 s0, i64 s1, i64 s2,
                                      i64 ld, i64 lh, i64 lw,
                                      i64 md, i64 mh, i64 mw,
                                      i64 od, i64 oh, i64 ow,
                                      float sld, float slh, float slw,
                                      float smd, float smh, float smw) {
    SEGVOL_GRID_STRIDE(o, od * oh * ow) {
        Idx3 q = unravel3(o, oh, ow);
        i64 z = nearest_src(q.z, md, smd);
        i64 y = nearest_src(q.y, mh, smh);
        i64 x = nearest_src(q.x, mw, smw);
        dst[o] = trilinear_sample(low, s0, s1, s2,
                                  linear_src(z, ld, sld),
                                  linear_src(y, lh, slh),
                                  linear_src(x, lw, slw));
    }
}
