// The blocking pool behind run_blocking.

#include <hop/file.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <mutex>
#include <thread>

namespace hop::detail {

namespace {

constexpr std::size_t max_blocking_threads = 256;
constexpr auto idle_exit = std::chrono::seconds(10);

class blocking_pool final : public executor_base {
public:
    void post_item(work_item* w) override { post_continuation(w); }

    void post_continuation(work_item* w) noexcept override {
        bool spawn = false;
        {
            std::lock_guard lock(m_mutex);
            m_queue.push_back(w);
            // A new thread only when no idle one can take it.
            if (m_idle < m_queue.size() && m_threads < max_blocking_threads) {
                ++m_threads;
                spawn = true;
            }
        }
        m_cv.notify_one();
        if (spawn) {
            try {
                std::thread([this] { work(); }).detach();
            } catch (...) {
                std::lock_guard lock(m_mutex);
                --m_threads;  // the queued call waits for a thread that exists
            }
        }
    }

private:
    void work() {
        current_executor_scope scope(this);
        std::unique_lock lock(m_mutex);
        for (;;) {
            ++m_idle;
            bool got = m_cv.wait_for(lock, idle_exit, [&] { return !m_queue.empty(); });
            --m_idle;
            if (!got) {
                --m_threads;
                return;
            }
            auto* w = m_queue.front();
            m_queue.pop_front();
            lock.unlock();
            w->run(w);
            lock.lock();
        }
    }

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<work_item*> m_queue;
    std::size_t m_threads = 0;
    std::size_t m_idle = 0;
};

}  // namespace

executor_base& blocking_executor() {
    // Never destroyed: its detached threads may still be parked at exit.
    static auto* pool = new blocking_pool;
    return *pool;
}

}  // namespace hop::detail
