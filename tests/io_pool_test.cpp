// hop::io_pool: loops on their own threads, spawn_on, moving between loops,
// shutdown, failures, and spreading connections over the loops.
// Runs once per backend (HOP_BACKEND), like every loop test.

#include <hop/io_pool.hpp>
#include <hop/net.hpp>
#include <hop/task_group.hpp>
#include <hop/time.hpp>

#include "lib/loop_core.hpp"
#include "support/backend.hpp"
#include "support/os.hpp"
#include "support/sockets.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sched.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

hop::io_pool_options pool_options(hop::backend b, std::size_t loops) {
    hop::io_pool_options o;
    o.loops = loops;
    o.loop = hop_test::options_for(b);
    return o;
}

struct where {
    std::size_t index;
    hop::io_loop* loop;
    std::thread::id thread;
};

hop::task<where> where_am_i(hop::io_pool& pool) {
    co_return where{pool.this_index(), hop::current_loop(), std::this_thread::get_id()};
}

// A plain blocking client socket connected to 127.0.0.1:port.
int connect_blocking(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    return fd;
}

// A task's future completes just before the pool counts it out (its frame
// goes first): wait for the count, with a guard that fails, not hangs.
template <class Pred>
bool eventually(Pred pred) {
    const auto until = std::chrono::steady_clock::now() + hop_test::socket_guard;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::yield();
    }
    return true;
}

bool load_drops_to_zero(const hop::io_pool& pool, std::size_t i) {
    return eventually([&] { return pool.load(i) == 0; });
}

}  // namespace

TEST_CASE("an io_pool runs each loop on its own thread; spawn_on starts a task on the loop asked for") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 3)};
        REQUIRE(pool.size() == 3);
        CHECK(pool.this_loop() == nullptr);
        CHECK_THROWS_AS(pool.this_index(), std::logic_error);

        std::set<hop::io_loop*> loops;
        std::set<std::thread::id> threads;
        for (std::size_t i = 0; i < pool.size(); ++i) {
            CHECK(pool[i].backend_kind() == b);
            auto w = pool.spawn_on(i, where_am_i(pool)).get();
            CHECK(w.index == i);
            CHECK(w.loop == &pool[i]);
            CHECK(w.thread != std::this_thread::get_id());
            loops.insert(w.loop);
            threads.insert(w.thread);
        }
        CHECK(loops.size() == 3);
        CHECK(threads.size() == 3);

        auto fs = pool.spawn_on_each([&](std::size_t i) -> hop::task<std::size_t> {
            // The lambda only makes the task; the index is copied into it.
            return [](hop::io_pool& p, std::size_t mine) -> hop::task<std::size_t> {
                CHECK(p.this_index() == mine);
                CHECK(p.this_loop() == &p[mine]);
                co_return mine * 10;
            }(pool, i);
        });
        REQUIRE(fs.size() == 3);
        for (std::size_t i = 0; i < fs.size(); ++i) CHECK(fs[i].get() == i * 10);
    });
}

TEST_CASE("io_pool refuses bad arguments with exceptions that name them") {
    CHECK_THROWS_WITH_AS(hop::io_pool{0}, doctest::Contains("0 loops"), std::invalid_argument);
    hop::io_pool_options huge;
    huge.loops = 5000;
    CHECK_THROWS_WITH_AS(hop::io_pool{huge}, doctest::Contains("5000 loops"), std::invalid_argument);
    hop::io_pool_options bad_depth;
    bad_depth.loops = 2;
    bad_depth.loop.queue_depth = 0;
    CHECK_THROWS_WITH_AS(hop::io_pool{bad_depth}, doctest::Contains("queue_depth 0"), std::invalid_argument);

    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        CHECK_THROWS_WITH_AS(pool[2], doctest::Contains("loop 2 of a pool of 2"), std::out_of_range);
        CHECK_THROWS_WITH_AS(pool.load(7), doctest::Contains("loop 7"), std::out_of_range);
        CHECK_THROWS_WITH_AS(pool.spawn_on(9, where_am_i(pool)), doctest::Contains("loop 9"), std::out_of_range);
        CHECK_THROWS_AS(pool.spawn_on(0, hop::task<int>{}), std::invalid_argument);
        CHECK(pool.load(0) == 0);  // a refused spawn counts nothing
        CHECK(pool.load(1) == 0);
    });
}

namespace {

// Hops `hops` times over the pool's loops in a pattern of its own; at each
// stop checks it runs on the loop it scheduled onto.
hop::task<int> bouncer(hop::io_pool& pool, std::size_t seed, int hops, std::atomic<int>& wrong) {
    int done = 0;
    std::size_t at = seed % pool.size();
    for (int h = 0; h < hops; ++h) {
        at = (at * 7 + seed + static_cast<std::size_t>(h)) % pool.size();
        co_await pool[at].schedule();
        if (hop::current_loop() != &pool[at] || pool.this_index() != at) wrong.fetch_add(1);
        ++done;
    }
    co_return done;
}

}  // namespace

TEST_CASE("a storm of tasks moving between every loop: each hop lands where it was sent, none is lost") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 4)};
        std::atomic<int> wrong{0};
        const int tasks = 64;
        const int hops = hop_test::under_tsan ? 200 : 1000;
        std::vector<hop::future<int>> fs;
        for (int t = 0; t < tasks; ++t) {
            const auto seed = static_cast<std::size_t>(t);
            fs.push_back(pool.spawn_on(seed % pool.size(), bouncer(pool, seed, hops, wrong)));
        }
        long total = 0;
        for (auto& f : fs) total += f.get();
        CHECK(total == static_cast<long>(tasks) * hops);
        CHECK(wrong.load() == 0);
        for (std::size_t i = 0; i < pool.size(); ++i) CHECK(load_drops_to_zero(pool, i));
    });
}

namespace {

// Bounces across the loops until stopped; reports the token it sees at each
// loop (it must be the one spawn_on gave it, wherever it runs).
hop::task<void> bounce_until_stopped(hop::io_pool& pool, std::atomic<int>& hops, std::atomic<int>& token_lost,
                                     hop::promise<void>& started) {
    const std::stop_token mine = co_await hop::get_stop_token();
    started.set_value();
    for (std::size_t at = 0;; at = (at + 1) % pool.size()) {
        co_await pool[at].schedule();  // a cancellation point
        const std::stop_token now = co_await hop::get_stop_token();
        if (now != mine || !now.stop_possible()) token_lost.fetch_add(1);
        if (hop::current_loop() != &pool[at]) token_lost.fetch_add(1);
        hops.fetch_add(1);
    }
}

}  // namespace

TEST_CASE("a task moving across every loop keeps its stop token: cancel() ends it wherever it is") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 3)};
        std::atomic<int> hops{0};
        std::atomic<int> token_lost{0};
        hop::promise<void> started;
        auto started_f = started.get_future();
        auto f = pool.spawn_on(1, bounce_until_stopped(pool, hops, token_lost, started));
        started_f.get();
        // Let it go round every loop a few times (no timing: count hops).
        while (hops.load() < 30) std::this_thread::yield();
        f.cancel();
        REQUIRE(f.wait_for(hop_test::socket_guard));
        CHECK(f.cancelled());
        CHECK_THROWS_AS(f.get(), hop::cancelled_error);
        CHECK(token_lost.load() == 0);
        CHECK(load_drops_to_zero(pool, 1));
    });
}

namespace {
hop::task<int> fails_on(hop::io_pool& pool) {
    co_await hop::sleep_for(0ms);
    throw std::runtime_error("task on loop " + std::to_string(pool.this_index()) + " failed");
}

hop::task<int> counts_to(int n) {
    int k = 0;
    for (int i = 0; i < n; ++i) {
        co_await hop::current_loop()->schedule();  // yields to the loop each time
        ++k;
    }
    co_return k;
}
}  // namespace

TEST_CASE("a task that throws on one loop leaves the other loops (and its own) serving") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        auto other = pool.spawn_on(1, counts_to(2000));
        auto bad = pool.spawn_on(0, fails_on(pool));
        CHECK_THROWS_WITH_AS(bad.get(), "task on loop 0 failed", std::runtime_error);
        CHECK(other.get() == 2000);
        // Loop 0 still runs tasks.
        CHECK(pool.spawn_on(0, counts_to(10)).get() == 10);
        CHECK(pool.spawn_on(0, where_am_i(pool)).get().index == 0);
        CHECK_FALSE(pool.stopping());
    });
}

namespace {
// Serves one accepted connection: reads until the peer closes or stop.
hop::task<void> hold_connection(hop::tcp_stream s, std::atomic<int>& ended_cancelled) {
    std::array<char, 64> buf{};
    try {
        for (;;) {
            const std::size_t n = co_await s.read_some(buf);
            if (n == 0) co_return;
        }
    } catch (const hop::cancelled_error&) {
        ended_cancelled.fetch_add(1);
        throw;
    }
}

hop::task<void> accept_and_hold(hop::tcp_listener& lis, int count, std::atomic<int>& accepted,
                                std::atomic<int>& ended_cancelled) {
    hop::task_group g;
    for (int i = 0; i < count; ++i) {
        hop::tcp_stream s = co_await lis.accept();
        accepted.fetch_add(1);
        g.spawn(hold_connection(std::move(s), ended_cancelled));
    }
    co_await g.wait();
}
}  // namespace

TEST_CASE("destroying a pool while every loop holds open connections cancels them all and joins") {
    hop_test::for_each_backend([](hop::backend b) {
        std::atomic<int> accepted{0};
        std::atomic<int> ended_cancelled{0};
        std::vector<int> clients;
        std::vector<hop::future<void>> fs;
        const int per_loop = 5;
        {
            hop::io_pool pool{pool_options(b, 3)};
            std::vector<hop::tcp_listener> listeners;
            for (std::size_t i = 0; i < pool.size(); ++i) {
                listeners.push_back(hop::tcp_listener::bind(hop::endpoint::loopback_v4(0)));
            }
            for (std::size_t i = 0; i < pool.size(); ++i) {
                fs.push_back(pool.spawn_on(i, accept_and_hold(listeners[i], per_loop, accepted, ended_cancelled)));
            }
            for (auto& l : listeners) {
                for (int c = 0; c < per_loop; ++c) clients.push_back(connect_blocking(l.local_endpoint().port()));
            }
            while (accepted.load() < per_loop * 3) std::this_thread::yield();
            for (std::size_t i = 0; i < pool.size(); ++i) CHECK(pool.load(i) == 1);
            // The pool goes with the connections open.
        }
        CHECK(ended_cancelled.load() == per_loop * 3);
        for (auto& f : fs) {
            CHECK(f.done());
            CHECK(f.cancelled());
        }
        // The server side is closed: every client reads the end.
        for (int fd : clients) {
            char c;
            CHECK(::read(fd, &c, 1) == 0);
            ::close(fd);
        }
    });
}

TEST_CASE("stop() from a task ends run(); spawn_on afterwards is refused; run() on a pool thread is refused") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        std::atomic<bool> run_refused{false};
        auto f = pool.spawn_on(1, [](hop::io_pool& p, std::atomic<bool>& refused) -> hop::task<int> {
            try {
                p.run();
            } catch (const std::logic_error&) {
                refused = true;
            }
            p.stop();
            // Stopping asks this task to stop, but it is waited for: the
            // pool is not down until it returns.
            co_return 5;
        }(pool, run_refused));
        pool.run();  // returns once the task above stopped the pool and it ended
        CHECK(run_refused.load());
        CHECK(f.get() == 5);
        CHECK(pool.stopping());
        CHECK_THROWS_AS(pool.spawn_on(0, where_am_i(pool)), hop::executor_shutdown_error);
    });
}

TEST_CASE("stopping the pool waits for a task that moved to another loop and is sleeping there") {
    hop_test::for_each_backend([](hop::backend b) {
        std::atomic<int> phase{0};
        hop::future<int> f;
        {
            hop::io_pool pool{pool_options(b, 2)};
            f = pool.spawn_on(0, [](hop::io_pool& p, std::atomic<int>& ph) -> hop::task<int> {
                co_await p[1].schedule();
                ph = 1;
                try {
                    co_await hop::sleep_for(1h);
                } catch (const hop::cancelled_error&) {
                    ph = 2;
                }
                // Still on loop 1, which must still be running: shutdown
                // waits for every task the pool started, wherever it is.
                if (hop::current_loop() == &p[1]) ph = 3;
                co_return 9;
            }(pool, phase));
            while (phase.load() < 1) std::this_thread::yield();
        }
        CHECK(phase.load() == 3);
        CHECK(f.get() == 9);
    });
}

TEST_CASE("a pool destroyed from one of its own tasks shuts down without it and frees itself") {
    hop_test::for_each_backend([](hop::backend b) {
        auto owner = std::make_unique<hop::io_pool>(pool_options(b, 2));
        hop::promise<void> destroyed;
        auto destroyed_f = destroyed.get_future();
        auto* raw = owner.get();
        auto f = raw->spawn_on(1, [](std::unique_ptr<hop::io_pool>& o, hop::promise<void>& d) -> hop::task<void> {
            o.reset();  // returns at once: the pool ends after this task
            d.set_value();
            co_return;
        }(owner, destroyed));
        REQUIRE(destroyed_f.wait_for(hop_test::socket_guard));
        REQUIRE(f.wait_for(hop_test::socket_guard));
        CHECK_NOTHROW(f.get());
        CHECK(owner == nullptr);
        // The threads end and free the state on their own (ASan/LSan check
        // that nothing leaks at exit).
    });
}

TEST_CASE("pin_threads puts loop i's thread on one CPU the process may use") {
    hop_test::for_each_backend([](hop::backend b) {
        auto o = pool_options(b, 2);
        o.pin_threads = true;
        hop::io_pool pool{o};
        cpu_set_t allowed;
        CPU_ZERO(&allowed);
        REQUIRE(::sched_getaffinity(0, sizeof allowed, &allowed) == 0);
        for (std::size_t i = 0; i < pool.size(); ++i) {
            auto f = pool.spawn_on(i, []() -> hop::task<int> {
                cpu_set_t mine;
                CPU_ZERO(&mine);
                if (::sched_getaffinity(0, sizeof mine, &mine) != 0) co_return -1;
                co_return CPU_COUNT(&mine);
            }());
            CHECK(f.get() == 1);
        }
        CHECK(CPU_COUNT(&allowed) >= 1);
    });
}

TEST_CASE("stop() on one of the pool's loops does not end it: the pool runs it again") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        pool[1].stop();
        CHECK(pool.spawn_on(1, where_am_i(pool)).get().index == 1);
    });
}

namespace {
// The least_loaded acceptor: each connection goes to the loop with the
// fewest tasks, as a stream no loop owns yet.
hop::task<void> hand_over(hop::io_pool& pool, hop::tcp_listener& lis, int count,
                          std::vector<std::atomic<int>>& served, std::atomic<int>& wrong_loop) {
    for (int i = 0; i < count; ++i) {
        hop::tcp_stream s = co_await lis.accept_detached();
        const std::size_t target = pool.least_loaded();
        (void)pool.spawn_on(target, [](hop::io_pool& p, std::size_t want, hop::tcp_stream st,
                                       std::vector<std::atomic<int>>& per_loop,
                                       std::atomic<int>& wrong) -> hop::task<void> {
            if (p.this_index() != want) wrong.fetch_add(1);
            per_loop[p.this_index()].fetch_add(1);
            std::array<char, 16> buf{};
            // Its first operation binds the stream to this loop.
            while (co_await st.read_some(buf) != 0) {
            }
        }(pool, target, std::move(s), served, wrong_loop));
    }
}
}  // namespace

TEST_CASE("1,000 connections handed to the least loaded loop: none holds more than 1.5x the mean") {
    hop_test::for_each_backend([](hop::backend b) {
        constexpr int conns = 1000;
        hop::io_pool pool{pool_options(b, 3)};
        auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.backlog = 1024});
        std::vector<std::atomic<int>> served(pool.size());
        std::atomic<int> wrong{0};
        // The acceptor is a spawn_on task too, so loop 0 counts it.
        auto acceptor = pool.spawn_on(0, hand_over(pool, lis, conns, served, wrong));
        std::vector<int> clients;
        clients.reserve(conns);
        for (int i = 0; i < conns; ++i) clients.push_back(connect_blocking(lis.local_endpoint().port()));
        REQUIRE(acceptor.wait_for(hop_test::socket_guard));
        acceptor.get();
        const auto until = std::chrono::steady_clock::now() + hop_test::socket_guard;
        auto total = [&] {
            int t = 0;
            for (auto& s : served) t += s.load();
            return t;
        };
        while (total() < conns && std::chrono::steady_clock::now() < until) std::this_thread::yield();
        REQUIRE(total() == conns);
        const double mean = static_cast<double>(conns) / static_cast<double>(pool.size());
        for (std::size_t i = 0; i < pool.size(); ++i) {
            INFO("loop " << i << " serves " << served[i].load() << " of " << conns);
            CHECK(static_cast<double>(served[i].load()) <= 1.5 * mean);
            // (The acceptor's own count leaves loop 0 just after its future is done.)
            CHECK(eventually([&] { return pool.load(i) == static_cast<std::size_t>(served[i].load()); }));
        }
        CHECK(wrong.load() == 0);
        for (int fd : clients) ::close(fd);  // each session reads the end and ends
        for (std::size_t i = 0; i < pool.size(); ++i) CHECK(load_drops_to_zero(pool, i));
    });
}

TEST_CASE("a stream from accept_detached() binds to the loop of its first operation; accept() binds at once") {
    hop_test::for_each_backend([](hop::backend b) {
        hop::io_pool pool{pool_options(b, 2)};
        auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
        const auto port = lis.local_endpoint().port();
        const int c1 = connect_blocking(port);
        const int c2 = connect_blocking(port);
        REQUIRE(::write(c1, "x", 1) == 1);
        REQUIRE(::write(c2, "y", 1) == 1);

        // Detached: accepted on loop 0, read on loop 1.
        auto detached = pool.spawn_on(0, [](hop::tcp_listener& l) -> hop::task<hop::tcp_stream> {
                                co_return co_await l.accept_detached();
                            }(lis)).get();
        auto got = pool.spawn_on(1, [](hop::tcp_stream& s) -> hop::task<char> {
                           std::array<char, 1> c{};
                           co_await s.read_exact(c);
                           co_return c[0];
                       }(detached)).get();
        CHECK(got == 'x');
        // Now it belongs to loop 1: loop 0 may not use it.
        CHECK_THROWS_WITH_AS(pool.spawn_on(0, [](hop::tcp_stream& s) -> hop::task<void> {
                                     std::array<char, 1> c{};
                                     co_await s.read_some(c);
                                 }(detached)).get(),
                             doctest::Contains("belongs to"), std::logic_error);

        // accept(): the stream belongs to the accepting loop from the start.
        auto bound = pool.spawn_on(0, [](hop::tcp_listener& l) -> hop::task<hop::tcp_stream> {
                             co_return co_await l.accept();
                         }(lis)).get();
        CHECK_THROWS_WITH_AS(pool.spawn_on(1, [](hop::tcp_stream& s) -> hop::task<void> {
                                     std::array<char, 1> c{};
                                     co_await s.read_some(c);
                                 }(bound)).get(),
                             doctest::Contains("belongs to"), std::logic_error);
        ::close(c1);
        ::close(c2);
    });
}

TEST_CASE("a task hopping from one pool loop to another that sleeps wakes it (MSG_RING or eventfd)") {
    // A handler of loop 0 posts to sleeping loop 1: the MSG_RING wake (or
    // eventfd, HOP_URING_NO_MSG_RING=1) rides on loop 0's next submit and
    // must end loop 1's wait; a timer on loop 1 must then complete.
    hop_test::for_each_backend([](hop::backend b) {
        for (const char* no_msg_ring : {"0", "1"}) {
            if (b != hop::backend::io_uring && no_msg_ring[0] == '1') continue;
            hop_test::env_override knob("HOP_URING_NO_MSG_RING", no_msg_ring);
            INFO("HOP_URING_NO_MSG_RING=" << std::string(no_msg_ring));
            hop::io_pool pool(pool_options(b, 2));
            for (int round = 0; round < 20; ++round) {
                INFO("round " << round);
                // Loop 1 sleeps (a state, not a time; a guard fails the test).
                const auto deadline = std::chrono::steady_clock::now() + hop_test::scaled(60s);
                while (!pool[1].core().sleeping() && std::chrono::steady_clock::now() < deadline) {
                    std::this_thread::yield();
                }
                REQUIRE(pool[1].core().sleeping());
                auto f = pool.spawn_on(0, [](hop::io_pool& p) -> hop::task<std::size_t> {
                    co_await p[1].schedule();  // a post from loop 0 to sleeping loop 1
                    co_await hop::sleep_for(1ms);  // a timer on loop 1
                    const std::size_t at = p.this_index();
                    co_await p[0].schedule();
                    co_return at;
                }(pool));
                REQUIRE(f.wait_for(hop_test::scaled(60s)));
                CHECK(f.get() == 1u);
            }
            if (b == hop::backend::io_uring) {
                // Every round's hop to loop 1 found it asleep.
                const auto got = pool.spawn_on(1, [](hop::io_pool& p) -> hop::task<hop::detail::wake_stats> {
                                         co_return p.this_loop()->core().backend().wake_counts();
                                     }(pool)).get();
                CHECK(got.msg_ring_received == (no_msg_ring[0] == '1' ? 0u : 20u));
            }
        }
    });
}
