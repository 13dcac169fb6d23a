// Element-wise float32 transform of the preprocessing.
// NumPy twins: segvol_rt.ops.normalize, min_max and normalize_min_max.

// out = ((clip(x, lo, hi) - sub1) / div1 - sub2) / div2, each step rounded to
// float32 as the NumPy twin's in-place steps are. The clip is written with
// comparisons (not fminf/fmaxf) so that a NaN passes through, as with
// numpy.maximum/minimum. Identity steps: lo = -inf, hi = +inf, sub = 0, div = 1
// (x - 0 and x / 1 are exact), so normalize and min_max alone use it too.
__global__ void normalize_affine(const float* __restrict__ x, float* __restrict__ out, i64 n,
                                 float lo, float hi, float sub1, float div1, float sub2, float div2) {
    SEGVOL_GRID_STRIDE(o, n) {
        float v = x[o];
        v = v < lo ? lo : v;
        v = v > hi ? hi : v;
        v = __fdiv_rn(__fsub_rn(v, sub1), div1);
        out[o] = __fdiv_rn(__fsub_rn(v, sub2), div2);
    }
}
