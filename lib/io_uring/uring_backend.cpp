// The io_uring backend. One ring per loop; operations are prepared straight
// into the submission queue (each kind prepares its own SQE, io_kinds.hpp)
// and submitted once per turn (the submit is folded into the wait);
// completions are drained in batches. The turn itself is loop_core's.
//
// Needs Linux 5.19 (IORING_ASYNC_CANCEL_ANY / _FD for shutdown and close,
// multishot accept); on an older kernel the ring is refused and the
// automatic choice takes epoll.
//
// Cross-thread wakeup: a read on an eventfd is kept armed in the ring; the
// core calls wake() (which writes the eventfd) only while the loop sleeps,
// so a busy loop pays no syscall per post.
//
// Loop to loop: a post made on a thread that runs another io_uring loop
// wakes a sleeping target with an IORING_OP_MSG_RING submitted on the
// poster's own ring (wake_from): the kernel puts a CQE (msg_wake_tag) in the
// target's completion queue, which ends its wait directly — no eventfd
// write, no armed read to complete (task work on the target) and re-arm.
// IOSQE_CQE_SKIP_SUCCESS keeps the poster's ring free of a CQE for every
// wake; a failed send still posts one (msg_sent_tag). (IORING_MSG_RING_CQE_SKIP,
// the other "skip" flag, is about the target's CQE and only for
// IORING_MSG_SEND_FD: data messages with it are refused with -EINVAL.)
//
// When the SQE goes. A post made by a handler of the poster's run, run_once
// or poll (the common case: a coroutine hopping loops) leaves it in the
// poster's submission queue, and it rides on the submit the poster's turn
// makes anyway after its handler batch (reap(), the spin before a sleep, or
// the submit folded into wait()): no io_uring_enter of its own
// (wake_stats::msg_ring_deferred). It is sent at once instead
// (flush_wakes, wake_stats::wake_flushes) when the wait for that submit
// could be long or endless (loop_core::flush_owed_wakes):
//   - the loop thread is about to block in a wait hop offers
//     (detail::before_blocking: future::get / wait / wait_for, hop::wait,
//     as_completed, sync_wait, io_pool and cpu_pool joins): a handler may
//     block on an answer from the very loop it just posted to
//     (tests/cross_loop_test has each of them);
//   - another loop runs on this thread (hop::run inside a handler);
//   - max_deferred_handlers (32) handlers ran since the post: a long batch
//     must not keep the target asleep;
//   - run / run_once / poll return: there may be no next turn.
// Posts made outside a handler batch (shutdown, a thread whose loop is not
// in run) flush in the post itself, right after the target's remote lock is
// released. Not under the lock: the woken loop's first act is to take that
// lock, and a poster still inside io_uring_enter would put it back to sleep
// on the mutex (measured: no gain over eventfd then, bench/cross_loop_bench
// idle).
//
// The hazard left: a handler that blocks its thread on a primitive hop does
// not own (std::condition_variable, std::future, a spin) waiting for a loop
// it posted to, within 32 handlers of the post, never sends the wake: the
// target sleeps on and both hang. Blocking a loop thread is already wrong;
// hop's own waits are safe.
//
// The target's ring fd is read under the target's lock, but the SQE is
// submitted just after: if the target is destroyed in between, the fd may
// be closed (-EBADFD, a failure: see below) or reused by another ring (which
// gets a stray msg_wake_tag CQE, a spurious wake; hop ignores it). Never
// memory: a data message carries no pointers.
//
// Failures fall back to eventfd, so no wake is lost. No SQE (the queue is
// full even after a submit): the core writes the target's eventfd after the lock.
// After the lock the target may be gone, so a submit that fails (-EBUSY,
// -EAGAIN...) or a send the kernel refuses (-EBADFD, -EOVERFLOW...) writes
// the eventfd of every live io_uring loop (a registry; an extra wake costs
// a turn). Issue of a data message to a ring without IOPOLL or DEFER_TASKRUN
// (hop sets neither) is inline in the submit, so a refusal's CQE is in the
// poster's queue when the submit returns: flush_wakes looks for it there;
// for a wake that went with the turn's submit (or should a refusal ever
// come later) reap_ready does the same (each refusal is acted on once). A
// turn's submit that leaves deferred wakes in the queue (-EBUSY...) wakes
// every loop, as a failed flush does (deferred_wakes_submitted).
//
// HOP_URING_NO_MSG_RING=1, read when a ring is set up, makes that ring
// neither send nor take MSG_RING wakes (eventfd only): a benchmark and test
// knob (bench/cross_loop_bench, tests/cross_loop_test). For tests only,
// HOP_TEST_URING_MSG_RING_FAIL=1 makes the ring send its MSG_RING wakes to
// the target's eventfd instead of its ring, which the kernel refuses
// (-EBADFD): the fallback must still wake the target.

#include "uring_backend.hpp"

#include "../io_kinds.hpp"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cerrno>
#include <ctime>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>
#include <utility>
#include <vector>

namespace hop::detail {

namespace {
// user_data values below 4096 are never operation addresses.
constexpr __u64 wake_tag = 1;
constexpr __u64 timeout_tag = 2;
constexpr __u64 cancel_tag = 3;
// Another loop's MSG_RING wake arrived (the target's CQE).
constexpr __u64 msg_wake_tag = 4;
// A MSG_RING wake this loop sent (the poster's CQE: only on failure when the
// kernel has IORING_FEAT_CQE_SKIP, always otherwise).
constexpr __u64 msg_sent_tag = 5;
constexpr unsigned submit_batch = 32;

// The wake eventfds of every live io_uring loop: where a MSG_RING wake that
// failed after the target's lock was let go falls back to (wake_every_loop).
// Immortal: loops in static objects may outlive any static registry.
struct wake_registry {
    std::mutex mutex;
    std::vector<int> fds;
};
wake_registry& live_wake_fds() {
    static auto* r = new wake_registry;
    return *r;
}

void wake_every_loop() noexcept {
    auto& r = live_wake_fds();
    std::lock_guard lock(r.mutex);
    for (int fd : r.fds) (void)::eventfd_write(fd, 1);
}

// liburing maps and unmaps the rings with raw syscalls, which TSan does not
// see: a ring mapped where another loop's ring was unmapped a moment ago
// looks, to TSan, like memory two threads share without synchronisation.
// Every ring's unmapping happens before any later mapping: say so.
#if defined(__SANITIZE_THREAD__)
#define HOP_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define HOP_TSAN 1
#endif
#endif
#ifdef HOP_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
char g_ring_mappings;
void ring_mapped() noexcept { __tsan_acquire(&g_ring_mappings); }
void ring_unmapped() noexcept { __tsan_release(&g_ring_mappings); }
#else
void ring_mapped() noexcept {}
void ring_unmapped() noexcept {}
#endif

bool env_is_1(const char* name) noexcept {
    const char* v = std::getenv(name);
    return v != nullptr && std::strcmp(v, "1") == 0;
}

// What the ring's kernel can do, probed once at setup.
struct ring_caps {
    // What hop relies on arrived together in Linux 5.19: cancel by fd and
    // of everything (IORING_ASYNC_CANCEL_FD / _ANY: close and shutdown),
    // multishot accept. None of them can be probed; IORING_OP_SOCKET, from
    // the same release, can. HOP_TEST_URING_TOO_OLD=1 makes a test see an
    // older kernel.
    bool new_enough = false;
    // IORING_OP_MSG_RING (5.18), unless HOP_URING_NO_MSG_RING=1.
    bool msg_ring = false;
};

ring_caps probe_ring(io_uring& ring) noexcept {
    ring_caps caps;
    if (env_is_1("HOP_TEST_URING_TOO_OLD")) return caps;
    io_uring_probe* probe = io_uring_get_probe_ring(&ring);
    if (probe == nullptr) return caps;
    caps.new_enough = io_uring_opcode_supported(probe, IORING_OP_SOCKET) != 0;
    caps.msg_ring = io_uring_opcode_supported(probe, IORING_OP_MSG_RING) != 0 && !env_is_1("HOP_URING_NO_MSG_RING");
    io_uring_free_probe(probe);
    return caps;
}

__kernel_timespec to_timespec(loop_clock::duration d) {
    if (d < loop_clock::duration::zero()) d = loop_clock::duration::zero();
    auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(d).count();
    __kernel_timespec ts{};
    ts.tv_sec = ns / 1'000'000'000;
    ts.tv_nsec = ns % 1'000'000'000;
    return ts;
}
}  // namespace

class uring_backend final : public loop_backend {
public:
    uring_backend(loop_core& core, unsigned depth) : m_core(core) {
        io_uring_params p{};
        // Task work runs when the loop enters the kernel anyway: no IPIs.
        //
        // Tried and not kept (bench/echo_bench, Linux 6.18, 2 cores shared
        // with other builds at load 4-9; medians of 3-4 runs of 3 rounds;
        // system CPU us per round trip, hop io_uring / Asio):
        //                              1 connection       100 connections
        //   these flags (kept)         8.11 / 12.29       4.86 / 11.29
        //   + registered ring fd       8.04 / 11.29       4.66 / 12.00
        //   + SINGLE_ISSUER |
        //     DEFER_TASKRUN + ring fd  7.75 / 11.59       4.99 / 11.25
        // Within the noise: one io_uring_enter carries ~8 round trips at 100
        // connections and 2 are the floor at 1 (the client's send, the
        // echo), so the cost is loopback TCP itself. Both also tie the ring
        // to one task: a registered ring fd is an index into the registering
        // thread's table, and a SINGLE_ISSUER ring refuses io_uring_enter
        // from any other thread (-EEXIST) — with DEFER_TASKRUN even the
        // waits, so a loop made on one thread, run on a second and destroyed
        // on a third (default_loop, io_loop_test) could never reap what it
        // started.
        //
        // io_pool's loops are made, run and destroyed on one thread each, so
        // theirs could be SINGLE_ISSUER | DEFER_TASKRUN (+ TASKRUN_FLAG, the
        // spin then watching IORING_SQ_TASKRUN and reap running the task
        // work first). Tried (branch uringwake, commit d94ad8d, reverted):
        // a MSG_RING into such a ring does end its wait (Linux 6.18.44),
        // ASan and TSan clean, but bench/pool_echo_bench --quick, 16 runs
        // alternating with and without on the same binary (2 cores, load
        // 2.5-7), hop's round trips/s with / without, median of the
        // per-pair ratios: 100 connections 1.02 (1 loop), 1.04
        // (least_loaded), 1.03 (reuse_port); 1,000 connections 0.91, 0.95,
        // 0.96. No gain: not kept. (cross_loop_bench's loops are plain
        // io_loops and were not tried.)
        p.flags = IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
        int r = io_uring_queue_init_params(depth, &m_ring, &p);
        if (r == -EINVAL) {
            p = io_uring_params{};
            r = io_uring_queue_init_params(depth, &m_ring, &p);
        }
        if (r < 0) throw_errno(r, "hop::io_loop: io_uring_queue_init");
        ring_mapped();
        const ring_caps caps = probe_ring(m_ring);
        m_msg_ring = caps.msg_ring;
        m_test_msg_fail = env_is_1("HOP_TEST_URING_MSG_RING_FAIL");
        m_cqe_skip = (p.features & IORING_FEAT_CQE_SKIP) != 0;
        if (!caps.new_enough) {
            ring_unmapped();
            io_uring_queue_exit(&m_ring);
            throw std::system_error(ENOSYS, std::generic_category(),
                                    "hop::io_loop: io_uring needs Linux 5.19 or later (IORING_OP_SOCKET, "
                                    "IORING_ASYNC_CANCEL_ANY); this kernel's io_uring lacks them");
        }
        m_wake_fd = ::eventfd(0, EFD_CLOEXEC);
        if (m_wake_fd < 0) {
            int e = errno;
            ring_unmapped();
            io_uring_queue_exit(&m_ring);
            throw_errno(e, "hop::io_loop: eventfd");
        }
        try {
            auto& reg = live_wake_fds();
            std::lock_guard lock(reg.mutex);
            reg.fds.push_back(m_wake_fd);
        } catch (...) {
            ::close(m_wake_fd);
            ring_unmapped();
            io_uring_queue_exit(&m_ring);
            throw;
        }
    }

    ~uring_backend() override {
        cancel_everything_and_reap();
        while (m_regs) delete m_regs;
        if (m_notify_fd >= 0) ::close(m_notify_fd);
        {
            // Out of the registry before the fd can be reused.
            auto& reg = live_wake_fds();
            std::lock_guard lock(reg.mutex);
            if (auto it = std::find(reg.fds.begin(), reg.fds.end(), m_wake_fd); it != reg.fds.end()) reg.fds.erase(it);
        }
        ::close(m_wake_fd);
        ring_unmapped();  // before the unmapping: a new ring may be mapped here at once
        io_uring_queue_exit(&m_ring);
    }

    const char* name() const noexcept override { return "io_uring"; }
    hop::backend kind() const noexcept override { return hop::backend::io_uring; }

    // ---- the backend's half of the turn --------------------------------------

    std::size_t reap() override {
        if (io_uring_sq_ready(&m_ring) != 0) {
            const int r = submit_sq();
            deferred_wakes_submitted();
            submit_checked(r);
        }
        return reap_ready();
    }

    std::size_t wait(const std::optional<loop_clock::time_point>& deadline) override {
        arm_wake();
        io_uring_cqe* cqe = nullptr;
        int r;
        if (deadline) {
            auto ts = to_timespec(*deadline - loop_clock::now());
            r = io_uring_submit_and_wait_timeout(&m_ring, &cqe, 1, &ts, nullptr);
        } else {
            r = io_uring_submit_and_wait(&m_ring, 1);
        }
        deferred_wakes_submitted();
        submit_checked(r);
        return reap_ready();
    }

    bool can_spin() const noexcept override { return true; }
    bool results_ready() const noexcept override { return io_uring_cq_ready(&m_ring) != 0; }

    void wake() noexcept override { (void)::eventfd_write(m_wake_fd, 1); }

    // Called on the poster's thread, under this (the target's) core's
    // remote lock: this backend and its ring fd are alive throughout.
    bool wake_from(loop_backend& poster_backend) noexcept override {
        if (poster_backend.kind() == hop::backend::io_uring) {
            // The only io_uring backend there is.
            auto& poster = static_cast<uring_backend&>(poster_backend);
            if (m_msg_ring && poster.m_msg_ring) {
                const int target_fd = poster.m_test_msg_fail ? m_wake_fd : m_ring.ring_fd;
                if (poster.prepare_msg_wake(target_fd)) return true;
            }
            ++poster.m_stats.eventfd_sent;
        }
        return false;  // the core wakes by eventfd (wake()) after the lock
    }

    // Right after the post that prepared a MSG_RING wake released the
    // target's lock, or later when the core deferred the wake and must send
    // it now (the target may be gone by then).
    void flush_wakes() noexcept override {
        if (m_unsent_wakes == 0) return;  // a submit since took them
        m_unsent_wakes = 0;
        ++m_stats.wake_flushes;
        const int r = io_uring_submit(&m_ring);
        bool failed = r < 0 || io_uring_sq_ready(&m_ring) != 0;  // not (all) submitted
        if (!failed) {
            // A refused send's CQE is in the queue now: look at what came
            // since the last look (reap_ready then skips those).
            const unsigned tail = io_uring_smp_load_acquire(m_ring.cq.ktail);
            unsigned pos = *m_ring.cq.khead;
            if (static_cast<int>(m_msg_scanned_to - pos) > 0) pos = m_msg_scanned_to;
            for (; pos != tail; ++pos) {
                const io_uring_cqe& cqe = m_ring.cq.cqes[io_uring_cqe_index(&m_ring, pos, m_ring.cq.ring_mask)];
                if (cqe.user_data == msg_sent_tag && cqe.res < 0) failed = true;
            }
            m_msg_scanned_to = tail;
        }
        if (failed) {
            ++m_stats.msg_ring_failed;
            wake_every_loop();
        }
    }

    void wake_deferred() noexcept override { ++m_stats.msg_ring_deferred; }

    wake_stats wake_counts() const noexcept override { return m_stats; }

    int native_handle() override {
        if (m_notify_fd < 0) {
            int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            if (fd < 0) throw_errno(errno, "hop::io_loop::native_handle: eventfd");
            int r = io_uring_register_eventfd(&m_ring, fd);
            if (r < 0) {
                ::close(fd);
                throw_errno(r, "hop::io_loop::native_handle: io_uring_register_eventfd");
            }
            m_notify_fd = fd;
        }
        return m_notify_fd;
    }

    void prepare_host_sleep(const std::optional<loop_clock::time_point>& deadline) override {
        // Every CQE signals the registered eventfd. The wake read makes a
        // wake() one; the kernel itself must make one at the next deadline:
        // an IORING_OP_TIMEOUT for the earliest timer.
        arm_wake();
        if (deadline && (!m_armed_deadline || *deadline < *m_armed_deadline)) {
            m_timeout_ts = to_timespec(deadline->time_since_epoch());
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_timeout(sqe, &m_timeout_ts, 0, IORING_TIMEOUT_ABS);
            io_uring_sqe_set_data64(sqe, timeout_tag);
            m_armed_deadline = deadline;
            ++m_timeouts_inflight;
        }
        if (io_uring_sq_ready(&m_ring) != 0) submit_checked(submit_sq());
    }

    void host_woke() noexcept override {
        eventfd_t v;
        (void)::eventfd_read(m_notify_fd, &v);  // signalled again by the next CQE
    }

    // ---- shutdown -------------------------------------------------------------

    void cancel_all() noexcept override {
        if (m_inflight == 0) return;
        try {
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
            io_uring_sqe_set_data64(sqe, cancel_tag);
        } catch (...) {
            // No SQE now: the next call (the core repeats it) gets one.
        }
    }

    std::size_t in_flight() const noexcept override { return m_inflight; }

    // ---- IO operations --------------------------------------------------

    // A socket's registration here: how many of its operations are in
    // flight, so close_fd knows whether it must cancel anything first.
    struct accept_state;
    struct uring_reg final : fd_registration {
        // Linked into the backend's live list: the registrations of objects
        // still open when the loop goes are freed with it (the objects are
        // orphaned then and never touch them again).
        explicit uring_reg(uring_backend& b) noexcept : owner(&b), next_live(b.m_regs) {
            if (next_live) next_live->prev_live = this;
            b.m_regs = this;
        }
        uring_reg(const uring_reg&) = delete;
        uring_reg& operator=(const uring_reg&) = delete;
        ~uring_reg() override;
        uring_backend* owner;
        uring_reg* next_live;
        uring_reg* prev_live = nullptr;
        unsigned inflight = 0;
        bool closed = false;
        std::unique_ptr<accept_state> acceptor;  // a listener's multishot accept
    };

    // A listener's multishot accept: one SQE keeps accepting; connections
    // go to the waiting accept() calls in order, or wait here (at most
    // max_ready; then the multishot is cancelled until they are taken).
    struct accept_state : uring_op {
        static constexpr std::size_t max_ready = 64;
        uring_backend* backend = nullptr;
        uring_reg* reg = nullptr;
        int fd = -1;
        bool armed = false;
        bool cancelling = false;
        io_op_queue waiting;  // accept operations
        // Accepted, not yet taken (FIFO from ready_head). More than
        // max_ready can arrive: the CQEs already posted before the cancel.
        std::vector<int> ready;
        std::size_t ready_head = 0;
        std::size_t ready_count() const noexcept { return ready.size() - ready_head; }
        int error = 0;  // a failure no accept() was waiting for
    };

    struct uring_io : uring_op {
        io_operation* owner = nullptr;
        uring_backend* backend = nullptr;
        uring_reg* reg = nullptr;
        bool polling = false;         // waiting for readiness after an -EAGAIN
        bool waiting_accept = false;  // queued on the listener's multishot accept
    };
    static_assert(sizeof(uring_io) <= sizeof(io_operation::backend_storage));
    static uring_io& io_of(io_operation& op) noexcept {
        return *std::launder(reinterpret_cast<uring_io*>(op.backend_storage));
    }

    void start_io(io_operation& op) noexcept override {
        auto* u = ::new (static_cast<void*>(op.backend_storage)) uring_io;
        u->owner = &op;
        u->backend = this;
        u->complete = &uring_backend::on_io_complete;
        if (op.io.reg != nullptr) {
            // The slot's protocol: io_op.hpp.
            fd_registration* cur = op.io.reg->load(std::memory_order_acquire);
            if (cur == closed_registration()) {
                op.complete(-ECANCELED);  // closed: the fd may be gone already
                return;
            }
            if (real_registration(cur) == nullptr) {
                auto* r = new (std::nothrow) uring_reg(*this);
                if (r == nullptr) {
                    op.complete(-ENOMEM);
                    return;
                }
                if (!op.io.reg->compare_exchange_strong(cur, r, std::memory_order_acq_rel)) {
                    delete r;  // closed from another thread just now
                    op.complete(-ECANCELED);
                    return;
                }
                cur = r;
            }
            u->reg = static_cast<uring_reg*>(cur);
        }
        if (op.io.kind == &io_kind_accept && u->reg != nullptr) {
            start_accept(op, *u->reg);
            return;
        }
        submit_io(*u, false);
    }

    void cancel_io(io_operation& op) noexcept override {
        auto& u = io_of(op);
        if (u.waiting_accept) {
            accept_state& a = *u.reg->acceptor;
            unlink_accept(a, op);
            op.complete(-ECANCELED);
            return;
        }
        try {
            io_uring_sqe* sqe = get_sqe();
            io_uring_prep_cancel(sqe, static_cast<uring_op*>(&io_of(op)), 0);
            io_uring_sqe_set_data64(sqe, cancel_tag);
        } catch (...) {
            // No SQE: the operation ends on its own or when the loop is destroyed.
        }
    }

    void close_fd(int fd, fd_registration* reg) noexcept override {
        auto* r = static_cast<uring_reg*>(reg);
        if (r != nullptr && r->inflight != 0) {
            // Cancel by fd, submitted now: it must reach the kernel while
            // the fd number still names this socket. Poll-armed socket
            // operations are cancelled inside the submit; their CQEs follow.
            try {
                io_uring_sqe* sqe = get_sqe();
                io_uring_prep_cancel_fd(sqe, fd, IORING_ASYNC_CANCEL_ALL);
                io_uring_sqe_set_data64(sqe, cancel_tag);
                submit_sq();
            } catch (...) {
            }
            r->closed = true;  // the last completion frees it
            if (r->acceptor) fail_accepts(*r->acceptor, -ECANCELED);
        } else {
            delete r;
        }
        ::close(fd);
    }

    // ---- multishot accept ---------------------------------------------------

    void start_accept(io_operation& op, uring_reg& reg) noexcept {
        if (!reg.acceptor) {
            reg.acceptor.reset(new (std::nothrow) accept_state);
            if (!reg.acceptor) {
                op.complete(-ENOMEM);
                return;
            }
            auto& a = *reg.acceptor;
            a.backend = this;
            a.reg = &reg;
            a.fd = op.io.fd;
            a.complete = &uring_backend::on_accept_cqe;
        }
        accept_state& a = *reg.acceptor;
        if (a.ready_count() != 0) {
            int fd = a.ready[a.ready_head++];
            if (a.ready_head == a.ready.size()) {
                a.ready.clear();
                a.ready_head = 0;
            }
            rearm_accept(a);
            op.complete(fd);
            return;
        }
        if (a.error != 0) {
            op.complete(-std::exchange(a.error, 0));
            return;
        }
        auto& u = io_of(op);
        u.waiting_accept = true;
        a.waiting.push_back(op);
        rearm_accept(a);
    }

    void unlink_accept(accept_state& a, io_operation& op) noexcept {
        a.waiting.remove(op);
        io_of(op).waiting_accept = false;
    }

    void fail_accepts(accept_state& a, int result) noexcept {
        while (io_operation* op = a.waiting.head) {
            unlink_accept(a, *op);
            op->complete(result);
        }
    }

    // Arms the multishot SQE when someone waits and nothing is queued.
    void rearm_accept(accept_state& a) noexcept {
        if (a.armed || a.reg->closed || a.waiting.head == nullptr) return;
        if (m_core.closing()) {
            fail_accepts(a, -ECANCELED);
            return;
        }
        io_uring_sqe* sqe;
        try {
            sqe = get_sqe();
        } catch (...) {
            fail_accepts(a, -EBUSY);
            return;
        }
        io_uring_prep_multishot_accept(sqe, a.fd, nullptr, nullptr, SOCK_CLOEXEC);
        a.armed = true;
        ++a.reg->inflight;
        track(sqe, &a);
    }

    static void on_accept_cqe(uring_op* o, int res, unsigned flags) noexcept {
        auto& a = *static_cast<accept_state*>(o);
        uring_backend& b = *a.backend;
        uring_reg& reg = *a.reg;
        const bool more = (flags & IORING_CQE_F_MORE) != 0;
        const bool we_cancelled = a.cancelling;
        if (!more) {
            a.armed = false;
            a.cancelling = false;
            --reg.inflight;
        }
        if (reg.closed) {
            if (res >= 0) ::close(res);
            b.fail_accepts(a, -ECANCELED);
            if (!more && reg.inflight == 0) delete &reg;
            return;
        }
        // What the completions below resume may close the listener: held
        // (counted in flight) until they are done.
        ++reg.inflight;
        b.on_accept_result(a, res, more, we_cancelled);
        if (--reg.inflight == 0 && reg.closed) delete &reg;
    }

    void on_accept_result(accept_state& a, int res, bool more, bool we_cancelled) noexcept {
        uring_backend& b = *this;
        if (res >= 0) {
            if (io_operation* op = a.waiting.head) {
                b.unlink_accept(a, *op);
                op->complete(res);
            } else {
                try {
                    a.ready.push_back(res);
                } catch (...) {
                    ::close(res);  // out of memory: the peer sees a reset
                }
                if (a.ready_count() >= accept_state::max_ready && more && !a.cancelling) {
                    // Nobody takes them: leave the rest in the kernel's backlog.
                    a.cancelling = true;
                    try {
                        io_uring_sqe* sqe = b.get_sqe();
                        io_uring_prep_cancel(sqe, &a, 0);
                        io_uring_sqe_set_data64(sqe, cancel_tag);
                    } catch (...) {
                    }
                }
            }
        } else if (res == -ECANCELED) {
            // Cancelled by the loop's shutdown (not by a full queue, which
            // happens only while nobody waits): the waiters end too.
            if (!we_cancelled) b.fail_accepts(a, -ECANCELED);
        } else {
            // EMFILE, ENFILE, ENOMEM...: the first waiting accept reports it.
            if (io_operation* op = a.waiting.head) {
                b.unlink_accept(a, *op);
                op->complete(res);
            } else {
                a.error = res;
            }
        }
        if (!more) b.rearm_accept(a);
    }

    bool wants_nonblocking() const noexcept override { return false; }

    // ---- for operations ---------------------------------------------------

    io_uring_sqe* get_sqe() {
        // Submitted in batches of at most submit_batch: thousands of
        // operations queued in one turn would otherwise reach the kernel at
        // once and overflow the completion queue (measured: 10,000
        // connections, depth 256: 870 ms; batches of 32: 665 ms).
        if (io_uring_sq_ready(&m_ring) >= submit_batch) submit_sq();
        io_uring_sqe* sqe = io_uring_get_sqe(&m_ring);
        if (sqe == nullptr) {
            submit_sq();
            sqe = io_uring_get_sqe(&m_ring);
            if (sqe == nullptr) throw_errno(EBUSY, "hop::io_loop: io_uring submission queue full");
        }
        return sqe;
    }
    void track(io_uring_sqe* sqe, uring_op* op) noexcept {
        io_uring_sqe_set_data(sqe, op);
        ++m_inflight;
    }

private:
    // Prepares the SQE for the operation's next step: its call, or (after
    // an -EAGAIN on a non-blocking fd) a readiness poll first.
    void submit_io(uring_io& u, bool poll_first) noexcept {
        io_operation& op = *u.owner;
        auto& io = op.io;
        u.polling = poll_first;
        io_uring_sqe* sqe;
        try {
            sqe = get_sqe();
        } catch (...) {
            op.complete(-EBUSY);
            return;
        }
        if (poll_first) {
            io_uring_prep_poll_add(sqe, io.fd, waits_writable(*io.kind, io) ? POLLOUT : POLLIN);
        } else {
            io.kind->uring(sqe, io);
        }
        if (u.reg) ++u.reg->inflight;
        track(sqe, &u);
    }

    static void on_io_complete(uring_op* o, int res, unsigned) noexcept {
        auto& u = *static_cast<uring_io*>(o);
        io_operation& op = *u.owner;
        if (u.reg != nullptr) {
            --u.reg->inflight;
            if (u.reg->closed) {
                // The socket was closed under the operation: whatever it did
                // after all, it reports the close.
                if (u.reg->inflight == 0) delete u.reg;
                u.reg = nullptr;
                if (res >= 0 && op.io.kind == &io_kind_accept) ::close(res);
                op.complete(-ECANCELED);
                return;
            }
        }
        if (u.polling) {
            // The fd is ready (or failed): now the call itself.
            if (res < 0) {
                op.complete(res);
            } else {
                u.backend->submit_io(u, false);
            }
            return;
        }
        if (res == -EAGAIN && op.io.kind != &io_kind_poll) {
            u.backend->submit_io(u, true);  // a non-blocking fd (adopted): poll, then retry
            return;
        }
        op.complete(res);
    }

    void signal_wake() noexcept { (void)::eventfd_write(m_wake_fd, 1); }

    // io_uring_submit, noting that the MSG_RING wakes in the queue went
    // with it (its refusals, if any, come as CQEs: reap_ready).
    int submit_sq() noexcept {
        const int r = io_uring_submit(&m_ring);
        if (m_unsent_wakes != 0 && io_uring_sq_ready(&m_ring) == 0) m_unsent_wakes = 0;
        return r;
    }

    // After the turn's submit (reap, wait), which carried the wakes the
    // core deferred: any still in the queue could not be submitted, and
    // this loop may be about to sleep. The targets may be gone: wake every
    // loop, as flush_wakes does. A refused send's CQE is in the queue;
    // reap_ready, which follows, acts on it.
    void deferred_wakes_submitted() noexcept {
        if (m_unsent_wakes == 0) return;
        m_unsent_wakes = 0;
        if (io_uring_sq_ready(&m_ring) != 0) {
            ++m_stats.msg_ring_failed;
            wake_every_loop();
        }
    }

    // Prepares a MSG_RING wake of the ring `target_fd` on this ring (the
    // poster's; its loop thread); flush_wakes() sends it. False if there is
    // no SQE for it.
    bool prepare_msg_wake(int target_fd) noexcept {
        io_uring_sqe* sqe;
        try {
            sqe = get_sqe();
        } catch (...) {
            return false;
        }
        io_uring_prep_msg_ring(sqe, target_fd, 0, msg_wake_tag, 0);
        io_uring_sqe_set_data64(sqe, msg_sent_tag);
        if (m_cqe_skip) sqe->flags |= IOSQE_CQE_SKIP_SUCCESS;
        ++m_stats.msg_ring_sent;
        ++m_unsent_wakes;
        return true;
    }

    void arm_wake() {
        if (m_wake_armed) return;
        io_uring_sqe* sqe = get_sqe();
        io_uring_prep_read(sqe, m_wake_fd, &m_wake_buf, sizeof m_wake_buf, 0);
        io_uring_sqe_set_data64(sqe, wake_tag);
        m_wake_armed = true;
    }

    // Returns the number of operations completed (the backend's own CQEs —
    // wakeups, timeouts, cancels — are not handlers and are not counted).
    void submit_checked(int r) const {
        if (r < 0 && r != -ETIME && r != -EINTR && r != -EBUSY && r != -EAGAIN) {
            throw_errno(r, "hop::io_loop: io_uring_enter");
        }
    }

    std::size_t reap_ready() {
        std::size_t total = 0;
        for (;;) {
            io_uring_cqe* cqes[64];
            unsigned count = io_uring_peek_batch_cqe(&m_ring, cqes, 64);
            if (count == 0) break;
            struct completion {
                __u64 data;
                int res;
                unsigned flags;
            } batch[64];
            for (unsigned i = 0; i < count; ++i) batch[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
            const unsigned first = *m_ring.cq.khead;  // the queue position of cqes[0]
            io_uring_cq_advance(&m_ring, count);
            for (unsigned i = 0; i < count; ++i) {
                if (batch[i].data == msg_sent_tag) {
                    on_msg_sent_cqe(batch[i].res, first + i);
                    continue;
                }
                total += dispatch(batch[i].data, batch[i].res, batch[i].flags);
            }
            // Never behind the head: positions wrap around.
            if (static_cast<int>(first + count - m_msg_scanned_to) > 0) m_msg_scanned_to = first + count;
        }
        return total;
    }

    // A MSG_RING wake this loop sent: a refusal (or, without
    // IORING_FEAT_CQE_SKIP, any send). flush_wakes acted on the refusals
    // in the queue up to m_msg_scanned_to, which is all of them when the
    // kernel posts them inline, as it does for hop's rings; one that came
    // later wakes every loop now (an extra wake costs a turn; a lost one,
    // a hang).
    void on_msg_sent_cqe(int res, unsigned position) noexcept {
        if (res >= 0 || static_cast<int>(m_msg_scanned_to - position) > 0) return;
        ++m_stats.msg_ring_failed;
        wake_every_loop();
    }

    // True if the CQE completed an operation (a handler ran).
    bool dispatch(__u64 data, int res, unsigned flags) noexcept {
        switch (data) {
            case wake_tag:
                m_wake_armed = false;
                return false;
            case timeout_tag:
                --m_timeouts_inflight;
                m_armed_deadline.reset();
                return false;
            case msg_wake_tag:
                ++m_stats.msg_ring_received;
                return false;
            case cancel_tag:
            case LIBURING_UDATA_TIMEOUT:
                return false;
            default:
                break;
        }
        if ((flags & IORING_CQE_F_MORE) == 0) --m_inflight;  // a multishot goes on
        auto* op = reinterpret_cast<uring_op*>(static_cast<std::uintptr_t>(data));
        op->complete(op, res, flags);
        return true;
    }

    void cancel_everything_and_reap() noexcept {
        try {
            loop_core::running_scope scope(m_core);
            // Failure CQEs of MSG_RING wakes still queued are acted on
            // (reap_ready) before the ring, and they with it, goes.
            reap_ready();
            // IORING_ASYNC_CANCEL_ANY needs Linux 5.19; older kernels refuse
            // it, so nothing here may depend on it: the wake read (the only
            // internal request that writes to our memory) is ended by
            // writing its eventfd, and the timeouts are not waited for (the
            // kernel copied their timespec; they go with the ring).
            if (m_wake_armed) signal_wake();
            if (m_wake_armed || m_timeouts_inflight != 0 || m_inflight != 0) {
                io_uring_sqe* sqe = get_sqe();
                io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
                io_uring_sqe_set_data64(sqe, cancel_tag);
            }
            for (int i = 0; i < 1000 && (m_wake_armed || m_inflight != 0); ++i) {
                int r = io_uring_submit_and_wait(&m_ring, 1);
                if (r < 0 && r != -EINTR && r != -EBUSY && r != -ETIME) break;
                reap_ready();
            }
        } catch (...) {
        }
    }

    loop_core& m_core;
    io_uring m_ring{};
    int m_wake_fd = -1;
    int m_notify_fd = -1;
    bool m_msg_ring = false;   // sends and takes MSG_RING wakes (probe, HOP_URING_NO_MSG_RING)
    bool m_cqe_skip = false;   // IOSQE_CQE_SKIP_SUCCESS works (IORING_FEAT_CQE_SKIP)
    bool m_test_msg_fail = false;  // HOP_TEST_URING_MSG_RING_FAIL=1: send wakes where they fail
    // Completion queue position up to which flush_wakes has acted on
    // refused MSG_RING wakes (reap_ready skips those).
    unsigned m_msg_scanned_to = 0;
    // MSG_RING wakes prepared and maybe still in the submission queue.
    unsigned m_unsent_wakes = 0;
    wake_stats m_stats;
    eventfd_t m_wake_buf = 0;
    bool m_wake_armed = false;
    std::optional<loop_clock::time_point> m_armed_deadline;
    __kernel_timespec m_timeout_ts{};
    std::size_t m_timeouts_inflight = 0;
    std::size_t m_inflight = 0;
    uring_reg* m_regs = nullptr;     // live registrations (loop thread)
};

uring_backend::uring_reg::~uring_reg() {
    if (prev_live) {
        prev_live->next_live = next_live;
    } else {
        owner->m_regs = next_live;
    }
    if (next_live) next_live->prev_live = prev_live;
    if (acceptor) {
        // Connections accepted that no accept() took.
        for (std::size_t i = acceptor->ready_head; i < acceptor->ready.size(); ++i) ::close(acceptor->ready[i]);
    }
}

std::unique_ptr<loop_backend> make_uring_backend(loop_core& core, unsigned queue_depth) {
    return std::make_unique<uring_backend>(core, queue_depth);
}

bool uring_compiled_in() noexcept { return true; }

}  // namespace hop::detail
