// io_loop: the backend-independent core (queues, timer heap, stop), the one
// place a backend is chosen, hop::run, current_loop and default_loop.

#include "io_kinds.hpp"
#include "loop_core.hpp"
#include "spin.hpp"

#include <hop/detail/blocking.hpp>
#include <hop/detail/fd_wait.hpp>
#include <hop/detail/io_handle.hpp>
#include <hop/io_loop.hpp>

#include <malloc.h>
#include <pthread.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <system_error>
#include <algorithm>
#include <thread>

namespace hop {

namespace detail {

namespace {
thread_local loop_core* tl_core = nullptr;
}  // namespace

loop_core* current_core() noexcept { return tl_core; }

#ifndef NDEBUG
void (*test_before_wake_flush)() = nullptr;
#endif

void throw_errno(int err, const char* what) {
    if (err < 0) err = -err;
    throw std::system_error(err, std::generic_category(), what);
}

void throw_io_failure(int result, const std::string& what) {
    if (result == -ECANCELED) throw cancelled_error(what + ": cancelled");
    throw std::system_error(-result, std::generic_category(), what);
}

loop_core::running_scope::running_scope(loop_core& c) noexcept
    : m_exec(&c.owner()), m_prev_loop(tl_core) {
    // Another loop (or this one, nested) runs on this thread now: the
    // outer loop's turn may not submit for a long while.
    if (m_prev_loop != nullptr && m_prev_loop->m_wakes_owed) m_prev_loop->flush_owed_wakes();
    tl_core = &c;
    c.m_watch.thread.store(static_cast<unsigned long>(::pthread_self()), std::memory_order_relaxed);
}

loop_core::running_scope::~running_scope() { tl_core = m_prev_loop; }

bool loop_core::running_in_this_thread() const noexcept { return tl_core == this; }

void loop_core::flush_owed_wakes() noexcept {
    m_wakes_owed = false;
#ifndef NDEBUG
    if (test_before_wake_flush) test_before_wake_flush();
#endif
    m_backend->flush_wakes();
}

void loop_core::owed_wakes_submitting() noexcept {
    // The backend's reap() / wait() that follows sends them (and falls
    // back to eventfd if it cannot).
    if (!m_wakes_owed) return;
    m_wakes_owed = false;
#ifndef NDEBUG
    if (test_before_wake_flush) test_before_wake_flush();
#endif
}

void before_blocking() noexcept {
    if (loop_core* c = tl_core; c != nullptr && c->wakes_owed()) c->flush_owed_wakes();
}

void loop_core::post(work_item* w) noexcept {
    w->next = nullptr;
    if (tl_core == this) {
        if (m_local_tail) {
            m_local_tail->next = w;
        } else {
            m_local_head = w;
        }
        m_local_tail = w;
        return;
    }
    // The wake is decided under the lock but made after it: the woken loop's
    // first act is to take that lock, and a poster still inside wake()
    // would put it back to sleep on the mutex (strace, cross_loop_bench
    // idle on epoll: a futex sleep and wakeup more per wake). Once the item
    // is visible the loop may run it and be destroyed: the destructor waits
    // for posters counted in m_wakers (under the lock) to leave wake()
    // (quiesce_posters). A wake prepared on the poster's own backend
    // (wake_from) is sent after the lock too; the poster's backend is alive
    // (this thread runs it). By a handler of the poster's run / run_once /
    // poll it goes with the poster's next submit (see wakes_owed in
    // loop_core.hpp); otherwise (shutdown, a loop's own internals) now.
    loop_backend* flush = nullptr;
    bool wake_self = false;
    {
        std::lock_guard lock(m_remote_mutex);
        if (m_remote_tail) {
            m_remote_tail->next = w;
        } else {
            m_remote_head = w;
        }
        m_remote_tail = w;
        m_remote_count.fetch_add(1, std::memory_order_seq_cst);
        flush = wake_if_sleeping(wake_self);
    }
    if (wake_self) {
        m_backend->wake();
        m_wakers.fetch_sub(1, std::memory_order_release);  // last touch of this loop
        return;
    }
    if (flush != nullptr) {
        loop_core& poster = *tl_core;  // wake_for_poster: flush is its backend
        if (poster.m_defer_wakes) {
            if (!poster.m_wakes_owed) {
                poster.m_wakes_owed = true;
                poster.m_handlers_since_owed = 0;
            }
            flush->wake_deferred();
            return;
        }
        poster.flush_owed_wakes();  // sends it now (flush is poster's backend)
    }
}

loop_backend* loop_core::wake_for_poster() noexcept {
    // A thread running another loop may wake through that loop's backend
    // (io_uring: a MSG_RING on its ring). Not while that backend is being
    // destroyed (the core no longer holds it then).
    loop_core* poster = tl_core;
    if (poster != nullptr && poster != this && poster->m_backend != nullptr) {
        return m_backend->wake_from(*poster->m_backend) ? poster->m_backend.get() : nullptr;
    }
    return nullptr;
}

// ---- the turn -----------------------------------------------------------------

std::size_t loop_core::turn(bool may_block) {
    // Busy time for hop::metrics: three clock reads a turn, none when not counting.
    const bool timed = counting();
    const auto turn_start = timed ? loop_clock::now() : loop_clock::time_point{};
    loop_clock::duration slept{0};
    std::size_t n = run_ready();
    // Every way on from here submits first (reap() or wait()): the wakes
    // the handlers deferred go with it.
    owed_wakes_submitting();
    bool block = may_block && n == 0 && !has_ready_work() && !stopped();
    if (block && m_backend->can_spin()) {
        // Look for work a little before paying for a sleep and a wakeup: a
        // loop that ran out of work a moment ago is likely to get more within
        // microseconds.
        auto budget = spin_budget;
        if (auto d = next_deadline()) {
            budget = std::min(budget, std::chrono::duration_cast<std::chrono::nanoseconds>(*d - loop_clock::now()));
        }
        if (budget.count() > 0) {
            n += m_backend->reap();  // hands what is queued to the kernel first
            if (n != 0 || spin_until([&] { return has_remote_work() || stopped() || m_backend->results_ready(); },
                                     budget)) {
                block = false;
            }
        }
    }
    if (block) {
        m_sleeping.store(true, std::memory_order_seq_cst);
        // Posts from other threads check m_sleeping after queueing: one of
        // the two sees the other.
        if (has_remote_work() || stopped()) {
            m_sleeping.store(false, std::memory_order_seq_cst);
            block = false;
        }
    }
    if (block) {
        auto deadline = next_deadline();
        bool trim_due = false;
        if (m_trim_owed) {
            // The first sleep after work fixes when the trim is due; the
            // sleeps until then (spurious wakeups) keep it.
            if (!m_trim_at) m_trim_at = loop_clock::now() + m_idle_trim;
            if (!deadline || *m_trim_at <= *deadline) {
                deadline = m_trim_at;
                trim_due = true;
            }
        }
        const auto sleep_start = timed ? loop_clock::now() : loop_clock::time_point{};
        const std::size_t got = m_backend->wait(deadline);
        if (timed) slept = loop_clock::now() - sleep_start;
        n += got;
        m_stats.sleeps.add();
        // A poster that found the loop asleep cleared the flag to wake it.
        if (!m_sleeping.load(std::memory_order_relaxed)) m_stats.wakes.add();
        m_sleeping.store(false, std::memory_order_seq_cst);
        if (trim_due && got == 0 && !has_ready_work() && loop_clock::now() >= *m_trim_at) trim_idle();
    } else {
        n += m_backend->reap();
    }
    n += run_ready();
    m_stats.turns.add();
    if (timed) {
        m_stats.busy_ns.add(static_cast<std::uint64_t>(
            std::chrono::duration_cast<std::chrono::nanoseconds>(loop_clock::now() - turn_start - slept).count()));
    }
    if (n != 0 && m_idle_trim.count() > 0) {
        m_trim_owed = true;
        m_trim_at.reset();
    }
    return n;
}

void loop_core::trim_idle() noexcept {
    m_trim_owed = false;
    m_trim_at.reset();
    trim_frame_cache();
#ifdef __GLIBC__
    ::malloc_trim(0);
#endif
    m_idle_trims.fetch_add(1, std::memory_order_relaxed);
}

std::size_t loop_core::run() {
    if (m_backend->hosted()) return m_backend->drive_host(loop_backend::drive_mode::run);
    running_scope scope(*this);
    deferral_scope deferral(*this);
    std::size_t n = 0;
    while (!stopped()) n += turn(true);
    return n;
}

std::size_t loop_core::run_once() {
    if (m_backend->hosted()) return m_backend->drive_host(loop_backend::drive_mode::run_once);
    running_scope scope(*this);
    if (stopped()) return 0;
    deferral_scope deferral(*this);
    return turn(true);
}

std::size_t loop_core::poll() {
    if (m_backend->hosted()) return m_backend->drive_host(loop_backend::drive_mode::poll);
    running_scope scope(*this);
    if (m_native) {
        m_sleeping.store(false, std::memory_order_seq_cst);
        m_backend->host_woke();
    }
    std::size_t n;
    {
        deferral_scope deferral(*this);
        n = turn(false);
    }
    if (m_native) {
        // The host sleeps on the native handle next: it must become readable
        // at the next deadline, on a result, and on a post from another
        // thread (m_sleeping makes posters wake it).
        m_backend->prepare_host_sleep(next_deadline());
        m_sleeping.store(true, std::memory_order_seq_cst);
        if (has_ready_work() && m_sleeping.exchange(false, std::memory_order_seq_cst)) m_backend->wake();
    }
    return n;
}

int loop_core::native_handle() {
    const int fd = m_backend->native_handle();
    if (!m_native) {
        m_native = true;
        // Work that arrives before the first poll() must show on the fd.
        m_backend->prepare_host_sleep(next_deadline());
        m_sleeping.store(true, std::memory_order_seq_cst);
        if (has_ready_work() && m_sleeping.exchange(false, std::memory_order_seq_cst)) m_backend->wake();
    }
    return fd;
}

void loop_core::shutdown() {
    m_closing.store(true, std::memory_order_release);
    m_sleeping.store(false, std::memory_order_seq_cst);
    // The destroying thread acts as the loop thread while it winds down:
    // waiting coroutines are resumed with cancelled_error and allowed to
    // finish; in-flight kernel operations are cancelled and reaped.
    running_scope scope(*this);
    for (;;) {
        // Kernel operations first: a coroutine unwound by an aborted timer
        // may close a socket, and its peer's pending read would then end
        // with the close instead of being cancelled.
        m_backend->cancel_all();
        while (m_backend->in_flight() != 0) {
            // Every cancelled operation still delivers its completion, and
            // only then may its frame go away. What the completions resume
            // may start more (an `all` transfer's next part is refused, but
            // an arm item queued earlier starts): cancel those too.
            // Results may also come as posts (epoll's blocking-pool calls).
            m_sleeping.store(true, std::memory_order_seq_cst);
            if (!has_remote_work()) m_backend->wait(std::nullopt);
            m_sleeping.store(false, std::memory_order_seq_cst);
            run_ready();
            m_backend->cancel_all();
        }
        abort_timers();
        run_ready();
        if (m_local_head == nullptr && !has_remote_work() && m_heap.empty() && m_backend->in_flight() == 0) {
            if (m_cancels_owed == 0) break;
            // A stop callback on another thread claimed an operation that
            // has finished since; its cancel item is on its way here and is
            // what resumes the waiter.
            std::this_thread::yield();
        }
    }
}

std::size_t loop_core::run_ready() {
    // Everything queued before this call runs now; what it queues waits for
    // the next turn, so a coroutine that keeps yielding cannot starve IO.
    if (m_remote_count.load(std::memory_order_seq_cst) != 0) {
        work_item* head;
        work_item* tail;
        {
            std::lock_guard lock(m_remote_mutex);
            head = std::exchange(m_remote_head, nullptr);
            tail = std::exchange(m_remote_tail, nullptr);
            m_stats.remote_posts.add(m_remote_count.load(std::memory_order_relaxed));
            m_remote_count.store(0, std::memory_order_seq_cst);
        }
        if (head) {
            if (m_local_tail) {
                m_local_tail->next = head;
            } else {
                m_local_head = head;
            }
            m_local_tail = tail;
        }
    }
    std::size_t n = 0;
    work_item* batch = std::exchange(m_local_head, nullptr);
    m_local_tail = nullptr;
    // The stall watchdog sees the loop busy, and each handler as a step.
    m_watch.busy.store(true, std::memory_order_relaxed);
    while (batch) {
        auto* next = batch->next;
        m_watch.step();
        batch->run(batch);
        ++n;
        handler_ran();
        batch = next;
    }
    n += fire_expired();
    m_watch.step();
    m_watch.busy.store(false, std::memory_order_relaxed);
    m_stats.handlers.add(n);
    return n;
}

std::size_t loop_core::fire_expired() {
    if (m_heap.empty()) return 0;
    std::size_t n = 0;
    const auto now = loop_clock::now();
    while (!m_heap.empty() && m_heap.front()->deadline <= now) {
        auto* t = m_heap.front();
        remove_timer(t);
        m_watch.step();
        t->fire(t, false);
        ++n;
        handler_ran();
    }
    return n;
}

void loop_core::add_timer(timer_node* t) {
    // The turn reads the earliest deadline before each sleep; a poll()
    // hands it to the native handle before the host sleeps; a hosted
    // backend re-arms after each turn.
    t->seq = ++m_timer_seq;
    t->heap_index = m_heap.size();
    m_heap.push_back(t);
    sift_up(t->heap_index);
    m_stats.timers.set(m_heap.size());
}

bool loop_core::remove_timer(timer_node* t) noexcept {
    const auto i = t->heap_index;
    if (i == timer_node::not_queued) return false;
    t->heap_index = timer_node::not_queued;
    auto* last = m_heap.back();
    m_heap.pop_back();
    m_stats.timers.set(m_heap.size());
    if (i < m_heap.size()) {
        m_heap[i] = last;
        last->heap_index = i;
        sift_up(i);
        sift_down(last->heap_index);
    }
    return true;
}

void loop_core::sift_up(std::size_t i) noexcept {
    auto* t = m_heap[i];
    while (i > 0) {
        auto parent = (i - 1) / 2;
        if (!earlier(t, m_heap[parent])) break;
        m_heap[i] = m_heap[parent];
        m_heap[i]->heap_index = i;
        i = parent;
    }
    m_heap[i] = t;
    t->heap_index = i;
}

void loop_core::sift_down(std::size_t i) noexcept {
    const auto n = m_heap.size();
    auto* t = m_heap[i];
    for (;;) {
        auto child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && earlier(m_heap[child + 1], m_heap[child])) ++child;
        if (!earlier(m_heap[child], t)) break;
        m_heap[i] = m_heap[child];
        m_heap[i]->heap_index = i;
        i = child;
    }
    m_heap[i] = t;
    t->heap_index = i;
}

void loop_core::abort_timers() noexcept {
    while (!m_heap.empty()) {
        auto* t = m_heap.back();
        remove_timer(t);
        t->fire(t, true);
    }
}

namespace {

constexpr unsigned max_queue_depth = 32768;

hop::backend backend_from_env() {
    const char* v = std::getenv("HOP_BACKEND");
    if (v == nullptr || *v == '\0' || std::strcmp(v, "auto") == 0 || std::strcmp(v, "automatic") == 0) {
        return hop::backend::automatic;
    }
    if (std::strcmp(v, "io_uring") == 0) return hop::backend::io_uring;
    if (std::strcmp(v, "epoll") == 0) return hop::backend::epoll;
    throw std::invalid_argument(std::string("hop: HOP_BACKEND='") + v +
                                "' is not a backend (use io_uring, epoll or auto)");
}

/// The one place a backend is chosen.
std::unique_ptr<loop_backend> make_backend(loop_core& core, const io_loop_options& options) {
    if (options.queue_depth == 0 || options.queue_depth > max_queue_depth) {
        throw std::invalid_argument("hop::io_loop: queue_depth " + std::to_string(options.queue_depth) +
                                    " is out of range (1 to " + std::to_string(max_queue_depth) + ")");
    }
    auto want = options.backend;
    if (want == hop::backend::automatic) want = backend_from_env();
    switch (want) {
        case hop::backend::io_uring:
            if (!uring_compiled_in()) {
                throw std::system_error(ENOSYS, std::generic_category(),
                                        "hop::io_loop: this build of hop has no io_uring backend");
            }
            return make_uring_backend(core, options.queue_depth);
        case hop::backend::epoll:
            return make_asio_backend(core, nullptr);
        case hop::backend::automatic:
            break;
    }
    if (uring_compiled_in()) {
        try {
            return make_uring_backend(core, options.queue_depth);
        } catch (const std::system_error&) {
            // ENOSYS (old kernel), EPERM (seccomp, io_uring_disabled), ENOMEM
            // (locked-memory limit): fall back to readiness.
        }
    }
    return make_asio_backend(core, nullptr);
}

}  // namespace

void loop_cancel_owed(io_loop& loop, int delta) noexcept {
    if (delta > 0) {
        loop.core().cancel_owed();
    } else {
        loop.core().cancel_paid();
    }
}

void io_start(io_loop& loop, io_operation& op) noexcept {
    loop.core().stats().io_started[op.io.kind->metric_slot].add();
    loop.core().backend().start_io(op);
}

void io_completed(io_loop& loop, const io_operation& op) noexcept {
    loop.core().stats().io_completed[op.io.kind->metric_slot].add();
}
void io_cancel(io_loop& loop, io_operation& op) noexcept { loop.core().backend().cancel_io(op); }

void io_close_fd(io_loop* loop, int fd, fd_registration* reg) noexcept {
    if (fd < 0) return;
    if (loop == nullptr) {
        ::close(fd);
        return;
    }
    if (loop->running_in_this_thread()) {
        loop->core().backend().close_fd(fd, reg);
        return;
    }
    // Another thread: the loop owns the fd's operations and registration.
    // Until the posted close runs the fd stays open, so its number cannot be
    // reused under an operation still in flight.
    try {
        loop->post([loop, fd, reg] { loop->core().backend().close_fd(fd, reg); });
    } catch (...) {
        // The loop is being destroyed (its registrations go with it) or
        // memory ran out: close here.
        ::close(fd);
    }
}

fd_wait_operation::fd_wait_operation(io_handle& h, unsigned events, const char* what)
    : io_operation(h.loop_for(what)), m_what(what) {
    io.kind = &io_kind_poll;
    io.fd = h.fd();
    io.events = events;
    io.reg = h.reg();
}

unsigned fd_wait_operation::await_resume() {
    const int r = take_result();
    if (r < 0) throw_io_failure(r, std::string(m_what) + " on fd " + std::to_string(io.fd));
    return static_cast<unsigned>(r);
}

void run_loop_until(io_loop& loop, future_state_base& f) {
    while (!f.done()) {
        // A stopped loop's run_once() returns at once: without this check a
        // stop() inside the task would spin here forever.
        if (loop.stopped()) {
            throw std::logic_error("hop::run: the loop was stopped (io_loop::stop()) before the task finished");
        }
        loop.run_once();
    }
}

}  // namespace detail

namespace {

std::atomic<io_loop*> g_default_loop{nullptr};

std::shared_ptr<detail::loop_anchor> make_anchor(io_loop& loop) {
    static std::atomic<std::uint64_t> next_id{1};
    auto a = std::make_shared<detail::loop_anchor>();
    a->id = next_id.fetch_add(1, std::memory_order_relaxed);
    a->loop.store(&loop, std::memory_order_release);
    return a;
}

}  // namespace

io_loop::io_loop() : io_loop(io_loop_options{}) {}

io_loop::io_loop(const io_loop_options& options)
    : m_anchor(make_anchor(*this)), m_core(std::make_unique<detail::loop_core>(*this)) {
    if (options.idle_trim.count() < 0) {
        throw std::invalid_argument("hop::io_loop: idle_trim " + std::to_string(options.idle_trim.count()) +
                                    " ms is negative (0: never trim)");
    }
    m_core->set_idle_trim(options.idle_trim);
    m_core->set_backend(detail::make_backend(*m_core, options));
    detail::register_loop(*m_core);
}

io_loop::io_loop(asio::io_context& host)
    : m_anchor(make_anchor(*this)), m_core(std::make_unique<detail::loop_core>(*this)) {
    m_core->set_backend(detail::make_asio_backend(*m_core, &host));
    detail::register_loop(*m_core);
}

io_loop::~io_loop() {
    auto& core = *m_core;
    core.shutdown();
    // Every operation has ended: IO objects still bound here are orphaned
    // now (their next operation binds them again), before the backend frees
    // their registrations.
    m_anchor->loop.store(nullptr, std::memory_order_release);
    detail::unregister_loop(core);
    core.quiesce_posters();
    core.set_backend(nullptr);
}

std::string io_loop::describe() const {
    const bool is_default = g_default_loop.load(std::memory_order_acquire) == this;
    return std::string(is_default ? "hop::default_loop() #" : "io_loop #") + std::to_string(id()) + " (" +
           std::string(backend_name()) + ")";
}

std::string_view io_loop::backend_name() const noexcept { return m_core->backend().name(); }
hop::backend io_loop::backend_kind() const noexcept { return m_core->backend().kind(); }

std::size_t io_loop::run() { return m_core->run(); }
std::size_t io_loop::run_once() { return m_core->run_once(); }
std::size_t io_loop::poll() { return m_core->poll(); }
void io_loop::stop() noexcept { m_core->request_stop(); }
bool io_loop::stopped() const noexcept { return m_core->stopped(); }
void io_loop::restart() noexcept { m_core->restart(); }
int io_loop::native_handle() { return m_core->native_handle(); }
bool io_loop::running_in_this_thread() const noexcept { return m_core->running_in_this_thread(); }

void io_loop::post_item(detail::work_item* w) {
    if (m_core->closing()) throw executor_shutdown_error("hop::io_loop: work posted to a loop being destroyed");
    m_core->post(w);
}

void io_loop::post_continuation(detail::work_item* w) noexcept { m_core->post(w); }

io_loop* current_loop() noexcept {
    auto* c = detail::current_core();
    return c ? &c->owner() : nullptr;
}

namespace {
struct default_loop_holder {
    io_loop loop;
    std::thread thread;
    default_loop_holder() {
        g_default_loop.store(&loop, std::memory_order_release);
        thread = std::thread([this] {
            while (!loop.stopped()) loop.run();
        });
    }
    ~default_loop_holder() {
        g_default_loop.store(nullptr, std::memory_order_release);
        loop.stop();
        if (thread.joinable()) thread.join();
    }
};
}  // namespace

io_loop& default_loop() {
    static default_loop_holder holder;
    return holder.loop;
}

io_loop& this_thread_loop() {
    if (auto* l = current_loop()) return *l;
    return default_loop();
}

}  // namespace hop
