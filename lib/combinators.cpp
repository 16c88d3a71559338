// as_completed and wait: type-erased over future_state_base, so the
// templates in combinators.hpp stay thin.

#include <hop/combinators.hpp>
#include <hop/detail/blocking.hpp>
#include <hop/detail/fork.hpp>

#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>
#include <unordered_set>

namespace hop::detail {

void start_children(work_item** children, std::size_t n) noexcept {
    fork_point* at = n > 1 ? current_fork_point() : nullptr;
    if (at == nullptr) {
        for (std::size_t i = 0; i < n; ++i) {
            if (children[i] != nullptr) children[i]->run(children[i]);
        }
        return;
    }
    // Oldest first, so thieves (who take from the old end) take the first
    // siblings and the owner takes back the last ones.
    std::size_t pushed = n;  // children[1, pushed) are on the deque
    try {
        fork_push(*at, children + 1, n - 1);
    } catch (...) {
        pushed = 1;  // the deque could not grow: run them all here
        for (std::size_t i = 1; i < n; ++i) {
            if (children[i] != nullptr) children[i]->run(children[i]);
        }
    }
    if (children[0] != nullptr) children[0]->run(children[0]);
    // Newest first. A child that is gone was stolen (and so were all older
    // ones); a foreign item on top (a job the children posted) hides the rest,
    // which the worker then runs from its deque as usual.
    for (std::size_t i = pushed; i-- > 1;) {
        if (children[i] == nullptr) continue;
        if (!fork_take_back(*at, children[i])) break;
        children[i]->run(children[i]);
    }
}


namespace {

/// One background thread firing deadlines for waits that have no io_loop to
/// time them (as_completed's coroutine path). Started at first use.
class deadline_thread {
public:
    static deadline_thread& instance() {
        static deadline_thread t;
        return t;
    }

    std::uint64_t add(clock::time_point when, std::function<void()> fn) {
        std::lock_guard lock(m_mutex);
        if (!m_thread.joinable()) m_thread = std::thread([this] { loop(); });
        auto id = ++m_next_id;
        m_timers.emplace(std::pair{when, id}, std::move(fn));
        m_cv.notify_one();
        return id;
    }

    void cancel(clock::time_point when, std::uint64_t id) {
        std::lock_guard lock(m_mutex);
        m_timers.erase(std::pair{when, id});
    }

    ~deadline_thread() {
        {
            std::lock_guard lock(m_mutex);
            m_stop = true;
            m_cv.notify_one();
        }
        if (m_thread.joinable()) m_thread.join();
    }

private:
    void loop() {
        std::unique_lock lock(m_mutex);
        while (!m_stop) {
            if (m_timers.empty()) {
                m_cv.wait(lock);
                continue;
            }
            auto first = m_timers.begin();
            if (clock::now() < first->first.first) {
                m_cv.wait_until(lock, first->first.first);
                continue;
            }
            auto fn = std::move(first->second);
            m_timers.erase(first);
            lock.unlock();
            fn();
            lock.lock();
        }
    }

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::map<std::pair<clock::time_point, std::uint64_t>, std::function<void()>> m_timers;
    std::uint64_t m_next_id = 0;
    bool m_stop = false;
    std::thread m_thread;
};

class completion_queue_impl final : public completion_queue,
                                    public std::enable_shared_from_this<completion_queue_impl> {
public:
    completion_queue_impl(std::size_t total, std::optional<clock::time_point> deadline)
        : m_total(total), m_deadline(deadline) {}

    struct node final : future_waiter {
        std::shared_ptr<completion_queue_impl> queue;
        std::size_t index = 0;
        static void on_notify(future_waiter* w) noexcept {
            auto* self = static_cast<node*>(w);
            self->queue->push(self->index);
            delete self;
        }
    };

    void watch(future_state_base* s, std::size_t index) {
        auto* n = new node;
        n->notify = &node::on_notify;
        n->queue = shared_from_this();
        n->index = index;
        if (!s->add_waiter(n)) {
            delete n;
            push(index);
        }
    }

    void push(std::size_t index) noexcept {
        std::unique_lock lock(m_mutex);
        m_ready.push_back(index);
        if (auto* w = std::exchange(m_waiter, nullptr)) {
            auto* ex = m_waiter_executor;
            if (m_timer_id) deadline_thread::instance().cancel(*m_deadline, std::exchange(m_timer_id, 0));
            lock.unlock();
            resume_on(ex, *w);
            return;
        }
        m_cv.notify_one();
    }

    std::optional<std::size_t> next_blocking() override {
        before_blocking();
        std::unique_lock lock(m_mutex);
        if (m_yielded == m_total) return std::nullopt;
        auto ready = [&] { return !m_ready.empty(); };
        if (m_deadline) {
            if (!m_cv.wait_until(lock, *m_deadline, ready)) throw_timeout();
        } else {
            m_cv.wait(lock, ready);
        }
        return pop();
    }

    std::optional<std::size_t> next_or_register(resume_item* item, executor_base* ex, bool& suspended,
                                                bool& exhausted) override {
        std::lock_guard lock(m_mutex);
        suspended = false;
        exhausted = m_yielded == m_total;
        if (exhausted) return std::nullopt;
        if (!m_ready.empty()) return pop();
        if (m_deadline && clock::now() >= *m_deadline) throw_timeout();
        m_waiter = item;
        m_waiter_executor = ex;
        suspended = true;
        if (m_deadline) {
            std::weak_ptr<completion_queue_impl> weak = weak_from_this();
            m_timer_id = deadline_thread::instance().add(*m_deadline, [weak] {
                if (auto self = weak.lock()) self->on_deadline();
            });
        }
        return std::nullopt;
    }

    std::optional<std::size_t> take_after_wake() override {
        std::lock_guard lock(m_mutex);
        if (m_timed_out) {
            m_timed_out = false;
            throw_timeout();
        }
        return pop();
    }

private:
    void on_deadline() noexcept {
        std::unique_lock lock(m_mutex);
        m_timer_id = 0;
        auto* w = std::exchange(m_waiter, nullptr);
        if (!w) return;
        m_timed_out = true;
        auto* ex = m_waiter_executor;
        lock.unlock();
        resume_on(ex, *w);
    }

    std::size_t pop() {
        auto i = m_ready.front();
        m_ready.pop_front();
        ++m_yielded;
        return i;
    }

    [[noreturn]] void throw_timeout() const {
        throw timeout_error("hop::as_completed: timed out with " + std::to_string(m_total - m_yielded) + " of " +
                            std::to_string(m_total) + " futures not yielded");
    }

    std::mutex m_mutex;
    std::condition_variable m_cv;
    std::deque<std::size_t> m_ready;
    std::size_t m_total;
    std::size_t m_yielded = 0;
    std::optional<clock::time_point> m_deadline;
    resume_item* m_waiter = nullptr;
    executor_base* m_waiter_executor = nullptr;
    std::uint64_t m_timer_id = 0;
    bool m_timed_out = false;
};

bool failed_with_exception(const future_state_base* s) noexcept {
    return s->status() == future_status::finished && s->error() != nullptr;
}

}  // namespace

std::optional<clock::time_point> deadline_after(std::optional<std::chrono::nanoseconds> timeout, const char* where) {
    if (!timeout) return std::nullopt;
    if (*timeout < std::chrono::nanoseconds::zero()) {
        throw std::invalid_argument(std::string(where) + ": negative timeout " + std::to_string(timeout->count()) +
                                    "ns");
    }
    auto now = clock::now();
    if (*timeout > clock::time_point::max() - now) return std::nullopt;  // effectively forever
    return now + std::chrono::duration_cast<clock::duration>(*timeout);
}

std::vector<std::size_t> unique_states(const std::vector<future_state_base*>& states, const char* where) {
    std::vector<std::size_t> keep;
    keep.reserve(states.size());
    std::unordered_set<const future_state_base*> seen;
    for (std::size_t i = 0; i < states.size(); ++i) {
        if (states[i] == nullptr) {
            throw std::invalid_argument(std::string(where) + ": futures[" + std::to_string(i) +
                                        "] is invalid (default-constructed or moved-from)");
        }
        if (seen.insert(states[i]).second) keep.push_back(i);
    }
    return keep;
}

std::shared_ptr<completion_queue> completion_queue::create(const std::vector<future_state_base*>& states,
                                                           std::optional<clock::time_point> deadline) {
    auto q = std::make_shared<completion_queue_impl>(states.size(), deadline);
    for (std::size_t i = 0; i < states.size(); ++i) q->watch(states[i], i);
    return q;
}

std::vector<bool> wait_states(const std::vector<future_state_base*>& states, return_when when,
                              std::optional<clock::time_point> deadline) {
    struct block {
        std::mutex mutex;
        std::condition_variable cv;
        std::size_t done = 0;
        bool exception = false;
    };
    struct node final : future_waiter {
        std::shared_ptr<block> b;
        const future_state_base* s = nullptr;
        static void on_notify(future_waiter* w) noexcept {
            auto* self = static_cast<node*>(w);
            {
                std::lock_guard lock(self->b->mutex);
                ++self->b->done;
                if (failed_with_exception(self->s)) self->b->exception = true;
                self->b->cv.notify_all();
            }
            delete self;
        }
    };
    auto b = std::make_shared<block>();
    // The nodes still linked when the wait returns (a timeout, or
    // first_completed with others pending) are unlinked and freed below: a
    // polling loop (`while (!wait(fs, ..., 50ms).done...)`) must not leave
    // one behind per call and future.
    std::vector<std::pair<future_state_base*, node*>> linked;
    linked.reserve(states.size());
    for (auto* s : states) {
        auto* n = new node;
        n->notify = &node::on_notify;
        n->b = b;
        n->s = s;
        if (s->add_waiter(n)) {
            linked.emplace_back(s, n);
        } else {
            delete n;
            std::lock_guard lock(b->mutex);
            ++b->done;
            if (failed_with_exception(s)) b->exception = true;
        }
    }
    auto satisfied = [&] {
        switch (when) {
            case return_when::first_completed:
                return b->done > 0 || states.empty();
            case return_when::first_exception:
                return b->exception || b->done == states.size();
            case return_when::all_completed:
                break;
        }
        return b->done == states.size();
    };
    before_blocking();
    {
        std::unique_lock lock(b->mutex);
        if (deadline) {
            b->cv.wait_until(lock, *deadline, satisfied);
        } else {
            b->cv.wait(lock, satisfied);
        }
    }
    for (auto [s, n] : linked) {
        // unlink_waiter_locked reads nothing of `n` once the state's list
        // was taken (then its completion frees `n`, or has freed it).
        s->lock_waiters();
        const bool unlinked = s->unlink_waiter_locked(n);
        s->unlock_waiters();
        if (unlinked) delete n;
    }
    std::vector<bool> flags(states.size());
    for (std::size_t i = 0; i < states.size(); ++i) flags[i] = states[i]->done();
    return flags;
}

}  // namespace hop::detail
