// CLIP byte-level BPE (see tokenizer.hpp). The steps are those of the
// tokenizer.json pipeline the Python runtime loads with Hugging Face
// `tokenizers` (segvol_rt/io/tokenizer.py): normalizer NFC -> Replace(\s+, " ")
// -> Lowercase; pre-tokenizer Split(CLIP pattern, invert) -> ByteLevel; model
// BPE with end-of-word suffix "</w>"; special tokens by name from
// tokenizer_config.json / special_tokens_map.json.
#include "tokenizer.hpp"

#include <utf8proc.h>

#include <climits>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sys/stat.h>

#include "errors.hpp"
#include "system.hpp"

namespace segvol::detail {

using json = nlohmann::json;
static const char* BOS = "<|startoftext|>";
static const char* EOS = "<|endoftext|>";
static const char* SUFFIX = "</w>";

static json read_json(const std::string& path) {
    try {
        std::ifstream in(path);
        return json::parse(in);
    } catch (const json::exception& e) {
        fail(SEGVOL_ERR_ARTIFACTS, "cannot read " + path + ": " + std::string(e.what()).substr(0, 160));
    }
}

static std::vector<int32_t> decode_utf8(const std::string& s) {
    std::vector<int32_t> out;
    const utf8proc_uint8_t* p = (const utf8proc_uint8_t*)s.data();
    utf8proc_ssize_t left = (utf8proc_ssize_t)s.size();
    while (left > 0) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
        if (n <= 0) fail(SEGVOL_ERR_INVALID_ARGUMENT, "text prompt is not valid UTF-8");
        out.push_back(cp);
        p += n;
        left -= n;
    }
    return out;
}

// Rust regex \s (Unicode White_Space)
static bool is_space(int32_t c) {
    if ((c >= 9 && c <= 13) || c == 0x85) return true;
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ZS || k == UTF8PROC_CATEGORY_ZL || k == UTF8PROC_CATEGORY_ZP;
}
static bool is_letter(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO;
}
static bool is_number(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

// NFC, whitespace runs to one space, lowercase (char by char, as Rust's char::to_lowercase)
static std::vector<int32_t> normalize(const std::string& text) {
    utf8proc_uint8_t* nfc = utf8proc_NFC((const utf8proc_uint8_t*)text.c_str());
    if (!nfc) fail(SEGVOL_ERR_INVALID_ARGUMENT, "text prompt is not valid UTF-8");
    std::string s((const char*)nfc);
    std::free(nfc);
    std::vector<int32_t> out;
    bool in_space = false;
    for (int32_t c : decode_utf8(s)) {
        if (is_space(c)) {
            if (!in_space) out.push_back(' ');
            in_space = true;
            continue;
        }
        in_space = false;
        if (c == 0x130) {  // the one multi-character lowercase mapping: I with dot above
            out.push_back('i');
            out.push_back(0x307);
            continue;
        }
        out.push_back(utf8proc_tolower(c));
    }
    return out;
}

// CLIP's split pattern, leftmost-first as the regex engine: specials | 's|'t|'re|'ve|'m|'ll|'d |
// letters+ | one number | (not space, letter, number)+; the rest (spaces) is removed.
static std::vector<std::string> split(const std::vector<int32_t>& t) {
    std::vector<std::string> out;
    auto starts = [&](size_t p, const char* lit) {
        for (size_t k = 0; lit[k]; ++k)
            if (p + k >= t.size() || t[p + k] != (unsigned char)lit[k]) return false;
        return true;
    };
    static const char* contractions[] = {"'s", "'t", "'re", "'ve", "'m", "'ll", "'d"};
    size_t p = 0;
    while (p < t.size()) {
        std::string piece;
        size_t q = p;
        if (starts(p, BOS) || starts(p, EOS)) {
            q = p + (starts(p, BOS) ? std::strlen(BOS) : std::strlen(EOS));
        } else {
            for (const char* c : contractions)
                if (starts(p, c)) {
                    q = p + std::strlen(c);
                    break;
                }
            if (q == p) {
                if (is_letter(t[p])) {
                    while (q < t.size() && is_letter(t[q])) ++q;
                } else if (is_number(t[p])) {
                    q = p + 1;
                } else if (!is_space(t[p])) {
                    while (q < t.size() && !is_space(t[q]) && !is_letter(t[q]) && !is_number(t[q])) ++q;
                }
            }
        }
        if (q == p) {  // whitespace: removed
            ++p;
            continue;
        }
        for (size_t k = p; k < q; ++k) piece += encode_utf8(t[k]);
        out.push_back(piece);
        p = q;
    }
    return out;
}

// GPT-2's bytes_to_unicode: every byte as one printable character
static const std::vector<std::string>& byte_chars() {
    static std::vector<std::string> table = [] {
        std::vector<int> bs, cs;
        for (int b = '!'; b <= '~'; ++b) bs.push_back(b);
        for (int b = 0xA1; b <= 0xAC; ++b) bs.push_back(b);
        for (int b = 0xAE; b <= 0xFF; ++b) bs.push_back(b);
        cs = bs;
        int n = 0;
        for (int b = 0; b < 256; ++b)
            if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
                bs.push_back(b);
                cs.push_back(256 + n++);
            }
        std::vector<std::string> t(256);
        for (size_t i = 0; i < bs.size(); ++i) t[(size_t)bs[i]] = encode_utf8(cs[i]);
        return t;
    }();
    return table;
}

std::unique_ptr<Tokenizer> Tokenizer::from_dir(const std::string& dir, int max_length) {
    std::string tj = dir + "/tokenizer.json";
    if (!is_file(tj)) fail(SEGVOL_ERR_ARTIFACTS, dir + " holds no tokenizer.json; export the artifacts again");
    json t = read_json(tj);
    auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
    try {
        const json& m = t.at("model");
        if (m.value("type", std::string("BPE")) != "BPE") fail(SEGVOL_ERR_ARTIFACTS, tj + ": not a BPE tokenizer");
        for (auto it = m.at("vocab").begin(); it != m.at("vocab").end(); ++it) tok->vocab_[it.key()] = it.value().get<long long>();
        int rank = 0;
        for (const json& mg : m.at("merges")) {
            std::string a, b;
            if (mg.is_array()) {
                a = mg.at(0).get<std::string>();
                b = mg.at(1).get<std::string>();
            } else {
                std::string s = mg.get<std::string>();
                size_t sp = s.find(' ');
                a = s.substr(0, sp);
                b = s.substr(sp + 1);
            }
            tok->ranks_.emplace(std::make_pair(a, b), rank++);
        }
        if (m.contains("unk_token") && m["unk_token"].is_string()) tok->unk_ = m["unk_token"].get<std::string>();
        for (const json& a : t.value("added_tokens", json::array()))
            tok->vocab_[a.at("content").get<std::string>()] = a.at("id").get<long long>();
    } catch (const json::exception& e) {
        fail(SEGVOL_ERR_ARTIFACTS, tj + " is not a tokenizer file (" + std::string(e.what()).substr(0, 120) + ")");
    }
    // special-token names from the side files (special_tokens_map.json wins), ids from the vocabulary
    std::string names[3] = {BOS, EOS, ""};
    const char* keys[3] = {"bos_token", "eos_token", "pad_token"};
    for (const char* side : {"tokenizer_config.json", "special_tokens_map.json"}) {
        std::string p = dir + "/" + side;
        if (!is_file(p)) continue;
        json s = read_json(p);
        for (int k = 0; k < 3; ++k) {
            if (!s.contains(keys[k])) continue;
            const json& v = s[keys[k]];
            if (v.is_string()) names[k] = v.get<std::string>();
            else if (v.is_object() && v.contains("content") && v["content"].is_string()) names[k] = v["content"].get<std::string>();
        }
        if (max_length <= 0 && s.contains("model_max_length") && s["model_max_length"].is_number_integer()) {
            long long ml = s["model_max_length"].get<long long>();
            if (ml >= 2 && ml <= 100000) max_length = (int)ml;
        }
    }
    if (names[2].empty()) names[2] = names[1];
    long long* ids[3] = {&tok->bos_, &tok->eos_, &tok->pad_};
    for (int k = 0; k < 3; ++k) {
        auto it = tok->vocab_.find(names[k]);
        if (it == tok->vocab_.end()) fail(SEGVOL_ERR_ARTIFACTS, tj + ": tokenizer has no token '" + names[k] + "'");
        *ids[k] = it->second;
    }
    tok->max_length_ = max_length > 0 ? max_length : 77;
    return tok;
}

std::vector<std::string> Tokenizer::bpe(const std::string& word) const {
    auto cached = cache_.find(word);
    if (cached != cache_.end()) return cached->second;
    std::vector<std::string> sym;
    for (unsigned char b : word) sym.push_back(byte_chars()[b]);
    sym.back() += SUFFIX;
    while (sym.size() > 1) {
        int best = INT_MAX;
        size_t at = 0;
        for (size_t i = 0; i + 1 < sym.size(); ++i) {
            auto r = ranks_.find({sym[i], sym[i + 1]});
            if (r != ranks_.end() && r->second < best) {
                best = r->second;
                at = i;
            }
        }
        if (best == INT_MAX) break;
        const std::string a = sym[at], b = sym[at + 1];
        std::vector<std::string> next;
        for (size_t i = 0; i < sym.size();) {
            if (i + 1 < sym.size() && sym[i] == a && sym[i + 1] == b) {
                next.push_back(a + b);
                i += 2;
            } else {
                next.push_back(sym[i++]);
            }
        }
        sym.swap(next);
    }
    cache_[word] = sym;
    return sym;
}

std::vector<long long> Tokenizer::ids(const std::string& text) const {
    std::vector<long long> out{bos_};
    for (const std::string& piece : split(normalize(text))) {
        if (piece == BOS || piece == EOS) {  // special tokens in the text stay whole
            out.push_back(vocab_.at(piece));
            continue;
        }
        for (const std::string& s : bpe(piece)) {
            auto it = vocab_.find(s);
            if (it != vocab_.end()) out.push_back(it->second);
            else if (!unk_.empty() && vocab_.count(unk_)) out.push_back(vocab_.at(unk_));
            // no unk token: the symbol is dropped, as the BPE model does
        }
    }
    out.push_back(eos_);
    return out;
}

std::vector<long long> Tokenizer::encode(const std::string& text) const {
    std::vector<long long> all = ids(text);
    std::vector<long long> out((size_t)max_length_, pad_);
    size_t body = std::min(all.size() - 2, (size_t)max_length_ - 2);
    out[0] = bos_;
    for (size_t i = 0; i < body; ++i) out[1 + i] = all[1 + i];
    out[1 + body] = eos_;
    return out;
}

}  // namespace segvol::detail
