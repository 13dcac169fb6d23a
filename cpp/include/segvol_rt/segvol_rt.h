/* segvol-rt C ABI: SegVol zoom-out-zoom-in inference from C and any FFI.
 *
 * The library runs the whole pipeline natively (preprocessing, geometry,
 * zoom-out, ROI, sliding windows, blending, paste-back) on ONNX Runtime,
 * which it loads at run time; Python is not involved. Masks equal the Python
 * runtime's (segvol_rt.SegVolRuntime) bit for bit on the same artifacts.
 *
 * Coordinates and layout (the Python runtime's scan convention):
 *   - a volume is dims = (I, J, K) voxels stored with i fastest, then j, then
 *     k (NIfTI's on-disk order; nibabel's Fortran-ordered array), with a 4x4
 *     voxel-to-world affine, row-major;
 *   - prompts are scan voxel indices (i, j, k); a box is inclusive
 *     (i0, j0, k0, i1, j1, k1); a point is (i, j, k, label), label 1 positive,
 *     0 negative;
 *   - a mask is I*J*K uint8 (1 = target) in the volume's layout.
 *
 * Errors: every function returns a segvol_status; on failure
 * segvol_last_error(handle) gives one line saying what was wrong (for a NULL
 * handle, or before a handle exists, segvol_last_error(NULL) gives this
 * thread's last message). No C++ exception crosses this boundary.
 *
 * Thread safety: different handles may be used from different threads at
 * once. Calls on one handle are serialised by a lock inside the handle (a
 * second thread waits); the string from segvol_last_error(h) stays valid
 * until the next call on h. segvol_version() and segvol_abi_version() may be
 * called from any thread at any time. The pipeline's own CPU threads are a
 * process-wide setting: the threads option of the latest segvol_load.
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
#define SEGVOL_RT_VERSION_MINOR 1
#define SEGVOL_RT_VERSION_PATCH 0
#define SEGVOL_RT_VERSION "0.1.0"
#define SEGVOL_RT_ABI_VERSION 1

#if defined(__GNUC__)
#define SEGVOL_API __attribute__((visibility("default")))
#else
#define SEGVOL_API
#endif

typedef enum segvol_status {
    SEGVOL_OK = 0,
    SEGVOL_ERR_INVALID_ARGUMENT = 1, /* a NULL pointer, a bad dtype, dims, affine, prompt or option */
    SEGVOL_ERR_ARTIFACTS = 2,        /* missing, unreadable or changed artifacts (sha256 mismatch) */
    SEGVOL_ERR_BACKEND = 3,          /* ONNX Runtime could not be loaded or failed */
    SEGVOL_ERR_NO_VOLUME = 4,        /* segment before set_volume / after release_volume */
    SEGVOL_ERR_NOT_LOADED = 5,       /* set_volume or segment before a successful load */
    SEGVOL_ERR_SCAN = 6,             /* the scan cannot be normalised (constant, non-finite, no foreground) */
    SEGVOL_ERR_OUT_OF_MEMORY = 7,
    SEGVOL_ERR_INTERNAL = 8
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
    const char* backend;     /* "auto" or "onnxruntime" (default "auto" = onnxruntime) */
    const char* device;      /* "auto", "cpu" or "cuda" (default "auto": cpu unless the library has CUDA) */
    int32_t threads;         /* ONNX Runtime intra-op threads and pipeline threads; 0 = all cores */
    const char* precision;   /* "fp32" (default) or "fp16" (needs fp16 graphs in the manifest) */
    const char* ort_library; /* path of libonnxruntime.so.1.*; NULL: $SEGVOL_RT_ORT_LIBRARY, then the build's default */
    int32_t verify;          /* check every file's sha256 against the manifest (default 1) */
    uint64_t cache_bytes;    /* bound of the window-embedding cache (default 512 MiB) */
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

/* A new, empty handle (NULL only when out of memory). */
SEGVOL_API segvol_runtime* segvol_create(void);
/* Free the handle and everything it holds; NULL is ignored. */
SEGVOL_API void segvol_destroy(segvol_runtime* rt);
/* The last error of the handle (or of this thread for NULL); "" after success. */
SEGVOL_API const char* segvol_last_error(const segvol_runtime* rt);

/* Read the manifest, check the hashes, open the graphs. options may be NULL (defaults). */
SEGVOL_API segvol_status segvol_load(segvol_runtime* rt, const char* artifacts_dir, const segvol_load_options* options);
/* Description of the backend in use, e.g. "onnxruntime 1.32.0 (cpu, 2 threads, fp32)". */
SEGVOL_API const char* segvol_backend(const segvol_runtime* rt);

/* Preprocess a scan (see the layout above); dtype is a segvol_dtype value (an int32_t,
 * so that a wrong value is an error, not undefined behaviour); affine may be NULL (identity). */
SEGVOL_API segvol_status segvol_set_volume(segvol_runtime* rt, const void* data, int32_t dtype,
                                           const int64_t dims[3], const double affine[16]);
SEGVOL_API segvol_status segvol_release_volume(segvol_runtime* rt);

/* Segment n targets of the current volume, sharing the encodings. masks[t] receives
 * I*J*K bytes; probabilities may be NULL, or hold n pointers (each NULL or I*J*K
 * floats: the sigmoid in scan space, 0 outside the crop); info may be NULL or n entries. */
SEGVOL_API segvol_status segvol_segment(segvol_runtime* rt, const segvol_target* targets, size_t n,
                                        uint8_t* const* masks, float* const* probabilities,
                                        segvol_result_info* info);

/* Window encodings run so far on the current volume (cache statistics). */
SEGVOL_API segvol_status segvol_windows_encoded(const segvol_runtime* rt, uint64_t* count);

#ifdef __cplusplus
}
#endif
#endif /* SEGVOL_RT_H */
