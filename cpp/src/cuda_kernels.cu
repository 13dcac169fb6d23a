// The device-side pipeline's kernels for the C++ SDK's GPU path (prepared):
// kernels/*.cu, the same sources the CPU path compiles as host C++ and the
// Python runtime compiles with NVRTC, built here by nvcc with the template
// instantiations the launchers use (segvol_rt/kernels NAME_EXPRESSIONS).
// Only compiled here (no GPU on the build machine): never run in the tests.
#include "common.cuh"
#include "resize.cu"
#include "reduce.cu"
#include "pointwise.cu"
#include "blend.cu"

template __global__ void resize_nearest<float, 0>(const float*, float*, i64, i64, i64, i64, i64, i64, i64, i64, i64,
                                                  i64, i64, i64, float, float, float);
template __global__ void resize_nearest<float, 1>(const float*, float*, i64, i64, i64, i64, i64, i64, i64, i64, i64,
                                                  i64, i64, i64, float, float, float);
template __global__ void resize_nearest<u8, 0>(const u8*, u8*, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64, i64,
                                               i64, float, float, float);
template __global__ void resize_trilinear<float>(const float*, float*, i64, i64, i64, i64, i64, i64, i64, i64, i64,
                                                 i64, i64, i64, float, float, float);
template __global__ void bbox<float, 1>(const float*, i64, i64, i64, float, int*);
template __global__ void bbox<u8, 0>(const u8*, i64, i64, i64, float, int*);
template __global__ void paste<float>(const float*, i64, i64, i64, i64, i64, i64, float*, i64, i64, i64, i64, i64);
