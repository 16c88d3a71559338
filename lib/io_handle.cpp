// io_handle: the fd, the loop it belongs to, and the rule that binds them
// (hop/detail/io_handle.hpp).

#include <hop/detail/io_handle.hpp>

#include "loop_core.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

namespace hop::detail {

#ifndef NDEBUG
void (*test_before_direct_close)() = nullptr;
#endif

io_handle::io_handle(int fd, fd_mode mode, io_loop& loop) noexcept
    : m_fd(fd),
      m_anchor(loop.anchor()),
      m_anchor_raw(m_anchor.get()),
      m_mode(mode),
      m_nonblocking(loop.core().backend().wants_nonblocking()) {}

io_loop& io_handle::loop_for(const char* what) const {
    if (fd() < 0) throw std::system_error(EBADF, std::generic_category(), std::string(what) + ": it is not open");
    io_loop* here = current_loop();
    if (m_anchor) {
        if (io_loop* mine = m_anchor->loop.load(std::memory_order_acquire)) {
            if (here == nullptr || here == mine) return *mine;
            throw std::logic_error(std::string(what) + ": it belongs to " + mine->describe() +
                                   ", but the awaiting coroutine runs on " + here->describe() +
                                   ". Use it from its own loop (co_await that loop's schedule() first), "
                                   "or make it on this one");
        }
        // Orphaned: its registration went with its loop (a close() that
        // marked the slot meanwhile keeps its mark).
        fd_registration* stale = m_reg.load(std::memory_order_acquire);
        if (stale != closed_registration()) m_reg.compare_exchange_strong(stale, nullptr, std::memory_order_acq_rel);
    }
    io_loop& target = here ? *here : default_loop();
    if (m_mode == fd_mode::as_backend_wants) {
        const bool want = target.core().backend().wants_nonblocking();
        if (want != m_nonblocking) {
            const int f = fd();
            const int fl = ::fcntl(f, F_GETFL);
            if (fl < 0 || ::fcntl(f, F_SETFL, want ? (fl | O_NONBLOCK) : (fl & ~O_NONBLOCK)) != 0) {
                throw std::system_error(errno, std::generic_category(),
                                        std::string(what) + " (fd " + std::to_string(f) + "): fcntl");
            }
            m_nonblocking = want;
        }
    }
    m_anchor = target.anchor();
    m_anchor_raw.store(m_anchor.get(), std::memory_order_release);
    return target;
}

void io_handle::close() noexcept {
    const int fd = m_fd.exchange(-1, std::memory_order_acq_rel);
    if (fd < 0) return;
    if (m_mode == fd_mode::left_alone) {
        // A file: no registration, never closed with an operation in flight.
        (void)::close(fd);
        return;
    }
    // The slot first (io_op.hpp): what it held says whether an operation
    // reached a loop. A loop that claimed it had published its anchor
    // before, so the anchor read after the exchange is that loop's.
    fd_registration* reg = m_reg.exchange(closed_registration(), std::memory_order_acq_rel);
    loop_anchor* anchor = m_anchor_raw.load(std::memory_order_acquire);
    io_loop* loop = anchor ? anchor->loop.load(std::memory_order_acquire) : nullptr;
    if (loop == nullptr || reg == nullptr) {
#ifndef NDEBUG
        if (test_before_direct_close) test_before_direct_close();
#endif
        // Never used on a live loop (or orphaned: the registration went
        // with the loop), and no operation can start on it now: close here.
        // Linux frees the descriptor even when close fails: never retry.
        (void)::close(fd);
        return;
    }
    if (loop->running_in_this_thread()) {
        loop->core().backend().close_fd(fd, real_registration(reg));
        return;
    }
    // Another thread: the loop ends what is in flight, then closes.
    io_close_fd(loop, fd, real_registration(reg));
}

}  // namespace hop::detail
