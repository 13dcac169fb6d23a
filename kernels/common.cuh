// Shared definitions of the segvol-rt CUDA kernels.
//
// segvol_rt/kernels.py prepends this file to every kernels/*.cu before NVRTC
// compiles it, so the .cu files carry no #include (NVRTC has no system
// headers). The compile test passes it with `nvcc -include`.
//
// Conventions of every kernel:
// - volumes are (D, H, W) arrays; element strides are passed explicitly
//   (in elements, may be negative) wherever a kernel reads a view;
// - one thread per output element in a grid-stride loop, so any launch
//   size is correct (the CPU emulator of the tests runs 1 block x 1 thread);
// - indices are 64-bit: a CT volume can exceed 2^31 voxels;
// - float arithmetic that must match a NumPy twin bit for bit uses the
//   explicitly rounded intrinsics (__fmul_rn, __fadd_rn, __fsub_rn), which
//   the compiler never contracts into fused multiply-adds.

typedef long long i64;
typedef unsigned long long u64;
typedef unsigned int u32;
typedef unsigned char u8;

// Kernels that reduce within a block are launched with exactly this many
// threads (segvol_rt/gpu_ops.py reads the same number from kernels.py).
#define SEGVOL_BLOCK 256

#define SEGVOL_GRID_STRIDE(i, n)                                              \
    for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (i64)(n);   \
         i += (i64)blockDim.x * gridDim.x)

__device__ __forceinline__ i64 min64(i64 a, i64 b) { return a < b ? a : b; }
__device__ __forceinline__ i64 max64(i64 a, i64 b) { return a > b ? a : b; }

// Order-preserving map of float32 bits to uint32: a < b (as floats, -0 < +0)
// iff key(a) < key(b). NaNs map above +inf (positive sign) or below -inf.
__device__ __forceinline__ u32 float_key(float x) {
    u32 b = __float_as_uint(x);
    return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

// Flat index o of a C-ordered (n0, n1, n2) array -> its three coordinates
// (axis extents are < 2^31; the flat index may not be).
struct Idx3 {
    i64 z, y, x;
};

__device__ __forceinline__ Idx3 unravel3(i64 o, i64 n1, i64 n2) {
    Idx3 r;
    if ((u64)o <= 0xffffffffull) {  // 32-bit division is several times cheaper
        u32 t = (u32)o, a = (u32)n1, b = (u32)n2;
        r.x = t % b;
        t /= b;
        r.y = t % a;
        r.z = t / a;
        return r;
    }
    r.x = o % n2;
    i64 t = o / n2;
    r.y = t % n1;
    r.z = t / n1;
    return r;
}
