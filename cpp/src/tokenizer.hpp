// CLIP byte-level BPE tokenizer (segvol_rt/io/tokenizer.py), for free-phrase
// text prompts: reads the artifacts' tokenizer.json (nlohmann-json), applies
// CLIP's normalisation (NFC via utf8proc, whitespace collapsed, lowercase),
// its word split (Unicode letter/number classes from utf8proc), byte-level
// mapping and BPE merges, then <|startoftext|> ... <|endoftext|>, truncated to
// max_length keeping the end token, padded with the pad id.
#pragma once

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace segvol::detail {

class Tokenizer {
   public:
    static std::unique_ptr<Tokenizer> from_dir(const std::string& dir, int max_length);
    std::vector<long long> ids(const std::string& text) const;          // with BOS/EOS, unpadded
    std::vector<long long> encode(const std::string& text) const;       // (max_length,) padded
    virtual ~Tokenizer() = default;

   private:
    std::map<std::string, long long> vocab_;
    std::map<std::pair<std::string, std::string>, int> ranks_;
    std::string unk_;
    long long bos_ = 0, eos_ = 0, pad_ = 0;
    int max_length_ = 77;
    mutable std::map<std::string, std::vector<std::string>> cache_;
    std::vector<std::string> bpe(const std::string& word) const;
};

}  // namespace segvol::detail
