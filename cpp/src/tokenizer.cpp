#include "tokenizer.hpp"

#include "errors.hpp"

namespace segvol {

std::unique_ptr<Tokenizer> Tokenizer::from_dir(const std::string& dir, int) {
    fail(SEGVOL_ERR_INVALID_ARGUMENT, "free-phrase text prompts are not supported yet (" + dir + "); use a name from the text table");
}
std::vector<long long> Tokenizer::ids(const std::string&) const { return {}; }
std::vector<long long> Tokenizer::encode(const std::string&) const { return {}; }

}  // namespace segvol
