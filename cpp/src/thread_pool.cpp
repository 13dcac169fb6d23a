#include "thread_pool.hpp"

namespace segvol::detail {

static thread_local ThreadPool* t_pool = nullptr;

ThreadPool* current_pool() { return t_pool; }

PoolScope::PoolScope(ThreadPool* pool) : previous_(t_pool) { t_pool = pool; }
PoolScope::~PoolScope() { t_pool = previous_; }

ThreadPool::ThreadPool(int threads) : threads_(threads < 1 ? 1 : threads) {
    workers_.reserve((size_t)threads_ - 1);
    for (int id = 1; id < threads_; ++id) workers_.emplace_back([this, id] { work(id); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
    }
    start_.notify_all();
    for (std::thread& t : workers_) t.join();
}

void ThreadPool::work(int id) {
    unsigned long long seen = 0;
    for (;;) {
        int grid;
        void (*one)(void*, int, int);
        void* ctx;
        {
            std::unique_lock<std::mutex> lock(mu_);
            start_.wait(lock, [&] { return stop_ || generation_ != seen; });
            if (stop_) return;
            seen = generation_;
            grid = grid_;
            one = one_;
            ctx = ctx_;
        }
        if (id < grid) one(ctx, id, grid);
        {
            std::lock_guard<std::mutex> lock(mu_);
            if (--pending_ == 0) done_.notify_one();
        }
    }
}

void ThreadPool::run(int grid, void (*one)(void*, int, int), void* ctx) {
    if (grid <= 1 || workers_.empty()) {
        one(ctx, 0, 1);
        return;
    }
    if (grid > threads_) grid = threads_;
    {
        std::lock_guard<std::mutex> lock(mu_);
        grid_ = grid;
        one_ = one;
        ctx_ = ctx;
        pending_ = (int)workers_.size();  // every worker acknowledges every launch
        ++generation_;
    }
    start_.notify_all();
    one(ctx, 0, grid);
    std::unique_lock<std::mutex> lock(mu_);
    done_.wait(lock, [&] { return pending_ == 0; });
}

}  // namespace segvol::detail
