#include <hop/time.hpp>
#include <hop/detail/fd_wait.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include "support/backend.hpp"
#include "support/counted.hpp"
#include "support/counting_new.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <poll.h>
#include <unistd.h>
#include <vector>


using namespace std::chrono_literals;
using hop_test::for_each_backend;
using hop_test::what_of;
using hop_test::running_loop;
using steady = std::chrono::steady_clock;

namespace {

// A failure guard only: every wait below is released by the test itself; the
// bound turns a lost wakeup (or a cancellation that does nothing) into a
// failed check instead of a hung run.
constexpr auto guard = hop_test::scaled(30s);

/// Waits for every future, all of them within one guard period; returns how
/// many did not finish.
template <class T>
int wait_all(const std::vector<hop::future<T>>& fs) {
    const auto deadline = steady::now() + guard;
    int unfinished = 0;
    for (const auto& f : fs) {
        auto left = deadline - steady::now();
        if (left < steady::duration::zero()) left = steady::duration::zero();
        unfinished += !f.wait_for(left);
    }
    return unfinished;
}

hop::task<void> ordered_sleeper(steady::time_point tp, int id, std::vector<int>& out, bool& late) {
    // Armed too close to its deadline, a sleeper might find it already past
    // and return at once, out of order: that trial is then repeated.
    if (steady::now() + 5ms >= tp) late = true;
    co_await hop::sleep_until(tp);
    out.push_back(id);
}

/// Sleeps `n` times on the loop thread after a warm-up; returns how many
/// allocations this thread made during those `n` sleeps.
hop::task<std::size_t> allocations_per_sleeps(int n) {
    for (int i = 0; i < 16; ++i) co_await hop::sleep_for(20us);  // warm-up: heap capacity, Asio's handler cache
    const std::size_t before = hop_test::allocations_on_this_thread;
    for (int i = 0; i < n; ++i) co_await hop::sleep_for(20us);
    co_return hop_test::allocations_on_this_thread - before;
}

/// The same for readiness waits on an fd that stays readable.
hop::task<std::size_t> allocations_per_fd_waits(int fd, int n) {
    for (int i = 0; i < 16; ++i) co_await hop::detail::wait_fd(fd, POLLIN);
    const std::size_t before = hop_test::allocations_on_this_thread;
    for (int i = 0; i < n; ++i) co_await hop::detail::wait_fd(fd, POLLIN);
    co_return hop_test::allocations_on_this_thread - before;
}

}  // namespace

TEST_SUITE("time") {

TEST_CASE("an io_uring readiness wait allocates nothing: the operation lives in the coroutine frame") {
    for_each_backend([](hop::backend b) {
        if (b != hop::backend::io_uring) return;  // epoll keeps one Asio registration per wait
        int p[2];
        REQUIRE(::pipe(p) == 0);
        REQUIRE(::write(p[1], "x", 1) == 1);  // readable from now on
        hop::io_loop loop{{.backend = b}};
        auto f = loop.spawn(allocations_per_fd_waits(p[0], 500));
        f.on_done([&loop](const hop::future<std::size_t>&) { loop.stop(); });
        loop.run();
        REQUIRE(f.done());
        CHECK(f.get() == 0);
        ::close(p[0]);
        ::close(p[1]);
    });
}

TEST_CASE("a timer await allocates nothing: its state lives in the coroutine frame") {
    const std::size_t before = hop_test::allocations_on_this_thread;
    auto probe = std::make_unique<int>(1);
    REQUIRE(hop_test::allocations_on_this_thread == before + 1);  // the counting operator new is the one in use
    for_each_backend([](hop::backend b) {
        hop::io_loop loop{{.backend = b}};
        auto f = loop.spawn(allocations_per_sleeps(500));
        f.on_done([&loop](const hop::future<std::size_t>&) { loop.stop(); });
        loop.run();  // on this thread: the sleeps above run here
        REQUIRE(f.done());
        CHECK(f.get() == 0);
    });
}

TEST_CASE("timers fire in deadline order, equal deadlines in FIFO order") {
    // Offsets from a common base, in spawn order (id = index).
    const std::vector<int> offsets_ms{16, 8, 8, 24, 4, 8, 20, 12, 4, 0};
    std::vector<int> expected(offsets_ms.size());
    for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = static_cast<int>(i);
    std::stable_sort(expected.begin(), expected.end(), [&](int a, int b) { return offsets_ms[a] < offsets_ms[b]; });

    for_each_backend([&](hop::backend b) {
        running_loop rl(b);
        for (int trial = 0; trial < 5; ++trial) {
            std::vector<int> order;  // written on the loop thread only
            bool late = false;
            std::vector<hop::future<void>> fs;
            const auto base = steady::now() + 20ms;
            for (std::size_t i = 0; i < offsets_ms.size(); ++i) {
                fs.push_back(rl.loop().spawn(ordered_sleeper(base + std::chrono::milliseconds(offsets_ms[i]),
                                                             static_cast<int>(i), order, late)));
            }
            REQUIRE(wait_all(fs) == 0);
            if (late) {
                MESSAGE("a sleeper was armed within 5ms of its deadline; trying again");
                continue;
            }
            CHECK(order == expected);
            return;
        }
        FAIL("every trial armed a sleeper too late to judge the order");
    });
}

namespace {

struct at_once_report {
    bool past_suspended = true;
    bool zero_suspended = true;
    bool now_suspended = true;
};

hop::task<at_once_report> sleeps_that_do_not_wait() {
    at_once_report r;
    auto past = hop::sleep_until(steady::now() - 1h);
    hop_test::suspend_spy<hop::detail::sleep_operation> s1{past};
    co_await s1;
    r.past_suspended = s1.suspended;

    auto zero = hop::sleep_for(0ms);
    hop_test::suspend_spy<hop::detail::sleep_operation> s2{zero};
    co_await s2;
    r.zero_suspended = s2.suspended;

    auto epoch = hop::sleep_until(steady::time_point{});
    hop_test::suspend_spy<hop::detail::sleep_operation> s3{epoch};
    co_await s3;
    r.now_suspended = s3.suspended;
    co_return r;
}

}  // namespace

TEST_CASE("sleep_until a past time and sleep_for(0) return at once, without suspending") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto f = rl.loop().spawn(sleeps_that_do_not_wait());
        REQUIRE(f.wait_for(guard));
        auto r = f.get();
        CHECK_FALSE(r.past_suspended);
        CHECK_FALSE(r.zero_suspended);
        CHECK_FALSE(r.now_suspended);
    });
}

TEST_CASE("sleep_for(negative) throws std::invalid_argument naming the value") {
    auto what = what_of<std::invalid_argument>([] { (void)hop::sleep_for(-5ms); });
    CHECK(what.find("-5000000") != std::string::npos);
    what = what_of<std::invalid_argument>([] { (void)hop::sleep_for(std::chrono::duration<double>(-0.25)); });
    CHECK(what.find("-250000000") != std::string::npos);
}

namespace {

hop::task<void> hour_sleeper(hop_test::counted c, hop::promise<void>& started) {
    (void)c;
    started.set_value();
    co_await hop::sleep_for(1h);
}

hop::task<void> sleep_after_gate(hop_test::counted c, hop::future<void> gate, bool& woke) {
    (void)c;
    co_await gate;  // not a cancellation point
    co_await hop::sleep_for(1h);
    woke = true;
}

}  // namespace

TEST_CASE("future.cancel() ends a task sleeping for an hour with cancelled_error") {
    for_each_backend([](hop::backend b) {
        hop_test::counters c;
        {
            running_loop rl(b);
            hop::promise<void> started;
            auto started_f = started.get_future();
            auto f = rl.loop().spawn(hour_sleeper(hop_test::counted{c}, started));
            REQUIRE(started_f.wait_for(guard));
            CHECK(f.cancel());
            CHECK(f.wait_for(guard));  // a broken cancellation would sleep for an hour
            CHECK(f.cancelled());
            CHECK_THROWS_AS(f.get(), hop::cancelled_error);

            // Stop requested before the sleep starts: it throws without waiting.
            hop::promise<void> gate;
            bool woke = false;
            auto g = rl.loop().spawn(sleep_after_gate(hop_test::counted{c}, gate.get_future(), woke));
            CHECK(g.cancel());
            gate.set_value();
            CHECK(g.wait_for(guard));
            CHECK(g.cancelled());
            CHECK_FALSE(woke);
        }
        CHECK(c.alive() == 0);
    });
}

namespace {

hop::task<int> racing_sleeper(hop_test::counted c, std::chrono::microseconds d) {
    (void)c;
    co_await hop::sleep_for(d);
    co_return 1;
}

// Runs on a pool thread and sleeps on `loop`: the timer is armed and
// cancelled by items posted from other threads.
hop::task<int> off_loop_sleeper(hop_test::counted c, hop::io_loop& loop, std::chrono::microseconds d) {
    (void)c;
    co_await hop::detail::sleep_operation(loop, steady::now() + d);
    co_return 1;
}

}  // namespace

TEST_CASE("cancellation race: 1,000 sleeps each cancelled from another thread at a random point") {
    for_each_backend([](hop::backend b) {
        constexpr int n = 1000;
        hop_test::counters c;
        int normal = 0;
        int cancelled = 0;
        {
            hop::cpu_pool pool{2};
            running_loop rl(b);
            std::mt19937 rng(20240611u + static_cast<unsigned>(b));
            std::vector<hop::future<int>> fs;
            fs.reserve(n);
            for (int i = 0; i < n; ++i) {
                const auto d = std::chrono::microseconds(rng() % 200);
                hop::future<int> f;
                if (i % 2 == 0) {
                    f = rl.loop().spawn(racing_sleeper(hop_test::counted{c}, d));
                } else {
                    f = hop::spawn(pool, off_loop_sleeper(hop_test::counted{c}, rl.loop(), d));
                }
                // Cancel at a random point: at once, after a yield, a spin, or a nap.
                switch (rng() % 4) {
                    case 0:
                        break;
                    case 1:
                        std::this_thread::yield();
                        break;
                    case 2: {
                        const auto spins = rng() % 20000;
                        for (std::uint32_t k = 0; k < spins; ++k) {
                            std::atomic_signal_fence(std::memory_order_seq_cst);
                        }
                        break;
                    }
                    default:
                        std::this_thread::sleep_for(std::chrono::microseconds(rng() % 150));
                        break;
                }
                f.cancel();
                fs.push_back(std::move(f));
            }
            REQUIRE(wait_all(fs) == 0);
            int other = 0;
            for (auto& f : fs) {
                if (f.cancelled()) {
                    ++cancelled;
                    CHECK_THROWS_AS(f.get(), hop::cancelled_error);
                } else if (f.get() == 1) {
                    ++normal;
                } else {
                    ++other;
                }
            }
            CHECK(other == 0);
        }
        // The loop and the pool are gone: every frame has been freed.
        CHECK(normal + cancelled == n);
        CHECK(c.alive() == 0);
        MESSAGE(std::string(hop_test::backend_label(b)) << ": " << normal << " slept to the end, " << cancelled << " cancelled");
    });
}

namespace {

struct set_on_destroy {
    bool* flag;
    ~set_on_destroy() { *flag = true; }
};

hop::task<int> slow_task(bool& cleaned, hop_test::counted c) {
    (void)c;
    set_on_destroy cleanup{&cleaned};
    co_await hop::sleep_for(1h);
    co_return 1;
}

struct timeout_report {
    bool timed_out = false;
    bool cleaned_when_caught = false;
    std::string what;
    bool raw_timed_out = false;
};

hop::task<timeout_report> time_out_slow_work(hop_test::counters& c) {
    timeout_report r;
    bool cleaned = false;
    try {
        (void)co_await hop::with_timeout(10ms, slow_task(cleaned, hop_test::counted{c}));
    } catch (const hop::timeout_error& e) {
        r.timed_out = true;
        r.cleaned_when_caught = cleaned;
        r.what = e.what();
    }
    // A plain awaitable (here a sleep) is cancelled the same way.
    try {
        co_await hop::with_timeout(5ms, hop::sleep_for(1h));
    } catch (const hop::timeout_error&) {
        r.raw_timed_out = true;
    }
    co_return r;
}

hop::task<int> quick(int v) {
    co_await hop::sleep_for(1ms);
    co_return v;
}

hop::task<int> quick_failure() {
    co_await hop::sleep_for(1ms);
    throw std::runtime_error("inner failure");
}

hop::task<int> fast_under_timeout() {
    const int a = co_await hop::with_timeout(1h, quick(41));
    co_await hop::with_timeout(std::chrono::hours(1), hop::sleep_for(1ms));
    co_return a + 1;
}

hop::task<std::string> failure_under_timeout() {
    std::string what;
    try {
        (void)co_await hop::with_timeout(1h, quick_failure());
    } catch (const std::runtime_error& e) {
        what = e.what();
    }
    co_return what;
}

// with_timeout around a future: true if it timed out.
template <class T>
hop::task<bool> times_out(hop::future<T> f) {
    try {
        (void)co_await hop::with_timeout(5ms, std::move(f));
    } catch (const hop::timeout_error&) {
        co_return true;
    }
    co_return false;
}

// A plain job: says it started, then blocks its worker until `go` opens.
template <class T>
struct blocks_until_go {
    std::shared_ptr<hop::promise<void>> started;
    hop::future<void> go;
    T value;
    T operator()() const {
        started->set_value();
        go.wait();
        return value;
    }
};

// A coroutine job: records whether its stop was requested once `go` opens.
hop::task<int> records_stop(std::shared_ptr<hop::promise<void>> started, hop::future<void> go,
                            std::atomic<bool>* saw_stop) {
    std::stop_token t = co_await hop::get_stop_token();
    started->set_value();
    go.wait();  // blocks the worker: not a cancellation point
    saw_stop->store(t.stop_requested());
    co_return 1;
}

}  // namespace

TEST_CASE("with_timeout(d, pool.submit(fn)) times out without waiting for fn, and cancels the job") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        // Every job below blocks until the test opens its gate, after the
        // timeout was seen: the timeout cannot have waited for it.
        {
            INFO("a plain job already running: it ends on its own, its result dropped");
            hop_test::counters c;
            {
                hop::cpu_pool pool{1};
                hop::promise<void> go;
                auto started = std::make_shared<hop::promise<void>>();
                auto started_f = started->get_future();
                auto job = pool.submit(
                    blocks_until_go<std::shared_ptr<hop_test::counted>>{started, go.get_future(),
                                                                        std::make_shared<hop_test::counted>(c)});
                REQUIRE(started_f.wait_for(guard));
                auto f = rl.loop().spawn(times_out(job));
                REQUIRE(f.wait_for(guard));
                CHECK(f.get());
                CHECK_FALSE(job.done());  // still blocked
                go.set_value();
                REQUIRE(job.wait_for(guard));
                CHECK_FALSE(job.cancelled());  // cancel() cannot stop a running call
            }
            CHECK(c.alive() == 0);
        }
        {
            INFO("a plain job still queued (the one worker busy): it never runs");
            std::atomic<bool> ran{false};
            hop::cpu_pool pool{1};
            hop::promise<void> go;
            auto started = std::make_shared<hop::promise<void>>();
            auto started_f = started->get_future();
            auto blocker = pool.submit(blocks_until_go<int>{started, go.get_future(), 0});
            REQUIRE(started_f.wait_for(guard));
            auto job = pool.submit([&ran] {
                ran.store(true);
                return 1;
            });
            auto f = rl.loop().spawn(times_out(job));
            REQUIRE(f.wait_for(guard));
            CHECK(f.get());
            CHECK(job.cancelled());
            go.set_value();
            CHECK(blocker.get() == 0);
            CHECK(pool.submit([] { return 2; }).get() == 2);  // the cancelled job was dequeued first
            CHECK_FALSE(ran.load());
        }
        {
            INFO("a coroutine job: its stop token is requested");
            std::atomic<bool> saw_stop{false};
            hop::cpu_pool pool{1};
            hop::promise<void> go;
            auto started = std::make_shared<hop::promise<void>>();
            auto started_f = started->get_future();
            auto job = pool.submit(records_stop, started, go.get_future(), &saw_stop);
            REQUIRE(started_f.wait_for(guard));
            auto f = rl.loop().spawn(times_out(job));
            REQUIRE(f.wait_for(guard));
            CHECK(f.get());
            CHECK_FALSE(job.done());
            go.set_value();
            REQUIRE(job.wait_for(guard));
            CHECK(saw_stop.load());
        }
    });
}

TEST_CASE("with_timeout on slow work throws timeout_error after the inner work was cancelled and ended") {
    for_each_backend([](hop::backend b) {
        hop_test::counters c;
        {
            running_loop rl(b);
            auto f = rl.loop().spawn(time_out_slow_work(c));
            REQUIRE(f.wait_for(guard));
            auto r = f.get();
            CHECK(r.timed_out);
            CHECK(r.cleaned_when_caught);
            CHECK(r.what.find("timed out") != std::string::npos);
            CHECK(r.raw_timed_out);
        }
        CHECK(c.alive() == 0);
    });
}

TEST_CASE("with_timeout on fast work returns its value or its exception, without waiting for the deadline") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto f = rl.loop().spawn(fast_under_timeout());
        CHECK(f.wait_for(guard));  // the hour-long timer must be cancelled, not waited for
        CHECK(f.get() == 42);

        auto g = rl.loop().spawn(failure_under_timeout());
        CHECK(g.wait_for(guard));
        CHECK(g.get() == "inner failure");
    });
}

TEST_CASE("with_timeout(negative) throws std::invalid_argument naming the value") {
    auto what = what_of<std::invalid_argument>([] { (void)hop::with_timeout(-3ms, quick(1)); });
    CHECK(what.find("-3000000") != std::string::npos);
}

namespace {

hop::task<void> short_sleeper(int i, int& fired) {
    co_await hop::sleep_for(std::chrono::microseconds(500 + (i % 101) * 10));
    ++fired;
}

hop::task<int> many_timers(int n) {
    int fired = 0;
    std::vector<hop::task<void>> ts;
    ts.reserve(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) ts.push_back(short_sleeper(i, fired));
    co_await hop::when_all(std::move(ts));
    co_return fired;
}

}  // namespace

TEST_CASE("100,000 concurrent short timers all fire") {
    for_each_backend([](hop::backend b) {
        running_loop rl(b);
        auto f = rl.loop().spawn(many_timers(100'000));
        REQUIRE(f.wait_for(guard));
        CHECK(f.get() == 100'000);
    });
}

namespace {

hop::task<int> sleep_on_the_pool(hop::cpu_pool& pool) {
    co_await pool.schedule();
    co_await hop::sleep_for(1ms);
    co_return pool.running_in_this_thread() ? 1 : 0;
}

}  // namespace

TEST_CASE("a sleep awaited on a cpu_pool is timed by the default loop and resumes on the pool") {
    if (!hop_test::env_backend_available()) return;
    hop::cpu_pool pool{1};
    auto f = hop::spawn(pool, sleep_on_the_pool(pool));
    REQUIRE(f.wait_for(guard));
    CHECK(f.get() == 1);
}

}  // TEST_SUITE
