// consumer ARTIFACTS RAW I J K: segment "liver" in a raw little-endian int16
// volume (i fastest) and print the mask's voxel count.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <segvol_rt/segvol_rt.hpp>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 6) return 2;
    int64_t I = std::atoll(argv[3]), J = std::atoll(argv[4]), K = std::atoll(argv[5]);
    std::ifstream in(argv[2], std::ios::binary);
    std::vector<int16_t> vol((size_t)(I * J * K));
    in.read(reinterpret_cast<char*>(vol.data()), (std::streamsize)(vol.size() * 2));
    try {
        segvol::Runtime rt(argv[1]);
        rt.set_volume(vol.data(), SEGVOL_DTYPE_INT16, {I, J, K});
        segvol::Target t;
        t.text = "liver";
        segvol::Segmentation s = rt.segment(t);
        size_t n = 0;
        for (uint8_t m : s.mask) n += m;
        std::printf("%zu\n", n);
    } catch (const segvol::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
    return 0;
}
