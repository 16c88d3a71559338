// The deadline service of a loop (see deadlines.hpp for the shape and the
// rules).

#include "deadlines.hpp"

#include "stop_scope.hpp"

#include <hop/detail/assert.hpp>
#include <hop/detail/loop_op.hpp>
#include <hop/time.hpp>

#include <algorithm>
#include <unordered_map>

namespace hop::http::detail {

namespace {

// Every loop's service, while it runs: made on first use, removed when its
// loop closes.
struct registry {
    std::mutex mutex;
    std::unordered_map<io_loop*, std::weak_ptr<deadline_service>> services;
};

registry& services() {
    static registry r;  // never destroyed: loops may close during exit
    return r;
}

task<void> sleep_task(clock::time_point t) { co_await hop::sleep_until(t); }

// With queues registered but nothing due by time, the service still sleeps
// on a timer, at most this long: a loop only resumes what waits on it (a
// timer, IO) when it is destroyed, and the service must hear that. With no
// queue at all it ends instead, holding nothing.
constexpr auto longest_sleep = std::chrono::hours(1);

}  // namespace

// ---- deadline ----------------------------------------------------------------

deadline::~deadline() {
    HOP_ASSERT(m_queue == nullptr, "a deadline was destroyed while armed");
}

// ---- deadline_queue ----------------------------------------------------------

deadline_queue::deadline_queue(std::shared_ptr<deadline_service> service, clock::duration duration)
    : m_service(std::move(service)), m_duration(duration) {
    bool start = false;
    {
        std::lock_guard lock(m_service->m_mutex);
        m_next_queue = m_service->m_queues;
        if (m_next_queue) m_next_queue->m_prev_queue = this;
        m_service->m_queues = this;
        start = !m_service->m_running && !m_service->m_closed;
        if (start) m_service->m_running = true;
    }
    if (start) m_service->start();
}

deadline_queue::~deadline_queue() {
    std::stop_source kick{std::nostopstate};
    {
        std::lock_guard lock(m_service->m_mutex);
        HOP_ASSERT(m_head == nullptr, "a deadline queue was destroyed with entries armed");
        if (m_prev_queue) {
            m_prev_queue->m_next_queue = m_next_queue;
        } else {
            m_service->m_queues = m_next_queue;
        }
        if (m_next_queue) m_next_queue->m_prev_queue = m_prev_queue;
        // The last one: wake the service so it ends now, not at its next
        // planned wake-up.
        if (m_service->m_queues == nullptr) kick = m_service->m_kick;
    }
    if (kick.stop_possible()) kick.request_stop();
}

void deadline_queue::unlink_locked(deadline& d) noexcept {
    if (d.m_prev) {
        d.m_prev->m_next = d.m_next;
    } else {
        m_head = d.m_next;
    }
    if (d.m_next) {
        d.m_next->m_prev = d.m_prev;
    } else {
        m_tail = d.m_prev;
    }
    d.m_prev = d.m_next = nullptr;
    d.m_queue = nullptr;
}

void deadline_queue::insert_locked(deadline& d) noexcept {
    deadline* after = m_tail;
    while (after && after->m_when > d.m_when) after = after->m_prev;
    d.m_prev = after;
    d.m_next = after ? after->m_next : m_head;
    if (d.m_next) {
        d.m_next->m_prev = &d;
    } else {
        m_tail = &d;
    }
    if (after) {
        after->m_next = &d;
    } else {
        m_head = &d;
    }
    d.m_queue = this;
}

void deadline_queue::arm(deadline& d) {
    if (m_duration <= clock::duration::zero()) {
        disarm(d);  // this kind of timeout is off
        return;
    }
    arm_at(d, saturating_add(clock::now(), m_duration));
}

void deadline_queue::arm_at(deadline& d, clock::time_point when) { arm_locked_if(d, when, false); }

void deadline_queue::arm_earlier(deadline& d, clock::time_point when) { arm_locked_if(d, when, true); }

void deadline_queue::arm_locked_if(deadline& d, clock::time_point when, bool only_earlier) {
    std::stop_source kick{std::nostopstate};
    {
        std::unique_lock lock(m_service->m_mutex);
        if (only_earlier && d.m_queue == this && d.m_when <= when) return;
        if (d.m_queue) {
            HOP_ASSERT(&d.m_queue->service() == m_service.get(), "a deadline moved to another loop's service");
            d.m_queue->unlink_locked(d);
        }
        d.m_when = when;
        d.m_service = m_service.get();
        insert_locked(d);
        m_service->note_armed_locked(when, kick);
    }
    if (kick.stop_possible()) kick.request_stop();
}

void deadline_queue::disarm(deadline& d) noexcept {
    // Never armed: nothing to do. Else it may be armed, or firing (its
    // expired() runs with the entry out of its queue).
    if (d.m_service == nullptr) return;
    deadline_service& s = *d.m_service;
    std::unique_lock lock(s.m_mutex);
    if (d.m_queue) d.m_queue->unlink_locked(d);
    s.wait_not_firing_locked(lock, d);
    // Its expired() may have armed it again meanwhile.
    if (d.m_queue) d.m_queue->unlink_locked(d);
}

// ---- deadline_service ----------------------------------------------------------

std::shared_ptr<deadline_service> deadline_service::of(io_loop& loop) {
    registry& r = services();
    std::lock_guard lock(r.mutex);
    auto it = r.services.find(&loop);
    if (it != r.services.end()) {
        if (auto s = it->second.lock()) return s;
    }
    if (hop::detail::loop_closing(loop)) return nullptr;
    auto s = std::make_shared<deadline_service>(loop);
    r.services[&loop] = s;
    return s;  // its coroutine starts with its first queue
}

void deadline_service::start() noexcept {
    try {
        m_loop->spawn(run(shared_from_this()));
    } catch (...) {
        // The loop is being destroyed (or no memory): nothing fires here.
        std::lock_guard lock(m_mutex);
        m_running = false;
    }
}

void deadline_service::note_armed_locked(clock::time_point when, std::stop_source& kick) noexcept {
    if (m_closed || when >= m_wake_at) return;
    m_wake_at = when;
    kick = m_kick;
}

void deadline_service::wait_not_firing_locked(std::unique_lock<std::mutex>& lock, const deadline& d) noexcept {
    // On the loop's own thread the entry's expired() is this call's caller.
    if (m_firing != &d || std::this_thread::get_id() == m_thread) return;
    m_fired.wait(lock, [&] { return m_firing != &d; });
}

bool deadline_service::fire_one(clock::time_point now) {
    deadline* due = nullptr;
    {
        std::lock_guard lock(m_mutex);
        for (deadline_queue* q = m_queues; q != nullptr; q = q->m_next_queue) {
            deadline* f = q->m_head;
            if (f && f->m_when <= now && (due == nullptr || f->m_when < due->m_when)) due = f;
        }
        if (due == nullptr) return false;
        due->m_queue->unlink_locked(*due);
        m_firing = due;
    }
    run_expired(*due, false);
    return true;
}

void deadline_service::run_expired(deadline& d, bool loop_closing) noexcept {
    d.expired(loop_closing);
    {
        std::lock_guard lock(m_mutex);
        m_firing = nullptr;
    }
    m_fired.notify_all();
}

clock::time_point deadline_service::plan(std::stop_source& kick) {
    std::lock_guard lock(m_mutex);
    if (m_queues == nullptr) {
        // Nobody uses the service: its coroutine ends; the next queue
        // starts another.
        m_running = false;
        return clock::time_point::min();
    }
    clock::time_point wake = clock::time_point::max();
    for (deadline_queue* q = m_queues; q != nullptr; q = q->m_next_queue) {
        if (q->m_head) wake = std::min(wake, q->m_head->m_when);
    }
    kick = std::stop_source();
    m_kick = kick;
    m_wake_at = wake;
    return wake;
}

void deadline_service::close_all() noexcept {
    for (;;) {
        deadline* d = nullptr;
        {
            std::lock_guard lock(m_mutex);
            m_closed = true;
            for (deadline_queue* q = m_queues; q != nullptr && d == nullptr; q = q->m_next_queue) d = q->m_head;
            if (d == nullptr) return;
            d->m_queue->unlink_locked(*d);
            m_firing = d;
        }
        run_expired(*d, true);
    }
}

task<void> deadline_service::run(std::shared_ptr<deadline_service> self) {
    deadline_service& s = *self;
    io_loop& loop = s.loop();
    {
        std::lock_guard lock(s.m_mutex);
        s.m_thread = std::this_thread::get_id();
    }
    while (!hop::detail::loop_closing(loop)) {
        {
            std::lock_guard lock(s.m_mutex);
            s.m_wake_at = clock::time_point::min();
        }
        const auto now = clock::now();
        while (s.fire_one(now)) {
        }
        std::stop_source kick{std::nostopstate};
        const clock::time_point wake = s.plan(kick);
        if (wake == clock::time_point::min()) co_return;  // no queue left: ended (plan said so)
        try {
            co_await stop_scope<void>(kick, sleep_task(std::min(wake, saturating_add(clock::now(), longest_sleep))));
        } catch (const cancelled_error&) {
            // Kicked (an earlier deadline was armed), or the loop is being
            // destroyed: the loop's condition decides.
        } catch (...) {
            // Out of memory making the sleep: try again next turn.
        }
    }
    {
        registry& r = services();
        std::lock_guard lock(r.mutex);
        auto it = r.services.find(&loop);
        if (it != r.services.end() && it->second.lock() == self) r.services.erase(it);
    }
    s.close_all();
}

}  // namespace hop::http::detail
