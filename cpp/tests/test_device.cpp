// The device seam (device.hpp) and the per-handle thread pool (thread_pool.hpp).
// Host buffers, views and the pool run everywhere. CUDA: where no GPU (or no CUDA
// runtime) is present - this project's build machine - only the refusal runs
// (Stream::cuda throws one line); on a GPU machine the stream, a device buffer and
// its copy to the host run (never run by this project so far).
#include <atomic>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "device.hpp"
#include "thread_pool.hpp"

using namespace segvol::detail;

static int failures = 0;
#define CHECK(cond)                                                         \
    do {                                                                    \
        if (!(cond)) {                                                      \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                     \
        }                                                                   \
    } while (0)

static void host_buffers() {
    Buffer b = Buffer::host({2, 3, 4}, ElementType::F32);
    CHECK(b.view().count() == 24 && b.view().bytes() == 96 && b.view().where == Where::Host);
    CHECK(((uintptr_t)b.as<void>() % 64) == 0);
    for (int i = 0; i < 24; ++i) b.as<float>()[i] = (float)i;
    b.reshape({1, 24});
    CHECK(b.shape() == (std::vector<int64_t>{1, 24}));
    bool refused = false;
    try {
        b.reshape({5, 24});
    } catch (const std::length_error&) {
        refused = true;
    }
    CHECK(refused);
    Buffer c = b.to_host();
    CHECK(std::memcmp(c.as<void>(), b.as<void>(), 96) == 0 && c.as<void>() != b.as<void>());
    Buffer moved = std::move(c);
    CHECK(c.empty() && !moved.empty());
    TensorView v = host_view(moved.as<float>(), {24}, ElementType::F32);
    CHECK(v.as<float>()[23] == 23.0f);
    bool overflow = false;
    try {
        TensorView huge = host_view(nullptr, {1ll << 62, 1ll << 62}, ElementType::F32);
        (void)huge.bytes();
    } catch (const std::overflow_error&) {
        overflow = true;
    }
    CHECK(overflow);
}

static void cuda_stream() {
    try {
        Stream s = Stream::cuda(0);
        Buffer d = Buffer::cuda({16}, ElementType::F32, s);
        Buffer h = d.to_host();
        s.synchronize();
        CHECK(h.view().count() == 16 && d.view().where == Where::Cuda);
        std::puts("device: CUDA stream, buffer and copy ran on a GPU");
    } catch (const std::runtime_error& e) {
        std::string msg = e.what();
        CHECK(!msg.empty() && msg.find('\n') == std::string::npos);
        std::printf("device: no GPU here, CUDA refused in one line: %s\n", msg.c_str());
    }
}

static void pools() {
    ThreadPool pool(3);
    CHECK(current_pool() == nullptr);
    {
        PoolScope scope(&pool);
        CHECK(current_pool() == &pool);
        for (int launch = 0; launch < 200; ++launch) {
            std::atomic<int> seen{0};
            auto one = [](void* ctx, int b, int grid) { static_cast<std::atomic<int>*>(ctx)->fetch_add(1 << (b * 4 + grid)); };
            int grid = 1 + launch % 3;
            pool.run(grid, one, &seen);
            int want = 0;
            for (int b = 0; b < grid; ++b) want += 1 << (b * 4 + grid);
            CHECK(seen.load() == want);
        }
    }
    CHECK(current_pool() == nullptr);
    // two pools in two threads: each launch on its own pool, with its own size
    std::atomic<int> bad{0};
    auto work = [&](int threads) {
        ThreadPool p(threads);
        PoolScope scope(&p);
        for (int i = 0; i < 100; ++i) {
            std::atomic<int> n{0};
            p.run(threads, [](void* c, int, int) { static_cast<std::atomic<int>*>(c)->fetch_add(1); }, &n);
            if (n.load() != threads || current_pool()->threads() != threads) ++bad;
        }
    };
    std::thread a(work, 1), b(work, 2);
    a.join();
    b.join();
    CHECK(bad.load() == 0);
}

int main() {
    host_buffers();
    cuda_stream();
    pools();
    if (failures) return 1;
    std::puts("device seam and thread pool: ok");
    return 0;
}
