#include <hop/sync.hpp>

#include <string>

namespace hop {

semaphore::semaphore(std::ptrdiff_t initial) : m_count(initial) {
    if (initial < 0) {
        throw std::invalid_argument("hop::semaphore: initial count " + std::to_string(initial) + " is negative");
    }
}

bool semaphore::try_acquire() noexcept {
    std::lock_guard lock(m_mutex);
    return try_take_locked();
}

void semaphore::release(std::ptrdiff_t n) {
    if (n < 1) throw std::invalid_argument("hop::semaphore::release: count " + std::to_string(n) + " is less than 1");
    detail::wake_list woken;
    {
        std::lock_guard lock(m_mutex);
        // Hand units straight to waiters, oldest first; the rest are banked.
        while (n > 0 && !m_waiters.empty()) {
            woken.push_back(m_waiters.pop_front());
            --n;
        }
        m_count += n;
    }
    woken.wake_all();
}

std::ptrdiff_t semaphore::available() const noexcept {
    std::lock_guard lock(m_mutex);
    return m_count;
}

async_mutex::scoped_lock async_mutex::try_lock() noexcept {
    std::lock_guard lock(m_mutex);
    if (m_locked) return {};
    m_locked = true;
    return scoped_lock{*this};
}

void async_mutex::unlock() {
    detail::list_waiter* next = nullptr;
    {
        std::lock_guard lock(m_mutex);
        if (!m_locked) throw std::logic_error("hop::async_mutex::unlock: the mutex is not locked");
        // Ownership passes straight to the longest waiter: m_locked stays true.
        next = m_waiters.pop_front();
        if (!next) m_locked = false;
    }
    if (next) detail::wake_waiter(next);
}

bool async_mutex::is_locked() const noexcept {
    std::lock_guard lock(m_mutex);
    return m_locked;
}

void event::set() {
    detail::wake_list woken;
    {
        std::lock_guard lock(m_mutex);
        m_set = true;
        while (auto* w = m_waiters.pop_front()) woken.push_back(w);
    }
    woken.wake_all();
}

void event::reset() noexcept {
    std::lock_guard lock(m_mutex);
    m_set = false;
}

bool event::is_set() const noexcept {
    std::lock_guard lock(m_mutex);
    return m_set;
}

}  // namespace hop
