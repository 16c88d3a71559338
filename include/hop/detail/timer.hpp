#pragma once
// A timer entry that lives in the awaiting coroutine's frame; the loop keeps
// them in a binary heap (no allocation, no kernel object per timer).

#include <chrono>
#include <cstddef>
#include <cstdint>

namespace hop::detail {

using loop_clock = std::chrono::steady_clock;

struct timer_node {
    static constexpr std::size_t not_queued = static_cast<std::size_t>(-1);
    loop_clock::time_point deadline{};
    std::uint64_t seq = 0;  // FIFO among equal deadlines
    std::size_t heap_index = not_queued;
    /// Called on the loop thread when the deadline passes (`aborted` false),
    /// or when the loop is destroyed with the timer pending (`aborted` true).
    void (*fire)(timer_node*, bool aborted) noexcept = nullptr;
};

}  // namespace hop::detail
