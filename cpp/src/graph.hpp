// A compiled graph of a backend, through the device seam (device.hpp): inputs are
// TensorViews (host or CUDA memory), output 0 is written into memory the caller
// owns or returned as a Buffer. The runtime's encode / decode / text calls on it are
// the C++ counterpart of Python's Graphs protocol (segvol_rt.pipeline.zoom.Graphs:
// encode_image (B, 1, D, H, W) -> (B, C, d, h, w); decode -> (B, 1, 4d, 4h, 4w)).
//
// Backends: ONNX Runtime (ort.hpp) and OpenVINO (openvino.hpp), both loaded at run
// time; the runtime picks one at load (segvol_load's backend option).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "device.hpp"

namespace segvol::detail {

struct Feed {
    std::string name;
    TensorView value;
};

struct GraphOptions {
    int threads = 0;  // intra-op threads, 0 = all cores of this process
    bool cuda = false;
    int device_id = 0;
    std::string precision = "fp32";  // OpenVINO's inference precision (fp32 or bf16)
};

class Graph {
   public:
    virtual ~Graph() = default;
    virtual const std::vector<std::string>& input_names() const = 0;
    virtual const std::vector<std::string>& output_names() const = 0;
    // Runs and writes output 0 into `out`: preallocated by the caller, exactly the output's
    // shape (a mismatch is an error of the backend, nothing is resized). No copy of the
    // output is made where the backend can write into the caller's memory (ORT: a Run into
    // caller-owned Ort::Values; OpenVINO: the request's output tensor over `out`).
    virtual void run_into(const std::vector<Feed>& inputs, const TensorView& out) = 0;
    // Runs and returns output 0 in a new host buffer (when its shape is not known yet).
    virtual Buffer run(const std::vector<Feed>& inputs) = 0;
    // What ran (e.g. OpenVINO's compiled inference precision); "" when nothing to say.
    virtual std::string ran() const { return ""; }
    // Whether opening it compiled the graph for this machine (OpenVINO without a cached blob).
    virtual bool compiled_now() const { return false; }
};

// What the pipeline needs of a backend, as Python's Graphs protocol
// (segvol_rt.pipeline.zoom.Graphs): the image encoder and the prompt decoder, fed by the
// spec's input names (in the spec's order); shapes as segvol_rt.io.spec. Each call writes
// into `out` (preallocated, the output's shape) or returns a new host buffer.
class Graphs {
   public:
    Graphs(std::unique_ptr<Graph> encoder, std::vector<std::string> encoder_inputs, std::unique_ptr<Graph> decoder,
           std::vector<std::string> decoder_inputs);
    // image (B, 1, D, H, W) float32 -> embedding (B, C, d, h, w)
    void encode_image(const TensorView& image, const TensorView& out) { encoder_->run_into({{enc_in_[0], image}}, out); }
    Buffer encode_image(const TensorView& image) { return encoder_->run({{enc_in_[0], image}}); }
    // embedding (B, C, d, h, w), coords (B, N, 3) float32, labels (B, N) int32, text (B, C)
    // -> low-res logits (B, 1, 4d, 4h, 4w)
    void decode(const TensorView& embedding, const TensorView& coords, const TensorView& labels, const TensorView& text,
                const TensorView& out) {
        decoder_->run_into(decoder_feeds(embedding, coords, labels, text), out);
    }
    Buffer decode(const TensorView& embedding, const TensorView& coords, const TensorView& labels, const TensorView& text) {
        return decoder_->run(decoder_feeds(embedding, coords, labels, text));
    }

   private:
    std::vector<Feed> decoder_feeds(const TensorView& embedding, const TensorView& coords, const TensorView& labels,
                                    const TensorView& text) const {
        return {{dec_in_[0], embedding}, {dec_in_[1], coords}, {dec_in_[2], labels}, {dec_in_[3], text}};
    }
    std::unique_ptr<Graph> encoder_, decoder_;
    std::vector<std::string> enc_in_, dec_in_;
};

}  // namespace segvol::detail
