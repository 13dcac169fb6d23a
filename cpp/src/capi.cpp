// The C ABI (include/segvol_rt/segvol_rt.h) over segvol::detail::Runtime: status codes,
// one-line messages per thread, a lock per handle, sizes of the caller's memory
// checked before it is read or written, no exception escapes.
#include <array>
#include <cstring>
#include <mutex>
#include <new>
#include <string>

#include "errors.hpp"
#include "pipeline.hpp"
#include "sizes.hpp"
#include "segvol_rt/segvol_rt.h"

// The handle's state, guarded by mu. Messages are not kept here: they are per thread
// (a string another thread could replace while this one reads it is what per-thread
// records rule out).
struct segvol_runtime {
    mutable std::mutex mu;
    std::unique_ptr<segvol::detail::Runtime> rt;
    std::string backend;
    std::string compiled;  // segvol_compiled_graphs of the loaded runtime
};

namespace {

// This thread's records: the last error, and its copy of a handle's backend description.
thread_local std::string t_error;
thread_local std::string t_backend;
thread_local std::string t_compiled;

segvol_status set_error(segvol_status code, const std::string& msg) {
    std::string line = msg;
    for (char& c : line)
        if (c == '\n' || c == '\r') c = ' ';
    t_error = std::move(line);
    return code;
}

// Run body under the handle's lock; its outcome becomes this thread's status and message.
template <typename F>
segvol_status guarded(const segvol_runtime* h, F body) {
    if (!h) return set_error(SEGVOL_ERR_INVALID_ARGUMENT, "the runtime handle is NULL");
    try {
        std::lock_guard<std::mutex> lock(h->mu);
        body();
        t_error.clear();
        return SEGVOL_OK;
    } catch (const segvol::detail::Error& e) {
        return set_error(e.code(), e.what());
    } catch (const std::bad_alloc&) {
        return set_error(SEGVOL_ERR_OUT_OF_MEMORY, "out of memory");
    } catch (const std::exception& e) {
        return set_error(SEGVOL_ERR_INTERNAL, std::string("internal error: ") + e.what());
    } catch (...) {
        return set_error(SEGVOL_ERR_INTERNAL, "internal error");
    }
}

size_t dtype_size(int32_t d) {
    switch (d) {
        case SEGVOL_DTYPE_UINT8:
        case SEGVOL_DTYPE_INT8: return 1;
        case SEGVOL_DTYPE_UINT16:
        case SEGVOL_DTYPE_INT16: return 2;
        case SEGVOL_DTYPE_UINT32:
        case SEGVOL_DTYPE_INT32:
        case SEGVOL_DTYPE_FLOAT32: return 4;
        case SEGVOL_DTYPE_INT64:
        case SEGVOL_DTYPE_FLOAT64: return 8;
    }
    return 0;
}

segvol::detail::DType dtype_of(int32_t d) {
    switch (d) {
        case SEGVOL_DTYPE_UINT8: return segvol::detail::DType::U8;
        case SEGVOL_DTYPE_INT8: return segvol::detail::DType::I8;
        case SEGVOL_DTYPE_UINT16: return segvol::detail::DType::U16;
        case SEGVOL_DTYPE_INT16: return segvol::detail::DType::I16;
        case SEGVOL_DTYPE_UINT32: return segvol::detail::DType::U32;
        case SEGVOL_DTYPE_INT32: return segvol::detail::DType::I32;
        case SEGVOL_DTYPE_INT64: return segvol::detail::DType::I64;
        case SEGVOL_DTYPE_FLOAT32: return segvol::detail::DType::F32;
        case SEGVOL_DTYPE_FLOAT64: return segvol::detail::DType::F64;
    }
    segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "dtype " + std::to_string((int)d) + " is not a segvol_dtype (uint8 ... float64)");
}

std::string str_or(const char* s, const char* dflt) { return s ? std::string(s) : std::string(dflt); }

}  // namespace

extern "C" {

const char* segvol_version(void) { return SEGVOL_RT_VERSION; }
uint32_t segvol_abi_version(void) { return SEGVOL_RT_ABI_VERSION; }

void segvol_load_options_init(segvol_load_options* o) {
    if (!o) return;
    std::memset(o, 0, sizeof *o);
    o->struct_size = sizeof *o;
    o->verify = 1;
    o->cache_bytes = 512ull << 20;
}

void segvol_target_init(segvol_target* t) {
    if (!t) return;
    std::memset(t, 0, sizeof *t);
    t->struct_size = sizeof *t;
    t->zoom_in = 1;
    t->window_prompts = SEGVOL_WINDOW_PROMPTS_OFFICIAL;
}

segvol_runtime* segvol_create(void) {
    segvol_runtime* h = new (std::nothrow) segvol_runtime();
    if (h) t_error.clear();
    else set_error(SEGVOL_ERR_OUT_OF_MEMORY, "out of memory");
    return h;
}

void segvol_destroy(segvol_runtime* rt) { delete rt; }

const char* segvol_last_error(void) { return t_error.c_str(); }

const char* segvol_backend(const segvol_runtime* rt) {
    if (!rt) return "";
    try {
        std::lock_guard<std::mutex> lock(rt->mu);
        t_backend = rt->backend;
    } catch (...) {  // out of memory (or a broken lock): no description rather than a stale one
        t_backend.clear();
    }
    return t_backend.c_str();
}

const char* segvol_compiled_graphs(const segvol_runtime* rt) {
    if (!rt) return "";
    try {
        std::lock_guard<std::mutex> lock(rt->mu);
        t_compiled = rt->compiled;
    } catch (...) {  // out of memory (or a broken lock): nothing rather than a stale list
        t_compiled.clear();
    }
    return t_compiled.c_str();
}

segvol_status segvol_load(segvol_runtime* h, const char* dir, const segvol_load_options* o) {
    return guarded(h, [&] {
        if (!dir) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "artifacts_dir is NULL");
        segvol::detail::LoadOptions lo;
        if (o) {
            if (o->struct_size < offsetof(segvol_load_options, cache_bytes) + sizeof(uint64_t))
                segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "options: struct_size is not set; call segvol_load_options_init first");
            lo.backend = str_or(o->backend, "auto");
            lo.device = str_or(o->device, "auto");
            lo.precision = str_or(o->precision, "fp32");
            lo.ort_library = str_or(o->ort_library, "");
            lo.threads = o->threads;
            lo.verify = o->verify != 0;
            lo.cache_bytes = o->cache_bytes;
            if (o->struct_size >= offsetof(segvol_load_options, openvino_library) + sizeof(const char*))
                lo.openvino_library = str_or(o->openvino_library, "");
            if (o->struct_size >= offsetof(segvol_load_options, reorient) + sizeof(const char*) && o->reorient)
                lo.reorient = std::string(o->reorient);
        }
        // built first, swapped in only once it works: a failed load keeps the working runtime
        auto fresh = std::make_unique<segvol::detail::Runtime>(dir, lo);
        std::string backend = fresh->describe(), compiled;
        for (const std::string& g : fresh->compiled_now()) compiled += (compiled.empty() ? "" : ",") + g;
        h->rt = std::move(fresh);
        h->backend = std::move(backend);
        h->compiled = std::move(compiled);
    });
}

segvol_status segvol_set_volume(segvol_runtime* h, const void* data, size_t data_size, int32_t dtype,
                                const int64_t dims[3], const double affine[16]) {
    return guarded(h, [&] {
        if (!h->rt) segvol::detail::fail(SEGVOL_ERR_NOT_LOADED, "no artifacts loaded: call segvol_load first");
        h->rt->release_volume();  // a failed set_volume leaves no volume, never the previous one
        if (!data) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "volume data is NULL");
        if (!dims) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "dims is NULL");
        segvol::detail::DType dt = dtype_of(dtype);
        std::array<segvol::detail::i64, 3> d{dims[0], dims[1], dims[2]};
        size_t bytes = segvol::detail::checked_voxels(d);  // refuses dims whose product overflows
        if (__builtin_mul_overflow(bytes, dtype_size(dtype), &bytes))
            segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "dims " + segvol::detail::dims_str(d) + ": the volume's size in bytes overflows");
        if (data_size < bytes)
            segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "volume data holds " + std::to_string(data_size) + " bytes; dims " +
                                                          segvol::detail::dims_str(d) + " of this dtype need " + std::to_string(bytes));
        h->rt->set_volume(data, dt, d, affine);
    });
}

segvol_status segvol_release_volume(segvol_runtime* h) {
    return guarded(h, [&] {
        if (h->rt) h->rt->release_volume();
    });
}

segvol_status segvol_segment(segvol_runtime* h, const segvol_target* targets, size_t n, uint8_t* const* masks,
                             float* const* probabilities, size_t capacity, int64_t dims[3], segvol_result_info* info) {
    return guarded(h, [&] {
        std::array<segvol::detail::i64, 3> d{0, 0, 0};
        if (h->rt && h->rt->has_volume()) d = h->rt->volume_dims();
        if (dims)
            for (int a = 0; a < 3; ++a) dims[a] = d[a];
        if (!h->rt) segvol::detail::fail(SEGVOL_ERR_NOT_LOADED, "no artifacts loaded: call segvol_load first");
        if (!h->rt->has_volume()) segvol::detail::fail(SEGVOL_ERR_NO_VOLUME, "no volume: call segvol_set_volume before segvol_segment");
        size_t voxels = segvol::detail::checked_voxels(d);
        if (n == 0) return;
        if (voxels > capacity)
            segvol::detail::fail(SEGVOL_ERR_BUFFER_TOO_SMALL, "the buffers hold " + std::to_string(capacity) + " voxels; the volume (dims " +
                                                          segvol::detail::dims_str(d) + ") has " + std::to_string(voxels) + "; nothing was written");
        if (!targets) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "targets is NULL");
        if (!masks) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "masks is NULL");
        std::vector<segvol::detail::Request> reqs(n);
        for (size_t t = 0; t < n; ++t) {
            const segvol_target& x = targets[t];
            std::string where = "targets[" + std::to_string(t) + "]: ";
            if (x.struct_size < offsetof(segvol_target, seed) + sizeof(uint64_t))
                segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "struct_size is not set; call segvol_target_init first");
            if (!masks[t]) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "mask buffer is NULL");
            if (x.n_points && !x.points) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "points is NULL but n_points > 0");
            if (x.n_points > (size_t)h->rt->max_points())  // refused before any point is read
                segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, where + std::to_string(x.n_points) + " points given; the artifacts take at most " +
                                                              std::to_string(h->rt->max_points()));
            if (x.points && !x.n_points) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "points: no point given (n_points = 0)");
            if (x.window_prompts != SEGVOL_WINDOW_PROMPTS_OFFICIAL && x.window_prompts != SEGVOL_WINDOW_PROMPTS_ALIGNED)
                segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "window_prompts must be OFFICIAL (0) or ALIGNED (1)");
            segvol::detail::Request& r = reqs[t];
            if (x.text) r.text = std::string(x.text);
            if (x.box) r.box = std::array<long long, 6>{x.box[0], x.box[1], x.box[2], x.box[3], x.box[4], x.box[5]};
            for (size_t i = 0; i < x.n_points; ++i)
                r.points.push_back({x.points[4 * i], x.points[4 * i + 1], x.points[4 * i + 2], x.points[4 * i + 3]});
            r.zoom_in = x.zoom_in != 0;
            r.aligned = x.window_prompts == SEGVOL_WINDOW_PROMPTS_ALIGNED;
            r.seed = x.seed;
            r.probabilities = probabilities && probabilities[t];
            // written once, straight into the caller's buffers (checked to hold `voxels` above),
            // at the end of segment, after every graph ran: a refused request writes nothing
            r.mask_out = masks[t];
            r.probabilities_out = r.probabilities ? probabilities[t] : nullptr;
        }
        std::vector<segvol::detail::Result> res = h->rt->segment(reqs);
        if (res.size() != n) segvol::detail::fail(SEGVOL_ERR_INTERNAL, "internal error: a result per target was not made");
        for (size_t t = 0; t < n; ++t) {
            if (info) {
                segvol_result_info& i = info[t];
                for (int k = 0; k < 6; ++k) i.roi[k] = res[t].roi ? res[t].roi->official[k] : -1;
                i.n_windows = res[t].n_windows;
                i.zoom_in_applied = res[t].zoom_in_applied;
                i.no_foreground = res[t].no_foreground;
            }
        }
    });
}

segvol_status segvol_windows_encoded(const segvol_runtime* h, uint64_t* count) {
    return guarded(h, [&] {
        if (!count) segvol::detail::fail(SEGVOL_ERR_INVALID_ARGUMENT, "count is NULL");
        *count = h->rt ? h->rt->windows_encoded() : 0;
    });
}

}  // extern "C"
