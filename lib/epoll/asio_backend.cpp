// The readiness backend, built on standalone Asio's io_context (epoll on
// Linux). hop's own work runs inside one "drain" handler at a time, so it
// stays single-threaded even when a host runs the context on several
// threads. Timers are hop's heap behind one asio::steady_timer armed at the
// earliest deadline.

#include "../loop_core.hpp"
#include "../spin.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <system_error>

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
        // Readiness waits still registered: deregister each (its handler, if
        // the context ever runs it, is told to do nothing) and end it
        // cancelled, so the coroutine waiting on it unwinds and is freed.
        while (m_waits) {
            fd_wait_operation* op = m_waits;
            auto& w = wait_of(*op);
            {
                std::lock_guard lock(w.ctrl->mutex);
                w.ctrl->abandoned = true;
            }
            finish_wait(*op, -ECANCELED);
        }
    }

    // ---- readiness waits ----------------------------------------------------

    // Shared by a wait and its Asio handler, which may run on any host thread
    // (or never, if the context is destroyed first).
    struct wait_ctrl {
        std::mutex mutex;
        bool abandoned = false;
        int result = 0;
        fd_wait_operation* op = nullptr;
        asio_backend* backend = nullptr;
        asio::posix::stream_descriptor desc;
        struct done_item : work_item {
            wait_ctrl* ctrl = nullptr;
        } done;
        explicit wait_ctrl(asio::io_context& ctx, int fd) : desc(ctx, fd) {}
    };
    struct epoll_wait {
        std::shared_ptr<wait_ctrl> ctrl;
    };
    static_assert(sizeof(epoll_wait) <= sizeof(fd_wait_operation::backend_storage));
    static epoll_wait& wait_of(fd_wait_operation& op) noexcept {
        return *std::launder(reinterpret_cast<epoll_wait*>(op.backend_storage));
    }

    void start_fd_wait(fd_wait_operation& op) noexcept override {
        std::shared_ptr<wait_ctrl> ctrl;
        try {
            ctrl = std::make_shared<wait_ctrl>(m_ctx, op.fd());
        } catch (const std::system_error& e) {
            op.complete(-e.code().value());
            return;
        } catch (...) {
            op.complete(-ENOMEM);
            return;
        }
        ctrl->op = &op;
        ctrl->backend = this;
        ctrl->done.ctrl = ctrl.get();
        ctrl->done.run = [](work_item* w) noexcept {
            auto* c = static_cast<wait_ctrl::done_item*>(w)->ctrl;
            c->backend->finish_wait(*c->op, c->result);
        };
        ::new (static_cast<void*>(op.backend_storage)) epoll_wait{ctrl};
        // Link first: the handler may run on another host thread at once.
        op.prev_in_flight = nullptr;
        op.next_in_flight = m_waits;
        if (m_waits) m_waits->prev_in_flight = &op;
        m_waits = &op;
        const auto type = (op.events() & POLLIN) ? asio::posix::stream_descriptor::wait_read
                                                 : asio::posix::stream_descriptor::wait_write;
        try {
            ctrl->desc.async_wait(type, [ctrl](const std::error_code& ec) {
                std::lock_guard lock(ctrl->mutex);
                if (ctrl->abandoned) return;
                ctrl->result = !ec ? ((ctrl->op->events() & POLLIN) ? POLLIN : POLLOUT)
                               : ec == asio::error::operation_aborted ? -ECANCELED
                                                                      : -ec.value();
                // Back to hop's serialised drain (under the mutex: a loop being
                // destroyed abandons the wait under it first).
                ctrl->backend->m_core.post(&ctrl->done);
            });
        } catch (...) {
            finish_wait(op, -ENOMEM);
        }
    }

    void cancel_fd_wait(fd_wait_operation& op) noexcept override {
        // Deregistration: the handler then runs with operation_aborted (or
        // with readiness, if that was already queued) and ends the wait.
        std::error_code ignored;
        wait_of(op).ctrl->desc.cancel(ignored);
    }

    // Loop thread: unlink, deregister without closing the caller's fd, resume.
    void finish_wait(fd_wait_operation& op, int result) noexcept {
        if (op.prev_in_flight) {
            op.prev_in_flight->next_in_flight = op.next_in_flight;
        } else {
            m_waits = op.next_in_flight;
        }
        if (op.next_in_flight) op.next_in_flight->prev_in_flight = op.prev_in_flight;
        op.next_in_flight = op.prev_in_flight = nullptr;
        auto& w = wait_of(op);
        {
            std::error_code ignored;
            w.ctrl->desc.cancel(ignored);
            (void)w.ctrl->desc.release();
        }
        w.~epoll_wait();
        op.complete(result);
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
                if (m_hosted || !spin_until([&] { return m_core.has_remote_work(); },
                                            std::chrono::microseconds(10))) {
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
    fd_wait_operation* m_waits = nullptr;  // readiness waits in flight (loop thread)
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
