// An artifacts directory (segvol_rt/io/artifacts.py): manifest.json, the sha256
// of every file it lists (OpenSSL libcrypto), the graph specs' batch ranges
// and the text table (text_table.npz read with libzip).
#pragma once

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace segvol::detail {

struct GraphEntry {
    std::string file;  // relative to the root
    std::string sha256;
    std::array<int, 3> batch{1, 1, 1};   // spec range of B (min, opt, max)
    std::array<int, 3> tokens{1, 1, 1};  // prompt decoder: range of N
    std::vector<std::string> inputs;     // input names in spec order
    std::vector<std::string> outputs;    // output names in spec order
};

struct Artifacts {
    std::string root;
    std::array<long long, 3> spatial_size{0, 0, 0};
    int embed_dim = 0;
    std::string prompt_template;
    std::map<std::string, GraphEntry> graphs;  // image_encoder, text_encoder, prompt_decoder
    // (relative path, sha256) of what the runtime reads: the graphs at its precision, the tokenizer
    // and the text table (segvol_rt.backends.entries' `reads` and Artifacts.support_files)
    std::vector<std::pair<std::string, std::string>> files;
    std::string tokenizer_dir;
    std::string text_table_file;
    long long text_table_count = -1;
    // axis codes of the voxel order the model was trained on (the manifest's voxel_orientation); none: stored order
    std::optional<std::string> voxel_orientation;

    // Reads and checks the manifest; precision "fp32" or "fp16" (fp16 graphs must be listed).
    static Artifacts load(const std::string& root, const std::string& precision);
    void verify() const;  // sha256 of every file of `files`
    // names and (n, embed_dim) float32 rows
    void text_table(std::vector<std::string>* names, std::vector<float>* rows) const;
    std::string path(const std::string& rel) const { return root + "/" + rel; }
};

std::string sha256_file(const std::string& path);

}  // namespace segvol::detail
