// A persistent pool of host threads for the host kernels, one per runtime handle.
//
// The host build of kernels/*.cu runs a "launch" as blocks 0..T-1 of a T-block
// grid on T threads (kernels_host.hpp). Starting T-1 threads per launch cost
// tens of microseconds a launch, a follow-up prompt makes dozens of launches,
// and the thread count was the process-wide setting of the latest load. Here
// each runtime owns a pool (its `threads` option) whose workers sleep on a
// condition variable between launches; the runtime makes its pool the calling
// thread's current pool for the duration of each of its calls (PoolScope), so
// two handles in two threads each launch on their own pool with their own
// thread count. Without a current pool a launch runs on the calling thread.
#pragma once

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace segvol::detail {

class ThreadPool {
   public:
    // threads: the most blocks of one launch (the calling thread runs block 0), >= 1
    explicit ThreadPool(int threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;
    int threads() const { return threads_; }
    // Run one(ctx, b, grid) for b in 0..grid-1 (grid <= threads()); returns when all are done.
    // Not reentrant: one launch at a time per pool (a handle's calls are serialised).
    void run(int grid, void (*one)(void*, int, int), void* ctx);

   private:
    void work(int id);
    int threads_;
    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::condition_variable start_, done_;
    unsigned long long generation_ = 0;  // launches started
    int pending_ = 0;                    // workers still running the current launch
    int grid_ = 0;
    void (*one_)(void*, int, int) = nullptr;
    void* ctx_ = nullptr;
    bool stop_ = false;
};

// The calling thread's current pool (nullptr: launches run on the calling thread).
ThreadPool* current_pool();

// Makes `pool` the calling thread's current pool for the scope's lifetime.
class PoolScope {
   public:
    explicit PoolScope(ThreadPool* pool);
    ~PoolScope();
    PoolScope(const PoolScope&) = delete;
    PoolScope& operator=(const PoolScope&) = delete;

   private:
    ThreadPool* previous_;
};

}  // namespace segvol::detail
