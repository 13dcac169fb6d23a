// The kernels for x86-64 CPUs with FMA: __fmaf_rn becomes the FMA instruction.
// fma is exactly rounded either way and -ffp-contract=off fuses nothing else,
// so both builds give the same bits. Only this file's own functions are
// compiled for FMA (the pragma follows every standard header), and the
// dispatcher calls them only where the CPU has FMA.
#include <cmath>
#include <cstring>
#include <vector>

#include "generated/shared_constants.hpp"
#include "kernels_host.hpp"
#if defined(__x86_64__) && defined(__GNUC__)
#pragma GCC target("fma")
#define SEGVOL_KNS fma
#include "kernels_impl.inc"
#endif
