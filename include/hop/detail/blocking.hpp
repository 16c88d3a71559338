#pragma once
// before_blocking(): called by every blocking wait hop offers (future::get,
// wait and wait_for, hop::wait, as_completed's blocking loop, sync_wait,
// the joins of io_pool and cpu_pool) just before the calling thread may
// block. On a thread inside an io_loop's turn it sends the wakes that the
// loop's handlers left for the turn's next submit (lib/loop_core.hpp):
// the thread may be about to wait for one of the loops they wake.

namespace hop::detail {

/// Sends the calling thread's loop's deferred wakes of other loops, if it
/// runs one and owes any. Cheap otherwise (a thread-local read). Never
/// blocks, never throws.
void before_blocking() noexcept;

}  // namespace hop::detail
