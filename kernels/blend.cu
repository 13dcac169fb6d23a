// Sliding-window blending, pasting, and the final scan-space mask.
// NumPy twins: segvol_rt.ops.blend_windows and segvol_rt.ops_extra
// (blend_accumulate, blend_divide, paste, scan_mask).
//
// Windows are float32 (n, wd, wh, ww), C-contiguous; starts are int64 (n, 3)
// in the coordinates of the volume they blend into, and every window lies
// inside it. MONAI's constant blending adds window after window into a sum
// and a count volume; here each thread owns one output voxel and adds the
// windows that cover it in window order, which is the same sequence of float
// additions - so results match the NumPy twin bit for bit and never race.

// Windows covering (z, y, x), in order: sum (starting from *s) and count.
__device__ __forceinline__ void gather_windows(const float* __restrict__ win,
                                               const i64* __restrict__ starts, int nwin,
                                               i64 wd, i64 wh, i64 ww,
                                               i64 z, i64 y, i64 x, float* s, float* c) {
    float sum = *s, cnt = *c;
    for (int k = 0; k < nwin; ++k) {
        i64 dz = z - starts[3 * k], dy = y - starts[3 * k + 1], dx = x - starts[3 * k + 2];
        if (dz >= 0 && dz < wd && dy >= 0 && dy < wh && dx >= 0 && dx < ww) {
            sum = __fadd_rn(sum, win[(((i64)k * wd + dz) * wh + dy) * ww + dx]);
            cnt = __fadd_rn(cnt, 1.0f);
        }
    }
    *s = sum;
    *c = cnt;
}

// sum/count (D, H, W) += the windows, over the region box (r0, r1, r2) + (rd, rh, rw)
// that the windows of this batch cover (the host passes their union box).
__global__ void blend_accumulate(const float* __restrict__ win, const i64* __restrict__ starts,
                                 int nwin, i64 wd, i64 wh, i64 ww,
                                 float* __restrict__ sum, float* __restrict__ count,
                                 i64 nh, i64 nw,
                                 i64 r0, i64 r1, i64 r2, i64 rd, i64 rh, i64 rw) {
    SEGVOL_GRID_STRIDE(o, rd * rh * rw) {
        Idx3 q = unravel3(o, rh, rw);
        i64 z = r0 + q.z, y = r1 + q.y, x = r2 + q.x;
        i64 v = (z * nh + y) * nw + x;
        float s = sum[v], c = count[v];
        gather_windows(win, starts, nwin, wd, wh, ww, z, y, x, &s, &c);
        sum[v] = s;
        count[v] = c;
    }
}

// out = sum / count; voxels that no window covered get `empty`.
__global__ void blend_divide(const float* __restrict__ sum, const float* __restrict__ count,
                             float* __restrict__ out, i64 n, float empty) {
    SEGVOL_GRID_STRIDE(o, n) {
        float c = count[o];
        out[o] = c > 0.0f ? __fdiv_rn(sum[o], c) : empty;
    }
}

// Accumulate and divide in one pass, from zero sums: the blend of a volume
// (nd, nh, nw), of which only the box (r0, r1, r2) + (od, oh, ow) is computed
// into out (od, oh, ow) - e.g. the ROI inside its window padding. What
// blend_windows returns when the box is the whole volume.
__global__ void blend_average(const float* __restrict__ win, const i64* __restrict__ starts,
                              int nwin, i64 wd, i64 wh, i64 ww,
                              float* __restrict__ out, i64 od, i64 oh, i64 ow,
                              i64 r0, i64 r1, i64 r2, float empty) {
    SEGVOL_GRID_STRIDE(o, od * oh * ow) {
        Idx3 q = unravel3(o, oh, ow);
        float s = 0.0f, c = 0.0f;
        gather_windows(win, starts, nwin, wd, wh, ww, r0 + q.z, r1 + q.y, r2 + q.x, &s, &c);
        out[o] = c > 0.0f ? __fdiv_rn(s, c) : empty;
    }
}

// dst (C-contiguous, rows nh x nw) [o0:o0+sd, o1:o1+sh, o2:o2+sw] = src (sd, sh, sw),
// src read through element strides (t0, t1, t2).
template <typename T>
__global__ void paste(const T* __restrict__ src, i64 t0, i64 t1, i64 t2,
                      i64 sd, i64 sh, i64 sw,
                      T* __restrict__ dst, i64 nh, i64 nw, i64 o0, i64 o1, i64 o2) {
    SEGVOL_GRID_STRIDE(o, sd * sh * sw) {
        Idx3 q = unravel3(o, sh, sw);
        dst[((o0 + q.z) * nh + o1 + q.y) * nw + o2 + q.x] = src[q.z * t0 + q.y * t1 + q.x * t2];
    }
}

// The final mask, written straight into scan space.
// out: uint8 (n0, n1, n2) in scan axis order (i, j, k), C-contiguous.
// Model axis a (D, H, W) is scan axis perm[a], reversed when flip[a]:
//     m[a] = flip[a] ? n[perm[a]] - 1 - s[perm[a]] : s[perm[a]]
// Crop-space index c = m - origin (origin = crop start in model space, with
// any padding folded in; it may be negative). Logits come from the ROI
// (r0, r1, r2) + (rd, rh, rw) inside the crop where c falls in it, else from
// the crop-space logits (cd, ch, cw); voxels outside the crop are 0.
// A voxel is 1 when its logit >= thr (the host's float32 threshold that
// equals the NumPy twin's positive_mask, i.e. torch.sigmoid(x) > 0.5).
__device__ __forceinline__ i64 pick3(i64 a, i64 b, i64 c, int k) {
    return k == 0 ? a : (k == 1 ? b : c);
}

// Model index along a model axis that is scan axis p (reversed when f).
__device__ __forceinline__ i64 model_index(Idx3 s, i64 n0, i64 n1, i64 n2, int p, int f) {
    i64 v = pick3(s.z, s.y, s.x, p);
    return f ? pick3(n0, n1, n2, p) - 1 - v : v;
}

__global__ void scan_mask(const float* __restrict__ crop, i64 cd, i64 ch, i64 cw,
                          const float* __restrict__ roi, i64 r0, i64 r1, i64 r2,
                          i64 rd, i64 rh, i64 rw,
                          u8* __restrict__ out, i64 n0, i64 n1, i64 n2,
                          int p0, int p1, int p2, int f0, int f1, int f2,
                          i64 g0, i64 g1, i64 g2, float thr) {
    SEGVOL_GRID_STRIDE(o, n0 * n1 * n2) {
        Idx3 s = unravel3(o, n1, n2);
        i64 c0 = model_index(s, n0, n1, n2, p0, f0) - g0;
        i64 c1 = model_index(s, n0, n1, n2, p1, f1) - g1;
        i64 c2 = model_index(s, n0, n1, n2, p2, f2) - g2;
        u8 v = 0;
        if (c0 >= 0 && c0 < cd && c1 >= 0 && c1 < ch && c2 >= 0 && c2 < cw) {
            i64 e0 = c0 - r0, e1 = c1 - r1, e2 = c2 - r2;
            float logit;
            if (e0 >= 0 && e0 < rd && e1 >= 0 && e1 < rh && e2 >= 0 && e2 < rw)
                logit = roi[(e0 * rh + e1) * rw + e2];
            else
                logit = crop[(c0 * ch + c1) * cw + c2];
            v = logit >= thr ? 1 : 0;
        }
        out[o] = v;
    }
}
