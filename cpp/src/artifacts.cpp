#include "artifacts.hpp"
#include "orientation.hpp"

#include <openssl/evp.h>
#include <zip.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <sys/stat.h>
#include <thread>
#include <time.h>
#include <unistd.h>

#include "errors.hpp"
#include "generated/shared_constants.hpp"
#include "system.hpp"

namespace segvol::detail {

using json = nlohmann::json;
static const char* MANIFEST = "manifest.json";
static const char* GRAPHS[] = {"image_encoder", "text_encoder", "prompt_decoder"};

using DigestCtx = std::unique_ptr<EVP_MD_CTX, void (*)(EVP_MD_CTX*)>;

static DigestCtx sha256_start() {
    DigestCtx ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
    return ctx;
}

static std::string sha256_hex(EVP_MD_CTX* ctx) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    EVP_DigestFinal_ex(ctx, md, &len);
    static const char* hex = "0123456789abcdef";
    std::string out;
    for (unsigned i = 0; i < len; ++i) {
        out += hex[md[i] >> 4];
        out += hex[md[i] & 15];
    }
    return out;
}

std::string sha256_file(const std::string& path) {
    std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
    if (!f) fail(SEGVOL_ERR_ARTIFACTS, path + " cannot be read");
    DigestCtx ctx = sha256_start();
    std::vector<unsigned char> buf(1 << 20);
    size_t n;
    while ((n = std::fread(buf.data(), 1, buf.size(), f.get())) > 0) EVP_DigestUpdate(ctx.get(), buf.data(), n);
    return sha256_hex(ctx.get());
}

// -- the records of checked files (segvol_rt.io.digests) ----------------------------
// An empty file in <user cache>/verified/ named by the sha256 of a file's identity (device,
// inode, size, modification and status-change times in ns) and its digest: that version of
// the file hashed to that digest before, so a load need not hash it again. Any write to a
// file sets its status-change time, which no program sets back, so a changed file matches no
// old record. Python and C++ name a record alike and read each other's.

static long long nanoseconds(const struct timespec& t) { return (long long)t.tv_sec * 1000000000LL + t.tv_nsec; }

static std::string record_name(const struct stat& st, const std::string& digest) {
    std::string text = std::string(shared::DIGEST_RECORD_FORMAT) + " " + std::to_string((unsigned long long)st.st_dev) +
                       " " + std::to_string((unsigned long long)st.st_ino) + " " + std::to_string((long long)st.st_size) +
                       " " + std::to_string(nanoseconds(st.st_mtim)) + " " + std::to_string(nanoseconds(st.st_ctim)) +
                       " " + digest;
    DigestCtx ctx = sha256_start();
    EVP_DigestUpdate(ctx.get(), text.data(), text.size());
    return sha256_hex(ctx.get());
}

static std::string records_dir() {
    std::string root = user_cache_root();
    return root.empty() ? root : root + "/" + shared::DIGEST_RECORDS_DIR;
}

static bool same_identity(const struct stat& a, const struct stat& b) {
    return a.st_dev == b.st_dev && a.st_ino == b.st_ino && a.st_size == b.st_size &&
           nanoseconds(a.st_mtim) == nanoseconds(b.st_mtim) && nanoseconds(a.st_ctim) == nanoseconds(b.st_ctim);
}

// Whether the file at `path`, as it is now, hashed to `digest` before.
static bool is_recorded(const std::string& path, const std::string& digest, const std::string& folder) {
    struct stat st, rec;
    if (folder.empty() || stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
    std::string record = folder + "/" + record_name(st, digest);
    return lstat(record.c_str(), &rec) == 0 && S_ISREG(rec.st_mode);
}

// Creates the empty record (never through a link); a cache that cannot be written is passed over.
static void write_record(const std::string& folder, const std::string& name) {
    if (make_dirs(folder) != 0) return;
    int fd = open((folder + "/" + name).c_str(), O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) close(fd);
}

// sha256 of the file at `path`, recorded when its identity held still while it was hashed and
// its times are at least DIGEST_RACY_SECONDS old.
static std::string hash_and_record(const std::string& path, const std::string& folder) {
    struct stat before, after;
    bool stable = stat(path.c_str(), &before) == 0;
    std::string digest = sha256_file(path);
    stable = stable && stat(path.c_str(), &after) == 0 && same_identity(before, after);
    if (stable && !folder.empty()) {
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        long long newest = std::max(nanoseconds(after.st_mtim), nanoseconds(after.st_ctim));
        if (nanoseconds(now) - newest >= shared::DIGEST_RACY_SECONDS * 1000000000LL) write_record(folder, record_name(after, digest));
    }
    return digest;
}

static std::array<int, 3> range_of(const json& spec, const char* axis, const std::string& where) {
    const json& r = spec.at("ranges").at(axis);
    if (!r.is_array() || r.size() != 3) fail(SEGVOL_ERR_ARTIFACTS, where + ": /ranges/" + axis + " is not [min, opt, max]");
    std::array<int, 3> out{r[0].get<int>(), r[1].get<int>(), r[2].get<int>()};
    if (out[0] < 1 || out[0] > out[1] || out[1] > out[2])
        fail(SEGVOL_ERR_ARTIFACTS, where + ": /ranges/" + axis + " is not an increasing positive range");
    return out;
}

Artifacts Artifacts::load(const std::string& root, const std::string& precision) {
    Artifacts a;
    a.root = root;
    std::vector<std::pair<std::string, std::string>> digests;  // every (file, sha256) beside a.files
    std::string mpath = root + "/" + MANIFEST;
    if (!is_file(mpath)) fail(SEGVOL_ERR_ARTIFACTS, root + " has no " + MANIFEST + "; is it an artifacts directory from `segvol-rt export`?");
    json m;
    try {
        std::ifstream in(mpath);
        m = json::parse(in);
    } catch (const json::exception& e) {
        fail(SEGVOL_ERR_ARTIFACTS, mpath + " is not valid JSON (" + std::string(e.what()).substr(0, 160) + "); export the artifacts again");
    }
    try {
        if (m.value("format_version", 0) != 1)
            fail(SEGVOL_ERR_ARTIFACTS, mpath + ": unsupported format_version; export the artifacts again");
        const json& cfg = m.at("config");
        for (int k = 0; k < 3; ++k) a.spatial_size[k] = cfg.at("spatial_size").at(k).get<long long>();
        a.embed_dim = cfg.at("embed_dim").get<int>();
        a.prompt_template = m.value("prompt_template", cfg.value("prompt_template", std::string("{}")));
        if (m.contains("voxel_orientation") && !m["voxel_orientation"].is_null()) {
            std::string codes = m["voxel_orientation"].get<std::string>();
            if (std::string problem = orientation_codes_problem(codes); !problem.empty())
                fail(SEGVOL_ERR_ARTIFACTS, mpath + ": voxel_orientation: " + problem + "; export the artifacts again");
            a.voxel_orientation = codes;
        }
        const json& graphs = m.at("graphs");
        if (precision != "fp32" && precision != "fp16")
            fail(SEGVOL_ERR_INVALID_ARGUMENT, "precision must be one of fp32, fp16, not '" + precision + "'");
        for (const char* name : GRAPHS) {
            if (!graphs.contains(name)) fail(SEGVOL_ERR_ARTIFACTS, mpath + " lists no graph '" + name + "'; export the artifacts again");
            const json& entry = graphs[name];
            // fp32 is each graph's own file; fp16 its variants/fp16 entry (export --precision fp16), same IO spec
            const bool variant = precision != "fp32";
            if (variant && !(entry.contains("variants") && entry["variants"].is_object() && entry["variants"].contains(precision)))
                fail(SEGVOL_ERR_INVALID_ARGUMENT, root + " has no " + precision + " graphs (exported at fp32); export them: "
                     "segvol-rt export --precision " + precision + " --out DIR (and --checkpoint CKPT)");
            const json& g = variant ? entry["variants"][precision] : entry;
            GraphEntry e;
            e.file = g.at("file").get<std::string>();
            e.sha256 = g.at("sha256").get<std::string>();
            const json& spec = entry.at("spec");
            std::string where = mpath + " /graphs/" + name + "/spec";
            e.batch = range_of(spec, "B", where);
            if (std::string(name) == "prompt_decoder") e.tokens = range_of(spec, "N", where);
            for (const json& t : spec.at("inputs")) e.inputs.push_back(t.at("name").get<std::string>());
            for (const json& t : spec.at("outputs")) e.outputs.push_back(t.at("name").get<std::string>());
            a.files.emplace_back(e.file, e.sha256);
            a.graphs[name] = e;
        }
        if (m.contains("tokenizer")) {
            const json& t = m["tokenizer"];
            a.tokenizer_dir = t.value("dir", std::string("tokenizer"));
            for (auto it = t.at("files").begin(); it != t.at("files").end(); ++it)
                a.files.emplace_back(a.tokenizer_dir + "/" + it.key(), it.value().get<std::string>());
        } else {
            a.tokenizer_dir = "tokenizer";
        }
        if (m.contains("text_table") && !m["text_table"].is_null()) {
            const json& t = m["text_table"];
            a.text_table_file = t.at("file").get<std::string>();
            a.text_table_count = t.value("count", -1LL);
            a.files.emplace_back(a.text_table_file, t.at("sha256").get<std::string>());
        }
        // TensorRT engines: never read here (nor verified), but their digests are the schema's
        if (m.contains("engines") && m["engines"].is_object())
            for (auto& [k, v] : m["engines"].items())
                if (v.is_object() && v.contains("file") && v.contains("sha256"))
                    digests.emplace_back(v["file"].get<std::string>(), v["sha256"].get<std::string>());
    } catch (const json::exception& e) {
        fail(SEGVOL_ERR_ARTIFACTS, mpath + " is incomplete (" + std::string(e.what()).substr(0, 160) + "); export the artifacts again");
    }
    // as the manifest schema's sha256 (Python refuses the manifest at load): a graph's digest also
    // names its folder of the OpenVINO model cache, so it must never hold a path
    digests.insert(digests.begin(), a.files.begin(), a.files.end());
    for (const auto& [file, digest] : digests)
        if (digest.size() != 64 || digest.find_first_not_of("0123456789abcdef") != std::string::npos)
            fail(SEGVOL_ERR_ARTIFACTS, mpath + ": the sha256 of " + file.substr(0, 200) +
                                           " is not 64 lowercase hex digits; export the artifacts again");
    for (int k = 0; k < 3; ++k)
        if (a.spatial_size[k] < 1) fail(SEGVOL_ERR_ARTIFACTS, mpath + ": spatial_size must be positive");
    if (a.embed_dim < 1) fail(SEGVOL_ERR_ARTIFACTS, mpath + ": embed_dim must be positive");
    return a;
}

// A file with a record of its digest is not read (the records above); the others are hashed on
// one thread per core, the largest first (the full-size fp32 graphs, 609 MB, take about 0.28 s
// on 2 cores); a missing or changed file is reported in the list's order.
void Artifacts::verify() const {
    for (const auto& [rel, digest] : files)
        if (!is_file(path(rel))) fail(SEGVOL_ERR_ARTIFACTS, path(rel) + " is listed in manifest.json but missing; export the artifacts again");
    const std::string folder = records_dir();
    std::vector<std::string> actual(files.size());
    std::vector<std::pair<long long, size_t>> order;  // (size, index) of the unrecorded files, largest first
    for (size_t i = 0; i < files.size(); ++i) {
        if (is_recorded(path(files[i].first), files[i].second, folder)) actual[i] = files[i].second;
        else order.emplace_back(file_size(path(files[i].first)), i);
    }
    std::sort(order.rbegin(), order.rend());
    std::vector<std::exception_ptr> errors(files.size());
    std::atomic<size_t> next{0};
    auto work = [&] {
        for (size_t k; (k = next++) < order.size();) {
            size_t i = order[k].second;
            try {
                actual[i] = hash_and_record(path(files[i].first), folder);
            } catch (...) {
                errors[i] = std::current_exception();
            }
        }
    };
    std::vector<std::thread> workers;
    for (size_t t = 1; t < std::min(order.size(), (size_t)cpu_cores()); ++t) workers.emplace_back(work);
    work();
    for (std::thread& t : workers) t.join();
    for (size_t i = 0; i < files.size(); ++i) {
        if (errors[i]) std::rethrow_exception(errors[i]);
        const std::string& p = path(files[i].first);
        const std::string& digest = files[i].second;
        if (actual[i] != digest)
            fail(SEGVOL_ERR_ARTIFACTS, p + " does not match manifest.json (sha256 " + actual[i].substr(0, 12) + "..., expected " +
                                           digest.substr(0, 12) + "...); the file was changed or damaged - export the artifacts again");
    }
}

// -- .npy inside the .npz ----------------------------------------------------------

struct Npy {
    std::string descr;
    std::vector<long long> shape;
    std::string data;
};

static std::string read_entry(zip_t* z, const char* name, const std::string& where) {
    zip_stat_t st;
    if (zip_stat(z, name, 0, &st) != 0) fail(SEGVOL_ERR_ARTIFACTS, where + " lacks the array '" + std::string(name) + "'; it is not a text table - export again");
    std::unique_ptr<zip_file_t, int (*)(zip_file_t*)> f(zip_fopen(z, name, 0), &zip_fclose);
    if (!f) fail(SEGVOL_ERR_ARTIFACTS, where + ": cannot open " + name);
    std::string buf((size_t)st.size, '\0');
    if (zip_fread(f.get(), buf.data(), st.size) != (zip_int64_t)st.size) fail(SEGVOL_ERR_ARTIFACTS, where + ": cannot read " + name);
    return buf;
}

// The .npy header is a Python dict literal; its three keys are read by hand (a
// dict literal is not JSON), and anything unexpected is an error.
static Npy parse_npy(const std::string& raw, const std::string& where) {
    if (raw.size() < 10 || raw.compare(0, 6, "\x93NUMPY") != 0) fail(SEGVOL_ERR_ARTIFACTS, where + " is not a .npy array");
    int major = (unsigned char)raw[6];
    size_t hlen, off;
    if (major == 1) {
        hlen = (unsigned char)raw[8] | ((size_t)(unsigned char)raw[9] << 8);
        off = 10;
    } else {
        hlen = (unsigned char)raw[8] | ((size_t)(unsigned char)raw[9] << 8) | ((size_t)(unsigned char)raw[10] << 16) |
               ((size_t)(unsigned char)raw[11] << 24);
        off = 12;
    }
    if (off + hlen > raw.size()) fail(SEGVOL_ERR_ARTIFACTS, where + ": truncated .npy header");
    std::string h = raw.substr(off, hlen);
    Npy out;
    auto value = [&](const std::string& key) {
        size_t p = h.find("'" + key + "'");
        if (p == std::string::npos) fail(SEGVOL_ERR_ARTIFACTS, where + ": .npy header without " + key);
        p = h.find(':', p) + 1;
        while (p < h.size() && h[p] == ' ') ++p;
        return p;
    };
    size_t p = value("descr");
    size_t q = h.find('\'', p + 1);
    out.descr = h.substr(p + 1, q - p - 1);
    p = value("fortran_order");
    if (h.compare(p, 5, "False") != 0) fail(SEGVOL_ERR_ARTIFACTS, where + ": Fortran-ordered array not expected");
    p = value("shape");
    q = h.find(')', p);
    std::string dims = h.substr(p + 1, q - p - 1);
    size_t s = 0;
    while (s < dims.size()) {
        size_t e = dims.find(',', s);
        std::string d = dims.substr(s, e == std::string::npos ? std::string::npos : e - s);
        if (d.find_first_not_of(' ') != std::string::npos) out.shape.push_back(std::stoll(d));
        if (e == std::string::npos) break;
        s = e + 1;
    }
    out.data = raw.substr(off + hlen);
    return out;
}

void Artifacts::text_table(std::vector<std::string>* names, std::vector<float>* rows) const {
    names->clear();
    rows->clear();
    if (text_table_file.empty()) return;
    std::string p = path(text_table_file);
    int err = 0;
    std::unique_ptr<zip_t, void (*)(zip_t*)> z(zip_open(p.c_str(), ZIP_RDONLY, &err), [](zip_t* x) { zip_discard(x); });
    if (!z) fail(SEGVOL_ERR_ARTIFACTS, p + " is not a readable text table (not a zip archive); export again");
    Npy n = parse_npy(read_entry(z.get(), "names.npy", p), p + " names");
    Npy e = parse_npy(read_entry(z.get(), "embeddings.npy", p), p + " embeddings");
    if (n.shape.size() != 1 || n.descr.size() < 3 || n.descr.compare(0, 2, "<U") != 0)
        fail(SEGVOL_ERR_ARTIFACTS, p + ": 'names' is not 1D strings; export again");
    size_t width = std::stoul(n.descr.substr(2));
    long long count = n.shape[0];
    if (n.data.size() < (size_t)count * width * 4) fail(SEGVOL_ERR_ARTIFACTS, p + ": 'names' is truncated");
    for (long long i = 0; i < count; ++i) {
        std::string s;
        for (size_t k = 0; k < width; ++k) {
            char32_t c;
            std::memcpy(&c, n.data.data() + ((size_t)i * width + k) * 4, 4);
            if (c == 0) break;
            s += encode_utf8((int32_t)c);
        }
        names->push_back(s);
    }
    if (e.shape.size() != 2 || e.shape[0] != count || e.shape[1] != embed_dim || (text_table_count >= 0 && text_table_count != count))
        fail(SEGVOL_ERR_ARTIFACTS, p + ": table shape does not fit embed_dim " + std::to_string(embed_dim) + " / its names; export again");
    size_t total = (size_t)(count * embed_dim);
    rows->resize(total);
    if (e.descr == "<f4" && e.data.size() >= total * 4) {
        std::memcpy(rows->data(), e.data.data(), total * 4);
    } else if (e.descr == "<f8" && e.data.size() >= total * 8) {
        for (size_t i = 0; i < total; ++i) {
            double d;
            std::memcpy(&d, e.data.data() + i * 8, 8);
            (*rows)[i] = (float)d;
        }
    } else {
        fail(SEGVOL_ERR_ARTIFACTS, p + ": 'embeddings' is " + e.descr + ", expected float32/float64; export again");
    }
    for (float v : *rows)
        if (!(v == v) || v - v != 0.0f) fail(SEGVOL_ERR_ARTIFACTS, p + ": 'embeddings' holds non-finite values; export again");
}

}  // namespace segvol::detail
