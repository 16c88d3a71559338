#include <hop/task_group.hpp>

#include <hop/detail/assert.hpp>

namespace hop::detail {

namespace {
bool is_cancellation(const std::exception_ptr& e) noexcept {
    try {
        std::rethrow_exception(e);
    } catch (const cancelled_error&) {
        return true;
    } catch (...) {
        return false;
    }
}
}  // namespace

void group_state::child_ended(std::exception_ptr e) noexcept {
    if (e && !is_cancellation(e) && !m_failed.exchange(true, std::memory_order_acq_rel)) {
        m_error = std::move(e);
        request_stop();
    }
    // The last child out takes the waiter, if one is registered; the
    // acq_rel chain on the count orders every child's writes (m_error, the
    // results) before the waiter's reads.
    const std::size_t before = m_running.fetch_sub(1, std::memory_order_acq_rel);
    HOP_ASSERT(before != 0, "a child ended that never started");
    if (before != 1) return;
    if (waiter* w = m_waiter.exchange(nullptr, std::memory_order_acq_rel)) resume_on(w->executor, *w);
}

// m_waiter: null -> w (register_waiter, the one waiter; a second is refused)
// -> null, by exactly one of: the last child out (exchange: it resumes w) or
// register_waiter itself when it finds no child running (compare-exchange:
// it wins only if the last child has not taken w, and then returns false so
// the waiter does not suspend).
bool group_state::register_waiter(waiter* w) {
    waiter* none = nullptr;
    if (!m_waiter.compare_exchange_strong(none, w, std::memory_order_acq_rel)) {
        throw std::logic_error("hop::task_group::wait: another coroutine is already waiting on this group");
    }
    if (m_running.load(std::memory_order_acquire) != 0) return true;
    // All ended (or ending): take the registration back, unless the last
    // child took it first and resumes us.
    waiter* mine = w;
    return !m_waiter.compare_exchange_strong(mine, nullptr, std::memory_order_acq_rel);
}

}  // namespace hop::detail
