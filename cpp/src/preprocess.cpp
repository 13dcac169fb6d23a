// set_volume (segvol_rt/pipeline/preprocess.py, volume.py): any dtype to float32,
// foreground normalisation, the foreground crop and the zoom-out image.
#include "pipeline_internal.hpp"

namespace segvol::detail {

template <typename T>
static void to_float(const void* data, size_t n, float* out) {
    const T* p = static_cast<const T*>(data);
    for (size_t i = 0; i < n; ++i) out[i] = (float)p[i];
}

void Runtime::set_volume(const void* data, DType dtype, const std::array<i64, 3>& dims, const double* affine) {
    size_t n = checked_voxels(dims);  // before any product of dims is formed
    PoolScope threads(pool_.get());   // this handle's kernel threads for the whole call
    if (affine)
        for (int k = 0; k < 16; ++k)
            if (!std::isfinite(affine[k])) fail(SEGVOL_ERR_INVALID_ARGUMENT, "affine must be a finite real 4x4 array");
    std::vector<float> f(n);
    switch (dtype) {
        case DType::U8: to_float<uint8_t>(data, n, f.data()); break;
        case DType::I8: to_float<int8_t>(data, n, f.data()); break;
        case DType::U16: to_float<uint16_t>(data, n, f.data()); break;
        case DType::I16: to_float<int16_t>(data, n, f.data()); break;
        case DType::U32: to_float<uint32_t>(data, n, f.data()); break;
        case DType::I32: to_float<int32_t>(data, n, f.data()); break;
        case DType::I64: to_float<int64_t>(data, n, f.data()); break;
        case DType::F32: std::memcpy(f.data(), data, n * 4); break;
        case DType::F64: to_float<double>(data, n, f.data()); break;
    }
    vol_.reset();
    auto v = std::make_unique<Vol>();
    v->scan_shape = dims;
    std::array<i64, 3> oriented = dims;
    if (orientation_) {
        static const double eye[16] = {1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1};
        Orientation o = orientation_from_affine(affine ? affine : eye, dims, *orientation_);
        if (!o.identity()) {
            oriented = o.out_shape();
            v->orient = o;
        }
    }
    v->model_shape = {oriented[2], oriented[1], oriented[0]};
    ForegroundStats st;
    try {
        StageTimer timer("stats");
        st = foreground_stats(f.data(), (i64)n);
    } catch (const std::invalid_argument& e) {
        fail(SEGVOL_ERR_SCAN, std::string("cannot normalise the scan: ") + e.what());
    }
    if (!std::isfinite(st.lower) || !std::isfinite(st.upper) || !std::isfinite(st.mean) || !std::isfinite(st.std))
        fail(SEGVOL_ERR_SCAN, "cannot normalise the scan: its values overflow the float32 intensity statistics of the official pipeline");
    StageTimer timer("normalize+crop");
    normalize_min_max(f.data(), (i64)n, st, f.data());
    if (v->orient) {  // the statistics and the normalisation above run in the stored order, as Python's
        std::vector<float> g(n);
        v->orient->copy(f.data(), g.data(), false);
        f.swap(g);
    }
    int b[6];
    if (!kernels::bbox_float(f.data(), v->model_shape.data(), std::numeric_limits<float>::denorm_min(), b))
        fail(SEGVOL_ERR_SCAN, (float)st.lower == (float)st.upper
                                  ? "the scan has no foreground after normalisation: its voxels above the mean nearly all have one value; is it a binary mask or a label map rather than a CT?"
                                  : "the scan has no foreground after normalisation: its normalised intensities are all equal");
    Vec3 ext{b[3] - b[0] + 1, b[4] - b[1] + 1, b[5] - b[2] + 1};
    v->crop_lo = {b[0], b[1], b[2]};
    Vec3 ms = v->model_shape;
    Vec3 strides{ms[1] * ms[2], ms[2], 1};
    // the crop (a plain copy: nearest at scale 1 is the identity) and the zoom-out image
    v->crop = Volume(ext);
    for (i64 z = 0; z < ext[0]; ++z)
        for (i64 y = 0; y < ext[1]; ++y)
            std::memcpy(v->crop.ptr() + (z * ext[1] + y) * ext[2], f.data() + (b[0] + z) * strides[0] + (b[1] + y) * strides[1] + b[2],
                        sizeof(float) * (size_t)ext[2]);
    Vec3 zero{0, 0, 0}, cs{ext[1] * ext[2], ext[2], 1};
    v->zoom = resize_nearest(v->crop.ptr(), cs, zero, ext, v3(art_.spatial_size), true);
    vol_ = std::move(v);
}

}  // namespace segvol::detail
