// The device seam: where a tensor's memory lives, and the types the graphs and
// (later) a device pipeline exchange.
//
// TensorView: a non-owning view (pointer, shape, element type, host or CUDA
// device, the stream its producer used). Buffer: owned memory of one place;
// host buffers are plain aligned memory, CUDA buffers come from cudaMallocAsync
// on a Stream. Stream: an owned CUDA stream (RAII); the host "stream" is none.
//
// The CUDA runtime is loaded at run time (dlopen libcudart.so.<major>), as ONNX
// Runtime is (ort.hpp): the SDK links no CUDA library and builds where none is
// installed. What ran where: the host path (every golden test goes through
// Buffer and TensorView); on this project's build machine (no GPU) only the CUDA
// loader's failure path runs (tests/cpp test_device_seam); allocation, copies and
// streams on a GPU have not run.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace segvol::detail {

enum class Where { Host, Cuda };
enum class ElementType { F32, I32, I64, U8 };

size_t element_size(ElementType t);
const char* element_name(ElementType t);

// An owned CUDA stream (nullptr handle: the host, where work is synchronous).
class Stream {
   public:
    Stream() = default;                 // the host: no stream
    static Stream cuda(int device);     // a new non-blocking stream on `device`; throws std::runtime_error
    ~Stream();
    Stream(Stream&& o) noexcept;
    Stream& operator=(Stream&& o) noexcept;
    Stream(const Stream&) = delete;
    Stream& operator=(const Stream&) = delete;
    void* handle() const { return handle_; }  // cudaStream_t
    int device() const { return device_; }
    Where where() const { return handle_ ? Where::Cuda : Where::Host; }
    void synchronize() const;  // waits for the stream's work (no-op on the host)

   private:
    void* handle_ = nullptr;
    int device_ = 0;
};

// A view of memory owned elsewhere; C order.
struct TensorView {
    void* data = nullptr;
    std::vector<int64_t> shape;
    ElementType type = ElementType::F32;
    Where where = Where::Host;
    int device = 0;          // the CUDA device (Where::Cuda)
    void* stream = nullptr;  // cudaStream_t the producer used (nullptr: host / default)

    size_t count() const;  // elements (checked for overflow)
    size_t bytes() const { return count() * element_size(type); }
    template <typename T>
    T* as() const { return static_cast<T*>(data); }
};

// Owned memory of one place; moves, never copies implicitly.
class Buffer {
   public:
    Buffer() = default;
    static Buffer host(std::vector<int64_t> shape, ElementType type);
    static Buffer cuda(std::vector<int64_t> shape, ElementType type, const Stream& stream);  // throws std::runtime_error
    // on `device`, allocated and freed in order on `stream` (a cudaStream_t some Stream owns)
    static Buffer cuda_on(std::vector<int64_t> shape, ElementType type, int device, void* stream);
    ~Buffer();
    Buffer(Buffer&& o) noexcept;
    Buffer& operator=(Buffer&& o) noexcept;
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;

    bool empty() const { return view_.data == nullptr; }
    const TensorView& view() const { return view_; }
    const std::vector<int64_t>& shape() const { return view_.shape; }
    template <typename T>
    T* as() const { return view_.as<T>(); }
    // Host buffers: a new shape of the same element count or fewer (no reallocation).
    void reshape(std::vector<int64_t> shape);
    // A host copy of this buffer (synchronous).
    Buffer to_host() const;

   private:
    void release();
    TensorView view_;
    size_t capacity_ = 0;  // bytes allocated
};

// Copies `bytes` from src to dst, each on the host or a CUDA device (cudaMemcpyAsync on
// `stream`, then waits for it); host to host is a memcpy. Throws std::runtime_error.
void copy_bytes(void* dst, Where dst_where, const void* src, Where src_where, size_t bytes, void* stream);

// A new buffer of `shape` where `like` lives (host, or like's CUDA device and stream).
Buffer buffer_like(const TensorView& like, std::vector<int64_t> shape);

// A view of a host array (no ownership).
TensorView host_view(const void* data, std::vector<int64_t> shape, ElementType type);

}  // namespace segvol::detail
