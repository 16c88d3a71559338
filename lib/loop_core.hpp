#pragma once
// Private to the implementation: the backend-independent part of io_loop
// (run queues, the timer heap, stop state) and the one interface both
// backends implement. The backend is chosen in exactly one place:
// make_backend() in io_loop.cpp.

#include <hop/detail/executor.hpp>
#include <hop/detail/io_op.hpp>
#include <hop/detail/timer.hpp>
#include <hop/io_loop.hpp>

#include <atomic>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace hop::detail {

class loop_core;

/// Base of a backend's per-fd state (see io_op.hpp).
struct fd_registration {
    virtual ~fd_registration() = default;
};

/// What a backend provides. Every function is for the loop thread unless it
/// says "thread-safe".
class loop_backend {
public:
    virtual ~loop_backend() = default;
    virtual const char* name() const noexcept = 0;
    virtual hop::backend kind() const noexcept = 0;

    /// Runs until the core is stopped. May block until an event.
    virtual std::size_t run() = 0;
    /// Runs ready work; blocks for one event if there is none. May block.
    virtual std::size_t run_once() = 0;
    /// Runs ready work. Never blocks.
    virtual std::size_t poll() = 0;

    /// Another thread queued work or stopped the loop: make the loop thread
    /// notice. Thread-safe, never blocks.
    virtual void wake() noexcept = 0;

    /// The earliest timer deadline changed (loop thread): make sure the loop
    /// wakes by then. Never blocks.
    virtual void deadline_changed() noexcept = 0;

    /// See io_loop::native_handle.
    virtual int native_handle() = 0;

    /// Starts / cancels an IO operation (hop/detail/io_op.hpp). Loop
    /// thread; never block. start_io may complete the operation before it
    /// returns. The operation's own completion always follows a cancel
    /// (with -ECANCELED, or its result if that came first).
    virtual void start_io(io_operation& op) noexcept = 0;
    virtual void cancel_io(io_operation& op) noexcept = 0;
    /// Loop thread: ends the operations in flight on `fd` (-ECANCELED),
    /// drops its registration `reg` (may be null) and closes `fd`.
    virtual void close_fd(int fd, fd_registration* reg) noexcept = 0;
    /// Whether sockets for this backend are made non-blocking.
    virtual bool wants_nonblocking() const noexcept = 0;

    /// Called from the loop's destructor, on the destroying thread, after
    /// every timer was aborted: cancels in-flight kernel operations and reaps
    /// their completions (running what they resume) until none is left.
    virtual void drain_for_shutdown() = 0;
};

/// The backend-independent state of one io_loop.
class loop_core {
public:
    explicit loop_core(io_loop& owner) noexcept : m_owner(owner) {}

    io_loop& owner() noexcept { return m_owner; }
    loop_backend& backend() noexcept { return *m_backend; }
    void set_backend(std::unique_ptr<loop_backend> b) noexcept { m_backend = std::move(b); }

    // ---- work -----------------------------------------------------------

    /// Thread-safe. From the loop thread the item goes on the local queue.
    void post(work_item* w) noexcept;
    /// True once the loop is being destroyed: no new outside work.
    bool closing() const noexcept { return m_closing.load(std::memory_order_acquire); }
    void set_closing() noexcept { m_closing.store(true, std::memory_order_release); }
    /// Waits until no other thread is inside post() (destruction).
    void quiesce_posters() noexcept { std::lock_guard lock(m_remote_mutex); }

    /// Runs everything queued now (not what that queues) and every expired
    /// timer. Loop thread. Returns how many handlers ran.
    std::size_t run_ready();
    /// True if run_ready() has anything to do right now (loop thread).
    bool has_ready_work() const noexcept {
        return m_remote_count.load(std::memory_order_seq_cst) != 0 || m_local_head != nullptr ||
               (!m_heap.empty() && m_heap.front()->deadline <= loop_clock::now());
    }
    bool has_local_work() const noexcept { return m_local_head != nullptr; }
    bool has_remote_work() const noexcept { return m_remote_count.load(std::memory_order_seq_cst) != 0; }

    // ---- timers (loop thread only) ---------------------------------------

    void add_timer(timer_node* t);
    /// Removes `t` if it is queued; returns whether it was.
    bool remove_timer(timer_node* t) noexcept;
    std::optional<loop_clock::time_point> next_deadline() const noexcept {
        if (m_heap.empty()) return std::nullopt;
        return m_heap.front()->deadline;
    }
    std::size_t timer_count() const noexcept { return m_heap.size(); }
    /// Fires every pending timer as aborted (loop destruction).
    void abort_timers() noexcept;

    // ---- stop -------------------------------------------------------------

    void request_stop() noexcept {
        m_stopped.store(true, std::memory_order_seq_cst);
        m_backend->wake();
    }
    bool stopped() const noexcept { return m_stopped.load(std::memory_order_seq_cst); }
    void restart() noexcept { m_stopped.store(false, std::memory_order_seq_cst); }

    /// Marks the calling thread as running this loop for its lifetime.
    class running_scope {
    public:
        explicit running_scope(loop_core& c) noexcept;
        ~running_scope();
        running_scope(const running_scope&) = delete;
        running_scope& operator=(const running_scope&) = delete;

    private:
        loop_core& m_core;
        current_executor_scope m_exec;
        loop_core* m_prev_loop;
    };
    bool running_in_this_thread() const noexcept;

private:
    std::size_t fire_expired();
    void sift_up(std::size_t i) noexcept;
    void sift_down(std::size_t i) noexcept;
    static bool earlier(const timer_node* a, const timer_node* b) noexcept {
        return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
    }

    io_loop& m_owner;
    std::unique_ptr<loop_backend> m_backend;

    // Loop-thread queue (no lock).
    work_item* m_local_head = nullptr;
    work_item* m_local_tail = nullptr;
    // Queue for other threads.
    std::mutex m_remote_mutex;
    work_item* m_remote_head = nullptr;
    work_item* m_remote_tail = nullptr;
    std::atomic<std::size_t> m_remote_count{0};

    std::vector<timer_node*> m_heap;
    std::uint64_t m_timer_seq = 0;

    std::atomic<bool> m_stopped{false};
    std::atomic<bool> m_closing{false};
    std::atomic<int> m_running_threads{0};
};

/// The loop the calling thread runs, or null.
loop_core* current_core() noexcept;

/// Turns a liburing / syscall `-errno` (or errno) into std::system_error.
[[noreturn]] void throw_errno(int err, const char* what);
/// An IO operation's failure `result` (-errno): cancelled_error for
/// -ECANCELED, else std::system_error; both name `what`.
[[noreturn]] void throw_io_failure(int result, const std::string& what);

// The backends (lib/io_uring/, lib/epoll/).
std::unique_ptr<loop_backend> make_uring_backend(loop_core& core, unsigned queue_depth);
std::unique_ptr<loop_backend> make_asio_backend(loop_core& core, asio::io_context* host);
bool uring_compiled_in() noexcept;

}  // namespace hop::detail
