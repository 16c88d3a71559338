#pragma once
// Private: bounded spinning before a thread goes to sleep, and raw futex
// waits. A thread that ran out of work a moment ago is likely to get more
// within microseconds (a round trip to another executor); spinning that
// long saves the two context switches of a sleep and a wakeup. The budget
// is small and fixed, so an idle executor still sleeps almost at once.

#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>

namespace hop::detail {

/// How long a thread that ran out of work looks for more before it sleeps.
inline constexpr std::chrono::nanoseconds spin_budget{20'000};

inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

/// Calls `pred` until it returns true (then true) or the budget is spent
/// (then false).
template <class Pred>
bool spin_until(Pred&& pred, std::chrono::nanoseconds budget = spin_budget) {
    const auto deadline = std::chrono::steady_clock::now() + budget;
    for (unsigned i = 1;; ++i) {
        if (pred()) return true;
        // Yield rather than pause: on a machine with more runnable threads
        // than cores the spinner then gives its core to them (a spinning
        // worker must not slow the thread that feeds it); on an idle core
        // sched_yield returns at once and the spin costs only itself.
        ::sched_yield();
        if ((i & 3) == 0 && std::chrono::steady_clock::now() >= deadline) return false;
    }
}

/// A test-and-test-and-set lock for critical sections of a few instructions
/// that several threads hit at a high rate (the pool's injection queue): a
/// std::mutex there put the losers to sleep in the kernel and paid a futex
/// wake on every unlock. Waiters spin briefly, then yield the CPU so a
/// preempted holder can finish.
class spin_mutex {
public:
    void lock() noexcept {
        for (unsigned i = 0;; ++i) {
            if (try_lock()) return;
            if (i < 128) {
                cpu_relax();
            } else {
                ::sched_yield();
            }
        }
    }
    bool try_lock() noexcept {
        return !m_locked.load(std::memory_order_relaxed) && !m_locked.exchange(true, std::memory_order_acquire);
    }
    void unlock() noexcept { m_locked.store(false, std::memory_order_release); }

private:
    std::atomic<bool> m_locked{false};
};

/// Sleeps while `*word == expected` (returns at once otherwise, and may
/// return spuriously). Unlike std::atomic::wait it does not sched_yield first.
inline void futex_wait(std::atomic<std::uint32_t>& word, std::uint32_t expected) noexcept {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}

/// Wakes up to `n` threads sleeping in futex_wait on `word`.
inline void futex_wake(std::atomic<std::uint32_t>& word, int n = 1) noexcept {
    ::syscall(SYS_futex, reinterpret_cast<std::uint32_t*>(&word), FUTEX_WAKE_PRIVATE, n, nullptr, nullptr, 0);
}

}  // namespace hop::detail
