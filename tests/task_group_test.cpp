#include <hop/task_group.hpp>

#include <hop/combinators.hpp>
#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>
#include <hop/task.hpp>

#include "support/counted.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using hop_test::counted;
using hop_test::counters;

namespace {

/// The failure the tests inject (distinct from cancelled_error, which is
/// also a std::runtime_error).
struct boom : std::runtime_error {
    explicit boom(const std::string& what) : std::runtime_error(what) {}
};

/// Sets the flag when it goes out of scope (also by an exception).
struct end_flag {
    std::atomic<bool>* flag;
    ~end_flag() {
        if (flag) flag->store(true);
    }
};

/// Hops onto `pool`, completes `started`, then loops on cancellation points
/// there until its stop is requested. Occupies one pool thread meanwhile.
hop::task<> spin_until_stopped(hop::cpu_pool& pool, hop::promise<void> started, std::atomic<bool>* ended) {
    end_flag guard{ended};
    co_await pool.schedule();
    started.set_value();
    for (;;) {
        co_await pool.schedule();  // already there: no hop, but a cancellation point
        std::this_thread::yield();
    }
}

/// As above; completes `ended` once it has observed the stop.
hop::task<> spin_then_report(hop::cpu_pool& pool, hop::promise<void> started, hop::promise<void> ended) {
    try {
        co_await spin_until_stopped(pool, std::move(started), nullptr);
    } catch (const hop::cancelled_error&) {
        ended.set_value();
        throw;
    }
}

hop::task<int> square_on(hop::cpu_pool& pool, int v, std::atomic<int>* finished) {
    co_await pool.schedule();
    ++*finished;
    co_return v * v;
}

hop::task<int> value_of(int v) { co_return v; }

hop::task<int> hold(counted, int v) { co_return v; }

hop::task<int> hold_on_pool(hop::cpu_pool& pool, counted, int v) {
    co_await pool.schedule();
    co_return v;
}

/// Waits for `f`, then fails.
hop::task<> fail_when(hop::future<void> f) {
    co_await f;
    throw boom("child failed");
}

hop::task<> throw_cancelled() {
    throw hop::cancelled_error("child gave up");
    co_return;
}

/// Waits for `gate`; returns whether its own stop was requested meanwhile.
hop::task<bool> stopped_after(hop::future<void> gate) {
    co_await gate;
    auto token = co_await hop::get_stop_token();
    co_return token.stop_requested();
}

hop::task<> wait_gate(hop::future<void> gate) { co_await gate; }

hop::task<bool> on_pool(hop::cpu_pool& pool) {
    co_await pool.schedule();
    co_return pool.running_in_this_thread();
}

hop::task<bool> ran_on(hop::cpu_pool* pool) { co_return pool->running_in_this_thread(); }

hop::task<> set_flag(bool* flag) {
    *flag = true;
    co_return;
}

// sync_wait(group.wait()) does not compile with GCC 12 (sync_wait's driver
// co_awaits std::forward<Awaitable>(aw), which GCC copies, and wait()'s
// operation cannot be moved), so the tests wait inside a coroutine.
hop::task<> wait_for(hop::task_group* g) { co_await g->wait(); }

// ---- coroutines the tests drive ----------------------------------------------

struct several_probe {
    int finished_at_wait = -1;
    std::vector<int> values;
};

hop::task<several_probe> spawn_several(hop::cpu_pool& pool) {
    hop::task_group g;
    std::atomic<int> finished{0};
    std::vector<hop::future<int>> fs;
    for (int i = 0; i < 6; ++i) fs.push_back(g.spawn(square_on(pool, i, &finished)));
    co_await g.wait();
    several_probe out;
    out.finished_at_wait = finished.load();
    for (auto& f : fs) out.values.push_back(f.done() ? f.get() : -1);
    co_return out;
}

struct failure_probe {
    std::string what;
    bool sibling_ended = false;
    bool sibling_cancelled = false;
};

hop::task<failure_probe> first_failure(hop::cpu_pool& pool) {
    hop::task_group g;
    hop::promise<void> started;
    auto started_f = started.get_future();
    std::atomic<bool> ended{false};
    auto spinner = g.spawn(pool, spin_until_stopped(pool, std::move(started), &ended));
    auto failing = g.spawn(fail_when(started_f));
    failure_probe out;
    try {
        co_await g.wait();
    } catch (const boom& e) {
        out.what = e.what();
        out.sibling_ended = ended.load();
        out.sibling_cancelled = spinner.cancelled();
    }
    co_return out;
}

struct cancelled_child_probe {
    bool wait_threw = true;
    bool child_cancelled = false;
    int sibling_value = 0;
};

hop::task<cancelled_child_probe> cancelled_child_is_not_failure() {
    hop::task_group g;
    auto c = g.spawn(throw_cancelled());
    auto v = g.spawn(value_of(5));
    cancelled_child_probe out;
    try {
        co_await g.wait();
        out.wait_threw = false;
    } catch (...) {
    }
    out.child_cancelled = c.cancelled();
    out.sibling_value = v.get();
    co_return out;
}

struct own_stop_probe {
    bool wait_threw_cancelled = false;
};

/// Spawns a spinner on `children` and waits for the group; its own stop
/// token comes from the future hop::spawn gave for it.
hop::task<> waiter(hop::cpu_pool& children, hop::promise<void> started, std::atomic<bool>* ended,
                   own_stop_probe* probe) {
    hop::task_group g;
    auto f = g.spawn(children, spin_until_stopped(children, std::move(started), ended));
    try {
        co_await g.wait();
    } catch (const hop::cancelled_error&) {
        probe->wait_threw_cancelled = true;
        throw;
    }
}

struct two_waiters_probe {
    std::string second_error;
    bool second_threw_logic_error = false;
};

hop::task<> first_waiter(hop::task_group* g) { co_await g->wait(); }

hop::task<> second_waiter(hop::task_group* g, hop::promise<void> gate, two_waiters_probe* probe) {
    try {
        co_await g->wait();
    } catch (const std::logic_error& e) {
        probe->second_threw_logic_error = true;
        probe->second_error = e.what();
    }
    gate.set_value();  // lets the group's child, and so the first waiter, finish
}

template <class... T>
hop::task<> both(hop::task<T>... ts) {
    co_await hop::when_all(std::move(ts)...);
}

struct inline_probe {
    bool ran_before_spawn_returned = true;
    bool ran_after_wait = false;
    int alive_after_wait = -1;
};

/// Spawns onto the caller's own executor (the loop sync_wait drives).
hop::task<inline_probe> spawn_from_coroutine(counters* c) {
    hop::task_group g;
    bool ran = false;
    auto f = g.spawn(set_flag(&ran));
    auto h = g.spawn(hold(counted{*c}, 3));
    inline_probe out;
    out.ran_before_spawn_returned = ran;
    co_await g.wait();
    out.ran_after_wait = ran && h.get() == 3;
    // Children's frames (which own their arguments) are gone once wait returns.
    out.alive_after_wait = c->alive();
    co_return out;
}

hop::task<int> alive_after_wait_on_pool(hop::cpu_pool& pool, counters* c) {
    hop::task_group g;
    for (int i = 0; i < 4; ++i) {
        auto f = g.spawn(pool, hold_on_pool(pool, counted{*c}, i));
    }
    co_await g.wait();
    co_return c->alive();
}

/// Runs on `pool`; spawns without naming an executor.
hop::task<bool> spawn_from_pool(hop::cpu_pool& pool) {
    hop::task_group g;
    auto f = g.spawn(ran_on(&pool));
    co_await g.wait();
    co_return f.get();
}

}  // namespace

TEST_SUITE("task_group") {

TEST_CASE("spawn several: wait returns after all of them, and the futures hold their values") {
    hop::cpu_pool pool{2};
    auto probe = hop::sync_wait(spawn_several(pool));
    CHECK(probe.finished_at_wait == 6);
    CHECK(probe.values == std::vector<int>{0, 1, 4, 9, 16, 25});
}

TEST_CASE("the first failure cancels the siblings and wait rethrows it once all ended") {
    hop::cpu_pool pool{1};
    auto probe = hop::sync_wait(first_failure(pool));
    CHECK(probe.what == "child failed");
    CHECK(probe.sibling_ended);
    CHECK(probe.sibling_cancelled);
}

TEST_CASE("cancelled_error in a child is not a failure") {
    auto probe = hop::sync_wait(cancelled_child_is_not_failure());
    CHECK_FALSE(probe.wait_threw);
    CHECK(probe.child_cancelled);
    CHECK(probe.sibling_value == 5);
}

TEST_CASE("future.cancel() on one child cancels only that child") {
    hop::cpu_pool pool{2};
    hop::task_group g;
    hop::promise<void> started;
    auto started_f = started.get_future();
    hop::promise<void> gate;
    std::atomic<bool> ended{false};
    auto spinner = g.spawn(pool, spin_until_stopped(pool, std::move(started), &ended));
    auto other = g.spawn(pool, stopped_after(gate.get_future()));
    started_f.get();
    CHECK(spinner.cancel());
    spinner.wait();
    CHECK(spinner.cancelled());
    CHECK(ended.load());
    CHECK_FALSE(other.done());
    gate.set_value();
    hop::sync_wait(wait_for(&g));
    CHECK_FALSE(other.cancelled());
    CHECK_FALSE(other.get());  // its stop was never requested
}

TEST_CASE("group.cancel() stops every child; wait then returns normally") {
    hop::cpu_pool pool{2};
    hop::task_group g;
    hop::promise<void> s1;
    hop::promise<void> s2;
    auto f1 = s1.get_future();
    auto f2 = s2.get_future();
    std::atomic<bool> e1{false};
    std::atomic<bool> e2{false};
    auto a = g.spawn(pool, spin_until_stopped(pool, std::move(s1), &e1));
    auto b = g.spawn(pool, spin_until_stopped(pool, std::move(s2), &e2));
    f1.get();
    f2.get();
    g.cancel();
    CHECK_NOTHROW(hop::sync_wait(wait_for(&g)));
    CHECK(a.cancelled());
    CHECK(b.cancelled());
    CHECK(e1.load());
    CHECK(e2.load());

    // A child spawned into a cancelled group is stopped at once.
    hop::promise<void> s3;
    std::atomic<bool> e3{false};
    auto late = g.spawn(pool, spin_until_stopped(pool, std::move(s3), &e3));
    hop::sync_wait(wait_for(&g));
    CHECK(late.cancelled());
    CHECK(e3.load());
}

TEST_CASE("a stop on the waiting coroutine's own token cancels the children; wait throws cancelled_error") {
    hop::cpu_pool home{1};
    hop::cpu_pool children{1};
    hop::promise<void> started;
    auto started_f = started.get_future();
    std::atomic<bool> ended{false};
    own_stop_probe probe;
    auto f = hop::spawn(home, waiter(children, std::move(started), &ended, &probe));
    started_f.get();
    CHECK(f.cancel());
    f.wait();
    CHECK(f.cancelled());
    CHECK_THROWS_AS(f.get(), hop::cancelled_error);
    CHECK(probe.wait_threw_cancelled);
    CHECK(ended.load());
}

TEST_CASE("destroying a group whose children still run does not crash; the children see the stop and end") {
    hop::cpu_pool pool{1};
    hop::promise<void> started;
    hop::promise<void> ended;
    auto started_f = started.get_future();
    auto ended_f = ended.get_future();
    hop::future<void> child;
    {
        hop::task_group g;
        child = g.spawn(pool, spin_then_report(pool, std::move(started), std::move(ended)));
        started_f.get();
    }
    CHECK_NOTHROW(ended_f.get());  // a broken promise would mean it never saw the stop
    child.wait();
    CHECK(child.cancelled());
}

TEST_CASE("spawn(pool, task) runs the task on that pool") {
    hop::cpu_pool pool{1};
    hop::task_group g;
    auto f = g.spawn(pool, ran_on(&pool));
    auto h = g.spawn(pool, on_pool(pool));
    hop::sync_wait(wait_for(&g));
    CHECK(f.get());
    CHECK(h.get());
}

TEST_CASE("spawn(task) runs on the calling coroutine's executor") {
    hop::cpu_pool pool{1};
    CHECK(hop::spawn(pool, spawn_from_pool(pool)).get());

    counters c;
    auto probe = hop::sync_wait(spawn_from_coroutine(&c));
    CHECK_FALSE(probe.ran_before_spawn_returned);  // queued, not run inline
    CHECK(probe.ran_after_wait);
    CHECK(probe.alive_after_wait == 0);
    CHECK(c.alive() == 0);
}

TEST_CASE("children's frames are freed by the time wait returns") {
    hop::cpu_pool pool{2};
    counters c;
    CHECK(hop::sync_wait(alive_after_wait_on_pool(pool, &c)) == 0);
    CHECK(c.alive() == 0);
    CHECK(c.constructed.load() > 0);
}

TEST_CASE("spawn of an empty task throws std::invalid_argument") {
    hop::task_group g;
    auto t = value_of(1);
    auto moved = std::move(t);
    CHECK_THROWS_WITH_AS(g.spawn(std::move(t)), doctest::Contains("empty"), std::invalid_argument);
    hop::cpu_pool pool{1};
    CHECK_THROWS_AS(g.spawn(pool, hop::task<int>{}), std::invalid_argument);
    hop::sync_wait(wait_for(&g));  // nothing was started
}

TEST_CASE("spawn on a thread with no executor starts the task inline") {
    hop::task_group g;
    bool ran = false;
    auto f = g.spawn(set_flag(&ran));
    CHECK(ran);
    CHECK(f.done());
    hop::sync_wait(wait_for(&g));
}

TEST_CASE("a second coroutine waiting on the same group gets std::logic_error") {
    hop::task_group g;
    hop::promise<void> gate;
    auto child = g.spawn(wait_gate(gate.get_future()));  // inline: now waits for the gate
    REQUIRE_FALSE(child.done());
    two_waiters_probe probe;
    hop::sync_wait(both(first_waiter(&g), second_waiter(&g, std::move(gate), &probe)));
    CHECK(probe.second_threw_logic_error);
    CHECK(probe.second_error.find("already waiting") != std::string::npos);
    CHECK(child.done());
}

TEST_CASE("spawn onto a shut-down cpu_pool throws executor_shutdown_error and leaks nothing") {
    counters c;
    hop::cpu_pool pool{1};
    pool.shutdown();
    {
        hop::task_group g;
        CHECK_THROWS_AS(g.spawn(pool, hold(counted{c}, 1)), hop::executor_shutdown_error);
        CHECK(c.alive() == 0);
        hop::sync_wait(wait_for(&g));  // the failed spawn left no child behind
    }
    CHECK(c.alive() == 0);
}

}  // TEST_SUITE
