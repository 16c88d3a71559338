#pragma once
/// @file
/// hop::run_blocking — blocking calls off the loop and off the CPU pool.
/// (hop::file is not available yet.)

#include <hop/detail/executor.hpp>
#include <hop/detail/job.hpp>
#include <hop/future.hpp>

#include <type_traits>
#include <utility>

namespace hop {

namespace detail {
/// The elastic pool behind run_blocking: a thread per waiting call up to a
/// limit (256), idle threads exit after 10 s. Process-wide, never destroyed.
executor_base& blocking_executor();
}  // namespace detail

/// Runs `fn(args...)`, a call that blocks (a syscall, a C library, a file),
/// on the blocking pool, never on the io_loop or the CPU pool, and returns
/// its future: `co_await hop::run_blocking(fn)` resumes the caller on its own
/// executor. cancel() drops the call if it has not started; a call already
/// running runs to its end.
/// @code
/// auto text = co_await hop::run_blocking([&] { return read_whole_file(path); });
/// @endcode
template <class F, class... A>
auto run_blocking(F&& fn, A&&... args) {
    using R = std::invoke_result_t<std::decay_t<F>&, std::decay_t<A>...>;
    static_assert(!detail::is_task<R>::value, "hop::run_blocking takes a blocking function, not a coroutine");
    return detail::submit_to(detail::blocking_executor(), std::forward<F>(fn), std::forward<A>(args)...);
}

}  // namespace hop
