// The readiness backend, built on standalone Asio's io_context (epoll on
// Linux). hop's own work runs inside one "drain" handler at a time, so it
// stays single-threaded even when a host runs the context on several
// threads. Timers are hop's heap behind one asio::steady_timer armed at the
// earliest deadline.

#include "../loop_core.hpp"

#include <asio/executor_work_guard.hpp>
#include <asio/io_context.hpp>
#include <asio/post.hpp>
#include <asio/steady_timer.hpp>

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <mutex>
#include <optional>

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

    std::size_t run() override {
        if (m_core.stopped()) return 0;
        auto guard = asio::make_work_guard(m_ctx);
        if (m_ctx.stopped()) m_ctx.restart();
        return m_ctx.run();
    }

    std::size_t run_once() override {
        if (m_core.stopped()) return 0;
        auto guard = asio::make_work_guard(m_ctx);
        if (m_ctx.stopped()) m_ctx.restart();
        return m_ctx.run_one();
    }

    std::size_t poll() override {
        if (m_event_fd >= 0) {
            eventfd_t v;
            (void)::eventfd_read(m_event_fd, &v);
            std::uint64_t expirations;
            (void)::read(m_timer_fd, &expirations, sizeof expirations);
            epoll_event ev[8];
            while (::epoll_wait(m_epoll_fd, ev, 8, 0) > 0) {
            }
        }
        if (m_ctx.stopped()) m_ctx.restart();
        return m_ctx.poll();
    }

    void wake() noexcept override {
        if (m_core.stopped()) {
            m_ctx.stop();
            signal_native();
            return;
        }
        schedule_drain();
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
    }

private:
    void schedule_drain() noexcept {
        if (m_drain_scheduled.exchange(true, std::memory_order_seq_cst)) return;
        try {
            asio::post(m_ctx, [s = m_shared] {
                std::unique_lock lock(s->mutex);
                if (auto* self = s->self) {
                    lock.unlock();
                    self->drain();
                }
            });
        } catch (...) {
            m_drain_scheduled.store(false, std::memory_order_seq_cst);
        }
        signal_native();
    }

    void drain() {
        {
            loop_core::running_scope scope(m_core);
            m_core.run_ready();
            update_timer();
        }
        // Cleared only now (it stayed set during the drain, so no second
        // drain could start on another host thread), then re-checked so a
        // post that saw it still set is not lost.
        m_drain_scheduled.store(false, std::memory_order_seq_cst);
        if (m_core.has_remote_work() || m_core.has_local_work()) schedule_drain();
    }

    void update_timer() {
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
        m_timer.async_wait([s = m_shared, when = *d](const std::error_code& ec) {
            if (ec) return;
            std::unique_lock lock(s->mutex);
            if (auto* self = s->self) {
                lock.unlock();
                self->on_timer(when);
            }
        });
        arm_native_timer();
    }

    void on_timer(loop_clock::time_point when) {
        if (m_armed == when) m_armed.reset();
        m_deadline_dirty = true;
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
    std::unique_ptr<asio::io_context> m_owned;
    asio::io_context& m_ctx;
    asio::steady_timer m_timer;
    std::shared_ptr<shared> m_shared;
    bool m_hosted;
    std::atomic<bool> m_drain_scheduled{false};
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
