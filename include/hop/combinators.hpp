#pragma once
/// @file
/// when_all, when_any (tasks) and as_completed, wait (futures).

#include <hop/detail/executor.hpp>
#include <hop/detail/stop.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <ranges>
#include <memory>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <variant>
#include <vector>

namespace hop {

namespace detail {

/// A task's result as stored by a combinator: void becomes std::monostate.
template <class T>
using stored_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

template <class T>
inline constexpr bool is_task_v = false;
template <class T>
inline constexpr bool is_task_v<task<T>> = true;

/// What a group of children started by one combinator await share: a count
/// of unfinished children (plus one held by the starter), the parent to
/// resume, the first child to end that matters (when_all: the first to fail;
/// when_any: the first to end), and a lazy stop source that cancels every
/// child (made only if a child asks for a token: see lazy_stop_source).
///
/// The children are the tasks themselves, started without a parent: each
/// reports its end through a child_sink (task_promise_base::completion_sink)
/// and keeps its result in its own frame until the combinator takes it.
class fan_in {
public:
    static constexpr std::size_t none = static_cast<std::size_t>(-1);

    /// `any`: when_any's rule (the first child to end wins), else when_all's
    /// (the first child to fail).
    fan_in(std::size_t children, bool any) : m_remaining(children + 1), m_any(any) {}

    /// Remembers where to resume the parent and links its stop to the
    /// children's.
    template <class P>
    void attach(std::coroutine_handle<P> parent) noexcept {
        m_resume.handle = parent;
        m_executor = current_executor();
        m_stop.set_parent(hop_promise_of(parent.promise()));
    }
    lazy_stop_source& stop() noexcept { return m_stop; }

    /// The starter's share; true if the parent must suspend.
    bool release_starter() noexcept { return m_remaining.fetch_sub(1, std::memory_order_acq_rel) != 1; }

    /// Child `i` ended. The first that matters is recorded and stops the
    /// others; the last one out resumes the parent on its executor.
    void ended(std::size_t i, bool failed) noexcept {
        if (failed || m_any) {
            std::size_t expected = none;
            if (m_first.compare_exchange_strong(expected, i, std::memory_order_acq_rel)) m_stop.request_stop();
        }
        if (m_remaining.fetch_sub(1, std::memory_order_acq_rel) == 1) resume_on(m_executor, m_resume);
    }
    /// Child `i` could not even start (an empty task): it failed with `e`.
    void failed_to_start(std::size_t i, std::exception_ptr e) noexcept {
        std::size_t expected = none;
        if (m_first.compare_exchange_strong(expected, i, std::memory_order_acq_rel)) {
            m_start_error = std::move(e);
            m_stop.request_stop();
        }
        m_remaining.fetch_sub(1, std::memory_order_acq_rel);  // the starter still holds its share
    }

    /// After all ended: the recorded child (none if nobody failed, for when_all).
    std::size_t first() const noexcept { return m_first.load(std::memory_order_acquire); }
    /// Rethrows the error of a child that could not start, if `i` is one.
    void rethrow_start_error(std::size_t i) const {
        if (m_start_error && i == first()) std::rethrow_exception(m_start_error);
    }

private:
    std::atomic<std::size_t> m_remaining;
    std::atomic<std::size_t> m_first{none};
    bool m_any;
    resume_item m_resume;
    executor_base* m_executor = nullptr;
    lazy_stop_source m_stop;
    std::exception_ptr m_start_error;
};

/// One child's report to its fan_in.
struct child_sink : task_promise_base::completion_sink {
    fan_in* fan = nullptr;
    std::size_t index = 0;
    static void on_end(completion_sink& self, bool failed) noexcept {
        auto& c = static_cast<child_sink&>(self);
        c.fan->ended(c.index, failed);
    }
};

/// Readies child `i` (not started): the work item that starts it, or null
/// if it cannot start (an empty task; reported to `f` as its failure).
template <class T>
work_item* make_child(fan_in& f, child_sink& sink, std::size_t i, task<T>& t) noexcept {
    sink.ended = &child_sink::on_end;
    sink.fan = &f;
    sink.index = i;
    if (!t.valid() || t.handle().done()) {
        f.failed_to_start(i, std::make_exception_ptr(std::invalid_argument(
                                 "hop combinator: task " + std::to_string(i) + " is empty (moved-from) or already awaited")));
        return nullptr;
    }
    return t.handle().promise().prepare_detached(t.handle(), sink, &f.stop());
}

/// The result of a finished child, void as std::monostate.
template <class T>
stored_t<T> take_child_result(task<T>& t) {
    if constexpr (std::is_void_v<T>) {
        t.handle().promise().take_result();
        return std::monostate{};
    } else {
        return t.handle().promise().take_result();
    }
}

/// Starts the children readied by make_child (null entries did not start).
///
/// On a cpu_pool worker this forks: every child but the first goes on the
/// worker's deque, where idle workers steal them; the first runs inline; then
/// the children nobody stole are taken back, newest first, and run inline
/// too. When nobody steals, a fork costs a push and a pop, and the parent
/// never suspends. Anywhere else (an io_loop, sync_wait, a plain thread) each
/// child starts inline in turn and runs until it first suspends, as a
/// single-threaded event loop would.
void start_children(work_item** children, std::size_t n) noexcept;

/// Frame-cache storage for a combinator's per-child arrays (no malloc in
/// steady state).
template <class T>
struct frame_allocator {
    using value_type = T;
    frame_allocator() = default;
    template <class U>
    frame_allocator(const frame_allocator<U>&) noexcept {}
    T* allocate(std::size_t n) {
        if (n > static_cast<std::size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
        return static_cast<T*>(frame_allocate(n * sizeof(T)));
    }
    void deallocate(T* p, std::size_t n) noexcept { frame_deallocate(p, n * sizeof(T)); }
    template <class U>
    bool operator==(const frame_allocator<U>&) const noexcept {
        return true;
    }
};

template <class T>
using frame_vector = std::vector<T, frame_allocator<T>>;

/// The vector forms' await_suspend: readies every task, starts them (forking
/// on a pool worker), and returns whether the parent must suspend.
template <class T, class P>
bool start_each(fan_in& f, std::coroutine_handle<P> parent, std::vector<task<T>>& tasks,
                frame_vector<child_sink>& sinks) {
    frame_vector<work_item*> children(tasks.size());
    f.attach(parent);
    for (std::size_t i = 0; i < tasks.size(); ++i) children[i] = make_child(f, sinks[i], i, tasks[i]);
    start_children(children.data(), children.size());
    return f.release_starter();
}

template <class... T>
class when_all_awaitable {
public:
    explicit when_all_awaitable(task<T>... ts) : m_tasks(std::move(ts)...), m_fan(sizeof...(T), false) {}
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
        m_fan.attach(parent);
        start_all(std::index_sequence_for<T...>{});
        return m_fan.release_starter();
    }
    std::tuple<stored_t<T>...> await_resume() {
        if (const std::size_t f = m_fan.first(); f != fan_in::none) rethrow_failure(f, std::index_sequence_for<T...>{});
        return collect(std::index_sequence_for<T...>{});
    }

private:
    template <std::size_t... I>
    void start_all(std::index_sequence<I...>) {
        std::array<work_item*, sizeof...(T)> children{make_child(m_fan, m_sinks[I], I, std::get<I>(m_tasks))...};
        start_children(children.data(), children.size());
    }
    template <std::size_t... I>
    void rethrow_failure(std::size_t f, std::index_sequence<I...>) {
        m_fan.rethrow_start_error(f);
        ((I == f ? (void)take_child_result(std::get<I>(m_tasks)) : void()), ...);  // throws
    }
    template <std::size_t... I>
    std::tuple<stored_t<T>...> collect(std::index_sequence<I...>) {
        return std::tuple<stored_t<T>...>(take_child_result(std::get<I>(m_tasks))...);
    }

    std::tuple<task<T>...> m_tasks;
    std::array<child_sink, sizeof...(T)> m_sinks;
    fan_in m_fan;
};

template <class T>
class when_all_vector_awaitable {
public:
    explicit when_all_vector_awaitable(std::vector<task<T>> ts)
        : m_tasks(std::move(ts)), m_sinks(m_tasks.size()), m_fan(m_tasks.size(), false) {}
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
        return start_each(m_fan, parent, m_tasks, m_sinks);
    }
    auto await_resume() {
        if (const std::size_t f = m_fan.first(); f != fan_in::none) {
            m_fan.rethrow_start_error(f);
            take_child_result(m_tasks[f]);  // throws
        }
        if constexpr (!std::is_void_v<T>) {
            std::vector<T> out;
            out.reserve(m_tasks.size());
            for (auto& t : m_tasks) out.push_back(t.handle().promise().take_result());
            return out;
        }
    }

private:
    std::vector<task<T>> m_tasks;
    frame_vector<child_sink> m_sinks;
    fan_in m_fan;
};

/// when_all over a std::array of tasks: everything it needs (the tasks,
/// one sink per child, the items it starts) lives in the awaitable, in the
/// awaiting coroutine's frame; the results come back in a std::array.
template <class T, std::size_t N>
class when_all_array_awaitable {
public:
    explicit when_all_array_awaitable(std::array<task<T>, N> ts) : m_tasks(std::move(ts)), m_fan(N, false) {}
    bool await_ready() const noexcept { return N == 0; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
        m_fan.attach(parent);
        std::array<work_item*, N> children;
        for (std::size_t i = 0; i < N; ++i) children[i] = make_child(m_fan, m_sinks[i], i, m_tasks[i]);
        start_children(children.data(), N);
        return m_fan.release_starter();
    }
    std::array<stored_t<T>, N> await_resume() {
        if constexpr (N != 0) {
            if (const std::size_t f = m_fan.first(); f != fan_in::none) {
                m_fan.rethrow_start_error(f);
                take_child_result(m_tasks[f]);  // throws
            }
        }
        return collect(std::make_index_sequence<N>{});
    }

private:
    template <std::size_t... I>
    std::array<stored_t<T>, N> collect(std::index_sequence<I...>) {
        return std::array<stored_t<T>, N>{take_child_result(m_tasks[I])...};
    }

    std::array<task<T>, N> m_tasks;
    std::array<child_sink, N> m_sinks;
    fan_in m_fan;
};

}  // namespace detail

/// `co_await hop::when_all(t1, t2, ...)` runs the tasks concurrently and
/// returns a tuple of their results (void becomes std::monostate). The first
/// failure requests stop on the others; once all have ended it is rethrown.
/// Resumes the caller on its own executor. Stop on the caller's token is
/// passed on to every child.
///
/// Awaited on a cpu_pool worker it forks: the first task runs on the calling
/// thread, the others are left on the worker's deque for idle workers to
/// steal, and those nobody stole are taken back and run on the calling
/// thread (no suspension, no allocation beyond the frames). Anywhere else
/// (an io_loop, sync_wait, a plain thread) each task starts on the caller's
/// thread in turn and runs until it first suspends.
///
/// @code
/// hop::task<long> fib(long n) {
///     if (n < 2) co_return n;
///     auto r = co_await hop::when_all(fib(n - 1), fib(n - 2));
///     co_return std::get<0>(r) + std::get<1>(r);
/// }
/// long v = pool.submit([] { return fib(30); }).get();  // forks on `pool`
/// @endcode
template <class... T>
[[nodiscard]] detail::when_all_awaitable<T...> when_all(task<T>... tasks) {
    return detail::when_all_awaitable<T...>(std::move(tasks)...);
}

/// As above for a vector: returns std::vector<T> in input order (nothing for
/// void tasks).
template <class T>
[[nodiscard]] detail::when_all_vector_awaitable<T> when_all(std::vector<task<T>> tasks) {
    return detail::when_all_vector_awaitable<T>(std::move(tasks));
}

/// As above for a std::array of tasks: returns a std::array of their
/// results in input order (void becomes std::monostate). Nothing is
/// allocated beyond the tasks' frames: no vector in, no vector out (for a
/// fixed fan-out such as a 10-way tree).
template <class T, std::size_t N>
[[nodiscard]] detail::when_all_array_awaitable<T, N> when_all(std::array<task<T>, N> tasks) {
    return detail::when_all_array_awaitable<T, N>(std::move(tasks));
}

/// The result of when_any: which task finished first, and its value.
template <class T>
struct when_any_result {
    /// Which task finished first (its position in the vector).
    std::size_t index;
    /// Its result.
    T value;
};
/// when_any's result for tasks of void: which one finished first.
template <>
struct when_any_result<void> {
    /// Which task finished first (its position in the vector).
    std::size_t index;
};

namespace detail {

template <class T>
class when_any_awaitable {
public:
    explicit when_any_awaitable(std::vector<task<T>> ts)
        : m_tasks(std::move(ts)), m_sinks(m_tasks.size()), m_fan(m_tasks.size(), true) {
        if (m_tasks.empty()) throw std::invalid_argument("hop::when_any: the task list is empty");
        for (std::size_t i = 0; i < m_tasks.size(); ++i) {
            if (!m_tasks[i].valid()) {
                throw std::invalid_argument("hop::when_any: tasks[" + std::to_string(i) + "] is empty (moved-from)");
            }
        }
    }
    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> parent) {
        return start_each(m_fan, parent, m_tasks, m_sinks);
    }
    when_any_result<T> await_resume() {
        // The first to end won (with a value or an exception); the others were
        // stopped and have ended too.
        const std::size_t w = m_fan.first();
        m_fan.rethrow_start_error(w);
        if constexpr (std::is_void_v<T>) {
            m_tasks[w].handle().promise().take_result();
            return {w};
        } else {
            return {w, m_tasks[w].handle().promise().take_result()};
        }
    }

private:
    std::vector<task<T>> m_tasks;
    frame_vector<child_sink> m_sinks;
    fan_in m_fan;
};

}  // namespace detail

/// `co_await hop::when_any(tasks)` runs the tasks concurrently (forking on a
/// cpu_pool worker, as when_all does); the first to end (with a value or an
/// exception) wins. The others are cancelled through
/// their stop token and awaited before this returns `{index, value}` (or
/// rethrows the winner's exception). Resumes the caller on its own executor.
/// @throws std::invalid_argument for an empty list or an empty task.
template <class T>
[[nodiscard]] detail::when_any_awaitable<T> when_any(std::vector<task<T>> tasks) {
    return detail::when_any_awaitable<T>(std::move(tasks));
}

// ---- map over coroutine functions -------------------------------------------

/// Options for hop::map.
struct map_options {
    /// At most this many calls of `fn` in flight at once (at least 1).
    std::size_t max_concurrency = 100;
};

namespace detail {

template <class Fn, class Item, class R>
struct map_shared {
    Fn fn;
    std::vector<Item> items;
    std::vector<std::optional<stored_t<R>>> results;
    std::atomic<std::size_t> claim{0};  // workers may run on several threads
};

// One of max_concurrency workers: claims the next index, awaits fn(item),
// stores the result, until the items run out or a stop is requested (the
// first failure stops every worker through when_all).
template <class Fn, class Item, class R>
task<void> map_worker(map_shared<Fn, Item, R>& m) {
    for (;;) {
        co_await cancellation_point();
        const std::size_t i = m.claim.fetch_add(1, std::memory_order_relaxed);
        if (i >= m.items.size()) co_return;
        task<R> call = std::invoke(m.fn, std::move(m.items[i]));
        if constexpr (std::is_void_v<R>) {
            co_await std::move(call);
            m.results[i].emplace();
        } else {
            m.results[i].emplace(co_await std::move(call));
        }
    }
}

template <class Fn, class Item, class R>
task<std::conditional_t<std::is_void_v<R>, void, std::vector<R>>> map_impl(Fn fn, std::vector<Item> items,
                                                                          std::size_t workers) {
    map_shared<Fn, Item, R> m{std::move(fn), std::move(items), {}, {}};
    m.results.resize(m.items.size());
    workers = std::min(workers, m.items.size());
    std::vector<task<void>> ws;
    ws.reserve(workers);
    for (std::size_t k = 0; k < workers; ++k) ws.push_back(map_worker(m));
    co_await when_all(std::move(ws));
    if constexpr (!std::is_void_v<R>) {
        std::vector<R> out;
        out.reserve(m.results.size());
        for (auto& r : m.results) out.push_back(std::move(*r));
        co_return out;
    }
}

}  // namespace detail

/// `co_await hop::map(fn, items, {.max_concurrency = N})` calls the coroutine
/// function `fn` (returning hop::task<R>) on every item with at most N calls
/// in flight, and returns the results in input order (nothing for void).
/// The calls run concurrently on the caller's executor (each may hop
/// elsewhere; awaited on a cpu_pool worker they fork across the pool, as
/// when_all does); the first failure cancels the calls in flight, starts no new
/// ones, and is rethrown once they have ended. Stop on the caller's token
/// cancels them too. `fn` and the items are kept alive until the end.
/// @throws std::invalid_argument if max_concurrency is 0.
template <class F, std::ranges::input_range Range>
auto map(F&& fn, Range&& items, map_options options = {}) {
    using Item = std::ranges::range_value_t<Range>;
    using Fn = std::decay_t<F>;
    using T = std::invoke_result_t<Fn&, Item&&>;
    static_assert(detail::is_task_v<T>, "hop::map needs a coroutine function returning hop::task<R>; for plain "
                                        "functions use cpu_pool::map");
    using R = typename T::value_type;
    if (options.max_concurrency == 0) {
        throw std::invalid_argument("hop::map: max_concurrency 0 is not allowed (need at least 1)");
    }
    std::vector<Item> in = detail::to_owned_vector(std::forward<Range>(items));
    return detail::map_impl<Fn, Item, R>(Fn(std::forward<F>(fn)), std::move(in), options.max_concurrency);
}

// ---- futures: as_completed and wait ---------------------------------------

/// When hop::wait returns.
enum class return_when { first_completed, first_exception, all_completed };

/// The two sets hop::wait returns (Python's (done, not_done)), each in the
/// order the futures were given.
template <class T>
struct wait_result {
    /// The futures that are done, in the order given.
    std::vector<future<T>> done;
    /// The futures that are not, in the order given.
    std::vector<future<T>> not_done;
};

namespace detail {

using clock = std::chrono::steady_clock;

/// Checks a timeout argument; `where` names the function for the message.
std::optional<clock::time_point> deadline_after(std::optional<std::chrono::nanoseconds> timeout, const char* where);

/// Index of the first repeated state (by identity), after checking none is
/// null. Returns the unique indices in order.
std::vector<std::size_t> unique_states(const std::vector<future_state_base*>& states, const char* where);

/// Blocks until `when` holds for `states` or the deadline passes; returns
/// one done flag per state.
std::vector<bool> wait_states(const std::vector<future_state_base*>& states, return_when when,
                              std::optional<clock::time_point> deadline);

/// The engine behind as_completed: futures report here as they finish.
class completion_queue {
public:
    static std::shared_ptr<completion_queue> create(const std::vector<future_state_base*>& states,
                                                    std::optional<clock::time_point> deadline);
    virtual ~completion_queue() = default;
    /// Blocks for the next finished index; nullopt when all were yielded.
    /// @throws timeout_error past the deadline.
    virtual std::optional<std::size_t> next_blocking() = 0;
    /// Non-blocking: the next finished index if there is one, or registers
    /// `item` to be resumed on `ex` when there is (returns nullopt and sets
    /// `suspended`). `exhausted` is set when all were yielded.
    virtual std::optional<std::size_t> next_or_register(resume_item* item, executor_base* ex, bool& suspended,
                                                        bool& exhausted) = 0;
    /// After a registered wait resumed: the index, or throws timeout_error.
    virtual std::optional<std::size_t> take_after_wake() = 0;
};

}  // namespace detail

/// Yields futures as they finish (Python's as_completed). Iterate it with a
/// plain `for` (blocks the thread) or, in a coroutine, with
/// `while (auto f = co_await stream.next())` (does not block). A future given
/// twice is yielded once. Past the timeout, both throw timeout_error.
template <class T>
class as_completed_stream {
public:
    /// A stream over `futures`, ending with timeout_error once `timeout` (if any) has passed; made by hop::as_completed.
    as_completed_stream(std::vector<future<T>> futures, std::optional<std::chrono::nanoseconds> timeout)
        : m_futures(std::move(futures)) {
        std::vector<detail::future_state_base*> states;
        states.reserve(m_futures.size());
        for (auto& f : m_futures) states.push_back(f.native_state());
        auto deadline = detail::deadline_after(timeout, "hop::as_completed");
        auto keep = detail::unique_states(states, "hop::as_completed");
        if (keep.size() != m_futures.size()) {
            std::vector<future<T>> unique;
            unique.reserve(keep.size());
            for (auto i : keep) unique.push_back(std::move(m_futures[i]));
            m_futures = std::move(unique);
            states.clear();
            for (auto& f : m_futures) states.push_back(f.native_state());
        }
        m_queue = detail::completion_queue::create(states, deadline);
    }

    class next_operation : private detail::resume_item {
    public:
        explicit next_operation(as_completed_stream& s) noexcept : m_stream(&s) {}
        bool await_ready() const noexcept { return false; }
        bool await_suspend(std::coroutine_handle<> h) {
            handle = h;
            bool suspended = false;
            m_index = m_stream->m_queue->next_or_register(this, detail::current_executor(), suspended, m_exhausted);
            m_waited = suspended;
            return suspended;
        }
        std::optional<future<T>> await_resume() {
            if (m_waited) m_index = m_stream->m_queue->take_after_wake();
            if (!m_index) return std::nullopt;
            return m_stream->m_futures[*m_index];
        }

    private:
        as_completed_stream* m_stream;
        std::optional<std::size_t> m_index;
        bool m_waited = false;
        bool m_exhausted = false;
    };

    /// The next finished future, or nullopt when all were yielded. Resumes the
    /// caller on its own executor.
    /// @throws timeout_error past the deadline.
    next_operation next() noexcept { return next_operation{*this}; }

    /// Blocking iteration: `for (auto& f : hop::as_completed(fs))` waits for each next future on this thread.
    class iterator {
    public:
        /// A finished future.
        using value_type = future<T>;
        /// Iterator difference type.
        using difference_type = std::ptrdiff_t;
        iterator() = default;
        /// Waits for the first future (the end if there is none).
        explicit iterator(as_completed_stream* s) : m_stream(s) { advance(); }
        /// The future that finished last.
        const future<T>& operator*() const { return m_current; }
        /// Waits for the next future to finish (blocks the thread).
        iterator& operator++() {
            advance();
            return *this;
        }
        /// Waits for the next future to finish (blocks the thread).
        void operator++(int) { advance(); }
        /// True once every future has been handed out.
        bool operator==(std::default_sentinel_t) const noexcept { return m_stream == nullptr; }

    private:
        void advance() {
            auto i = m_stream->m_queue->next_blocking();
            if (!i) {
                m_stream = nullptr;
                return;
            }
            m_current = m_stream->m_futures[*i];
        }
        as_completed_stream* m_stream = nullptr;
        future<T> m_current;
    };
    /// Blocks for the first finished future.
    iterator begin() { return iterator{this}; }
    /// The end of a blocking iteration.
    std::default_sentinel_t end() const noexcept { return {}; }

private:
    std::vector<future<T>> m_futures;
    std::shared_ptr<detail::completion_queue> m_queue;
};

/// Futures in the order they finish.
/// @throws std::invalid_argument for an invalid future (naming its index) or
///         a negative timeout.
template <class T>
as_completed_stream<T> as_completed(std::vector<future<T>> futures) {
    return as_completed_stream<T>(std::move(futures), std::nullopt);
}
/// as_completed with a deadline: the stream throws timeout_error once `timeout` has passed without the next future finishing.
template <class T, class Rep, class Period>
as_completed_stream<T> as_completed(std::vector<future<T>> futures, std::chrono::duration<Rep, Period> timeout) {
    return as_completed_stream<T>(std::move(futures), detail::saturating_ns(timeout));
}

/// Blocks the calling thread until `when` holds (Python's
/// concurrent.futures.wait) or the timeout passes, and returns
/// `{done, not_done}`; a timeout is not an error. first_exception returns at
/// the first future that ends with an exception (cancellation is not one), or
/// when all are done.
/// @throws std::invalid_argument for an invalid future (naming its index) or
///         a negative timeout.
template <class T>
wait_result<T> wait(const std::vector<future<T>>& futures, return_when when = return_when::all_completed,
                    std::optional<std::chrono::nanoseconds> timeout = std::nullopt) {
    std::vector<detail::future_state_base*> states;
    states.reserve(futures.size());
    for (auto& f : futures) states.push_back(f.native_state());
    auto deadline = detail::deadline_after(timeout, "hop::wait");
    auto keep = detail::unique_states(states, "hop::wait");
    std::vector<detail::future_state_base*> unique;
    unique.reserve(keep.size());
    for (auto i : keep) unique.push_back(states[i]);
    auto flags = detail::wait_states(unique, when, deadline);
    wait_result<T> out;
    for (std::size_t k = 0; k < keep.size(); ++k) (flags[k] ? out.done : out.not_done).push_back(futures[keep[k]]);
    return out;
}
/// wait with a deadline: returns when `when` holds or `timeout` has passed, whichever comes first (then not_done is non-empty).
template <class T, class Rep, class Period>
wait_result<T> wait(const std::vector<future<T>>& futures, return_when when,
                    std::chrono::duration<Rep, Period> timeout) {
    return wait(futures, when, std::optional<std::chrono::nanoseconds>(detail::saturating_ns(timeout)));
}

}  // namespace hop
