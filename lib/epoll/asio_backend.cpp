// The readiness backend, built on standalone Asio's io_context (epoll on
// Linux). hop's own work runs inside one "drain" handler at a time, so it
// stays single-threaded even when a host runs the context on several
// threads. Timers are hop's heap behind one asio::steady_timer armed at the
// earliest deadline.

#include "../loop_core.hpp"
#include "../spin.hpp"

#include <hop/file.hpp>

#include <asio/executor_work_guard.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>
#include <vector>

namespace hop::detail {

namespace {

class asio_backend final : public loop_backend {
    // What handlers queued on the (possibly host-owned) context hold on to,
    // so a handler that runs after the loop is gone does nothing.
    struct shared {
        std::mutex mutex;
        asio_backend* self = nullptr;
    };

public:
    asio_backend(loop_core& core, asio::io_context* host)
        : m_core(core),
          m_owned(host ? nullptr : std::make_unique<asio::io_context>(1)),
          m_ctx(host ? *host : *m_owned),
          m_timer(m_ctx),
          m_shared(std::make_shared<shared>()),
          m_hosted(host != nullptr) {
        m_shared->self = this;
    }

    ~asio_backend() override {
        {
            std::lock_guard lock(m_shared->mutex);
            m_shared->self = nullptr;
        }
        // Sockets still open hold registrations: their descriptors must go
        // before the context does (the fds stay open for their owners).
        while (m_regs) unregister(*m_regs);
        m_timer.cancel();
        if (m_epoll_fd >= 0) ::close(m_epoll_fd);
        if (m_event_fd >= 0) ::close(m_event_fd);
        if (m_timer_fd >= 0) ::close(m_timer_fd);
    }

    const char* name() const noexcept override { return "epoll"; }
    hop::backend kind() const noexcept override { return hop::backend::epoll; }

    // The context is restarted before the core's stop flag is read: a stop()
    // that lands after the read stops the restarted context, so run() still
    // returns (read first, a stop in between would be undone by restart()).
    std::size_t run() override {
        if (m_ctx.stopped()) m_ctx.restart();
        if (m_core.stopped()) return 0;
        auto guard = asio::make_work_guard(m_ctx);
        const handler_counts before = counts();
        return handlers_since(before, m_ctx.run());
    }

    std::size_t run_once() override {
        if (m_ctx.stopped()) m_ctx.restart();
        if (m_core.stopped()) return 0;
        auto guard = asio::make_work_guard(m_ctx);
        const handler_counts before = counts();
        std::size_t n = m_ctx.run_one();
        // The one event may only have been hop's timer: run what it made ready.
        n += m_ctx.poll();
        return handlers_since(before, n);
    }

    std::size_t poll() override {
        if (m_event_fd >= 0) {
            eventfd_t v;
            (void)::eventfd_read(m_event_fd, &v);
            std::uint64_t expirations;
            (void)::read(m_timer_fd, &expirations, sizeof expirations);
            // The host woke on our timerfd: run the due timers now rather than
            // rely on asio's own timer, whose expiry is rounded differently
            // and may not have passed yet (the host would then sleep forever).
            if (auto d = m_core.next_deadline(); d && *d <= loop_clock::now()) schedule_drain(false);
        }
        if (m_ctx.stopped()) m_ctx.restart();
        const handler_counts before = counts();
        const std::size_t n = m_ctx.poll();
        if (m_event_fd >= 0) arm_native_timer();
        return handlers_since(before, n);
    }

    void wake() noexcept override {
        // Always queue a drain, also when stopped: work posted now must run
        // after restart(), and nothing else would queue it.
        schedule_drain();
        if (m_core.stopped()) {
            m_ctx.stop();
            signal_native();
        }
    }

    void deadline_changed() noexcept override { m_deadline_dirty = true; }

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
            epoll_event e1{};
            e1.events = EPOLLIN;
            e1.data.fd = ev;
            ::epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e1);
            epoll_event e2{};
            e2.events = EPOLLIN;
            e2.data.fd = tf;
            ::epoll_ctl(ep, EPOLL_CTL_ADD, tf, &e2);
            m_epoll_fd = ep;
            m_event_fd = ev;
            m_timer_fd = tf;
            arm_native_timer();
            if (m_drain_scheduled.load(std::memory_order_seq_cst)) signal_native();
        }
        return m_epoll_fd;
    }

    void drain_for_shutdown() override {
        // hop's own work was drained by the core; what may be left are this
        // backend's handlers on the context, which check `shared` first.
        m_timer.cancel();
        m_armed.reset();
        // Operations waiting for readiness end cancelled, so the coroutines
        // waiting on them unwind and are freed; calls running on the
        // blocking pool are waited for (they write into those frames).
        // (What the failed operations resume may close other sockets: hold
        // every registration while going through them.)
        std::vector<reg_ref> held;
        for (epoll_reg* r = m_regs; r != nullptr; r = r->next_live) {
            if (!r->readers.empty() || !r->writers.empty()) held.emplace_back(r);
        }
        for (auto& h : held) {
            fail_queue(h.r->readers, -ECANCELED);
            fail_queue(h.r->writers, -ECANCELED);
        }
        held.clear();
        // Asio's reads and writes: cancelled, and their handlers run here.
        if (!m_hosted && m_asio_ops != 0) {
            for (epoll_reg* r = m_regs; r != nullptr; r = r->next_live) {
                std::error_code ignored;
                r->sock.cancel(ignored);
            }
            for (int i = 0; i < 1000 && m_asio_ops != 0; ++i) {
                if (m_ctx.stopped()) m_ctx.restart();
                m_ctx.poll();
            }
        }
        // A pool thread posts its result first and only then counts the
        // call as over: at zero, every result is in the queue.
        for (;;) {
            const std::size_t n = m_blocking_calls.load(std::memory_order_acquire);
            if (n == 0) break;
            m_blocking_calls.wait(n, std::memory_order_acquire);
        }
        m_core.run_ready();
    }

    // ---- IO operations ------------------------------------------------------

    // An fd's registration: its Asio descriptor (registered with epoll once,
    // for the fd's lifetime) and the operations waiting for it to be
    // readable / writable, in order. Reference-counted: the owner (a socket,
    // or one readiness wait) and each async_wait handler Asio holds.
    struct epoll_reg final : fd_registration {
        struct ready_item : work_item {
            epoll_reg* reg = nullptr;
            bool write = false;
            std::error_code ec;
        };
        // The fd as an Asio socket, so a socket's reads can be Asio's own:
        // they take Asio's speculative path, with no epoll_ctl per wait.
        // (Any other fd, a pipe for wait_fd, only ever waits: Asio's socket
        // registers and waits on it the same way.)
        epoll_reg(asio_backend& b, int fd) : backend(&b), sock(b.m_ctx) {
            sock.assign(asio::generic::stream_protocol(AF_INET, SOCK_STREAM), fd);
        }
        asio_backend* backend;
        asio::generic::stream_protocol::socket sock;
        // Asio's last read here came back short (or at the end of the
        // stream): Asio then waits for the next epoll edge before it reads
        // again, and a FIN that came with the data makes no new edge. So
        // hop tries the next read itself first.
        bool read_exhausted = true;
        std::atomic<int> refs{1};
        bool dead = false;
        bool read_armed = false;
        bool write_armed = false;
        io_op_queue readers;
        io_op_queue writers;
        // Hosted contexts only (made at the first wait): a handler's result
        // back to the loop, [0] read, [1] write.
        std::unique_ptr<ready_item[]> ready;
        epoll_reg* next_live = nullptr;
        epoll_reg* prev_live = nullptr;
    };
    // Holds a reference for an async_wait handler (released when Asio
    // destroys the handler, run or not).
    struct reg_ref {
        epoll_reg* r;
        explicit reg_ref(epoll_reg* reg) noexcept : r(reg) { r->refs.fetch_add(1, std::memory_order_relaxed); }
        reg_ref(reg_ref&& o) noexcept : r(std::exchange(o.r, nullptr)) {}
        reg_ref(const reg_ref& o) noexcept : r(o.r) { r->refs.fetch_add(1, std::memory_order_relaxed); }
        reg_ref& operator=(const reg_ref&) = delete;
        ~reg_ref() {
            if (r) release_reg(r);
        }
    };
    static void release_reg(epoll_reg* r) noexcept {
        if (r->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) delete r;
    }

    struct epoll_io {
        epoll_reg* reg = nullptr;  // while queued on it
        bool owns_reg = false;     // a one-off registration (wait_fd without a socket)
        bool queued = false;
        bool connecting = false;   // connect() said EINPROGRESS
        bool in_asio = false;      // an Asio async_receive / async_send runs it
        bool cancel_requested = false;
        // File calls on the blocking pool:
        struct call_item : work_item {
            io_operation* op = nullptr;
            asio_backend* backend = nullptr;
            int result = 0;
        } call;
    };
    static_assert(sizeof(epoll_io) <= sizeof(io_operation::backend_storage));
    static epoll_io& io_of(io_operation& op) noexcept {
        return *std::launder(reinterpret_cast<epoll_io*>(op.backend_storage));
    }

    void start_io(io_operation& op) noexcept override {
        auto* e = ::new (static_cast<void*>(op.backend_storage)) epoll_io;
        if (op.io.reg != nullptr && op.io.reg->load(std::memory_order_acquire) == closed_registration()) {
            // Closed from another thread: the fd may already be gone.
            op.complete(-ECANCELED);
            return;
        }
        switch (op.io.kind) {
            case io_kind::read_at:
            case io_kind::write_at:
            case io_kind::fsync:
                start_blocking_call(op, *e);
                return;
            case io_kind::poll:
                enqueue(op, (op.io.events & POLLIN) == 0);
                return;
            case io_kind::connect: {
                int r = ::connect(op.io.fd, op.io.addr, op.io.addrlen);
                if (r == 0) {
                    op.complete(0);
                } else if (errno == EINPROGRESS || errno == EAGAIN) {
                    e->connecting = true;
                    enqueue(op, true);
                } else {
                    op.complete(-errno);
                }
                return;
            }
            case io_kind::recv:
                if (!m_hosted && op.io.reg != nullptr) {
                    start_asio_transfer(op, false);
                    return;
                }
                break;
            default:
                break;
        }
        const int r = attempt(op);
        if (r == -EAGAIN && op.io.kind == io_kind::send && !m_hosted && op.io.reg != nullptr) {
            start_asio_transfer(op, true);  // a full send buffer: Asio waits for room
            return;
        }
        if (r == -EAGAIN) {
            enqueue(op, is_write(op));
        } else {
            op.complete(r);
        }
    }

    void cancel_io(io_operation& op) noexcept override {
        auto& e = io_of(op);
        if (e.in_asio) {
            // Asio cancels every operation on the socket: the others go again.
            e.cancel_requested = true;
            std::error_code ignored;
            e.reg->sock.cancel(ignored);
            return;
        }
        if (!e.queued) return;  // a blocking call: it ends on its own
        epoll_reg& r = *e.reg;
        (is_write(op) ? r.writers : r.readers).remove(op);
        finish_queued(op, -ECANCELED);
    }

    void close_fd(int fd, fd_registration* reg) noexcept override {
        if (auto* r = static_cast<epoll_reg*>(reg)) unregister(*r);
        ::close(fd);
    }

    bool wants_nonblocking() const noexcept override { return true; }

    // ---- the parts ----------------------------------------------------------

    static bool is_write(const io_operation& op) noexcept {
        switch (op.io.kind) {
            case io_kind::send:
            case io_kind::sendmsg:
            case io_kind::connect:
                return true;
            case io_kind::poll:
                return (op.io.events & POLLIN) == 0;
            default:
                return false;
        }
    }

    // One non-blocking try of the call: its result or -errno.
    static int attempt(io_operation& op) noexcept {
        auto& io = op.io;
        auto* buf = static_cast<char*>(io.buf) + io.done;
        const std::size_t left = std::min<std::size_t>(io.len - io.done, std::size_t{1} << 30);
        ssize_t r = -1;
        switch (io.kind) {
            case io_kind::recv:
                r = ::recv(io.fd, buf, left, io.flags | MSG_DONTWAIT);
                break;
            case io_kind::send:
                r = ::send(io.fd, buf, left, io.flags | MSG_DONTWAIT | MSG_NOSIGNAL);
                break;
            case io_kind::accept: {
                socklen_t* len = io.addr ? &io.addrlen : nullptr;
                r = ::accept4(io.fd, io.addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
                break;
            }
            case io_kind::recvmsg:
                r = ::recvmsg(io.fd, io.msg, io.flags | MSG_DONTWAIT);
                break;
            case io_kind::sendmsg:
                r = ::sendmsg(io.fd, io.msg, io.flags | MSG_DONTWAIT | MSG_NOSIGNAL);
                break;
            case io_kind::connect: {
                int err = 0;
                socklen_t len = sizeof err;
                if (::getsockopt(io.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) return -errno;
                return -err;
            }
            default:
                return -EINVAL;
        }
        if (r >= 0) return static_cast<int>(r);
        return errno == EWOULDBLOCK ? -EAGAIN : -errno;
    }

    // The fd's registration, made on first need. If it cannot be made (EPERM
    // for a regular file, ENOMEM), completes `op` with the error and
    // returns null.
    epoll_reg* registration_for(io_operation& op, bool& one_off) noexcept {
        one_off = false;
        if (op.io.reg != nullptr) {
            fd_registration* cur = op.io.reg->load(std::memory_order_acquire);
            if (cur == closed_registration()) {
                op.complete(-ECANCELED);
                return nullptr;
            }
            if (cur != nullptr) return static_cast<epoll_reg*>(cur);
        }
        epoll_reg* r;
        try {
            r = new epoll_reg(*this, op.io.fd);  // registers with epoll
        } catch (const std::system_error& ex) {
            op.complete(-ex.code().value());
            return nullptr;
        } catch (...) {
            op.complete(-ENOMEM);
            return nullptr;
        }
        r->next_live = m_regs;
        if (m_regs) m_regs->prev_live = r;
        m_regs = r;
        if (op.io.reg != nullptr) {
            fd_registration* expected = nullptr;
            if (!op.io.reg->compare_exchange_strong(expected, r, std::memory_order_acq_rel)) {
                // Closed from another thread just now: its posted close_fd
                // will not know this registration.
                unregister(*r);
                op.complete(-ECANCELED);
                return nullptr;
            }
        } else {
            one_off = true;
        }
        return r;
    }

    void enqueue(io_operation& op, bool write) noexcept {
        auto& e = io_of(op);
        epoll_reg* r = registration_for(op, e.owns_reg);
        if (r == nullptr) return;
        e.reg = r;
        e.queued = true;
        ++m_queued_ops;
        (write ? r->writers : r->readers).push_back(op);
        arm(*r, write);
    }

    // The op is off its queue: drop a one-off registration, then complete.
    void finish_queued(io_operation& op, int result) noexcept {
        auto& e = io_of(op);
        e.queued = false;
        --m_queued_ops;
        if (e.owns_reg) {
            e.owns_reg = false;
            unregister(*e.reg);
        }
        e.reg = nullptr;
        op.complete(result);
    }

    void fail_queue(io_op_queue& q, int result) noexcept {
        while (io_operation* op = q.head) {
            q.remove(*op);
            finish_queued(*op, result);
        }
    }

    // Ends the registration: queued operations fail, the fd leaves epoll
    // (it is not closed here), the owner's reference goes.
    void unregister(epoll_reg& r) noexcept {
        if (r.dead) return;
        r.dead = true;
        if (r.prev_live) {
            r.prev_live->next_live = r.next_live;
        } else {
            m_regs = r.next_live;
        }
        if (r.next_live) r.next_live->prev_live = r.prev_live;
        r.next_live = r.prev_live = nullptr;
        fail_queue(r.readers, -ECANCELED);
        fail_queue(r.writers, -ECANCELED);
        // Asio's own reads and writes on it end with operation_aborted (their
        // handlers see `dead` and report the close).
        std::error_code ignored;
        (void)r.sock.release(ignored);
        release_reg(&r);
    }

    template <class Handler>
    static void async_wait_on(epoll_reg& r, asio::socket_base::wait_type type, Handler&& h) {
        r.sock.async_wait(type, std::forward<Handler>(h));
    }

    // ---- socket reads and writes through Asio's operations (own context) ---
    //
    // A wait through async_wait costs an epoll_ctl(MOD) each time (Asio's
    // non-speculative path); Asio's async_receive / async_send keep the fd's
    // registration as it is. Own context only: their handlers point into
    // the operation, which a host's threads could run after the loop is gone.

    void start_asio_transfer(io_operation& op, bool write) noexcept {
        auto& e = io_of(op);
        bool one_off;
        epoll_reg* r = registration_for(op, one_off);
        if (r == nullptr) return;
        auto& io = op.io;
        if (!write && r->read_exhausted) {
            const int res = attempt(op);
            if (res != -EAGAIN) {
                op.complete(res);
                return;
            }
            // Nothing there: any byte or FIN from now on is a new edge.
            r->read_exhausted = false;
        }
        const std::size_t left = std::min<std::size_t>(io.len - io.done, std::size_t{1} << 30);
        void* buf = static_cast<char*>(io.buf) + io.done;
        e.reg = r;
        e.in_asio = true;
        ++m_asio_ops;
        auto handler = [ref = reg_ref(r), &op, write, left](const std::error_code& ec, std::size_t n) {
            ref.r->backend->on_transfer(op, write, left, ec, n);
        };
        try {
            if (write) {
                r->sock.async_send(asio::const_buffer(buf, left), std::move(handler));
            } else {
                r->sock.async_receive(asio::mutable_buffer(buf, left), std::move(handler));
            }
        } catch (...) {
            --m_asio_ops;
            e.in_asio = false;
            e.reg = nullptr;
            op.complete(-ENOMEM);
        }
    }

    // Asio's completion of a read or write: on the loop thread (own context).
    void on_transfer(io_operation& op, bool write, std::size_t asked, const std::error_code& ec, std::size_t n) noexcept {
        m_internal_handlers.fetch_add(1, std::memory_order_relaxed);
        --m_asio_ops;
        loop_core::running_scope scope(m_core);
        auto& e = io_of(op);
        epoll_reg& r = *e.reg;
        e.in_asio = false;
        int res;
        if (!ec) {
            res = static_cast<int>(n);
            if (!write && n < asked) r.read_exhausted = true;
        } else if (ec == asio::error::eof) {
            res = 0;
            r.read_exhausted = true;
        } else if (ec == asio::error::operation_aborted) {
            if (!write) r.read_exhausted = true;  // not known what Asio saw
            if (!e.cancel_requested && !r.dead && !m_core.closing()) {
                // Another operation on this socket was cancelled (Asio cancels
                // them all): this one moved no byte; it goes again.
                start_asio_transfer(op, write);
                return;
            }
            res = -ECANCELED;
        } else {
            res = ec.category() == asio::system_category() ? -ec.value() : -EIO;
        }
        e.reg = nullptr;
        m_hop_handlers.fetch_add(1, std::memory_order_relaxed);
        op.complete(res);
        if (m_core.has_local_work() || m_deadline_dirty) schedule_drain(false);
    }

    void arm(epoll_reg& r, bool write) noexcept {
        bool& armed = write ? r.write_armed : r.read_armed;
        if (armed || r.dead) return;
        armed = true;
        try {
            const auto type =
                write ? asio::socket_base::wait_write : asio::socket_base::wait_read;
            if (!m_hosted) {
                async_wait_on(r, type, [ref = reg_ref(&r), write](const std::error_code& ec) {
                    ref.r->backend->on_ready_here(*ref.r, write, ec);
                });
            } else {
                if (!r.ready) r.ready = std::make_unique<epoll_reg::ready_item[]>(2);
                // The handler may outlive this backend: it checks `shared`.
                async_wait_on(r, type, [ref = reg_ref(&r), write, s = m_shared](const std::error_code& ec) {
                    std::lock_guard lock(s->mutex);
                    if (s->self != nullptr) s->self->hand_over(*ref.r, write, ec);
                });
            }
        } catch (...) {
            armed = false;
            fail_queue(write ? r.writers : r.readers, -ENOMEM);
        }
    }

    // Asio's handler on our own context: runs on the loop thread.
    void on_ready_here(epoll_reg& r, bool write, const std::error_code& ec) noexcept {
        m_internal_handlers.fetch_add(1, std::memory_order_relaxed);
        loop_core::running_scope scope(m_core);
        on_ready(r, write, ec);
        // This ran outside drain(): what the resumed coroutines queued here
        // (a spawn, a timer) needs a drain too, or the loop would sleep on it.
        if (m_core.has_local_work() || m_deadline_dirty) schedule_drain(false);
    }

    // Asio's handler on a host's context may run on any host thread: it
    // hands over to the loop's serialised drain (under `shared`'s mutex).
    void hand_over(epoll_reg& r, bool write, const std::error_code& ec) noexcept {
        m_internal_handlers.fetch_add(1, std::memory_order_relaxed);
        auto& item = r.ready[write ? 1 : 0];
        r.refs.fetch_add(1, std::memory_order_relaxed);  // the item's
        item.reg = &r;
        item.write = write;
        item.ec = ec;
        item.run = [](work_item* w) noexcept {
            auto* it = static_cast<epoll_reg::ready_item*>(w);
            epoll_reg* reg = it->reg;
            reg->backend->on_ready(*reg, it->write, it->ec);
            release_reg(reg);
        };
        m_core.post(&item);
    }

    // Loop thread: the fd is ready (or failed) in one direction: retry the
    // queued calls in order until one would block again.
    void on_ready(epoll_reg& r, bool write, const std::error_code& ec) noexcept {
        (write ? r.write_armed : r.read_armed) = false;
        if (r.dead) return;
        io_op_queue& q = write ? r.writers : r.readers;
        if (ec == asio::error::operation_aborted) {
            if (!q.empty()) arm(r, write);
            return;
        }
        // Held across the retries: what they resume may close the fd.
        reg_ref hold(&r);
        std::size_t handled = 0;
        // Only what was queued before this event: an operation queued while
        // it runs has just tried its call and found nothing.
        io_operation* last = q.tail;
        while (!r.dead && !q.empty()) {
            io_operation& op = *q.head;
            const bool was_last = &op == last;
            int res;
            if (ec) {
                res = -ec.value();
            } else if (op.io.kind == io_kind::poll) {
                res = static_cast<int>(write ? POLLOUT : POLLIN);
            } else {
                res = attempt(op);
                if (res == -EAGAIN) break;  // the rest would block too
            }
            q.remove(op);
            ++handled;
            finish_queued(op, res);
            if (was_last) break;
        }
        m_hop_handlers.fetch_add(handled, std::memory_order_relaxed);
        if (!r.dead && !q.empty()) arm(r, write);
    }

    // pread / pwrite / fsync on the blocking pool; the result comes back to
    // the loop as a posted item.
    void start_blocking_call(io_operation& op, epoll_io& e) noexcept {
        e.call.op = &op;
        e.call.backend = this;
        e.call.run = [](work_item* w) noexcept {
            auto* c = static_cast<epoll_io::call_item*>(w);
            auto& io = c->op->io;
            auto* buf = static_cast<char*>(io.buf) + io.done;
            const std::size_t left = std::min<std::size_t>(io.len - io.done, std::size_t{1} << 30);
            const auto off = static_cast<off_t>(io.offset + io.done);
            ssize_t r = 0;
            switch (io.kind) {
                case io_kind::read_at:
                    r = ::pread(io.fd, buf, left, off);
                    break;
                case io_kind::write_at:
                    r = ::pwrite(io.fd, buf, left, off);
                    break;
                default:
                    r = (io.flags & 1) ? ::fdatasync(io.fd) : ::fsync(io.fd);
                    break;
            }
            c->result = r >= 0 ? static_cast<int>(r) : -errno;
            c->run = [](work_item* w2) noexcept {
                auto* c2 = static_cast<epoll_io::call_item*>(w2);
                c2->op->complete(c2->result);  // may start the next part (all)
            };
            asio_backend* b = c->backend;  // `c` may be gone once posted
            b->m_core.post(c);
            if (b->m_blocking_calls.fetch_sub(1, std::memory_order_acq_rel) == 1) b->m_blocking_calls.notify_all();
        };
        m_blocking_calls.fetch_add(1, std::memory_order_acq_rel);
        blocking_executor().post_continuation(&e.call);
    }

private:
    // What io_loop::run() & co. return is the number of hop handlers (posted
    // callables, resumed coroutines, fired timers) plus, on a host's context,
    // the host's own handlers — not this backend's internal drain and timer
    // handlers. Atomic: a host may run its context on several threads.
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

    // `signal`: make the native handle readable (not needed when the caller
    // is about to poll the context itself).
    void schedule_drain(bool signal = true) noexcept {
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
        if (signal) signal_native();
    }

    void drain() {
        {
            loop_core::running_scope scope(m_core);
            for (;;) {
                m_hop_handlers.fetch_add(m_core.run_ready(), std::memory_order_relaxed);
                update_timer();
                if (m_core.has_local_work()) continue;
                // On a context of our own, wait a little for more posts here
                // rather than going back through Asio's queue and its wakeup.
                // A host's context is left alone: its other handlers come first.
                // Nor while IO is in flight: its events come through Asio, and
                // a spin here would only burn CPU before them (10,000
                // connections: a spin per accepted connection).
                if (m_hosted || m_asio_ops != 0 || m_queued_ops != 0 ||
                    !spin_until([&] { return m_core.has_remote_work(); }, std::chrono::microseconds(10))) {
                    break;
                }
            }
        }
        // Cleared only now (it stayed set during the drain, so no second
        // drain could start on another host thread), then re-checked so a
        // post that saw it still set is not lost. Only thread-safe state is
        // read after the clear: another host thread may be draining already.
        // (The local queue is empty here: the loop above runs it dry.)
        m_drain_scheduled.store(false, std::memory_order_seq_cst);
        if (m_core.has_remote_work() || m_timer_fired.load(std::memory_order_seq_cst)) {
            schedule_drain();
        }
    }

    void update_timer() {
        if (m_timer_fired.exchange(false, std::memory_order_seq_cst)) {
            m_armed.reset();
            m_deadline_dirty = true;
        }
        if (!m_deadline_dirty && m_armed == m_core.next_deadline()) return;
        m_deadline_dirty = false;
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
                if (!ec) self->on_timer();
            }
        });
        arm_native_timer();
    }

    // A host thread other than the one draining may run this: it touches
    // no loop state, only flags the expiry for the next drain (which
    // re-arms), so a drain running elsewhere right now cannot miss it.
    void on_timer() noexcept {
        m_timer_fired.store(true, std::memory_order_seq_cst);
        schedule_drain();
    }

    void signal_native() noexcept {
        if (m_event_fd >= 0) (void)::eventfd_write(m_event_fd, 1);
    }

    void arm_native_timer() noexcept {
        if (m_timer_fd < 0) return;
        itimerspec its{};
        if (m_armed) {
            auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(m_armed->time_since_epoch()).count();
            if (ns <= 0) ns = 1;
            its.it_value.tv_sec = ns / 1'000'000'000;
            its.it_value.tv_nsec = ns % 1'000'000'000;
        }
        ::timerfd_settime(m_timer_fd, TFD_TIMER_ABSTIME, &its, nullptr);
    }

    loop_core& m_core;
    epoll_reg* m_regs = nullptr;  // live registrations (loop thread)
    std::atomic<std::size_t> m_blocking_calls{0};
    std::size_t m_asio_ops = 0;    // Asio reads / writes in flight (loop thread)
    std::size_t m_queued_ops = 0;  // operations waiting for readiness (loop thread)
    std::unique_ptr<asio::io_context> m_owned;
    asio::io_context& m_ctx;
    asio::steady_timer m_timer;
    std::shared_ptr<shared> m_shared;
    bool m_hosted;
    std::atomic<bool> m_drain_scheduled{false};
    std::atomic<bool> m_timer_fired{false};
    std::atomic<std::size_t> m_hop_handlers{0};
    std::atomic<std::size_t> m_internal_handlers{0};
    bool m_deadline_dirty = false;
    std::optional<loop_clock::time_point> m_armed;
    int m_epoll_fd = -1;
    int m_event_fd = -1;
    int m_timer_fd = -1;
};

}  // namespace

std::unique_ptr<loop_backend> make_asio_backend(loop_core& core, asio::io_context* host) {
    return std::make_unique<asio_backend>(core, host);
}

}  // namespace hop::detail
