#include <hop/cpu_pool.hpp>

#include <hop/future.hpp>
#include <hop/task.hpp>

#include "support/counted.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <ctime>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <ranges>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

// A failure guard only: every wait below is released by the test itself; the
// bound just turns a lost wakeup into a failed check instead of a hung run.
constexpr auto guard = hop_test::scaled(60s);

/// A one-shot signal built on hop's own promise/future.
struct gate {
    hop::promise<void> p;
    hop::future<void> f = p.get_future();
    void open() { p.set_value(); }
    bool wait() const { return f.wait_for(guard); }
};

/// Captures what is written to stderr (fd 2) while it lives.
class stderr_capture {
public:
    stderr_capture() {
        std::fflush(stderr);
        m_file = std::tmpfile();
        REQUIRE(m_file != nullptr);
        m_saved = ::dup(2);
        REQUIRE(m_saved >= 0);
        REQUIRE(::dup2(::fileno(m_file), 2) >= 0);
    }
    ~stderr_capture() {
        restore();
        if (m_file) std::fclose(m_file);
    }
    stderr_capture(const stderr_capture&) = delete;
    stderr_capture& operator=(const stderr_capture&) = delete;

    /// Restores stderr and returns what was written meanwhile.
    std::string text() {
        restore();
        std::string out;
        std::rewind(m_file);
        char buf[512];
        std::size_t n;
        while ((n = std::fread(buf, 1, sizeof buf, m_file)) > 0) out.append(buf, n);
        return out;
    }

private:
    void restore() {
        if (m_saved < 0) return;
        std::fflush(stderr);
        ::dup2(m_saved, 2);
        ::close(m_saved);
        m_saved = -1;
    }
    std::FILE* m_file = nullptr;
    int m_saved = -1;
};

/// Counts down to zero; wait() blocks until it gets there (or `guard`).
class countdown {
public:
    explicit countdown(int n) : m_left(n) {}
    void arrive() {
        std::lock_guard lock(m_mutex);
        if (--m_left == 0) m_cv.notify_all();
    }
    bool wait() {
        std::unique_lock lock(m_mutex);
        return m_cv.wait_for(lock, guard, [this] { return m_left == 0; });
    }

private:
    std::mutex m_mutex;
    std::condition_variable m_cv;
    int m_left;
};

/// A thread-local whose destructor runs as its thread ends, after the
/// thread's function (for a pool worker: all of the pool's code) returned.
struct exit_probe {
    std::shared_ptr<countdown> on_exit;
    ~exit_probe() {
        if (on_exit) on_exit->arrive();
    }
};
thread_local exit_probe tl_exit_probe;

double cpu_seconds(clockid_t clock) {
    timespec ts{};
    ::clock_gettime(clock, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

// ---- coroutines (free functions: their parameters live in the frame) -----

hop::task<bool> hop_onto(hop::cpu_pool& pool, std::thread::id caller) {
    co_await pool.schedule();
    co_return pool.running_in_this_thread() && std::this_thread::get_id() != caller;
}

hop::task<bool> schedule_twice(hop::cpu_pool& pool) {
    co_await pool.schedule();
    const auto first = std::this_thread::get_id();
    // Already on the pool: await_suspend must say "do not suspend" and post nothing.
    auto again = pool.schedule();
    const bool would_suspend = again.await_suspend(std::noop_coroutine());
    co_await pool.schedule();
    co_return !would_suspend && std::this_thread::get_id() == first && pool.running_in_this_thread();
}

hop::task<int> wait_then_schedule(hop::cpu_pool& other, gate* started, hop::future<void> go,
                                  std::atomic<bool>* reached) {
    started->open();
    go.wait();  // blocks the worker, not a cancellation point (co_await go is one)
    co_await other.schedule();  // the stop was requested by now: throws here
    reached->store(true);
    co_return 1;
}

hop::task<int> schedule_from_queue(hop::cpu_pool& target, gate* about_to, std::atomic<bool>* reached) {
    about_to->open();
    co_await target.schedule();
    reached->store(true);
    co_return 2;
}

hop::task<bool> schedule_after_shutdown(hop::cpu_pool& pool) {
    try {
        co_await pool.schedule();
    } catch (const hop::executor_shutdown_error&) {
        co_return true;
    }
    co_return false;
}

hop::task<int> deref_later(std::unique_ptr<int> p, hop::future<int> more) {
    int m = co_await more;
    co_return *p + m;
}

hop::task<> coroutine_that_throws() {
    co_await hop::cancellation_point();
    throw std::runtime_error("coroutine boom");
}

hop::task<int> plain_value(int v) { co_return v; }

/// Calls map from a pool thread (its chunks go onto that worker's own deque)
/// and awaits it without blocking the worker.
hop::task<long> map_from_inside(hop::cpu_pool& pool, int n) {
    std::vector<int> in(static_cast<std::size_t>(n));
    for (int i = 0; i < n; ++i) in[static_cast<std::size_t>(i)] = i;
    auto twice = [](int x) { return 2L * x; };
    hop::future<std::vector<long>> f = pool.map(twice, std::move(in), 3);
    std::vector<long> out = co_await std::move(f);
    long sum = 0;
    for (std::size_t i = 0; i < out.size(); ++i) {
        if (out[i] != 2L * static_cast<long>(i)) co_return -1;
        sum += out[i];
    }
    co_return sum;
}

}  // namespace

TEST_SUITE("cpu_pool") {

// ---- construction ----------------------------------------------------------

TEST_CASE("a thread count of 0 is refused with a message naming the value") {
    try {
        hop::cpu_pool pool{0};
        FAIL("cpu_pool{0} did not throw");
    } catch (const std::invalid_argument& e) {
        CHECK(std::string(e.what()).find("count 0") != std::string::npos);
    }
}

TEST_CASE("absurd thread counts are refused with a message naming the value") {
    for (std::size_t n : {std::size_t{1'000'000}, std::numeric_limits<std::size_t>::max()}) {
        CAPTURE(n);
        try {
            hop::cpu_pool pool{n};
            FAIL("an absurd thread count did not throw");
        } catch (const std::invalid_argument& e) {
            CHECK(std::string(e.what()).find(std::to_string(n)) != std::string::npos);
        }
    }
}

TEST_CASE("size() is the number of workers") {
    hop::cpu_pool one{1};
    CHECK(one.size() == 1);
    hop::cpu_pool three{3};
    CHECK(three.size() == 3);
    hop::cpu_pool dflt;
    CHECK(dflt.size() == std::max(1u, std::thread::hardware_concurrency()));
    CHECK_FALSE(three.running_in_this_thread());
    CHECK_FALSE(three.is_shutdown());
}

// ---- submit ----------------------------------------------------------------

TEST_CASE("submit passes arguments by copy or move") {
    hop::cpu_pool pool{2};

    CHECK(pool.submit([](int a, int b) { return a + b; }, 2, 3).get() == 5);

    SUBCASE("move-only arguments and callables") {
        auto by_value = [](std::unique_ptr<int> p) { return *p * 2; };
        CHECK(pool.submit(by_value, std::make_unique<int>(21)).get() == 42);
        auto owner = [p = std::make_unique<int>(7)] { return *p; };
        CHECK(pool.submit(std::move(owner)).get() == 7);
        auto mutating = [n = 0]() mutable { return ++n; };
        CHECK(pool.submit(mutating).get() == 1);
    }
    SUBCASE("lvalue arguments are copied, the caller's stay untouched") {
        std::string s = "abc";
        auto append = [](std::string x) {
            x += "!";
            return x;
        };
        CHECK(pool.submit(append, s).get() == "abc!");
        CHECK(s == "abc");

        hop_test::counters c;
        {
            hop_test::counted obj{c};
            auto take = [](const hop_test::counted&) { return 1; };
            auto f = pool.submit(take, obj);
            CHECK(f.get() == 1);
        }
        pool.shutdown();  // the job nodes are gone once the workers exited
        CHECK(c.alive() == 0);
        CHECK(c.constructed.load() >= 2);  // the original plus at least one copy
    }
    SUBCASE("std::ref passes a reference") {
        int x = 0;
        auto set = [](int& r) { r = 5; };
        pool.submit(set, std::ref(x)).get();
        CHECK(x == 5);
    }
}

TEST_CASE("submit: void and value results, exceptions reach get()") {
    hop::cpu_pool pool{2};
    std::atomic<bool> ran{false};
    hop::future<void> v = pool.submit([&ran] { ran = true; });
    v.get();
    CHECK(ran.load());
    CHECK(v.done());

    hop::future<std::string> s = pool.submit([] { return std::string(1000, 'x'); });
    CHECK(s.get().size() == 1000);

    hop::future<int> bad = pool.submit([]() -> int { throw std::runtime_error("boom 7"); });
    CHECK_THROWS_WITH_AS(bad.get(), "boom 7", std::runtime_error);
    CHECK(bad.done());
    CHECK_FALSE(bad.cancelled());

    hop::future<void> bad_void = pool.submit([] { throw std::out_of_range("range!"); });
    CHECK_THROWS_AS(bad_void.get(), std::out_of_range);

    // The pool is not hurt by failing jobs.
    CHECK(pool.submit([] { return 3; }).get() == 3);
}

TEST_CASE("submit runs the job on a pool thread") {
    hop::cpu_pool pool{2};
    auto on_pool = [&pool] { return pool.running_in_this_thread() ? std::this_thread::get_id() : std::thread::id{}; };
    auto id = pool.submit(on_pool).get();
    CHECK(id != std::thread::id{});
    CHECK(id != std::this_thread::get_id());
}

TEST_CASE("submit of a coroutine callable keeps its captures alive while it runs") {
    hop_test::counters c;
    gate started;
    hop::promise<int> more;
    std::atomic<bool> began_on_pool{false};
    {
        hop::cpu_pool pool{2};
        hop::future<int> fut;
        {
            // Captures: a counted object, a heap value, and a future it awaits
            // mid-way, so the frame outlives this statement for sure.
            auto fn = [obj = hop_test::counted(c), p = std::make_shared<int>(40), m = more.get_future(), &started,
                       &pool, &began_on_pool](int add) -> hop::task<int> {
                began_on_pool = pool.running_in_this_thread();
                started.open();
                int extra = co_await m;
                (void)obj;
                co_return *p + add + extra;
            };
            fut = pool.submit(std::move(fn), 1);
        }
        REQUIRE(started.wait());
        CHECK(began_on_pool.load());
        CHECK(fut.running());
        CHECK(c.alive() >= 1);  // the job still holds its captures
        more.set_value(1);
        CHECK(fut.get() == 42);
        pool.shutdown();
    }
    CHECK(c.alive() == 0);
}

TEST_CASE("submit of coroutine functions: arguments, values, errors") {
    hop::cpu_pool pool{2};
    hop::promise<int> more;
    auto f = pool.submit(deref_later, std::make_unique<int>(40), more.get_future());
    more.set_value(2);
    CHECK(f.get() == 42);

    CHECK(pool.submit(plain_value, 9).get() == 9);

    hop::future<void> bad = pool.submit(coroutine_that_throws);
    CHECK_THROWS_WITH_AS(bad.get(), "coroutine boom", std::runtime_error);
}

// ---- post ------------------------------------------------------------------

TEST_CASE("post runs the callable on the pool") {
    hop::promise<bool> p;
    auto f = p.get_future();
    hop::cpu_pool pool{2};
    pool.post([&p, &pool, owned = std::make_unique<int>(1)] {
        p.set_value(pool.running_in_this_thread() && *owned == 1);
    });
    CHECK(f.get());
}

TEST_CASE("post: an escaping exception is reported on stderr and the worker lives on") {
    std::string text;
    {
        stderr_capture capture;
        hop::cpu_pool pool{1};
        pool.post([] { throw std::runtime_error("posted boom"); });
        pool.post([] { throw 42; });
        // One worker runs the queue in order: once this has run, so have both.
        const bool after = pool.submit([] { return true; }).get();
        CHECK(after);
        text = capture.text();
    }
    CHECK(text.find("posted boom") != std::string::npos);
    CHECK(text.find("unknown exception") != std::string::npos);
}

// ---- map -------------------------------------------------------------------

TEST_CASE("map returns results in input order") {
    hop::cpu_pool pool{3};
    std::vector<int> in(10'000);
    for (int i = 0; i < 10'000; ++i) in[static_cast<std::size_t>(i)] = i;
    auto twice = [](int x) { return 2L * x; };

    SUBCASE("default chunking") {
        auto out = pool.map(twice, in).get();
        REQUIRE(out.size() == in.size());
        for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == 2L * static_cast<long>(i));
    }
    SUBCASE("chunk_size 1") {
        auto out = pool.map(twice, in, 1).get();
        REQUIRE(out.size() == in.size());
        for (std::size_t i = 0; i < out.size(); ++i) REQUIRE(out[i] == 2L * static_cast<long>(i));
    }
    SUBCASE("chunk_size larger than the input") {
        auto out = pool.map(twice, in, 1'000'000).get();
        REQUIRE(out.size() == in.size());
        CHECK(out.back() == 19'998);
    }
    SUBCASE("chunk_size SIZE_MAX") {
        auto out = pool.map(twice, in, std::numeric_limits<std::size_t>::max()).get();
        REQUIRE(out.size() == in.size());
        CHECK(out.front() == 0);
        CHECK(out.back() == 19'998);
    }
    SUBCASE("a lazy view as input") {
        auto square = [](int x) { return std::to_string(x * x); };
        auto out = pool.map(square, std::views::iota(0, 500), 7).get();
        REQUIRE(out.size() == 500);
        for (int i = 0; i < 500; ++i) REQUIRE(out[static_cast<std::size_t>(i)] == std::to_string(i * i));
    }
}

TEST_CASE("map of an empty input is an empty vector at once") {
    hop::cpu_pool pool{2};
    std::atomic<int> calls{0};
    auto fn = [&calls](int x) {
        ++calls;
        return x;
    };
    auto f = pool.map(fn, std::vector<int>{});
    CHECK(f.done());
    CHECK(f.get().empty());
    CHECK(calls.load() == 0);
}

TEST_CASE("map rethrows the first failure in input order, not in time order") {
    hop::cpu_pool pool{2};
    gate seven_failed;
    auto fn = [&seven_failed](int x) {
        if (x == 7) {
            seven_failed.open();
            throw std::runtime_error("item 7");
        }
        if (x == 3) {
            // Item 3 (chunk 0) fails only after item 7 (chunk 1) has failed.
            if (!seven_failed.wait()) throw std::logic_error("item 7 never ran");
            throw std::runtime_error("item 3");
        }
        return x;
    };
    std::vector<int> in(12);
    for (int i = 0; i < 12; ++i) in[static_cast<std::size_t>(i)] = i;
    auto f = pool.map(fn, in, 4);  // chunks [0,4) [4,8) [8,12)
    REQUIRE(f.wait_for(guard));
    CHECK_FALSE(f.cancelled());
    CHECK_THROWS_WITH_AS(f.get(), "item 3", std::runtime_error);
}

TEST_CASE("map skips the items after a failure") {
    hop::cpu_pool pool{1};  // one worker runs the chunks in order
    std::atomic<int> calls{0};
    auto fn = [&calls](int x) {
        ++calls;
        if (x == 1) throw std::runtime_error("item 1");
        return x;
    };
    std::vector<int> in(100, 0);
    for (int i = 0; i < 100; ++i) in[static_cast<std::size_t>(i)] = i;
    auto f = pool.map(fn, in, 4);
    CHECK_THROWS_WITH_AS(f.get(), "item 1", std::runtime_error);
    pool.shutdown();
    CHECK(calls.load() == 2);  // items 0 and 1; the rest of chunk 0 and every later chunk skipped
}

TEST_CASE("map: cancel() stops the chunks not yet started") {
    std::atomic<int> calls{0};
    gate first_running, release;
    hop::cpu_pool pool{1};
    auto fn = [&](int x) {
        if (calls++ == 0) {
            first_running.open();
            (void)release.wait();
        }
        return x;
    };
    std::vector<int> in(50, 1);

    SUBCASE("while the first chunk runs") {
        auto f = pool.map(fn, in, 1);
        REQUIRE(first_running.wait());
        CHECK(f.cancel());
        release.open();
        REQUIRE(f.wait_for(guard));
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        pool.shutdown();
        CHECK(calls.load() == 1);
    }
    SUBCASE("before any chunk started") {
        gate blocker_running, unblock;
        auto blocker = pool.submit([&] {
            blocker_running.open();
            (void)unblock.wait();
        });
        REQUIRE(blocker_running.wait());
        auto f = pool.map(fn, in, 1);
        CHECK(f.cancel());
        CHECK(f.cancelled());  // at once: nothing had started
        unblock.open();
        release.open();
        pool.shutdown();
        CHECK(calls.load() == 0);
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
    }
}

TEST_CASE("map from a pool thread, awaited by a coroutine") {
    SUBCASE("one worker") {
        hop::cpu_pool pool{1};
        CHECK(pool.submit(map_from_inside, std::ref(pool), 1000).get() == 999L * 1000);
    }
    SUBCASE("several workers") {
        hop::cpu_pool pool{3};
        CHECK(pool.submit(map_from_inside, std::ref(pool), 1000).get() == 999L * 1000);
    }
}

TEST_CASE("map destroys every item and result exactly once") {
    hop_test::counters c;
    {
        hop::cpu_pool pool{2};
        std::vector<hop_test::counted> items;
        for (int i = 0; i < 100; ++i) items.emplace_back(c);
        auto copy = [](hop_test::counted x) { return x; };
        auto out = pool.map(copy, std::move(items), 3).get();
        CHECK(out.size() == 100);
    }
    CHECK(c.alive() == 0);
}

// ---- schedule --------------------------------------------------------------

TEST_CASE("schedule() moves a coroutine onto a pool thread") {
    hop::cpu_pool pool{2};
    CHECK(hop::sync_wait(hop_onto(pool, std::this_thread::get_id())));
    // A thread of another pool is not one of this pool's.
    hop::cpu_pool other{1};
    CHECK_FALSE(other.submit([&pool] { return pool.running_in_this_thread(); }).get());
}

TEST_CASE("schedule() on the pool it already runs on does not requeue") {
    hop::cpu_pool pool{2};
    CHECK(hop::sync_wait(schedule_twice(pool)));
    // From a plain job as well.
    auto probe = [&pool] {
        auto op = pool.schedule();
        return op.await_suspend(std::noop_coroutine());
    };
    CHECK_FALSE(pool.submit(probe).get());
}

TEST_CASE("schedule() with a stop requested throws cancelled_error") {
    hop::cpu_pool pool{1};
    hop::cpu_pool other{1};
    std::atomic<bool> reached{false};

    SUBCASE("requested before the await") {
        gate started;
        hop::promise<void> go;
        auto f = pool.submit(wait_then_schedule, std::ref(other), &started, go.get_future(), &reached);
        REQUIRE(started.wait());
        CHECK(f.cancel());  // running: requests stop
        go.set_value();
        REQUIRE(f.wait_for(guard));
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK_FALSE(reached.load());
    }
    SUBCASE("requested while waiting in the queue") {
        gate blocker_running, unblock, about_to;
        auto blocker = other.submit([&] {
            blocker_running.open();
            (void)unblock.wait();
        });
        REQUIRE(blocker_running.wait());
        auto f = pool.submit(schedule_from_queue, std::ref(other), &about_to, &reached);
        REQUIRE(about_to.wait());
        CHECK(f.cancel());
        unblock.open();
        REQUIRE(f.wait_for(guard));
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK_FALSE(reached.load());
        blocker.get();
    }
}

// ---- shutdown --------------------------------------------------------------

TEST_CASE("after shutdown() submit, post, map and schedule throw executor_shutdown_error") {
    hop_test::counters c;
    {
        hop::cpu_pool pool{2};
        pool.shutdown();
        CHECK(pool.is_shutdown());
        auto job = [obj = hop_test::counted(c)] { return 1; };
        CHECK_THROWS_AS(pool.submit(job), hop::executor_shutdown_error);
        auto coro = [obj = hop_test::counted(c)]() -> hop::task<int> { co_return 1; };
        CHECK_THROWS_AS(pool.submit(coro), hop::executor_shutdown_error);
        CHECK_THROWS_AS(pool.submit(plain_value, 1), hop::executor_shutdown_error);
        CHECK_THROWS_AS(pool.post(job), hop::executor_shutdown_error);
        auto id = [](int x) { return x; };
        CHECK_THROWS_AS(pool.map(id, std::vector<int>{1, 2, 3}), hop::executor_shutdown_error);
        CHECK_THROWS_AS(pool.map(id, std::vector<int>{}), hop::executor_shutdown_error);
        CHECK_THROWS_AS(hop::spawn(pool, plain_value(3)), hop::executor_shutdown_error);
        CHECK(hop::sync_wait(schedule_after_shutdown(pool)));
        std::vector<hop_test::counted> items;
        for (int i = 0; i < 5; ++i) items.emplace_back(c);
        auto copy = [](hop_test::counted x) { return x; };
        CHECK_THROWS_AS(pool.map(copy, items), hop::executor_shutdown_error);
    }
    CHECK(c.alive() == 0);  // nothing refused was leaked
}

TEST_CASE("shutdown(true) waits for queued work; nothing is lost") {
    hop::cpu_pool pool{1};
    gate running;
    std::atomic<int> ran{0};
    auto blocker = pool.submit([&] {
        running.open();
        // Holds the only worker until shutdown() has begun, so the jobs below
        // are still queued when it does.
        while (!pool.is_shutdown()) std::this_thread::yield();
        return -1;
    });
    REQUIRE(running.wait());
    std::vector<hop::future<int>> futs;
    for (int i = 0; i < 200; ++i) {
        futs.push_back(pool.submit([&ran, i] {
            ++ran;
            return i;
        }));
    }
    for (int i = 0; i < 50; ++i) pool.post([&ran] { ++ran; });
    auto m = pool.map([](int x) { return x + 1; }, std::vector<int>(100, 1), 10);
    pool.shutdown(true);
    CHECK(ran.load() == 250);
    CHECK(blocker.done());
    CHECK(m.done());
    for (int i = 0; i < 200; ++i) {
        REQUIRE(futs[static_cast<std::size_t>(i)].done());
        CHECK(futs[static_cast<std::size_t>(i)].get() == i);
    }
    CHECK(m.get() == std::vector<int>(100, 2));
}

TEST_CASE("shutdown(true, cancel_pending) cancels queued jobs; the running one finishes") {
    hop_test::counters c;
    std::atomic<int> ran{0};
    std::atomic<bool> posted_ran{false};
    {
        hop::cpu_pool pool{1};
        gate running, release;
        auto blocker = pool.submit([&] {
            running.open();
            (void)release.wait();
            return 7;
        });
        REQUIRE(running.wait());

        std::vector<hop::future<int>> jobs;
        for (int i = 0; i < 20; ++i) {
            jobs.push_back(pool.submit([&ran, obj = hop_test::counted(c)] { return ++ran; }));
        }
        auto coro = [&ran, obj = hop_test::counted(c)]() -> hop::task<int> { co_return ++ran; };
        hop::future<int> coro_fut = pool.submit(coro);
        auto count = [&ran](const hop_test::counted&) { return ++ran; };
        std::vector<hop_test::counted> items;
        for (int i = 0; i < 5; ++i) items.emplace_back(c);
        auto map_fut = pool.map(count, std::move(items), 1);
        // A posted callable cannot be cancelled (it has no future): it still runs.
        pool.post([&posted_ran] { posted_ran = true; });

        // Releases the running job once every pending one has been cancelled,
        // i.e. while shutdown() below is waiting for the worker.
        std::thread releaser([&] {
            for (auto& f : jobs) (void)f.wait_for(guard);
            (void)coro_fut.wait_for(guard);
            (void)map_fut.wait_for(guard);
            release.open();
        });
        pool.shutdown(true, true);
        releaser.join();

        CHECK(blocker.get() == 7);
        for (auto& f : jobs) {
            CHECK(f.cancelled());
            CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        }
        CHECK(coro_fut.cancelled());
        CHECK_THROWS_AS(coro_fut.get(), hop::cancelled_error);
        CHECK(map_fut.cancelled());
        CHECK_THROWS_AS(map_fut.get(), hop::cancelled_error);
        CHECK(posted_ran.load());
        CHECK(ran.load() == 0);
    }
    CHECK(c.alive() == 0);
}

TEST_CASE("shutdown(true, cancel_pending) also cancels jobs queued on a worker's own deque") {
    hop_test::counters c;
    std::atomic<int> ran{0};
    {
        hop::cpu_pool pool{1};
        gate pushed, release;
        std::vector<hop::future<int>> subs;  // written by the job before `pushed` opens
        auto job = [&] {
            for (int i = 0; i < 10; ++i) {
                subs.push_back(pool.submit([&ran, obj = hop_test::counted(c)] { return ++ran; }));
            }
            pushed.open();
            (void)release.wait();
            return 1;
        };
        auto outer = pool.submit(job);
        REQUIRE(pushed.wait());
        std::thread releaser([&] {
            for (auto& f : subs) (void)f.wait_for(guard);
            release.open();
        });
        pool.shutdown(true, true);
        releaser.join();
        CHECK(outer.get() == 1);
        REQUIRE(subs.size() == 10);
        for (auto& f : subs) CHECK(f.cancelled());
        CHECK(ran.load() == 0);
    }
    CHECK(c.alive() == 0);
}

TEST_CASE("shutdown(true) from a pool thread does not join itself") {
    SUBCASE("one worker") {
        hop::cpu_pool pool{1};
        auto f = pool.submit([&pool] {
            pool.shutdown(true);
            return pool.is_shutdown();
        });
        CHECK(f.get());
    }
    SUBCASE("several workers, more work queued behind it") {
        hop::cpu_pool pool{3};
        std::atomic<int> ran{0};
        gate running, release;
        auto f = pool.submit([&] {
            running.open();
            (void)release.wait();
            pool.shutdown(true);  // waits for the queue below to drain
            return ran.load();
        });
        REQUIRE(running.wait());
        for (int i = 0; i < 100; ++i) pool.post([&ran] { ++ran; });
        release.open();
        CHECK(f.get() == 100);
    }
    SUBCASE("while the destructor is shutting the pool down") {
        std::atomic<bool> returned{false};
        {
            hop::cpu_pool pool{2};
            gate running;
            pool.post([&] {
                running.open();
                while (!pool.is_shutdown()) std::this_thread::yield();
                pool.shutdown(true);
                returned = true;
            });
            REQUIRE(running.wait());
        }  // ~cpu_pool: shutdown(true) racing the job's own shutdown(true)
        CHECK(returned.load());
    }
    SUBCASE("two pool threads at once") {
        std::atomic<int> returned{0};
        {
            hop::cpu_pool pool{2};
            std::atomic<int> arrived{0};
            auto job = [&] {
                ++arrived;
                while (arrived.load() < 2) std::this_thread::yield();
                pool.shutdown(true);
                ++returned;
            };
            pool.post(job);
            pool.post(job);
            while (arrived.load() < 2) std::this_thread::yield();
        }
        CHECK(returned.load() == 2);
    }
}

TEST_CASE("a job may destroy its own pool: queued work still runs, every worker thread ends") {
    std::size_t threads = 1;
    SUBCASE("one worker") { threads = 1; }
    SUBCASE("two workers") { threads = 2; }
    SUBCASE("three workers") { threads = 3; }
    CAPTURE(threads);

    auto pool = std::make_unique<hop::cpu_pool>(threads);
    auto ended = std::make_shared<countdown>(static_cast<int>(threads));
    {
        // One exit probe per worker thread: the jobs below meet before any
        // returns, so they run on `threads` different workers.
        std::atomic<std::size_t> arrived{0};
        gate all_here;
        std::vector<hop::future<void>> probes;
        for (std::size_t k = 0; k < threads; ++k) {
            probes.push_back(pool->submit([&, ended] {
                tl_exit_probe.on_exit = ended;
                if (++arrived == threads) all_here.open();
                (void)all_here.wait();
            }));
        }
        for (auto& f : probes) REQUIRE(f.wait_for(guard));
    }

    std::atomic<int> ran{0};
    gate go, deleted;
    std::vector<hop::future<int>> own;  // written by the job before `deleted` opens
    pool->post([&] {
        (void)go.wait();
        // Onto this worker's own deque, behind the job that deletes the pool.
        for (int i = 0; i < 10; ++i) {
            own.push_back(pool->submit([&ran, i] {
                ++ran;
                return i;
            }));
        }
        pool.reset();  // ~cpu_pool on one of its own workers
        deleted.open();
    });
    std::vector<hop::future<int>> queued;  // outside submissions queued behind it
    for (int i = 0; i < 100; ++i) {
        queued.push_back(pool->submit([&ran, i] {
            ++ran;
            return i;
        }));
    }
    go.open();  // from here on only the job touches `pool`

    REQUIRE(deleted.wait());
    REQUIRE(ended->wait());  // every worker thread has left the pool's code
    CHECK(ran.load() == 110);
    REQUIRE(own.size() == 10);
    for (int i = 0; i < 10; ++i) CHECK(own[static_cast<std::size_t>(i)].get() == i);
    for (int i = 0; i < 100; ++i) CHECK(queued[static_cast<std::size_t>(i)].get() == i);
}

TEST_CASE("the destructor drains queued work") {
    std::atomic<int> ran{0};
    std::vector<hop::future<int>> futs;
    {
        hop::cpu_pool pool{1};
        gate running;
        pool.post([&] {
            running.open();
            while (!pool.is_shutdown()) std::this_thread::yield();
        });
        REQUIRE(running.wait());
        for (int i = 0; i < 100; ++i) {
            futs.push_back(pool.submit([&ran, i] {
                ++ran;
                return i;
            }));
        }
    }
    CHECK(ran.load() == 100);
    for (int i = 0; i < 100; ++i) {
        REQUIRE(futs[static_cast<std::size_t>(i)].done());
        CHECK(futs[static_cast<std::size_t>(i)].get() == i);
    }
}

TEST_CASE("shutdown is idempotent") {
    hop::cpu_pool pool{2};
    CHECK(pool.submit([] { return 1; }).get() == 1);
    pool.shutdown(false);
    pool.shutdown(true);
    pool.shutdown(true, true);
    pool.shutdown(false, true);
    CHECK(pool.is_shutdown());
}  // and the destructor's shutdown(true) once more

// ---- work stealing, the default pool, parking -------------------------------

TEST_CASE("one thread's backlog does not hold up another posting thread's work") {
    // One worker, held by a job while two outside threads post: 1000 jobs
    // from the first, then one from the second. Each posting thread has its
    // own injection queue and the worker takes from them in turn, so the
    // second thread's job runs long before the first thread's backlog is
    // through (with one shared FIFO it would run last).
    hop::cpu_pool pool{1};
    gate running, release;
    pool.post([&] {
        running.open();
        (void)release.wait();
    });
    REQUIRE(running.wait());

    std::mutex m;
    std::vector<int> order;  // 0..999: the first thread's jobs; 1000: the second's
    auto record = [&](int id) {
        std::lock_guard lock(m);
        order.push_back(id);
    };
    std::vector<hop::future<void>> futs;
    std::thread backlog([&] {
        for (int i = 0; i < 1000; ++i) futs.push_back(pool.submit(record, i));
    });
    backlog.join();
    hop::future<void> late;
    std::thread other([&] { late = pool.submit(record, 1000); });
    other.join();
    release.open();

    REQUIRE(late.wait_for(guard));
    for (auto& f : futs) REQUIRE(f.wait_for(guard));
    std::lock_guard lock(m);
    REQUIRE(order.size() == 1001);
    const auto at = static_cast<std::size_t>(std::find(order.begin(), order.end(), 1000) - order.begin());
    CAPTURE(at);
    CHECK(at < 100);
}

TEST_CASE("jobs pushed onto one worker's deque are stolen by another") {
    hop::cpu_pool pool{2};
    std::mutex m;
    std::set<std::thread::id> seen;
    gate two_threads;
    constexpr int sub_jobs = 16;

    // Each sub-job records its thread and holds that thread until a second
    // one has shown up: with the submitting worker blocked, only a thief can
    // run the rest, so this ends only if stealing works.
    auto sub = [&] {
        {
            std::lock_guard lock(m);
            if (seen.insert(std::this_thread::get_id()).second && seen.size() == 2) two_threads.open();
        }
        return two_threads.wait() && pool.running_in_this_thread();
    };
    auto outer = [&] {
        std::vector<hop::future<bool>> subs;
        for (int i = 0; i < sub_jobs; ++i) subs.push_back(pool.submit(sub));  // onto this worker's own deque
        return subs;
    };
    auto subs = pool.submit(outer).get();
    REQUIRE(subs.size() == sub_jobs);
    for (auto& f : subs) CHECK(f.get());
    CHECK(seen.size() == 2);
}

TEST_CASE("hop::cpu() is one process-wide pool that works") {
    hop::cpu_pool& a = hop::cpu();
    hop::cpu_pool& b = hop::cpu();
    CHECK(&a == &b);
    CHECK(a.size() == std::max(1u, std::thread::hardware_concurrency()));
    CHECK(a.submit([] { return hop::cpu().running_in_this_thread(); }).get());
    CHECK(hop::sync_wait(hop_onto(hop::cpu(), std::this_thread::get_id())));
}

TEST_CASE("idle workers park instead of spinning") {
    // Each worker's own CPU clock is read while this thread burns a fixed
    // amount of CPU time. Spinning workers would use about as much as this
    // thread does; parked ones use next to nothing. The bound is a quarter
    // of it: a relation between CPU clocks, not a wall-clock deadline.
    hop::cpu_pool pool{2};
    std::atomic<int> arrived{0};
    gate both;
    auto clock_of_worker = [&] {
        clockid_t id{};
        ::pthread_getcpuclockid(::pthread_self(), &id);
        if (++arrived == 2) both.open();
        (void)both.wait();  // so the two jobs run on two different workers
        return id;
    };
    auto c1 = pool.submit(clock_of_worker);
    auto c2 = pool.submit(clock_of_worker);
    const clockid_t w1 = c1.get(), w2 = c2.get();
    // Some work first, so the workers go from busy to idle.
    std::vector<hop::future<long>> burst;
    for (int i = 0; i < 2000; ++i) burst.push_back(pool.submit([i] { return static_cast<long>(i) * i; }));
    for (auto& f : burst) REQUIRE(f.wait_for(guard));

    const double workers_before = cpu_seconds(w1) + cpu_seconds(w2);
    const double self_before = cpu_seconds(CLOCK_THREAD_CPUTIME_ID);
    volatile std::uint64_t sink = 0;
    while (cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - self_before < 0.2) {
        for (int i = 0; i < 10'000; ++i) sink = sink + static_cast<std::uint64_t>(i);
    }
    const double self_used = cpu_seconds(CLOCK_THREAD_CPUTIME_ID) - self_before;
    const double workers_used = cpu_seconds(w1) + cpu_seconds(w2) - workers_before;
    CAPTURE(self_used);
    CAPTURE(workers_used);
    CHECK(workers_used < self_used / 4);
    // Still awake to new work afterwards.
    CHECK(pool.submit([] { return 5; }).get() == 5);
}

}  // TEST_SUITE
