#include <hop/future.hpp>
#include <hop/combinators.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/task.hpp>
#include <hop/task_group.hpp>

#include "support/counted.hpp"
#include "support/counting_new.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <latch>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace {

using hop_test::counted;
using hop_test::counters;
using namespace std::chrono_literals;

struct test_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

// Long enough never to expire in a passing run; the waits it bounds end as
// soon as another thread completes the future.
constexpr auto long_timeout = std::chrono::hours(1);

// A failure guard only: every wait it bounds is released by the test
// itself; it turns a lost resumption into a failed check, not a hung run.
constexpr auto guard = hop_test::scaled(std::chrono::seconds(30));

hop::task<int> await_value(hop::future<int> f) { co_return co_await f; }

struct await_report {
    int value = 0;
    std::thread::id resumed_on;
};

hop::task<await_report> await_and_report(hop::future<int> f) {
    await_report r;
    r.value = co_await f;
    r.resumed_on = std::this_thread::get_id();
    co_return r;
}

hop::task<std::unique_ptr<int>> await_moved(hop::future<std::unique_ptr<int>> f) {
    co_return co_await std::move(f);
}

hop::task<std::unique_ptr<int>> await_lvalue_move_only(hop::future<std::unique_ptr<int>> f) {
    co_return co_await f;  // cannot copy the value out: throws std::logic_error
}

hop::task<> await_void(hop::future<void> f) { co_await f; }

hop::task<int> await_twice(hop::future<int> f) {
    int a = co_await f;
    int b = co_await f;
    co_return a + b;
}

hop::task<int> await_default() {
    hop::future<int> f;
    co_return co_await f;
}

hop::task<int> await_loop(hop::future<int> f, int n) {
    int sum = 0;
    for (int i = 0; i < n; ++i) sum += co_await f;
    co_return sum;
}

// Signals it started, waits for `go`, then reaches a cancellation point.
hop::task<int> runs_until_point(hop::future<void> go, hop::promise<void> started, std::atomic<int>* progress) {
    progress->store(1);
    started.set_value();
    go.wait();  // blocks the worker: not a cancellation point (co_await go is one)
    progress->store(2);
    co_await hop::cancellation_point();
    progress->store(3);
    co_return 1;
}

// As above, with pool.schedule() as the cancellation point.
hop::task<int> runs_until_schedule(hop::cpu_pool* pool, hop::future<void> go, hop::promise<void> started,
                                   std::atomic<int>* progress) {
    started.set_value();
    go.wait();  // blocks the worker: not a cancellation point (co_await go is one)
    progress->store(2);
    co_await pool->schedule();
    progress->store(3);
    co_return 1;
}

hop::task<int> body_flag(counted c, std::atomic<bool>* ran) {
    (void)c;
    ran->store(true);
    co_return 1;
}

hop::task<int> ignores_stop(hop::future<void> go, hop::promise<void> started) {
    started.set_value();
    go.wait();  // blocks the worker: not a cancellation point (co_await go is one)
    co_return 9;
}

hop::task<int> point_then_value(counted c, int v) {
    (void)c;
    co_await hop::cancellation_point();
    co_return v;
}

// Waits for `in`, then completes `out`: a link in a chain of completions.
hop::task<int> relay(hop::future<int> in, hop::promise<int> out) {
    int v = co_await in;
    out.set_value(v + 1);
    co_return v;
}

void set_promise(hop::promise<int> p, int v) { p.set_value(v); }

int blocked_job(hop::future<void> gate) {
    gate.wait();
    return 0;
}

int job_waits(hop::promise<void> started, hop::future<void> go, int v) {
    started.set_value();
    go.wait();
    return v;
}

// Reports where it resumed after a co_await that a stop ended.
struct cancel_report {
    bool cancelled = false;
    std::thread::id resumed_on;
};
hop::task<cancel_report> await_reporting_cancel(hop::future<int> f) {
    cancel_report r;
    try {
        (void)co_await f;
    } catch (const hop::cancelled_error&) {
        r.cancelled = true;
    }
    r.resumed_on = std::this_thread::get_id();
    co_return r;
}

hop::task<int> await_shielded(hop::future<int> f) { co_return co_await hop::shield(std::move(f)); }

hop::task<int> await_ignoring_stop(hop::future<int> f) {
    co_return co_await std::move(f).await_with(hop::detail::stop_policy::ignore);
}

// Blocks its worker until `go` (not a cancellation point), then awaits `f`:
// its stop is requested before the await starts.
hop::task<int> block_then_await(hop::future<void> go, hop::promise<void> started, hop::future<int> f) {
    started.set_value();
    go.wait();
    co_return co_await f;
}

// A coroutine job: records whether its stop was requested once `go` opens.
hop::task<int> records_stop(hop::future<void> go, hop::promise<void> started, std::atomic<bool>* saw_stop) {
    std::stop_token t = co_await hop::get_stop_token();
    started.set_value();
    go.wait();
    saw_stop->store(t.stop_requested());
    co_return 1;
}

// Heap allocations made on this thread by one co_await of a pending future
// (completed by another thread once `armed` is set).
hop::task<std::size_t> allocations_of_await(hop::future<int> f, std::atomic<bool>* armed) {
    const std::size_t before = hop_test::allocations_on_this_thread;
    armed->store(true);
    (void)co_await f;
    co_return hop_test::allocations_on_this_thread - before;
}

// As allocations_of_await, once the task's stop token exists: a group
// child's token is made on first ask (here, before counting), and the await
// then registers a stop callback on it without allocating.
hop::task<std::size_t> allocations_of_await_with_token(hop::future<int> f, std::atomic<bool>* armed) {
    const std::stop_token token = co_await hop::get_stop_token();
    REQUIRE(token.stop_possible());
    co_return co_await allocations_of_await(std::move(f), armed);
}

// The same, in a task_group child (it has a stop token of its own) run on
// the calling thread's executor (sync_wait's loop): only this thread runs it.
hop::task<std::size_t> allocations_of_await_with_stop(hop::future<int> f, std::atomic<bool>* armed) {
    hop::task_group g;
    auto child = g.spawn(allocations_of_await_with_token(std::move(f), armed));
    co_await g.wait();
    co_return child.get();
}

std::thread::id worker_id(hop::cpu_pool& pool) {
    return pool.submit([] { return std::this_thread::get_id(); }).get();
}

// Says it is about to await, then awaits `f` (co_await: the cancel policy).
hop::task<int> arm_then_await(std::atomic<bool>* armed, hop::future<int> f) {
    armed->store(true, std::memory_order_release);
    co_return co_await f;
}

}  // namespace

TEST_SUITE("future") {

TEST_CASE("promise set_value, then get") {
    hop::promise<int> p;
    auto f = p.get_future();
    CHECK(f.valid());
    CHECK_FALSE(f.done());
    p.set_value(5);
    CHECK(f.done());
    CHECK_FALSE(f.cancelled());
    CHECK_FALSE(f.running());
    CHECK(f.get() == 5);
    CHECK(f.get() == 5);  // get() on an lvalue does not consume
    CHECK_FALSE(p.is_cancelled());
}

TEST_CASE("promise set_exception, then get rethrows") {
    hop::promise<int> p;
    auto f = p.get_future();
    p.set_exception(std::make_exception_ptr(test_error("bad")));
    CHECK(f.done());
    CHECK_FALSE(f.cancelled());
    CHECK_THROWS_WITH_AS(f.get(), "bad", test_error);
    CHECK_THROWS_AS(f.get(), test_error);
    CHECK_THROWS_AS(std::move(f).get(), test_error);
}

TEST_CASE("setting a result twice throws std::logic_error") {
    SUBCASE("value, value") {
        hop::promise<int> p;
        auto f = p.get_future();
        p.set_value(1);
        CHECK_THROWS_AS(p.set_value(2), std::logic_error);
        CHECK(f.get() == 1);
    }
    SUBCASE("value, exception") {
        hop::promise<int> p;
        auto f = p.get_future();
        p.set_value(1);
        CHECK_THROWS_AS(p.set_exception(std::make_exception_ptr(test_error("x"))), std::logic_error);
        CHECK(f.get() == 1);
    }
    SUBCASE("exception, value") {
        hop::promise<int> p;
        auto f = p.get_future();
        p.set_exception(std::make_exception_ptr(test_error("x")));
        CHECK_THROWS_AS(p.set_value(1), std::logic_error);
        CHECK_THROWS_AS(f.get(), test_error);
    }
    SUBCASE("void") {
        hop::promise<void> p;
        p.set_value();
        CHECK_THROWS_AS(p.set_value(), std::logic_error);
    }
    SUBCASE("without ever taking the future") {
        hop::promise<int> p;
        p.set_value(1);
        CHECK_THROWS_AS(p.set_value(1), std::logic_error);
    }
}

TEST_CASE("set_exception(nullptr) throws std::invalid_argument and leaves the promise usable") {
    hop::promise<int> p;
    auto f = p.get_future();
    CHECK_THROWS_AS(p.set_exception(nullptr), std::invalid_argument);
    CHECK_THROWS_AS(p.set_exception(std::exception_ptr{}), std::invalid_argument);
    CHECK_FALSE(f.done());
    p.set_value(3);
    CHECK(f.get() == 3);
}

TEST_CASE("get_future twice throws std::logic_error") {
    hop::promise<int> p;
    auto f = p.get_future();
    CHECK_THROWS_AS(p.get_future(), std::logic_error);
    p.set_value(1);
    CHECK(f.get() == 1);
}

TEST_CASE("a moved-from promise throws std::logic_error") {
    hop::promise<int> p;
    auto f = p.get_future();
    hop::promise<int> q = std::move(p);
    CHECK_THROWS_AS(p.set_value(1), std::logic_error);  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS_AS(p.get_future(), std::logic_error);
    CHECK_THROWS_AS(p.is_cancelled(), std::logic_error);
    q.set_value(2);
    CHECK(f.get() == 2);
}

TEST_CASE("a promise destroyed without a result breaks its future") {
    hop::future<int> f;
    {
        hop::promise<int> p;
        f = p.get_future();
        CHECK_FALSE(f.done());
    }
    CHECK(f.done());
    CHECK_FALSE(f.cancelled());
    CHECK_THROWS_AS(f.get(), hop::broken_promise_error);
    CHECK_THROWS_AS(f.get(), std::logic_error);  // broken_promise_error is a logic_error

    SUBCASE("move-assigning over a promise breaks its old future") {
        hop::promise<int> a;
        auto fa = a.get_future();
        hop::promise<int> b;
        auto fb = b.get_future();
        a = std::move(b);
        CHECK_THROWS_AS(fa.get(), hop::broken_promise_error);
        a.set_value(4);
        CHECK(fb.get() == 4);
    }
    SUBCASE("a promise destroyed after setting keeps the result") {
        hop::future<int> g;
        {
            hop::promise<int> p;
            g = p.get_future();
            p.set_value(8);
        }
        CHECK(g.get() == 8);
    }
    SUBCASE("waiters of a broken promise are woken") {
        auto* p = new hop::promise<int>;
        auto g = p->get_future();
        std::atomic<int> calls{0};
        g.on_done([&calls](const hop::future<int>& d) {
            CHECK_THROWS_AS(d.get(), hop::broken_promise_error);
            ++calls;
        });
        std::thread t([p] { delete p; });
        CHECK_THROWS_AS(hop::sync_wait(g), hop::broken_promise_error);
        t.join();
        CHECK(calls.load() == 1);
    }
}

TEST_CASE("a default future is invalid and every call throws std::logic_error") {
    hop::future<int> f;
    CHECK_FALSE(f.valid());
    CHECK_THROWS_AS(f.done(), std::logic_error);
    CHECK_THROWS_AS(f.cancelled(), std::logic_error);
    CHECK_THROWS_AS(f.running(), std::logic_error);
    CHECK_THROWS_AS(f.cancel(), std::logic_error);
    CHECK_THROWS_AS(f.wait(), std::logic_error);
    CHECK_THROWS_AS(f.wait_for(0s), std::logic_error);
    CHECK_THROWS_AS(f.wait_for(-1s), std::logic_error);
    CHECK_THROWS_AS(f.get(), std::logic_error);
    CHECK_THROWS_AS(std::move(f).get(), std::logic_error);
    int calls = 0;
    CHECK_THROWS_AS(f.on_done([&calls](const hop::future<int>&) { ++calls; }), std::logic_error);
    CHECK(calls == 0);
    CHECK_THROWS_AS(hop::sync_wait(f), std::logic_error);
    CHECK_THROWS_AS(hop::sync_wait(await_default()), std::logic_error);

    hop::future<void> v;
    CHECK_FALSE(v.valid());
    CHECK_THROWS_AS(v.get(), std::logic_error);
    CHECK_THROWS_AS(v.wait(), std::logic_error);
    CHECK_THROWS_AS(hop::sync_wait(v), std::logic_error);

    // A moved-from future is invalid too.
    hop::promise<int> p;
    auto g = p.get_future();
    auto h = std::move(g);
    CHECK_FALSE(g.valid());  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS_AS(g.get(), std::logic_error);
    CHECK(h.valid());
}

TEST_CASE("copies share the result") {
    hop::promise<std::string> p;
    auto f = p.get_future();
    auto copy = f;
    hop::future<std::string> assigned;
    assigned = copy;
    CHECK_FALSE(copy.done());
    p.set_value("shared");
    CHECK(f.done());
    CHECK(copy.done());
    CHECK(assigned.done());
    CHECK(f.get() == "shared");
    CHECK(copy.get() == "shared");
    CHECK(assigned.get() == "shared");
    CHECK(&f.get() == &copy.get());  // one value, not copies
    // With other handles alive, get() && copies rather than moves.
    CHECK(std::move(assigned).get() == "shared");
    CHECK(f.get() == "shared");

    hop::promise<int> q;
    auto g = q.get_future();
    auto g2 = g;
    CHECK(g.cancel());
    CHECK(g2.cancelled());
}

TEST_CASE("done, cancelled and running states") {
    SUBCASE("promise future") {
        hop::promise<int> p;
        auto f = p.get_future();
        CHECK_FALSE(f.done());
        CHECK_FALSE(f.cancelled());
        CHECK_FALSE(f.running());
        p.set_value(1);
        CHECK(f.done());
        CHECK_FALSE(f.cancelled());
        CHECK_FALSE(f.running());
    }
    SUBCASE("pool job: pending, running, finished") {
        hop::cpu_pool pool{1};
        hop::promise<void> gate;
        auto blocker = pool.submit(blocked_job, gate.get_future());
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<void> go;
        auto f = pool.submit(job_waits, std::move(started), go.get_future(), 6);
        CHECK_FALSE(f.running());  // queued behind the blocker
        CHECK_FALSE(f.done());
        gate.set_value();
        started_f.wait();
        CHECK(f.running());
        CHECK_FALSE(f.done());
        CHECK_FALSE(f.cancelled());
        go.set_value();
        CHECK(f.get() == 6);
        CHECK_FALSE(f.running());
        CHECK(f.done());
        CHECK_FALSE(f.cancelled());
        CHECK(blocker.get() == 0);
    }
    SUBCASE("spawned coroutine: running while it runs") {
        hop::cpu_pool pool{1};
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<void> go;
        auto f = hop::spawn(pool, ignores_stop(go.get_future(), std::move(started)));
        started_f.wait();
        CHECK(f.running());
        go.set_value();
        CHECK(f.get() == 9);
        CHECK_FALSE(f.running());
    }
}

TEST_CASE("cancel() on a pending promise future") {
    hop::promise<int> p;
    auto f = p.get_future();
    CHECK(f.cancel());
    CHECK(f.cancelled());
    CHECK(f.done());
    CHECK_FALSE(f.running());
    CHECK(p.is_cancelled());
    CHECK_THROWS_AS(f.get(), hop::cancelled_error);
    CHECK_THROWS_AS(std::move(f).get(), hop::cancelled_error);

    SUBCASE("a result set after cancel is dropped silently") {
        p.set_value(1);
        p.set_exception(std::make_exception_ptr(test_error("late")));
        p.set_value(2);
        CHECK(f.cancelled());
    }
    SUBCASE("cancel twice is true") {
        CHECK(f.cancel());
        CHECK(f.cancelled());
    }
    SUBCASE("destroying the promise keeps it cancelled") {
        { auto dropped = std::move(p); }
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
    }
}

TEST_CASE("cancel() on a finished future is false") {
    hop::promise<int> p;
    auto f = p.get_future();
    p.set_value(3);
    CHECK_FALSE(f.cancel());
    CHECK_FALSE(f.cancelled());
    CHECK(f.get() == 3);

    hop::promise<int> q;
    auto g = q.get_future();
    q.set_exception(std::make_exception_ptr(test_error("e")));
    CHECK_FALSE(g.cancel());
    CHECK_THROWS_AS(g.get(), test_error);
}

TEST_CASE("wait() returns once another thread completes the future") {
    hop::promise<int> p;
    auto f = p.get_future();
    std::thread t([&p] { p.set_value(12); });
    f.wait();
    CHECK(f.done());
    CHECK(f.get() == 12);
    t.join();
    f.wait();  // already done: returns at once
}

TEST_CASE("wait_for") {
    hop::promise<int> p;
    auto f = p.get_future();
    CHECK_THROWS_AS(f.wait_for(-1ns), std::invalid_argument);
    CHECK_THROWS_AS(f.wait_for(std::chrono::seconds(-5)), std::invalid_argument);
    CHECK_THROWS_WITH(f.wait_for(-1ms), doctest::Contains("-1000000"));  // names the bad value
    CHECK_FALSE(f.wait_for(0s));
    CHECK_FALSE(f.wait_for(1ns));
    CHECK_FALSE(f.done());

    SUBCASE("completed by another thread") {
        std::thread t([&p] { p.set_value(4); });
        CHECK(f.wait_for(long_timeout));
        CHECK(f.done());
        t.join();
        CHECK(f.get() == 4);
    }
    SUBCASE("an unbounded timeout waits for the result") {
        // nanoseconds::max() and hours::max() must mean "no deadline", not
        // overflow into the past and return false at once.
        std::thread t([&p] { p.set_value(5); });
        CHECK(f.wait_for(std::chrono::nanoseconds::max()));
        CHECK(f.wait_for(std::chrono::hours::max()));
        t.join();
        CHECK(f.get() == 5);

        hop::promise<int> q;
        auto g = q.get_future();
        std::thread u([&q] { q.set_value(6); });
        CHECK(g.wait_for(std::chrono::hours::max()));
        u.join();
    }
    SUBCASE("done: true even with a zero timeout") {
        p.set_value(1);
        CHECK(f.wait_for(0s));
        CHECK(f.wait_for(-0s));
    }
    SUBCASE("cancelled counts as done") {
        f.cancel();
        CHECK(f.wait_for(0s));
    }
    SUBCASE("polling with short timeouts until another thread completes it") {
        std::thread t([&p] { p.set_value(7); });
        int polls = 0;
        while (!f.wait_for(20us)) ++polls;
        CHECK(f.get() == 7);
        t.join();
        CHECK(polls >= 0);
    }
}

TEST_CASE("on_done is called exactly once") {
    SUBCASE("already done: at once, on this thread") {
        hop::promise<int> p;
        auto f = p.get_future();
        p.set_value(2);
        int calls = 0;
        std::thread::id on;
        f.on_done([&](const hop::future<int>& d) {
            ++calls;
            on = std::this_thread::get_id();
            CHECK(d.done());
            CHECK(d.get() == 2);
        });
        CHECK(calls == 1);  // before on_done returned
        CHECK(on == std::this_thread::get_id());
    }
    SUBCASE("pending: on the completing thread") {
        hop::promise<int> p;
        auto f = p.get_future();
        std::atomic<int> calls{0};
        std::thread::id on;
        int seen = 0;
        f.on_done([&](const hop::future<int>& d) {
            ++calls;
            on = std::this_thread::get_id();
            seen = d.get();
        });
        CHECK(calls.load() == 0);
        std::thread::id setter_id;
        std::thread t([&] {
            setter_id = std::this_thread::get_id();
            p.set_value(3);
        });
        t.join();
        CHECK(calls.load() == 1);
        CHECK(on == setter_id);
        CHECK(seen == 3);
    }
    SUBCASE("several callbacks run in registration order, on cancel too") {
        hop::promise<int> p;
        auto f = p.get_future();
        std::vector<int> order;
        for (int i = 0; i < 5; ++i) {
            f.on_done([&order, i](const hop::future<int>& d) {
                CHECK(d.cancelled());
                order.push_back(i);
            });
        }
        CHECK(order.empty());
        f.cancel();
        CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
        f.cancel();
        p.set_value(1);
        CHECK(order.size() == 5);
    }
    SUBCASE("a callback that registers another one on the same future") {
        hop::promise<int> p;
        auto f = p.get_future();
        std::vector<int> order;
        f.on_done([&order](const hop::future<int>& d) {
            order.push_back(1);
            d.on_done([&order](const hop::future<int>&) { order.push_back(2); });  // done: runs at once
            order.push_back(3);
        });
        p.set_value(1);
        CHECK(order == std::vector<int>{1, 2, 3});
    }
    SUBCASE("the callback and its captures are destroyed exactly once") {
        counters c;
        {
            hop::promise<int> p;
            auto f = p.get_future();
            counted token{c};
            f.on_done([token](const hop::future<int>&) { (void)token; });
            auto cb = [token](const hop::future<int>&) { (void)token; };
            f.on_done(cb);  // an lvalue callable is copied
            p.set_value(1);
            f.on_done([token](const hop::future<int>&) { (void)token; });
        }
        CHECK(c.alive() == 0);
    }
    SUBCASE("a pending callback holds the future's state alive") {
        counters c;
        std::atomic<int> calls{0};
        hop::promise<counted> p;
        p.get_future().on_done([&calls](const hop::future<counted>& d) {
            CHECK(d.done());
            ++calls;
        });
        p.set_value(counted{c});
        CHECK(calls.load() == 1);
        p = hop::promise<counted>{};
        CHECK(c.alive() == 0);
    }
}

TEST_CASE("co_await a future from sync_wait while another thread completes it") {
    const auto me = std::this_thread::get_id();
    for (int i = 0; i < 20; ++i) {
        hop::promise<int> p;
        auto f = p.get_future();
        std::thread t([&p, i] { p.set_value(i); });
        await_report r = hop::sync_wait(await_and_report(f));
        t.join();
        CHECK(r.value == i);
        CHECK(r.resumed_on == me);  // affinity: back on the sync_wait thread
    }
}

TEST_CASE("co_await a future completed by a pool job resumes on the caller's executor") {
    hop::cpu_pool pool{2};
    const auto me = std::this_thread::get_id();
    hop::promise<void> started;
    auto started_f = started.get_future();
    hop::promise<void> go;
    auto job = pool.submit(job_waits, std::move(started), go.get_future(), 21);
    started_f.wait();
    std::thread t([&go] { go.set_value(); });
    await_report r = hop::sync_wait(await_and_report(job));
    t.join();
    CHECK(r.value == 21);
    CHECK(r.resumed_on == me);
}

TEST_CASE("co_await a future: done, exception, cancelled, twice") {
    hop::promise<int> p;
    auto f = p.get_future();
    p.set_value(10);
    CHECK(hop::sync_wait(await_value(f)) == 10);
    CHECK(hop::sync_wait(await_twice(f)) == 20);
    CHECK(hop::sync_wait(await_loop(f, 100'000)) == 1'000'000);  // ready: no suspension, no stack growth
    CHECK(f.get() == 10);

    hop::promise<int> q;
    auto g = q.get_future();
    q.set_exception(std::make_exception_ptr(test_error("awaited")));
    CHECK_THROWS_WITH_AS(hop::sync_wait(await_value(g)), "awaited", test_error);

    hop::promise<int> r;
    auto h = r.get_future();
    std::thread t([&h] { h.cancel(); });
    CHECK_THROWS_AS(hop::sync_wait(await_value(h)), hop::cancelled_error);
    t.join();
}

TEST_CASE("co_await an rvalue future of a move-only type moves the value out") {
    hop::promise<std::unique_ptr<int>> p;
    auto f = p.get_future();
    auto value = std::make_unique<int>(17);
    int* raw = value.get();
    std::thread t([&p, &value] { p.set_value(std::move(value)); });
    std::unique_ptr<int> out = hop::sync_wait(await_moved(std::move(f)));
    t.join();
    REQUIRE(out);
    CHECK(out.get() == raw);
    CHECK(*out == 17);

    // An lvalue await of a move-only value cannot copy it.
    hop::promise<std::unique_ptr<int>> q;
    auto g = q.get_future();
    q.set_value(std::make_unique<int>(1));
    CHECK_THROWS_AS(hop::sync_wait(await_lvalue_move_only(g)), std::logic_error);
    CHECK(*g.get() == 1);  // still there

    // Moving out needs the only handle: with a copy alive it throws.
    hop::promise<std::unique_ptr<int>> s;
    auto h = s.get_future();
    auto h_copy = h;
    s.set_value(std::make_unique<int>(2));
    CHECK_THROWS_AS(hop::sync_wait(await_moved(std::move(h))), std::logic_error);
    CHECK(*h_copy.get() == 2);
}

TEST_CASE("get() && on the only handle moves the value out") {
    hop::promise<std::unique_ptr<int>> p;
    auto f = p.get_future();
    auto value = std::make_unique<int>(5);
    int* raw = value.get();
    p.set_value(std::move(value));
    std::unique_ptr<int> out = std::move(f).get();
    CHECK(out.get() == raw);

    hop::promise<std::unique_ptr<int>> q;
    auto g = q.get_future();
    auto g_copy = g;
    q.set_value(std::make_unique<int>(6));
    CHECK_THROWS_AS(std::move(g).get(), std::logic_error);
    CHECK(*g_copy.get() == 6);

    // A copyable value with another handle alive is copied, not moved away.
    hop::promise<std::string> s;
    auto a = s.get_future();
    auto b = a;
    s.set_value(std::string(100, 'x'));
    std::string taken = std::move(a).get();
    CHECK(taken == std::string(100, 'x'));
    CHECK(b.get() == std::string(100, 'x'));
}

TEST_CASE("future<void>") {
    hop::promise<void> p;
    auto f = p.get_future();
    CHECK_FALSE(f.done());
    std::thread t([&p] { p.set_value(); });
    hop::sync_wait(await_void(f));
    t.join();
    CHECK(f.done());
    f.get();
    std::move(f).get();

    hop::promise<void> q;
    auto g = q.get_future();
    q.set_exception(std::make_exception_ptr(test_error("void")));
    CHECK_THROWS_AS(g.get(), test_error);
    CHECK_THROWS_AS(hop::sync_wait(await_void(g)), test_error);

    hop::promise<void> r;
    auto h = r.get_future();
    CHECK(h.cancel());
    CHECK_THROWS_AS(h.get(), hop::cancelled_error);
    CHECK_THROWS_AS(hop::sync_wait(h), hop::cancelled_error);

    hop::future<void> broken;
    { hop::promise<void> gone; broken = gone.get_future(); }
    CHECK_THROWS_AS(broken.get(), hop::broken_promise_error);
}

TEST_CASE("submit of a coroutine callable: cancel() before it starts") {
    counters c;
    std::atomic<bool> ran{false};
    {
        hop::cpu_pool pool{1};
        hop::promise<void> gate;
        auto blocker = pool.submit(blocked_job, gate.get_future());
        auto f = pool.submit(body_flag, counted{c}, &ran);
        CHECK_FALSE(f.done());
        CHECK_FALSE(f.running());
        CHECK(f.cancel());
        CHECK(f.cancelled());
        CHECK(f.done());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        gate.set_value();
        CHECK(blocker.get() == 0);
        // Something queued after the cancelled job runs once it was skipped.
        CHECK(pool.submit([] { return 3; }).get() == 3);
    }
    CHECK_FALSE(ran.load());
    CHECK(c.alive() == 0);
}

TEST_CASE("submit of a plain callable: cancel() before it starts") {
    counters c;
    std::atomic<bool> ran{false};
    {
        hop::cpu_pool pool{1};
        hop::promise<void> gate;
        auto blocker = pool.submit(blocked_job, gate.get_future());
        counted token{c};
        auto f = pool.submit([token, &ran] {
            (void)token;
            ran.store(true);
            return 1;
        });
        CHECK(f.cancel());
        CHECK(f.cancelled());
        gate.set_value();
        CHECK(blocker.get() == 0);
    }
    CHECK_FALSE(ran.load());
    CHECK(c.alive() == 0);
}

TEST_CASE("submit of a coroutine callable: cancel() while it runs stops it at its next cancellation point") {
    SUBCASE("co_await hop::cancellation_point()") {
        hop::cpu_pool pool{1};
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<void> go;
        std::atomic<int> progress{0};
        auto f = pool.submit(runs_until_point, go.get_future(), std::move(started), &progress);
        started_f.wait();
        CHECK(f.running());
        CHECK(f.cancel());
        CHECK_FALSE(f.done());  // still running until it reaches the point
        go.set_value();
        f.wait();
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK(progress.load() == 2);
        CHECK(f.cancel());  // already cancelled
    }
    SUBCASE("co_await pool.schedule()") {
        hop::cpu_pool pool{1};
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<void> go;
        std::atomic<int> progress{0};
        auto f = pool.submit(runs_until_schedule, &pool, go.get_future(), std::move(started), &progress);
        started_f.wait();
        CHECK(f.cancel());
        go.set_value();
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK(f.cancelled());
        CHECK(progress.load() == 2);
    }
    SUBCASE("a coroutine that never reaches a cancellation point delivers its value") {
        hop::cpu_pool pool{1};
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<void> go;
        auto f = pool.submit(ignores_stop, go.get_future(), std::move(started));
        started_f.wait();
        CHECK(f.cancel());  // stop requested, see future::cancel()
        go.set_value();
        CHECK(f.get() == 9);
        CHECK_FALSE(f.cancelled());
    }
}

TEST_CASE("cancel() on a running plain job is false and its value is delivered") {
    hop::cpu_pool pool{1};
    hop::promise<void> started;
    auto started_f = started.get_future();
    hop::promise<void> go;
    auto f = pool.submit(job_waits, std::move(started), go.get_future(), 33);
    started_f.wait();
    CHECK(f.running());
    CHECK_FALSE(f.cancel());
    CHECK_FALSE(f.cancelled());
    go.set_value();
    CHECK(f.get() == 33);
    CHECK_FALSE(f.cancel());
    CHECK_FALSE(f.cancelled());
}

TEST_CASE("a long chain of inline future completions does not overflow the stack") {
    // Every relay is suspended on the one pool thread before the first
    // promise is set there, so each completion resumes the next awaiter
    // inline (same executor): only the trampoline bounds the recursion.
    constexpr int n = 20'000;
    hop::cpu_pool pool{1};
    std::vector<hop::future<int>> relays;
    relays.reserve(n);
    hop::promise<int> first;
    hop::future<int> in = first.get_future();
    for (int k = 0; k < n; ++k) {
        hop::promise<int> out;
        auto next = out.get_future();
        relays.push_back(hop::spawn(pool, relay(std::move(in), std::move(out))));
        in = std::move(next);
    }
    pool.submit(set_promise, std::move(first), 0).get();
    CHECK(in.get() == n);
    for (int k = 0; k < n; k += 997) CHECK(relays[static_cast<std::size_t>(k)].get() == k);
}

TEST_CASE("race: cancel against completion") {
    SUBCASE("plain jobs") {
        counters c;
        {
            hop::cpu_pool pool{2};
            for (int i = 0; i < 300; ++i) {
                counted token{c};
                auto f = pool.submit([token, i] {
                    (void)token;
                    return i;
                });
                bool cancelled = f.cancel();
                f.wait();
                CHECK(cancelled == f.cancelled());
                if (!cancelled) CHECK(f.get() == i);
            }
        }
        CHECK(c.alive() == 0);
    }
    SUBCASE("coroutine jobs") {
        counters c;
        {
            hop::cpu_pool pool{2};
            for (int i = 0; i < 300; ++i) {
                auto f = pool.submit(point_then_value, counted{c}, i);
                bool cancelled = f.cancel();
                f.wait();
                if (f.cancelled()) {
                    CHECK(cancelled);
                    CHECK_THROWS_AS(f.get(), hop::cancelled_error);
                } else {
                    CHECK(f.get() == i);
                }
                if (!cancelled) CHECK_FALSE(f.cancelled());
            }
        }
        CHECK(c.alive() == 0);
    }
    SUBCASE("promise set on another thread") {
        hop::cpu_pool pool{2};
        for (int i = 0; i < 300; ++i) {
            hop::promise<int> p;
            auto f = p.get_future();
            auto setter = pool.submit([](hop::promise<int> q, int v) { q.set_value(v); }, std::move(p), i);
            bool cancelled = f.cancel();
            setter.get();  // never throws: a value set after cancel is dropped
            CHECK(f.done());
            CHECK(cancelled == f.cancelled());
            if (!cancelled) CHECK(f.get() == i);
        }
    }
}

TEST_CASE("race: a set_value that meets a cancel() still completing is dropped, not a double set") {
    // begin_complete() + end_complete(cancelled) is what cancel() does; the
    // setter runs in between, while the state is briefly `completing`.
    for (int round = 0; round < 100; ++round) {
        hop::promise<int> p;
        auto f = p.get_future();
        auto* s = f.native_state();
        REQUIRE(s->begin_complete());
        std::atomic<bool> entered{false};
        std::atomic<bool> threw{false};
        std::thread setter([&] {
            entered.store(true);
            try {
                p.set_value(round);
                p.set_exception(std::make_exception_ptr(test_error("late")));
            } catch (const std::logic_error&) {
                threw.store(true);
            }
        });
        while (!entered.load()) std::this_thread::yield();
        for (int k = 0; k < 50 && !threw.load(); ++k) std::this_thread::yield();
        s->end_complete(hop::detail::future_status::cancelled);
        setter.join();
        CHECK_FALSE(threw.load());
        CHECK(f.cancelled());
    }
}

TEST_CASE("race: set_value against cancel() on two threads") {
    for (int round = 0; round < 300; ++round) {
        hop::promise<int> p;
        auto f = p.get_future();
        std::latch ready{2};
        std::atomic<bool> threw{false};
        std::thread setter([&] {
            ready.arrive_and_wait();
            try {
                p.set_value(round);
            } catch (const std::logic_error&) {
                threw.store(true);
            }
        });
        ready.arrive_and_wait();
        bool cancelled = f.cancel();
        setter.join();
        CHECK_FALSE(threw.load());
        CHECK(cancelled == f.cancelled());
        if (!cancelled) CHECK(f.get() == round);
    }
}

TEST_CASE("race: two threads cancel one pending future: both get true") {
    for (int round = 0; round < 300; ++round) {
        hop::promise<int> p;
        auto f = p.get_future();
        std::latch ready{2};
        std::atomic<bool> other{false};
        std::thread t([&] {
            ready.arrive_and_wait();
            other.store(f.cancel());
        });
        ready.arrive_and_wait();
        bool mine = f.cancel();
        t.join();
        CHECK(mine);
        CHECK(other.load());
        CHECK(f.cancelled());
    }
    // The same through the state, deterministically: a cancel() that meets
    // another one still completing waits for it and reports true.
    hop::promise<int> p;
    auto f = p.get_future();
    auto* s = f.native_state();
    REQUIRE(s->begin_complete());
    std::atomic<bool> entered{false};
    std::atomic<int> result{-1};
    std::thread t([&] {
        entered.store(true);
        result.store(f.cancel() ? 1 : 0);
    });
    while (!entered.load()) std::this_thread::yield();
    for (int k = 0; k < 50 && result.load() < 0; ++k) std::this_thread::yield();
    s->end_complete(hop::detail::future_status::cancelled);
    t.join();
    CHECK(result.load() == 1);
}

TEST_CASE("race: many threads get, on_done and co_await one future while another sets it") {
    constexpr int consumers = 3;
    constexpr int rounds = 60;
    for (int round = 0; round < rounds; ++round) {
        hop::promise<int> p;
        auto f = p.get_future();
        std::atomic<int> on_done_calls{0};
        std::atomic<int> good{0};
        std::latch start{consumers + 1};
        std::vector<std::thread> threads;
        for (int k = 0; k < consumers; ++k) {
            threads.emplace_back([&, k] {
                auto mine = f;  // each thread its own handle
                start.arrive_and_wait();
                auto cb = [&on_done_calls, round](const hop::future<int>& d) {
                    if (d.get() == round) ++on_done_calls;
                };
                mine.on_done(cb);
                int got = 0;
                switch (k) {
                    case 0: got = mine.get(); break;
                    case 1: got = hop::sync_wait(mine); break;
                    default:
                        while (!mine.wait_for(10us)) {
                        }
                        got = mine.get();
                        break;
                }
                if (got == round) ++good;
            });
        }
        start.arrive_and_wait();
        p.set_value(round);
        for (auto& t : threads) t.join();
        CHECK(good.load() == consumers);
        CHECK(on_done_calls.load() == consumers);
    }
}

TEST_CASE("race: co_await from many coroutines, completed on a pool") {
    hop::cpu_pool pool{2};
    for (int round = 0; round < 50; ++round) {
        hop::promise<int> p;
        auto f = p.get_future();
        std::vector<hop::future<int>> awaiting;
        for (int k = 0; k < 8; ++k) awaiting.push_back(hop::spawn(pool, await_value(f)));
        auto setter = pool.submit([](hop::promise<int> q, int v) { q.set_value(v); }, std::move(p), round);
        setter.get();
        for (auto& a : awaiting) CHECK(a.get() == round);
    }
}

namespace {
hop::task<int> third_of(hop::future<std::vector<std::unique_ptr<int>>> f) {
    auto v = co_await std::move(f);
    co_return *v.at(2);
}
}  // namespace

TEST_CASE("a container of move-only values is moved out, never copied") {
    // std::vector<std::unique_ptr<int>> claims to be copy constructible; the
    // future must not try to copy it (that would not compile).
    hop::cpu_pool pool{2};
    std::vector<int> in{1, 2, 3};
    auto make = [](int x) { return std::make_unique<int>(x); };
    auto v = pool.map(make, in).get();
    REQUIRE(v.size() == 3);
    CHECK(*v[0] == 1);
    CHECK(hop::sync_wait(third_of(pool.map(make, in))) == 3);
    auto shared = pool.map(make, in);
    auto copy = shared;
    shared.wait();
    CHECK_THROWS_WITH_AS(std::move(shared).get(), doctest::Contains("move-only"), std::logic_error);
    CHECK(*copy.get().at(1) == 2);  // lvalue get() reads it in place
}

TEST_CASE("wait_for polling a pending future does not grow memory") {
    hop::promise<int> p;
    auto f = p.get_future();
    {
        // The counting operator new is the one in use.
        const std::size_t before = hop_test::allocations_on_this_thread;
        auto probe = std::make_unique<int>(1);
        REQUIRE(hop_test::allocations_on_this_thread == before + 1);
    }
    const std::size_t before = hop_test::allocations_on_this_thread;
    int timed_out = 0;
    for (int i = 0; i < 10'000; ++i) timed_out += !f.wait_for(1us);
    const std::size_t made = hop_test::allocations_on_this_thread - before;
    CHECK(timed_out == 10'000);
    // One shared waiter, made at the first poll; nothing per poll.
    CHECK(made <= 1);
    p.set_value(8);
    CHECK(f.wait_for(1us));
    CHECK(f.wait_for(0s));
    CHECK(f.get() == 8);
    CHECK(hop_test::allocations_on_this_thread - before == made);
}

TEST_CASE("hop::wait polling pending futures with a timeout leaves nothing behind per call") {
    hop::promise<int> p1;
    hop::promise<int> p2;
    hop::promise<int> p3;
    std::vector<hop::future<int>> fs{p1.get_future(), p2.get_future(), p3.get_future()};
    p3.set_value(3);  // one done: first_completed returns at once, leaving two linked
    auto live = [] { return hop_test::allocations_total.load() - hop_test::frees_total.load(); };
    const auto before = live();
    int timed_out = 0;
    for (int i = 0; i < 10'000; ++i) {
        timed_out += hop::wait(fs, hop::return_when::all_completed, 1us).not_done.size() == 2;
        timed_out += hop::wait(fs, hop::return_when::first_completed).not_done.size() == 2;
    }
    CHECK(timed_out == 20'000);
    // Before the fix: the nodes still linked to p1 and p2 (60,000 counted:
    // a node and its shared block per call and future).
    CHECK(live() - before < 100);
    p1.set_value(1);
    p2.set_value(2);
    auto r = hop::wait(fs, hop::return_when::all_completed, guard);
    CHECK(r.done.size() == 3);
    CHECK(r.not_done.empty());
}

TEST_CASE("co_await a future is a cancellation point: stop resumes the awaiter on its executor and cancels the future") {
    hop::cpu_pool pool{1};
    const auto worker = worker_id(pool);
    hop::promise<int> p;
    auto awaited = p.get_future();
    auto outer = hop::spawn(pool, await_reporting_cancel(awaited));
    // One worker, jobs in order: once this one ran, the await has suspended.
    CHECK(worker_id(pool) == worker);
    CHECK_FALSE(outer.done());
    CHECK(outer.cancel());  // running: requests stop on the awaiting task's token
    REQUIRE(outer.wait_for(guard));
    auto r = outer.get();
    CHECK(r.cancelled);
    CHECK(r.resumed_on == worker);  // posted back to its own executor, not run inside request_stop here
    CHECK(awaited.cancelled());     // as asyncio.wait_for: the awaited future is cancelled
    CHECK(p.is_cancelled());
    p.set_value(1);  // the producer's late value is dropped silently
    CHECK_THROWS_AS(awaited.get(), hop::cancelled_error);
}

TEST_CASE("co_await a future: a stop requested before the await throws at once; a done future ignores it") {
    hop::cpu_pool pool{1};
    SUBCASE("pending: cancelled_error, and the future is cancelled") {
        hop::promise<void> go;
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<int> p;
        auto awaited = p.get_future();
        auto outer = hop::spawn(pool, block_then_await(go.get_future(), std::move(started), awaited));
        started_f.wait();
        CHECK(outer.cancel());
        go.set_value();
        REQUIRE(outer.wait_for(guard));
        CHECK_THROWS_AS(outer.get(), hop::cancelled_error);
        CHECK(awaited.cancelled());
    }
    SUBCASE("done: its value, no cancellation") {
        hop::promise<void> go;
        hop::promise<void> started;
        auto started_f = started.get_future();
        hop::promise<int> p;
        p.set_value(5);
        auto outer = hop::spawn(pool, block_then_await(go.get_future(), std::move(started), p.get_future()));
        started_f.wait();
        CHECK(outer.cancel());
        go.set_value();
        REQUIRE(outer.wait_for(guard));
        CHECK(outer.get() == 5);
    }
}

TEST_CASE("a cancelled await cancels the awaited job: one not started never runs") {
    counters c;
    std::atomic<bool> ran{false};
    {
        hop::cpu_pool pool{1};
        hop::cpu_pool awaiting_pool{1};
        hop::promise<void> gate;
        hop::promise<void> blocker_started;
        auto blocker_started_f = blocker_started.get_future();
        auto blocker = pool.submit(job_waits, std::move(blocker_started), gate.get_future(), 0);
        blocker_started_f.wait();  // the only worker is busy: the next job stays queued
        counted token{c};
        auto job = pool.submit([token, &ran] {
            (void)token;
            ran.store(true);
            return 1;
        });
        auto outer = hop::spawn(awaiting_pool, await_value(job));
        // One worker, jobs in order: once this one ran, the await has suspended.
        CHECK(worker_id(awaiting_pool) != std::thread::id{});
        CHECK(outer.cancel());
        REQUIRE(outer.wait_for(guard));
        CHECK_THROWS_AS(outer.get(), hop::cancelled_error);
        CHECK(job.cancelled());
        gate.set_value();
        CHECK(blocker.get() == 0);
        CHECK(pool.submit([] { return 2; }).get() == 2);  // the cancelled job was dequeued and skipped
    }
    CHECK_FALSE(ran.load());
    CHECK(c.alive() == 0);
}

TEST_CASE("a cancelled await cancels the awaited job: a coroutine job sees its stop requested") {
    hop::cpu_pool pool{1};
    hop::cpu_pool awaiting_pool{1};
    hop::promise<void> go;
    hop::promise<void> started;
    auto started_f = started.get_future();
    std::atomic<bool> saw_stop{false};
    auto job = pool.submit(records_stop, go.get_future(), std::move(started), &saw_stop);
    started_f.wait();
    auto outer = hop::spawn(awaiting_pool, await_value(job));
    CHECK(worker_id(awaiting_pool) != std::thread::id{});
    CHECK(outer.cancel());
    REQUIRE(outer.wait_for(guard));
    CHECK_THROWS_AS(outer.get(), hop::cancelled_error);  // without waiting for the job
    CHECK_FALSE(job.done());
    go.set_value();
    job.wait();
    CHECK(saw_stop.load());
}

TEST_CASE("a cancelled await on a running plain job: the awaiter leaves, the job ends, its result is dropped") {
    counters c;
    {
        hop::cpu_pool pool{1};
        hop::cpu_pool awaiting_pool{1};
        hop::promise<void> go;
        auto go_f = go.get_future();
        hop::promise<void> started;
        auto started_f = started.get_future();
        auto job = pool.submit([go_f, &started, &c] {
            started.set_value();
            go_f.wait();
            return std::make_shared<counted>(c);
        });
        started_f.wait();
        hop::future<cancel_report> outer;
        {
            outer = hop::spawn(awaiting_pool, [](hop::future<std::shared_ptr<counted>> f) -> hop::task<cancel_report> {
                cancel_report r;
                try {
                    (void)co_await std::move(f);
                } catch (const hop::cancelled_error&) {
                    r.cancelled = true;
                }
                co_return r;
            }(job));
        }
        CHECK(worker_id(awaiting_pool) != std::thread::id{});
        CHECK(outer.cancel());
        REQUIRE(outer.wait_for(guard));
        CHECK(outer.get().cancelled);
        CHECK_FALSE(job.done());  // still running: cancel() cannot stop a plain call
        go.set_value();
        job.wait();
        CHECK_FALSE(job.cancelled());
    }
    CHECK(c.alive() == 0);  // the dropped result was freed with the last handle
}

TEST_CASE("hop::shield: the awaiter is cancelled, the future is not") {
    hop::cpu_pool pool{1};
    hop::promise<int> p;
    auto awaited = p.get_future();
    auto outer = hop::spawn(pool, await_shielded(awaited));
    CHECK(worker_id(pool) != std::thread::id{});
    CHECK(outer.cancel());
    REQUIRE(outer.wait_for(guard));
    CHECK_THROWS_AS(outer.get(), hop::cancelled_error);
    CHECK_FALSE(awaited.done());
    CHECK_FALSE(p.is_cancelled());
    p.set_value(3);
    CHECK(awaited.get() == 3);  // still there for other handles
}

TEST_CASE("stop_policy::ignore: the await is not a cancellation point") {
    hop::cpu_pool pool{1};
    hop::promise<int> p;
    auto outer = hop::spawn(pool, await_ignoring_stop(p.get_future()));
    CHECK(worker_id(pool) != std::thread::id{});
    CHECK(outer.cancel());  // stop requested: the await goes on
    CHECK_FALSE(outer.wait_for(0s));
    p.set_value(4);
    REQUIRE(outer.wait_for(guard));
    CHECK(outer.get() == 4);
}

TEST_CASE("co_await a pending future allocates nothing, with or without a stop token") {
    {
        // The counting operator new is the one in use.
        const std::size_t before = hop_test::allocations_on_this_thread;
        auto probe = std::make_unique<int>(1);
        REQUIRE(hop_test::allocations_on_this_thread == before + 1);
    }
    for (bool with_stop : {false, true}) {
        CAPTURE(with_stop);
        hop::promise<int> p;
        std::atomic<bool> armed{false};
        std::thread completer([&] {
            while (!armed.load()) std::this_thread::yield();
            p.set_value(1);
        });
        // Both on this thread: sync_wait gives no stop token, a group child
        // has one (so the await registers a stop callback).
        std::size_t made = with_stop ? hop::sync_wait(allocations_of_await_with_stop(p.get_future(), &armed))
                                     : hop::sync_wait(allocations_of_await(p.get_future(), &armed));
        completer.join();
        CHECK(made == 0);
    }
}

TEST_CASE("race: stop requested while a pool worker suspends on a future, the future completing meanwhile") {
    hop::cpu_pool pool{2};
    int cancelled = 0, valued = 0, other = 0, inconsistent = 0;
    for (int i = 0; i < 5'000; ++i) {
        hop::promise<int> p;
        auto awaited = p.get_future();
        std::atomic<bool> armed{false};
        auto outer = hop::spawn(pool, arm_then_await(&armed, awaited));
        while (!armed.load(std::memory_order_acquire)) {
        }
        outer.cancel();
        if (i % 2 == 1) p.set_value(i);
        if (!outer.wait_for(guard)) {
            FAIL("round " << i << ": the awaiter was never resumed");
        }
        try {
            const int v = outer.get();
            ++valued;
            if (v != i) ++inconsistent;
        } catch (const hop::cancelled_error&) {
            ++cancelled;
            // The awaiter cancelled the future, unless the value came first.
            if (!awaited.cancelled() && !(i % 2 == 1 && awaited.done())) ++inconsistent;
        } catch (...) {
            ++other;
        }
    }
    CHECK(other == 0);
    CHECK(inconsistent == 0);
    CHECK(cancelled + valued == 5'000);
    CHECK(cancelled >= 2'500);
}

TEST_CASE("wait_for polled from many threads shares one waiter and wakes them all") {
    hop::promise<int> p;
    auto f = p.get_future();
    std::atomic<int> timed_out{0};
    std::atomic<int> finished{0};
    std::vector<std::thread> pollers;
    for (int k = 0; k < 4; ++k) {
        pollers.emplace_back([&] {
            bool counted = false;
            while (!f.wait_for(100us)) {
                if (!counted) {
                    counted = true;
                    timed_out.fetch_add(1);
                }
            }
            finished.fetch_add(1);
        });
    }
    // Set only once every poller has timed out at least once (so each has
    // used the shared waiter before it is notified).
    while (timed_out.load() < 4) std::this_thread::yield();
    p.set_value(7);
    for (auto& t : pollers) t.join();
    CHECK(finished.load() == 4);
    CHECK(f.wait_for(guard));
    CHECK(f.get() == 7);
}

}  // TEST_SUITE
