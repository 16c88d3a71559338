#include <hop/task.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>

#include "support/counted.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <memory>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>

namespace {

using hop_test::counted;
using hop_test::counters;

struct test_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

hop::task<int> answer() { co_return 42; }
hop::task<> nothing() { co_return; }
hop::task<int> one() { co_return 1; }

hop::task<int> set_flag(std::atomic<bool>* ran) {
    ran->store(true);
    co_return 7;
}

hop::task<std::unique_ptr<int>> make_ptr(int v) { co_return std::make_unique<int>(v); }

hop::task<std::unique_ptr<int>> pass_ptr(std::unique_ptr<int> p) { co_return p; }

hop::task<int> fails(int v) {
    if (v >= 0) throw test_error("boom " + std::to_string(v));
    co_return v;
}

hop::task<> fails_void() {
    co_await nothing();
    throw test_error("void boom");
}

hop::task<int> forwards_failure() { co_return co_await fails(3); }

hop::task<std::string> catches_failure() {
    try {
        co_await fails(5);
    } catch (const test_error& e) {
        co_return e.what();
    }
    co_return "not thrown";
}

hop::task<int> await_lvalue_twice() {
    auto t = answer();
    int a = co_await t;
    int b = co_await t;  // throws std::logic_error
    co_return a + b;
}

hop::task<long> sum_loop(int n) {
    long sum = 0;
    for (int i = 0; i < n; ++i) sum += co_await one();
    co_return sum;
}

hop::task<int> void_loop(int n) {
    int count = 0;
    for (int i = 0; i < n; ++i) {
        co_await nothing();
        ++count;
    }
    co_return count;
}

// Two levels per iteration: the child awaits a grandchild.
hop::task<int> two_levels() { co_return co_await one() + 1; }
hop::task<long> nested_loop(int n) {
    long sum = 0;
    for (int i = 0; i < n; ++i) sum += co_await two_levels();
    co_return sum;
}

hop::task<int> depth(int n) {
    if (n == 0) co_return 0;
    int below = co_await depth(n - 1);
    co_return below + 1;
}

hop::task<int> depth_throws(int n) {
    if (n == 0) throw test_error("bottom");
    int below = co_await depth_throws(n - 1);
    co_return below + 1;
}

// Hops to `pool` at the bottom of the chain; every level above resumes on its
// own executor again.
hop::task<int> depth_hop(int n, hop::cpu_pool* pool) {
    if (n == 0) {
        co_await pool->schedule();
        co_return pool->running_in_this_thread() ? 0 : -1000000;
    }
    int below = co_await depth_hop(n - 1, pool);
    co_return below + 1;
}

struct hop_report {
    std::thread::id inner_thread;
    bool inner_on_pool = false;
    std::thread::id outer_thread_after;
};

hop::task<std::thread::id> hop_to(hop::cpu_pool* pool, bool* on_pool) {
    co_await pool->schedule();
    *on_pool = pool->running_in_this_thread();
    co_return std::this_thread::get_id();
}

hop::task<hop_report> affinity_probe(hop::cpu_pool* pool) {
    hop_report r;
    r.inner_thread = co_await hop_to(pool, &r.inner_on_pool);
    r.outer_thread_after = std::this_thread::get_id();
    co_return r;
}

struct pool_job_report {
    hop_report probe;
    bool outer_on_home_before = false;
    bool outer_on_home_after = false;
    bool outer_on_other_after = false;
};

hop::task<pool_job_report> affinity_in_pool_job(hop::cpu_pool* home, hop::cpu_pool* other) {
    pool_job_report r;
    r.outer_on_home_before = home->running_in_this_thread();
    r.probe = co_await affinity_probe(other);
    r.outer_on_home_after = home->running_in_this_thread();
    r.outer_on_other_after = other->running_in_this_thread();
    co_return r;
}

/// Wraps an awaitable and counts how often its await_suspend really
/// suspended (returned true), that is, queued the coroutine somewhere.
template <class A>
struct suspend_spy {
    A inner;
    std::atomic<int>* suspensions;
    bool await_ready() { return inner.await_ready(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) {
        auto* count = suspensions;  // read before the coroutine may resume elsewhere
        bool suspended = inner.await_suspend(h);
        if (suspended) count->fetch_add(1);
        return suspended;
    }
    decltype(auto) await_resume() { return inner.await_resume(); }
};

struct reschedule_report {
    int mismatched_threads = 0;
    bool on_pool = false;
};

hop::task<reschedule_report> reschedule_many(hop::cpu_pool* pool, int n, std::atomic<int>* suspensions) {
    reschedule_report r;
    auto first = suspend_spy<hop::cpu_pool::schedule_operation>{pool->schedule(), suspensions};
    co_await first;  // the one real hop onto the pool
    r.on_pool = pool->running_in_this_thread();
    for (int i = 0; i < n; ++i) {
        auto before = std::this_thread::get_id();
        auto again = suspend_spy<hop::cpu_pool::schedule_operation>{pool->schedule(), suspensions};
        co_await again;
        if (std::this_thread::get_id() != before) ++r.mismatched_threads;
    }
    co_return r;
}

hop::task<std::stop_token> read_token() { co_return co_await hop::get_stop_token(); }

hop::task<std::stop_token> read_token_deep(int n) {
    if (n == 0) co_return co_await read_token();
    co_return co_await read_token_deep(n - 1);
}

struct token_report {
    bool possible = false;
    bool child_same = false;
    bool grandchild_same = false;
};

hop::task<token_report> compare_tokens() {
    token_report r;
    std::stop_token mine = co_await hop::get_stop_token();
    r.possible = mine.stop_possible();
    std::stop_token child = co_await read_token();
    r.child_same = child == mine;
    std::stop_token deep = co_await read_token_deep(10);
    r.grandchild_same = deep == mine;
    co_return r;
}

// Reports that it started, waits for `go`, then reaches a cancellation point.
hop::task<int> child_waits_then_checks(hop::future<void> go, hop::promise<void> started, std::atomic<int>* progress) {
    co_await hop::cancellation_point();  // no stop requested yet: nothing happens
    progress->store(1);
    started.set_value();
    go.wait();  // blocks the worker: not a cancellation point (co_await go is one)
    progress->store(2);
    co_await hop::cancellation_point();
    progress->store(3);  // never reached once stop was requested
    co_return 1;
}

hop::task<int> parent_of_checker(hop::future<void> go, hop::promise<void> started, std::atomic<int>* progress) {
    int v = co_await child_waits_then_checks(std::move(go), std::move(started), progress);
    co_return v + 1;
}

hop::task<bool> point_without_stop() {
    co_await hop::cancellation_point();
    std::stop_token t = co_await hop::get_stop_token();
    co_return t.stop_requested();
}

hop::task<int> take_counted(counted c, int v) {
    (void)c;
    co_return v;
}

hop::task<int> take_counted_throws(counted c) {
    (void)c;
    throw test_error("counted boom");
    co_return 0;
}

hop::task<int> counted_chain(counted c, int n) {
    (void)c;
    if (n == 0) co_return 0;
    int below = co_await counted_chain(c, n - 1);
    co_return below + 1;
}

hop::task<int> counted_body_flag(counted c, std::atomic<bool>* ran) {
    (void)c;
    ran->store(true);
    co_return 1;
}

int blocked_job(hop::future<void> gate) {
    gate.wait();
    return 0;
}

hop::task<counted> make_counted(counters* c) { co_return counted{*c}; }

hop::task<int> hop_then_throw(hop::cpu_pool* pool) {
    co_await pool->schedule();
    throw test_error("thrown on the pool");
    co_return 0;
}

hop::task<std::thread::id> catch_after_hop(hop::cpu_pool* pool) {
    try {
        co_await hop_then_throw(pool);
    } catch (const test_error&) {
        co_return std::this_thread::get_id();
    }
    co_return std::thread::id{};
}

hop::task<int> waits_on(counted c, hop::promise<void> started, hop::future<int> in) {
    (void)c;
    started.set_value();
    co_return co_await in;
}

int started_then_blocked(hop::promise<void> started, hop::future<void> gate) {
    started.set_value();
    gate.wait();
    return 0;
}

hop::task<int> counted_on_pool(counted c, hop::cpu_pool* pool) {
    (void)c;
    co_await pool->schedule();
    co_return 5;
}

}  // namespace

TEST_SUITE("task") {

TEST_CASE("a task is lazy: nothing runs before it is awaited") {
    std::atomic<bool> ran{false};
    auto t = set_flag(&ran);
    CHECK(t.valid());
    CHECK_FALSE(ran.load());
    CHECK(hop::sync_wait(std::move(t)) == 7);
    CHECK(ran.load());
}

TEST_CASE("a task destroyed without being awaited never runs its body") {
    std::atomic<bool> ran{false};
    {
        auto t = set_flag(&ran);
    }
    CHECK_FALSE(ran.load());
}

TEST_CASE("value, void and move-only results") {
    CHECK(hop::sync_wait(answer()) == 42);
    hop::sync_wait(nothing());
    std::unique_ptr<int> p = hop::sync_wait(make_ptr(9));
    REQUIRE(p);
    CHECK(*p == 9);

    auto original = std::make_unique<int>(11);
    int* raw = original.get();
    std::unique_ptr<int> back = hop::sync_wait(pass_ptr(std::move(original)));
    CHECK(back.get() == raw);  // moved through, never copied
}

TEST_CASE("sync_wait accepts an lvalue task") {
    auto t = answer();
    CHECK(hop::sync_wait(t) == 42);
}

TEST_CASE("exceptions propagate to the awaiter") {
    CHECK_THROWS_AS(hop::sync_wait(fails(1)), test_error);
    CHECK_THROWS_WITH_AS(hop::sync_wait(forwards_failure()), "boom 3", test_error);
    CHECK_THROWS_WITH_AS(hop::sync_wait(fails_void()), "void boom", test_error);
    CHECK(hop::sync_wait(catches_failure()) == "boom 5");
    CHECK(hop::sync_wait(fails(-4)) == -4);
}

TEST_CASE("awaiting an empty task throws std::logic_error") {
    hop::task<int> empty;
    CHECK_FALSE(empty.valid());
    CHECK_THROWS_AS(hop::sync_wait(empty), std::logic_error);

    auto t = answer();
    auto moved = std::move(t);
    CHECK_FALSE(t.valid());  // NOLINT(bugprone-use-after-move)
    CHECK_THROWS_AS(hop::sync_wait(t), std::logic_error);
    CHECK(hop::sync_wait(std::move(moved)) == 42);

    hop::task<> empty_void;
    CHECK_THROWS_AS(hop::sync_wait(empty_void), std::logic_error);
}

TEST_CASE("awaiting a task that was already awaited throws std::logic_error") {
    auto t = answer();
    CHECK(hop::sync_wait(t) == 42);
    CHECK_THROWS_AS(hop::sync_wait(t), std::logic_error);
    CHECK_THROWS_AS(hop::sync_wait(await_lvalue_twice()), std::logic_error);

    auto bad = fails(2);
    CHECK_THROWS_AS(hop::sync_wait(bad), test_error);
    CHECK_THROWS_AS(hop::sync_wait(bad), std::logic_error);
}

TEST_CASE("a million co_awaits of synchronously completing tasks do not grow the stack") {
    constexpr int n = 1'000'000;
    CHECK(hop::sync_wait(sum_loop(n)) == n);
    CHECK(hop::sync_wait(void_loop(n)) == n);
}

TEST_CASE("a loop over two-level synchronous tasks does not grow the stack") {
    constexpr int n = 200'000;
    CHECK(hop::sync_wait(nested_loop(n)) == 2L * n);
}

TEST_CASE("a million synchronous co_awaits inside a pool job") {
    hop::cpu_pool pool{1};
    constexpr int n = 1'000'000;
    CHECK(hop::spawn(pool, sum_loop(n)).get() == n);
}

TEST_CASE("deep chain of nested tasks") {
    CHECK(hop::sync_wait(depth(1000)) == 1000);
    CHECK_THROWS_WITH_AS(hop::sync_wait(depth_throws(1000)), "bottom", test_error);
    hop::cpu_pool pool{2};
    CHECK(hop::sync_wait(depth_hop(1000, &pool)) == 1000);
    CHECK(hop::spawn(pool, depth(1000)).get() == 1000);
}

TEST_CASE("affinity: after a child hops to a pool, a sync_wait caller resumes on its own thread") {
    hop::cpu_pool pool{2};
    const auto me = std::this_thread::get_id();
    for (int i = 0; i < 20; ++i) {
        hop_report r = hop::sync_wait(affinity_probe(&pool));
        CHECK(r.inner_on_pool);
        CHECK(r.inner_thread != me);
        CHECK(r.outer_thread_after == me);
    }
}

TEST_CASE("affinity: an exception thrown after a hop reaches the caller on its own thread") {
    hop::cpu_pool pool{2};
    CHECK_THROWS_WITH_AS(hop::sync_wait(hop_then_throw(&pool)), "thrown on the pool", test_error);
    CHECK(hop::sync_wait(catch_after_hop(&pool)) == std::this_thread::get_id());
}

TEST_CASE("affinity: inside a pool job, the caller resumes on its own pool") {
    hop::cpu_pool home{2};
    hop::cpu_pool other{1};
    for (int i = 0; i < 20; ++i) {
        pool_job_report r = hop::spawn(home, affinity_in_pool_job(&home, &other)).get();
        CHECK(r.outer_on_home_before);
        CHECK(r.probe.inner_on_pool);
        CHECK(r.outer_on_home_after);
        CHECK_FALSE(r.outer_on_other_after);
    }
}

TEST_CASE("co_await pool.schedule() on that pool already does not re-queue") {
    hop::cpu_pool pool{4};
    std::atomic<int> suspensions{0};
    reschedule_report r = hop::sync_wait(reschedule_many(&pool, 1000, &suspensions));
    CHECK(r.on_pool);
    CHECK(r.mismatched_threads == 0);
    CHECK(suspensions.load() == 1);  // only the first hop, from this thread
}

TEST_CASE("the stop token is inherited from the parent") {
    hop::cpu_pool pool{1};
    token_report r = hop::spawn(pool, compare_tokens()).get();
    CHECK(r.possible);
    CHECK(r.child_same);
    CHECK(r.grandchild_same);

    // sync_wait has no stop source: the token cannot be stopped.
    token_report none = hop::sync_wait(compare_tokens());
    CHECK_FALSE(none.possible);
    CHECK(none.child_same);
}

TEST_CASE("cancellation_point does nothing until stop is requested, then throws cancelled_error") {
    CHECK_FALSE(hop::sync_wait(point_without_stop()));

    hop::cpu_pool pool{1};
    hop::promise<void> go;
    hop::promise<void> started;
    auto started_f = started.get_future();
    std::atomic<int> progress{0};
    auto f = hop::spawn(pool, parent_of_checker(go.get_future(), std::move(started), &progress));
    started_f.wait();
    CHECK(f.cancel());  // running coroutine: requests stop
    go.set_value();
    f.wait();
    CHECK(f.cancelled());
    CHECK_THROWS_AS(f.get(), hop::cancelled_error);
    CHECK(progress.load() == 2);  // the child saw the stop at its next cancellation point
}

TEST_CASE("sync_wait of a task, a future and void") {
    CHECK(hop::sync_wait(answer()) == 42);
    hop::sync_wait(nothing());

    hop::promise<int> p;
    auto f = p.get_future();
    std::thread setter([&p] { p.set_value(8); });
    CHECK(hop::sync_wait(f) == 8);
    setter.join();

    hop::promise<void> pv;
    auto fv = pv.get_future();
    std::thread setter_v([&pv] { pv.set_value(); });
    hop::sync_wait(fv);
    setter_v.join();
    CHECK(fv.done());
}

TEST_CASE("sync_wait rethrows") {
    CHECK_THROWS_AS(hop::sync_wait(fails(0)), test_error);
    CHECK_THROWS_AS(hop::sync_wait(fails_void()), test_error);

    hop::promise<int> p;
    auto f = p.get_future();
    p.set_exception(std::make_exception_ptr(test_error("from promise")));
    CHECK_THROWS_WITH_AS(hop::sync_wait(f), "from promise", test_error);
}

TEST_CASE("sync_wait can be nested in a task run by another sync_wait") {
    struct local {
        static hop::task<int> outer() { co_return hop::sync_wait(answer()) + 1; }
    };
    CHECK(hop::sync_wait(local::outer()) == 43);
}

TEST_CASE("spawn returns a future with the task's value") {
    hop::cpu_pool pool{2};
    CHECK(hop::spawn(pool, answer()).get() == 42);

    auto fv = hop::spawn(pool, nothing());
    fv.get();
    CHECK(fv.done());
    CHECK_FALSE(fv.cancelled());

    auto fp = hop::spawn(pool, make_ptr(3));
    std::unique_ptr<int> p = std::move(fp).get();
    REQUIRE(p);
    CHECK(*p == 3);

    auto ff = hop::spawn(pool, fails(6));
    CHECK_THROWS_WITH_AS(ff.get(), "boom 6", test_error);
    CHECK_FALSE(ff.cancelled());
}

TEST_CASE("spawn of a task that was already awaited: the future holds std::logic_error") {
    hop::cpu_pool pool{1};
    auto t = answer();
    CHECK(hop::sync_wait(t) == 42);
    auto f = hop::spawn(pool, std::move(t));
    CHECK_THROWS_AS(f.get(), std::logic_error);
    CHECK_FALSE(f.cancelled());
}

TEST_CASE("spawn runs the task on the executor, not on the caller") {
    hop::cpu_pool pool{1};
    bool on_pool = false;
    auto f = hop::spawn(pool, hop_to(&pool, &on_pool));
    CHECK(f.get() != std::this_thread::get_id());
    CHECK(on_pool);
}

TEST_CASE("spawn of an empty task throws std::invalid_argument") {
    hop::cpu_pool pool{1};
    hop::task<int> empty;
    CHECK_THROWS_AS(hop::spawn(pool, std::move(empty)), std::invalid_argument);
    auto t = answer();
    auto moved = std::move(t);
    CHECK_THROWS_AS(hop::spawn(pool, std::move(t)), std::invalid_argument);  // NOLINT(bugprone-use-after-move)
    CHECK(hop::spawn(pool, std::move(moved)).get() == 42);
}

TEST_CASE("spawn onto a shut-down pool throws and frees the task") {
    counters c;
    {
        hop::cpu_pool pool{1};
        pool.shutdown();
        CHECK_THROWS_AS(hop::spawn(pool, take_counted(counted{c}, 1)), hop::executor_shutdown_error);
    }
    CHECK(c.constructed.load() > 0);
    CHECK(c.alive() == 0);
}

TEST_CASE("frames are destroyed exactly once") {
    SUBCASE("awaited to completion") {
        counters c;
        CHECK(hop::sync_wait(take_counted(counted{c}, 3)) == 3);
        CHECK(c.constructed.load() > 0);
        CHECK(c.alive() == 0);
    }
    SUBCASE("never awaited") {
        counters c;
        {
            auto t = take_counted(counted{c}, 3);
            auto moved = std::move(t);
            CHECK(c.alive() == 1);  // the copy in the frame
        }
        CHECK(c.alive() == 0);
    }
    SUBCASE("move-assigned over") {
        counters c;
        auto t = take_counted(counted{c}, 1);
        t = take_counted(counted{c}, 2);
        CHECK(c.alive() == 1);
        CHECK(hop::sync_wait(std::move(t)) == 2);
        t = hop::task<int>{};
        CHECK(c.alive() == 0);
    }
    SUBCASE("on exception") {
        counters c;
        CHECK_THROWS_AS(hop::sync_wait(take_counted_throws(counted{c})), test_error);
        CHECK(c.alive() == 0);
    }
    SUBCASE("a deep chain") {
        counters c;
        CHECK(hop::sync_wait(counted_chain(counted{c}, 200)) == 200);
        CHECK(c.constructed.load() > 200);
        CHECK(c.alive() == 0);
    }
    SUBCASE("spawned and completed, also across a hop") {
        counters c;
        {
            hop::cpu_pool pool{2};
            CHECK(hop::spawn(pool, take_counted(counted{c}, 4)).get() == 4);
            CHECK(hop::sync_wait(counted_on_pool(counted{c}, &pool)) == 5);
            CHECK_THROWS_AS(hop::spawn(pool, take_counted_throws(counted{c})).get(), test_error);
        }  // the pool's destructor waits for the drivers to end
        CHECK(c.alive() == 0);
    }
    SUBCASE("a counted result, through sync_wait and spawn") {
        counters c;
        {
            counted v = hop::sync_wait(make_counted(&c));
            CHECK(c.alive() == 1);
            hop::cpu_pool pool{1};
            auto f = hop::spawn(pool, make_counted(&c));
            f.wait();
            counted w = std::move(f).get();
            (void)v;
            (void)w;
        }
        CHECK(c.alive() == 0);
    }
    SUBCASE("suspended on a future while its pool shuts down") {
        counters c;
        hop::promise<int> in;
        hop::future<int> f;
        {
            hop::cpu_pool pool{1};
            hop::promise<void> started;
            auto started_f = started.get_future();
            f = hop::spawn(pool, waits_on(counted{c}, std::move(started), in.get_future()));
            started_f.wait();
            pool.shutdown(true);  // the task is suspended, not queued: the workers exit
            CHECK_FALSE(f.done());
            // With nobody left on the pool, the continuation runs on this thread.
            in.set_value(13);
            CHECK(f.done());
            CHECK(f.get() == 13);
        }
        CHECK(c.constructed.load() > 0);
        CHECK(c.alive() == 0);
    }
    SUBCASE("a cancelled spawn that never started") {
        counters c;
        std::atomic<bool> ran{false};
        {
            hop::cpu_pool pool{1};
            hop::promise<void> gate;
            auto blocker = pool.submit(blocked_job, gate.get_future());
            auto f = hop::spawn(pool, counted_body_flag(counted{c}, &ran));
            CHECK_FALSE(f.done());
            CHECK(f.cancel());
            CHECK(f.cancelled());
            CHECK_THROWS_AS(f.get(), hop::cancelled_error);
            gate.set_value();
            CHECK(blocker.get() == 0);
        }
        CHECK_FALSE(ran.load());
        CHECK(c.constructed.load() > 0);
        CHECK(c.alive() == 0);
    }
    SUBCASE("a spawned task dropped by shutdown(cancel_pending)") {
        counters c;
        std::atomic<bool> ran{false};
        hop::future<int> f;
        {
            hop::cpu_pool pool{1};
            hop::promise<void> gate;
            hop::promise<void> started;
            auto started_f = started.get_future();
            auto blocker = pool.submit(started_then_blocked, std::move(started), gate.get_future());
            f = hop::spawn(pool, counted_body_flag(counted{c}, &ran));
            started_f.wait();            // the only worker is busy: the driver is queued
            pool.shutdown(false, true);  // drops it
            CHECK(f.cancelled());
            gate.set_value();
            CHECK(blocker.get() == 0);
        }
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK_FALSE(ran.load());
        CHECK(c.constructed.load() > 0);
        CHECK(c.alive() == 0);
    }
}

TEST_CASE("race: cancelling spawned tasks while they run") {
    counters c;
    {
        hop::cpu_pool pool{2};
        for (int i = 0; i < 200; ++i) {
            hop::promise<void> go;
            hop::promise<void> started;
            auto started_f = started.get_future();
            std::atomic<int> progress{0};
            auto f = hop::spawn(pool, parent_of_checker(go.get_future(), std::move(started), &progress));
            auto t = hop::spawn(pool, take_counted(counted{c}, i));
            bool cancelled_t = t.cancel();
            started_f.wait();
            CHECK(f.cancel());
            go.set_value();
            CHECK_THROWS_AS(f.get(), hop::cancelled_error);
            t.wait();
            if (t.cancelled()) {
                CHECK(cancelled_t);
            } else {
                CHECK(t.get() == i);
            }
        }
    }
    CHECK(c.alive() == 0);
}

}  // TEST_SUITE
