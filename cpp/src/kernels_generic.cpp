// The kernels for any CPU: __fmaf_rn is a libm fmaf call.
#include <cmath>
#include <cstring>
#include <vector>

#include "generated/shared_constants.hpp"
#include "kernels_host.hpp"
#define SEGVOL_KNS generic
#include "kernels_impl.inc"
