// The image encoder and the window-embedding cache (segvol_rt/pipeline/caches.py,
// zoom.window_batch): windows cut from the crop, encoded once, least recently used out.
#include "pipeline_internal.hpp"

namespace segvol::detail {

std::vector<float> Runtime::encode(const std::vector<float>& batch, long long n) {
    Tensor img;
    img.f = batch;
    img.shape = {n, 1, art_.spatial_size[0], art_.spatial_size[1], art_.spatial_size[2]};
    std::vector<long long> shape;
    std::vector<float> out = encoder_->run({{art_.graphs["image_encoder"].inputs[0], &img}}, &shape);
    emb_shape_ = shape;
    return out;
}

// The window image of a key: crop voxels inside the ROI, zeros elsewhere (zoom.window_batch).
static void window_image(const Volume& crop, const WindowKey& k, float* out) {
    Vec3 size{k[3] - k[0], k[4] - k[1], k[5] - k[2]};
    std::fill(out, out + size[0] * size[1] * size[2], 0.0f);
    for (i64 z = k[6]; z < k[9]; ++z)
        for (i64 y = k[7]; y < k[10]; ++y) {
            if (k[11] <= k[8]) continue;
            std::memcpy(out + ((z - k[0]) * size[1] + (y - k[1])) * size[2] + (k[8] - k[2]),
                        crop.ptr() + (z * crop.shape[1] + y) * crop.shape[2] + k[8], sizeof(float) * (size_t)(k[11] - k[8]));
        }
}

void Runtime::ensure_windows(const std::vector<WindowKey>& keys) {
    Vol& v = *vol_;
    std::vector<WindowKey> todo;
    std::set<WindowKey> seen;
    for (const WindowKey& k : keys) {
        if (!seen.insert(k).second) continue;
        auto it = v.cache.find(k);
        if (it != v.cache.end()) {  // mark as used
            v.lru.splice(v.lru.end(), v.lru, it->second.second);
            continue;
        }
        todo.push_back(k);
    }
    Vec3 w = v3(art_.spatial_size);
    size_t vox = (size_t)(w[0] * w[1] * w[2]);
    for (size_t i = 0; i < todo.size(); i += (size_t)enc_batch_) {
        size_t n = std::min(todo.size() - i, (size_t)enc_batch_);
        std::vector<float> batch(vox * n);
        for (size_t j = 0; j < n; ++j) window_image(v.crop, todo[i + j], batch.data() + j * vox);
        std::vector<float> emb = encode(batch, (long long)n);
        size_t per = emb.size() / n;
        v.windows_encoded += n;
        for (size_t j = 0; j < n; ++j) {
            v.lru.push_back(todo[i + j]);
            v.cache[todo[i + j]] = {std::vector<float>(emb.begin() + (long)(j * per), emb.begin() + (long)((j + 1) * per)),
                                    std::prev(v.lru.end())};
            v.cache_bytes += per * sizeof(float);
        }
    }
}

void Runtime::trim_cache(const std::set<WindowKey>& pinned) {
    Vol& v = *vol_;
    for (auto it = v.lru.begin(); it != v.lru.end() && v.cache_bytes > opt_.cache_bytes;) {
        if (pinned.count(*it)) {
            ++it;
            continue;
        }
        auto c = v.cache.find(*it);
        v.cache_bytes -= c->second.first.size() * sizeof(float);
        v.cache.erase(c);
        it = v.lru.erase(it);
    }
}

}  // namespace segvol::detail
