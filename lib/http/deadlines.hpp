#pragma once
// Private to hop::http: the one deadline service of a loop, shared by every
// hop::http::client and hop::http::server that runs there. Every HTTP
// timeout (a server's header, idle and lingering timeouts; a client's pool,
// connect, read and total timeouts and its idle connections) is an entry in
// one of its queues, so each is armed and disarmed in one place, and one
// coroutine per loop fires them (no timer per read, no sweeper per client
// or server).
//
//   deadline          an entry, embedded in the connection or request whose
//                     deadline it is; expired() says what happens;
//   deadline_queue    one owner's deadlines of one kind, earliest first.
//                     Entries are armed "now + the queue's duration", so an
//                     insert goes to the tail (the walk from the tail keeps
//                     the order when an entry is armed at another time);
//   deadline_service  one per loop, made on first use: while any queue is
//                     registered, a coroutine on the loop sleeps until the
//                     earliest front of its queues (at most an hour: a
//                     loop being destroyed resumes what sleeps on it, and
//                     the service must hear that), fires what expired, and
//                     when the loop closes tells every armed entry so
//                     (expired(true)). With no queue left it ends, holding
//                     no timer: a loop embedded in an io_context can run
//                     out of work.
//
// Threads: arm and disarm are thread-safe (one mutex per service, never
// held while an entry's expired() runs). expired() runs on the loop. An
// entry disarmed on another thread while its expired() runs waits for it to
// return, so an owner may free the entry once disarm() returned.

#include <hop/detail/timer.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <stop_token>
#include <thread>

namespace hop::http::detail {

using clock = hop::detail::loop_clock;

/// `t + d`, or max when that would overflow.
inline clock::time_point saturating_add(clock::time_point t, clock::duration d) noexcept {
    if (t > clock::time_point::max() - d) return clock::time_point::max();
    return t + d;
}

class deadline_queue;
class deadline_service;

/// One deadline in a queue. Lives in its owner and does not move while
/// armed; the owner disarms it before it goes.
class deadline {
public:
    deadline() noexcept = default;
    deadline(const deadline&) = delete;
    deadline& operator=(const deadline&) = delete;

    /// Whether it is in a queue. Read without the service's lock: only on
    /// the loop, or where nothing can arm or fire it meanwhile.
    bool armed() const noexcept { return m_queue != nullptr; }
    /// When it expires (meaningful while armed; the same rule).
    clock::time_point when() const noexcept { return m_when; }

protected:
    ~deadline();

private:
    friend class deadline_queue;
    friend class deadline_service;
    /// Runs on the loop, with no lock held, once the deadline passed (or,
    /// `loop_closing`, when the loop is being destroyed). The entry is
    /// disarmed already and may be armed again from here.
    virtual void expired(bool loop_closing) noexcept = 0;

    deadline* m_prev = nullptr;
    deadline* m_next = nullptr;
    deadline_queue* m_queue = nullptr;                  // while armed
    deadline_service* m_service = nullptr;              // since first armed
    clock::time_point m_when{};
};

/// One owner's deadlines of one kind, earliest first. Registered with its
/// loop's service for its lifetime; empty when it goes.
class deadline_queue {
public:
    /// `duration`: what arm() adds to now.
    deadline_queue(std::shared_ptr<deadline_service> service, clock::duration duration);
    deadline_queue(const deadline_queue&) = delete;
    deadline_queue& operator=(const deadline_queue&) = delete;
    ~deadline_queue();

    clock::duration duration() const noexcept { return m_duration; }
    deadline_service& service() const noexcept { return *m_service; }

    /// (Re)arms `d` in this queue for now + duration(); with a duration of
    /// 0 or less (that timeout is off), disarms it.
    void arm(deadline& d);
    /// (Re)arms `d` in this queue for `when` (max: armed, never expires by
    /// time; told only when the loop closes).
    void arm_at(deadline& d, clock::time_point when);
    /// arm_at(d, when) unless `d` is armed in this queue for `when` or
    /// earlier already.
    void arm_earlier(deadline& d, clock::time_point when);
    /// Takes `d` out of whichever queue it is in (nothing if none). If its
    /// expired() runs on another thread, waits until it has returned, so
    /// the owner may free it then.
    static void disarm(deadline& d) noexcept;

    // With the service's lock held (deadline_service::lock()): the
    // earliest entry, and the one after `d` (null at the end).
    deadline* front_locked() const noexcept { return m_head; }
    static deadline* after_locked(const deadline& d) noexcept { return d.m_next; }

private:
    friend class deadline_service;
    void arm_locked_if(deadline& d, clock::time_point when, bool only_earlier);
    void insert_locked(deadline& d) noexcept;
    void unlink_locked(deadline& d) noexcept;

    std::shared_ptr<deadline_service> m_service;
    clock::duration m_duration;
    deadline* m_head = nullptr;
    deadline* m_tail = nullptr;
    // The service's list of queues.
    deadline_queue* m_prev_queue = nullptr;
    deadline_queue* m_next_queue = nullptr;
};

/// A loop's deadlines (see the top of this file).
class deadline_service : public std::enable_shared_from_this<deadline_service> {
public:
    /// `loop`'s service, started on first use. Null if the loop is being
    /// destroyed. Thread-safe.
    static std::shared_ptr<deadline_service> of(io_loop& loop);

    explicit deadline_service(io_loop& loop) noexcept : m_loop(&loop) {}
    deadline_service(const deadline_service&) = delete;
    deadline_service& operator=(const deadline_service&) = delete;

    io_loop& loop() const noexcept { return *m_loop; }
    /// For walking a queue (front_locked / after_locked).
    std::unique_lock<std::mutex> lock() { return std::unique_lock(m_mutex); }

private:
    friend class deadline_queue;
    // Spawns run() on the loop (m_running was set under the lock).
    void start() noexcept;
    static task<void> run(std::shared_ptr<deadline_service> self);
    // Fires the earliest expired entry, if any; true if it fired one.
    bool fire_one(clock::time_point now);
    // The next wake-up (max: nothing armed; min: no queue, the coroutine
    // ends), and the kick that ends the sleep earlier, made under the lock.
    clock::time_point plan(std::stop_source& kick);
    // Runs d.expired() (taken out of its queue, m_firing set, lock
    // released), then lets disarms waiting for it return.
    void run_expired(deadline& d, bool loop_closing) noexcept;
    // The loop is closing: every armed entry is told, once.
    void close_all() noexcept;
    // With the lock held: `d` now expires at `when`; wakes the service if
    // it sleeps past it.
    void note_armed_locked(clock::time_point when, std::stop_source& kick) noexcept;
    void wait_not_firing_locked(std::unique_lock<std::mutex>& lock, const deadline& d) noexcept;

    io_loop* m_loop;
    std::mutex m_mutex;
    std::condition_variable m_fired;  // m_firing changed
    deadline_queue* m_queues = nullptr;
    // The entry whose expired() runs now, on m_thread.
    const deadline* m_firing = nullptr;
    std::thread::id m_thread;
    // What the sleep is for; min while the service is awake (it looks at
    // the queues before it sleeps again, so no kick is needed).
    clock::time_point m_wake_at = clock::time_point::min();
    std::stop_source m_kick{std::nostopstate};
    bool m_running = false;  // run() exists (started by the first queue)
    bool m_closed = false;
};

}  // namespace hop::http::detail
