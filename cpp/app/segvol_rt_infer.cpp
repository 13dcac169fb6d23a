// segvol-rt-infer: the sample app of the C++ SDK.
//
//   segvol-rt-infer SCAN.nii[.gz] --artifacts DIR --text liver [--text ...]
//                   [--box i0,j0,k0,i1,j1,k1] [--point i,j,k[,label] ...] [--no-zoom-in]
//                   [--window-prompts official|aligned] [--seed N] [--threads N] [--device auto|cpu|cuda]
//                   [--ort-library PATH] [--timing [--repeat N]] --out MASK.nii.gz
//
// --timing prints one JSON line (benchmarks/cpp_vs_python.py reads it): the
// wall-clock time (Unix seconds) the first mask was ready, the first segment
// call's seconds and, with --repeat N, N follow-up calls of the same targets
// on the loaded volume (encodings cached).
//
// Prompts as `segvol-rt infer`: scan voxel indices (IJK), an inclusive box,
// points with label 1 (default) or 0; box and points apply to every --text.
// Writes a uint8 NIfTI with the input's header (several targets: label i =
// i-th target, later targets win where they overlap) and, as segvol-rt infer,
// a JSON sidecar <stem>.json naming the labels with per-target statistics and
// the mask's sha256; the files are staged and renamed into place mask first,
// sidecar last. NIfTI through Debian's libniftiio. Errors: one line on
// stderr, exit status 2; nothing is left half-written.
#include <nifti/nifti1_io.h>
#include <openssl/evp.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "segvol_rt/segvol_rt.hpp"

namespace {

struct Args {
    std::string scan, artifacts, out, window_prompts = "official", ort_library, device = "auto", backend = "auto";
    std::vector<std::string> texts, points;
    std::string box;
    bool zoom_in = true, quiet = false, timing = false;
    int threads = 0, repeat = 0;
    uint64_t seed = 0;
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::exit(2);
}

std::vector<int64_t> ints(const std::string& text, const std::string& what) {
    std::vector<int64_t> out;
    std::string cur;
    auto flush = [&] {
        if (cur.empty()) return;
        char* end = nullptr;
        long long v = std::strtoll(cur.c_str(), &end, 10);
        if (*end) die(what + " '" + text + "': expected integers separated by commas");
        out.push_back(v);
        cur.clear();
    };
    for (char c : text) {
        if (c == ',' || std::isspace((unsigned char)c)) flush();
        else cur += c;
    }
    flush();
    return out;
}

std::string strip_nifti(const std::string& p);

Args parse(int argc, char** argv) {
    Args a;
    auto value = [&](int& i) -> std::string {
        if (i + 1 >= argc) die(std::string(argv[i]) + " needs a value");
        return argv[++i];
    };
    for (int i = 1; i < argc; ++i) {
        std::string s = argv[i];
        if (s == "--artifacts") a.artifacts = value(i);
        else if (s == "--text") a.texts.push_back(value(i));
        else if (s == "--box") a.box = value(i);
        else if (s == "--point") a.points.push_back(value(i));
        else if (s == "--out") a.out = value(i);
        else if (s == "--no-zoom-in") a.zoom_in = false;
        else if (s == "--window-prompts") a.window_prompts = value(i);
        else if (s == "--seed") a.seed = std::strtoull(value(i).c_str(), nullptr, 10);
        else if (s == "--threads") a.threads = std::atoi(value(i).c_str());
        else if (s == "--ort-library") a.ort_library = value(i);
        else if (s == "--device") a.device = value(i);
        else if (s == "--backend") a.backend = value(i);
        else if (s == "--quiet" || s == "-q") a.quiet = true;
        else if (s == "--timing") a.timing = true;
        else if (s == "--repeat") a.repeat = std::atoi(value(i).c_str());
        else if (s == "--version") {
            std::printf("segvol-rt-infer %s (ABI %u)\n", segvol_version(), segvol_abi_version());
            std::exit(0);
        } else if (s == "--help" || s == "-h") {
            std::printf("usage: segvol-rt-infer SCAN.nii.gz --artifacts DIR --text NAME [--box i0,j0,k0,i1,j1,k1] "
                        "[--point i,j,k[,label]] [--no-zoom-in] [--window-prompts official|aligned] [--seed N] "
                        "[--threads N] [--device auto|cpu|cuda] [--backend auto|onnxruntime] [--ort-library PATH] [--out MASK.nii.gz]\n");
            std::exit(0);
        } else if (!s.empty() && s[0] == '-') die("unknown option " + s);
        else if (a.scan.empty()) a.scan = s;
        else die("unexpected argument " + s);
    }
    if (a.scan.empty()) die("give the scan: segvol-rt-infer SCAN.nii.gz --artifacts DIR --text NAME --out MASK.nii.gz");
    if (a.artifacts.empty()) die("--artifacts DIR is required");
    if (a.out.empty()) a.out = strip_nifti(a.scan) + "_segvol.nii.gz";  // as segvol-rt infer
    if (a.texts.empty() && a.box.empty() && a.points.empty()) die("give at least one prompt: --text, --box or --point");
    if (a.window_prompts != "official" && a.window_prompts != "aligned")
        die("--window-prompts '" + a.window_prompts + "': choose official or aligned");
    return a;
}

struct Nifti {
    nifti_image* nim = nullptr;
    ~Nifti() {
        if (nim) nifti_image_free(nim);
    }
};

// The scan as float32 (I, J, K), i fastest, with NIfTI's read scaling.
std::vector<float> read_scan(nifti_image* nim, std::array<int64_t, 3>* dims, std::array<double, 16>* affine) {
    if (nim->ndim < 3 || (nim->ndim > 3 && nim->nt * nim->nu * nim->nv * nim->nw > 1))
        die(std::string(nim->fname) + ": expected a 3D volume, got " + std::to_string(nim->ndim) + " dimensions");
    *dims = {nim->nx, nim->ny, nim->nz};
    size_t n = (size_t)nim->nx * nim->ny * nim->nz;
    std::vector<float> out(n);
    double slope = nim->scl_slope, inter = nim->scl_inter;
    bool scale = slope != 0 && std::isfinite(slope) && !(slope == 1 && inter == 0);
    auto conv = [&](auto* p) {
        for (size_t i = 0; i < n; ++i) out[i] = scale ? (float)((double)p[i] * slope + inter) : (float)p[i];
    };
    switch (nim->datatype) {
        case DT_UINT8: conv((uint8_t*)nim->data); break;
        case DT_INT8: conv((int8_t*)nim->data); break;
        case DT_INT16: conv((int16_t*)nim->data); break;
        case DT_UINT16: conv((uint16_t*)nim->data); break;
        case DT_INT32: conv((int32_t*)nim->data); break;
        case DT_UINT32: conv((uint32_t*)nim->data); break;
        case DT_INT64: conv((int64_t*)nim->data); break;
        case DT_FLOAT32: conv((float*)nim->data); break;
        case DT_FLOAT64: conv((double*)nim->data); break;
        default: die(std::string(nim->fname) + ": unsupported NIfTI datatype " + std::to_string(nim->datatype));
    }
    // nibabel's affine: sform if set, else qform, else pixdim scaling
    mat44 m = nim->sform_code > 0 ? nim->sto_xyz : nim->qto_xyz;
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) (*affine)[(size_t)(r * 4 + c)] = m.m[r][c];
    return out;
}

bool same_file(const std::string& a, const std::string& b) {
    struct stat x, y;
    return stat(a.c_str(), &x) == 0 && stat(b.c_str(), &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

// Stage the mask with the input's header (datatype uint8, no scaling) in a temporary
// file beside the output; returns its path (renamed into place by the caller).
std::string stage_mask(nifti_image* like, const std::vector<uint8_t>& mask, const std::string& out) {
    nifti_image* o = nifti_copy_nim_info(like);
    if (!o) die("cannot copy the NIfTI header");
    o->datatype = DT_UINT8;
    o->nbyper = 1;
    o->scl_slope = 0;
    o->scl_inter = 0;
    o->cal_min = 0;
    o->cal_max = 0;
    o->data = const_cast<uint8_t*>(mask.data());
    bool gz = out.size() > 3 && out.compare(out.size() - 3, 3, ".gz") == 0;
    std::string tmp = out + ".tmp-" + std::to_string(getpid()) + (gz ? ".nii.gz" : ".nii");
    if (nifti_set_filenames(o, tmp.c_str(), 0, 1) != 0) die("cannot name the output " + out);
    nifti_image_write(o);
    o->data = nullptr;
    nifti_image_free(o);
    struct stat st;
    if (stat(tmp.c_str(), &st) != 0) die("cannot write " + out);
    return tmp;
}

std::string sha256_of(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
    std::vector<char> buf(1 << 20);
    while (in) {
        in.read(buf.data(), (std::streamsize)buf.size());
        EVP_DigestUpdate(ctx, buf.data(), (size_t)in.gcount());
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    EVP_MD_CTX_free(ctx);
    static const char* hex = "0123456789abcdef";
    std::string s;
    for (unsigned i = 0; i < len; ++i) s += {hex[md[i] >> 4], hex[md[i] & 15]};
    return s;
}

std::string base_name(const std::string& p) {
    size_t slash = p.find_last_of('/');
    return slash == std::string::npos ? p : p.substr(slash + 1);
}

std::string strip_nifti(const std::string& p) {
    for (const char* ext : {".nii.gz", ".nii"})
        if (p.size() > std::strlen(ext) && p.compare(p.size() - std::strlen(ext), std::strlen(ext), ext) == 0)
            return p.substr(0, p.size() - std::strlen(ext));
    return p;
}

// Rename the staged files into place in order (the sidecar last, so a sidecar
// always describes a complete set); on a failure remove what was staged.
void commit(const std::vector<std::pair<std::string, std::string>>& staged) {
    for (size_t i = 0; i < staged.size(); ++i)
        if (std::rename(staged[i].first.c_str(), staged[i].second.c_str()) != 0) {
            std::string why = std::strerror(errno);
            for (size_t j = i; j < staged.size(); ++j) std::remove(staged[j].first.c_str());
            die("cannot write " + staged[i].second + ": " + why);
        }
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    auto t0 = std::chrono::steady_clock::now();
    Args a = parse(argc, argv);
    if (same_file(a.scan, a.out)) die("--out " + a.out + " is the input scan; refusing to overwrite it");
    struct stat st;
    if (stat(a.scan.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) die(a.scan + ": no such file");
    nifti_set_debug_level(0);
    Nifti scan;
    scan.nim = nifti_image_read(a.scan.c_str(), 1);
    if (!scan.nim || !scan.nim->data) die(a.scan + " is not a readable NIfTI file");
    std::array<int64_t, 3> dims;
    std::array<double, 16> affine;
    std::vector<float> data = read_scan(scan.nim, &dims, &affine);
    try {
        segvol::LoadOptions lo;
        lo.threads = a.threads;
        lo.ort_library = a.ort_library;
        lo.device = a.device;
        lo.backend = a.backend;
        segvol::Runtime rt(a.artifacts, lo);
        rt.set_volume(data.data(), SEGVOL_DTYPE_FLOAT32, dims, &affine);
        segvol::Target base;
        if (!a.box.empty()) {
            std::vector<int64_t> b = ints(a.box, "box");
            if (b.size() != 6) die("box needs 6 integers i0,j0,k0,i1,j1,k1; got " + std::to_string(b.size()));
            base.box = std::array<int64_t, 6>{b[0], b[1], b[2], b[3], b[4], b[5]};
        }
        for (const std::string& p : a.points) {
            std::vector<int64_t> v = ints(p, "point");
            if (v.size() != 3 && v.size() != 4) die("point '" + p + "': expected i,j,k or i,j,k,label");
            base.points.push_back({v[0], v[1], v[2], v.size() == 4 ? v[3] : 1});
        }
        base.zoom_in = a.zoom_in;
        base.seed = a.seed;
        base.window_prompts = a.window_prompts == "aligned" ? SEGVOL_WINDOW_PROMPTS_ALIGNED : SEGVOL_WINDOW_PROMPTS_OFFICIAL;
        std::vector<segvol::Target> targets;
        if (a.texts.empty()) targets.push_back(base);
        for (const std::string& t : a.texts) {
            segvol::Target x = base;
            x.text = t;
            targets.push_back(x);
        }
        auto t1 = std::chrono::steady_clock::now();
        std::vector<segvol::Segmentation> segs = rt.segment_many(targets);
        double seg_s = seconds_since(t1);
        double first_mask = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        std::vector<double> followups;
        for (int r = 0; r < a.repeat; ++r) {
            auto t2 = std::chrono::steady_clock::now();
            rt.segment_many(targets);
            followups.push_back(seconds_since(t2));
        }
        std::vector<uint8_t> out(segs[0].mask.size(), 0);
        for (size_t t = 0; t < segs.size(); ++t)
            for (size_t i = 0; i < out.size(); ++i)
                if (segs[t].mask[i]) out[i] = (uint8_t)(segs.size() == 1 ? 1 : t + 1);
        std::vector<std::pair<std::string, std::string>> staged{{stage_mask(scan.nim, out, a.out), a.out}};
        if (segs.size() > 1) {  // the sidecar of a multi-label file (segvol-rt infer's fields that apply)
            nlohmann::json doc;
            doc["scan"] = a.scan;
            doc["backend"] = rt.backend();
            doc["overlaps"] = "where targets overlap, the later target's label wins";
            nlohmann::json targets_doc = nlohmann::json::array();
            for (size_t t = 0; t < segs.size(); ++t) {
                std::string name = targets[t].text ? *targets[t].text : "box+points";
                doc["labels"][std::to_string(t + 1)] = name;
                size_t vox = 0;
                for (uint8_t m : segs[t].mask) vox += m;
                const segvol_result_info& inf = segs[t].info;
                nlohmann::json roi = nullptr;
                if (inf.zoom_in_applied) roi = std::vector<int64_t>(inf.roi, inf.roi + 6);
                targets_doc.push_back({{"name", name}, {"label", t + 1}, {"file", base_name(a.out)}, {"voxels", vox},
                                       {"roi_crop", roi}, {"windows", inf.n_windows},
                                       {"zoom_in_applied", (bool)inf.zoom_in_applied}, {"no_foreground", (bool)inf.no_foreground}});
            }
            doc["targets"] = targets_doc;
            doc["files"][base_name(a.out)] = {{"sha256", sha256_of(staged[0].first)}};
            std::string side = strip_nifti(a.out) + ".json";
            std::string tmp = side + ".tmp-" + std::to_string(getpid());
            std::ofstream f(tmp);
            f << doc.dump(2) << "\n";
            f.close();
            if (!f) {
                std::remove(staged[0].first.c_str());
                die("cannot write " + side);
            }
            staged.push_back({tmp, side});
        }
        commit(staged);
        if (!a.quiet)
            for (size_t t = 0; t < segs.size(); ++t) {
                size_t vox = 0;
                for (uint8_t m : segs[t].mask) vox += m;
                std::printf("target %zu: %zu voxels, %d zoom-in windows%s\n", t + 1, vox, segs[t].info.n_windows,
                            segs[t].info.no_foreground ? " (no foreground)" : "");
            }
        if (a.timing) {
            std::printf("{\"first_mask_epoch\": %.6f, \"segment_s\": %.6f, \"followup_s\": [", first_mask, seg_s);
            for (size_t r = 0; r < followups.size(); ++r) std::printf("%s%.6f", r ? ", " : "", followups[r]);
            std::printf("], \"total_s\": %.6f}\n", seconds_since(t0));
        }
        if (!a.quiet) std::printf("wrote %s (%s)\n", a.out.c_str(), rt.backend().c_str());
    } catch (const segvol::Error& e) {
        die(e.what());
    }
    return 0;
}
