// Fork-join on the cpu_pool: when_all / when_any awaited on a pool worker
// fork their children (the ones nobody steals run inline), exceptions and
// cancellation reach forked children, nothing forks off the pool, and a fork
// allocates nothing but coroutine frames (none at all once the frame cache
// is warm).
//
// "Another worker ran it" is shown without timing: the child the forking
// worker runs itself blocks until its sibling has started, which only a
// thief can do. Before forking, when_all on a pool worker ran its children
// one after the other on that worker, and these tests failed (each wait
// below gives up after a minute and the check fails; nothing hangs).

#include <hop/combinators.hpp>

#include <hop/cpu_pool.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>
#include <hop/task_group.hpp>

#include "support/counting_new.hpp"
#include "support/guard.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <future>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <tuple>
#include <array>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct boom : std::runtime_error {
    explicit boom(const std::string& what) : std::runtime_error(what) {}
};

constexpr auto patience = hop_test::scaled(60s);  // a failure detector, not a timing assumption

/// Signals once; waiters give up after `patience`.
struct signal {
    std::promise<void> p;
    std::shared_future<void> f = p.get_future().share();
    void fire() { p.set_value(); }
    bool wait() const { return f.wait_for(patience) == std::future_status::ready; }
};

/// The child its parent runs inline: blocks this worker until the sibling
/// has started elsewhere. Returns whether it saw that, and its thread.
hop::task<std::tuple<bool, std::thread::id>> wait_for_sibling(const signal& sibling_started) {
    const bool seen = sibling_started.wait();
    co_return std::tuple{seen, std::this_thread::get_id()};
}

hop::task<std::thread::id> announce(signal& started) {
    started.fire();
    co_return std::this_thread::get_id();
}

// The libcoro pattern: each child hops onto the pool first (free: it is
// there already).
hop::task<std::tuple<bool, std::thread::id>> scheduled_wait(hop::cpu_pool& pool, const signal& sibling_started) {
    co_await pool.schedule();
    const bool seen = sibling_started.wait();
    co_return std::tuple{seen, std::this_thread::get_id()};
}

hop::task<std::thread::id> scheduled_announce(hop::cpu_pool& pool, signal& started) {
    co_await pool.schedule();
    started.fire();
    co_return std::this_thread::get_id();
}

long fib_serial(long n) { return n < 2 ? n : fib_serial(n - 1) + fib_serial(n - 2); }

hop::task<long> fib(long n) {
    if (n < 2) co_return n;
    auto r = co_await hop::when_all(fib(n - 1), fib(n - 2));
    co_return std::get<0>(r) + std::get<1>(r);
}

hop::task<long> fib_scheduled(hop::cpu_pool& pool, long n) {
    co_await pool.schedule();
    if (n < 2) co_return n;
    auto r = co_await hop::when_all(fib_scheduled(pool, n - 1), fib_scheduled(pool, n - 2));
    co_return std::get<0>(r) + std::get<1>(r);
}

// 4-way tree over [0, 4^depth), summing the leaves (skynet, smaller).
hop::task<std::uint64_t> tree(std::uint64_t first, int depth) {
    if (depth == 0) co_return first;
    std::uint64_t width = 1;
    for (int k = 1; k < depth; ++k) width *= 4;
    std::vector<hop::task<std::uint64_t>> kids;
    kids.reserve(4);
    for (std::uint64_t i = 0; i < 4; ++i) kids.push_back(tree(first + i * width, depth - 1));
    auto sums = co_await hop::when_all(std::move(kids));
    std::uint64_t total = 0;
    for (auto s : sums) total += s;
    co_return total;
}

struct measured {
    long value = 0;
    std::uint64_t allocations = 0;
    std::uint64_t frame_misses = 0;  // frames the cache could not serve
};

// Runs on the pool: allocations counted from inside, so the submit's own
// future and job are not counted.
hop::task<measured> counted_fib(long n) {
    const auto before = hop_test::allocations_total.load();
    const auto misses = hop::detail::frame_cache_misses();
    long v = co_await fib(n);
    co_return measured{v, hop_test::allocations_total.load() - before, hop::detail::frame_cache_misses() - misses};
}

struct measured_tree {
    std::uint64_t value = 0;
    std::uint64_t allocations = 0;
    std::uint64_t frame_misses = 0;
};

hop::task<measured_tree> counted_tree(int depth) {
    const auto before = hop_test::allocations_total.load();
    const auto misses = hop::detail::frame_cache_misses();
    auto v = co_await tree(0, depth);
    co_return measured_tree{v, hop_test::allocations_total.load() - before, hop::detail::frame_cache_misses() - misses};
}

// Holds one job on every worker at once, so each worker thread has started
// and made its one-time allocations (the inline queue it reserves) before
// anything is counted: on a loaded machine a worker's thread can start
// after the warm-up runs, inside the measured one (CI once counted 23
// allocations against 22 frames from the heap, the cold worker's misses).
bool every_worker_started(hop::cpu_pool& pool) {
    std::atomic<std::size_t> arrived{0};
    const std::size_t n = pool.size();
    std::vector<hop::future<bool>> held;
    for (std::size_t k = 0; k < n; ++k) {
        held.push_back(pool.submit([&arrived, n] {
            arrived.fetch_add(1);
            const auto give_up = std::chrono::steady_clock::now() + patience;
            while (arrived.load() < n && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
            return arrived.load() >= n;
        }));
    }
    bool all = true;
    for (auto& f : held) all = f.get() && all;
    return all;
}

std::uint64_t internal_calls(long n) { return n < 2 ? 0 : 1 + internal_calls(n - 1) + internal_calls(n - 2); }


// ---- spawn and task_group: helpers ----------------------------------------

hop::task<long> fib_spawn(hop::cpu_pool& pool, long n) {
    if (n < 2) co_return n;
    auto f = hop::spawn(pool, fib_spawn(pool, n - 1));
    const long b = co_await fib_spawn(pool, n - 2);
    const long a = co_await std::move(f);
    co_return a + b;
}

hop::task<long> fib_group(hop::cpu_pool& pool, long n) {
    if (n < 2) co_return n;
    hop::task_group g;
    auto fa = g.spawn(pool, fib_group(pool, n - 1));
    const long b = co_await fib_group(pool, n - 2);
    co_await g.wait();
    co_return fa.get() + b;
}

// Ten children awaited oldest first: each join finds newer siblings queued
// above its own child and runs them first.
hop::task<long> tree_spawn(hop::cpu_pool& pool, long base, int depth) {
    if (depth == 0) co_return base;
    std::array<hop::future<long>, 4> f;
    for (long i = 0; i < 4; ++i) f[static_cast<std::size_t>(i)] = hop::spawn(pool, tree_spawn(pool, base * 4 + i, depth - 1));
    long sum = 0;
    for (auto& x : f) sum += co_await std::move(x);
    co_return sum;
}

hop::task<std::thread::id> thread_of() { co_return std::this_thread::get_id(); }

/// Loops at cancellation points until stopped (true), or gives up (false).
hop::task<bool> until_stopped(signal& started, bool through_token) {
    const auto give_up = std::chrono::steady_clock::now() + patience;
    if (through_token) {
        std::stop_token token = co_await hop::get_stop_token();
        started.fire();
        while (!token.stop_requested() && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
        co_return token.stop_requested();
    }
    started.fire();
    try {
        while (std::chrono::steady_clock::now() < give_up) {
            co_await hop::cancellation_point();
            std::this_thread::yield();
        }
    } catch (const hop::cancelled_error&) {
        co_return true;
    }
    co_return false;
}


// The vector tree with its children in a std::array (when_all's array form).
hop::task<std::uint64_t> tree_array(std::uint64_t base, int depth) {
    if (depth == 0) co_return base;
    std::array<hop::task<std::uint64_t>, 4> kids;
    for (std::uint64_t i = 0; i < 4; ++i) kids[i] = tree_array(base * 4 + i, depth - 1);
    const std::array<std::uint64_t, 4> r = co_await hop::when_all(std::move(kids));
    co_return r[0] + r[1] + r[2] + r[3];
}

}  // namespace

TEST_SUITE("fork_join") {
    TEST_CASE("when_all on a pool worker forks: a child it did not run inline is stolen by another worker") {
        hop::cpu_pool pool{2};
        signal started;
        auto parent = [&]() -> hop::task<bool> {
            auto r = co_await hop::when_all(wait_for_sibling(started), announce(started));
            auto [seen, inline_thread] = std::get<0>(r);
            CHECK(seen);
            CHECK(inline_thread != std::get<1>(r));  // two workers ran the two children
            co_return pool.running_in_this_thread();
        };
        CHECK(pool.submit(parent).get());  // and the parent resumed on the pool
    }

    TEST_CASE("the libcoro pattern forks: children that co_await pool.schedule(), joined by when_all on the pool") {
        hop::cpu_pool pool{2};
        signal started;
        auto parent = [&]() -> hop::task<void> {
            auto r = co_await hop::when_all(scheduled_wait(pool, started), scheduled_announce(pool, started));
            auto [seen, inline_thread] = std::get<0>(r);
            CHECK(seen);
            CHECK(inline_thread != std::get<1>(r));
        };
        pool.submit(parent).get();
    }

    TEST_CASE("when_all of a vector and when_any fork too") {
        hop::cpu_pool pool{2};
        SUBCASE("vector") {
            signal started;
            auto parent = [&]() -> hop::task<void> {
                std::vector<hop::task<std::thread::id>> kids;
                auto first = [&]() -> hop::task<std::thread::id> {
                    CHECK(started.wait());
                    co_return std::this_thread::get_id();
                };
                kids.push_back(first());
                kids.push_back(announce(started));
                auto ids = co_await hop::when_all(std::move(kids));
                CHECK(ids[0] != ids[1]);
            };
            pool.submit(parent).get();
        }
        SUBCASE("when_any: the stolen child ends first and wins") {
            signal started;
            auto parent = [&]() -> hop::task<std::size_t> {
                std::vector<hop::task<int>> kids;
                // Run inline: holds its worker until the stolen sibling has
                // won, which it sees as a stop (the win stops the losers).
                auto slow = [&]() -> hop::task<int> {
                    std::stop_token token = co_await hop::get_stop_token();
                    CHECK(started.wait());
                    const auto give_up = std::chrono::steady_clock::now() + patience;
                    while (!token.stop_requested() && std::chrono::steady_clock::now() < give_up) {
                        std::this_thread::yield();
                    }
                    CHECK(token.stop_requested());
                    co_return 0;
                };
                auto fast = [&]() -> hop::task<int> {
                    started.fire();
                    co_return 1;
                };
                kids.push_back(slow());
                kids.push_back(fast());
                auto r = co_await hop::when_any(std::move(kids));
                co_return r.index;
            };
            CHECK(pool.submit(parent).get() == 1);
        }
    }

    TEST_CASE("a fork tree gives the serial answer on one worker, on two, and with every child hopping to the pool") {
        for (std::size_t threads : {1u, 2u}) {
            CAPTURE(threads);
            hop::cpu_pool pool{threads};
            CHECK(pool.submit([] { return fib(20); }).get() == fib_serial(20));
            CHECK(pool.submit([&] { return fib_scheduled(pool, 18); }).get() == fib_serial(18));
            const std::uint64_t n = 4 * 4 * 4 * 4 * 4;
            CHECK(pool.submit([] { return tree(0, 5); }).get() == n * (n - 1) / 2);
        }
    }

    TEST_CASE("an exception from a forked child propagates, whether it was stolen or taken back") {
        SUBCASE("stolen") {
            hop::cpu_pool pool{2};
            signal started;
            auto thrower = [&]() -> hop::task<int> {
                started.fire();
                throw boom("from the stolen child");
                co_return 0;
            };
            auto parent = [&]() -> hop::task<void> {
                auto r = co_await hop::when_all(wait_for_sibling(started), thrower());
                (void)r;
            };
            CHECK_THROWS_WITH_AS(pool.submit(parent).get(), "from the stolen child", boom);
        }
        SUBCASE("taken back and run inline (one worker: nobody steals)") {
            hop::cpu_pool pool{1};
            auto thrower = []() -> hop::task<int> {
                throw boom("from the inline child");
                co_return 0;
            };
            auto parent = [&]() -> hop::task<void> {
                auto r = co_await hop::when_all(fib(5), thrower(), fib(6));
                (void)r;
            };
            CHECK_THROWS_WITH_AS(pool.submit(parent).get(), "from the inline child", boom);
        }
    }

    TEST_CASE("the first failure stops a forked sibling at its next cancellation point") {
        hop::cpu_pool pool{2};
        signal started;
        std::atomic<bool> sibling_saw_stop{false};
        auto sibling = [&]() -> hop::task<void> {
            started.fire();
            const auto give_up = std::chrono::steady_clock::now() + patience;
            try {
                while (std::chrono::steady_clock::now() < give_up) {
                    co_await pool.schedule();  // a cancellation point, free on the pool
                    std::this_thread::yield();
                }
            } catch (const hop::cancelled_error&) {
                sibling_saw_stop = true;
                throw;
            }
        };
        auto failing = [&]() -> hop::task<void> {
            CHECK(started.wait());
            throw boom("first failure");
            co_return;
        };
        auto parent = [&]() -> hop::task<void> {
            auto r = co_await hop::when_all(failing(), sibling());
            (void)r;
        };
        CHECK_THROWS_WITH_AS(pool.submit(parent).get(), "first failure", boom);
        CHECK(sibling_saw_stop.load());
    }

    TEST_CASE("cancelling the parent's future reaches forked children, through cancellation points and tokens") {
        hop::cpu_pool pool{2};
        for (bool through_token : {false, true}) {
            CAPTURE(through_token);
            signal started;
            std::atomic<bool> saw_stop{false};
            auto child = [&]() -> hop::task<void> {
                const auto give_up = std::chrono::steady_clock::now() + patience;
                if (through_token) {
                    // Asking for the token makes the lazy source; it must still
                    // be linked to the parent's.
                    std::stop_token token = co_await hop::get_stop_token();
                    started.fire();
                    while (!token.stop_requested() && std::chrono::steady_clock::now() < give_up) {
                        std::this_thread::yield();
                    }
                    saw_stop = token.stop_requested();
                    co_await hop::cancellation_point();
                } else {
                    started.fire();
                    try {
                        while (std::chrono::steady_clock::now() < give_up) {
                            co_await hop::cancellation_point();
                            std::this_thread::yield();
                        }
                    } catch (const hop::cancelled_error&) {
                        saw_stop = true;
                        throw;
                    }
                }
            };
            auto quick = []() -> hop::task<void> { co_return; };
            auto parent = [&]() -> hop::task<void> {
                // Nested: the child is two lazy levels below the future's token.
                auto inner = [&]() -> hop::task<void> {
                    auto r = co_await hop::when_all(quick(), child());
                    (void)r;
                };
                auto r = co_await hop::when_all(quick(), inner());
                (void)r;
            };
            auto f = pool.submit(parent);
            REQUIRE(started.wait());
            CHECK(f.cancel());
            CHECK_THROWS_AS(f.get(), hop::cancelled_error);
            CHECK(saw_stop.load());
        }
    }

    TEST_CASE("off the pool nothing forks: on an io_loop and in sync_wait the children run on the caller's thread") {
        auto where = []() -> hop::task<std::thread::id> { co_return std::this_thread::get_id(); };
        auto parent = [&]() -> hop::task<bool> {
            const auto me = std::this_thread::get_id();
            auto r = co_await hop::when_all(where(), where(), where());
            co_return std::get<0>(r) == me && std::get<1>(r) == me && std::get<2>(r) == me &&
                std::this_thread::get_id() == me;
        };
        CHECK(hop::run(parent()));
        CHECK(hop::sync_wait(parent()));
    }

    TEST_CASE("a fork allocates nothing but coroutine frames, and nothing at all once the frame cache is warm") {
        for (std::size_t threads : {1u, 2u}) {
            CAPTURE(threads);
            hop::cpu_pool pool{threads};
            REQUIRE(every_worker_started(pool));
            constexpr long n = 18;
            const std::uint64_t forks = internal_calls(n);  // each joins two children
            for (int warm = 0; warm < 10; ++warm) CHECK(pool.submit([] { return counted_fib(n); }).get().value > 0);
            const measured m = pool.submit([] { return counted_fib(n); }).get();
            CHECK(m.value == fib_serial(n));
#if HOP_FRAME_CACHE
            if (threads == 1) {
                CHECK(m.allocations == 0);
            } else {
                // Frames made on one worker and freed on the other travel
                // back through a depot in batches; now and then a worker
                // runs dry before a batch comes back and takes a frame from
                // the heap (a few per 10,000 forks, measured). Nothing else
                // is allocated.
                CHECK(m.allocations == m.frame_misses);
                MESSAGE("frames from the heap on two workers: " << m.frame_misses << " for " << forks << " forks");
            }
#else
            // No cache (ASan build): exactly the frames, two per fork (the
            // child tasks: no driver, no stop state, no future); plus the
            // root fib's own frame.
            CHECK(m.allocations == 2 * forks + 1);
#endif
            (void)forks;

            // The vector form: nothing beyond the caller's own vector per call.
            constexpr int depth = 5;
            std::uint64_t calls = 0;
            for (int d = 1, level = 1; d <= depth; ++d, level *= 4) calls += static_cast<std::uint64_t>(level);  // internal nodes
            for (int warm = 0; warm < 10; ++warm) (void)pool.submit([] { return counted_tree(depth); }).get();
            const measured_tree t = pool.submit([] { return counted_tree(depth); }).get();
            const std::uint64_t leaves = 4 * 4 * 4 * 4 * 4;
            CHECK(t.value == leaves * (leaves - 1) / 2);
#if HOP_FRAME_CACHE
            // Per call: the kids vector it builds and the std::vector that
            // when_all returns; nothing of hop's own (give or take a frame on
            // two workers, as above).
            CHECK(t.allocations == 2 * calls + t.frame_misses);
            if (threads == 1) CHECK(t.frame_misses == 0);
#else
            // Per call: the 4 tasks, the two vectors above, and when_all's
            // two frame-cache arrays (the children's sinks, the items it
            // starts); plus the root's frame.
            CHECK(t.allocations == calls * (4 + 2 + 2) + 1);
#endif
        }
    }

    TEST_CASE("spawn and task_group on a pool worker give the serial answer, stolen or not") {
        for (std::size_t threads : {1u, 2u}) {
            CAPTURE(threads);
            hop::cpu_pool pool{threads};
            CHECK(pool.submit([&] { return fib_spawn(pool, 18); }).get() == fib_serial(18));
            CHECK(pool.submit([&] { return fib_group(pool, 18); }).get() == fib_serial(18));
            const long leaves = 4 * 4 * 4 * 4;
            CHECK(pool.submit([&] { return tree_spawn(pool, 0, 4); }).get() == leaves * (leaves - 1) / 2);
        }
    }

    TEST_CASE("spawn: a child nobody stole runs at the join on the awaiting worker, even under a blocking get()") {
        // One worker: nobody can steal. get() on that worker used to block
        // the only thread that could run the child; now the join runs it.
        hop::cpu_pool pool{1};
        auto parent = [&]() -> hop::task<bool> {
            auto f = hop::spawn(pool, thread_of());
            auto g = hop::spawn(pool, thread_of());
            const bool g_done = g.wait_for(patience) && g.get() == std::this_thread::get_id();
            const bool f_same = co_await f == std::this_thread::get_id();
            co_return g_done && f_same;
        };
        CHECK(pool.submit(parent).get());
    }

    TEST_CASE("spawn and task_group: a child is stolen by another worker while its parent works") {
        hop::cpu_pool pool{2};
        SUBCASE("spawn") {
            signal started;
            auto parent = [&]() -> hop::task<void> {
                auto f = hop::spawn(pool, announce(started));
                auto [seen, me] = co_await wait_for_sibling(started);
                CHECK(seen);
                CHECK(co_await f != me);
            };
            pool.submit(parent).get();
        }
        SUBCASE("task_group") {
            signal started;
            auto parent = [&]() -> hop::task<void> {
                hop::task_group g;
                auto f = g.spawn(announce(started));
                auto [seen, me] = co_await wait_for_sibling(started);
                CHECK(seen);
                co_await g.wait();
                CHECK(f.get() != me);
            };
            pool.submit(parent).get();
        }
    }

    TEST_CASE("spawn and task_group: exceptions propagate from children run inline and from stolen ones") {
        auto thrower = [](const char* what) -> hop::task<int> {
            throw boom(what);
            co_return 0;
        };
        SUBCASE("inline (one worker)") {
            hop::cpu_pool pool{1};
            auto via_spawn = [&]() -> hop::task<int> {
                auto f = hop::spawn(pool, thrower("spawned"));
                co_return co_await f;
            };
            CHECK_THROWS_WITH_AS(pool.submit(via_spawn).get(), "spawned", boom);
            auto via_group = [&]() -> hop::task<void> {
                hop::task_group g;
                auto ok = g.spawn(fib_spawn(pool, 5));
                auto bad = g.spawn(thrower("grouped"));
                co_await g.wait();
            };
            CHECK_THROWS_WITH_AS(pool.submit(via_group).get(), "grouped", boom);
        }
        SUBCASE("stolen (two workers)") {
            hop::cpu_pool pool{2};
            signal started;
            auto stolen_thrower = [&]() -> hop::task<int> {
                started.fire();
                throw boom("stolen");
                co_return 0;
            };
            auto via_group = [&]() -> hop::task<void> {
                hop::task_group g;
                auto bad = g.spawn(stolen_thrower());
                auto [seen, me] = co_await wait_for_sibling(started);
                CHECK(seen);
                (void)me;
                co_await g.wait();
            };
            CHECK_THROWS_WITH_AS(pool.submit(via_group).get(), "stolen", boom);
        }
    }

    TEST_CASE("cancelling the parent reaches spawned and grouped children, run inline or stolen") {
        for (std::size_t threads : {1u, 2u}) {
            for (bool through_token : {false, true}) {
                CAPTURE(threads);
                CAPTURE(through_token);
                hop::cpu_pool pool{threads};
                SUBCASE("spawn: the parent awaits the child's future") {
                    signal started;
                    auto parent = [&]() -> hop::task<bool> {
                        auto f = hop::spawn(pool, until_stopped(started, through_token));
                        co_return co_await f;
                    };
                    auto f = pool.submit(parent);
                    REQUIRE(started.wait());
                    CHECK(f.cancel());
                    // Either the child saw the stop and returned true, or the
                    // await was cancelled: never false (the child gave up).
                    try {
                        CHECK(f.get());
                    } catch (const hop::cancelled_error&) {
                    }
                }
                SUBCASE("task_group: the parent waits on the group") {
                    signal started;
                    std::atomic<bool> saw{false};
                    auto child = [&]() -> hop::task<void> { saw = co_await until_stopped(started, through_token); };
                    auto parent = [&]() -> hop::task<void> {
                        hop::task_group g;
                        auto c = g.spawn(child());
                        co_await g.wait();
                    };
                    auto f = pool.submit(parent);
                    REQUIRE(started.wait());
                    CHECK(f.cancel());
                    CHECK_THROWS_AS(f.get(), hop::cancelled_error);
                    CHECK(saw.load());
                }
            }
        }
    }

    TEST_CASE("a task_group's first failure stops a sibling the waiting worker runs inline") {
        hop::cpu_pool pool{2};
        signal started;
        std::atomic<bool> saw{false};
        auto sibling = [&]() -> hop::task<void> { saw = co_await until_stopped(started, false); };
        auto failing = [&]() -> hop::task<void> {
            CHECK(started.wait());
            throw boom("first failure");
            co_return;
        };
        auto parent = [&]() -> hop::task<void> {
            hop::task_group g;
            auto a = g.spawn(failing());  // older: stolen by the other worker
            auto b = g.spawn(sibling());  // newest: run inline at the join
            co_await g.wait();
        };
        CHECK_THROWS_WITH_AS(pool.submit(parent).get(), "first failure", boom);
        CHECK(saw.load());
    }

    TEST_CASE("spawn and task_group forks allocate nothing once the frame cache is warm") {
        hop::cpu_pool pool{1};
        auto measure = [&](auto make) {
            for (int warm = 0; warm < 5; ++warm) (void)pool.submit(make).get();
            return pool.submit([&]() -> hop::task<std::uint64_t> {
                       const auto before = hop_test::allocations_total.load();
                       (void)co_await make();
                       co_return hop_test::allocations_total.load() - before;
                   })
                .get();
        };
        const std::uint64_t spawned = measure([&] { return fib_spawn(pool, 16); });
        const std::uint64_t grouped = measure([&] { return fib_group(pool, 16); });
#if HOP_FRAME_CACHE
        CHECK(spawned == 0);
        MESSAGE("task_group fib(16): " << grouped << " allocations for " << internal_calls(16) << " forks");
#else
        // Every call's frame (two per fork, and the root) and one spawned
        // state per fork.
        CHECK(spawned == 3 * internal_calls(16) + 1);
        (void)grouped;
#endif
    }

    TEST_CASE("when_all over a std::array forks, propagates a failure, and allocates nothing but frames") {
        for (std::size_t threads : {1u, 2u}) {
            CAPTURE(threads);
            hop::cpu_pool pool{threads};
            const std::uint64_t leaves = 4 * 4 * 4 * 4 * 4;
            CHECK(pool.submit([] { return tree_array(0, 5); }).get() == leaves * (leaves - 1) / 2);
            auto failing = [&]() -> hop::task<int> {
                std::array<hop::task<int>, 3> kids;
                kids[0] = []() -> hop::task<int> { co_return 1; }();
                kids[1] = []() -> hop::task<int> {
                    throw boom("array child");
                    co_return 0;
                }();
                kids[2] = []() -> hop::task<int> { co_return 3; }();
                auto r = co_await hop::when_all(std::move(kids));
                co_return r[0];
            };
            CHECK_THROWS_WITH_AS(pool.submit(failing).get(), "array child", boom);
        }
        hop::cpu_pool pool{1};
        for (int warm = 0; warm < 5; ++warm) (void)pool.submit([] { return tree_array(0, 4); }).get();
        const std::uint64_t made = pool.submit([]() -> hop::task<std::uint64_t> {
                                           const auto before = hop_test::allocations_total.load();
                                           (void)co_await tree_array(0, 4);
                                           co_return hop_test::allocations_total.load() - before;
                                       })
                                       .get();
#if HOP_FRAME_CACHE
        CHECK(made == 0);
#else
        CHECK(made == 1 + 4 + 16 + 64 + 256);  // the frames, one per call
#endif
    }

    TEST_CASE("a task_group child awaited through its future and run inline still hears its group's stop") {
        hop::cpu_pool pool{2};
        signal started;
        auto failing = [&]() -> hop::task<void> {
            CHECK(started.wait());
            throw boom("sibling failed");
            co_return;
        };
        auto parent = [&]() -> hop::task<bool> {
            hop::task_group g;
            auto a = g.spawn(failing());                         // stolen by the other worker
            auto b = g.spawn(until_stopped(started, false));  // taken back by the await below
            const bool saw = co_await b;                         // the group's stop must reach it
            try {
                co_await g.wait();
            } catch (const boom&) {
                co_return saw;
            }
            co_return false;
        };
        CHECK(pool.submit(parent).get());
    }
}
