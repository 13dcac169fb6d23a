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

namespace segvol::detail::kernels {

typedef long long i64;
typedef unsigned int u32;
typedef unsigned char u8;

// Threads used for a kernel over n work items (1 for small launches), at most the
// calling thread's current pool's (thread_pool.hpp; 1 without one).
int threads_for(i64 n);

// Run one(ctx, block, grid) for blocks 0..T-1 of a T-block grid, one pool thread per
// block (T = threads_for(n), the caller runs block 0); returns when all are done.
void run_blocks(i64 n, void (*one)(void*, int, int), void* ctx);

#include "kernels_api.inc"

// The same entry points per instruction set; the ones above dispatch to them.
namespace generic {
#include "kernels_api.inc"
}
namespace fma {
#include "kernels_api.inc"
}

}  // namespace segvol::detail::kernels
