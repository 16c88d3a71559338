#pragma once
// Private to the implementation: the loop itself and the one interface a
// kernel facility implements for it.
//
// loop_core owns everything a loop means: the run queues, the timer heap,
// stop, the turn (run / run_once / poll, spinning before a sleep, counting
// handlers), the native handle's protocol and shutdown. It is written once.
// A backend (lib/io_uring/, lib/epoll/) is only what a kernel facility must
// provide: start and cancel operations, hand what it queued to the kernel,
// complete what is ready, sleep until a deadline, be woken from another
// thread. The backend is chosen in exactly one place: make_backend() in
// io_loop.cpp.

#include <hop/detail/executor.hpp>
#include <hop/detail/io_op.hpp>
#include <hop/detail/timer.hpp>
#include <hop/io_loop.hpp>

#include "metrics_impl.hpp"

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace hop::detail {

class loop_core;

/// Base of a backend's per-fd state (see io_op.hpp).
struct fd_registration {
    virtual ~fd_registration() = default;
};

/// How a backend's loop woke other loops, and was woken by them: figures for
/// tests and benchmarks (loop_backend::wake_counts). Only io_uring keeps them.
struct wake_stats {
    /// Wakes this loop sent to sleeping io_uring loops as IORING_OP_MSG_RING.
    std::uint64_t msg_ring_sent = 0;
    /// Wakes this loop sent to sleeping loops by their eventfd: the target
    /// or this loop takes no MSG_RING (epoll, HOP_URING_NO_MSG_RING=1), or a
    /// MSG_RING failed.
    std::uint64_t eventfd_sent = 0;
    /// MSG_RING wakes that could not be submitted or that the kernel refused
    /// (the target is then woken by its eventfd; see uring_backend.cpp).
    std::uint64_t msg_ring_failed = 0;
    /// MSG_RING wakes this loop received.
    std::uint64_t msg_ring_received = 0;
    /// MSG_RING wakes prepared inside this loop's turn and left for the
    /// submit the turn makes anyway (no syscall of their own).
    std::uint64_t msg_ring_deferred = 0;
    /// io_uring_enter calls made only to send prepared MSG_RING wakes at
    /// once (flush_wakes): a post outside a turn, a handler about to block,
    /// a long handler batch, the end of run / run_once / poll.
    std::uint64_t wake_flushes = 0;
};

/// What a kernel facility provides to loop_core.
///
/// Threads: every function is called on the loop thread (the thread inside
/// the core's turn, or the thread destroying the loop) except wake() and
/// wake_from(), which other threads call, and the destructor, called after
/// shutdown.
///
/// Completions: an operation's completion is its io_operation::complete()
/// call. A backend calls it only from start_io (a call that finished at
/// once), reap(), wait() or, for a hosted backend, a work item it posts to
/// the core. What complete() resumes is queued on the core; the core runs
/// it after the backend returns.
///
/// Every started operation gets exactly one completion, also when it is
/// cancelled (-ECANCELED, or its result if that came first), when its fd is
/// closed, and at shutdown: an operation's memory (the awaiting frame) is
/// freed only after its completion.
class loop_backend {
public:
    virtual ~loop_backend() = default;
    virtual const char* name() const noexcept = 0;
    virtual hop::backend kind() const noexcept = 0;

    // ---- the backend's half of the turn ------------------------------------

    /// Hands what start_io / cancel_io queued to the kernel and completes the
    /// operations whose results are ready now. Never blocks. Returns how many
    /// operations it completed.
    virtual std::size_t reap() = 0;
    /// As reap(), but first sleeps until a result is ready, wake() is called
    /// or `deadline` passes (none: no limit). May return early (a signal, a
    /// spurious wakeup): the core decides whether to wait again.
    virtual std::size_t wait(const std::optional<loop_clock::time_point>& deadline) = 0;
    /// Whether the turn should spin a little before wait(): true when
    /// results_ready() can see every result that could come (io_uring's
    /// completion queue), or when none can (nothing in flight) and only
    /// other threads' posts, which the spin sees, can end the wait.
    virtual bool can_spin() const noexcept = 0;
    /// Cheap check that reap() would complete something (for the spin).
    virtual bool results_ready() const noexcept = 0;
    /// Thread-safe, never blocks: makes a wait() in progress (or the next
    /// one) return soon. The core calls it only while the loop sleeps.
    virtual void wake() noexcept = 0;
    /// wake() for a post made on a thread that runs another loop, `poster`
    /// (inside its run, poll or shutdown), under this core's remote lock (so
    /// this backend is alive throughout). A backend may wake through the
    /// poster's kernel facility instead (io_uring to io_uring: an
    /// IORING_OP_MSG_RING prepared on the poster's ring); it returns true
    /// then, and the poster's core either calls poster.wake_deferred() (the
    /// post was made by a handler of the poster's run / run_once / poll: the
    /// wake goes with the next reap() or wait() of the poster, or an earlier
    /// flush_wakes(), see loop_core::post) or calls poster.flush_wakes() as
    /// soon as it has let go of the lock, before the post returns. Otherwise
    /// it returns false, and the core calls wake() once it has let go of the
    /// lock.
    virtual bool wake_from(loop_backend& poster) noexcept {
        (void)poster;
        return false;
    }
    /// Hands the wakes that wake_from() prepared here and that have not
    /// reached the kernel yet to the kernel now (the targets may be gone by
    /// now); a wake that fails is made by eventfd. Does nothing when there
    /// are none. Loop thread.
    virtual void flush_wakes() noexcept {}
    /// The wake wake_from() just prepared here is left for this backend's
    /// next reap() or wait(), which must send it (and fall back as
    /// flush_wakes() does if it cannot). Counts it. Loop thread.
    virtual void wake_deferred() noexcept {}
    /// How this loop woke others and was woken (loop thread).
    virtual wake_stats wake_counts() const noexcept { return {}; }

    // ---- driving the loop from a program's own poll loop --------------------

    /// An fd that becomes readable when the loop has work (see
    /// io_loop::native_handle). Made at the first call.
    virtual int native_handle() = 0;
    /// The host is about to sleep on the native handle: it must become
    /// readable when a result is ready, wake() is called, or `deadline`
    /// passes.
    virtual void prepare_host_sleep(const std::optional<loop_clock::time_point>& deadline) = 0;
    /// The host woke on the native handle: consume the readiness.
    virtual void host_woke() noexcept = 0;

    // ---- hosted loops -------------------------------------------------------

    /// A backend whose turns run as handlers of a host's event loop (an
    /// asio::io_context run by the program) returns true; the core then
    /// wakes it on every post from another thread, and io_loop::run & co.
    /// call drive_host().
    virtual bool hosted() const noexcept { return false; }
    enum class drive_mode { run, run_once, poll };
    /// Runs the host's event loop (hosted backends only); returns the
    /// number of handlers run, hop's and the host's.
    virtual std::size_t drive_host(drive_mode) { return 0; }

    // ---- operations -----------------------------------------------------------

    /// Starts an IO operation (hop/detail/io_op.hpp). Never blocks; may
    /// complete it before returning.
    virtual void start_io(io_operation& op) noexcept = 0;
    /// Asks a started operation to end; its completion follows.
    virtual void cancel_io(io_operation& op) noexcept = 0;
    /// Ends the operations in flight on `fd` (-ECANCELED), drops its
    /// registration `reg` (may be null) and closes `fd`.
    virtual void close_fd(int fd, fd_registration* reg) noexcept = 0;
    /// Whether sockets for this backend are made non-blocking.
    virtual bool wants_nonblocking() const noexcept = 0;

    // ---- shutdown ---------------------------------------------------------------

    /// Asks every operation in flight to end. Their completions come
    /// through reap() / wait() as usual (a hosted backend may complete them
    /// here). Idempotent; called again while operations remain.
    virtual void cancel_all() noexcept = 0;
    /// Operations started and not yet completed.
    virtual std::size_t in_flight() const noexcept = 0;
};

/// The loop: queues, timers, stop, the turn.
class loop_core {
public:
    explicit loop_core(io_loop& owner) noexcept : m_owner(owner) {}

    io_loop& owner() noexcept { return m_owner; }
    loop_backend& backend() noexcept { return *m_backend; }
    void set_backend(std::unique_ptr<loop_backend> b) noexcept {
        m_backend = std::move(b);
        m_always_wake = m_backend && m_backend->hosted();
        if (m_backend) m_backend_label = m_backend->name();
    }

    // ---- the turn (io_loop's run, run_once, poll) -----------------------

    std::size_t run();
    std::size_t run_once();
    std::size_t poll();
    int native_handle();
    /// One turn on a hosted backend's handler: runs what is ready, never
    /// blocks. The caller holds a running_scope.
    std::size_t hosted_turn() { return run_ready(); }
    /// Ends every operation and timer, running what they resume, until
    /// nothing is left (~io_loop).
    void shutdown();

    // ---- work -----------------------------------------------------------

    /// Thread-safe. From the loop thread the item goes on the local queue.
    void post(work_item* w) noexcept;
    /// True once the loop is being destroyed: no new outside work.
    bool closing() const noexcept { return m_closing.load(std::memory_order_acquire); }
    /// Waits until no other thread is inside post() (destruction): none
    /// holds the lock, and none is still waking this loop after it.
    void quiesce_posters() noexcept {
        std::lock_guard lock(m_remote_mutex);
        while (m_wakers.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    }

    /// Runs everything queued now (not what that queues) and every expired
    /// timer. Loop thread. Returns how many handlers ran.
    std::size_t run_ready();
    /// True if run_ready() has anything to do right now (loop thread).
    bool has_ready_work() const noexcept {
        return has_remote_work() || m_local_head != nullptr ||
               (!m_heap.empty() && m_heap.front()->deadline <= loop_clock::now());
    }
    bool has_local_work() const noexcept { return m_local_head != nullptr; }

    // ---- wakes of other loops left for this loop's next submit ------------
    //
    // A handler of run / run_once / poll that posts to a sleeping io_uring
    // loop prepares a MSG_RING wake on this loop's ring (wake_from) that
    // goes with the turn's own submit, not with a syscall of its own. They
    // are sent at once instead (flush_owed_wakes) before anything could
    // keep them from the kernel: a blocking wait hop offers on this thread
    // (before_blocking(): future::get/wait/wait_for, hop::wait,
    // as_completed, sync_wait, pool joins), another loop run on this thread
    // (running_scope), every max_deferred_handlers handlers, and the end of
    // run / run_once / poll.

    /// Handlers that may run after a deferred wake before it is flushed: a
    /// long batch must not keep the target asleep. 32, the submission
    /// batch io_uring already keeps to: handlers are short (a resume, an
    /// SQE: well under a microsecond each), so the target waits at most a
    /// few microseconds more than for an immediate send — less than its own
    /// wakeup costs — while a batch of a dozen posts still shares one
    /// submit.
    static constexpr std::size_t max_deferred_handlers = 32;
    /// Whether wakes prepared by this loop wait for its next submit.
    bool wakes_owed() const noexcept { return m_wakes_owed; }
    /// Sends the deferred wakes now. Loop thread.
    void flush_owed_wakes() noexcept;
    bool has_remote_work() const noexcept { return m_remote_count.load(std::memory_order_seq_cst) != 0; }

    /// A cancel item will resume an operation that already finished
    /// (loop_operation): shutdown waits for it. Loop thread.
    void cancel_owed() noexcept { ++m_cancels_owed; }
    void cancel_paid() noexcept { --m_cancels_owed; }

    // ---- timers (loop thread only) ---------------------------------------

    void add_timer(timer_node* t);
    /// Removes `t` if it is queued; returns whether it was.
    bool remove_timer(timer_node* t) noexcept;
    std::optional<loop_clock::time_point> next_deadline() const noexcept {
        if (m_heap.empty()) return std::nullopt;
        return m_heap.front()->deadline;
    }
    std::size_t timer_count() const noexcept { return m_heap.size(); }

    // ---- figures (hop::metrics, lib/metrics.cpp) -------------------------

    /// The loop's counters: the loop thread writes them, any thread reads.
    loop_stats& stats() noexcept { return m_stats; }
    /// What the stall watchdog watches.
    stall_watch& watch() noexcept { return m_watch; }
    /// The backend's name, readable while the loop is registered.
    const char* backend_label() const noexcept { return m_backend_label; }

    /// True while the loop sleeps in the backend (or its host sleeps on the
    /// native handle) and a post from another thread must wake it. Any
    /// thread; for tests and benchmarks that need a sleeping target.
    bool sleeping() const noexcept { return m_sleeping.load(std::memory_order_seq_cst); }

    // ---- stop -------------------------------------------------------------

    void request_stop() noexcept {
        m_stopped.store(true, std::memory_order_seq_cst);
        m_backend->wake();
    }
    bool stopped() const noexcept { return m_stopped.load(std::memory_order_seq_cst); }
    /// How long the loop idles after work before it trims (0: never);
    /// io_loop_options::idle_trim.
    void set_idle_trim(loop_clock::duration d) noexcept { m_idle_trim = d; }
    /// How many times the loop has trimmed (for tests; any thread).
    std::uint64_t idle_trims() const noexcept { return m_idle_trims.load(std::memory_order_relaxed); }
    void restart() noexcept { m_stopped.store(false, std::memory_order_seq_cst); }

    /// Marks the calling thread as running this loop for its lifetime.
    class running_scope {
    public:
        explicit running_scope(loop_core& c) noexcept;
        ~running_scope();
        running_scope(const running_scope&) = delete;
        running_scope& operator=(const running_scope&) = delete;

    private:
        current_executor_scope m_exec;
        loop_core* m_prev_loop;
    };
    bool running_in_this_thread() const noexcept;

private:
    std::size_t turn(bool may_block);
    /// The loop has idled for m_idle_trim: gives cached frames and the
    /// heap's free pages back (io_loop_options::idle_trim).
    void trim_idle() noexcept;
    /// Marks run / run_once / poll: posts made by handlers may defer their
    /// wakes. Flushes what is owed when it ends (also by an exception).
    class deferral_scope {
    public:
        explicit deferral_scope(loop_core& c) noexcept : m_core(c), m_prev(c.m_defer_wakes) {
            c.m_defer_wakes = true;
        }
        ~deferral_scope() {
            m_core.m_defer_wakes = m_prev;
            if (m_core.m_wakes_owed) m_core.flush_owed_wakes();
        }
        deferral_scope(const deferral_scope&) = delete;
        deferral_scope& operator=(const deferral_scope&) = delete;

    private:
        loop_core& m_core;
        bool m_prev;
    };
    /// A handler ran: flushes deferred wakes after max_deferred_handlers.
    void handler_ran() noexcept {
        if (m_wakes_owed && ++m_handlers_since_owed >= max_deferred_handlers) flush_owed_wakes();
    }
    /// The turn is about to submit (reap / wait): the deferred wakes go.
    void owed_wakes_submitting() noexcept;
    /// Under m_remote_mutex. Returns the backend whose flush_wakes() the
    /// caller must call once it has released the lock, or null; sets
    /// `wake_self` (and counts the caller in m_wakers) when the caller must
    /// call this backend's wake() once it has released the lock.
    loop_backend* wake_if_sleeping(bool& wake_self) noexcept {
        // A load first: a loop that is awake costs the poster no write to
        // the shared line.
        if (m_always_wake ||
            (m_sleeping.load(std::memory_order_seq_cst) && m_sleeping.exchange(false, std::memory_order_seq_cst))) {
            if (loop_backend* flush = wake_for_poster()) return flush;
            wake_self = true;
            m_wakers.fetch_add(1, std::memory_order_relaxed);
        }
        return nullptr;
    }
    /// Prepares the wake of this loop for a post from another thread through
    /// the poster's own loop when the thread runs one (wake_from): returns
    /// the poster's backend then, else null (the caller wakes it).
    loop_backend* wake_for_poster() noexcept;
    std::size_t fire_expired();
    void abort_timers() noexcept;
    void sift_up(std::size_t i) noexcept;
    void sift_down(std::size_t i) noexcept;
    static bool earlier(const timer_node* a, const timer_node* b) noexcept {
        return a->deadline < b->deadline || (a->deadline == b->deadline && a->seq < b->seq);
    }

    io_loop& m_owner;
    std::unique_ptr<loop_backend> m_backend;
    loop_stats m_stats;
    stall_watch m_watch;
    const char* m_backend_label = "";
    bool m_always_wake = false;  // a hosted backend: every remote post wakes it

    // Loop-thread queue (no lock).
    work_item* m_local_head = nullptr;
    work_item* m_local_tail = nullptr;
    // Queue for other threads.
    std::mutex m_remote_mutex;
    // Posters that queued an item under the lock and call wake() after it:
    // the destructor waits for them (quiesce_posters).
    std::atomic<std::size_t> m_wakers{0};
    work_item* m_remote_head = nullptr;
    work_item* m_remote_tail = nullptr;
    std::atomic<std::size_t> m_remote_count{0};

    std::vector<timer_node*> m_heap;
    std::uint64_t m_timer_seq = 0;
    std::size_t m_cancels_owed = 0;

    // The loop thread is asleep in the backend (or the host sleeps on the
    // native handle): a post from another thread must wake it. Set before
    // the last look for work, cleared by whoever wakes it.
    std::atomic<bool> m_sleeping{false};
    bool m_native = false;  // native_handle() was asked for
    // Loop thread: handlers may defer their wakes (inside run / run_once /
    // poll); wakes are deferred; handlers run since the first was.
    bool m_defer_wakes = false;
    bool m_wakes_owed = false;
    std::size_t m_handlers_since_owed = 0;
    std::atomic<bool> m_stopped{false};
    std::atomic<bool> m_closing{false};
    // Idle trim (loop thread): work ran since the last trim; when the trim
    // is due if nothing else runs (set at the first sleep after work).
    loop_clock::duration m_idle_trim{0};
    bool m_trim_owed = false;
    std::optional<loop_clock::time_point> m_trim_at;
    std::atomic<std::uint64_t> m_idle_trims{0};
};

/// The loop the calling thread runs, or null.
loop_core* current_core() noexcept;

#ifndef NDEBUG
/// Debug builds, for tests: called after a post that prepared its wake on
/// the poster's backend (wake_from) let go of the target's lock and before
/// the wake is sent (by the post itself, or by the poster's next submit or
/// flush when it was deferred) — the window in which the target may go.
extern void (*test_before_wake_flush)();
#endif

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
