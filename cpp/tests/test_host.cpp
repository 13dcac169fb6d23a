// Host-logic checks that need no model (the golden comparisons against Python
// are in tests/cpp/test_cpp_sdk.py through libsegvol_rt_testing).
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "numpy_random.hpp"
#include "ops.hpp"
#include "pipeline.hpp"

static int failures = 0;
#define CHECK(c)                                                   \
    do {                                                           \
        if (!(c)) {                                                \
            std::fprintf(stderr, "FAIL %s:%d %s\n", __FILE__, __LINE__, #c); \
            ++failures;                                            \
        }                                                          \
    } while (0)

int main() {
    using namespace segvol::detail;
    // numpy.random.default_rng(0).integers(1000) == 850 (numpy's PCG64 stream)
    NumpyGenerator g(0);
    CHECK(g.integers(1000) == 850);
    // MONAI window plan: a 40-voxel axis with a 32 window, overlap 0.5 -> starts 0, 8
    WindowPlan p = plan_windows({40, 10, 64}, {32, 32, 32}, 0.5);
    CHECK(p.starts.size() == 2 * 1 * 3);
    CHECK(p.pad_before[1] == 11 && p.padded_shape[1] == 32);
    // the positive-logit threshold: torch.sigmoid(x) > 0.5 iff x > 3 * 2**-25
    CHECK(positive_threshold() > 3.0f * std::ldexp(1.0f, -25));
    CHECK(std::nextafter(positive_threshold(), 0.0f) == 3.0f * std::ldexp(1.0f, -25));
    // numpy-1.x sum of 10000 ones (one full block + a tail) is exact
    std::vector<float> ones(10000, 1.0f);
    CHECK(np1_sum(ones.data(), 10000) == 10000.0f);
    if (failures) return 1;
    std::puts("host: ok");
    return 0;
}
