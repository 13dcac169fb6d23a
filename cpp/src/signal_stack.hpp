// The calling thread's alternate signal stack, kept as it was across calls into
// OpenVINO (as segvol_rt/backends/signal_stack.py): OpenVINO's CPU plugin gives
// the thread that creates it a ~11 KiB alternate stack of its own, replacing the
// one the application set (a crash handler's, say), and frees it with the plugin;
// a signal handled there afterwards runs on OpenVINO's stack, or on freed memory.
// POSIX only (elsewhere the guard does nothing).
#pragma once

#if defined(__unix__) || defined(__APPLE__)
#define SEGVOL_RT_HAS_SIGALTSTACK 1
#include <signal.h>
#endif

namespace segvol::detail {

// Saves this thread's alternate signal stack; gives it back on destruction if a call changed it.
class KeptSignalStack {
   public:
    KeptSignalStack();
    ~KeptSignalStack();
    KeptSignalStack(const KeptSignalStack&) = delete;
    KeptSignalStack& operator=(const KeptSignalStack&) = delete;

   private:
#ifdef SEGVOL_RT_HAS_SIGALTSTACK
    stack_t before_{};
    bool saved_ = false;
#endif
};

#ifdef SEGVOL_RT_HAS_SIGALTSTACK
inline KeptSignalStack::KeptSignalStack() { saved_ = sigaltstack(nullptr, &before_) == 0; }

inline KeptSignalStack::~KeptSignalStack() {
    stack_t now;
    if (!saved_ || sigaltstack(nullptr, &now) != 0) return;
    // SS_ONSTACK is a report, not a request: a thread is never on its alternate stack here
    const int flags = before_.ss_flags & ~SS_ONSTACK;
    if (now.ss_sp == before_.ss_sp && now.ss_size == before_.ss_size && (now.ss_flags & ~SS_ONSTACK) == flags) return;
    stack_t back = before_;
    back.ss_flags = flags;
    sigaltstack(&back, nullptr);
}
#else
inline KeptSignalStack::KeptSignalStack() = default;
inline KeptSignalStack::~KeptSignalStack() = default;
#endif

}  // namespace segvol::detail
