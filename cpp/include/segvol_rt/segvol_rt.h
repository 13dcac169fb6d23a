/* segvol-rt C ABI: SegVol zoom-out-zoom-in inference from C and any FFI.
 *
 * The library runs the whole pipeline natively (preprocessing, reorientation,
 * geometry, zoom-out, ROI, sliding windows, blending, paste-back) on ONNX Runtime
 * or OpenVINO, which it loads at run time; Python is not involved. Masks equal the Python
 * runtime's (segvol_rt.SegVolRuntime) bit for bit on the same artifacts.
 *
 * Coordinates and layout (the Python runtime's scan convention):
 *   - a volume is dims = (I, J, K) voxels stored with i fastest, then j, then
 *     k (NIfTI's on-disk order; nibabel's Fortran-ordered array), with a 4x4
 *     voxel-to-world affine, row-major;
 *   - prompts are scan voxel indices (i, j, k); a box is inclusive
 *     (i0, j0, k0, i1, j1, k1); a point is (i, j, k, label), label 1 positive,
 *     0 negative;
 *   - a mask is I*J*K uint8 in the volume's layout, every voxel 0 or 1 (1 = target).
 *
 * Memory: every function that writes into the caller's memory is told that
 * memory's size and refuses (SEGVOL_ERR_BUFFER_TOO_SMALL, nothing written)
 * what does not fit; segvol_segment also gives back the dims of the volume
 * it segmented. segvol_set_volume is told the size of the data it reads.
 * Sizes computed from dims are checked: a product that overflows, or a volume
 * the library cannot address, is refused (SEGVOL_ERR_INVALID_ARGUMENT).
 *
 * Errors: every function that returns a segvol_status records this thread's
 * last error: segvol_last_error() gives the one line of the latest such call
 * made by the calling thread ("" after a success). No C++ exception crosses
 * this boundary.
 *
 * Threads (what a caller may do from which thread):
 *   - Every function may be called from any thread.
 *   - Different handles are independent: use them from different threads at
 *     once.
 *   - One handle may be shared by several threads: its calls are serialised
 *     by a lock inside the handle (a second thread waits), each seeing the
 *     handle as the previous call left it. So another thread's
 *     segvol_set_volume between your segvol_set_volume and segvol_segment
 *     changes the volume you segment: segvol_segment refuses buffers too
 *     small for that volume and reports its dims. To pin a volume, give each
 *     thread its own handle (or hold your own lock around the pair).
 *   - segvol_destroy(h) is the one call the lock cannot protect: call it
 *     once, when no other thread is in, or will enter, a call on h.
 *   - segvol_last_error() reads only the calling thread's own record: no
 *     other thread's call changes or frees it. The string stays valid until
 *     the calling thread's next call that returns a segvol_status (or its
 *     next segvol_create); copy it to keep it longer.
 *   - segvol_backend(h) copies the description under h's lock into storage
 *     of the calling thread: valid until that thread's next segvol_backend
 *     call, whatever other threads do with h; segvol_compiled_graphs(h) alike.
 *   - segvol_version(), segvol_abi_version() and the *_init functions (they
 *     touch only the caller's struct) may be called at any time.
 *   - Each handle has its own pool of pipeline CPU threads (the threads option
 *     of its segvol_load): handles do not change each other's thread count.
 *
 * Versioning and soname policy: SEGVOL_RT_ABI_VERSION is the ABI's major
 * version and the shared library's soname is libsegvol_rt.so.<ABI_VERSION>.
 * Within one ABI version functions and enum values are only added, never
 * changed or removed, and option structs only grow at their end (callers set
 * struct_size through the *_init functions, so an older caller's smaller
 * struct stays valid). Anything else bumps the ABI version and the soname.
 * segvol_abi_version() returns the ABI version the library was built with:
 * compare it with SEGVOL_RT_ABI_VERSION at start-up.
 */
#ifndef SEGVOL_RT_H
#define SEGVOL_RT_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SEGVOL_RT_VERSION_MAJOR 0
#define SEGVOL_RT_VERSION_MINOR 2
/* 0.2.1 adds segvol_compiled_graphs (within ABI 2: find_package(segvol_rt 0.2) still finds it) */
#define SEGVOL_RT_VERSION_PATCH 1
#define SEGVOL_RT_VERSION "0.2.1"
/* 2: segvol_set_volume takes the data's size, segvol_segment the buffers' size and gives the
 * dims back, segvol_last_error() is per thread and takes no handle. */
#define SEGVOL_RT_ABI_VERSION 2

/* The exported symbols. Windows (MSVC, MinGW): the library is built with SEGVOL_RT_BUILDING
 * (dllexport), a consumer imports (dllimport) unless it links a static build and defines
 * SEGVOL_RT_STATIC. GCC/Clang elsewhere: the library is built with -fvisibility=hidden and
 * only these symbols are visible. (The Windows branch is not built or tested by this
 * project's CI: it runs on Linux only.) */
#if defined(_WIN32) || defined(__CYGWIN__)
#if defined(SEGVOL_RT_STATIC)
#define SEGVOL_API
#elif defined(SEGVOL_RT_BUILDING)
#define SEGVOL_API __declspec(dllexport)
#else
#define SEGVOL_API __declspec(dllimport)
#endif
#elif defined(__GNUC__) || defined(__clang__)
#define SEGVOL_API __attribute__((visibility("default")))
#else
#define SEGVOL_API
#endif

typedef enum segvol_status {
    SEGVOL_OK = 0,
    SEGVOL_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad dtype, dims, affine, prompt or option */
    SEGVOL_ERR_ARTIFACTS = 2,        /* missing, unreadable or changed artifacts (sha256 mismatch) */
    SEGVOL_ERR_BACKEND = 3,          /* ONNX Runtime or OpenVINO could not be loaded or failed */
    SEGVOL_ERR_NO_VOLUME = 4,        /* segment before set_volume / after release_volume */
    SEGVOL_ERR_NOT_LOADED = 5,       /* set_volume or segment before a successful load */
    SEGVOL_ERR_SCAN = 6,             /* the scan cannot be normalised (constant, non-finite, no foreground) */
    SEGVOL_ERR_OUT_OF_MEMORY = 7,
    SEGVOL_ERR_INTERNAL = 8,
    SEGVOL_ERR_BUFFER_TOO_SMALL = 9  /* a caller's buffer cannot hold the result: nothing was written */
} segvol_status;

typedef enum segvol_dtype {
    SEGVOL_DTYPE_UINT8 = 1,
    SEGVOL_DTYPE_INT8 = 2,
    SEGVOL_DTYPE_UINT16 = 3,
    SEGVOL_DTYPE_INT16 = 4,
    SEGVOL_DTYPE_UINT32 = 5,
    SEGVOL_DTYPE_INT32 = 6,
    SEGVOL_DTYPE_INT64 = 7,
    SEGVOL_DTYPE_FLOAT32 = 8,
    SEGVOL_DTYPE_FLOAT64 = 9
} segvol_dtype;

typedef enum segvol_window_prompts {
    SEGVOL_WINDOW_PROMPTS_OFFICIAL = 0, /* as official SegVol (misplaced on scans smaller than a window) */
    SEGVOL_WINDOW_PROMPTS_ALIGNED = 1   /* window boxes/points on the padded window (not official) */
} segvol_window_prompts;

typedef struct segvol_runtime segvol_runtime;

typedef struct segvol_load_options {
    uint32_t struct_size;    /* sizeof(segvol_load_options), set by segvol_load_options_init */
    const char* backend;     /* "auto", "onnxruntime" or "openvino" (default "auto" = onnxruntime) */
    const char* device;      /* "auto", "cpu" or "cuda" (default "auto": cpu unless the library has CUDA) */
    int32_t threads;         /* ONNX Runtime intra-op threads and pipeline threads; 0 = all cores */
    const char* precision;   /* "fp32" (default); "fp16" (onnxruntime: needs fp16 graphs in the manifest);
                              * "bf16" (openvino: where the CPU offers BF16) */
    const char* ort_library; /* path of libonnxruntime.so.1.*; NULL: $SEGVOL_RT_ORT_LIBRARY, then the build's default */
    int32_t verify;          /* check the sha256 of the files it reads against the manifest (default 1) */
    uint64_t cache_bytes;    /* bound of the window-embedding cache (default 512 MiB) */
    /* added after ABI 2's first release (read only when struct_size covers it): path of
     * libopenvino_c.so.*; NULL: $SEGVOL_RT_OPENVINO_LIBRARY, then the build's default */
    const char* openvino_library;
    /* added after ABI 2's first release (read only when struct_size covers it): the voxel
     * order each scan is put in before the model, as the Python runtime's set_volume(reorient=):
     * NULL (default) the model's declared voxel_orientation (the manifest's; none: the stored
     * order, as SegVol's weights), axis codes such as "RAS" (from the volume's affine), or
     * "stored" (the stored order whatever the model declares). Prompts and masks stay in the
     * volume's voxel grid either way. */
    const char* reorient;
} segvol_load_options;

typedef struct segvol_target {
    uint32_t struct_size;  /* sizeof(segvol_target), set by segvol_target_init */
    const char* text;      /* UTF-8 target name or free phrase; NULL: none */
    const int64_t* box;    /* 6 values i0,j0,k0,i1,j1,k1 (inclusive); NULL: none */
    const int64_t* points; /* n_points x 4 values i,j,k,label; NULL: none */
    size_t n_points;
    int32_t zoom_in;        /* run the zoom-in after the coarse pass (default 1) */
    int32_t window_prompts; /* segvol_window_prompts (default OFFICIAL) */
    uint64_t seed;          /* seed of the zoom-in window point sampling (default 0) */
} segvol_target;

typedef struct segvol_result_info {
    int64_t roi[6];          /* zoom-in ROI in crop space (min d,h,w, max d,h,w as official), -1 without */
    int32_t n_windows;       /* zoom-in windows run */
    int32_t zoom_in_applied; /* the zoom-in ran and was pasted */
    int32_t no_foreground;   /* the coarse pass found no voxel: the (empty) coarse result stands */
} segvol_result_info;

SEGVOL_API const char* segvol_version(void);
SEGVOL_API uint32_t segvol_abi_version(void);

SEGVOL_API void segvol_load_options_init(segvol_load_options* options);
SEGVOL_API void segvol_target_init(segvol_target* target);

/* A new, empty handle (NULL only when out of memory; segvol_last_error() says so). */
SEGVOL_API segvol_runtime* segvol_create(void);
/* Free the handle and everything it holds; NULL is ignored. No other thread may be
 * in a call on rt, or enter one later. */
SEGVOL_API void segvol_destroy(segvol_runtime* rt);
/* The calling thread's last error: one line from its latest call that returned a
 * segvol_status, "" if that call succeeded. Never NULL; valid until the thread's next
 * such call. */
SEGVOL_API const char* segvol_last_error(void);

/* Read the manifest, check the hashes, open the graphs. options may be NULL (defaults).
 * The new runtime is built first: on failure the handle keeps what it had (a loaded
 * runtime and its volume stay usable); on success the previous volume is dropped. */
SEGVOL_API segvol_status segvol_load(segvol_runtime* rt, const char* artifacts_dir, const segvol_load_options* options);
/* Description of the backend in use, e.g. "onnxruntime 1.32.0 (cpu, 2 threads, fp32)", or
 * "" before a load: a copy owned by the calling thread, valid until its next segvol_backend. */
SEGVOL_API const char* segvol_backend(const segvol_runtime* rt);
/* The graphs the openvino backend compiled for this machine while loading, none of them
 * found in its model cache (a first run: later loads read them from the cache), comma-
 * separated in load order, e.g. "image_encoder,prompt_decoder"; "" when all came from the
 * cache, for onnxruntime, and before a load. A copy owned by the calling thread, valid
 * until its next segvol_compiled_graphs. */
SEGVOL_API const char* segvol_compiled_graphs(const segvol_runtime* rt);

/* Preprocess a scan (see the layout above). data holds data_size bytes, at least
 * I*J*K times the dtype's size (else SEGVOL_ERR_INVALID_ARGUMENT, nothing read);
 * dtype is a segvol_dtype value (an int32_t, so that a wrong value is an error, not
 * undefined behaviour); affine may be NULL (identity). The previous volume is released
 * first: after a failure the handle has none (segment says SEGVOL_ERR_NO_VOLUME). */
SEGVOL_API segvol_status segvol_set_volume(segvol_runtime* rt, const void* data, size_t data_size, int32_t dtype,
                                           const int64_t dims[3], const double affine[16]);
SEGVOL_API segvol_status segvol_release_volume(segvol_runtime* rt);

/* Segment n targets of the current volume, sharing the encodings.
 *   masks: n pointers, each to `capacity` bytes (uint8: the mask, I*J*K used);
 *   probabilities: NULL, or n pointers, each NULL or to `capacity` floats (the sigmoid
 *     in scan space, 0 outside the crop; I*J*K used);
 *   capacity: voxels every buffer above holds;
 *   dims: NULL, or receives the dims (I, J, K) of the volume segmented, whatever the
 *     status ({0, 0, 0} without a volume); when I*J*K > capacity the call returns
 *     SEGVOL_ERR_BUFFER_TOO_SMALL and writes no buffer;
 *   info: NULL or n entries. */
SEGVOL_API segvol_status segvol_segment(segvol_runtime* rt, const segvol_target* targets, size_t n,
                                        uint8_t* const* masks, float* const* probabilities, size_t capacity,
                                        int64_t dims[3], segvol_result_info* info);

/* Window encodings run so far on the current volume (cache statistics). */
SEGVOL_API segvol_status segvol_windows_encoded(const segvol_runtime* rt, uint64_t* count);

#ifdef __cplusplus
}
#endif
#endif /* SEGVOL_RT_H */
