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
// sidecar last. NIfTI through Debian's libniftiio (headers and writing; the
// voxels are read with zlib here, as libniftiio would zero NaNs and pad a
// truncated file with zeros, both silently). Errors: one line on stderr (the
// CLI's wording), exit status 2; nothing is left half-written; an --out that
// exists and is not a regular file is refused, never replaced.
#include <nifti/nifti1_io.h>
#include <openssl/evp.h>
#include <zlib.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <climits>
#include <limits>
#include <map>
#include <memory>

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
    std::string scan, artifacts, out, window_prompts = "official", ort_library, openvino_library, device = "auto", backend = "auto", precision = "fp32";
    std::vector<std::string> texts, points;
    std::string box;
    std::optional<std::string> reorient;  // none: the model's declared voxel orientation
    bool zoom_in = true, quiet = false, timing = false;
    int threads = 0, repeat = 0;
    uint64_t seed = 0;
};

[[noreturn]] void die(const std::string& msg) {
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::exit(2);
}

// The whole of `text` as an integer in [lo, hi], or nullopt (no sign games, no
// trailing characters, no wrap-around).
template <typename T>
std::optional<T> integer(const std::string& text, T lo, T hi) {
    T v{};
    const char* end = text.data() + text.size();
    auto r = std::from_chars(text.data(), end, v, 10);
    if (text.empty() || r.ec != std::errc() || r.ptr != end || v < lo || v > hi) return std::nullopt;
    return v;
}

template <typename T>
T option_int(const std::string& option, const std::string& text, T lo, T hi) {
    std::optional<T> v = integer<T>(text, lo, hi);
    if (!v) die(option + " '" + text + "': expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi));
    return *v;
}

std::vector<int64_t> ints(const std::string& text, const std::string& what) {
    std::vector<int64_t> out;
    std::string cur;
    auto flush = [&] {
        if (cur.empty()) return;
        std::optional<int64_t> v = integer<int64_t>(cur, INT64_MIN, INT64_MAX);
        if (!v) die(what + " '" + text + "': expected integers separated by commas");
        out.push_back(*v);
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
        else if (s == "--seed") a.seed = option_int<uint64_t>(s, value(i), 0, UINT64_MAX);
        else if (s == "--threads") a.threads = option_int<int>(s, value(i), 1, INT32_MAX);
        else if (s == "--ort-library") a.ort_library = value(i);
        else if (s == "--openvino-library") a.openvino_library = value(i);
        else if (s == "--device") a.device = value(i);
        else if (s == "--backend") a.backend = value(i);
        else if (s == "--precision") a.precision = value(i);
        else if (s == "--reorient") a.reorient = value(i);
        else if (s == "--quiet" || s == "-q") a.quiet = true;
        else if (s == "--timing") a.timing = true;
        else if (s == "--repeat") a.repeat = option_int<int>(s, value(i), 0, 1000000);
        else if (s == "--version") {
            std::printf("segvol-rt-infer %s (ABI %u)\n", segvol_version(), segvol_abi_version());
            std::exit(0);
        } else if (s == "--help" || s == "-h") {
            std::printf("usage: segvol-rt-infer SCAN.nii.gz --artifacts DIR --text NAME [--box i0,j0,k0,i1,j1,k1] "
                        "[--point i,j,k[,label]] [--no-zoom-in] [--window-prompts official|aligned] [--seed N] "
                        "[--threads N] [--device auto|cpu|cuda] [--backend auto|onnxruntime|openvino] [--precision fp32|fp16|bf16] [--reorient CODES|stored] [--ort-library PATH] [--openvino-library PATH] [--out MASK.nii.gz]\n");
            std::exit(0);
        } else if (!s.empty() && s[0] == '-') die("unknown option " + s);
        else if (a.scan.empty()) a.scan = s;
        else die("unexpected argument " + s);
    }
    if (a.scan.empty()) die("give the scan: segvol-rt-infer SCAN.nii.gz --artifacts DIR --text NAME --out MASK.nii.gz");
    if (a.artifacts.empty()) die("--artifacts DIR is required");
    if (a.out.empty()) a.out = strip_nifti(a.scan) + "_segvol.nii.gz";  // as segvol-rt infer
    if (a.texts.empty() && a.box.empty() && a.points.empty()) die("give at least one prompt: --text, --box or --point");
    if (a.texts.size() > 255) die(std::to_string(a.texts.size()) + " --text targets: a uint8 label file holds at most 255");
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

// Runs f with fd 2 sent to a temporary file and returns what was written there:
// libniftiio prints its own "** ERROR" lines, which must not reach the user beside
// our one line. f must not report anything of ours.
template <typename F>
std::string quiet_stderr(F f) {
    std::fflush(stderr);
    FILE* tmp = std::tmpfile();
    int saved = tmp ? dup(2) : -1;
    if (saved < 0 || dup2(fileno(tmp), 2) < 0) die(std::string("cannot create a temporary file: ") + std::strerror(errno));
    f();
    std::fflush(stderr);
    dup2(saved, 2);
    close(saved);
    std::string text;
    std::rewind(tmp);
    char buf[4096];
    for (size_t k; (k = std::fread(buf, 1, sizeof buf, tmp)) > 0;) text.append(buf, k);
    std::fclose(tmp);
    return text;
}

// The first line libniftiio printed, without its "** " marker.
std::string first_line(const std::string& text) {
    size_t b = text.find_first_not_of("* \t\r\n");
    if (b == std::string::npos) return "";
    size_t e = text.find_first_of("\r\n", b);
    return text.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

std::string shape_str(const nifti_image* nim) {
    std::string s = "(";
    for (int d = 1; d <= nim->dim[0] && d <= 7; ++d) s += (d > 1 ? ", " : "") + std::to_string(nim->dim[d]);
    return s + ")";
}

// The header of the scan (no voxels), or one line and exit 2.
nifti_image* read_header(const std::string& path) {
    nifti_image* nim = nullptr;
    std::string said = quiet_stderr([&] { nim = nifti_image_read(path.c_str(), 0); });
    if (!nim) die("cannot read scan " + path + ": " + (said.empty() ? std::string("not a NIfTI file") : first_line(said)));
    return nim;
}

// I*J*K of a 3D scan's header, checked (the axes beyond 3 must be 1).
size_t scan_voxels(const nifti_image* nim, const std::string& path, std::array<int64_t, 3>* dims) {
    bool three_d = nim->dim[0] >= 3 && nim->dim[0] <= 7;
    for (int d = 4; three_d && d <= nim->dim[0]; ++d) three_d = nim->dim[d] == 1;
    if (!three_d) die("scan " + path + " has shape " + shape_str(nim) + "; a 3D volume is needed");
    *dims = {nim->dim[1], nim->dim[2], nim->dim[3]};
    size_t n = 1;
    for (int64_t v : *dims) {
        if (v < 1) die("scan " + path + ": the header declares an empty extent " + shape_str(nim) + "; there are no voxels to read");
        if (__builtin_mul_overflow(n, (size_t)v, &n)) die("scan " + path + ": the voxel count of " + shape_str(nim) + " overflows");
    }
    return n;
}

// The stored voxels (nbyper bytes each from iname_offset), in this CPU's byte order.
// zlib reads .nii and .nii.gz alike; a gzip stream is read to its end, where its
// length and CRC are checked (a stream cut anywhere, even in its trailer, is refused).
std::vector<unsigned char> read_voxels(const nifti_image* nim, const std::string& path, size_t voxels) {
    size_t bytes = 0;
    if (nim->nbyper < 1 || __builtin_mul_overflow(voxels, (size_t)nim->nbyper, &bytes))
        die("scan " + path + ": the size of " + shape_str(nim) + " voxels overflows");
    std::vector<unsigned char> raw;
    try {
        raw.resize(bytes + 1);  // one byte more: zlib checks a stream's end only when asked past the data
    } catch (const std::exception&) {
        die("scan " + path + ": the header declares " + shape_str(nim) + " voxels (" + std::to_string(bytes) +
            " bytes), more than this process can allocate");
    }
    gzFile fp = gzopen(nim->iname, "rb");
    if (!fp) die("cannot read scan " + path + ": " + std::strerror(errno));
    size_t got = 0;
    if (gzseek(fp, nim->iname_offset, SEEK_SET) == nim->iname_offset)
        while (got < raw.size()) {
            int k = gzread(fp, raw.data() + got, (unsigned)std::min<size_t>(raw.size() - got, 1u << 30));
            if (k <= 0) break;
            got += (size_t)k;
        }
    int err = Z_OK;
    gzerror(fp, &err);
    if (err == Z_OK && got > bytes && !gzdirect(fp))  // data after the voxels: read on to the stream's end
        for (char sink[1 << 16]; gzread(fp, sink, sizeof sink) > 0;) {
        }
    std::string why = gzerror(fp, &err);
    std::string named = std::string(nim->iname) + ": ";
    if (why.compare(0, named.size(), named) == 0) why.erase(0, named.size());  // zlib repeats the path
    bool compressed = !gzdirect(fp);
    gzclose(fp);
    if (err != Z_OK && compressed) die("cannot read scan " + path + ": corrupt or truncated gzip data (" + why + ")");
    if (err != Z_OK) die("cannot read scan " + path + ": " + why);
    if (got < bytes)
        die("cannot read scan " + path + ": the file is shorter than its header says (truncated: " + std::to_string(voxels) +
            " voxels of " + std::to_string(nim->nbyper) + " bytes from byte " + std::to_string(nim->iname_offset) + ")");
    raw.resize(bytes);
    if (nim->swapsize > 1 && nim->byteorder != nifti_short_order()) nifti_swap_Nbytes(voxels, nim->swapsize, raw.data());
    return raw;
}

// The scan's voxels (I, J, K), i fastest, as segvol_set_volume takes them.
struct Voxels {
    std::vector<unsigned char> bytes;
    segvol_dtype dtype;
};

// The file's voxels as they are where NIfTI's read scaling leaves them unchanged and the file
// holds integers or float32: the SDK converts them to float32 as nibabel's scaling would, so
// the app keeps no float32 copy of its own (512x512x200 int16: 200 MB less at the peak). Else
// float32 with the read scaling applied (as nibabel). NaN or infinite values are refused as
// segvol-rt infer does.
Voxels read_scan(nifti_image* nim, const std::string& path, std::array<int64_t, 3>* dims, std::array<double, 16>* affine) {
    size_t n = scan_voxels(nim, path, dims);
    static const std::map<int, segvol_dtype> native = {
        {DT_UINT8, SEGVOL_DTYPE_UINT8}, {DT_INT8, SEGVOL_DTYPE_INT8}, {DT_INT16, SEGVOL_DTYPE_INT16},
        {DT_UINT16, SEGVOL_DTYPE_UINT16}, {DT_INT32, SEGVOL_DTYPE_INT32}, {DT_UINT32, SEGVOL_DTYPE_UINT32},
        {DT_INT64, SEGVOL_DTYPE_INT64}, {DT_FLOAT32, SEGVOL_DTYPE_FLOAT32}};
    if (!native.count(nim->datatype) && nim->datatype != DT_FLOAT64)
        die("scan " + path + " has NIfTI datatype " + std::to_string(nim->datatype) + ", expected integers or floats");
    Voxels v{read_voxels(nim, path, n), SEGVOL_DTYPE_FLOAT32};
    double slope = nim->scl_slope, inter = nim->scl_inter;
    bool scale = slope != 0 && std::isfinite(slope) && !(slope == 1 && inter == 0);
    if (!scale && native.count(nim->datatype)) {
        v.dtype = native.at(nim->datatype);
    } else {
        std::vector<unsigned char> out;
        size_t bytes = 0;
        if (__builtin_mul_overflow(n, sizeof(float), &bytes)) die("scan " + path + ": the size of its float32 voxels overflows");
        try {
            out.resize(bytes);
        } catch (const std::exception&) {
            die("scan " + path + ": " + std::to_string(n) + " float32 voxels are more than this process can allocate");
        }
        float* f = reinterpret_cast<float*>(out.data());
        auto conv = [&](auto* p) {
            for (size_t i = 0; i < n; ++i) f[i] = scale ? (float)((double)p[i] * slope + inter) : (float)p[i];
        };
        void* data = v.bytes.data();
        switch (nim->datatype) {
            case DT_UINT8: conv((uint8_t*)data); break;
            case DT_INT8: conv((int8_t*)data); break;
            case DT_INT16: conv((int16_t*)data); break;
            case DT_UINT16: conv((uint16_t*)data); break;
            case DT_INT32: conv((int32_t*)data); break;
            case DT_UINT32: conv((uint32_t*)data); break;
            case DT_INT64: conv((int64_t*)data); break;
            case DT_FLOAT32: conv((float*)data); break;
            case DT_FLOAT64: conv((double*)data); break;
        }
        v.bytes.swap(out);
    }
    if (v.dtype == SEGVOL_DTYPE_FLOAT32) {
        const float* f = reinterpret_cast<const float*>(v.bytes.data());
        size_t bad = 0;
        for (size_t i = 0; i < n; ++i) bad += !std::isfinite(f[i]);
        if (bad) die("scan " + path + " has " + std::to_string(bad) + " NaN or infinite voxels");
    }
    // nibabel's affine: sform if set, else qform, else pixdim scaling
    mat44 m = nim->sform_code > 0 ? nim->sto_xyz : nim->qto_xyz;
    for (int r = 0; r < 4; ++r)
        for (int c = 0; c < 4; ++c) (*affine)[(size_t)(r * 4 + c)] = m.m[r][c];
    return v;
}

size_t count_nonzero(const uint8_t* mask, size_t n) {
    return (size_t)std::count_if(mask, mask + n, [](uint8_t m) { return m != 0; });
}

bool same_file(const std::string& a, const std::string& b) {
    struct stat x, y;
    return stat(a.c_str(), &x) == 0 && stat(b.c_str(), &y) == 0 && x.st_dev == y.st_dev && x.st_ino == y.st_ino;
}

// An output may replace a regular file (or be new); never a directory, device, FIFO or
// socket (rename(2) would replace /dev/null itself), never the input scan. The CLI's words.
void check_output(const std::string& out, const std::string& scan) {
    if (same_file(scan, out)) die("refusing to overwrite the input scan " + scan + " (output " + out + "); choose another --out");
    struct stat st;
    if (stat(out.c_str(), &st) != 0) return;  // absent, or a dangling link (replaced like any link)
    if (S_ISDIR(st.st_mode)) die("output " + out + " is a directory; choose another --out");
    if (!S_ISREG(st.st_mode)) die("output " + out + " exists and is not a regular file (a FIFO, socket or device); choose another --out");
}

// Stage the mask with the input's header (datatype uint8, no scaling) in a temporary
// file beside the output; returns its path (renamed into place by the caller).
std::string stage_mask(nifti_image* like, const uint8_t* mask, size_t voxels, const std::string& out) {
    nifti_image* o = nifti_copy_nim_info(like);
    if (!o) die("cannot copy the NIfTI header");
    o->datatype = DT_UINT8;
    o->nbyper = 1;
    o->scl_slope = 0;
    o->scl_inter = 0;
    o->cal_min = 0;
    o->cal_max = 0;
    o->data = const_cast<uint8_t*>(mask);
    bool gz = out.size() > 3 && out.compare(out.size() - 3, 3, ".gz") == 0;
    std::string tmp = out + ".tmp-" + std::to_string(getpid()) + (gz ? ".nii.gz" : ".nii");
    if (o->nvox != voxels) die("internal error: the mask does not have the scan's voxel count");
    int named = 0;
    std::string said = quiet_stderr([&] {
        named = nifti_set_filenames(o, tmp.c_str(), 0, 1);
        if (named == 0) nifti_image_write(o);
    });
    o->data = nullptr;
    nifti_image_free(o);
    struct stat st;
    if (named != 0 || stat(tmp.c_str(), &st) != 0 || said.find("ERROR") != std::string::npos) {
        std::remove(tmp.c_str());
        die("cannot write " + out + (said.empty() ? std::string() : ": " + first_line(said)));
    }
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
// always describes a complete set); on a failure remove what was staged. The
// outputs' kinds are checked again first: one may have appeared since the start.
void commit(const std::vector<std::pair<std::string, std::string>>& staged, const std::string& scan) {
    for (const auto& [tmp, target] : staged) {
        struct stat st;
        bool bad = same_file(scan, target) || (stat(target.c_str(), &st) == 0 && !S_ISREG(st.st_mode));
        if (bad) {
            for (const auto& f : staged) std::remove(f.first.c_str());
            check_output(target, scan);  // says why and exits
        }
    }
    for (size_t i = 0; i < staged.size(); ++i)
        if (std::rename(staged[i].first.c_str(), staged[i].second.c_str()) != 0) {
            std::string why = std::strerror(errno);
            for (size_t j = i; j < staged.size(); ++j) std::remove(staged[j].first.c_str());
            die("cannot write " + staged[i].second + ": " + why);
        }
}

// `s` as one word of a POSIX shell, as Python's shlex.quote: unchanged when it holds only
// [A-Za-z0-9@%+=:,./_-], else in single quotes (a quote inside as '"'"').
std::string shell_quote(const std::string& s) {
    auto safe = [](unsigned char c) { return std::isalnum(c) || std::strchr("@%+=:,./_-", c); };
    if (!s.empty() && std::all_of(s.begin(), s.end(), safe)) return s;
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\"'\"'") : std::string(1, c);
    return out + "'";
}

// What OpenVINO compiled while loading (a first run on this machine), in segvol-rt infer's words
// (segvol_rt.app.console._note_load): "" when nothing was compiled.
std::string compiled_note(const segvol::Runtime& rt, const Args& a) {
    std::string graphs = rt.compiled_graphs();
    if (graphs.empty()) return "";
    for (size_t at; (at = graphs.find(',')) != std::string::npos;) graphs.replace(at, 1, " and ");
    return "OpenVINO compiled " + graphs + " for this machine (a first run; later runs load them from the model cache): "
           "`segvol-rt build --artifacts " + shell_quote(a.artifacts) + " --backend openvino --precision " + a.precision +
           "` compiles every graph ahead of time";
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
    auto t0 = std::chrono::steady_clock::now();
    Args a = parse(argc, argv);
    check_output(a.out, a.scan);
    if (a.texts.size() > 1) check_output(strip_nifti(a.out) + ".json", a.scan);
    struct stat st;
    if (stat(a.scan.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) die(a.scan + ": no such file");
    nifti_set_debug_level(0);
    Nifti scan;
    scan.nim = read_header(a.scan);
    std::array<int64_t, 3> dims;
    std::array<double, 16> affine;
    Voxels voxels = read_scan(scan.nim, a.scan, &dims, &affine);
    try {
        segvol::LoadOptions lo;
        lo.threads = a.threads;
        lo.ort_library = a.ort_library;
        lo.openvino_library = a.openvino_library;
        lo.device = a.device;
        lo.backend = a.backend;
        lo.precision = a.precision;
        lo.reorient = a.reorient;
        segvol::Runtime rt(a.artifacts, lo);
        if (std::string note = compiled_note(rt, a); !a.quiet && !note.empty()) std::printf("%s\n", note.c_str());
        rt.set_volume(voxels.bytes.data(), voxels.bytes.size(), voxels.dtype, dims, &affine);
        std::vector<unsigned char>().swap(voxels.bytes);  // the runtime holds its own float32 copy
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
        // one mask per target in memory the runtime writes as each target finishes: allocated
        // without initialising, so none is resident through the encoder runs (zero-filled
        // vectors were: 52 MB per target of a 512x512x200 scan)
        size_t voxels = (size_t)(dims[0] * dims[1] * dims[2]);  // scan_voxels checked the product
        std::vector<std::unique_ptr<uint8_t[]>> masks;
        std::vector<uint8_t*> mask_ptrs;
        try {
            for (size_t t = 0; t < targets.size(); ++t) {
                masks.emplace_back(new uint8_t[voxels]);
                mask_ptrs.push_back(masks.back().get());
            }
        } catch (const std::bad_alloc&) {
            die("not enough memory for " + std::to_string(targets.size()) + " masks of " + std::to_string(voxels) + " voxels");
        }
        std::vector<segvol_result_info> infos;
        auto t1 = std::chrono::steady_clock::now();
        std::array<int64_t, 3> segmented = rt.segment_into(targets, mask_ptrs.data(), nullptr, voxels, &infos);
        double seg_s = seconds_since(t1);
        double first_mask = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        std::vector<double> followups;
        for (int r = 0; r < a.repeat; ++r) {
            auto t2 = std::chrono::steady_clock::now();
            rt.segment_into(targets, mask_ptrs.data(), nullptr, voxels);
            followups.push_back(seconds_since(t2));
        }
        if (segmented != dims) die("internal error: the mask's dims are not the scan's");
        rt.release_volume();  // its crop, window embeddings and caches are not needed to write
        std::vector<size_t> voxel_counts;
        for (const auto& m : masks) voxel_counts.push_back(count_nonzero(m.get(), voxels));
        // target 1's mask (0/1) becomes the label map: the later target's label wins
        uint8_t* out = masks[0].get();
        for (size_t t = 1; t < masks.size(); ++t) {
            const uint8_t* m = masks[t].get();
            for (size_t i = 0; i < voxels; ++i)
                if (m[i]) out[i] = (uint8_t)(t + 1);
            masks[t].reset();
        }
        std::vector<std::pair<std::string, std::string>> staged{{stage_mask(scan.nim, out, voxels, a.out), a.out}};
        if (targets.size() > 1) {  // the sidecar of a multi-label file (segvol-rt infer's fields that apply)
            nlohmann::json doc;
            doc["scan"] = a.scan;
            doc["backend"] = rt.backend();
            doc["overlaps"] = "where targets overlap, the later target's label wins";
            nlohmann::json targets_doc = nlohmann::json::array();
            for (size_t t = 0; t < targets.size(); ++t) {
                std::string name = targets[t].text ? *targets[t].text : "box+points";
                doc["labels"][std::to_string(t + 1)] = name;
                size_t vox = voxel_counts[t];
                const segvol_result_info& inf = infos[t];
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
        commit(staged, a.scan);
        if (!a.quiet)
            for (size_t t = 0; t < targets.size(); ++t) {
                std::printf("target %zu: %zu voxels, %d zoom-in windows%s\n", t + 1, voxel_counts[t], infos[t].n_windows,
                            infos[t].no_foreground ? " (no foreground)" : "");
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
