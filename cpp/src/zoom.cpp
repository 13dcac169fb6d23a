// Zoom-in (segvol_rt/pipeline/zoom.py): the ROI rule, the sliding-window plan and keys,
// the window prompts of a plan, the decoded windows blended into the ROI logits.
#include "pipeline_internal.hpp"

namespace segvol::detail {

// -- ROI, window plan -------------------------------------------------------------

Roi roi_from_box(const Box& box, const Vec3& size, const Vec3& window) {
    Roi r;
    for (int a = 0; a < 3; ++a) {
        i64 lo = box[a], hi = box[a + 3];
        i64 pad = std::max<i64>(0, window[a] - (hi - lo + 1));
        r.official[a] = std::max<i64>(0, lo - pad / 2);
        r.official[a + 3] = std::min<i64>(size[a], hi + pad / 2);
        r.lo[a] = r.official[a];
        r.hi[a] = std::min<i64>(r.official[a + 3] + 1, size[a]);
    }
    return r;
}

WindowPlan plan_windows(const Vec3& roi_shape, const Vec3& window, double overlap) {
    WindowPlan p;
    p.roi_shape = roi_shape;
    p.window = window;
    std::vector<i64> axes[3];
    for (int a = 0; a < 3; ++a) {
        i64 diff = std::max<i64>(window[a] - roi_shape[a], 0);
        p.pad_before[a] = diff / 2;
        p.padded_shape[a] = roi_shape[a] + diff;
        i64 size = std::max(roi_shape[a], window[a]), roi = window[a];
        i64 interval = roi == size ? roi : std::max<i64>((i64)((double)roi * (1 - overlap)), 1);
        i64 count = 1;
        if (interval > 0) {
            i64 n = (i64)std::ceil((double)size / (double)interval);
            for (i64 d = 0; d < n; ++d)
                if (d * interval + roi >= size) {
                    count = d + 1;
                    break;
                }
        }
        for (i64 i = 0; i < count; ++i) axes[a].push_back(std::min(i * interval, size - roi));
    }
    for (i64 d : axes[0])
        for (i64 h : axes[1])
            for (i64 w : axes[2]) p.starts.push_back({d, h, w});
    return p;
}

WindowKey window_key(const Roi& roi, const WindowPlan& plan, const Vec3& start) {
    WindowKey k;
    for (int a = 0; a < 3; ++a) {
        i64 lo = roi.lo[a] + start[a] - plan.pad_before[a];
        i64 hi = lo + plan.window[a];
        k[a] = lo;
        k[a + 3] = hi;
        k[a + 6] = std::max(lo, roi.lo[a]);
        k[a + 9] = std::min(hi, roi.hi[a]);
    }
    return k;
}

Map8 pad_like_roi(const Map8& m, const WindowPlan& plan) {
    Map8 out;
    out.shape = plan.padded_shape;
    out.v.assign((size_t)(out.shape[0] * out.shape[1] * out.shape[2]), 0);
    for (i64 z = 0; z < m.shape[0]; ++z)
        for (i64 y = 0; y < m.shape[1]; ++y)
            for (i64 x = 0; x < m.shape[2]; ++x)
                out.v[(size_t)(((z + plan.pad_before[0]) * out.shape[1] + y + plan.pad_before[1]) * out.shape[2] + x +
                               plan.pad_before[2])] = m.at(z, y, x);
    return out;
}

// resize(binary map of zoom shape, crop shape, "nearest")[roi] from the index tables
template <typename F>
static Map8 nearest_to_roi(const Vec3& zoom_shape, const Vec3& crop_shape, const Roi& roi, F value) {
    std::vector<i64> idx[3];
    Map8 m;
    for (int a = 0; a < 3; ++a) {
        std::vector<i64> t = nearest_source_index(zoom_shape[a], crop_shape[a], false);
        idx[a].assign(t.begin() + roi.lo[a], t.begin() + roi.hi[a]);
        m.shape[a] = roi.hi[a] - roi.lo[a];
    }
    m.v.resize((size_t)(m.shape[0] * m.shape[1] * m.shape[2]));
    size_t o = 0;
    for (i64 z : idx[0])
        for (i64 y : idx[1])
            for (i64 x : idx[2]) m.v[o++] = value(z, y, x);
    return m;
}

static Box global_preds_box(const Volume& coarse, const WindowKey& k) {
    for (int a = 0; a < 3; ++a)
        if (k[a + 9] <= k[a + 6]) return EMPTY_BOX;
    std::optional<Box> b = positive_box(coarse, {k[6], k[7], k[8]}, {k[9], k[10], k[11]});
    if (!b) return EMPTY_BOX;
    Box r;
    for (int a = 0; a < 3; ++a) {
        r[a] = (*b)[a] + k[a + 6] - k[a];
        r[a + 3] = (*b)[a + 3] + k[a + 6] - k[a];
    }
    return r;
}

// A target's zoom-in (zoom.plan_zoom_in): ROI around the coarse positives `pos`, the window
// plan, each window's cache key and decoder tokens (window prompts by the official rules).
Runtime::ZoomPlan Runtime::plan_zoom_in(const Target& tg, const Volume& coarse, const Box& pos, bool aligned) const {
    Vec3 spatial = v3(art_.spatial_size), crop_shape = coarse.shape;
    ZoomPlan p;
    p.roi = roi_from_box(pos, crop_shape, spatial);
    p.windows = plan_windows(p.roi.shape(), spatial, OVERLAP);
    bool single = p.windows.starts.size() == 1;
    std::optional<Map8> cube, point_map;
    if (tg.box_zoom && single) {  // the cube is read only with a single window
        const Box& bz = *tg.box_zoom;
        cube = nearest_to_roi(spatial, crop_shape, p.roi, [&](i64 z, i64 y, i64 x) {
            i64 c[3] = {z, y, x};
            for (int a = 0; a < 3; ++a)
                if (c[a] < std::max<i64>(bz[a], 0) || c[a] > bz[a + 3]) return (unsigned char)0;
            return (unsigned char)1;
        });
    }
    if (tg.points_zoom) {
        std::set<std::array<i64, 3>> positive;
        for (size_t i = 0; i < tg.points_zoom->labels.size(); ++i)
            if (tg.points_zoom->labels[i] == 1) positive.insert(tg.points_zoom->coords[i]);
        point_map = nearest_to_roi(spatial, crop_shape, p.roi,
                                   [&](i64 z, i64 y, i64 x) { return (unsigned char)(positive.count({z, y, x}) ? 1 : 0); });
    }
    if (aligned) {
        if (cube) cube = pad_like_roi(*cube, p.windows);
        if (point_map) point_map = pad_like_roi(*point_map, p.windows);
    }
    NumpyGenerator rng(tg.seed);
    for (const Vec3& start : p.windows.starts) {
        WindowKey key = window_key(p.roi, p.windows, start);
        std::optional<Box> box;
        std::optional<Points> points;
        if (tg.box_zoom) box = single ? generate_box(slice_map(*cube, start, spatial)) : global_preds_box(coarse, key);
        if (point_map) {
            points = select_points(slice_map(*point_map, start, spatial), rng, POINT_EXTRA_POSITIVE, POINT_EXTRA_NEGATIVE);
            if (!box) box = global_preds_box(coarse, key);
        }
        p.keys.push_back(key);
        p.tokens.push_back(decoder_tokens(points ? &*points : nullptr, box ? &*box : nullptr, tg.text != nullptr));
    }
    return p;
}

// ROI logits of one planned target: its windows decoded (embeddings from the cache),
// trilinear to the window, blended in window order (MONAI constant), padding cut away.
Volume Runtime::zoom_in(const ZoomPlan& p, const Target& tg) {
    Vec3 spatial = v3(art_.spatial_size);
    std::vector<const Buffer*> e;
    std::vector<const std::vector<float>*> tx;
    for (const WindowKey& k : p.keys) {
        e.push_back(&vol_->cache.at(k).first);  // read in place by the decoder
        tx.push_back(tg.text);
    }
    Buffer wl = decode(e, p.tokens, tx);
    // every window trilinear to the window size, then the blend of the ROI's box inside the
    // padded ROI (kernels/blend.cu blend_average, row by row: the same float additions)
    size_t nwin = p.keys.size(), low = (size_t)(low_shape_[0] * low_shape_[1] * low_shape_[2]);
    size_t vox = (size_t)(spatial[0] * spatial[1] * spatial[2]);
    Buffer windows = Buffer::host({(int64_t)nwin, spatial[0], spatial[1], spatial[2]}, ElementType::F32);
    for (size_t i = 0; i < nwin; ++i) resize_trilinear(wl.as<float>() + i * low, low_shape_, spatial, windows.as<float>() + i * vox);
    StageTimer blend("  blend");
    Volume roi(p.roi.shape());
    blend_average_rows(windows.as<float>(), p.windows.starts, spatial, p.windows.pad_before, roi.shape, roi.ptr(),
                       std::numeric_limits<float>::quiet_NaN());
    return roi;
}

}  // namespace segvol::detail
