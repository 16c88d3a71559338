#pragma once
// Private: the io_uring backend's interface for IO operations. An operation
// lives in the awaiting coroutine's frame; its address is the SQE's
// user_data, so nothing is allocated per operation.

#include "../loop_core.hpp"

#include <liburing.h>

namespace hop::detail {

/// Base of every io_uring operation state.
struct uring_op {
    /// Called on the loop thread with the CQE's res and flags.
    void (*complete)(uring_op*, int res, unsigned flags) noexcept = nullptr;
};

class uring_backend;

/// The io_uring backend of `core`, or null if the loop runs another backend.
uring_backend* uring_of(loop_core& core) noexcept;

/// A free SQE (submitting the queue first if it is full). Loop thread.
io_uring_sqe* uring_get_sqe(uring_backend& b);
/// Counts `op` as in flight and tags `sqe` with it. Loop thread.
void uring_track(uring_backend& b, io_uring_sqe* sqe, uring_op* op) noexcept;
/// Queues an IORING_OP_ASYNC_CANCEL for `op`. Loop thread.
void uring_cancel(uring_backend& b, uring_op* op);

}  // namespace hop::detail
