// Reductions over C-contiguous volumes: bounding boxes, numpy-1.x float32
// sums, radix-select histograms (exact percentiles) and min/max.
// NumPy twins: segvol_rt.ops.bounding_box, positive_box, foreground_stats, min_max.
//
// The block-reducing kernels here are launched with SEGVOL_BLOCK threads per
// block: a block first reduces in shared memory, then one thread publishes it
// with an atomic; every result here is order-free (integers, min/max), and the
// float sums have a fixed order by construction (one thread per leaf/block).

// ---------------------------------------------------------------- bounding box
// Inclusive box of the voxels that pass the predicate, as
// box[6] = {min d, min h, min w, max d, max h, max w}; the host pre-fills it
// with {INT_MAX x3, -1 x3}, so an empty predicate leaves max d == -1.
// MODE 0: x != 0 (masks, any dtype). MODE 1: (float)x >= thr, where the host
// passes thr = the smallest float32 that the NumPy twin's positive_mask
// (torch.sigmoid(x) > 0.5) accepts, so the two agree for every float32 x.
template <typename T, int MODE>
__device__ __forceinline__ bool bbox_pred(T v, float thr) {
    return MODE == 0 ? (v != (T)0) : ((float)v >= thr);
}

template <typename T, int MODE>
__global__ void bbox(const T* __restrict__ x, i64 nd, i64 nh, i64 nw, float thr,
                     int* __restrict__ box) {
    __shared__ int red[6][SEGVOL_BLOCK];
    int lo_d = 0x7fffffff, lo_h = 0x7fffffff, lo_w = 0x7fffffff;
    int hi_d = -1, hi_h = -1, hi_w = -1;
    SEGVOL_GRID_STRIDE(o, nd * nh * nw) {
        if (bbox_pred<T, MODE>(x[o], thr)) {
            Idx3 q = unravel3(o, nh, nw);
            lo_d = min((int)q.z, lo_d); hi_d = max((int)q.z, hi_d);
            lo_h = min((int)q.y, lo_h); hi_h = max((int)q.y, hi_h);
            lo_w = min((int)q.x, lo_w); hi_w = max((int)q.x, hi_w);
        }
    }
    int t = threadIdx.x;
    red[0][t] = lo_d; red[1][t] = lo_h; red[2][t] = lo_w;
    red[3][t] = hi_d; red[4][t] = hi_h; red[5][t] = hi_w;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            for (int k = 0; k < 3; ++k) red[k][t] = min(red[k][t], red[k][t + s]);
            for (int k = 3; k < 6; ++k) red[k][t] = max(red[k][t], red[k][t + s]);
        }
        __syncthreads();
    }
    if (t == 0 && red[3][0] >= 0) {
        for (int k = 0; k < 3; ++k) atomicMin(&box[k], red[k][0]);
        for (int k = 3; k < 6; ++k) atomicMax(&box[k], red[k][0]);
    }
}

// ------------------------------------------------------------ float32 sums
// numpy 1.x's np.add.reduce of a float32 vector, bit for bit (the rule that
// segvol_rt.ops._sum_f32 reproduces): the vector is cut into 8192-element
// blocks (the ufunc buffer); each block is a pairwise sum of 64 leaves of 128
// elements; a leaf adds its 16 rows of 8 into 8 accumulators in sequence and
// folds them as ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7)); the leaf
// sums combine as a balanced binary tree. The host adds the block sums (and
// the pairwise sum of the < 8192 tail) one after another.
// The summed values are x, or (x - center)^2 (float32) when `squared`.

// leaf[L] = sum of x[128 L .. 128 L + 127], L < nleaves.
__global__ void np1_leaf_sums(const float* __restrict__ x, i64 nleaves, float center, int squared,
                              float* __restrict__ leaf) {
    SEGVOL_GRID_STRIDE(l, nleaves) {
        const float* p = x + l * 128;
        float r[8];
        for (int k = 0; k < 16; ++k) {
            for (int j = 0; j < 8; ++j) {
                float v = p[k * 8 + j];
                if (squared) {
                    float d = __fsub_rn(v, center);
                    v = __fmul_rn(d, d);
                }
                r[j] = k == 0 ? v : __fadd_rn(r[j], v);
            }
        }
        leaf[l] = __fadd_rn(__fadd_rn(__fadd_rn(r[0], r[1]), __fadd_rn(r[2], r[3])),
                            __fadd_rn(__fadd_rn(r[4], r[5]), __fadd_rn(r[6], r[7])));
    }
}

// block[b] = balanced pairwise sum of leaf[64 b .. 64 b + 63].
__global__ void np1_block_sums(const float* __restrict__ leaf, i64 nblocks, float* __restrict__ block) {
    SEGVOL_GRID_STRIDE(b, nblocks) {
        float s[64];
        for (int k = 0; k < 64; ++k) s[k] = leaf[b * 64 + k];
        for (int width = 32; width >= 1; width >>= 1)
            for (int k = 0; k < width; ++k) s[k] = __fadd_rn(s[2 * k], s[2 * k + 1]);
        block[b] = s[0];
    }
}

// ------------------------------------------------------------ radix select
// One 8-bit digit pass of a radix select over the float32 keys of the voxels
// (those with x > thr when `filter`, else all), for nq <= 4 queries at once. Query q counts the voxels whose
// key agrees with prefix[q] on the bits above `shift + 8`, by their digit
// (key >> shift) & 255, into hist[q * 256 + digit]. Four passes (shift 24, 16,
// 8, 0) pin down the exact k-th smallest value; see gpu_ops.select_ranks.
__global__ void radix_histogram(const float* __restrict__ x, i64 n, int filter, double thr,
                                const u32* __restrict__ prefix, int nq, int shift,
                                u32* __restrict__ hist) {
    __shared__ u32 local[4 * 256];
    for (int k = threadIdx.x; k < 4 * 256; k += blockDim.x) local[k] = 0u;
    __syncthreads();
    u32 high = shift + 8 >= 32 ? 0u : ~((1u << (shift + 8)) - 1u);
    u32 pre[4];
    for (int q = 0; q < 4; ++q) pre[q] = q < nq ? (prefix[q] & high) : 0u;
    SEGVOL_GRID_STRIDE(o, n) {
        float v = x[o];
        if (!filter || (double)v > thr) {
            u32 key = float_key(v);
            u32 digit = (key >> shift) & 255u;
            for (int q = 0; q < nq; ++q)
                if ((key & high) == pre[q]) atomicAdd(&local[q * 256 + digit], 1u);
        }
    }
    __syncthreads();
    for (int k = threadIdx.x; k < nq * 256; k += blockDim.x)
        if (local[k]) atomicAdd(&hist[k], local[k]);
}

// ------------------------------------------------------------ min / max
// keys[0] = min key, keys[1] = max key of float32 x (host pre-fills
// {0xffffffff, 0}). A NaN shows as a key above key(+inf) or below key(-inf).
__global__ void minmax_keys(const float* __restrict__ x, i64 n, u32* __restrict__ keys) {
    __shared__ u32 red[2][SEGVOL_BLOCK];
    u32 lo = 0xffffffffu, hi = 0u;
    SEGVOL_GRID_STRIDE(o, n) {
        u32 k = float_key(x[o]);
        lo = min(lo, k);
        hi = max(hi, k);
    }
    int t = threadIdx.x;
    red[0][t] = lo;
    red[1][t] = hi;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) {
            red[0][t] = min(red[0][t], red[0][t + s]);
            red[1][t] = max(red[1][t], red[1][t + s]);
        }
        __syncthreads();
    }
    if (t == 0) {
        atomicMin(&keys[0], red[0][0]);
        atomicMax(&keys[1], red[1][0]);
    }
}
