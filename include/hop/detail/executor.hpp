#pragma once
// The one internal interface every hop executor implements, plus the
// thread-local "which executor am I running on" that the affinity rule reads.

#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <new>
#include <ranges>
#include <type_traits>
#include <utility>
#include <vector>

namespace hop::detail {

/// An intrusive unit of work. Whoever owns the storage keeps it alive until
/// `run` (or `discard`) has been called; executors never allocate for it.
struct work_item {
    work_item* next = nullptr;
    /// Runs the work. Called exactly once unless `discard` is called instead.
    void (*run)(work_item*) = nullptr;
    /// For work that may be dropped (a pending job when a pool is shut down
    /// with cancel_pending): marks it cancelled and releases it. Null for a
    /// coroutine continuation, which must always run or its frame would leak.
    void (*discard)(work_item*) = nullptr;
};

/// A work_item that resumes a coroutine.
struct resume_item : work_item {
    std::coroutine_handle<> handle;
    resume_item() noexcept { run = &resume_item::do_run; }
    static void do_run(work_item* w) noexcept { static_cast<resume_item*>(w)->handle.resume(); }
};

/// Base of cpu_pool, io_loop and the inline loop behind sync_wait.
class executor_base {
public:
    executor_base() = default;
    executor_base(const executor_base&) = delete;
    executor_base& operator=(const executor_base&) = delete;

    /// Queue work submitted from outside (submit, post, schedule).
    /// Thread-safe; never blocks.
    /// @throws hop::executor_shutdown_error once the executor has shut down.
    virtual void post_item(work_item* w) = 0;

    /// Queue the continuation of a coroutine that already runs under hop
    /// (a child finished elsewhere, a future completed). Thread-safe, never
    /// blocks, never throws: if the executor has already stopped for good the
    /// continuation runs on the calling thread rather than being lost.
    virtual void post_continuation(work_item* w) noexcept = 0;

protected:
    ~executor_base() = default;
};

/// Prints an exception that nothing could receive to stderr (it is not lost
/// silently, and it does not take the process down).
void report_escaped_exception(const char* where) noexcept;

// The calling thread's executor, read inline on every await and resume.
// Initial-exec: no call to __tls_get_addr (libhop is linked at startup, or
// dlopen'ed into glibc's static TLS reserve: it is one pointer).
[[gnu::tls_model("initial-exec")]] extern thread_local constinit executor_base* tl_current_executor;

/// The executor whose work the calling thread is running now, or null on a
/// thread that belongs to no executor.
inline executor_base* current_executor() noexcept { return tl_current_executor; }

/// Sets the calling thread's executor; returns the previous one.
executor_base* exchange_current_executor(executor_base* ex) noexcept;

/// RAII for exchange_current_executor.
class current_executor_scope {
public:
    explicit current_executor_scope(executor_base* ex) noexcept : m_prev(exchange_current_executor(ex)) {}
    ~current_executor_scope() { exchange_current_executor(m_prev); }
    current_executor_scope(const current_executor_scope&) = delete;
    current_executor_scope& operator=(const current_executor_scope&) = delete;

private:
    executor_base* m_prev;
};

/// Resumes `h` on the calling thread through a per-thread trampoline, so a
/// chain of inline completions (a resumed coroutine completing a future that
/// resumes another ...) never recurses without bound.
void resume_inline(std::coroutine_handle<> h) noexcept;

/// Reserves the calling thread's trampoline queue up front, so deep chains
/// of inline completions do not allocate later (executor threads call it
/// when they start). @throws std::bad_alloc.
void reserve_inline_queue();

/// Resumes the coroutine in `item` on `target`: inline when the calling thread
/// already runs `target` (or there is no target), otherwise queued there.
inline void resume_on(executor_base* target, resume_item& item) noexcept {
    if (target == nullptr || target == current_executor()) {
        resume_inline(item.handle);
    } else {
        target->post_continuation(&item);
    }
}

// Coroutine frames and job nodes come from per-thread size-class caches
// (cache-line rounded), not straight from the global heap.
void* frame_allocate(std::size_t size);
void frame_deallocate(void* p, std::size_t size) noexcept;
/// How many frames the cache could not serve and took from the heap, by all
/// threads so far (for tests and benchmarks: hop's own allocations are the
/// heap allocations beyond these).
std::uint64_t frame_cache_misses() noexcept;
/// Gives the frames cached for reuse back to the heap: the calling thread's
/// cache and the depot shared by all threads (an idle loop calls it,
/// io_loop_options::idle_trim). Returns how many frames it freed.
std::size_t trim_frame_cache() noexcept;
/// Frames cached now on the calling thread and in the shared depot (for
/// tests); 0 when the cache is compiled out (HOP_FRAME_CACHE=0).
std::size_t cached_frames() noexcept;
/// Whether frames are cached at all (HOP_FRAME_CACHE; off under ASan).
bool frame_cache_enabled() noexcept;

/// Allocation policy shared by every hop promise type.
struct frame_allocated {
    static void* operator new(std::size_t size) { return frame_allocate(size); }
    static void operator delete(void* p, std::size_t size) noexcept { frame_deallocate(p, size); }
};

/// A fire-and-forget callable queued on an executor (cpu_pool::post,
/// io_loop::post). An exception escaping it is reported, not lost.
template <class Fn>
struct posted_fn final : work_item, frame_allocated {
    posted_fn(Fn&& f, const char* where_) : fn(std::move(f)), where(where_) {
        run = [](work_item* w) noexcept {
            auto* self = static_cast<posted_fn*>(w);
            try {
                self->fn();
            } catch (...) {
                report_escaped_exception(self->where);
            }
            delete self;
        };
    }
    Fn fn;
    const char* where;
};

/// Queues `fn()` on `ex` (post_item: throws executor_shutdown_error after
/// shutdown, and then nothing is leaked).
template <class F>
void post_callable(executor_base& ex, F&& fn, const char* where) {
    auto* n = new posted_fn<std::decay_t<F>>(std::decay_t<F>(std::forward<F>(fn)), where);
    try {
        ex.post_item(n);
    } catch (...) {
        delete n;
        throw;
    }
}

/// The items of any input range, copied (or moved, from an rvalue range)
/// into a vector that a combinator owns for as long as it runs.
template <class Range>
auto to_owned_vector(Range&& items) {
    std::vector<std::ranges::range_value_t<Range>> out;
    if constexpr (std::ranges::sized_range<Range>) out.reserve(std::ranges::size(items));
    if constexpr (std::is_rvalue_reference_v<Range&&>) {
        for (auto&& x : items) out.push_back(std::move(x));
    } else {
        for (auto&& x : items) out.push_back(x);
    }
    return out;
}

}  // namespace hop::detail
