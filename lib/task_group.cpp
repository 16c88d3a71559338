#include <hop/task_group.hpp>

#include <vector>

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

std::uint64_t group_state::child_started(std::stop_source stop) {
    bool stopped;
    std::uint64_t id;
    {
        std::lock_guard lock(m_mutex);
        id = ++m_next_id;
        stopped = m_stopped;
        m_children.emplace(id, stop);
    }
    if (stopped) stop.request_stop();
    return id;
}

void group_state::child_ended(std::uint64_t id, std::exception_ptr e) noexcept {
    bool first_failure = false;
    resume_item* w = nullptr;
    executor_base* ex = nullptr;
    {
        std::lock_guard lock(m_mutex);
        m_children.erase(id);
        if (e && !m_error && !is_cancellation(e)) {
            m_error = e;
            first_failure = true;
        }
        if (m_children.empty() && m_waiter) {
            w = std::exchange(m_waiter, nullptr);
            ex = m_waiter_executor;
        }
    }
    if (first_failure) request_stop();
    if (w) resume_on(ex, *w);
}

bool group_state::register_waiter(resume_item* w, executor_base* ex) {
    std::lock_guard lock(m_mutex);
    if (m_children.empty()) return false;
    if (m_waiter) throw std::logic_error("hop::task_group::wait: another coroutine is already waiting on this group");
    m_waiter = w;
    m_waiter_executor = ex;
    return true;
}

std::exception_ptr group_state::error() {
    std::lock_guard lock(m_mutex);
    return m_error;
}

void group_state::request_stop() noexcept {
    std::vector<std::stop_source> sources;
    {
        std::lock_guard lock(m_mutex);
        m_stopped = true;
        sources.reserve(m_children.size());
        for (auto& [id, s] : m_children) sources.push_back(s);
    }
    // Outside the lock: stop callbacks may run and end children right here.
    for (auto& s : sources) s.request_stop();
}

}  // namespace hop::detail
