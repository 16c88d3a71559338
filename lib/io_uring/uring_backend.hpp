#pragma once
// Private: what every io_uring operation state starts with. An operation
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

}  // namespace hop::detail
