#include <hop/task_group.hpp>

#include <hop/detail/assert.hpp>

#include <stdexcept>

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

// m_word: `alive` while the task_group exists, `waiting` while its owner
// is suspended in wait() (m_waiter written before the bit is set), and the
// count of running children. The child whose decrement leaves the count at
// zero with `waiting` set resumes the waiter (which cannot go anywhere
// before that, so the state is still there); a decrement that leaves the
// whole word at zero (the group gone) frees the state. Every child's writes
// (m_error, its future's result) precede its decrement (acq_rel), which the
// owner's acquire read of a zero count follows.
void group_state::child_ended(std::exception_ptr e) noexcept {
    if (e && !is_cancellation(e) && !m_failed.exchange(true, std::memory_order_acq_rel)) {
        m_error = std::move(e);
        request_stop();
    }
    const std::uint64_t before = m_word.fetch_sub(1, std::memory_order_acq_rel);
    HOP_ASSERT((before & count_mask) != 0, "a child ended that never started");
    if (before == 1) {
        delete this;  // the group is gone and this was the last child
        return;
    }
    if ((before & count_mask) == 1 && (before & waiting) != 0) resume_on(m_waiter->executor, *m_waiter);
}

bool group_state::register_waiter(waiter* w) {
    if ((m_word.load(std::memory_order_relaxed) & waiting) != 0) {
        throw std::logic_error("hop::task_group::wait: another coroutine is already waiting on this group");
    }
    m_waiter = w;
    const std::uint64_t before = m_word.fetch_or(waiting, std::memory_order_acq_rel);
    if ((before & count_mask) != 0) return true;  // the last child resumes it
    m_word.fetch_and(~waiting, std::memory_order_acq_rel);
    return false;
}

void group_state::group_gone() noexcept {
    const std::uint64_t before = m_word.fetch_and(~alive, std::memory_order_acq_rel);
    if ((before & count_mask) == 0) delete this;
}

void group_child_done(group_state* g, std::exception_ptr e) noexcept { g->child_ended(std::move(e)); }

}  // namespace hop::detail
