#pragma once
// What the fork-join combinators (when_all, when_any) need from the cpu_pool
// they run on: the calling worker's work-stealing deque.

#include <hop/detail/executor.hpp>

namespace hop::detail {

/// The work-stealing deque of one cpu_pool worker (opaque).
struct fork_point;

/// The deque of the pool worker running on this thread, when the work it
/// runs belongs to that pool; null anywhere else (an io_loop, sync_wait, a
/// plain thread), where the combinators do not fork.
fork_point* current_fork_point() noexcept;

/// Pushes the non-null items of items[0, n) on the worker's deque (oldest
/// first), where idle workers may steal them, and wakes a parked worker if
/// none is looking for work. Owner thread only.
/// @throws std::bad_alloc if the deque must grow and cannot (then none was
///         pushed).
void fork_push(fork_point& at, work_item* const* items, std::size_t n);

/// Takes `w` back if it is still the newest item on the deque (nobody stole
/// it, nothing was pushed above it); the caller then runs it. Owner thread
/// only.
bool fork_take_back(fork_point& at, work_item* w) noexcept;

}  // namespace hop::detail
