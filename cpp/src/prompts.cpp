// Prompts (segvol_rt/pipeline/prompts.py, geometry.py): scan-space prompts validated and
// mapped to zoom-out space, the official window prompt rules, the decoder's token rows.
#include "pipeline_internal.hpp"

namespace segvol::detail {

// -- window prompt rules --------------------------------------------------------------

Box generate_box(const Map8& m) {
    Box b{INT64_MAX, INT64_MAX, INT64_MAX, -1, -1, -1};
    bool any = false;
    for (i64 z = 0; z < m.shape[0]; ++z)
        for (i64 y = 0; y < m.shape[1]; ++y)
            for (i64 x = 0; x < m.shape[2]; ++x)
                if (m.at(z, y, x) > 0) {
                    any = true;
                    i64 c[3] = {z, y, x};
                    for (int a = 0; a < 3; ++a) {
                        b[a] = std::min(b[a], c[a]);
                        b[a + 3] = std::max(b[a + 3], c[a]);
                    }
                }
    return any ? b : EMPTY_BOX;
}

Points select_points(const Map8& m, NumpyGenerator& rng, int extra_pos, int extra_neg) {
    std::vector<std::array<i64, 3>> pos, neg;
    for (i64 z = 0; z < m.shape[0]; ++z)
        for (i64 y = 0; y < m.shape[1]; ++y)
            for (i64 x = 0; x < m.shape[2]; ++x) {
                unsigned char v = m.at(z, y, x);
                if (v > 0.9) pos.push_back({z, y, x});
                if (extra_neg > 0 && v < 0.1) neg.push_back({z, y, x});
            }
    Points p;
    if (pos.empty()) {
        extra_pos = 0;
        p.coords.push_back({-1, -1, -1});
        p.labels.push_back(-1);
    } else {
        p.coords.push_back(pos[(size_t)rng.integers((i64)pos.size())]);
        p.labels.push_back(1);
    }
    if (extra_pos > 0) {
        std::vector<int64_t> perm = rng.permutation((i64)pos.size());
        for (size_t i = 0; i < perm.size() && (int)i < extra_pos; ++i) {
            p.coords.push_back(pos[(size_t)perm[i]]);
            p.labels.push_back(1);
        }
    }
    if (extra_neg > 0) {
        std::vector<int64_t> perm = rng.permutation((i64)neg.size());
        for (size_t i = 0; i < perm.size() && (int)i < extra_neg; ++i) {
            p.coords.push_back(neg[(size_t)perm[i]]);
            p.labels.push_back(0);
        }
    }
    for (int i = (int)p.labels.size(); i < extra_pos + extra_neg + 1; ++i) {
        p.coords.push_back({-1, -1, -1});
        p.labels.push_back(-1);
    }
    return p;
}

Map8 slice_map(const Map8& m, const Vec3& start, const Vec3& window) {
    Vec3 lo, hi;
    Map8 out;
    for (int a = 0; a < 3; ++a) {
        lo[a] = std::min(start[a], m.shape[a]);
        hi[a] = std::max(lo[a], std::min(start[a] + window[a], m.shape[a]));
        out.shape[a] = hi[a] - lo[a];
    }
    out.v.resize((size_t)(out.shape[0] * out.shape[1] * out.shape[2]));
    size_t o = 0;
    for (i64 z = lo[0]; z < hi[0]; ++z)
        for (i64 y = lo[1]; y < hi[1]; ++y)
            for (i64 x = lo[2]; x < hi[2]; ++x) out.v[o++] = m.at(z, y, x);
    return out;
}

Box resized_box(const Box& box, const Vec3& in, const Vec3& out, bool exact, bool* empty) {
    Box r;
    *empty = false;
    for (int a = 0; a < 3; ++a) {
        std::vector<i64> src = nearest_source_index(in[a], out[a], exact);
        i64 first = -1, last = -1;
        for (i64 o = 0; o < out[a]; ++o)
            if (src[(size_t)o] >= box[a] && src[(size_t)o] <= box[a + 3]) {
                if (first < 0) first = o;
                last = o;
            }
        if (first < 0) {
            *empty = true;
            return EMPTY_BOX;
        }
        r[a] = first;
        r[a + 3] = last;
    }
    return r;
}

Tokens decoder_tokens(const Points* points, const Box* box, bool text) {
    Tokens t;
    auto add = [&](float a, float b, float c, int label) {
        t.coords.insert(t.coords.end(), {a, b, c});
        t.labels.push_back(label);
    };
    if (points) {
        for (size_t i = 0; i < points->labels.size(); ++i)
            add((float)points->coords[i][0], (float)points->coords[i][1], (float)points->coords[i][2],
                (int)points->labels[i]);
        if (!box) add(0, 0, 0, LABEL_PAD);
    }
    if (box) {
        add((float)(*box)[0], (float)(*box)[1], (float)(*box)[2], LABEL_BOX_MIN);
        add((float)(*box)[3], (float)(*box)[4], (float)(*box)[5], LABEL_BOX_MAX);
    }
    if (text) add(0, 0, 0, LABEL_TEXT);
    if (t.labels.empty()) fail(SEGVOL_ERR_INVALID_ARGUMENT, "give at least one prompt: text, box or points");
    return t;
}

std::string normalize_name(const std::string& text) {
    // lowercase (ASCII: the table's names), trimmed, inner whitespace collapsed
    std::string out;
    bool space = false;
    for (unsigned char c : text) {
        if (std::isspace(c)) {
            space = !out.empty();
            continue;
        }
        if (space) out += ' ';
        space = false;
        out += (char)std::tolower(c);
    }
    return out;
}

// -- segment: prompts -> coarse pass -> zoom-in plans -> zoom-in -> masks ----------------

// A scan-space box (validated) in zoom-out space, as prompts.to_model_space: scan (i, j, k)
// -> reoriented (when the volume is) -> model (k, j, i) -> crop (minus the crop start, clipped)
// -> the bounding box of its nearest-exact resize; a box thinner than one zoom-out voxel keeps
// its corners' voxels. Errors name the caller's box.
static Box box_to_zoom(const std::array<i64, 6>& user, const std::optional<Orientation>& orient, const std::array<i64, 3>& scan,
                       const Vec3& crop_lo, const Vec3& crop_shape, const Vec3& spatial, const std::string& where) {
    for (int a = 0; a < 3; ++a)
        if (user[a] > user[a + 3]) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "box " + box_str(user.data(), 6) + " is empty: need i0<=i1, j0<=j1, k0<=k1");
    for (int a = 0; a < 3; ++a)
        if (user[a] < 0 || user[a + 3] >= scan[a])
            fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "box " + box_str(user.data(), 6) + " is outside the scan of shape " + box_str(scan.data(), 3));
    const std::array<i64, 6> b = orient ? orient->forward_box(user) : user;
    Box crop;
    for (int a = 0; a < 3; ++a) {
        crop[a] = std::max<i64>(b[2 - a] - crop_lo[a], 0);
        crop[a + 3] = std::min<i64>(b[5 - a] - crop_lo[a], crop_shape[a] - 1);
        if (crop[a] > crop[a + 3])
            fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "box " + box_str(user.data(), 6) + " lies outside the scan's foreground crop; nothing to segment there");
    }
    bool empty;
    Box zoom = resized_box(crop, crop_shape, spatial, true, &empty);
    if (empty)
        for (int a = 0; a < 3; ++a) {
            zoom[a] = ((2 * crop[a] + 1) * spatial[a]) / (2 * crop_shape[a]);
            zoom[a + 3] = ((2 * crop[a + 3] + 1) * spatial[a]) / (2 * crop_shape[a]);
        }
    return zoom;
}

// Scan-space points (validated; reoriented when the volume is) as the zoom-out voxels holding
// their crop voxels' centres.
static Points points_to_zoom(const std::vector<std::array<i64, 4>>& pts, const std::optional<Orientation>& orient,
                             const std::array<i64, 3>& scan, const Vec3& crop_lo, const Vec3& crop_shape, const Vec3& spatial,
                             int max_points, const std::string& where) {
    if ((int)pts.size() > max_points)
        fail(SEGVOL_ERR_INVALID_ARGUMENT, where + std::to_string(pts.size()) + " points given; the artifacts take at most " + std::to_string(max_points));
    Points pz;
    for (const auto& p : pts) {
        if (p[3] != 0 && p[3] != 1) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "point " + box_str(p.data(), 4) + ": label must be 1 (positive) or 0 (negative)");
        for (int a = 0; a < 3; ++a)
            if (p[a] < 0 || p[a] >= scan[a])
                fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "point " + box_str(p.data(), 3) + " is outside the scan of shape " + box_str(scan.data(), 3));
        std::array<i64, 3> z, q{p[0], p[1], p[2]};
        if (orient) q = orient->forward(q);
        for (int a = 0; a < 3; ++a) {
            i64 c = q[(size_t)(2 - a)] - crop_lo[(size_t)a];
            if (c < 0 || c >= crop_shape[a])
                fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "point " + box_str(p.data(), 3) + " lies outside the scan's foreground crop; nothing to segment there");
            z[a] = ((2 * c + 1) * spatial[a]) / (2 * crop_shape[a]);
        }
        pz.coords.push_back(z);
        pz.labels.push_back(p[3]);
    }
    return pz;
}

// Validated model-space targets of the requests, their text rows in `texts` (kept alive by the caller).
std::vector<Runtime::Target> Runtime::model_targets(const std::vector<Request>& requests, std::vector<std::vector<float>>* texts) {
    const Vol& v = *vol_;
    Vec3 spatial = v3(art_.spatial_size);
    std::vector<Target> targets(requests.size());
    for (size_t t = 0; t < requests.size(); ++t) {
        const Request& r = requests[t];
        std::string where = requests.size() > 1 ? "targets[" + std::to_string(t) + "]: " : "";
        if (!r.text && !r.box && r.points.empty()) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "give at least one prompt: text, box or points");
        if (r.text && normalize_name(*r.text).empty()) fail(SEGVOL_ERR_INVALID_ARGUMENT, where + "text prompt is empty");
        targets[t].seed = r.seed;
        if (r.box) targets[t].box_zoom = box_to_zoom(*r.box, v.orient, v.scan_shape, v.crop_lo, v.crop.shape, spatial, where);
        if (!r.points.empty())
            targets[t].points_zoom = points_to_zoom(r.points, v.orient, v.scan_shape, v.crop_lo, v.crop.shape, spatial, max_points_, where);
    }
    std::vector<std::string> phrases;
    for (const Request& r : requests)
        if (r.text) phrases.push_back(*r.text);
    texts->assign(requests.size(), {});
    if (!phrases.empty()) {
        std::vector<std::vector<float>> rows = text_embeddings(phrases);
        for (size_t t = 0, j = 0; t < requests.size(); ++t)
            if (requests[t].text) {
                (*texts)[t] = std::move(rows[j++]);
                targets[t].text = &(*texts)[t];
            }
    }
    return targets;
}

}  // namespace segvol::detail
