// Bad input through the C ABI: every misuse returns an error code and a
// one-line message, never a crash. argv[1]: an artifacts directory (the demo
// model's); the test makes damaged copies of it in a temporary directory.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <filesystem>
#include <unistd.h>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "segvol_rt/segvol_rt.h"

namespace fs = std::filesystem;
static int failures = 0;

static void expect(const char* what, segvol_status got, segvol_status want, const segvol_runtime*) {
    const char* msg = segvol_last_error();
    bool one_line = msg && *msg && !std::strchr(msg, '\n');
    if (got != want || (want != SEGVOL_OK && !one_line)) {
        std::fprintf(stderr, "FAIL %s: status %d (want %d), message '%s'\n", what, got, want, msg ? msg : "(null)");
        ++failures;
    } else {
        std::printf("ok   %-34s %d  %s\n", what, got, msg);
    }
}

static void check(const char* what, bool ok) {
    if (!ok) {
        std::fprintf(stderr, "FAIL %s\n", what);
        ++failures;
    } else {
        std::printf("ok   %s\n", what);
    }
}

// Sizes of the caller's memory: data too short, dims whose product overflows, mask
// buffers too small (refused, dims given back, nothing written), too many points.
static void sizes(segvol_runtime* rt, const std::vector<float>& vol, int64_t dims[3]) {
    std::vector<uint8_t> small(100, 0xab);
    uint8_t* masks[1] = {small.data()};
    segvol_target t;
    segvol_target_init(&t);
    t.text = "liver";
    t.zoom_in = 0;
    int64_t got[3] = {-1, -1, -1};
    expect("buffer too small", segvol_segment(rt, &t, 1, masks, nullptr, small.size(), got, nullptr), SEGVOL_ERR_BUFFER_TOO_SMALL, rt);
    check("  dims given back", got[0] == dims[0] && got[1] == dims[1] && got[2] == dims[2]);
    bool untouched = true;
    for (uint8_t v : small) untouched = untouched && v == 0xab;
    check("  nothing written", untouched);
    std::vector<float> probs(10);
    std::vector<uint8_t> mask(vol.size());
    uint8_t* big[1] = {mask.data()};
    float* p[1] = {probs.data()};
    expect("probabilities too small", segvol_segment(rt, &t, 1, big, p, 10, nullptr, nullptr), SEGVOL_ERR_BUFFER_TOO_SMALL, rt);
    int64_t four[4] = {5, 5, 5, 1};
    segvol_target many;
    segvol_target_init(&many);
    many.points = four;
    many.n_points = SIZE_MAX;  // refused before any point is read (ASan: no read past `four`)
    expect("n_points huge", segvol_segment(rt, &many, 1, big, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("short data", segvol_set_volume(rt, vol.data(), vol.size() * 4 - 1, SEGVOL_DTYPE_FLOAT32, dims, nullptr),
           SEGVOL_ERR_INVALID_ARGUMENT, rt);
    int64_t d[3] = {40, 40, 10};  // a sub-volume of the data: a larger buffer is fine
    expect("data larger than dims", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, d, nullptr), SEGVOL_OK, rt);
    const int64_t huge[][3] = {{int64_t(1) << 31, int64_t(1) << 31, 4}, {(int64_t(1) << 62) + 1, 4, 1},
                               {int64_t(1) << 40, int64_t(1) << 40, int64_t(1) << 40}, {INT64_MAX, INT64_MAX, INT64_MAX},
                               {int64_t(1) << 31, 1, 1}, {int64_t(1) << 30, int64_t(1) << 30, int64_t(1) << 30},
                               {int64_t(1) << 30, int64_t(1) << 30, 2}, {-1, -5, 2}};
    for (const auto& h : huge)
        expect("overflowing dims", segvol_set_volume(rt, vol.data(), SIZE_MAX, SEGVOL_DTYPE_FLOAT32, h, nullptr),
               SEGVOL_ERR_INVALID_ARGUMENT, rt);
    int64_t z[3] = {0, 0, 0};
    expect("no volume after a failed set_volume", segvol_segment(rt, &t, 1, big, nullptr, mask.size(), z, nullptr), SEGVOL_ERR_NO_VOLUME, rt);
    check("  dims 0 without a volume", z[0] == 0 && z[1] == 0 && z[2] == 0);
}

// A failed segvol_load on a loaded handle keeps the working runtime and its volume.
static void failed_reload(segvol_runtime* rt, const std::string& art, const std::vector<float>& vol, int64_t dims[3]) {
    std::string before = segvol_backend(rt);
    expect("set_volume", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, dims, nullptr), SEGVOL_OK, rt);
    expect("failed reload", segvol_load(rt, "/nonexistent/artifacts", nullptr), SEGVOL_ERR_ARTIFACTS, rt);
    segvol_load_options o;
    segvol_load_options_init(&o);
    o.precision = "fp8";
    expect("failed reload (options)", segvol_load(rt, art.c_str(), &o), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_target t;
    segvol_target_init(&t);
    t.text = "liver";
    std::vector<uint8_t> mask(vol.size());
    uint8_t* masks[1] = {mask.data()};
    int64_t got[3];
    expect("segment after a failed reload", segvol_segment(rt, &t, 1, masks, nullptr, mask.size(), got, nullptr), SEGVOL_OK, rt);
    check("  backend kept", before == segvol_backend(rt) && !before.empty());
    check("  dims of the volume", got[0] == dims[0] && got[1] == dims[1] && got[2] == dims[2]);
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: test_capi ARTIFACTS_DIR\n");
        return 2;
    }
    std::string art = argv[1];
    if (segvol_abi_version() != SEGVOL_RT_ABI_VERSION || std::strcmp(segvol_version(), SEGVOL_RT_VERSION) != 0) {
        std::fprintf(stderr, "FAIL version\n");
        return 1;
    }
    // NULL handles and pointers
    expect("load NULL handle", segvol_load(nullptr, art.c_str(), nullptr), SEGVOL_ERR_INVALID_ARGUMENT, nullptr);
    segvol_runtime* rt = segvol_create();
    expect("load NULL dir", segvol_load(rt, nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("load missing dir", segvol_load(rt, "/nonexistent/artifacts", nullptr), SEGVOL_ERR_ARTIFACTS, rt);
    check("nothing compiled before a load (and for NULL)",
          std::string(segvol_compiled_graphs(rt)).empty() && std::string(segvol_compiled_graphs(nullptr)).empty());
    int64_t dims[3] = {40, 40, 20};
    std::vector<float> vol((size_t)(40 * 40 * 20));
    for (size_t i = 0; i < vol.size(); ++i) vol[i] = (float)((i * 7919) % 1000) - 500.0f;
    expect("set_volume before load", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, dims, nullptr),
           SEGVOL_ERR_NOT_LOADED, rt);
    segvol_load_options bad_opts;
    std::memset(&bad_opts, 0, sizeof bad_opts);
    expect("options without init", segvol_load(rt, art.c_str(), &bad_opts), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_load_options o;
    segvol_load_options_init(&o);
    o.precision = "fp8";
    expect("unknown precision", segvol_load(rt, art.c_str(), &o), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_load_options_init(&o);
    o.ort_library = "/nonexistent/libonnxruntime.so.1.99.0";
    expect("missing ORT library", segvol_load(rt, art.c_str(), &o), SEGVOL_ERR_BACKEND, rt);
    expect("load", segvol_load(rt, art.c_str(), nullptr), SEGVOL_OK, rt);
    // volumes
    expect("NULL data", segvol_set_volume(rt, nullptr, 0, SEGVOL_DTYPE_FLOAT32, dims, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("NULL dims", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("wrong dtype", segvol_set_volume(rt, vol.data(), vol.size() * 4, 42, dims, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    int64_t zero[3] = {40, 0, 20};
    expect("empty dims", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, zero, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    double aff[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
    aff[5] = NAN;
    expect("non-finite affine", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, dims, aff), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    std::vector<float> flat(vol.size(), 3.0f);
    expect("constant volume", segvol_set_volume(rt, flat.data(), flat.size() * 4, SEGVOL_DTYPE_FLOAT32, dims, nullptr), SEGVOL_ERR_SCAN, rt);
    std::vector<float> withnan(vol);
    withnan[17] = NAN;
    expect("NaN voxel", segvol_set_volume(rt, withnan.data(), withnan.size() * 4, SEGVOL_DTYPE_FLOAT32, dims, nullptr), SEGVOL_ERR_SCAN, rt);
    segvol_target t;
    segvol_target_init(&t);
    t.text = "liver";
    std::vector<uint8_t> mask(vol.size());
    uint8_t* masks[1] = {mask.data()};
    expect("segment before volume", segvol_segment(rt, &t, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_NO_VOLUME, rt);
    expect("set_volume", segvol_set_volume(rt, vol.data(), vol.size() * 4, SEGVOL_DTYPE_FLOAT32, dims, nullptr), SEGVOL_OK, rt);
    // prompts
    expect("NULL targets", segvol_segment(rt, nullptr, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("NULL masks", segvol_segment(rt, &t, 1, nullptr, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    uint8_t* null_mask[1] = {nullptr};
    expect("NULL mask buffer", segvol_segment(rt, &t, 1, null_mask, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_target none;
    segvol_target_init(&none);
    expect("no prompt", segvol_segment(rt, &none, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_target boxed;
    segvol_target_init(&boxed);
    int64_t outside[6] = {0, 0, 0, 40, 10, 10};
    boxed.box = outside;
    expect("box outside the volume", segvol_segment(rt, &boxed, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    int64_t inverted[6] = {10, 10, 10, 5, 20, 20};
    boxed.box = inverted;
    expect("empty box", segvol_segment(rt, &boxed, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_target pts;
    segvol_target_init(&pts);
    int64_t p[4] = {5, 5, 5, 7};
    pts.points = p;
    pts.n_points = 1;
    expect("bad point label", segvol_segment(rt, &pts, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    pts.n_points = 0;
    expect("points without count", segvol_segment(rt, &pts, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    segvol_target wp;
    segvol_target_init(&wp);
    wp.text = "liver";
    wp.window_prompts = 9;
    expect("bad window_prompts", segvol_segment(rt, &wp, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("segment", segvol_segment(rt, &t, 1, masks, nullptr, mask.size(), nullptr, nullptr), SEGVOL_OK, rt);
    check("last error empty after success", *segvol_last_error() == 0);
    sizes(rt, vol, dims);
    failed_reload(rt, art, vol, dims);
    segvol_destroy(rt);
    segvol_destroy(nullptr);

    // damaged artifacts: a changed file (sha256 mismatch), a missing file, a broken manifest
    fs::path tmp = fs::temp_directory_path() / ("segvol_capi_" + std::to_string(::getpid()));
    fs::remove_all(tmp);
    fs::create_directories(tmp);
    auto copy = [&](const char* name) {
        fs::path d = tmp / name;
        fs::copy(art, d, fs::copy_options::recursive);
        return d;
    };
    fs::path changed = copy("changed");
    {
        std::fstream f(changed / "text_table.npz", std::ios::in | std::ios::out | std::ios::binary);
        f.seekp(100);
        f.put('\x5a');
    }
    rt = segvol_create();
    expect("changed file (sha256)", segvol_load(rt, changed.c_str(), nullptr), SEGVOL_ERR_ARTIFACTS, rt);
    fs::path missing = copy("missing");
    fs::remove(missing / "prompt_decoder.onnx");
    expect("missing graph", segvol_load(rt, missing.c_str(), nullptr), SEGVOL_ERR_ARTIFACTS, rt);
    fs::path broken = copy("broken");
    {
        std::ofstream f(broken / "manifest.json");
        f << "{\"format_version\": 1, \"graphs\": ";
    }
    expect("broken manifest", segvol_load(rt, broken.c_str(), nullptr), SEGVOL_ERR_ARTIFACTS, rt);
    // fp16 from artifacts exported without fp16 graphs: the graphs' variants removed from the manifest
    fs::path fp32_only = copy("fp32_only");
    {
        nlohmann::json m = nlohmann::json::parse(std::ifstream(fp32_only / "manifest.json"));
        for (auto& [name, graph] : m["graphs"].items()) graph.erase("variants");
        std::ofstream(fp32_only / "manifest.json") << m.dump(1);
    }
    segvol_load_options fp16;
    segvol_load_options_init(&fp16);
    fp16.precision = "fp16";
    expect("fp16 without fp16 graphs", segvol_load(rt, fp32_only.c_str(), &fp16), SEGVOL_ERR_INVALID_ARGUMENT, rt);
    expect("fp32 of the same artifacts", segvol_load(rt, fp32_only.c_str(), nullptr), SEGVOL_OK, rt);
    segvol_destroy(rt);
    fs::remove_all(tmp);
    if (failures) {
        std::fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    std::puts("capi: ok");
    return 0;
}
