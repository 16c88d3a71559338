#pragma once
/// @file
/// Coroutine primitives: semaphore, async_mutex, event, channel<T>.
///
/// All are thread-safe and usable from an io_loop and a cpu_pool at once.
/// Every wait is a cancellation point: stop requested before or during the
/// wait throws cancelled_error, and the waiter is taken out of the queue (a
/// cancelled acquire takes nothing, a cancelled send delivers nothing). A
/// woken coroutine resumes on the executor it was on when it waited (inline
/// if the waker runs there, queued there otherwise).

#include <hop/detail/executor.hpp>
#include <hop/detail/waiter_list.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <cstddef>
#include <deque>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <utility>

namespace hop {

/// Thrown by channel::send on a closed channel.
class channel_closed_error : public std::runtime_error {
public:
    channel_closed_error() : std::runtime_error("hop::channel: send on a closed channel") {}
};

namespace detail {

/// The common awaiter skeleton. The derived awaiter provides mutex(), list()
/// (the list to wait on) and try_complete(wake) (called under the mutex:
/// true if it could finish without waiting; it may hand back one other
/// waiter to resume once the mutex is released).
template <class Derived>
class primitive_awaiter : protected list_waiter {
public:
    primitive_awaiter() = default;
    primitive_awaiter(const primitive_awaiter&) = delete;
    primitive_awaiter& operator=(const primitive_awaiter&) = delete;

    bool await_ready() const noexcept { return false; }

    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        const std::stop_token& token = token_of(h.promise());
        if (token.stop_requested()) {
            cancelled = true;
            return false;
        }
        handle = h;
        executor = current_executor();
        auto& self = static_cast<Derived&>(*this);
        if (token.stop_possible()) m_callback.emplace(token, canceller{this, &self.mutex(), &self.list()});
        list_waiter* wake = nullptr;
        bool done;
        {
            std::lock_guard lock(self.mutex());
            if (cancel_requested) {
                cancelled = true;
                return false;
            }
            done = self.try_complete(wake);
            if (!done) self.list().push_back(this);
        }
        // Once linked, `this` may already be resumed elsewhere: locals only.
        if (wake) wake_waiter(wake);
        return !done;
    }

protected:
    /// Call first in await_resume.
    void finish_wait() {
        m_callback.reset();
        if (cancelled) throw cancelled_error(static_cast<Derived&>(*this).cancel_message());
    }

private:
    using canceller = waiter_canceller<std::mutex>;
    std::optional<std::stop_callback<canceller>> m_callback;
};

}  // namespace detail

/// A counting semaphore with FIFO hand-off (a release wakes the longest
/// waiter; later acquirers cannot overtake it).
///
/// @code
/// hop::semaphore sem{3};
/// co_await sem.acquire();   // at most 3 inside
/// sem.release();
/// @endcode
class semaphore {
public:
    /// @throws std::invalid_argument if `initial` is negative.
    explicit semaphore(std::ptrdiff_t initial);
    semaphore(const semaphore&) = delete;
    semaphore& operator=(const semaphore&) = delete;

    class acquire_operation : public detail::primitive_awaiter<acquire_operation> {
    public:
        explicit acquire_operation(semaphore& s) noexcept : m_sem(&s) {}
        void await_resume() { finish_wait(); }

    private:
        friend class detail::primitive_awaiter<acquire_operation>;
        friend class semaphore;
        std::mutex& mutex() noexcept { return m_sem->m_mutex; }
        detail::waiter_list& list() noexcept { return m_sem->m_waiters; }
        bool try_complete(detail::list_waiter*&) noexcept { return m_sem->try_take_locked(); }
        const char* cancel_message() const noexcept { return "hop::semaphore::acquire: cancelled"; }
        semaphore* m_sem;
    };

    /// Waits for a unit. A cancellation point.
    acquire_operation acquire() noexcept { return acquire_operation{*this}; }
    /// Takes a unit if one is free (and nobody is queued); never waits.
    bool try_acquire() noexcept;
    /// Returns `n` units, waking up to `n` waiters.
    /// @throws std::invalid_argument if `n` < 1.
    void release(std::ptrdiff_t n = 1);
    /// Units free now (a snapshot).
    std::ptrdiff_t available() const noexcept;

private:
    bool try_take_locked() noexcept {
        if (m_count > 0 && m_waiters.empty()) {
            --m_count;
            return true;
        }
        return false;
    }
    mutable std::mutex m_mutex;
    std::ptrdiff_t m_count;
    detail::waiter_list m_waiters;
};

/// A coroutine mutex: `auto lock = co_await m.lock();` holds it until
/// `lock` goes out of scope. FIFO hand-off.
class async_mutex {
public:
    async_mutex() = default;
    async_mutex(const async_mutex&) = delete;
    async_mutex& operator=(const async_mutex&) = delete;

    /// Owns the mutex; unlocks it when destroyed (or on unlock()).
    class scoped_lock {
    public:
        scoped_lock() noexcept = default;
        /// Owns a lock on `m` that the caller already holds.
        explicit scoped_lock(async_mutex& m) noexcept : m_mutex(&m) {}
        /// Takes over `o`'s lock.
        scoped_lock(scoped_lock&& o) noexcept : m_mutex(std::exchange(o.m_mutex, nullptr)) {}
        /// Unlocks what this holds, then takes over `o`'s lock.
        scoped_lock& operator=(scoped_lock&& o) noexcept {
            if (this != &o) {
                unlock();
                m_mutex = std::exchange(o.m_mutex, nullptr);
            }
            return *this;
        }
        ~scoped_lock() { unlock(); }
        /// Unlocks early; idempotent.
        void unlock() noexcept {
            if (auto* m = std::exchange(m_mutex, nullptr)) m->unlock();
        }
        /// True while this holds the lock.
        bool owns_lock() const noexcept { return m_mutex != nullptr; }

    private:
        async_mutex* m_mutex = nullptr;
    };

    class lock_operation : public detail::primitive_awaiter<lock_operation> {
    public:
        explicit lock_operation(async_mutex& m) noexcept : m_owner(&m) {}
        [[nodiscard]] scoped_lock await_resume() {
            finish_wait();
            return scoped_lock{*m_owner};
        }

    private:
        friend class detail::primitive_awaiter<lock_operation>;
        std::mutex& mutex() noexcept { return m_owner->m_mutex; }
        detail::waiter_list& list() noexcept { return m_owner->m_waiters; }
        bool try_complete(detail::list_waiter*&) noexcept {
            if (m_owner->m_locked) return false;
            m_owner->m_locked = true;
            return true;
        }
        const char* cancel_message() const noexcept { return "hop::async_mutex::lock: cancelled"; }
        async_mutex* m_owner;
    };

    /// Waits for the mutex. A cancellation point.
    lock_operation lock() noexcept { return lock_operation{*this}; }
    /// Locks if free; never waits. Returns a lock that owns it, or an empty one.
    scoped_lock try_lock() noexcept;
    /// Releases the mutex, handing it to the longest waiter.
    /// @throws std::logic_error if it is not locked.
    void unlock();
    /// A snapshot: whether someone holds the mutex. Thread-safe.
    bool is_locked() const noexcept;

private:
    mutable std::mutex m_mutex;
    bool m_locked = false;
    detail::waiter_list m_waiters;
};

/// A manual-reset event: wait() suspends until set(); reset() clears it.
class event {
public:
    /// An event, set or not.
    explicit event(bool initially_set = false) noexcept : m_set(initially_set) {}
    event(const event&) = delete;
    event& operator=(const event&) = delete;

    class wait_operation : public detail::primitive_awaiter<wait_operation> {
    public:
        explicit wait_operation(event& e) noexcept : m_event(&e) {}
        void await_resume() { finish_wait(); }

    private:
        friend class detail::primitive_awaiter<wait_operation>;
        std::mutex& mutex() noexcept { return m_event->m_mutex; }
        detail::waiter_list& list() noexcept { return m_event->m_waiters; }
        bool try_complete(detail::list_waiter*&) const noexcept { return m_event->m_set; }
        const char* cancel_message() const noexcept { return "hop::event::wait: cancelled"; }
        event* m_event;
    };

    /// Waits until the event is set (at once if it is). A cancellation point.
    wait_operation wait() noexcept { return wait_operation{*this}; }
    /// Sets the event and wakes every waiter.
    void set();
    /// Clears the event; later waits wait again. Thread-safe.
    void reset() noexcept;
    /// A snapshot: whether the event is set. Thread-safe.
    bool is_set() const noexcept;

private:
    mutable std::mutex m_mutex;
    bool m_set;
    detail::waiter_list m_waiters;
};

/// A bounded multi-producer multi-consumer channel. `send` waits while the
/// channel is full; `recv` waits while it is empty and returns nullopt once
/// it is closed and drained. Capacity 0 makes every send a rendezvous with a
/// receiver.
///
/// @code
/// hop::channel<int> ch{64};
/// co_await ch.send(1);
/// while (auto v = co_await ch.recv()) use(*v);
/// ch.close();
/// @endcode
template <class T>
class channel {
public:
    /// @throws std::invalid_argument if `capacity` is absurdly large.
    explicit channel(std::size_t capacity) : m_capacity(capacity) {
        if (capacity > max_capacity) {
            throw std::invalid_argument("hop::channel: capacity " + std::to_string(capacity) + " exceeds " +
                                        std::to_string(max_capacity));
        }
    }
    channel(const channel&) = delete;
    channel& operator=(const channel&) = delete;
    ~channel() = default;

    class send_operation : public detail::primitive_awaiter<send_operation> {
    public:
        send_operation(channel& c, T v) : m_channel(&c), m_value(std::move(v)) {}
        /// @throws channel_closed_error if the channel was closed first (the
        /// value was not delivered).
        void await_resume() {
            this->finish_wait();
            if (m_closed) throw channel_closed_error();
        }

    private:
        friend class detail::primitive_awaiter<send_operation>;
        friend class channel;
        std::mutex& mutex() noexcept { return m_channel->m_mutex; }
        detail::waiter_list& list() noexcept { return m_channel->m_senders; }
        bool try_complete(detail::list_waiter*& wake) { return m_channel->try_send_locked(*this, wake); }
        const char* cancel_message() const noexcept { return "hop::channel::send: cancelled"; }
        channel* m_channel;
        std::optional<T> m_value;
        bool m_closed = false;
    };

    class recv_operation : public detail::primitive_awaiter<recv_operation> {
    public:
        explicit recv_operation(channel& c) noexcept : m_channel(&c) {}
        std::optional<T> await_resume() {
            this->finish_wait();
            return std::move(m_value);
        }

    private:
        friend class detail::primitive_awaiter<recv_operation>;
        friend class channel;
        std::mutex& mutex() noexcept { return m_channel->m_mutex; }
        detail::waiter_list& list() noexcept { return m_channel->m_receivers; }
        bool try_complete(detail::list_waiter*& wake) { return m_channel->try_recv_locked(*this, wake); }
        const char* cancel_message() const noexcept { return "hop::channel::recv: cancelled"; }
        channel* m_channel;
        std::optional<T> m_value;
    };

    /// Sends `v`, waiting while the channel is full. A cancellation point
    /// (a cancelled send delivers nothing).
    send_operation send(T v) { return send_operation{*this, std::move(v)}; }
    /// Receives the next value; nullopt once closed and drained. A
    /// cancellation point (a cancelled recv takes nothing).
    recv_operation recv() noexcept { return recv_operation{*this}; }

    /// Sends without waiting: false if the channel is full.
    /// @throws channel_closed_error if the channel is closed.
    bool try_send(T v) {
        detail::list_waiter* wake = nullptr;
        {
            std::lock_guard lock(m_mutex);
            if (m_closed) throw channel_closed_error();
            if (auto* r = pop_receiver()) {
                r->m_value.emplace(std::move(v));
                wake = r;
            } else if (m_buffer.size() < m_capacity) {
                m_buffer.push_back(std::move(v));
            } else {
                return false;
            }
        }
        if (wake) detail::wake_waiter(wake);
        return true;
    }

    /// Receives without waiting: nullopt if nothing is ready.
    std::optional<T> try_recv() {
        recv_operation op{*this};
        detail::list_waiter* wake = nullptr;
        {
            std::lock_guard lock(m_mutex);
            wake = take_locked(op);
        }
        if (wake) detail::wake_waiter(wake);
        return std::move(op.m_value);
    }

    /// Closes the channel: waiting senders fail with channel_closed_error,
    /// receivers drain what is buffered and then get nullopt. Idempotent.
    void close() {
        detail::wake_list woken;
        {
            std::lock_guard lock(m_mutex);
            if (m_closed) return;
            m_closed = true;
            while (auto* s = pop_sender()) {
                s->m_closed = true;
                woken.push_back(s);
            }
            while (auto* r = m_receivers.pop_front()) woken.push_back(r);
        }
        woken.wake_all();
    }

    /// Whether close() was called. Thread-safe.
    bool is_closed() const {
        std::lock_guard lock(m_mutex);
        return m_closed;
    }
    /// Values buffered now (a snapshot). Thread-safe.
    std::size_t size() const {
        std::lock_guard lock(m_mutex);
        return m_buffer.size();
    }
    /// The capacity given to the constructor.
    std::size_t capacity() const noexcept { return m_capacity; }

private:
    static constexpr std::size_t max_capacity = std::size_t{1} << 30;

    recv_operation* pop_receiver() noexcept { return static_cast<recv_operation*>(m_receivers.pop_front()); }
    send_operation* pop_sender() noexcept { return static_cast<send_operation*>(m_senders.pop_front()); }

    // Under m_mutex. A waiter to wake is handed back in `wake`; the caller
    // resumes it after unlocking.
    bool try_send_locked(send_operation& op, detail::list_waiter*& wake) {
        if (m_closed) {
            op.m_closed = true;
            return true;
        }
        if (auto* r = pop_receiver()) {
            r->m_value.emplace(std::move(*op.m_value));
            wake = r;
            return true;
        }
        if (m_buffer.size() < m_capacity) {
            m_buffer.push_back(std::move(*op.m_value));
            return true;
        }
        return false;
    }

    bool try_recv_locked(recv_operation& op, detail::list_waiter*& wake) {
        wake = take_locked(op);
        return op.m_value.has_value() || m_closed;
    }

    // Takes a value for `op` if one is ready; returns a sender to wake.
    detail::list_waiter* take_locked(recv_operation& op) {
        if (!m_buffer.empty()) {
            op.m_value.emplace(std::move(m_buffer.front()));
            m_buffer.pop_front();
            if (auto* s = pop_sender()) {  // room now: move a waiting sender in
                m_buffer.push_back(std::move(*s->m_value));
                return s;
            }
            return nullptr;
        }
        if (auto* s = pop_sender()) {  // capacity 0: straight from the sender
            op.m_value.emplace(std::move(*s->m_value));
            return s;
        }
        return nullptr;
    }

private:
    mutable std::mutex m_mutex;
    std::size_t m_capacity;
    std::deque<T> m_buffer;
    detail::waiter_list m_senders;
    detail::waiter_list m_receivers;
    bool m_closed = false;
};

}  // namespace hop
