// Test-only C entry points into the host logic, for the golden tests against
// the Python implementation (tests/cpp/test_cpp_sdk.py, via ctypes). Not
// installed, not part of the ABI.
#include <cstdio>
#include <cstring>

#include "numpy_random.hpp"
#include "ops.hpp"
#include "pipeline.hpp"

using namespace segvol::detail;

extern "C" {

__attribute__((visibility("default"))) void svt_foreground_stats(const float* x, long long n, double out[4], int* ok) {
    try {
        ForegroundStats s = foreground_stats(x, n);
        out[0] = s.lower;
        out[1] = s.upper;
        out[2] = s.mean;
        out[3] = s.std;
        *ok = 1;
    } catch (...) {
        *ok = 0;
    }
}

__attribute__((visibility("default"))) float svt_np1_sum(const float* x, long long n, const float* center) {
    return np1_sum(x, n, center);
}

__attribute__((visibility("default"))) void svt_nearest_index(long long in, long long out, int exact, long long* idx) {
    std::vector<i64> v = nearest_source_index(in, out, exact != 0);
    std::memcpy(idx, v.data(), sizeof(long long) * (size_t)out);
}

// roi_from_box: box[6], size[3], window[3] -> official[6], lo[3], hi[3]
__attribute__((visibility("default"))) void svt_roi(const long long* box, const long long* size, const long long* window,
                                                    long long* out) {
    Roi r = roi_from_box({box[0], box[1], box[2], box[3], box[4], box[5]}, {size[0], size[1], size[2]},
                         {window[0], window[1], window[2]});
    for (int k = 0; k < 6; ++k) out[k] = r.official[k];
    for (int k = 0; k < 3; ++k) out[6 + k] = r.lo[k], out[9 + k] = r.hi[k];
}

// plan_windows: returns the number of starts; fills pad_before[3], padded[3], starts[3 * cap]
__attribute__((visibility("default"))) int svt_plan(const long long* roi, const long long* window, double overlap, long long* pad,
                                                    long long* padded, long long* starts, int cap) {
    WindowPlan p = plan_windows({roi[0], roi[1], roi[2]}, {window[0], window[1], window[2]}, overlap);
    for (int k = 0; k < 3; ++k) pad[k] = p.pad_before[k], padded[k] = p.padded_shape[k];
    for (int i = 0; i < (int)p.starts.size() && i < cap; ++i)
        for (int k = 0; k < 3; ++k) starts[3 * i + k] = p.starts[(size_t)i][k];
    return (int)p.starts.size();
}

// select_points on a uint8 map with numpy's default_rng(seed), called `calls` times in a row
__attribute__((visibility("default"))) int svt_select_points(const unsigned char* map, const long long* shape, unsigned long long seed,
                                                             int calls, long long* coords, long long* labels, int cap) {
    Map8 m;
    m.shape = {shape[0], shape[1], shape[2]};
    m.v.assign(map, map + shape[0] * shape[1] * shape[2]);
    NumpyGenerator rng(seed);
    int n = 0;
    for (int c = 0; c < calls; ++c) {
        Points p = select_points(m, rng, 4, 0);
        for (size_t i = 0; i < p.labels.size() && n < cap; ++i, ++n) {
            for (int k = 0; k < 3; ++k) coords[3 * n + k] = p.coords[i][k];
            labels[n] = p.labels[i];
        }
    }
    return n;
}

__attribute__((visibility("default"))) void svt_generate_box(const unsigned char* map, const long long* shape, long long* box) {
    Map8 m;
    m.shape = {shape[0], shape[1], shape[2]};
    m.v.assign(map, map + shape[0] * shape[1] * shape[2]);
    Box b = generate_box(m);
    for (int k = 0; k < 6; ++k) box[k] = b[k];
}

__attribute__((visibility("default"))) void svt_resized_box(const long long* box, const long long* in, const long long* out, int exact,
                                                            long long* res, int* empty) {
    bool e;
    Box b = resized_box({box[0], box[1], box[2], box[3], box[4], box[5]}, {in[0], in[1], in[2]}, {out[0], out[1], out[2]},
                        exact != 0, &e);
    *empty = e;
    for (int k = 0; k < 6; ++k) res[k] = b[k];
}

}  // extern "C"

#include "tokenizer.hpp"

// ids of `text` (unpadded, with BOS/EOS) from the tokenizer in `dir`; returns the count or -1
extern "C" __attribute__((visibility("default"))) int svt_tokenize(const char* dir, const char* text, long long* ids, int cap) {
    try {
        static std::map<std::string, std::unique_ptr<segvol::detail::Tokenizer>> cache;
        auto& tok = cache[dir];
        if (!tok) tok = segvol::detail::Tokenizer::from_dir(dir, 0);
        std::vector<long long> v = tok->ids(text);
        for (size_t i = 0; i < v.size() && (int)i < cap; ++i) ids[i] = v[i];
        return (int)v.size();
    } catch (...) {
        return -1;
    }
}

#include "orientation.hpp"

// orientation_from_affine(affine (row-major 4x4), dims, codes): nibabel's ornt rows as
// ornt[2 * a] = output axis, ornt[2 * a + 1] = flip; returns 0, or -1 with the message in `err`.
extern "C" __attribute__((visibility("default"))) int svt_orientation(const double* affine, const long long* dims, const char* codes,
                                                                      long long* ornt, char* err, size_t err_size) {
    try {
        Orientation o = orientation_from_affine(affine, {dims[0], dims[1], dims[2]}, codes);
        for (int a = 0; a < 3; ++a) ornt[2 * a] = o.axis[(size_t)a], ornt[2 * a + 1] = o.flip[(size_t)a];
        return 0;
    } catch (const std::exception& e) {
        std::snprintf(err, err_size, "%s", e.what());
        return -1;
    }
}

// The scan (dims, i fastest, n voxels) reoriented to `codes` into `out` (n voxels, the target's
// first axis fastest), or back when `inverse`; returns 0 or -1 (a bad size or a failed orientation).
extern "C" __attribute__((visibility("default"))) int svt_reorient_volume(const double* affine, const long long* dims, const char* codes,
                                                                          const float* in, float* out, size_t n, int inverse) {
    try {
        Orientation o = orientation_from_affine(affine, {dims[0], dims[1], dims[2]}, codes);
        if ((size_t)(dims[0] * dims[1] * dims[2]) != n) return -1;
        o.copy(in, out, inverse != 0);
        return 0;
    } catch (...) {
        return -1;
    }
}

#include "resident.hpp"

// droppable(file_mappings(smaps), files): the chosen ranges' starts and ends into starts[cap] and
// ends[cap] (files: `n` paths, compared as given); returns how many were chosen (maybe > cap).
extern "C" __attribute__((visibility("default"))) int svt_droppable(const char* smaps, const char* const* files, int n,
                                                                    unsigned long long* starts, unsigned long long* ends, int cap) {
    std::vector<Mapping> chosen = droppable(file_mappings(smaps), std::vector<std::string>(files, files + n));
    for (int i = 0; i < (int)chosen.size() && i < cap; ++i) starts[i] = chosen[(size_t)i].start, ends[i] = chosen[(size_t)i].end;
    return (int)chosen.size();
}

// drop_mapped_pages of `n` paths: the bytes of the ranges advised.
extern "C" __attribute__((visibility("default"))) unsigned long long svt_drop_mapped_pages(const char* const* files, int n) {
    return drop_mapped_pages(std::vector<std::string>(files, files + n));
}
