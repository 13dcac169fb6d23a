#include "device.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "graph.hpp"
#include "sizes.hpp"

namespace segvol::detail {

size_t element_size(ElementType t) {
    switch (t) {
        case ElementType::F32: return 4;
        case ElementType::I32: return 4;
        case ElementType::I64: return 8;
        case ElementType::U8: return 1;
    }
    return 1;
}

const char* element_name(ElementType t) {
    switch (t) {
        case ElementType::F32: return "float32";
        case ElementType::I32: return "int32";
        case ElementType::I64: return "int64";
        case ElementType::U8: return "uint8";
    }
    return "?";
}

size_t TensorView::count() const {
    size_t n = 1;
    for (int64_t d : shape) {
        if (d < 0) throw std::invalid_argument("negative dimension in a tensor shape");
        if (d != 0 && n > SIZE_MAX / (size_t)d) throw std::overflow_error("tensor size overflows");
        n *= (size_t)d;
    }
    return n;
}

Graphs::Graphs(std::unique_ptr<Graph> encoder, std::vector<std::string> encoder_inputs, std::unique_ptr<Graph> decoder,
               std::vector<std::string> decoder_inputs)
    : encoder_(std::move(encoder)), decoder_(std::move(decoder)), enc_in_(std::move(encoder_inputs)), dec_in_(std::move(decoder_inputs)) {
    if (enc_in_.size() != 1 || dec_in_.size() != 4)
        throw std::invalid_argument("the spec's image encoder takes 1 input and its prompt decoder 4");
}

TensorView host_view(const void* data, std::vector<int64_t> shape, ElementType type) {
    TensorView v;
    v.data = const_cast<void*>(data);
    v.shape = std::move(shape);
    v.type = type;
    return v;
}

// -- the CUDA runtime, loaded at run time -------------------------------------------------

namespace {

// the few CUDA runtime calls the seam makes (C ABI of libcudart; cudaError_t is an int, 0 = success)
struct Cudart {
    int (*set_device)(int) = nullptr;
    int (*stream_create)(void**, unsigned) = nullptr;
    int (*stream_destroy)(void*) = nullptr;
    int (*stream_sync)(void*) = nullptr;
    int (*malloc_async)(void**, size_t, void*) = nullptr;
    int (*free_async)(void*, void*) = nullptr;
    int (*memcpy_async)(void*, const void*, size_t, int, void*) = nullptr;
    const char* (*error_string)(int) = nullptr;
};

constexpr unsigned STREAM_NON_BLOCKING = 0x01;  // cudaStreamNonBlocking
constexpr int MEMCPY_DEVICE_TO_HOST = 2;        // cudaMemcpyDeviceToHost
constexpr int MEMCPY_DEFAULT = 4;               // cudaMemcpyDefault (unified addressing tells the direction)

const Cudart& cudart() {
    static std::once_flag once;
    static Cudart api;
    static std::string why;
    std::call_once(once, [] {
        const char* env = std::getenv("SEGVOL_RT_CUDART_LIBRARY");
        std::vector<std::string> names = env && *env ? std::vector<std::string>{env}
                                                     : std::vector<std::string>{"libcudart.so.13", "libcudart.so.12", "libcudart.so"};
        void* h = nullptr;
        for (const std::string& n : names)
            if ((h = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL))) break;
        if (!h) {
            why = "cannot load the CUDA runtime (libcudart.so.13 or .12; set SEGVOL_RT_CUDART_LIBRARY)";
            return;
        }
        auto sym = [&](const char* name) {
            void* p = dlsym(h, name);
            if (!p) why = std::string("the CUDA runtime has no ") + name;
            return p;
        };
        api.set_device = reinterpret_cast<int (*)(int)>(sym("cudaSetDevice"));
        api.stream_create = reinterpret_cast<int (*)(void**, unsigned)>(sym("cudaStreamCreateWithFlags"));
        api.stream_destroy = reinterpret_cast<int (*)(void*)>(sym("cudaStreamDestroy"));
        api.stream_sync = reinterpret_cast<int (*)(void*)>(sym("cudaStreamSynchronize"));
        api.malloc_async = reinterpret_cast<int (*)(void**, size_t, void*)>(sym("cudaMallocAsync"));
        api.free_async = reinterpret_cast<int (*)(void*, void*)>(sym("cudaFreeAsync"));
        api.memcpy_async = reinterpret_cast<int (*)(void*, const void*, size_t, int, void*)>(sym("cudaMemcpyAsync"));
        api.error_string = reinterpret_cast<const char* (*)(int)>(sym("cudaGetErrorString"));
    });
    if (!why.empty()) throw std::runtime_error(why);
    return api;
}

void check(int err, const char* what) {
    if (err != 0)
        throw std::runtime_error(std::string(what) + " failed: " + (cudart().error_string ? cudart().error_string(err) : "CUDA error") +
                                 " (" + std::to_string(err) + ")");
}

}  // namespace

// -- Stream ----------------------------------------------------------------------------------

Stream Stream::cuda(int device) {
    const Cudart& c = cudart();
    check(c.set_device(device), "cudaSetDevice");
    Stream s;
    check(c.stream_create(&s.handle_, STREAM_NON_BLOCKING), "cudaStreamCreateWithFlags");
    s.device_ = device;
    return s;
}

Stream::~Stream() {
    if (handle_) cudart().stream_destroy(handle_);
}

Stream::Stream(Stream&& o) noexcept : handle_(o.handle_), device_(o.device_) { o.handle_ = nullptr; }

Stream& Stream::operator=(Stream&& o) noexcept {
    if (this != &o) {
        if (handle_) cudart().stream_destroy(handle_);
        handle_ = o.handle_;
        device_ = o.device_;
        o.handle_ = nullptr;
    }
    return *this;
}

void Stream::synchronize() const {
    if (handle_) check(cudart().stream_sync(handle_), "cudaStreamSynchronize");
}

// -- Buffer ----------------------------------------------------------------------------------

Buffer Buffer::host(std::vector<int64_t> shape, ElementType type) {
    Buffer b;
    b.view_.shape = std::move(shape);
    b.view_.type = type;
    size_t bytes = b.view_.bytes();
    // 64-byte aligned (what ONNX Runtime and OpenVINO prefer for their inputs)
    size_t rounded = (std::max<size_t>(bytes, 1) + 63) / 64 * 64;
    b.view_.data = std::aligned_alloc(64, rounded);
    if (!b.view_.data) throw std::bad_alloc();
    b.capacity_ = rounded;
    return b;
}

Buffer Buffer::cuda(std::vector<int64_t> shape, ElementType type, const Stream& stream) {
    if (stream.where() != Where::Cuda) throw std::invalid_argument("Buffer::cuda needs a CUDA stream");
    return cuda_on(std::move(shape), type, stream.device(), stream.handle());
}

Buffer Buffer::cuda_on(std::vector<int64_t> shape, ElementType type, int device, void* stream) {
    Buffer b;
    b.view_.shape = std::move(shape);
    b.view_.type = type;
    b.view_.where = Where::Cuda;
    b.view_.device = device;
    b.view_.stream = stream;
    size_t bytes = std::max<size_t>(b.view_.bytes(), 1);
    check(cudart().malloc_async(&b.view_.data, bytes, stream), "cudaMallocAsync");
    b.capacity_ = bytes;
    return b;
}

void Buffer::release() {
    if (!view_.data) return;
    if (view_.where == Where::Host) std::free(view_.data);
    else cudart().free_async(view_.data, view_.stream);
    view_.data = nullptr;
    capacity_ = 0;
}

Buffer::~Buffer() { release(); }

Buffer::Buffer(Buffer&& o) noexcept : view_(std::move(o.view_)), capacity_(o.capacity_) {
    o.view_.data = nullptr;
    o.capacity_ = 0;
}

Buffer& Buffer::operator=(Buffer&& o) noexcept {
    if (this != &o) {
        release();
        view_ = std::move(o.view_);
        capacity_ = o.capacity_;
        o.view_.data = nullptr;
        o.capacity_ = 0;
    }
    return *this;
}

void Buffer::reshape(std::vector<int64_t> shape) {
    TensorView v = view_;
    v.shape = std::move(shape);
    if (v.bytes() > capacity_) throw std::length_error("Buffer::reshape: the new shape needs more memory than the buffer holds");
    view_.shape = std::move(v.shape);
}

Buffer Buffer::to_host() const {
    Buffer h = host(view_.shape, view_.type);
    if (view_.where == Where::Host) {
        std::memcpy(h.view_.data, view_.data, view_.bytes());
    } else {
        const Cudart& c = cudart();
        check(c.memcpy_async(h.view_.data, view_.data, view_.bytes(), MEMCPY_DEVICE_TO_HOST, view_.stream), "cudaMemcpyAsync");
        check(c.stream_sync(view_.stream), "cudaStreamSynchronize");
    }
    return h;
}

void copy_bytes(void* dst, Where dst_where, const void* src, Where src_where, size_t bytes, void* stream) {
    if (dst_where == Where::Host && src_where == Where::Host) {
        std::memcpy(dst, src, bytes);
        return;
    }
    const Cudart& c = cudart();
    check(c.memcpy_async(dst, src, bytes, MEMCPY_DEFAULT, stream), "cudaMemcpyAsync");
    check(c.stream_sync(stream), "cudaStreamSynchronize");
}

Buffer buffer_like(const TensorView& like, std::vector<int64_t> shape) {
    if (like.where == Where::Host) return Buffer::host(std::move(shape), like.type);
    return Buffer::cuda_on(std::move(shape), like.type, like.device, like.stream);
}

}  // namespace segvol::detail
