// consumer ARTIFACTS RAW I J K: segment "liver" in a raw little-endian int16
// volume (i fastest) and print the mask's voxel count; the same mask through
// segment_into (the caller's memory), which refuses a buffer one voxel short.
#include <cstdio>
#include <fstream>
#include <segvol_rt/segvol_rt.hpp>
#include <string>
#include <vector>

int main(int argc, char** argv) {
    if (argc != 6) return 2;
    if (segvol_abi_version() != SEGVOL_RT_ABI_VERSION) {
        std::fprintf(stderr, "error: built against ABI %d, running with %u\n", SEGVOL_RT_ABI_VERSION, segvol_abi_version());
        return 2;
    }
    std::array<int64_t, 3> dims{};
    size_t n = 1;
    for (int a = 0; a < 3; ++a) {
        dims[a] = std::stoll(argv[3 + a]);
        if (dims[a] < 1 || __builtin_mul_overflow(n, (size_t)dims[a], &n)) return 2;
    }
    std::ifstream in(argv[2], std::ios::binary);
    std::vector<int16_t> vol(n);
    in.read(reinterpret_cast<char*>(vol.data()), (std::streamsize)(vol.size() * 2));
    if (!in) return 2;
    try {
        segvol::Runtime rt(argv[1]);
        rt.set_volume(vol, dims);
        segvol::Target t;
        t.text = "liver";
        segvol::Segmentation s = rt.segment(t);
        size_t count = 0;
        for (uint8_t m : s.mask) count += m;
        std::vector<uint8_t> mine(n);
        uint8_t* masks[1] = {mine.data()};
        if (rt.segment_into({t}, masks, nullptr, n) != dims || mine != s.mask) {
            std::fprintf(stderr, "error: segment_into differs from segment\n");
            return 3;
        }
        try {
            rt.segment_into({t}, masks, nullptr, n - 1);
            std::fprintf(stderr, "error: a short buffer was accepted\n");
            return 3;
        } catch (const segvol::Error& e) {
            if (e.status() != SEGVOL_ERR_BUFFER_TOO_SMALL) throw;
        }
        std::printf("%zu\n", count);
    } catch (const segvol::Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
    return 0;
}
