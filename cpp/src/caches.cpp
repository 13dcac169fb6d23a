// The image encoder and the window-embedding cache (segvol_rt/pipeline/caches.py,
// zoom.window_batch): windows cut from the crop, encoded once, least recently used out.
#include "pipeline_internal.hpp"

namespace segvol::detail {

// The encoder's output goes straight into a new buffer of its shape once that is known
// (after the first call); the first call's output is copied out of ONNX Runtime once.
Buffer Runtime::encode(const TensorView& batch) {
    if (emb_shape_.empty()) {
        Buffer out = graphs_->encode_image(batch);
        emb_shape_.assign(out.shape().begin(), out.shape().end());
        return out;
    }
    std::vector<int64_t> shape(emb_shape_.begin(), emb_shape_.end());
    shape[0] = batch.shape[0];
    // on the GPU the embedding stays in device memory (ORT's CUDA EP writes it there)
    Buffer out = cuda_ ? Buffer::cuda(shape, ElementType::F32, stream_) : Buffer::host(shape, ElementType::F32);
    graphs_->encode_image(batch, out.view());
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
        Buffer batch = Buffer::host({(int64_t)n, 1, w[0], w[1], w[2]}, ElementType::F32);
        for (size_t j = 0; j < n; ++j) window_image(v.crop, todo[i + j], batch.as<float>() + j * vox);
        Buffer emb = encode(batch.view());
        v.windows_encoded += n;
        if (n == 1) {  // the CPU's batch: the encoder's output is the cache entry
            v.lru.push_back(todo[i]);
            v.cache_bytes += emb.view().bytes();
            v.cache[todo[i]] = {std::move(emb), std::prev(v.lru.end())};
            continue;
        }
        std::vector<int64_t> one = emb.shape();
        one[0] = 1;
        size_t per = emb.view().count() / n;
        for (size_t j = 0; j < n; ++j) {  // a batch's rows as entries of their own (evicted one by one)
            Buffer row = buffer_like(emb.view(), one);
            copy_bytes(row.as<void>(), row.view().where, emb.as<float>() + j * per, emb.view().where, per * sizeof(float),
                       emb.view().stream);
            v.lru.push_back(todo[i + j]);
            v.cache_bytes += per * sizeof(float);
            v.cache[todo[i + j]] = {std::move(row), std::prev(v.lru.end())};
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
        v.cache_bytes -= c->second.first.view().bytes();
        v.cache.erase(c);
        it = v.lru.erase(it);
    }
}

}  // namespace segvol::detail
