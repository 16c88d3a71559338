#pragma once
/// @file
/// hop::future<T> / hop::promise<T> and hop's error types.

#include <hop/detail/assert.hpp>
#include <hop/detail/executor.hpp>
#include <hop/detail/stop.hpp>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <type_traits>
#include <utility>

namespace hop {

/// Thrown by a cancelled operation, and by future::get() on a cancelled future.
class cancelled_error : public std::runtime_error {
public:
    cancelled_error() : std::runtime_error("hop: operation cancelled") {}
    /// With a message naming what was cancelled.
    explicit cancelled_error(const std::string& what) : std::runtime_error(what) {}
};

/// Thrown when a deadline passes (with_timeout, as_completed).
class timeout_error : public std::runtime_error {
public:
    timeout_error() : std::runtime_error("hop: operation timed out") {}
    /// With a message naming the deadline and what it cut short.
    explicit timeout_error(const std::string& what) : std::runtime_error(what) {}
};

/// Thrown when work is submitted to an executor that has been shut down.
class executor_shutdown_error : public std::runtime_error {
public:
    /// With a message naming the executor and what was submitted.
    explicit executor_shutdown_error(const std::string& what) : std::runtime_error(what) {}
};

/// Stored in a future whose promise was destroyed without a result.
class broken_promise_error : public std::logic_error {
public:
    broken_promise_error() : std::logic_error("hop::promise destroyed without a value or an exception") {}
};

template <class T>
class future;
template <class T>
class promise;

namespace detail {

/// std::is_copy_constructible, but also false for a container of move-only
/// elements (std::vector<std::unique_ptr<X>> claims to be copyable and fails
/// only when the copy is instantiated).
template <class T, class = void>
struct copyable : std::is_copy_constructible<T> {};
template <class T>
struct copyable<T, std::void_t<typename T::value_type>>
    : std::bool_constant<std::is_copy_constructible_v<T> &&
                         (std::is_same_v<typename T::value_type, T> || copyable<typename T::value_type>::value)> {};
template <class T>
inline constexpr bool copyable_v = copyable<T>::value;

/// `d` in nanoseconds, saturated rather than overflowing: a timeout too long
/// to count (e.g. hours::max()) becomes nanoseconds::max(), i.e. no deadline.
template <class Rep, class Period>
std::chrono::nanoseconds saturating_ns(std::chrono::duration<Rep, Period> d) {
    using ns = std::chrono::nanoseconds;
    using fns = std::chrono::duration<double, std::nano>;
    if (fns(d) >= fns(ns::max())) return ns::max();
    if (fns(d) <= fns(ns::min())) return ns::min();
    return std::chrono::duration_cast<ns>(d);
}

/// The future's state machine. Every transition is in future_state_base.
///
///   pending ──try_start──▶ running ──begin_complete──▶ completing ──▶ finished
///      │                      │ (coroutine job: cancel() requests stop and the
///      │                      │  task ends in cancelled_error ──▶ cancelled)
///      └──────cancel()────────┴──────────────────────────────────▶ cancelled
///
/// `completing` is private: one producer owns the value slot while it writes.
enum class future_status : std::uint32_t { pending, running, completing, cancelled, finished };

struct blocking_waiter;
void release_blocking_waiter(blocking_waiter* w) noexcept;
class future_state_base;
class lazy_stop_source;

struct promise_base;

/// What join_forked did.
enum class join_result : std::uint8_t {
    not_here,  ///< the child is not queued on this worker (stolen, or another thread)
    started,   ///< it ran here until it suspended: the future is not done yet
    done,      ///< the future is done
};

/// If `item` (the queue item of the child behind `s`, pushed on a pool
/// worker's deque when it was spawned there) is still on the calling
/// worker's deque, runs it here, first running the spawned children pushed
/// above it. The child taken back is first linked to `link`'s stop (if not
/// null): the awaiting coroutine, which must then outlive the child. Never
/// blocks.
join_result join_forked(work_item* item, const future_state_base& s, const promise_base* link) noexcept;

/// An intrusive callback run once the state is done. Linked into the state's
/// waiter list (a doubly-linked list under the state's waiter lock, so that
/// a cancelled await can take itself out again).
struct future_waiter {
    future_waiter* next = nullptr;
    future_waiter* prev = nullptr;
    void (*notify)(future_waiter*) noexcept = nullptr;
};

/// What awaiting a future does when the awaiting coroutine's stop is
/// requested while it waits.
enum class stop_policy : std::uint8_t {
    /// `co_await fut`: resume at once with cancelled_error and cancel() the
    /// future (asyncio.wait_for on a timeout).
    cancel,
    /// `co_await hop::shield(fut)`: resume at once with cancelled_error and
    /// leave the future alone; its result is dropped (asyncio.shield).
    abandon,
    /// Not a cancellation point: wait for the result whatever the stop says
    /// (for the library's own waits that must see work end, e.g. a server's
    /// graceful shutdown).
    ignore,
};

class future_state_base {
public:
    future_state_base(const future_state_base&) = delete;
    future_state_base& operator=(const future_state_base&) = delete;

    void add_ref() noexcept { m_refs.fetch_add(1, std::memory_order_relaxed); }
    void release() noexcept {
        if (m_refs.fetch_sub(1, std::memory_order_acq_rel) == 1) m_destroy(this);
    }
    void add_handle() noexcept { m_handles.fetch_add(1, std::memory_order_relaxed); }
    void drop_handle() noexcept { m_handles.fetch_sub(1, std::memory_order_relaxed); }
    bool sole_handle() const noexcept { return m_handles.load(std::memory_order_relaxed) == 1; }

    future_status status() const noexcept { return m_status.load(std::memory_order_acquire); }
    /// status(), but never `completing`: waits out a producer (or a cancel())
    /// that is between begin_complete and end_complete, which is brief.
    future_status settled_status() const noexcept;
    bool done() const noexcept {
        auto s = status();
        return s == future_status::finished || s == future_status::cancelled;
    }

    /// pending -> running. False if the future was cancelled first.
    bool try_start() noexcept {
        auto expected = future_status::pending;
        return m_status.compare_exchange_strong(expected, future_status::running, std::memory_order_acq_rel);
    }

    /// pending|running -> completing: the caller may now write the result.
    /// False if the state is already done (cancelled, or set before).
    bool begin_complete() noexcept;

    /// completing -> finished|cancelled, then runs every waiter and wakes
    /// blocked threads.
    void end_complete(future_status final_status) noexcept;

    /// Moves a pending future straight to cancelled. See future::cancel().
    bool cancel() noexcept;

    /// Registers `w`; false (and `w` untouched) if the state is already done.
    bool add_waiter(future_waiter* w) noexcept;

    /// The waiter lock: a spin lock held for a few instructions at a time (a
    /// link, an unlink, or end_complete taking the whole list). Used directly
    /// by future<T>::awaiter, whose own handshake state it also guards.
    void lock_waiters() const noexcept;
    void unlock_waiters() const noexcept;
    /// Under the waiter lock: links `w` unless the state is done (false).
    bool link_waiter_locked(future_waiter* w) noexcept;
    /// Under the waiter lock: unlinks `w`, which was linked; false (and `w`
    /// untouched) if end_complete has taken the list already, in which case
    /// it calls, or has called, `w->notify`.
    bool unlink_waiter_locked(future_waiter* w) noexcept;

    void wait() const noexcept;
    bool wait_for(std::chrono::nanoseconds timeout);

    /// For a coroutine job: the stop source its task's token comes from.
    std::stop_source& stop_source() noexcept { return m_stop; }
    void enable_stop() { m_stop = std::stop_source(); }
    /// For a spawned child: the lazy source cancel() stops while it runs
    /// (in place of stop_source(), which then stays empty).
    /// `linkable`: a child with no stop parent of its own, which a join that
    /// runs it inline may link to the joining coroutine's stop.
    void set_lazy_stop(lazy_stop_source* s, bool linkable) noexcept {
        m_lazy_stop = s;
        m_linkable_stop = linkable;
    }
    /// See set_lazy_stop (constant once the state is shared).
    bool linkable_stop() const noexcept { return m_linkable_stop; }
    /// That lazy source (null for other states).
    lazy_stop_source* lazy_stop() const noexcept { return m_lazy_stop; }

    /// For a spawned child pushed on a pool worker's deque: its queue item,
    /// which an await or a wait on that worker may take back and run inline.
    void set_forked(work_item* item) noexcept { m_forked = item; }
    work_item* forked_item() const noexcept { return m_forked; }

    std::exception_ptr error() const noexcept { return m_error; }
    void set_error(std::exception_ptr e) noexcept { m_error = std::move(e); }

    /// Finishes the state with `e`; a cancelled_error ends it as cancelled.
    void complete_with_error(std::exception_ptr e) noexcept;

    /// Throws what get() throws for a done state without a value.
    void rethrow_if_failed() const;

protected:
    using destroy_fn = void (*)(future_state_base*) noexcept;
    explicit future_state_base(destroy_fn destroy, std::uint32_t refs = 1) noexcept
        : m_refs(refs), m_destroy(destroy) {}
    ~future_state_base() {
        if (auto* w = m_blocking.load(std::memory_order_acquire)) release_blocking_waiter(w);
    }

private:
    std::atomic<std::uint32_t> m_refs;
    std::atomic<std::uint32_t> m_handles{0};
    std::atomic<future_status> m_status{future_status::pending};
    mutable std::atomic<bool> m_waiters_locked{false};
    future_waiter* m_waiters = nullptr;  // under the waiter lock; done_marker once taken
    destroy_fn m_destroy;
    std::exception_ptr m_error;
    std::stop_source m_stop{std::nostopstate};
    lazy_stop_source* m_lazy_stop = nullptr;
    bool m_linkable_stop = false;
    work_item* m_forked = nullptr;  // set before any handle is shared, then constant
    std::atomic<blocking_waiter*> m_blocking{nullptr};  // shared by wait_for calls
    // Set by a thread about to block in wait(): only then does end_complete
    // call notify_all (libstdc++ routes it through a process-wide table, and
    // it can cost a futex call even when nobody waits on this state).
    mutable std::atomic<bool> m_sleepers{false};
};

/// RAII for future_state_base::lock_waiters.
class waiters_lock {
public:
    explicit waiters_lock(const future_state_base& s) noexcept : m_state(s) { s.lock_waiters(); }
    ~waiters_lock() { m_state.unlock_waiters(); }
    waiters_lock(const waiters_lock&) = delete;
    waiters_lock& operator=(const waiters_lock&) = delete;

private:
    const future_state_base& m_state;
};

template <class T>
class future_state : public future_state_base {
public:
    explicit future_state(destroy_fn destroy = &delete_self, std::uint32_t refs = 1) noexcept
        : future_state_base(destroy, refs) {}
    ~future_state() {
        if (m_has_value) m_value.~T();
    }

    template <class... A>
    void emplace_value(A&&... a) {
        ::new (static_cast<void*>(std::addressof(m_value))) T(std::forward<A>(a)...);
        m_has_value = true;
    }
    T& value() noexcept { return m_value; }

    /// Sets a value unless the state is already done; returns whether it did.
    template <class... A>
    bool set_value(A&&... a) {
        if (!begin_complete()) return false;
        try {
            emplace_value(std::forward<A>(a)...);
        } catch (...) {
            set_error(std::current_exception());
            end_complete(future_status::finished);
            throw;
        }
        end_complete(future_status::finished);
        return true;
    }

    static void delete_self(future_state_base* s) noexcept { delete static_cast<future_state*>(s); }

private:
    union {
        T m_value;
    };
    bool m_has_value = false;
};

template <>
class future_state<void> : public future_state_base {
public:
    explicit future_state(destroy_fn destroy = &delete_self, std::uint32_t refs = 1) noexcept
        : future_state_base(destroy, refs) {}
    void emplace_value() noexcept {}
    bool set_value() noexcept {
        if (!begin_complete()) return false;
        end_complete(future_status::finished);
        return true;
    }
    static void delete_self(future_state_base* s) noexcept { delete static_cast<future_state*>(s); }
};

/// Makes a future from a state the caller already holds one reference to.
template <class T>
future<T> make_future(future_state<T>* s) noexcept;

[[noreturn]] void throw_no_state(const char* where);

}  // namespace detail

/// An eager, thread-safe handle to a result being computed elsewhere
/// (Python's concurrent.futures.Future). Cheap to copy; every copy sees the
/// same result.
///
/// @code
/// hop::future<int> f = pool.submit([] { return 6 * 7; });
/// int v = f.get();                 // blocks this thread
/// int w = co_await f;              // inside a coroutine: does not block
/// @endcode
template <class T>
class future {
public:
    /// The result type.
    using value_type = T;

    /// An invalid future (valid() is false); every other call throws
    /// std::logic_error.
    future() noexcept = default;
    /// Another handle to the same result (futures are shared, like shared_future). Thread-safe.
    future(const future& o) noexcept : m_state(o.m_state) {
        if (m_state) {
            m_state->add_ref();
            m_state->add_handle();
        }
    }
    /// Takes `o`'s handle; `o` is invalid afterwards.
    future(future&& o) noexcept : m_state(std::exchange(o.m_state, nullptr)) {}
    /// Drops this handle and takes `o`'s.
    future& operator=(future o) noexcept {
        std::swap(m_state, o.m_state);
        return *this;
    }
    ~future() { reset(); }

    /// False for a default-constructed or moved-from future.
    bool valid() const noexcept { return m_state != nullptr; }

    /// True once the future has a value, an exception, or was cancelled.
    bool done() const { return state("done")->done(); }
    /// True if the future ended cancelled.
    bool cancelled() const { return state("cancelled")->status() == detail::future_status::cancelled; }
    /// True while the work behind the future is running.
    bool running() const { return state("running")->status() == detail::future_status::running; }

    /// Cancels the work if it has not started (returns true; the future is
    /// then cancelled). For a running coroutine it requests stop: the task
    /// ends with cancelled_error at its next cancellation point, and cancel()
    /// returns true. Returns false for a plain job already running or a
    /// future that already has a result; true if it is already cancelled.
    bool cancel() { return state("cancel")->cancel(); }

    /// Blocks the calling thread until done().
    void wait() const { state("wait")->wait(); }

    /// Blocks until done() or `timeout` has passed; returns done(). A timeout
    /// too long for std::chrono::nanoseconds (e.g. hours::max()) means no
    /// deadline.
    /// @throws std::invalid_argument for a negative timeout.
    template <class Rep, class Period>
    bool wait_for(std::chrono::duration<Rep, Period> timeout) const {
        // Saturate: duration_cast would overflow (UB) and wrap a huge timeout
        // around to a negative one.
        return state("wait_for")->wait_for(detail::saturating_ns(timeout));
    }

    /// Blocks until done, then returns the value or rethrows the exception.
    /// @throws hop::cancelled_error if the future was cancelled.
    decltype(auto) get() const& {
        auto* s = state("get");
        s->wait();
        s->rethrow_if_failed();
        if constexpr (!std::is_void_v<T>) return static_cast<const T&>(s->value());
    }
    /// As above; moves the value out when this is the only handle.
    T get() && {
        auto* s = state("get");
        s->wait();
        s->rethrow_if_failed();
        if constexpr (!std::is_void_v<T>) return take_value(s);
    }

    /// Calls `cb(future)` once the future is done: on the thread that
    /// completes it, or at once on this thread if it already is done. The
    /// callback must not throw.
    template <class F>
    void on_done(F&& cb) const;

    class awaiter;
    /// Suspends without blocking a thread until done, then returns the value
    /// (or rethrows, as get() does); resumes the caller on the executor it was
    /// running on (inline if that is where the future completed).
    ///
    /// A cancellation point, like asyncio's `wait_for(fut, t)`: when the
    /// awaiting coroutine's stop is requested while it waits (or before it
    /// waits, on a future not done yet), it resumes promptly on its own
    /// executor with cancelled_error, and the future is cancelled as by
    /// cancel(): a pool job that has not started never runs, a coroutine job
    /// has stop requested on its token, and a plain function already running
    /// finishes with its result dropped (nobody reads it). A future already
    /// done returns its result without looking at the stop. Awaited where no
    /// stop is possible (no token, as under sync_wait), the wait costs what
    /// it always did: no allocation, no stop callback. To leave the future
    /// running when the awaiter is cancelled, await hop::shield(fut).
    ///
    /// An lvalue future is left valid; an rvalue one is consumed (and a
    /// move-only T is moved out when this is the only handle).
    awaiter operator co_await() const& noexcept { return awaiter{m_state, false, detail::stop_policy::cancel}; }
    /// As the lvalue co_await, on a future that is not kept.
    awaiter operator co_await() && noexcept {
        return awaiter{std::exchange(m_state, nullptr), true, detail::stop_policy::cancel};
    }

    /// For hop::shield and the library: the awaiter of `co_await *this` with
    /// another stop policy (see detail::stop_policy).
    awaiter await_with(detail::stop_policy policy) const& noexcept { return awaiter{m_state, false, policy}; }
    /// Awaits with a chosen stop policy (hop::shield uses it); applications use co_await or hop::shield.
    awaiter await_with(detail::stop_policy policy) && noexcept {
        return awaiter{std::exchange(m_state, nullptr), true, policy};
    }

    /// For the implementation and tests: the shared state.
    detail::future_state<T>* native_state() const noexcept { return m_state; }

private:
    friend future detail::make_future<T>(detail::future_state<T>*) noexcept;
    explicit future(detail::future_state<T>* s) noexcept : m_state(s) { m_state->add_handle(); }

    detail::future_state<T>* state(const char* where) const {
        if (!m_state) detail::throw_no_state(where);
        return m_state;
    }
    void reset() noexcept {
        if (auto* s = std::exchange(m_state, nullptr)) {
            s->drop_handle();
            s->release();
        }
    }
    static auto take_value(detail::future_state<T>* s) -> std::conditional_t<std::is_void_v<T>, int, T>
        requires(!std::is_void_v<T>)
    {
        if (s->sole_handle()) return std::move(s->value());
        if constexpr (detail::copyable_v<T>) {
            return s->value();
        } else {
            throw std::logic_error("hop::future<T>::get() &&: T is move-only and another copy of this future exists");
        }
    }

    detail::future_state<T>* m_state = nullptr;
};

/// The awaiter of `co_await fut`. It lives in the awaiting coroutine's
/// frame and is itself the node in the state's waiter list: awaiting
/// allocates nothing.
///
/// Who resumes the coroutine is decided by one handshake between three
/// parties: await_suspend (S, on the awaiting thread), the completion (N,
/// end_complete calling on_notify, on any thread) and the stop callback (C,
/// on the thread that requests stop, at most once). `m_phase` records it; it
/// is read and written only under the state's waiter lock (except by
/// await_resume, once the coroutine has resumed and the callback is gone).
///
///   idle ──S: list open, link──────────▶ linked ──N takes the list──▶ (N resumes)
///    │  ╲                                   │
///    │   ╲S: list closed (done)             └─C: unlink──▶ stopped (C posts the resume)
///    │    ╲──────────────▶ ready (S continues inline; a later C does nothing)
///    └─C (before S links)──▶ stopped_early (S does not link, continues inline)
///
/// Races, and why each is safe:
/// - C before S links: C only records stopped_early under the lock; S sees it
///   under the same lock and continues itself. C never resumes a coroutine
///   whose await_suspend has not finished (the bug of the former
///   net.hpp abandonable_awaiter: its callback posted the resumption while
///   await_suspend still used the awaiter, and a second pool worker could
///   resume the coroutine and free the frame under it).
/// - S links, then returns true: the unlock is its last access to the
///   awaiter and the state; whoever resumes the coroutine later acquires the
///   lock first, so everything S wrote happens-before the resumption.
/// - C and N at once: N takes the whole list under the lock (the list is
///   then closed); C, under the lock, unlinks only from an open list. So
///   exactly one of them owns the resumption. A C that finds the list closed
///   returns without touching anything else; await_resume's destruction of
///   the stop_callback waits for a C still running on another thread.
/// - C runs inside request_stop(): it never resumes inline (it posts to the
///   coroutine's executor) and never cancels the future there; await_resume
///   does that on the coroutine's own executor.
template <class T>
class future<T>::awaiter : private detail::future_waiter, private detail::resume_item {
    enum class phase : std::uint8_t { idle, linked, ready, stopped_early, stopped };

    struct canceller {
        awaiter* self;
        void operator()() const noexcept { self->on_stop(); }
    };

public:
    awaiter(detail::future_state<T>* s, bool owns, detail::stop_policy policy) noexcept
        : m_state(s), m_owns(owns), m_policy(policy) {}
    awaiter(const awaiter&) = delete;
    awaiter& operator=(const awaiter&) = delete;
    ~awaiter() {
        m_callback.reset();  // before the state can go: a running callback uses it
        if (m_owns && m_state) {
            m_state->drop_handle();
            m_state->release();
        }
    }

    bool await_ready() const {
        if (!m_state) detail::throw_no_state("co_await");
        return m_state->done();
    }

    /// @throws std::bad_alloc if a lazy stop token must be made and cannot.
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        handle = h;
        m_executor = detail::current_executor();
        future_waiter::notify = &awaiter::on_notify;
        if (m_policy != detail::stop_policy::ignore && detail::stop_requested_of(h.promise())) {
            m_phase = phase::stopped_early;
            return false;
        }
        // A child spawned on this worker that nobody stole runs here. Linked
        // to this coroutine's stop (so a stop requested now reaches it), it
        // must end before this coroutine goes on: if it suspends, a stop
        // then leaves this await waiting for the child (see on_stop).
        if (work_item* forked = m_state->forked_item();
            forked != nullptr && m_policy != detail::stop_policy::abandon) {
            // A task_group's child keeps its group's stop (the group outlives it).
            const detail::promise_base* link = m_policy == detail::stop_policy::cancel && m_state->linkable_stop()
                                                   ? detail::hop_promise_of(h.promise())
                                                   : nullptr;
            switch (detail::join_forked(forked, *m_state, link)) {
                case detail::join_result::done:
                    m_phase = phase::ready;
                    return false;
                case detail::join_result::started:
                    m_joined = link != nullptr;
                    break;
                case detail::join_result::not_here:
                    break;
            }
        }
        if (m_policy != detail::stop_policy::ignore) {
            const std::stop_token& token = detail::token_of(h.promise());
            // May run on_stop at once (stop requested meanwhile), or on
            // another thread from here on: the handshake below orders both.
            if (token.stop_possible()) m_callback.emplace(token, canceller{this});
        }
        detail::waiters_lock lock(*m_state);
        if (m_phase == phase::stopped_early) return false;
        HOP_ASSERT(m_phase == phase::idle);
        if (!m_state->link_waiter_locked(this)) {
            m_phase = phase::ready;  // done meanwhile
            return false;
        }
        m_phase = phase::linked;
        return true;  // the lock's release is the last access to *this
    }

    decltype(auto) await_resume() {
        m_callback.reset();  // waits out a callback still running elsewhere
        if (m_phase == phase::stopped_early || m_phase == phase::stopped) {
            if (m_policy == detail::stop_policy::cancel) m_state->cancel();
            throw cancelled_error("hop::future: co_await cancelled (stop requested while waiting)");
        }
        m_state->rethrow_if_failed();
        if constexpr (std::is_void_v<T>) {
            return;
        } else if constexpr (detail::copyable_v<T>) {
            if (m_owns) return T(future::take_value(m_state));
            return T(m_state->value());
        } else {
            if (!m_owns) throw std::logic_error("hop::future<T>: co_await a move-only T needs std::move(future)");
            return T(future::take_value(m_state));
        }
    }

private:
    // N: the state is done and has taken this node off its list.
    static void on_notify(detail::future_waiter* w) noexcept {
        auto* self = static_cast<awaiter*>(w);
        HOP_ASSERT(self->m_phase == phase::linked);
        detail::resume_on(self->m_executor, *self);
    }

    // C: the awaiting coroutine's stop was requested.
    void on_stop() noexcept {
        // The child this await started is linked to the same stop and ends
        // on its own; its completion resumes this coroutine.
        if (m_joined) return;
        {
            detail::waiters_lock lock(*m_state);
            switch (m_phase) {
                case phase::idle:
                    m_phase = phase::stopped_early;  // S sees it and continues itself
                    return;
                case phase::linked:
                    if (!m_state->unlink_waiter_locked(this)) return;  // N owns the resumption
                    m_phase = phase::stopped;
                    break;
                case phase::ready:
                    return;  // S continued inline
                case phase::stopped_early:
                case phase::stopped:
                    HOP_ASSERT(false);  // a stop callback runs once
                    return;
            }
        }
        // Queued, never resumed inline inside request_stop (the caller of
        // request_stop may hold locks, or be this coroutine's own parent).
        if (m_executor != nullptr) {
            m_executor->post_continuation(this);
        } else {
            detail::resume_inline(handle);
        }
    }

    detail::future_state<T>* m_state;
    bool m_owns;
    detail::stop_policy m_policy;
    phase m_phase = phase::idle;
    bool m_joined = false;  // this await ran the child, linked to its own stop
    detail::executor_base* m_executor = nullptr;
    std::optional<std::stop_callback<canceller>> m_callback;
};

/// `co_await hop::shield(fut)` awaits `fut` as `co_await fut` does, except
/// that a stop requested on the awaiting coroutine leaves the future alone
/// (asyncio.shield): the awaiter resumes promptly with cancelled_error, and
/// the work behind the future goes on; its result is dropped unless another
/// handle reads it. For a future that others share (a cached lookup).
template <class T>
typename future<T>::awaiter shield(future<T> f) noexcept {
    return std::move(f).await_with(detail::stop_policy::abandon);
}

namespace detail {

template <class T>
future<T> make_future(future_state<T>* s) noexcept {
    return future<T>(s);
}

template <class T, class F>
struct on_done_node final : future_waiter {
    on_done_node(future<T> f, F&& cb) : fut(std::move(f)), fn(std::forward<F>(cb)) {
        notify = &on_done_node::run;
    }
    static void run(future_waiter* w) noexcept {
        auto* self = static_cast<on_done_node*>(w);
        self->fn(std::as_const(self->fut));
        delete self;
    }
    future<T> fut;
    std::decay_t<F> fn;
};

}  // namespace detail

template <class T>
template <class F>
void future<T>::on_done(F&& cb) const {
    auto* s = state("on_done");
    auto* node = new detail::on_done_node<T, F>(*this, std::forward<F>(cb));
    if (!s->add_waiter(node)) detail::on_done_node<T, F>::run(node);
}

/// The producing side of a future (std::promise-like, thread-safe).
/// Destroying a promise that never produced a result completes its future
/// with broken_promise_error.
template <class T>
class promise {
public:
    promise() : m_state(new detail::future_state<T>()) {}
    /// Takes `o`'s result slot; `o` is empty afterwards.
    promise(promise&& o) noexcept
        : m_state(std::exchange(o.m_state, nullptr)), m_retrieved(o.m_retrieved) {}
    /// Breaks this promise if unfulfilled, then takes `o`'s slot.
    promise& operator=(promise&& o) noexcept {
        if (this != &o) {
            abandon();
            m_state = std::exchange(o.m_state, nullptr);
            m_retrieved = o.m_retrieved;
        }
        return *this;
    }
    ~promise() { abandon(); }

    /// The future; callable once.
    /// @throws std::logic_error on a second call.
    future<T> get_future() {
        auto* s = state("get_future");
        if (m_retrieved) throw std::logic_error("hop::promise::get_future: the future was already retrieved");
        m_retrieved = true;
        s->add_ref();
        return detail::make_future(s);
    }

    /// Sets the value. If the future was cancelled first, the value is
    /// dropped silently (the consumer no longer wants it).
    /// @throws std::logic_error if a result was already set.
    template <class... A>
    void set_value(A&&... a) {
        auto* s = state("set_value");
        if (s->status() == detail::future_status::cancelled) return;
        if (!s->set_value(std::forward<A>(a)...)) {
            // A concurrent cancel() may still be completing: not a double set.
            if (s->settled_status() != detail::future_status::cancelled) already_set("set_value");
        }
    }

    /// Sets an exception (a null one is refused with std::invalid_argument).
    void set_exception(std::exception_ptr e) {
        auto* s = state("set_exception");
        if (!e) throw std::invalid_argument("hop::promise::set_exception: the exception_ptr is null");
        if (s->status() == detail::future_status::cancelled) return;
        if (!s->begin_complete()) {
            if (s->settled_status() != detail::future_status::cancelled) already_set("set_exception");
            return;
        }
        s->set_error(std::move(e));
        s->end_complete(detail::future_status::finished);
    }

    /// True once the consumer cancelled the future, so a producer can give
    /// up early.
    bool is_cancelled() const { return state("is_cancelled")->status() == detail::future_status::cancelled; }

private:
    detail::future_state<T>* state(const char* where) const {
        if (!m_state) detail::throw_no_state(where);
        return m_state;
    }
    [[noreturn]] static void already_set(const char* where) {
        throw std::logic_error(std::string("hop::promise::") + where + ": a result was already set");
    }
    void abandon() noexcept {
        if (auto* s = std::exchange(m_state, nullptr)) {
            if (s->begin_complete()) {
                s->set_error(std::make_exception_ptr(broken_promise_error()));
                s->end_complete(detail::future_status::finished);
            }
            s->release();
        }
    }

    detail::future_state<T>* m_state;
    bool m_retrieved = false;
};

}  // namespace hop
