// Checked sizes of volumes given by a caller: a dims product that overflows, or a
// volume the pipeline cannot address, is refused with one line instead of wrapping.
#pragma once

#include <array>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "errors.hpp"

namespace segvol::detail {

// "(I, J, K)"
inline std::string dims_str(const std::array<long long, 3>& d) {
    std::ostringstream s;
    s << "(" << d[0] << ", " << d[1] << ", " << d[2] << ")";
    return s.str();
}

// I*J*K of a scan's dims, checked: every extent in [1, INT_MAX] (the kernels' boxes
// are int), the product and its float32 bytes within ptrdiff_t (std::vector's bound).
inline size_t checked_voxels(const std::array<long long, 3>& d) {
    for (long long v : d)
        if (v < 1) fail(SEGVOL_ERR_INVALID_ARGUMENT, "the scan volume is empty (dims " + dims_str(d) + ")");
    for (long long v : d)
        if (v > INT_MAX)
            fail(SEGVOL_ERR_INVALID_ARGUMENT, "dims " + dims_str(d) + ": an extent over " + std::to_string(INT_MAX) + " voxels is not supported");
    long long n = 0, bytes = 0;
    if (__builtin_mul_overflow(d[0], d[1], &n) || __builtin_mul_overflow(n, d[2], &n) ||
        __builtin_mul_overflow(n, (long long)sizeof(float), &bytes) || bytes > PTRDIFF_MAX)
        fail(SEGVOL_ERR_INVALID_ARGUMENT, "dims " + dims_str(d) + ": the voxel count overflows the addressable size");
    return (size_t)n;
}

}  // namespace segvol::detail
