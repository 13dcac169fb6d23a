// The device-side pipeline's kernels for the C++ SDK's GPU path (prepared):
// kernels/*.cu, the same sources the CPU path compiles as host C++ and the
// Python runtime compiles with NVRTC, built here by nvcc with every template
// instantiation of segvol_rt/kernels NAME_EXPRESSIONS (the one list), from the
// table generated from it (generated/kernel_instances.inc, cpp/tools/gen_shared.py).
// Only compiled here (no GPU on the build machine): never run in the tests.
#include "common.cuh"
#include "resize.cu"
#include "reduce.cu"
#include "pointwise.cu"
#include "blend.cu"

struct SegvolKernelInstance {
    const char* name;  // the name expression (as NVRTC's get_function takes it)
    const void* kernel;
};

// the launchers look kernels up here by their name expression
extern "C" const SegvolKernelInstance segvol_rt_kernel_instances[] = {
#include "generated/kernel_instances.inc"
};
extern "C" const unsigned long long segvol_rt_kernel_instance_count =
    sizeof(segvol_rt_kernel_instances) / sizeof(segvol_rt_kernel_instances[0]);
