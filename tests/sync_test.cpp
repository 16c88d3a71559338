#include <hop/sync.hpp>

#include <hop/combinators.hpp>
#include <hop/cpu_pool.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include "support/counted.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <latch>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using hop_test::counted;
using hop_test::counters;

namespace {

// A failure guard only: every wait below is released by the test itself; the
// bound turns a lost wakeup into a failed check instead of a hung run.
constexpr auto guard = hop_test::scaled(60s);

/// An io_loop running on its own thread for the length of a test.
struct loop_thread {
    hop::io_loop loop;
    std::thread thread;  // last: starts once the loop exists
    loop_thread() : thread([this] { loop.run(); }) {}
    ~loop_thread() {
        loop.stop();
        thread.join();
    }
    loop_thread(const loop_thread&) = delete;
    loop_thread& operator=(const loop_thread&) = delete;
};

/// A cpu_pool of two threads and a loop on its own thread.
struct executors {
    hop::cpu_pool pool{2};
    loop_thread lt;
};

/// True if `f` ended with an E. Call it only once the executors that ran
/// `f`'s coroutine are gone: the exception object is shared (through
/// exception_ptr) with frames an executor thread may still be freeing, and
/// TSan cannot see the reference counting inside the uninstrumented
/// libstdc++, so reading it earlier is reported as a race.
template <class E, class T>
bool ended_with(const hop::future<T>& f) {
    REQUIRE(f.wait_for(guard));
    try {
        f.get();
    } catch (const E&) {
        return true;
    } catch (...) {
        return false;
    }
    return false;
}

/// Waits (bounded by the guard) and returns the future's value.
template <class T>
T wait_get(hop::future<T> f) {
    REQUIRE(f.wait_for(guard));
    return std::move(f).get();
}

struct boom : std::runtime_error {
    boom() : std::runtime_error("boom") {}
};

hop::task<> signal(hop::promise<void> p) {
    p.set_value();
    co_return;
}

hop::task<> count_down(std::latch& l) {
    l.count_down();
    co_return;
}

/// Runs `t` until it first suspends (or ends), then completes `queued`.
/// On a loop both start inline on the caller's thread in that order, so once
/// `queued` is done, a wait inside `t` is either finished or linked in its
/// queue. On a cpu_pool worker when_all forks, and another worker may steal
/// and complete `queued` first: a test that needs `t`'s state waits for it.
template <class T>
hop::task<T> queued_then(hop::task<T> t, hop::promise<void> queued) {
    [[maybe_unused]] auto r = co_await hop::when_all(std::move(t), signal(std::move(queued)));
    if constexpr (!std::is_void_v<T>) co_return std::move(std::get<0>(r));
}

/// As queued_then, counting down a latch instead.
hop::task<> queued_latch(hop::task<> t, std::latch& queued) {
    co_await hop::when_all(std::move(t), count_down(queued));
}

/// Starts `t` on `ex` (a cpu_pool or io_loop) and returns once a wait in it
/// is queued (or done).
template <class Executor, class T>
hop::future<T> start_queued(Executor& ex, hop::task<T> t) {
    hop::promise<void> queued;
    auto q = queued.get_future();
    auto f = hop::spawn(ex, queued_then(std::move(t), std::move(queued)));
    REQUIRE(q.wait_for(guard));
    return f;
}

/// Completes `started`, then waits for `go` (a future is not a cancellation
/// point, so a stop requested meanwhile is seen by the next wait).
hop::task<> started_then_go(hop::promise<void> started, hop::future<void> go) {
    started.set_value();
    go.wait();  // blocks the worker: not a cancellation point (co_await go is one)
    co_return;
}

/// A counted value with an id, for channels.
struct payload {
    counted c;
    int id;
};

// ---------------------------------------------------------------- semaphore

hop::task<> take_and_record(hop::semaphore& sem, std::vector<int>& order, int id) {
    co_await sem.acquire();
    order.push_back(id);
}

hop::task<> release_one_by_one(hop::semaphore& sem, std::vector<std::ptrdiff_t>& seen) {
    // Every waiter is queued now; each release goes to the longest waiter,
    // never to the bank, so a try_acquire cannot take it.
    for (int i = 0; i < 3; ++i) {
        sem.release();
        seen.push_back(sem.available());
        seen.push_back(sem.try_acquire() ? 1 : 0);
    }
    sem.release(3);  // the last two waiters, oldest first, and one banked
    seen.push_back(sem.available());
    co_return;
}

hop::task<bool> acquire_reports_loop(hop::semaphore& sem, hop::io_loop& loop) {
    co_await sem.acquire();
    co_return loop.running_in_this_thread();
}

/// Counts holders inside the semaphore and the most seen at once.
struct gauge {
    std::atomic<int> inside{0};
    std::atomic<int> most{0};
    std::atomic<int> grants{0};
    void enter() {
        ++grants;
        int n = ++inside;
        int m = most.load();
        while (n > m && !most.compare_exchange_weak(m, n)) {
        }
    }
    void leave() { --inside; }
};

hop::task<> hold_repeatedly(hop::semaphore& sem, gauge& g, hop::cpu_pool& pool, hop::io_loop& loop, bool on_pool,
                            int rounds) {
    for (int i = 0; i < rounds; ++i) {
        co_await sem.acquire();
        g.enter();
        // Hop away and back while holding: the other holders get in meanwhile.
        if (on_pool) {
            co_await loop.schedule();
            co_await pool.schedule();
        } else {
            co_await pool.schedule();
            co_await loop.schedule();
        }
        g.leave();
        sem.release();
    }
}

TEST_SUITE("sync") {

TEST_CASE("semaphore: bad counts throw std::invalid_argument naming the value") {
    CHECK_THROWS_WITH_AS(hop::semaphore{-1}, doctest::Contains("-1"), std::invalid_argument);
    hop::semaphore sem{0};
    CHECK_THROWS_WITH_AS(sem.release(0), doctest::Contains("count 0"), std::invalid_argument);
    CHECK_THROWS_WITH_AS(sem.release(-7), doctest::Contains("-7"), std::invalid_argument);
    CHECK(sem.available() == 0);
}

TEST_CASE("semaphore: try_acquire takes free units and never waits") {
    hop::semaphore sem{2};
    CHECK(sem.available() == 2);
    CHECK(sem.try_acquire());
    CHECK(sem.try_acquire());
    CHECK_FALSE(sem.try_acquire());
    CHECK(sem.available() == 0);
    sem.release();
    CHECK(sem.available() == 1);
    CHECK(sem.try_acquire());
    sem.release(5);
    CHECK(sem.available() == 5);

    hop::semaphore none{0};
    CHECK_FALSE(none.try_acquire());
}

TEST_CASE("semaphore: waiters are granted in the order they queued") {
    hop::semaphore sem{0};
    std::vector<int> order;
    std::vector<std::ptrdiff_t> seen;
    std::vector<hop::task<>> ts;
    for (int i = 0; i < 5; ++i) ts.push_back(take_and_record(sem, order, i));
    ts.push_back(release_one_by_one(sem, seen));
    // when_all starts each child inline, in order: the five queue 0..4.
    hop::sync_wait(hop::when_all(std::move(ts)));
    CHECK(order == std::vector<int>{0, 1, 2, 3, 4});
    CHECK(seen == std::vector<std::ptrdiff_t>{0, 0, 0, 0, 0, 0, 1});
    CHECK(sem.available() == 1);
}

TEST_CASE("semaphore: a later try_acquire cannot overtake a queued waiter") {
    hop::semaphore sem{1};
    loop_thread lt;
    REQUIRE(sem.try_acquire());
    auto f = start_queued(lt.loop, acquire_reports_loop(sem, lt.loop));
    sem.release();  // handed to the waiter, which resumes on the loop thread
    CHECK_FALSE(sem.try_acquire());
    CHECK(sem.available() == 0);
    CHECK(wait_get(std::move(f)));  // resumed on its own executor, the loop
    CHECK(sem.available() == 0);  // the waiter keeps its unit
    CHECK_FALSE(sem.try_acquire());
}

TEST_CASE("semaphore: at most N holders under contention from a pool and a loop") {
    hop::semaphore sem{3};
    gauge g;
    constexpr int per_side = 6;
    constexpr int rounds = 100;
    {
        hop::cpu_pool pool{2};
        loop_thread lt;
        std::vector<hop::future<void>> fs;
        for (int i = 0; i < per_side; ++i) {
            fs.push_back(hop::spawn(pool, hold_repeatedly(sem, g, pool, lt.loop, true, rounds)));
            fs.push_back(lt.loop.spawn(hold_repeatedly(sem, g, pool, lt.loop, false, rounds)));
        }
        for (auto& f : fs) wait_get(std::move(f));
    }
    CHECK(g.grants.load() == 2 * per_side * rounds);
    CHECK(g.most.load() >= 1);
    CHECK(g.most.load() <= 3);
    CHECK(g.inside.load() == 0);
    CHECK(sem.available() == 3);
}

// ---------------------------------------------------------------- async_mutex

hop::task<> add_many(hop::async_mutex& m, int& counter, hop::cpu_pool& pool, hop::io_loop& loop, bool on_pool,
                     int n) {
    for (int i = 0; i < n; ++i) {
        auto lock = co_await m.lock();
        const int v = counter;
        if (i % 64 == 0) {
            // Suspend between the read and the write, on another thread.
            if (on_pool) {
                co_await loop.schedule();
                co_await pool.schedule();
            } else {
                co_await pool.schedule();
                co_await loop.schedule();
            }
        }
        counter = v + 1;
    }
}

hop::task<> lock_scopes(hop::async_mutex& m, std::vector<int>& log) {
    {
        auto lock = co_await m.lock();
        log.push_back(lock.owns_lock() && m.is_locked() ? 1 : 0);
    }
    log.push_back(m.is_locked() ? 0 : 1);  // unlocked at scope end
    auto a = co_await m.lock();
    auto b = std::move(a);  // ownership moves, the mutex stays locked
    log.push_back(!a.owns_lock() && b.owns_lock() && m.is_locked() ? 1 : 0);
    b.unlock();
    log.push_back(m.is_locked() || b.owns_lock() ? 0 : 1);
    b.unlock();  // idempotent
    log.push_back(m.is_locked() ? 0 : 1);
}

hop::task<> lock_then_throw(hop::async_mutex& m) {
    auto lock = co_await m.lock();
    if (m.is_locked()) throw boom();
}

hop::task<> lock_and_hold(hop::async_mutex& m, hop::promise<void> got, hop::future<void> release) {
    auto lock = co_await m.lock();
    got.set_value();
    co_await std::move(release);
}

TEST_CASE("async_mutex: 8 coroutines x 1000 increments across a pool and a loop") {
    hop::async_mutex m;
    int counter = 0;  // plain int: only the mutex protects it
    {
        hop::cpu_pool pool{2};
        loop_thread lt;
        std::vector<hop::future<void>> fs;
        for (int i = 0; i < 4; ++i) {
            fs.push_back(hop::spawn(pool, add_many(m, counter, pool, lt.loop, true, 1000)));
            fs.push_back(lt.loop.spawn(add_many(m, counter, pool, lt.loop, false, 1000)));
        }
        for (auto& f : fs) wait_get(std::move(f));
    }
    CHECK(counter == 8000);
    CHECK_FALSE(m.is_locked());
}

TEST_CASE("async_mutex: scoped_lock unlocks at scope end and on an exception") {
    hop::async_mutex m;
    std::vector<int> log;
    hop::sync_wait(lock_scopes(m, log));
    CHECK(log == std::vector<int>{1, 1, 1, 1, 1});
    CHECK_THROWS_AS(hop::sync_wait(lock_then_throw(m)), boom);
    CHECK_FALSE(m.is_locked());
    CHECK(m.try_lock().owns_lock());
}

TEST_CASE("async_mutex: unlock of an unlocked mutex throws std::logic_error") {
    hop::async_mutex m;
    CHECK_THROWS_AS(m.unlock(), std::logic_error);
    auto l = m.try_lock();
    REQUIRE(l.owns_lock());
    l.unlock();
    CHECK_THROWS_AS(m.unlock(), std::logic_error);
    CHECK_FALSE(m.is_locked());
}

TEST_CASE("async_mutex: try_lock; an unlock hands over to the waiter, not to a later try_lock") {
    hop::async_mutex m;
    {
        auto a = m.try_lock();
        CHECK(a.owns_lock());
        CHECK(m.is_locked());
        auto b = m.try_lock();
        CHECK_FALSE(b.owns_lock());
    }
    CHECK_FALSE(m.is_locked());

    loop_thread lt;
    auto held = m.try_lock();
    REQUIRE(held.owns_lock());
    hop::promise<void> got;
    auto got_f = got.get_future();
    hop::promise<void> release;
    auto f = start_queued(lt.loop, lock_and_hold(m, std::move(got), release.get_future()));
    held.unlock();
    CHECK(m.is_locked());                    // now the waiter's
    CHECK_FALSE(m.try_lock().owns_lock());  // it holds it until `release`
    REQUIRE(got_f.wait_for(guard));
    release.set_value();
    wait_get(std::move(f));
    CHECK_FALSE(m.is_locked());
}

// ---------------------------------------------------------------- event

hop::task<> wait_then_flag(hop::event& ev, std::atomic<bool>& passed) {
    co_await ev.wait();
    passed = true;
}

hop::task<> wait_twice(hop::event& ev) {
    co_await ev.wait();
    co_await ev.wait();
}

TEST_CASE("event: wait after set completes at once; set wakes every waiter; reset") {
    SUBCASE("wait after set, and an event constructed set") {
        hop::event ev;
        CHECK_FALSE(ev.is_set());
        ev.set();
        CHECK(ev.is_set());
        hop::sync_wait(wait_twice(ev));
        hop::event pre{true};
        CHECK(pre.is_set());
        hop::sync_wait(wait_twice(pre));
    }
    SUBCASE("waiters on a pool and a loop, set from this thread") {
        hop::event ev;
        hop::cpu_pool pool{2};
        loop_thread lt;
        constexpr int n = 8;
        std::vector<std::atomic<bool>> passed(n);
        std::vector<hop::future<void>> fs;
        for (int i = 0; i < n; ++i) {
            if (i % 2 == 0) {
                fs.push_back(start_queued(pool, wait_then_flag(ev, passed[i])));
            } else {
                fs.push_back(start_queued(lt.loop, wait_then_flag(ev, passed[i])));
            }
        }
        for (auto& p : passed) CHECK_FALSE(p.load());  // each is queued, not through
        ev.set();
        for (auto& f : fs) wait_get(std::move(f));
        for (auto& p : passed) CHECK(p.load());
    }
    SUBCASE("reset makes the next wait suspend until the next set") {
        hop::event ev{true};
        ev.reset();
        CHECK_FALSE(ev.is_set());
        ev.reset();  // idempotent
        loop_thread lt;
        std::atomic<bool> passed{false};
        auto f = start_queued(lt.loop, wait_then_flag(ev, passed));
        CHECK_FALSE(passed.load());
        ev.set();
        wait_get(std::move(f));
        CHECK(passed.load());
        CHECK(ev.is_set());
    }
}

// ---------------------------------------------------------------- channel

hop::task<> produce(hop::channel<int>& ch, int first, int count) {
    for (int i = 0; i < count; ++i) co_await ch.send(first + i);
}

hop::task<long long> consume(hop::channel<int>& ch, std::vector<std::atomic<int>>& seen, std::atomic<int>& count) {
    long long sum = 0;
    for (;;) {
        std::optional<int> v = co_await ch.recv();
        if (!v) break;
        sum += *v;
        ++seen[static_cast<std::size_t>(*v)];
        ++count;
    }
    co_return sum;
}

TEST_CASE("channel: 4 producers on a pool, 2 consumers on a loop, every value received once") {
    constexpr int producers = 4;
    constexpr int per_producer = 500;
    constexpr int total = producers * per_producer;
    for (std::size_t capacity : {std::size_t{0}, std::size_t{1}, std::size_t{4}, std::size_t{64}}) {
        CAPTURE(capacity);
        hop::channel<int> ch{capacity};
        CHECK(ch.capacity() == capacity);
        std::vector<std::atomic<int>> seen(total);
        std::atomic<int> count{0};
        long long sum = 0;
        {
            hop::cpu_pool pool{2};
            loop_thread lt;
            std::vector<hop::future<long long>> consumers;
            for (int c = 0; c < 2; ++c) consumers.push_back(lt.loop.spawn(consume(ch, seen, count)));
            std::vector<hop::future<void>> ps;
            for (int p = 0; p < producers; ++p) ps.push_back(hop::spawn(pool, produce(ch, p * per_producer, per_producer)));
            for (auto& f : ps) wait_get(std::move(f));
            ch.close();
            for (auto& f : consumers) sum += wait_get(std::move(f));
        }
        CHECK(count.load() == total);
        CHECK(sum == static_cast<long long>(total) * (total - 1) / 2);
        CHECK(std::all_of(seen.begin(), seen.end(), [](const std::atomic<int>& s) { return s.load() == 1; }));
        CHECK(ch.size() == 0);
    }
}

hop::task<std::vector<std::optional<int>>> recv_n(hop::channel<int>& ch, int n) {
    std::vector<std::optional<int>> out;
    for (int i = 0; i < n; ++i) {
        std::optional<int> v = co_await ch.recv();
        out.push_back(v);
    }
    co_return out;
}

hop::task<> send_one(hop::channel<int>& ch, int v) { co_await ch.send(v); }

hop::task<std::optional<int>> recv_one(hop::channel<int>& ch) {
    std::optional<int> v = co_await ch.recv();
    co_return v;
}

TEST_CASE("channel: recv on a closed, drained channel returns nullopt") {
    hop::channel<int> ch{4};
    CHECK(ch.try_send(1));
    CHECK(ch.try_send(2));
    CHECK_FALSE(ch.is_closed());
    ch.close();
    CHECK(ch.is_closed());
    ch.close();  // idempotent
    auto got = hop::sync_wait(recv_n(ch, 4));
    CHECK(got == std::vector<std::optional<int>>{1, 2, std::nullopt, std::nullopt});
    CHECK_FALSE(ch.try_recv().has_value());
}

hop::task<> send_payload(hop::channel<payload>& ch, payload p) { co_await ch.send(std::move(p)); }

TEST_CASE("channel: close wakes blocked receivers with nullopt and blocked senders with channel_closed_error") {
    SUBCASE("receivers") {
        executors ex;
        hop::channel<int> ch{2};
        auto a = start_queued(ex.lt.loop, recv_one(ch));
        auto b = start_queued(ex.pool, recv_one(ch));
        ch.close();
        CHECK_FALSE(wait_get(std::move(a)).has_value());
        CHECK_FALSE(wait_get(std::move(b)).has_value());
    }
    SUBCASE("senders: their values are not delivered") {
        counters cnt;
        hop::future<void> a;
        hop::future<void> b;
        {
            hop::channel<payload> ch{1};
            {
                executors ex;
                CHECK(ch.try_send(payload{counted{cnt}, 1}));
                a = start_queued(ex.lt.loop, send_payload(ch, payload{counted{cnt}, 2}));
                b = start_queued(ex.pool, send_payload(ch, payload{counted{cnt}, 3}));
                ch.close();
                REQUIRE(a.wait_for(guard));
                REQUIRE(b.wait_for(guard));
            }
            CHECK(ch.size() == 1);
            auto first = ch.try_recv();
            REQUIRE(first.has_value());
            CHECK(first->id == 1);
            CHECK_FALSE(ch.try_recv().has_value());
        }
        CHECK(ended_with<hop::channel_closed_error>(a));
        CHECK(ended_with<hop::channel_closed_error>(b));
        CHECK(cnt.alive() == 0);
    }
}

TEST_CASE("channel: send after close throws channel_closed_error and drops the value") {
    counters cnt;
    {
        hop::channel<payload> ch{4};
        ch.close();
        CHECK_THROWS_AS(hop::sync_wait(send_payload(ch, payload{counted{cnt}, 1})), hop::channel_closed_error);
        CHECK_THROWS_AS(ch.try_send(payload{counted{cnt}, 2}), hop::channel_closed_error);
        CHECK(ch.size() == 0);
        CHECK(cnt.alive() == 0);
    }
    CHECK(cnt.constructed.load() > 0);
    CHECK(cnt.alive() == 0);
}

TEST_CASE("channel: try_send and try_recv") {
    SUBCASE("buffered") {
        hop::channel<int> ch{2};
        CHECK(ch.try_send(1));
        CHECK(ch.try_send(2));
        CHECK_FALSE(ch.try_send(3));
        CHECK(ch.size() == 2);
        CHECK(ch.try_recv() == std::optional<int>{1});
        CHECK(ch.try_send(4));
        CHECK(ch.try_recv() == std::optional<int>{2});
        CHECK(ch.try_recv() == std::optional<int>{4});
        CHECK_FALSE(ch.try_recv().has_value());
    }
    SUBCASE("rendezvous (capacity 0) meets a waiting receiver or sender") {
        hop::channel<int> ch{0};
        CHECK_FALSE(ch.try_send(1));  // nobody receiving
        CHECK_FALSE(ch.try_recv().has_value());
        loop_thread lt;
        auto r = start_queued(lt.loop, recv_one(ch));
        CHECK(ch.try_send(7));
        CHECK(wait_get(std::move(r)) == std::optional<int>{7});
        auto s = start_queued(lt.loop, send_one(ch, 8));
        CHECK(ch.try_recv() == std::optional<int>{8});
        wait_get(std::move(s));
        CHECK(ch.size() == 0);
    }
}

hop::task<> send_two(hop::channel<int>& ch, std::atomic<bool>& second_sent) {
    co_await ch.send(1);  // room: done at once
    co_await ch.send(2);  // full: waits for a recv
    second_sent = true;
}

hop::task<std::vector<int>> consume_two(hop::channel<int>& ch, std::atomic<bool>& second_sent,
                                        std::vector<int>& flags) {
    flags.push_back(second_sent.load() ? 1 : 0);  // the sender is still suspended
    flags.push_back(static_cast<int>(ch.size()));
    std::vector<int> got;
    std::optional<int> a = co_await ch.recv();
    got.push_back(a.value_or(-1));
    std::optional<int> b = co_await ch.recv();
    got.push_back(b.value_or(-1));
    co_return got;
}

TEST_CASE("channel: a sender on a full channel stays suspended until a recv") {
    hop::channel<int> ch{1};
    hop::cpu_pool pool{2};
    std::atomic<bool> second_sent{false};
    auto s = start_queued(pool, send_two(ch, second_sent));
    // start_queued's "queued" can come first on a pool: when_all forks on a
    // worker, and the other worker may steal it before send_two has run. The
    // first send itself is what the checks below need: a state, with a guard.
    const auto until = std::chrono::steady_clock::now() + guard;
    while (ch.size() != 1 && std::chrono::steady_clock::now() < until) std::this_thread::yield();
    REQUIRE(ch.size() == 1);
    std::vector<int> flags;
    auto got = hop::sync_wait(consume_two(ch, second_sent, flags));
    CHECK(flags == std::vector<int>{0, 1});
    CHECK(got == std::vector<int>{1, 2});
    wait_get(std::move(s));
    CHECK(second_sent.load());
}

TEST_CASE("channel: a capacity too large throws std::invalid_argument naming it") {
    constexpr std::size_t too_big = (std::size_t{1} << 30) + 1;
    CHECK_THROWS_WITH_AS(hop::channel<int>{too_big}, doctest::Contains(std::to_string(too_big).c_str()),
                         std::invalid_argument);
    CHECK_THROWS_AS(hop::channel<int>{static_cast<std::size_t>(-1)}, std::invalid_argument);
}

hop::task<> send_ptrs(hop::channel<std::unique_ptr<int>>& ch, int n) {
    for (int i = 1; i <= n; ++i) co_await ch.send(std::make_unique<int>(i));
    ch.close();
}

hop::task<long long> sum_ptrs(hop::channel<std::unique_ptr<int>>& ch) {
    long long sum = 0;
    for (;;) {
        std::optional<std::unique_ptr<int>> p = co_await ch.recv();
        if (!p) break;
        sum += **p;
    }
    co_return sum;
}

TEST_CASE("channel: move-only values (std::unique_ptr)") {
    for (std::size_t capacity : {std::size_t{0}, std::size_t{1}, std::size_t{8}}) {
        CAPTURE(capacity);
        hop::channel<std::unique_ptr<int>> ch{capacity};
        hop::cpu_pool pool{2};
        loop_thread lt;
        auto consumer = lt.loop.spawn(sum_ptrs(ch));
        auto producer = hop::spawn(pool, send_ptrs(ch, 100));
        wait_get(std::move(producer));
        CHECK(wait_get(std::move(consumer)) == 5050);
    }
    hop::channel<std::unique_ptr<int>> ch{1};
    CHECK(ch.try_send(std::make_unique<int>(5)));
    CHECK_FALSE(ch.try_send(std::make_unique<int>(6)));
    auto p = ch.try_recv();
    REQUIRE(p.has_value());
    REQUIRE(*p != nullptr);
    CHECK(**p == 5);
}

TEST_CASE("channel: counted values are destroyed exactly once, also those left in it") {
    counters cnt;
    {
        hop::channel<payload> ch{8};
        for (int i = 0; i < 5; ++i) CHECK(ch.try_send(payload{counted{cnt}, i}));
        auto v = ch.try_recv();
        REQUIRE(v.has_value());
        CHECK(v->id == 0);
        CHECK(cnt.alive() == 5);  // four in the channel, one here
    }
    CHECK(cnt.alive() == 0);
    CHECK(cnt.destroyed.load() == cnt.constructed.load());
}

// ---------------------------------------------------------------- affinity

hop::task<bool> wait_reports_pool(hop::event& ev, hop::cpu_pool& pool) {
    co_await ev.wait();
    co_return pool.running_in_this_thread();
}

hop::task<bool> wait_reports_loop(hop::event& ev, hop::io_loop& loop) {
    co_await ev.wait();
    co_return loop.running_in_this_thread();
}

hop::task<bool> recv_reports_pool(hop::channel<int>& ch, hop::cpu_pool& pool) {
    std::optional<int> v = co_await ch.recv();
    co_return v == std::optional<int>{3} && pool.running_in_this_thread();
}

hop::task<std::thread::id> wait_then_thread(hop::event& ev) {
    co_await ev.wait();
    co_return std::this_thread::get_id();
}

hop::task<std::thread::id> set_on_loop(hop::io_loop& loop, hop::event& ev) {
    hop::promise<std::thread::id> setter;
    auto where = setter.get_future();
    auto set_there = [&ev, setter = std::move(setter)]() mutable {
        ev.set();
        setter.set_value(std::this_thread::get_id());
    };
    loop.post(std::move(set_there));
    co_return wait_get(std::move(where));
}

TEST_CASE("affinity: a woken waiter resumes on the executor it waited on") {
    hop::cpu_pool pool{2};
    loop_thread lt;
    SUBCASE("pool waiter, event set from the loop thread") {
        hop::event ev;
        auto f = start_queued(pool, wait_reports_pool(ev, pool));
        auto set_it = [&ev] { ev.set(); };
        lt.loop.post(set_it);
        CHECK(wait_get(std::move(f)));
    }
    SUBCASE("loop waiter, event set from a pool thread") {
        hop::event ev;
        auto f = start_queued(lt.loop, wait_reports_loop(ev, lt.loop));
        auto set_it = [&ev] { ev.set(); };
        pool.post(set_it);
        CHECK(wait_get(std::move(f)));
    }
    SUBCASE("pool receiver, value sent from the loop thread") {
        hop::channel<int> ch{0};
        auto f = start_queued(pool, recv_reports_pool(ch, pool));
        auto sent = lt.loop.spawn(send_one(ch, 3));
        CHECK(wait_get(std::move(f)));
        wait_get(std::move(sent));
    }
    SUBCASE("a waiter under sync_wait resumes on the sync_wait thread") {
        hop::event ev;
        auto r = hop::sync_wait(hop::when_all(wait_then_thread(ev), set_on_loop(lt.loop, ev)));
        CHECK(std::get<1>(r) == lt.thread.get_id());  // set over there
        CHECK(std::get<0>(r) == std::this_thread::get_id());
    }
}

// ---------------------------------------------------------------- cancellation

/// 0 while waiting, 1 granted, 2 cancelled (the wait threw cancelled_error).
hop::task<> acquire_logged(hop::semaphore& sem, std::atomic<int>& state) {
    try {
        co_await sem.acquire();
    } catch (const hop::cancelled_error&) {
        state = 2;
        throw;
    }
    state = 1;
}

hop::task<> lock_logged(hop::async_mutex& m, std::atomic<int>& state) {
    hop::async_mutex::scoped_lock lock;
    try {
        lock = co_await m.lock();
    } catch (const hop::cancelled_error&) {
        state = 2;
        throw;
    }
    state = 1;
}

hop::task<> wait_logged(hop::event& ev, std::atomic<int>& state) {
    try {
        co_await ev.wait();
    } catch (const hop::cancelled_error&) {
        state = 2;
        throw;
    }
    state = 1;
}

hop::task<> send_logged(hop::channel<payload>& ch, payload p, std::atomic<int>& state) {
    try {
        co_await ch.send(std::move(p));
    } catch (const hop::cancelled_error&) {
        state = 2;
        throw;
    }
    state = 1;
}

hop::task<std::optional<int>> recv_logged(hop::channel<int>& ch, std::atomic<int>& state) {
    std::optional<int> v;
    try {
        v = co_await ch.recv();
    } catch (const hop::cancelled_error&) {
        state = 2;
        throw;
    }
    state = 1;
    co_return v;
}

TEST_CASE("cancellation: a cancelled waiter leaves the queue and takes nothing") {
    std::atomic<int> sa{0};
    std::atomic<int> sb{0};
    hop::future<void> a;  // outlives the executors: see ended_with

    SUBCASE("semaphore") {
        hop::semaphore sem{0};
        {
            executors ex;
            a = start_queued(ex.pool, acquire_logged(sem, sa));
            auto b = start_queued(ex.lt.loop, acquire_logged(sem, sb));
            CHECK(a.cancel());
            REQUIRE(a.wait_for(guard));
            CHECK(a.cancelled());
            CHECK(sa.load() == 2);
            CHECK(sem.available() == 0);  // the cancelled acquire took nothing
            sem.release();                // goes to b, the next waiter
            wait_get(std::move(b));
            CHECK(sb.load() == 1);
            CHECK(sem.available() == 0);
            sem.release();
            CHECK(sem.available() == 1);
        }
        CHECK(ended_with<hop::cancelled_error>(a));
    }
    SUBCASE("async_mutex") {
        hop::async_mutex m;
        {
            executors ex;
            auto held = m.try_lock();
            REQUIRE(held.owns_lock());
            a = start_queued(ex.pool, lock_logged(m, sa));
            auto b = start_queued(ex.lt.loop, lock_logged(m, sb));
            CHECK(a.cancel());
            REQUIRE(a.wait_for(guard));
            CHECK(a.cancelled());
            CHECK(sa.load() == 2);
            CHECK(m.is_locked());
            held.unlock();  // to b
            wait_get(std::move(b));
            CHECK(sb.load() == 1);
            CHECK_FALSE(m.is_locked());  // b unlocked it at its end
        }
        CHECK(ended_with<hop::cancelled_error>(a));
    }
    SUBCASE("event") {
        hop::event ev;
        {
            executors ex;
            a = start_queued(ex.pool, wait_logged(ev, sa));
            auto b = start_queued(ex.lt.loop, wait_logged(ev, sb));
            CHECK(a.cancel());
            REQUIRE(a.wait_for(guard));
            CHECK(a.cancelled());
            CHECK(sa.load() == 2);
            CHECK(sb.load() == 0);
            ev.set();
            wait_get(std::move(b));
            CHECK(sb.load() == 1);
        }
        CHECK(ended_with<hop::cancelled_error>(a));
    }
    SUBCASE("channel send: delivers nothing") {
        counters cnt;
        {
            hop::channel<payload> ch{1};
            executors ex;
            REQUIRE(ch.try_send(payload{counted{cnt}, 1}));
            a = start_queued(ex.pool, send_logged(ch, payload{counted{cnt}, 2}, sa));
            auto b = start_queued(ex.lt.loop, send_logged(ch, payload{counted{cnt}, 3}, sb));
            CHECK(a.cancel());
            REQUIRE(a.wait_for(guard));
            CHECK(a.cancelled());
            CHECK(sa.load() == 2);
            CHECK(ch.size() == 1);
            auto first = ch.try_recv();  // moves b's value in
            REQUIRE(first.has_value());
            CHECK(first->id == 1);
            wait_get(std::move(b));
            CHECK(sb.load() == 1);
            auto second = ch.try_recv();
            REQUIRE(second.has_value());
            CHECK(second->id == 3);
            CHECK_FALSE(ch.try_recv().has_value());  // 2 never arrived
        }
        CHECK(cnt.alive() == 0);
        CHECK(ended_with<hop::cancelled_error>(a));
    }
    SUBCASE("channel recv: takes nothing") {
        hop::channel<int> ch{1};
        hop::future<std::optional<int>> r;
        {
            executors ex;
            r = start_queued(ex.pool, recv_logged(ch, sa));
            auto b = start_queued(ex.lt.loop, recv_logged(ch, sb));
            CHECK(r.cancel());
            REQUIRE(r.wait_for(guard));
            CHECK(r.cancelled());
            CHECK(sa.load() == 2);
            CHECK(ch.try_send(5));  // straight to b
            CHECK(wait_get(std::move(b)) == std::optional<int>{5});
            CHECK(ch.try_send(6));  // nobody waits now: buffered
            CHECK(ch.size() == 1);
            CHECK(ch.try_recv() == std::optional<int>{6});
        }
        CHECK(ended_with<hop::cancelled_error>(r));
    }
}

// A batch wake-up (release(n), set, close) decides every waiter it takes
// under the lock and resumes them one by one after it. A waiter resumed
// first (inline, on the waker's executor) cancels one still to be resumed:
// that one was already decided, so the cancel must change nothing (and must
// not unlink it a second time nor resume it twice).

/// Outcomes the victims report (as values, not exceptions).
enum victim_outcome : int { granted = 1, cancelled = 2, closed = 3 };

hop::task<int> acquire_outcome(hop::semaphore& sem) {
    try {
        co_await sem.acquire();
    } catch (const hop::cancelled_error&) {
        co_return cancelled;
    }
    co_return granted;
}

hop::task<int> wait_outcome(hop::event& ev) {
    try {
        co_await ev.wait();
    } catch (const hop::cancelled_error&) {
        co_return cancelled;
    }
    co_return granted;
}

hop::task<int> recv_outcome(hop::channel<int>& ch) {
    std::optional<int> v;
    try {
        v = co_await ch.recv();
    } catch (const hop::cancelled_error&) {
        co_return cancelled;
    }
    co_return v ? granted : closed;
}

hop::task<int> send_outcome(hop::channel<int>& ch) {
    try {
        co_await ch.send(1);
    } catch (const hop::cancelled_error&) {
        co_return cancelled;
    } catch (const hop::channel_closed_error&) {
        co_return closed;
    }
    co_return granted;
}

hop::task<> acquire_then_cancel(hop::semaphore& sem, hop::future<int>& victim) {
    co_await sem.acquire();
    victim.cancel();
}

hop::task<> wait_then_cancel(hop::event& ev, hop::future<int>& victim) {
    co_await ev.wait();
    victim.cancel();
}

hop::task<> recv_then_cancel(hop::channel<int>& ch, hop::future<int>& victim) {
    std::optional<int> v = co_await ch.recv();
    (void)v;
    victim.cancel();
}

hop::task<> send_then_cancel(hop::channel<int>& ch, hop::future<int>& victim) {
    try {
        co_await ch.send(2);
    } catch (const hop::channel_closed_error&) {
        victim.cancel();
    }
}

/// Queues `victim_task` on the loop (behind the first waiter), then runs
/// `wake` (the batch wake-up) on this thread.
template <class Wake>
hop::task<> queue_victim_then(hop::io_loop& loop, hop::task<int> victim_task, hop::future<int>& victim, Wake wake) {
    victim = start_queued(loop, std::move(victim_task));
    wake();
    co_return;
}

TEST_CASE("cancellation: a waiter already woken by a batch wake-up is not cancelled any more") {
    loop_thread lt;
    hop::future<int> victim;
    SUBCASE("semaphore::release(2)") {
        hop::semaphore sem{0};
        auto wake = [&sem] { sem.release(2); };
        hop::sync_wait(hop::when_all(acquire_then_cancel(sem, victim),
                                     queue_victim_then(lt.loop, acquire_outcome(sem), victim, wake)));
        CHECK(wait_get(victim) == granted);
        CHECK(sem.available() == 0);
        sem.release();
        CHECK(sem.available() == 1);  // the queue is intact (and empty)
    }
    SUBCASE("event::set") {
        hop::event ev;
        auto wake = [&ev] { ev.set(); };
        hop::sync_wait(hop::when_all(wait_then_cancel(ev, victim),
                                     queue_victim_then(lt.loop, wait_outcome(ev), victim, wake)));
        CHECK(wait_get(victim) == granted);
    }
    SUBCASE("channel::close with receivers") {
        hop::channel<int> ch{1};
        auto wake = [&ch] { ch.close(); };
        hop::sync_wait(hop::when_all(recv_then_cancel(ch, victim),
                                     queue_victim_then(lt.loop, recv_outcome(ch), victim, wake)));
        CHECK(wait_get(victim) == closed);
    }
    SUBCASE("channel::close with senders") {
        hop::channel<int> ch{0};
        auto wake = [&ch] { ch.close(); };
        hop::sync_wait(hop::when_all(send_then_cancel(ch, victim),
                                     queue_victim_then(lt.loop, send_outcome(ch), victim, wake)));
        CHECK(wait_get(victim) == closed);
        CHECK_FALSE(ch.try_recv().has_value());
    }
    CHECK_FALSE(victim.cancelled());
}

/// After `started_then_go`, its stop is already requested: the wait must
/// throw at once even though it could complete. Records the message.
hop::task<> acquire_when_stopped(hop::semaphore& sem, hop::promise<void> started, hop::future<void> go,
                                 std::string& what) {
    co_await started_then_go(std::move(started), std::move(go));
    try {
        co_await sem.acquire();
    } catch (const hop::cancelled_error& e) {
        what = e.what();
        throw;
    }
}

hop::task<> lock_when_stopped(hop::async_mutex& m, hop::promise<void> started, hop::future<void> go,
                              std::string& what) {
    co_await started_then_go(std::move(started), std::move(go));
    try {
        auto lock = co_await m.lock();
    } catch (const hop::cancelled_error& e) {
        what = e.what();
        throw;
    }
}

hop::task<> wait_when_stopped(hop::event& ev, hop::promise<void> started, hop::future<void> go, std::string& what) {
    co_await started_then_go(std::move(started), std::move(go));
    try {
        co_await ev.wait();
    } catch (const hop::cancelled_error& e) {
        what = e.what();
        throw;
    }
}

hop::task<> send_when_stopped(hop::channel<int>& ch, hop::promise<void> started, hop::future<void> go,
                              std::string& what) {
    co_await started_then_go(std::move(started), std::move(go));
    try {
        co_await ch.send(1);
    } catch (const hop::cancelled_error& e) {
        what = e.what();
        throw;
    }
}

hop::task<> recv_when_stopped(hop::channel<int>& ch, hop::promise<void> started, hop::future<void> go,
                              std::string& what) {
    co_await started_then_go(std::move(started), std::move(go));
    try {
        std::optional<int> v = co_await ch.recv();
        (void)v;
    } catch (const hop::cancelled_error& e) {
        what = e.what();
        throw;
    }
}

/// Spawns `make(started, go)` on `pool`, cancels it once it runs, lets it
/// reach its wait, and checks that the wait threw cancelled_error naming `op`.
template <class Make>
void cancel_then_wait(hop::cpu_pool& pool, Make make, std::string& what, const char* op) {
    hop::promise<void> started;
    auto started_f = started.get_future();
    hop::promise<void> go;
    auto f = hop::spawn(pool, make(std::move(started), go.get_future()));
    REQUIRE(started_f.wait_for(guard));
    CHECK(f.cancel());  // running: requests stop on its token
    go.set_value();
    REQUIRE(f.wait_for(guard));
    CHECK(f.cancelled());
    CHECK(what.find(op) != std::string::npos);  // the wait threw cancelled_error
}

TEST_CASE("cancellation: a stop requested before the wait throws at once and takes nothing") {
    hop::cpu_pool pool{2};
    std::string what;
    SUBCASE("semaphore with free units") {
        hop::semaphore sem{5};
        auto make = [&](hop::promise<void> s, hop::future<void> g) {
            return acquire_when_stopped(sem, std::move(s), std::move(g), what);
        };
        cancel_then_wait(pool, make, what, "semaphore::acquire");
        CHECK(sem.available() == 5);
    }
    SUBCASE("unlocked async_mutex") {
        hop::async_mutex m;
        auto make = [&](hop::promise<void> s, hop::future<void> g) {
            return lock_when_stopped(m, std::move(s), std::move(g), what);
        };
        cancel_then_wait(pool, make, what, "async_mutex::lock");
        CHECK_FALSE(m.is_locked());
    }
    SUBCASE("event already set") {
        hop::event ev{true};
        auto make = [&](hop::promise<void> s, hop::future<void> g) {
            return wait_when_stopped(ev, std::move(s), std::move(g), what);
        };
        cancel_then_wait(pool, make, what, "event::wait");
    }
    SUBCASE("channel send with room") {
        hop::channel<int> ch{4};
        auto make = [&](hop::promise<void> s, hop::future<void> g) {
            return send_when_stopped(ch, std::move(s), std::move(g), what);
        };
        cancel_then_wait(pool, make, what, "channel::send");
        CHECK(ch.size() == 0);
    }
    SUBCASE("channel recv with a value ready") {
        hop::channel<int> ch{4};
        REQUIRE(ch.try_send(9));
        auto make = [&](hop::promise<void> s, hop::future<void> g) {
            return recv_when_stopped(ch, std::move(s), std::move(g), what);
        };
        cancel_then_wait(pool, make, what, "channel::recv");
        CHECK(ch.size() == 1);
        CHECK(ch.try_recv() == std::optional<int>{9});
    }
}

// ---------------------------------------------------------------- races

/// Runs `a(i)` for i < na on one thread and `b(j)` for j < nb on another in
/// lockstep by proportion: step i of one waits until the other has started
/// more than i/n_self of its steps, less one. So the two really interleave,
/// even on a busy machine (step j of b runs when a is about j/nb of the way
/// through), and a step can overlap the other's current one. They cannot
/// both wait: that would need i_a*nb > (i_b+1)*na and i_b*na > (i_a+1)*nb
/// at once.
template <class A, class B>
void run_interleaved(int na, A a, int nb, B b) {
    std::atomic<int> done_a{0};
    std::atomic<int> done_b{0};
    std::latch go{2};
    auto step = [&go](int n_self, int n_other, std::atomic<int>& mine, const std::atomic<int>& theirs, auto& f) {
        go.arrive_and_wait();
        for (int i = 0; i < n_self; ++i) {
            for (;;) {
                const int t = theirs.load();
                if (t >= n_other || static_cast<long>(i) * n_other <= static_cast<long>(t + 1) * n_self) break;
                std::this_thread::yield();
            }
            mine.store(i + 1);  // announce the step first: the other may run alongside it
            f(i);
        }
    };
    std::thread ta([&] { step(na, nb, done_a, done_b, a); });
    std::thread tb([&] { step(nb, na, done_b, done_a, b); });
    ta.join();
    tb.join();
}

struct race_log {
    explicit race_log(std::size_t n) : ends(n) {}
    std::vector<std::atomic<int>> ends;  // per waiter: how often it ended
    std::atomic<int> granted{0};
    std::atomic<int> cancelled{0};
};

hop::task<> race_acquire(hop::semaphore& sem, counted, race_log& log, std::size_t i) {
    try {
        co_await sem.acquire();
    } catch (const hop::cancelled_error&) {
        ++log.cancelled;
        ++log.ends[i];
        throw;
    }
    ++log.granted;
    ++log.ends[i];
}

TEST_CASE("race: 1000 semaphore waiters cancelled while releases happen concurrently") {
    constexpr std::size_t waiters = 1000;
    constexpr int releases = 160;  // of 1 to 8 units each (release_one below)
    constexpr int units = [] {
        int u = 0;
        for (int r = 0; r < releases; ++r) u += 1 + r % 8;
        return u;
    }();
    constexpr std::ptrdiff_t initial = 0;
    counters cnt;
    hop::semaphore sem{initial};
    race_log log(waiters);
    std::vector<hop::future<void>> fs;
    {
        hop::cpu_pool pool{2};
        loop_thread lt;
        std::latch queued{static_cast<std::ptrdiff_t>(waiters)};
        fs.reserve(waiters);
        for (std::size_t i = 0; i < waiters; ++i) {
            auto t = queued_latch(race_acquire(sem, counted{cnt}, log, i), queued);
            if (i % 2 == 0) {
                fs.push_back(hop::spawn(pool, std::move(t)));
            } else {
                fs.push_back(lt.loop.spawn(std::move(t)));
            }
        }
        queued.wait();  // every waiter is in the queue
        // Cancels walk the queue from its head while the releases grant from
        // it: both contend for the same waiters.
        auto cancel_one = [&fs](int i) { fs[static_cast<std::size_t>(i)].cancel(); };
        // Several units at once: the granted waiters wait a little longer to
        // be resumed, while their cancellation may be running.
        auto release_one = [&sem](int r) { sem.release(1 + r % 8); };
        run_interleaved(static_cast<int>(waiters), cancel_one, releases, release_one);
        for (auto& f : fs) REQUIRE(f.wait_for(guard));
    }  // the loop and the pool are gone: every frame has been freed
    int ended_cancelled = 0;
    for (auto& f : fs) ended_cancelled += f.cancelled() ? 1 : 0;
    const int granted = log.granted.load();
    CHECK(granted + log.cancelled.load() == static_cast<int>(waiters));
    CHECK(ended_cancelled == log.cancelled.load());
    CHECK(std::all_of(log.ends.begin(), log.ends.end(), [](const std::atomic<int>& e) { return e.load() == 1; }));
    CHECK(granted <= units);
    CHECK(sem.available() == initial + units - granted);
    CHECK(cnt.constructed.load() > 0);
    CHECK(cnt.alive() == 0);
    MESSAGE("granted " << granted << ", cancelled " << log.cancelled.load());
}

hop::task<> race_wait(hop::event& ev, counted, race_log& log, std::size_t i) {
    try {
        co_await ev.wait();
    } catch (const hop::cancelled_error&) {
        ++log.cancelled;
        ++log.ends[i];
        throw;
    }
    ++log.granted;
    ++log.ends[i];
}

TEST_CASE("race: event waiters cancelled while the event is set") {
    constexpr std::size_t waiters = 500;
    counters cnt;
    hop::event ev;
    race_log log(waiters);
    std::vector<hop::future<void>> fs;
    {
        hop::cpu_pool pool{2};
        loop_thread lt;
        std::latch queued{static_cast<std::ptrdiff_t>(waiters)};
        for (std::size_t i = 0; i < waiters; ++i) {
            auto t = queued_latch(race_wait(ev, counted{cnt}, log, i), queued);
            if (i % 2 == 0) {
                fs.push_back(hop::spawn(pool, std::move(t)));
            } else {
                fs.push_back(lt.loop.spawn(std::move(t)));
            }
        }
        queued.wait();
        // Halfway through the cancels, set() takes every waiter left and
        // resumes them one by one while the cancels go on.
        std::atomic<bool> setting{false};
        hop::promise<void> half;
        auto half_f = half.get_future();
        std::thread setter([&] {
            half_f.wait();
            setting = true;
            ev.set();
        });
        for (std::size_t i = 0; i < waiters; ++i) {
            if (i == waiters / 2) {
                half.set_value();
                while (!setting.load()) std::this_thread::yield();
            }
            fs[i].cancel();
        }
        setter.join();
        for (auto& f : fs) REQUIRE(f.wait_for(guard));
    }
    int ended_cancelled = 0;
    for (auto& f : fs) ended_cancelled += f.cancelled() ? 1 : 0;
    CHECK(log.granted.load() + log.cancelled.load() == static_cast<int>(waiters));
    CHECK(ended_cancelled == log.cancelled.load());
    CHECK(std::all_of(log.ends.begin(), log.ends.end(), [](const std::atomic<int>& e) { return e.load() == 1; }));
    CHECK(ev.is_set());
    CHECK(cnt.constructed.load() > 0);
    CHECK(cnt.alive() == 0);
    MESSAGE("woken " << log.granted.load() << ", cancelled " << log.cancelled.load());
}

hop::task<> race_send(hop::channel<payload>& ch, payload p, race_log& log, std::size_t i) {
    try {
        co_await ch.send(std::move(p));
    } catch (const hop::cancelled_error&) {
        ++log.cancelled;
        ++log.ends[i];
        throw;
    }
    ++log.granted;
    ++log.ends[i];
}

hop::task<> race_recv(hop::channel<payload>& ch, race_log& log, std::size_t i, std::vector<int>& got) {
    std::optional<payload> v;
    try {
        v = co_await ch.recv();
    } catch (const hop::cancelled_error&) {
        ++log.cancelled;
        ++log.ends[i];
        throw;
    }
    got[i] = v ? v->id : -2;  // this receiver's own slot
    ++log.granted;
    ++log.ends[i];
}

TEST_CASE("race: rendezvous senders cancelled while a receiver takes values concurrently") {
    constexpr std::size_t senders = 400;
    constexpr int takes = 250;
    counters cnt;
    race_log log(senders);
    std::vector<int> received;  // ids, by the taker thread only
    std::vector<hop::future<void>> fs;
    {
        hop::channel<payload> ch{0};
        {
            hop::cpu_pool pool{2};
            loop_thread lt;
            std::latch queued{static_cast<std::ptrdiff_t>(senders)};
            for (std::size_t i = 0; i < senders; ++i) {
                auto t = queued_latch(race_send(ch, payload{counted{cnt}, static_cast<int>(i)}, log, i), queued);
                if (i % 2 == 0) {
                    fs.push_back(hop::spawn(pool, std::move(t)));
                } else {
                    fs.push_back(lt.loop.spawn(std::move(t)));
                }
            }
            queued.wait();
            auto cancel_one = [&fs](int i) { fs[static_cast<std::size_t>(i)].cancel(); };
            auto take_one = [&ch, &received](int) {
                auto v = ch.try_recv();
                if (v) received.push_back(v->id);
            };
            run_interleaved(static_cast<int>(senders), cancel_one, takes, take_one);
            for (auto& f : fs) REQUIRE(f.wait_for(guard));
        }
        CHECK(ch.size() == 0);
    }
    // Every sender ended once; the values that arrived are exactly those of
    // the sends that returned, each once.
    CHECK(log.granted.load() + log.cancelled.load() == static_cast<int>(senders));
    CHECK(std::all_of(log.ends.begin(), log.ends.end(), [](const std::atomic<int>& e) { return e.load() == 1; }));
    CHECK(static_cast<int>(received.size()) == log.granted.load());
    std::vector<int> delivered;
    for (std::size_t i = 0; i < senders; ++i) {
        if (!fs[i].cancelled()) delivered.push_back(static_cast<int>(i));
    }
    std::sort(received.begin(), received.end());
    CHECK(received == delivered);
    CHECK(cnt.alive() == 0);
    MESSAGE("delivered " << log.granted.load() << ", cancelled " << log.cancelled.load());
}

TEST_CASE("race: receivers cancelled while a sender hands values over concurrently") {
    constexpr std::size_t receivers = 400;
    constexpr int offers = 250;
    counters cnt;
    race_log log(receivers);
    std::vector<int> got(receivers, -1);  // per receiver: the id it received
    std::vector<int> handed;               // ids try_send handed over, by the offering thread only
    std::vector<hop::future<void>> fs;
    {
        hop::channel<payload> ch{0};
        {
            hop::cpu_pool pool{2};
            loop_thread lt;
            std::latch queued{static_cast<std::ptrdiff_t>(receivers)};
            for (std::size_t i = 0; i < receivers; ++i) {
                auto t = queued_latch(race_recv(ch, log, i, got), queued);
                if (i % 2 == 0) {
                    fs.push_back(hop::spawn(pool, std::move(t)));
                } else {
                    fs.push_back(lt.loop.spawn(std::move(t)));
                }
            }
            queued.wait();
            auto cancel_one = [&fs](int i) { fs[static_cast<std::size_t>(i)].cancel(); };
            auto offer_one = [&ch, &cnt, &handed](int id) {
                if (ch.try_send(payload{counted{cnt}, id})) handed.push_back(id);
            };
            run_interleaved(static_cast<int>(receivers), cancel_one, offers, offer_one);
            for (auto& f : fs) REQUIRE(f.wait_for(guard));
        }
        CHECK(ch.size() == 0);  // capacity 0: nothing is ever buffered
    }
    CHECK(log.granted.load() + log.cancelled.load() == static_cast<int>(receivers));
    CHECK(std::all_of(log.ends.begin(), log.ends.end(), [](const std::atomic<int>& e) { return e.load() == 1; }));
    CHECK(static_cast<int>(handed.size()) == log.granted.load());
    std::vector<int> received;
    for (std::size_t i = 0; i < receivers; ++i) {
        CHECK((got[i] >= 0) == !fs[i].cancelled());  // a cancelled recv took nothing
        if (got[i] >= 0) received.push_back(got[i]);
    }
    std::sort(received.begin(), received.end());
    CHECK(received == handed);
    CHECK(cnt.alive() == 0);
    MESSAGE("handed over " << handed.size() << ", cancelled " << log.cancelled.load());
}

}  // TEST_SUITE

}  // namespace
