#include <hop/task_group.hpp>


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
    if (m_running.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    if (waiter* w = m_waiter.exchange(nullptr, std::memory_order_acq_rel)) resume_on(w->executor, *w);
}

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
