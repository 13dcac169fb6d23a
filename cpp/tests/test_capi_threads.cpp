// Two threads on one handle (run under ASan+UBSan by the sanitizer build's ctest):
//   - set_volume of a larger volume racing segment with buffers sized for the smaller
//     one: every segment either fits (dims of the small volume) or is refused with the
//     large volume's dims, and the guard bytes after the buffer stay untouched;
//   - segvol_last_error and segvol_backend racing another thread's failing calls and
//     reloads: each thread reads only its own message, never a freed string;
//   - the C++ header's segment() with another thread's set_volume in between: the
//     mask always has the size of the dims it reports.
// argv[1]: an artifacts directory (the demo model's).
#include <atomic>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "segvol_rt/segvol_rt.hpp"

static std::atomic<int> failures{0};

static void check(const char* what, bool ok) {
    if (!ok) {
        std::fprintf(stderr, "FAIL %s\n", what);
        ++failures;
    }
}

static std::vector<float> scan(const int64_t d[3]) {
    std::vector<float> v((size_t)(d[0] * d[1] * d[2]));
    for (size_t i = 0; i < v.size(); ++i) v[i] = (float)((i * 7919) % 1000) - 500.0f;
    return v;
}

static segvol_runtime* open(const char* art, int threads) {
    segvol_runtime* h = segvol_create();
    segvol_load_options o;
    segvol_load_options_init(&o);
    o.threads = threads;
    if (segvol_load(h, art, &o) != SEGVOL_OK) {
        std::fprintf(stderr, "FAIL load: %s\n", segvol_last_error());
        std::exit(1);
    }
    return h;
}

static const int64_t SMALL[3] = {40, 40, 20}, LARGE[3] = {48, 44, 28};

static void set_volume_vs_segment(const char* art) {
    segvol_runtime* h = open(art, 1);
    std::vector<float> small = scan(SMALL), large = scan(LARGE);
    segvol_set_volume(h, small.data(), small.size() * 4, SEGVOL_DTYPE_FLOAT32, SMALL, nullptr);
    std::thread setter([&] {
        for (int i = 0; i < 12; ++i) {
            const std::vector<float>& v = i % 2 ? small : large;
            segvol_status s = segvol_set_volume(h, v.data(), v.size() * 4, SEGVOL_DTYPE_FLOAT32, i % 2 ? SMALL : LARGE, nullptr);
            check("set_volume in the racing thread", s == SEGVOL_OK);
        }
    });
    const size_t guard = 64, cap = small.size();
    std::vector<uint8_t> buf(cap + guard, 0xcd);
    uint8_t* masks[1] = {buf.data()};
    segvol_target t;
    segvol_target_init(&t);
    t.text = "liver";
    t.zoom_in = 0;
    int fits = 0, refused = 0;
    for (int i = 0; i < 12; ++i) {
        int64_t dims[3] = {0, 0, 0};
        segvol_status s = segvol_segment(h, &t, 1, masks, nullptr, cap, dims, nullptr);
        bool is_small = std::memcmp(dims, SMALL, sizeof dims) == 0, is_large = std::memcmp(dims, LARGE, sizeof dims) == 0;
        if (s == SEGVOL_OK && is_small) ++fits;
        else if (s == SEGVOL_ERR_BUFFER_TOO_SMALL && is_large) ++refused;
        else check("segment racing set_volume: OK with the small dims or BUFFER_TOO_SMALL with the large", false);
    }
    setter.join();
    bool intact = true;
    for (size_t i = cap; i < buf.size(); ++i) intact = intact && buf[i] == 0xcd;
    check("guard bytes after the mask buffer untouched", intact);
    std::printf("ok   set_volume racing segment: %d fitted, %d refused as too small\n", fits, refused);
    segvol_destroy(h);
}

static void errors_vs_failing_calls(const char* art) {
    segvol_runtime* h = open(art, 1);
    std::vector<float> v = scan(SMALL);
    std::atomic<bool> done{false};
    std::thread other([&] {
        for (int i = 0; i < 300; ++i) {
            if (i % 100 == 99) {  // a successful reload replaces (frees) the backend description
                segvol_load_options o;
                segvol_load_options_init(&o);
                o.threads = 1 + i % 2;
                check("reload", segvol_load(h, art, &o) == SEGVOL_OK);
            } else if (i % 2) {
                check("failing load", segvol_load(h, "/nonexistent/artifacts", nullptr) == SEGVOL_ERR_ARTIFACTS);
                check("its own message", std::strstr(segvol_last_error(), "/nonexistent/artifacts") != nullptr);
            } else {
                check("failing set_volume", segvol_set_volume(h, v.data(), v.size() * 4, 42, SMALL, nullptr) == SEGVOL_ERR_INVALID_ARGUMENT);
                check("its own message", std::strncmp(segvol_last_error(), "dtype 42", 8) == 0);
            }
        }
        done = true;
    });
    int reads = 0;
    while (!done) {
        check("own failure", segvol_segment(h, nullptr, 1, nullptr, nullptr, 0, nullptr, nullptr) != SEGVOL_OK);
        const char* e = segvol_last_error();
        check("last_error is this thread's", std::strcmp(e, "targets is NULL") == 0 ||
                                                 std::strstr(e, "no volume") != nullptr);  // the other thread released it
        const char* b = segvol_backend(h);
        check("backend readable", std::strncmp(b, "onnxruntime", 11) == 0);
        ++reads;
    }
    other.join();
    std::printf("ok   last_error/backend racing failing calls: %d reads\n", reads);
    segvol_destroy(h);
}

static void cpp_header_resizes(const char* art) {
    segvol::LoadOptions lo;
    lo.threads = 1;
    segvol::Runtime rt(art, lo);
    std::vector<float> small = scan(SMALL), large = scan(LARGE);
    rt.set_volume(small, {SMALL[0], SMALL[1], SMALL[2]});
    std::thread setter([&] {
        segvol_set_volume(rt.handle(), large.data(), large.size() * 4, SEGVOL_DTYPE_FLOAT32, LARGE, nullptr);
    });
    segvol::Target t;
    t.text = "liver";
    t.zoom_in = false;
    t.probabilities = true;
    for (int i = 0; i < 3; ++i) {
        segvol::Segmentation s = rt.segment(t);
        size_t n = (size_t)(s.dims[0] * s.dims[1] * s.dims[2]);
        check("C++ segment: mask and probabilities sized by the dims reported", s.mask.size() == n && s.probabilities.size() == n);
    }
    setter.join();
    std::printf("ok   C++ header sized by the reported dims\n");
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: test_capi_threads ARTIFACTS_DIR\n");
        return 2;
    }
    set_volume_vs_segment(argv[1]);
    errors_vs_failing_calls(argv[1]);
    cpp_header_resizes(argv[1]);
    if (failures) {
        std::fprintf(stderr, "%d failures\n", failures.load());
        return 1;
    }
    std::puts("capi threads: ok");
    return 0;
}
