// The loop's deadline service that every HTTP timeout runs on
// (lib/http/deadlines.hpp): order, disarm, re-arm from expired(), arms from
// other threads that must wake a sleeping service, the loop's closing, and
// a disarm that waits out an expired() running on the loop.

#include "lib/http/deadlines.hpp"

#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include "support/backend.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using steady = hop::http::detail::clock;
using hop::http::detail::deadline;
using hop::http::detail::deadline_queue;
using hop::http::detail::deadline_service;
using hop_test::for_each_backend;
using hop_test::running_loop;

namespace {

constexpr auto guard = hop_test::scaled(30s);

hop::task<std::shared_ptr<deadline_service>> service_task() {
    co_return deadline_service::of(hop::this_thread_loop());
}

std::shared_ptr<deadline_service> service_of(running_loop& rl) {
    auto f = rl.loop().spawn(service_task());
    REQUIRE(f.wait_for(guard));
    auto s = f.get();
    REQUIRE(s != nullptr);
    return s;
}

// Records its expiries; tells the test through a std::promise when it has
// fired `expect` times.
struct recorder final : deadline {
    int id = 0;
    std::mutex* mutex = nullptr;
    std::vector<int>* order = nullptr;
    std::atomic<int> fired{0};
    std::atomic<int> closing{0};
    std::atomic<bool> off_loop{false};
    std::thread::id loop_thread;
    int expect = 1;
    std::promise<void> done;

    void expired(bool loop_closing) noexcept override {
        if (std::this_thread::get_id() != loop_thread) off_loop = true;
        if (loop_closing) {
            if (closing.fetch_add(1) == 0) done.set_value();
            return;
        }
        if (order) {
            std::lock_guard lock(*mutex);
            order->push_back(id);
        }
        if (fired.fetch_add(1) + 1 == expect) done.set_value();
    }
};

bool wait(std::promise<void>& p) { return p.get_future().wait_for(guard) == std::future_status::ready; }

}  // namespace

TEST_CASE("deadlines: one service per loop, firing in deadline order across queues on the loop's thread") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        running_loop other(b);
        auto s = service_of(rl);
        CHECK(service_of(rl) == s);
        CHECK(service_of(other) != s);
        deadline_queue slow(s, 1h);
        deadline_queue fast(s, 1ms);
        std::mutex m;
        std::vector<int> order;
        recorder r1, r2, r3;
        for (auto* r : {&r1, &r2, &r3}) {
            r->mutex = &m;
            r->order = &order;
            r->loop_thread = rl.thread_id();
        }
        r1.id = 1;
        r2.id = 2;
        r3.id = 3;
        const auto now = steady::now();
        slow.arm_at(r3, now + 30ms);
        fast.arm_at(r1, now + 10ms);
        slow.arm_at(r2, now + 20ms);
        REQUIRE(wait(r3.done));
        std::lock_guard lock(m);
        CHECK(order == std::vector<int>{1, 2, 3});
        CHECK(!r1.off_loop);
        CHECK(!r1.armed());
        CHECK(!r3.armed());
    });
}

TEST_CASE("deadlines: a disarmed entry leaves its queue; arm() with a timeout of 0 disarms") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto s = service_of(rl);
        deadline_queue q(s, 1h);
        deadline_queue off(s, 0ms);
        recorder x, y;
        q.arm(x);
        q.arm(y);
        {
            auto lock = s->lock();
            CHECK(q.front_locked() == &x);
            CHECK(deadline_queue::after_locked(x) == &y);
        }
        deadline_queue::disarm(x);
        CHECK(!x.armed());
        {
            auto lock = s->lock();
            CHECK(q.front_locked() == &y);
        }
        off.arm(y);  // that timeout is off: y is no longer armed anywhere
        CHECK(!y.armed());
        {
            auto lock = s->lock();
            CHECK(q.front_locked() == nullptr);
        }
        CHECK(x.fired == 0);
        CHECK(y.fired == 0);
    });
}

namespace {
// Re-arms itself from expired() until it has fired `expect` times (a read
// timeout that saw progress does this).
struct rearming final : deadline {
    deadline_queue* queue = nullptr;
    std::atomic<int> fired{0};
    int expect = 3;
    std::promise<void> done;
    void expired(bool loop_closing) noexcept override {
        if (loop_closing) return;
        if (fired.fetch_add(1) + 1 < expect) {
            queue->arm(*this);
        } else {
            done.set_value();
        }
    }
};
}  // namespace

TEST_CASE("deadlines: an entry armed again from its expired() fires again") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto s = service_of(rl);
        deadline_queue q(s, 1ms);
        rearming r;
        r.queue = &q;
        q.arm(r);
        REQUIRE(wait(r.done));
        CHECK(r.fired == 3);
        CHECK(!r.armed());
    });
}

TEST_CASE("deadlines: an entry armed from another thread before the one the service sleeps for wakes it") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto s = service_of(rl);
        deadline_queue q(s, 1h);
        recorder far, near;
        far.loop_thread = near.loop_thread = rl.thread_id();
        q.arm(far);  // the service sleeps for an hour
        // Once it sleeps (or before: either way it must fire in time).
        std::this_thread::yield();
        q.arm_at(near, steady::now());
        REQUIRE(wait(near.done));  // a service that was not woken sleeps for an hour
        CHECK(near.fired == 1);
        CHECK(far.fired == 0);
        CHECK(!near.off_loop);
        deadline_queue::disarm(far);
    });
}

TEST_CASE("deadlines: when the loop is destroyed every armed entry is told once, the never-expiring ones too") {
    for_each_backend([](hop::backend b) {
        std::optional<running_loop> rl(std::in_place, b);
        auto s = service_of(*rl);
        deadline_queue q(s, 1h);
        recorder hour, never, disarmed;
        hour.loop_thread = never.loop_thread = disarmed.loop_thread = rl->thread_id();
        q.arm(hour);
        q.arm_at(never, steady::time_point::max());
        q.arm(disarmed);
        deadline_queue::disarm(disarmed);
        rl.reset();  // stops, joins, destroys the loop
        CHECK(wait(hour.done));
        CHECK(wait(never.done));
        CHECK(hour.closing == 1);
        CHECK(never.closing == 1);
        CHECK(hour.fired == 0);
        CHECK(disarmed.closing == 0);
        CHECK(!hour.armed());
        CHECK(!never.armed());
    });
}

namespace {
// Its expired() holds the loop until the test thread is about to disarm
// it, then does a little more work before it returns.
struct slow_expiry final : deadline {
    std::atomic<bool> started{false};
    std::atomic<bool> disarming{false};
    std::atomic<bool> finished{false};
    void expired(bool loop_closing) noexcept override {
        if (loop_closing) return;
        started = true;
        while (!disarming) std::this_thread::yield();
        for (int i = 0; i < 1000; ++i) std::this_thread::yield();
        finished = true;
    }
};
}  // namespace

TEST_CASE("deadlines: a disarm on another thread returns only once the entry's running expired() has") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto s = service_of(rl);
        deadline_queue q(s, 1ms);
        slow_expiry e;
        q.arm(e);
        const auto give_up = steady::now() + guard;
        while (!e.started && steady::now() < give_up) std::this_thread::yield();
        REQUIRE(e.started);
        e.disarming = true;
        deadline_queue::disarm(e);
        // The owner may free the entry now: its expired() must be over.
        CHECK(e.finished);
    });
}
