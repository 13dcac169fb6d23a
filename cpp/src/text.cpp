// Text embeddings (segvol_rt/pipeline/text_embeddings.py): the table, cached phrases,
// new phrases through the tokenizer and the text encoder.
#include "pipeline_internal.hpp"
#include "system.hpp"

namespace segvol::detail {

std::vector<std::vector<float>> Runtime::text_embeddings(const std::vector<std::string>& texts) {
    // as SegVolRuntime.text_embeddings: table rows, then cached phrases, then the new
    // phrases through the text encoder, text_batch_ per call, in first-seen order
    std::vector<std::string> keys, fresh;
    std::map<std::string, std::string> raw;
    for (const std::string& t : texts) {
        keys.push_back(normalize_name(t));
        raw[keys.back()] = strip(t);
    }
    for (const std::string& k : keys)
        if (!table_.count(k) && !phrases_.count(k) && std::find(fresh.begin(), fresh.end(), k) == fresh.end()) fresh.push_back(k);
    if (!fresh.empty() && !tokenizer_) {
        tokenizer_ = Tokenizer::from_dir(art_.path(art_.tokenizer_dir), 0);  // max_length as Python: tokenizer_config.json, else 77
        GraphOptions go;
        go.threads = opt_.threads;
        go.cuda = cuda_;
        go.precision = opt_.precision;
        text_encoder_ = open_graph(TEXT_ENCODER, go);
    }
    for (size_t i = 0; i < fresh.size(); i += (size_t)text_batch_) {
        size_t n = std::min(fresh.size() - i, (size_t)text_batch_);
        std::vector<int64_t> ids;
        for (size_t j = 0; j < n; ++j) {
            std::string sentence = art_.prompt_template;
            size_t at = sentence.find("{}");
            if (at != std::string::npos) sentence.replace(at, 2, raw[fresh[i + j]]);
            std::vector<long long> row = tokenizer_->encode(sentence);
            ids.insert(ids.end(), row.begin(), row.end());
        }
        TensorView view = host_view(ids.data(), {(int64_t)n, (int64_t)(ids.size() / n)}, ElementType::I64);
        Buffer out = text_encoder_->run({{art_.graphs[TEXT_ENCODER].inputs[0], view}});
        size_t per = out.view().count() / n;
        const float* o = out.as<float>();
        for (size_t j = 0; j < n; ++j) phrases_[fresh[i + j]] = std::vector<float>(o + j * per, o + (j + 1) * per);
    }
    std::vector<std::vector<float>> rows;
    for (const std::string& k : keys) rows.push_back(table_.count(k) ? table_.at(k) : phrases_.at(k));
    return rows;
}

}  // namespace segvol::detail
