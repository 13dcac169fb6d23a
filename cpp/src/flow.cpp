// One request batch through the pipeline (segvol_rt/pipeline/flow.py): the batched
// decoder, the coarse pass, zoom-in plans, the masks and probabilities.
#include "pipeline_internal.hpp"

namespace segvol::detail {

// Rows with the same labels share calls (zoom.decode_batched), groups in first-seen order.
static std::vector<std::vector<size_t>> label_groups(const std::vector<Tokens>& tokens) {
    std::vector<std::pair<std::vector<int>, std::vector<size_t>>> groups;
    for (size_t i = 0; i < tokens.size(); ++i) {
        auto g = std::find_if(groups.begin(), groups.end(), [&](auto& x) { return x.first == tokens[i].labels; });
        if (g == groups.end()) groups.push_back({tokens[i].labels, {i}});
        else g->second.push_back(i);
    }
    std::vector<std::vector<size_t>> out;
    for (auto& g : groups) out.push_back(std::move(g.second));
    return out;
}

Buffer Runtime::decode(const std::vector<const Buffer*>& embeddings, const std::vector<Tokens>& tokens,
                       const std::vector<const std::vector<float>*>& texts) {
    const int64_t n = (int64_t)tokens.size(), C = art_.embed_dim;
    Buffer out;  // (n, 1, 4d, 4h, 4w), once the decoder's output shape is known
    size_t row = 0;
    auto allocate = [&] {
        out = Buffer::host({n, 1, low_shape_[0], low_shape_[1], low_shape_[2]}, ElementType::F32);
        row = (size_t)(low_shape_[0] * low_shape_[1] * low_shape_[2]);
    };
    if (low_shape_[0] > 0) allocate();
    for (const std::vector<size_t>& rows : label_groups(tokens)) {
        for (size_t j = 0; j < rows.size(); j += (size_t)dec_batch_) {
            std::vector<size_t> idx(rows.begin() + (long)j, rows.begin() + (long)std::min(rows.size(), j + (size_t)dec_batch_));
            const int64_t B = (int64_t)idx.size(), N = (int64_t)tokens[idx[0]].labels.size();
            // one row is fed where it lies (the cache, the text table); a batch is gathered
            Buffer gathered, text_rows;
            TensorView emb = embeddings[idx[0]]->view();
            if (B > 1) {
                std::vector<int64_t> shape = emb.shape;
                shape[0] = B;
                gathered = buffer_like(emb, shape);  // where the embeddings are (the GPU's batches)
                size_t per = emb.count();
                for (int64_t r = 0; r < B; ++r) {
                    const TensorView& src = embeddings[idx[r]]->view();
                    copy_bytes(gathered.as<float>() + r * per, gathered.view().where, src.data, src.where, per * sizeof(float), src.stream);
                }
                emb = gathered.view();
            }
            std::vector<float> coords;
            std::vector<int32_t> labels;
            std::vector<float> zeros;
            for (size_t i : idx) {
                coords.insert(coords.end(), tokens[i].coords.begin(), tokens[i].coords.end());
                labels.insert(labels.end(), tokens[i].labels.begin(), tokens[i].labels.end());
            }
            TensorView text;
            if (B == 1 && texts[idx[0]]) {
                text = host_view(texts[idx[0]]->data(), {1, C}, ElementType::F32);
            } else {
                text_rows = Buffer::host({B, C}, ElementType::F32);
                for (int64_t r = 0; r < B; ++r) {
                    float* dst = text_rows.as<float>() + r * C;
                    if (texts[idx[r]]) std::memcpy(dst, texts[idx[r]]->data(), (size_t)C * sizeof(float));
                    else std::fill(dst, dst + C, 0.0f);
                }
                text = text_rows.view();
            }
            TensorView coords_view = host_view(coords.data(), {B, N, 3}, ElementType::F32);
            TensorView labels_view = host_view(labels.data(), {B, N}, ElementType::I32);
            bool contiguous = idx.back() - idx.front() + 1 == idx.size();
            if (!out.empty() && contiguous) {  // straight into the result's rows
                TensorView o = out.view();
                o.data = out.as<float>() + idx[0] * row;
                o.shape[0] = B;
                StageTimer timer("  decoder_run");
                graphs_->decode(emb, coords_view, labels_view, text, o);
                continue;
            }
            Buffer logits = graphs_->decode(emb, coords_view, labels_view, text);
            if (out.empty()) {
                low_shape_ = {logits.shape()[2], logits.shape()[3], logits.shape()[4]};
                allocate();
            }
            for (size_t r = 0; r < idx.size(); ++r) std::memcpy(out.as<float>() + idx[r] * row, logits.as<float>() + r * row, row * sizeof(float));
        }
    }
    return out;
}

// The zoom-out's low-res logits per target: the zoom-out embedding (encoded once per volume)
// decoded with the zoom-out prompts.
Buffer Runtime::coarse_pass(const std::vector<Target>& targets) {
    Vol& v = *vol_;
    if (v.zoom_embedding.empty()) {
        StageTimer timer("encode_zoom_out");
        Vec3 w = v3(art_.spatial_size);
        v.zoom_embedding = encode(host_view(v.zoom.ptr(), {1, 1, w[0], w[1], w[2]}, ElementType::F32));
    }
    std::vector<Tokens> tokens;
    std::vector<const Buffer*> embs;
    std::vector<const std::vector<float>*> txt;
    for (const Target& tg : targets) {
        tokens.push_back(decoder_tokens(tg.points_zoom ? &*tg.points_zoom : nullptr, tg.box_zoom ? &*tg.box_zoom : nullptr, tg.text != nullptr));
        embs.push_back(&v.zoom_embedding);
        txt.push_back(tg.text);
    }
    StageTimer timer("coarse_pass");
    return decode(embs, tokens, txt);
}

Volume Runtime::coarse_crop_logits(const Buffer& low, size_t t) const {
    StageTimer up("  upsample");
    size_t row = (size_t)(low_shape_[0] * low_shape_[1] * low_shape_[2]);
    return upsample_then_nearest(low.as<float>() + t * row, low_shape_, v3(art_.spatial_size), vol_->crop.shape);
}

// The scan-space result: the uint8 mask straight from the coarse and ROI logits (one
// kernel, no paste), and the probabilities (paste, sigmoid) when asked for.
Result Runtime::finish(const Volume& coarse, const ZoomPlan* plan, const Volume* roi, bool found, const Request& request) const {
    const Vol& v = *vol_;
    const std::array<i64, 3>& scan = v.scan_shape;
    Vec3 crop_shape = coarse.shape, zero{0, 0, 0};
    Vec3 out_shape = v.model_shape;  // (K, J, I) C-ordered = (I, J, K) with i fastest, reoriented when the volume is
    Result r;
    r.no_foreground = !found;
    size_t voxels = (size_t)(scan[0] * scan[1] * scan[2]);
    unsigned char* mask = request.mask_out;  // the caller's buffer, written once, else the result's
    if (!mask) {
        r.mask.resize(voxels);
        mask = r.mask.data();
    }
    std::vector<unsigned char> oriented_mask;  // a reoriented volume's mask, before it goes back to the scan's order
    unsigned char* model_mask = mask;
    if (v.orient) {
        oriented_mask.resize(voxels);
        model_mask = oriented_mask.data();
    }
    Vec3 rstart = plan ? plan->roi.lo : zero;
    Vec3 rshape = roi ? roi->shape : zero;
    scan_mask_rows(coarse.ptr(), crop_shape, roi ? roi->ptr() : nullptr, rstart, rshape, v.crop_lo, out_shape, positive_threshold(), model_mask);
    if (v.orient) v.orient->copy(model_mask, mask, true);
    if (plan) {
        r.roi = plan->roi;
        r.n_windows = (int)plan->keys.size();
        r.zoom_in_applied = true;
    }
    if (request.probabilities) {
        Volume logits = coarse;
        if (roi) {
            Vec3 st{rshape[1] * rshape[2], rshape[2], 1};
            kernels::paste_f32(roi->ptr(), st.data(), rshape.data(), logits.ptr(), crop_shape[1], crop_shape[2], rstart.data());
        }
        float* probs = request.probabilities_out;
        if (probs) {
            std::fill(probs, probs + voxels, 0.0f);
        } else {
            r.probabilities.assign(voxels, 0.0f);
            probs = r.probabilities.data();
        }
        std::vector<float> oriented_probs;
        float* scan_probs = probs;
        if (v.orient) {
            oriented_probs.assign(voxels, 0.0f);
            probs = oriented_probs.data();
        }
        for (i64 z = 0; z < crop_shape[0]; ++z)
            for (i64 y = 0; y < crop_shape[1]; ++y)
                for (i64 x = 0; x < crop_shape[2]; ++x) {
                    float l = logits.data[(size_t)((z * crop_shape[1] + y) * crop_shape[2] + x)];
                    i64 m0 = z + v.crop_lo[0], m1 = y + v.crop_lo[1], m2 = x + v.crop_lo[2];
                    probs[(size_t)((m0 * out_shape[1] + m1) * out_shape[2] + m2)] = 1.0f / (1.0f + std::exp(-l));
                }
        if (v.orient) v.orient->copy(probs, scan_probs, true);
    }
    return r;
}

std::vector<Result> Runtime::segment(const std::vector<Request>& requests) {
    if (!vol_) fail(SEGVOL_ERR_NO_VOLUME, "no volume: call set_volume before segment");
    PoolScope threads(pool_.get());  // this handle's kernel threads for the whole call
    std::vector<std::vector<float>> texts;
    std::vector<Target> targets = model_targets(requests, &texts);
    Buffer low = coarse_pass(targets);
    // A target's crop logits are a float32 volume of the crop's size (80 MiB for a 512x512x200
    // scan), so, as the Python runtime (segvol_rt.pipeline.flow: RequestFlow._plan), only those
    // turned into probabilities are kept through the zoom-in; the others are computed again
    // from the same low-res logits when their target finishes (the same voxels).
    std::vector<std::optional<Volume>> coarse(requests.size());
    std::vector<std::optional<ZoomPlan>> plans(requests.size());
    std::vector<bool> found(requests.size());
    for (size_t t = 0; t < requests.size(); ++t) {
        Volume c = coarse_crop_logits(low, t);
        std::optional<Box> pos = positive_box(c);  // "no foreground" when None
        found[t] = pos.has_value();
        if (requests[t].zoom_in && pos) plans[t] = plan_zoom_in(targets[t], c, *pos, requests[t].aligned);
        if (requests[t].probabilities) coarse[t] = std::move(c);
    }
    // every distinct window of every target through the encoder once, then each target's windows
    std::vector<WindowKey> all;
    for (auto& p : plans)
        if (p) all.insert(all.end(), p->keys.begin(), p->keys.end());
    {
        StageTimer timer("encode_windows");
        ensure_windows(all);
    }
    std::vector<Volume> roi_logits(requests.size());
    {
        StageTimer timer("zoom_in");
        for (size_t t = 0; t < requests.size(); ++t)
            if (plans[t]) roi_logits[t] = zoom_in(*plans[t], targets[t]);
    }
    trim_cache({});  // back to the bound, least recently used out
    StageTimer timer("masks");
    std::vector<Result> results;
    for (size_t t = 0; t < requests.size(); ++t) {
        Volume c = coarse[t] ? std::move(*coarse[t]) : coarse_crop_logits(low, t);
        coarse[t].reset();
        results.push_back(finish(c, plans[t] ? &*plans[t] : nullptr, plans[t] ? &roi_logits[t] : nullptr, found[t], requests[t]));
        roi_logits[t] = Volume();  // this target's volumes go before the next target's exist
    }
    return results;
}

}  // namespace segvol::detail
