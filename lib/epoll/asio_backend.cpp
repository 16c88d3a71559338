// The readiness backend: a thin adapter over standalone Asio's reactor (its
// io_context; epoll on Linux). The turn is loop_core's; this file only
// starts operations, reaps, sleeps and wakes through the context.
//
// One path per operation (its kind, io_kinds.hpp, says which): try the call
// at once on the non-blocking fd, which finishes most operations with no
// reactor at all; if it would block, Asio waits on the fd's registration (an
// Asio socket of the fd's own protocol, made at the first wait) and either
// performs the call itself (a stream socket's recv and send: async_receive /
// async_send, which keep the fd's epoll registration as it is) or reports
// readiness (async_wait) and the call is tried again. File calls run on the
// blocking pool. A call that finished at once resumes its coroutine inline,
// except when calls keep finishing at once: every max_at_once-th in a row
// completes through the loop's queue (finish_queued). Cancelling one
// waiting operation cancels what waits on its fd in Asio (Asio's
// socket-wide cancel); the others, which moved no byte, simply wait again.
// (Per-operation cancellation slots were tried: under load, Asio 1.22's
// slot memory was seen destroyed twice, in accept_backoff_test under
// ASan+UBSan.)
//
// Hosted: on a program's asio::io_context (run by the program, maybe on
// several threads), hop's turns run as "drain" handlers, one at a time, and
// Asio's completion handlers hand their results to the loop through its
// queue.

#include "../io_kinds.hpp"
#include "../loop_core.hpp"

#include <hop/detail/assert.hpp>
#include <hop/file.hpp>

#include <asio/executor_work_guard.hpp>
#include <asio/generic/datagram_protocol.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/basic_datagram_socket.hpp>
#include <asio/basic_stream_socket.hpp>
#include <asio/steady_timer.hpp>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>
#include <thread>
#include <type_traits>
#include <variant>

namespace hop::detail {

namespace {

// On the context's own executor type rather than Asio's type-erased default
// (any_io_executor): each object and each operation then carries one pointer
// instead of a polymorphic executor, and no type-erased copy is made per
// operation.
using executor = asio::io_context::executor_type;
using stream_socket = asio::basic_stream_socket<asio::generic::stream_protocol, executor>;
using datagram_socket = asio::basic_datagram_socket<asio::generic::datagram_protocol, executor>;
using descriptor = asio::posix::basic_stream_descriptor<executor>;

class asio_backend final : public loop_backend {
    // What handlers on a host's context hold on to: a handler that runs
    // after the loop is gone (or after its shutdown completed the
    // operation itself) finds `self` null and does nothing.
    struct shared {
        std::mutex mutex;
        asio_backend* self = nullptr;
    };

public:
    asio_backend(loop_core& core, asio::io_context* host)
        : m_core(core),
          // Own context: only the loop thread runs it and starts, cancels
          // and closes what it waits on, so the reactor's per-fd state needs
          // no mutex (UNSAFE_IO); the scheduler keeps its lock, which wake()
          // and posts from other threads take.
          m_owned(host ? nullptr : std::make_unique<asio::io_context>(ASIO_CONCURRENCY_HINT_UNSAFE_IO)),
          m_ctx(host ? *host : *m_owned),
          m_timer(m_ctx),
          m_shared(std::make_shared<shared>()),
          m_hosted(host != nullptr) {
        m_shared->self = this;
        // Own context: run_one() blocks while nothing is in flight. (A
        // host's context is the host's to keep running: a guard released
        // there would stop it.)
        if (!m_hosted) {
            m_guard.emplace(asio::make_work_guard(m_ctx));
            const int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            if (fd < 0) throw_errno(errno, "hop::io_loop: eventfd");
            m_wake.emplace(m_ctx, fd);  // owns the fd from here
            m_wake_fd = fd;
            arm_wake();
        }
    }

    ~asio_backend() override {
        {
            std::lock_guard lock(m_shared->mutex);
            m_shared->self = nullptr;
        }
        // Sockets still open hold registrations: their Asio objects must go
        // before the context does; the fds stay open for their owners.
        while (m_regs) drop(*m_regs, false);
        m_timer.cancel();
        m_wake.reset();  // its wait ends aborted, if ever run: see arm_wake
        m_guard.reset();
        if (m_epoll_fd >= 0) ::close(m_epoll_fd);
        if (m_event_fd >= 0) ::close(m_event_fd);
        if (m_timer_fd >= 0) ::close(m_timer_fd);
    }

    const char* name() const noexcept override { return "epoll"; }
    hop::backend kind() const noexcept override { return hop::backend::epoll; }

    // ---- the backend's half of the turn (own context) ----------------------

    std::size_t reap() override {
        if (m_hosted) return 0;  // the host runs the context
        const std::size_t before = m_completed;
        if (m_ctx.stopped()) m_ctx.restart();
        ++m_pass;
        m_ctx.poll();
        return m_completed - before;
    }

    std::size_t wait(const std::optional<loop_clock::time_point>& deadline) override {
        if (m_hosted) {
            // Only shutdown waits on a hosted loop, for blocking-pool calls
            // whose results come through the loop's queue.
            std::this_thread::yield();
            return 0;
        }
        const std::size_t before = m_completed;
        if (m_ctx.stopped()) m_ctx.restart();
        ++m_pass;
        if (deadline) {
            m_ctx.run_one_until(*deadline);
        } else {
            m_ctx.run_one();
        }
        m_ctx.poll();  // the rest of what the reactor found
        return m_completed - before;
    }

    // Asio cannot tell cheaply whether results are in: spin only when none
    // can come (nothing waits in the reactor) and only posts can end a wait.
    bool can_spin() const noexcept override { return m_in_asio == 0 && m_blocking_calls == 0; }
    bool results_ready() const noexcept override { return false; }

    void wake() noexcept override {
        if (m_hosted) {
            schedule_drain();
            if (m_core.stopped()) m_ctx.stop();  // io_loop::stop() ends the host's run()
            return;
        }
        // Ends a run_one(): the reactor sees the eventfd (arm_wake). Not an
        // asio::post: that takes the scheduler's lock and interrupts the
        // reactor under it, and a loop woken that way went back to sleep on
        // that lock at once, and then on the core's remote lock, which the
        // poster holds around wake(): two extra sleeps and wakeups per wake
        // (strace of cross_loop_bench idle; 16 us against Asio's 4 us).
        (void)::eventfd_write(m_wake_fd, 1);
        signal_native();
    }

    // Keeps a wait on the wake eventfd in Asio's reactor. Re-armed before
    // the count is read: the reactor is edge-triggered, and a write that
    // lands after the read makes a new edge for the wait already queued
    // (one that lands before it only makes a spurious wake).
    void arm_wake() {
        m_wake->async_wait(descriptor::wait_read, [this](const std::error_code& ec) {
            if (ec) return;  // closed: the backend is going
            arm_wake();
            eventfd_t v;
            (void)::eventfd_read(m_wake_fd, &v);
        });
    }

    // ---- native handle (own context) -----------------------------------------

    int native_handle() override {
        if (m_hosted) {
            throw std::logic_error(
                "hop::io_loop::native_handle: this loop is hosted on an asio::io_context; drive that context instead");
        }
        if (m_epoll_fd < 0) {
            int ep = ::epoll_create1(EPOLL_CLOEXEC);
            if (ep < 0) throw_errno(errno, "hop::io_loop::native_handle: epoll_create1");
            int ev = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
            int tf = ::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
            if (ev < 0 || tf < 0) {
                int e = errno;
                ::close(ep);
                if (ev >= 0) ::close(ev);
                if (tf >= 0) ::close(tf);
                throw_errno(e, "hop::io_loop::native_handle: eventfd/timerfd");
            }
            for (int fd : {ev, tf}) {
                epoll_event e{};
                e.events = EPOLLIN;
                e.data.fd = fd;
                ::epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
            }
            m_epoll_fd = ep;
            m_event_fd = ev;
            m_timer_fd = tf;
            // The fds already registered with Asio report their events here too.
            for (epoll_reg* r = m_regs; r != nullptr; r = r->next_live) watch_natively(*r);
        }
        return m_epoll_fd;
    }

    void prepare_host_sleep(const std::optional<loop_clock::time_point>& deadline) override {
        itimerspec its{};
        if (deadline) {
            auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline->time_since_epoch()).count();
            if (ns <= 0) ns = 1;
            its.it_value.tv_sec = ns / 1'000'000'000;
            its.it_value.tv_nsec = ns % 1'000'000'000;
        }
        ::timerfd_settime(m_timer_fd, TFD_TIMER_ABSTIME, &its, nullptr);
    }

    void host_woke() noexcept override {
        eventfd_t v;
        (void)::eventfd_read(m_event_fd, &v);
        std::uint64_t expirations;
        (void)::read(m_timer_fd, &expirations, sizeof expirations);
    }

    // ---- hosted ---------------------------------------------------------------

    bool hosted() const noexcept override { return m_hosted; }

    // The context is restarted before the core's stop flag is read: a stop()
    // that lands after the read stops the restarted context, so run() still
    // returns (read first, a stop in between would be undone by restart()).
    std::size_t drive_host(drive_mode mode) override {
        if (m_ctx.stopped()) m_ctx.restart();
        if (mode != drive_mode::poll && m_core.stopped()) return 0;
        auto guard = asio::make_work_guard(m_ctx);
        const handler_counts before = counts();
        std::size_t n = 0;
        switch (mode) {
            case drive_mode::run:
                n = m_ctx.run();
                break;
            case drive_mode::run_once:
                n = m_ctx.run_one();
                n += m_ctx.poll();  // the one event may only have been hop's timer
                break;
            case drive_mode::poll:
                n = m_ctx.poll();
                break;
        }
        return handlers_since(before, n);
    }

    // ---- operations -------------------------------------------------------------

    // An fd's registration: the fd as an Asio object of its type (a stream
    // or datagram socket, or, for anything else, a descriptor), registered
    // with the reactor once, for the fd's lifetime.
    struct epoll_reg final : fd_registration {
        // (no_unique_address: the flag below goes in the variant's tail
        // padding, 88 bytes instead of 96, a 96-byte heap block instead of a
        // 112-byte one per registration.)
        [[no_unique_address]] std::variant<stream_socket, datagram_socket, descriptor> obj;
        // Asio's last receive here came back short (or ended the stream, or
        // failed). Asio's edge-triggered reactor then waits for the next
        // edge before it reads again, and bytes or a FIN that came with the
        // data make none: so the next read tries the call here first.
        // False at first: Asio tries the first receive on a new registration
        // at once itself, and a try here too would double a failed recv (the
        // first read on a registration a connect or a send made).
        bool asio_read_short = false;
        // Completions Asio handed here in pass `pass` (one reap or wait of
        // the loop; both wrap): see end_wait.
        std::uint8_t pass = 0;
        std::uint8_t done_in_pass = 0;
        io_op_queue waiting;  // its operations waiting in Asio
        epoll_reg* next_live = nullptr;
        epoll_reg* prev_live = nullptr;
        template <class T, class... A>
        explicit epoll_reg(std::in_place_type_t<T> t, A&&... a) : obj(t, std::forward<A>(a)...) {}
    };

    struct epoll_io {
        epoll_reg* reg = nullptr;        // where it waits
        bool one_off = false;            // reg is this operation's own (no slot)
        bool handed_over = false;        // hosted: its result is queued on the loop
        bool cancel_requested = false;   // cancel_io asked for this one
        struct result_item : work_item {
            io_operation* op = nullptr;
            int result = 0;
        } item;  // hosted results and blocking-pool calls come back through it
    };
    static_assert(sizeof(epoll_io) <= sizeof(io_operation::backend_storage));
    static_assert(sizeof(epoll_reg) <= 88, "epoll_reg grew: its heap block is no longer 96 bytes");
    static epoll_io& io_of(io_operation& op) noexcept {
        return *std::launder(reinterpret_cast<epoll_io*>(op.backend_storage));
    }

    void start_io(io_operation& op) noexcept override {
        auto* e = ::new (static_cast<void*>(op.backend_storage)) epoll_io;
        const readiness_kind& k = op.io.kind->readiness;
        bool first_call = false;  // the fd's first call on this loop
        if (op.io.reg != nullptr && !claim(op, first_call)) return;
        if (k.wait == readiness_wait::blocking_pool) {
            start_blocking_call(op, *e);
            return;
        }
        if (k.wait == readiness_wait::receive && op.io.reg != nullptr) {
            auto* r = static_cast<epoll_reg*>(real_registration(op.io.reg->load(std::memory_order_acquire)));
            // Asio's async_receive tries the call itself first, and
            // completes it in the same poll, when its last read here filled
            // its buffer or the registration is new: a try here too would
            // only double the failed recv of a read that must wait. With no
            // registration yet, a read that is not the fd's first call (a
            // client's first read after its connect, a session's second
            // read) goes to Asio too: it mostly waits, and the registration
            // would be made for it anyway.
            if (r != nullptr ? !r->asio_read_short : !first_call) {
                wait_in_asio(op, *e);
                return;
            }
        }
        const int r = k.attempt(op.io, false);
        if (r != -EAGAIN) {
            if (++m_at_once < max_at_once) {
                finish(op, r);
            } else {
                finish_queued(op, *e, r);
            }
            return;
        }
        wait_in_asio(op, *e);
    }

    void cancel_io(io_operation& op) noexcept override {
        auto& e = io_of(op);
        // Only an operation waiting in Asio can be cancelled; a blocking
        // call ends on its own.
        if (e.reg == nullptr) return;
        e.cancel_requested = true;
        cancel_in_asio(*e.reg);
    }

    void close_fd(int fd, fd_registration* reg) noexcept override {
        if (auto* r = static_cast<epoll_reg*>(real_registration(reg))) {
            drop(*r, true);  // Asio closes the fd; what waits ends operation_aborted
            return;
        }
        ::close(fd);
    }

    bool wants_nonblocking() const noexcept override { return true; }

    // ---- shutdown -------------------------------------------------------------------

    void cancel_all() noexcept override {
        m_timer.cancel();
        if (!m_hosted) {
            // Their aborts are final: the loop is closing.
            for (epoll_reg* r = m_regs; r != nullptr; r = r->next_live) {
                if (!r->waiting.empty()) cancel_in_asio(*r);
            }
            return;
        }
        // A host's threads may run the handlers late, or never (the host
        // need not run its context while the loop goes): from here on they
        // do nothing, and the operations they would have ended end here.
        {
            std::lock_guard lock(m_shared->mutex);
            m_shared->self = nullptr;
        }
        for_each_waiting([this](io_operation& op) {
            auto& e = io_of(op);
            if (e.handed_over) return;  // it ends through the loop's queue
            if (e.reg != nullptr) cancel_in_asio(*e.reg);  // Asio lets go of the buffers now
            epoll_reg* r = e.reg;
            unlink(op);
            if (e.one_off && r != nullptr) drop(*r, false);
            finish(op, -ECANCELED);
        });
    }

    std::size_t in_flight() const noexcept override {
        return m_in_asio + m_blocking_calls.load(std::memory_order_acquire);
    }

private:
    // ---- the parts ----------------------------------------------------------------

    // The slot's protocol (io_op.hpp): marks the fd as in use on this loop.
    // False (and the operation ended) if it was closed.
    bool claim(io_operation& op, bool& first_call) noexcept {
        fd_registration* cur = op.io.reg->load(std::memory_order_acquire);
        if (cur == nullptr && op.io.reg->compare_exchange_strong(cur, claimed_registration(), std::memory_order_acq_rel)) {
            first_call = true;
            return true;
        }
        if (cur == closed_registration()) {
            finish(op, -ECANCELED);  // closed from another thread: the fd may be gone
            return false;
        }
        return true;
    }

    void finish(io_operation& op, int result) noexcept {
        io_of(op).~epoll_io();
        ++m_completed;
        op.complete(result);  // may start the operation's next part (`all`)
    }

    // A call that finished at once completes inline: its coroutine goes on
    // without a trip through the loop's queue. But calls that keep finishing
    // at once (an acceptor with a full backlog, a reader whose data keeps
    // coming) would then hold the loop for as long as that lasts, and every
    // connection they start at once is served a whole pass of the loop later.
    // With thousands of connections a pass outlasts Linux's delayed-ACK
    // timeout (40 ms): their TCP then ACKs every segment on its own, and
    // each round trip costs more (echo_bench ten_k: 47 segments per
    // connection instead of 29, 0.67x Asio). So the max_at_once-th call in a
    // row completes through the queue, behind the work already there, as
    // every completion does on io_uring and in Asio.
    static constexpr unsigned max_at_once = 16;

    void finish_queued(io_operation& op, epoll_io& e, int result) noexcept {
        m_at_once = 0;
        e.item.op = &op;
        e.item.result = result;
        e.item.run = [](work_item* w) noexcept {
            auto* it = static_cast<epoll_io::result_item*>(w);
            io_operation& o = *it->op;
            static_cast<asio_backend*>(&o.loop().core().backend())->finish(o, it->result);
        };
        // The loop thread's own queue: shutdown runs it to the end, and a
        // hosted drain runs until it is empty.
        m_core.post(&e.item);
    }

    // The fd's registration, made at the first wait.
    epoll_reg* registration_for(io_operation& op, bool& one_off) {
        one_off = op.io.reg == nullptr;
        if (!one_off) {
            fd_registration* cur = op.io.reg->load(std::memory_order_acquire);
            if (auto* r = real_registration(cur)) return static_cast<epoll_reg*>(r);
        }
        auto r = make_registration(op.io.fd, op.io.kind->readiness.fd);  // throws: ENOMEM, an epoll_ctl error
        if (!one_off) {
            fd_registration* expected = claimed_registration();
            if (!op.io.reg->compare_exchange_strong(expected, r.get(), std::memory_order_acq_rel)) {
                // Closed from another thread just now: its posted close does
                // not know this registration.
                release(*r);
                return nullptr;
            }
        }
        epoll_reg* raw = r.release();
        raw->next_live = m_regs;
        if (m_regs) m_regs->prev_live = raw;
        m_regs = raw;
        if (m_epoll_fd >= 0) watch_natively(*raw);
        return raw;
    }

    // The fd as an Asio object of its type: the operation's kind knows it
    // for hop's sockets; any other fd is asked (SO_TYPE; not a socket: a
    // descriptor). The protocol's family is left unspecified: Asio reads it
    // only for endpoints, which this file never asks for.
    std::unique_ptr<epoll_reg> make_registration(int fd, readiness_fd what) {
        if (what == readiness_fd::unknown) {
            int type = 0;
            socklen_t len = sizeof type;
            if (::getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) {
                return std::make_unique<epoll_reg>(std::in_place_type<descriptor>, m_ctx.get_executor(), fd);
            }
            what = type == SOCK_STREAM ? readiness_fd::stream_socket : readiness_fd::datagram_socket;
        }
        if (what == readiness_fd::stream_socket) {
            return std::make_unique<epoll_reg>(std::in_place_type<stream_socket>, m_ctx.get_executor(),
                                               asio::generic::stream_protocol(AF_UNSPEC, 0), fd);
        }
        return std::make_unique<epoll_reg>(std::in_place_type<datagram_socket>, m_ctx.get_executor(),
                                           asio::generic::datagram_protocol(AF_UNSPEC, 0), fd);
    }

    // The call would block: Asio waits (and, for a stream's recv / send,
    // performs the call).
    void wait_in_asio(io_operation& op, epoll_io& e) noexcept {
        epoll_reg* r;
        try {
            r = registration_for(op, e.one_off);
        } catch (const std::system_error& ex) {
            finish(op, -ex.code().value());
            return;
        } catch (...) {
            finish(op, -ENOMEM);
            return;
        }
        if (r == nullptr) {
            finish(op, -ECANCELED);
            return;
        }
        wait_on(op, e, *r);
    }

    void wait_on(io_operation& op, epoll_io& e, epoll_reg& reg) noexcept {
        m_at_once = 0;
        epoll_reg* r = &reg;
        e.reg = r;
        link(op);
        try {
            if (m_hosted) {
                // May run on any host thread, after the loop is gone: holds
                // the shared state, touches the operation only through it.
                issue(op, *r, [s = m_shared, &op](const std::error_code& ec, std::size_t n) {
                    hand_over(*s, op, ec, n);
                });
            } else {
                issue(op, *r, [this, &op](const std::error_code& ec, std::size_t n) { on_asio_done(op, ec, n); });
            }
        } catch (...) {
            unlink(op);
            end_wait(op, -ENOMEM);
        }
    }

    // Hands the operation to Asio with `done(ec, n)` as its handler; n is
    // ~0 for a readiness wait.
    template <class Done>
    static void issue(io_operation& op, epoll_reg& r, Done done) {
        auto& io = op.io;
        const readiness_wait w = io.kind->readiness.wait;
        auto* stream = std::get_if<stream_socket>(&r.obj);
        if (w == readiness_wait::receive && stream != nullptr) {
            stream->async_receive(asio::mutable_buffer(static_cast<char*>(io.buf) + io.done, bytes_left(io)), io.flags,
                                  std::move(done));
            return;
        }
        if (w == readiness_wait::send && stream != nullptr) {
            stream->async_send(asio::const_buffer(static_cast<char*>(io.buf) + io.done, bytes_left(io)), io.flags,
                               std::move(done));
            return;
        }
        const bool write = waits_writable(*io.kind, io);
        auto ready = [done = std::move(done)](const std::error_code& ec) mutable { done(ec, ~std::size_t{0}); };
        std::visit(
            [&](auto& o) {
                using T = std::decay_t<decltype(o)>;
                if constexpr (std::is_same_v<T, descriptor>) {
                    o.async_wait(write ? descriptor::wait_write : descriptor::wait_read, std::move(ready));
                } else {
                    o.async_wait(write ? asio::socket_base::wait_write : asio::socket_base::wait_read, std::move(ready));
                }
            },
            r.obj);
    }

    static std::size_t bytes_left(const io_params& io) noexcept {
        return std::min<std::size_t>(io.len - io.done, std::size_t{1} << 30);
    }

    // Asio's handler, own context: on the loop thread, inside reap / wait.
    void on_asio_done(io_operation& op, const std::error_code& ec, std::size_t n) noexcept {
        unlink(op);
        end_wait(op, result_of(ec, n));
    }

    // Asio's handler on a host's context may run on any host thread: it
    // hands the result to the loop's queue (the loop's drain completes it).
    static void hand_over(shared& s, io_operation& op, const std::error_code& ec, std::size_t n) noexcept {
        std::lock_guard lock(s.mutex);
        asio_backend* self = s.self;
        if (self == nullptr) return;  // the loop ended the operation itself
        auto& e = io_of(op);
        e.handed_over = true;
        e.item.op = &op;
        e.item.result = result_of(ec, n);
        e.item.run = [](work_item* w) noexcept {
            auto* it = static_cast<epoll_io::result_item*>(w);
            io_operation& o = *it->op;
            auto* b = static_cast<asio_backend*>(&o.loop().core().backend());
            b->unlink(o);
            b->end_wait(o, it->result);
        };
        self->m_core.post(&e.item);
    }

    // What an Asio completion means for the operation: the call's result,
    // or (a readiness wait) -EAGAIN: try again.
    static int result_of(const std::error_code& ec, std::size_t n) noexcept {
        if (!ec) return n == ~std::size_t{0} ? -EAGAIN : static_cast<int>(n);  // ready: the call goes again
        if (ec == asio::error::operation_aborted) return -ECANCELED;
        if (ec == asio::error::eof) return 0;
        return ec.category() == asio::system_category() ? -ec.value() : -EIO;
    }

    // The wait ended: the result, or (readiness) the call's next try.
    void end_wait(io_operation& op, int result) noexcept {
        auto& e = io_of(op);
        if (e.reg == nullptr) {
            // Its fd was closed under it: whatever Asio did after all, it
            // reports the close.
            finish(op, -ECANCELED);
            return;
        }
        if (result == -ECANCELED && !e.cancel_requested && !m_core.closing()) {
            // Another operation on this fd was cancelled (Asio cancels them
            // all); this one moved no byte: it waits again.
            e.handed_over = false;
            wait_on(op, e, *e.reg);
            return;
        }
        if (op.io.kind->readiness.wait == readiness_wait::receive) {
            // (Not known what Asio saw when it was aborted: try first next time.)
            e.reg->asio_read_short = result <= 0 || static_cast<std::size_t>(result) < bytes_left(op.io);
        }
        if (result == -EAGAIN) {
            result = op.io.kind->readiness.attempt(op.io, true);
            if (result == -EAGAIN && !m_core.closing()) {
                // Spurious readiness (another reader took the data): wait again.
                e.handed_over = false;
                wait_on(op, e, *e.reg);
                return;
            }
            if (result == -EAGAIN) result = -ECANCELED;
        }
        epoll_reg& reg = *e.reg;
        if (e.one_off) {
            drop(reg, false);  // a wait on an fd with no IO object: its registration goes
        } else if (!m_hosted && keeps_completing(reg)) {
            finish_queued(op, e, result);
            return;
        }
        finish(op, result);
    }

    // True when this is the max_at_once-th completion on `reg` in one pass
    // of Asio's queue. A reader whose bytes are already buffered gets each
    // read back at once (Asio's speculative receive, completed in the same
    // poll()), its coroutine starts the next, and the chain would run to its
    // end inside that poll() while hop's posts, expired timers and other
    // threads' items wait (socket_test: a post made before 4,096 one-byte
    // reads of buffered bytes ran after the last of them). Such a
    // completion goes through the loop's queue instead, behind that work.
    // Counted per fd, not per pass: handing the turn back after N handlers
    // of any fd puts the acceptor's queued completions ahead of every read
    // and write Asio has ready, and with thousands of connections each then
    // waits long enough for delayed ACKs again (echo_bench ten_k: 0.7-0.87x
    // Asio, against 1.0-1.1x).
    bool keeps_completing(epoll_reg& reg) noexcept {
        if (reg.pass != m_pass) {
            reg.pass = m_pass;
            reg.done_in_pass = 0;
        }
        return ++reg.done_in_pass >= max_at_once;
    }

    // Ends the registration: what waits on it ends operation_aborted;
    // `close`: Asio closes the fd (else the fd stays open, released).
    void drop(epoll_reg& r, bool close) noexcept {
        while (io_operation* op = r.waiting.head) {
            r.waiting.remove(*op);
            io_of(*op).reg = nullptr;
            m_orphans.push_back(*op);
        }
        if (r.prev_live) {
            r.prev_live->next_live = r.next_live;
        } else {
            m_regs = r.next_live;
        }
        if (r.next_live) r.next_live->prev_live = r.prev_live;
        if (m_epoll_fd >= 0) {
            const int fd = std::visit([](auto& o) { return static_cast<int>(o.native_handle()); }, r.obj);
            ::epoll_ctl(m_epoll_fd, EPOLL_CTL_DEL, fd, nullptr);
        }
        if (close) {
            std::error_code ignored;
            std::visit([&](auto& o) { o.close(ignored); }, r.obj);
        } else {
            release(r);
        }
        delete &r;
    }

    // Asio ends everything waiting on the fd with operation_aborted.
    static void cancel_in_asio(epoll_reg& r) noexcept {
        std::error_code ignored;
        std::visit([&](auto& o) { o.cancel(ignored); }, r.obj);
    }

    // The fd leaves Asio (and the reactor) but stays open.
    static void release(epoll_reg& r) noexcept {
        std::visit(
            [](auto& o) {
                using T = std::decay_t<decltype(o)>;
                if constexpr (std::is_same_v<T, descriptor>) {
                    (void)o.release();
                } else {
                    std::error_code ignored;
                    (void)o.release(ignored);
                }
            },
            r.obj);
    }

    // Native handle: the host's epoll set sees the fd's events too (edge
    // triggered: the host only needs to wake; Asio does the rest in poll()).
    void watch_natively(epoll_reg& r) noexcept {
        const int fd = std::visit([](auto& o) { return static_cast<int>(o.native_handle()); }, r.obj);
        epoll_event e{};
        e.events = EPOLLIN | EPOLLOUT | EPOLLET;
        e.data.fd = fd;
        ::epoll_ctl(m_epoll_fd, EPOLL_CTL_ADD, fd, &e);
    }

    // An operation waiting in Asio is on its registration's list, or, once
    // that registration is gone (its fd closed under it), on m_orphans
    // with e.reg null until Asio's handler reports the abort.
    void link(io_operation& op) noexcept {
        io_of(op).reg->waiting.push_back(op);
        ++m_in_asio;
    }
    void unlink(io_operation& op) noexcept {
        epoll_reg* r = io_of(op).reg;
        (r != nullptr ? r->waiting : m_orphans).remove(op);
        --m_in_asio;
    }
    // Calls fn(op) for every operation waiting in Asio; fn may unlink it.
    template <class Fn>
    void for_each_waiting(Fn fn) {
        auto each = [&](io_op_queue& q) {
            io_operation* next = nullptr;
            for (io_operation* op = q.head; op != nullptr; op = next) {
                next = op->next_in_flight;
                fn(*op);
            }
        };
        each(m_orphans);
        epoll_reg* next_reg = nullptr;
        for (epoll_reg* r = m_regs; r != nullptr; r = next_reg) {
            next_reg = r->next_live;
            each(r->waiting);
        }
    }

    // pread / pwrite / fsync on the blocking pool; the result comes back to
    // the loop as a posted item.
    void start_blocking_call(io_operation& op, epoll_io& e) noexcept {
        e.item.op = &op;
        e.item.run = [](work_item* w) noexcept {
            auto* c = static_cast<epoll_io::result_item*>(w);
            io_operation& o = *c->op;
            auto& core = o.loop().core();
            auto* b = static_cast<asio_backend*>(&core.backend());
            c->result = o.io.kind->readiness.attempt(o.io, false);
            c->run = [](work_item* w2) noexcept {
                auto* c2 = static_cast<epoll_io::result_item*>(w2);
                io_operation& o2 = *c2->op;
                auto* b2 = static_cast<asio_backend*>(&o2.loop().core().backend());
                b2->m_blocking_calls.fetch_sub(1, std::memory_order_acq_rel);
                b2->finish(o2, c2->result);
            };
            (void)b;
            core.post(c);
        };
        m_blocking_calls.fetch_add(1, std::memory_order_acq_rel);
        blocking_executor().post_continuation(&e.item);
    }

    // ---- hosted: hop's turns as handlers on the host's context -------------------

    // What io_loop::run() & co. return is the number of hop handlers (posted
    // callables, resumed coroutines, fired timers) plus the host's own
    // handlers — not this backend's internal drain and timer handlers.
    // Atomic: a host may run its context on several threads.
    struct handler_counts {
        std::size_t hop;
        std::size_t internal;
    };
    handler_counts counts() const noexcept {
        return {m_hop_handlers.load(std::memory_order_relaxed), m_internal_handlers.load(std::memory_order_relaxed)};
    }
    std::size_t handlers_since(handler_counts before, std::size_t asio_handlers) const noexcept {
        const handler_counts now = counts();
        const std::size_t internal = now.internal - before.internal;
        const std::size_t host = asio_handlers > internal ? asio_handlers - internal : 0;
        return host + (now.hop - before.hop);
    }

    void schedule_drain() noexcept {
        if (m_drain_scheduled.exchange(true, std::memory_order_seq_cst)) return;
        try {
            asio::post(m_ctx, [s = m_shared] {
                std::unique_lock lock(s->mutex);
                if (auto* self = s->self) {
                    lock.unlock();
                    self->m_internal_handlers.fetch_add(1, std::memory_order_relaxed);
                    self->drain();
                }
            });
        } catch (...) {
            m_drain_scheduled.store(false, std::memory_order_seq_cst);
        }
    }

    void drain() {
        {
            loop_core::running_scope scope(m_core);
            do {
                m_hop_handlers.fetch_add(m_core.hosted_turn(), std::memory_order_relaxed);
                update_timer();
            } while (m_core.has_local_work());
        }
        // Cleared only now (it stayed set during the drain, so no second
        // drain could start on another host thread), then re-checked so a
        // post that saw it still set is not lost. Only thread-safe state is
        // read after the clear: another host thread may be draining already.
        m_drain_scheduled.store(false, std::memory_order_seq_cst);
        if (m_core.has_remote_work() || m_timer_fired.load(std::memory_order_seq_cst)) schedule_drain();
    }

    void update_timer() {
        if (m_timer_fired.exchange(false, std::memory_order_seq_cst)) m_armed.reset();
        auto d = m_core.next_deadline();
        if (d == m_armed) return;
        m_armed = d;
        if (!d) {
            m_timer.cancel();
            return;
        }
        m_timer.expires_at(*d);
        m_timer.async_wait([s = m_shared](const std::error_code& ec) {
            std::unique_lock lock(s->mutex);
            if (auto* self = s->self) {
                lock.unlock();
                self->m_internal_handlers.fetch_add(1, std::memory_order_relaxed);
                // Any host thread may run this: it touches no loop state,
                // only flags the expiry for the next drain (which re-arms).
                if (!ec) {
                    self->m_timer_fired.store(true, std::memory_order_seq_cst);
                    self->schedule_drain();
                }
            }
        });
    }

    void signal_native() noexcept {
        if (m_event_fd >= 0) (void)::eventfd_write(m_event_fd, 1);
    }

    loop_core& m_core;
    std::unique_ptr<asio::io_context> m_owned;
    asio::io_context& m_ctx;
    std::optional<asio::executor_work_guard<asio::io_context::executor_type>> m_guard;
    asio::steady_timer m_timer;  // hosted: the next deadline
    std::shared_ptr<shared> m_shared;
    bool m_hosted;
    epoll_reg* m_regs = nullptr;  // live registrations (loop thread)
    io_op_queue m_orphans;        // waiting in Asio, their registration gone (loop thread)
    std::size_t m_in_asio = 0;
    std::uint8_t m_pass = 0;  // which reap or wait this is (wraps): keeps_completing
    unsigned m_at_once = 0;  // calls finished at once since one last waited (or was queued)
    std::size_t m_completed = 0;  // operations completed (loop thread)
    std::atomic<std::size_t> m_blocking_calls{0};
    std::atomic<bool> m_drain_scheduled{false};
    std::atomic<bool> m_timer_fired{false};
    std::atomic<std::size_t> m_hop_handlers{0};
    std::atomic<std::size_t> m_internal_handlers{0};
    std::optional<loop_clock::time_point> m_armed;
    std::optional<descriptor> m_wake;  // own context: the wake eventfd, waited on in Asio
    int m_wake_fd = -1;                // its fd (posters write it; m_wake owns it)
    int m_epoll_fd = -1;
    int m_event_fd = -1;
    int m_timer_fd = -1;
};

}  // namespace

std::unique_ptr<loop_backend> make_asio_backend(loop_core& core, asio::io_context* host) {
    return std::make_unique<asio_backend>(core, host);
}

}  // namespace hop::detail
