// One request batch through the pipeline (segvol_rt/pipeline/flow.py): the batched
// decoder, the coarse pass, zoom-in plans, the masks and probabilities.
#include "pipeline_internal.hpp"

namespace segvol::detail {

std::vector<std::vector<float>> Runtime::decode(const std::vector<const std::vector<float>*>& embeddings,
                                                const std::vector<Tokens>& tokens,
                                                const std::vector<const std::vector<float>*>& texts) {
    // rows with the same labels share calls (zoom.decode_batched), groups in first-seen order
    std::vector<std::pair<std::vector<int>, std::vector<size_t>>> groups;
    for (size_t i = 0; i < tokens.size(); ++i) {
        auto g = std::find_if(groups.begin(), groups.end(), [&](auto& x) { return x.first == tokens[i].labels; });
        if (g == groups.end()) groups.push_back({tokens[i].labels, {i}});
        else g->second.push_back(i);
    }
    const GraphEntry& spec = art_.graphs["prompt_decoder"];
    std::vector<std::vector<float>> out(tokens.size());
    for (auto& [labels, rows] : groups) {
        for (size_t j = 0; j < rows.size(); j += (size_t)dec_batch_) {
            std::vector<size_t> idx(rows.begin() + (long)j, rows.begin() + (long)std::min(rows.size(), j + (size_t)dec_batch_));
            long long B = (long long)idx.size(), N = (long long)labels.size(), C = art_.embed_dim;
            Tensor emb, coords, lab, text;
            size_t per = embeddings[idx[0]]->size();
            emb.f.reserve(per * idx.size());
            for (size_t i : idx) emb.f.insert(emb.f.end(), embeddings[i]->begin(), embeddings[i]->end());
            for (size_t i : idx) {
                coords.f.insert(coords.f.end(), tokens[i].coords.begin(), tokens[i].coords.end());
                lab.i32.insert(lab.i32.end(), tokens[i].labels.begin(), tokens[i].labels.end());
                if (texts[i]) text.f.insert(text.f.end(), texts[i]->begin(), texts[i]->end());
                else text.f.insert(text.f.end(), (size_t)C, 0.0f);
            }
            emb.shape = emb_shape_;
            emb.shape[0] = B;
            coords.shape = {B, N, 3};
            lab.kind = 1;
            lab.shape = {B, N};
            text.shape = {B, C};
            std::vector<std::pair<std::string, const Tensor*>> feeds;
            const Tensor* by_pos[4] = {&emb, &coords, &lab, &text};
            for (size_t k = 0; k < 4; ++k) feeds.push_back({spec.inputs[k], by_pos[k]});
            std::vector<long long> shape;
            std::vector<float> logits = decoder_->run(feeds, &shape);
            size_t row = logits.size() / (size_t)B;
            for (size_t r = 0; r < idx.size(); ++r) out[idx[r]].assign(logits.begin() + (long)(r * row), logits.begin() + (long)((r + 1) * row));
            low_shape_ = {shape[2], shape[3], shape[4]};
        }
    }
    return out;
}

// The coarse crop logits (D, H, W) per target: the zoom-out embedding (encoded once per
// volume) decoded with the zoom-out prompts, trilinear to the window, nearest to the crop.
std::vector<Volume> Runtime::coarse_pass(const std::vector<Target>& targets) {
    Vol& v = *vol_;
    if (v.zoom_embedding.empty()) {
        StageTimer timer("encode_zoom_out");
        v.zoom_embedding = encode(v.zoom.data, 1);
    }
    std::vector<Tokens> tokens;
    std::vector<const std::vector<float>*> embs, txt;
    for (const Target& tg : targets) {
        tokens.push_back(decoder_tokens(tg.points_zoom ? &*tg.points_zoom : nullptr, tg.box_zoom ? &*tg.box_zoom : nullptr, tg.text != nullptr));
        embs.push_back(&v.zoom_embedding);
        txt.push_back(tg.text);
    }
    StageTimer timer("coarse_pass");
    std::vector<std::vector<float>> low = decode(embs, tokens, txt);
    std::vector<Volume> coarse;
    for (auto& l : low) {
        Volume lv(low_shape_);
        lv.data = std::move(l);
        coarse.push_back(upsample_then_nearest(lv, v3(art_.spatial_size), v.crop.shape));
    }
    return coarse;
}

// The scan-space result: the uint8 mask straight from the coarse and ROI logits (one
// kernel, no paste), and the probabilities (paste, sigmoid) when asked for.
Result Runtime::finish(const Volume& coarse, const ZoomPlan* plan, const Volume* roi, bool found, bool probabilities) const {
    const Vol& v = *vol_;
    const std::array<i64, 3>& scan = v.scan_shape;
    Vec3 crop_shape = coarse.shape, zero{0, 0, 0};
    Vec3 out_shape{scan[2], scan[1], scan[0]};  // (K, J, I) C-ordered = (I, J, K) with i fastest
    int perm[3] = {0, 1, 2}, flips[3] = {0, 0, 0};
    Result r;
    r.no_foreground = !found;
    r.mask.resize((size_t)(scan[0] * scan[1] * scan[2]));
    Vec3 rstart = plan ? plan->roi.lo : zero;
    Vec3 rshape = roi ? roi->shape : zero;
    kernels::scan_mask(coarse.ptr(), crop_shape.data(), roi ? roi->ptr() : coarse.ptr(), rstart.data(), rshape.data(), r.mask.data(),
                       out_shape.data(), perm, flips, v.crop_lo.data(), positive_threshold());
    if (plan) {
        r.roi = plan->roi;
        r.n_windows = (int)plan->keys.size();
        r.zoom_in_applied = true;
    }
    if (probabilities) {
        Volume logits = coarse;
        if (roi) {
            Vec3 st{rshape[1] * rshape[2], rshape[2], 1};
            kernels::paste_f32(roi->ptr(), st.data(), rshape.data(), logits.ptr(), crop_shape[1], crop_shape[2], rstart.data());
        }
        r.probabilities.assign(r.mask.size(), 0.0f);
        for (i64 z = 0; z < crop_shape[0]; ++z)
            for (i64 y = 0; y < crop_shape[1]; ++y)
                for (i64 x = 0; x < crop_shape[2]; ++x) {
                    float l = logits.data[(size_t)((z * crop_shape[1] + y) * crop_shape[2] + x)];
                    i64 m0 = z + v.crop_lo[0], m1 = y + v.crop_lo[1], m2 = x + v.crop_lo[2];
                    r.probabilities[(size_t)((m0 * out_shape[1] + m1) * out_shape[2] + m2)] = 1.0f / (1.0f + std::exp(-l));
                }
    }
    return r;
}

std::vector<Result> Runtime::segment(const std::vector<Request>& requests) {
    if (!vol_) fail(SEGVOL_ERR_NO_VOLUME, "no volume: call set_volume before segment");
    std::vector<std::vector<float>> texts;
    std::vector<Target> targets = model_targets(requests, &texts);
    std::vector<Volume> coarse = coarse_pass(targets);
    std::vector<std::optional<ZoomPlan>> plans(requests.size());
    std::vector<bool> found(requests.size());
    for (size_t t = 0; t < requests.size(); ++t) {
        std::optional<Box> pos = positive_box(coarse[t]);  // "no foreground" when None
        found[t] = pos.has_value();
        if (requests[t].zoom_in && pos) plans[t] = plan_zoom_in(targets[t], coarse[t], *pos, requests[t].aligned);
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
    for (size_t t = 0; t < requests.size(); ++t)
        results.push_back(finish(coarse[t], plans[t] ? &*plans[t] : nullptr, plans[t] ? &roi_logits[t] : nullptr, found[t],
                                 requests[t].probabilities));
    return results;
}

}  // namespace segvol::detail
