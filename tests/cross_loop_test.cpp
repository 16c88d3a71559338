// Coroutines moving between loops that each run on their own thread
// (issue 11: cross-loop wakeups by IORING_OP_MSG_RING between io_uring loops,
// eventfd otherwise). Every case runs on both backends; on io_uring the
// cases that wake loops run twice: with MSG_RING wakes, and with
// HOP_URING_NO_MSG_RING=1 (eventfd wakes only), and check through the
// loops' wake counters (lib/loop_core.hpp) which path was taken.
//
// No sleeps and no timing thresholds: waits end on futures, latches or a
// state the test reaches, each bounded by a guard that fails the test
// instead of hanging it.

#include <hop/combinators.hpp>
#include <hop/future.hpp>
#include <hop/io_loop.hpp>
#include <hop/task.hpp>

#include "lib/loop_core.hpp"
#include "support/backend.hpp"
#include "support/guard.hpp"
#include "support/os.hpp"

#include <doctest/doctest.h>

#include <poll.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

using namespace std::chrono_literals;
using hop_test::env_override;
using hop_test::for_each_backend;
using hop_test::options_for;
using hop_test::running_loop;

namespace {

// A failure guard only: every wait below is released by the test itself.
constexpr auto guard = hop_test::scaled(60s);

using loop_set = std::vector<std::unique_ptr<running_loop>>;

loop_set start_loops(hop::backend b, std::size_t n) {
    loop_set loops;
    for (std::size_t i = 0; i < n; ++i) loops.push_back(std::make_unique<running_loop>(b));
    return loops;
}

std::vector<hop::io_loop*> pointers(const loop_set& loops) {
    std::vector<hop::io_loop*> v;
    for (const auto& l : loops) v.push_back(&l->loop());
    return v;
}

// Runs `f(wake_path)` once per way loops of `b` wake each other: on
// io_uring with MSG_RING and with eventfd only (the knob is read when a ring
// is set up, so `f` must make its loops itself); on epoll once.
enum class wake_path { msg_ring, eventfd, epoll };
template <class F>
void for_each_wake_path(hop::backend b, F&& f) {
    if (b != hop::backend::io_uring) {
        f(wake_path::epoll);
        return;
    }
    {
        INFO("wakes: IORING_OP_MSG_RING");
        f(wake_path::msg_ring);
    }
    {
        env_override knob("HOP_URING_NO_MSG_RING", "1");
        INFO("wakes: eventfd (HOP_URING_NO_MSG_RING=1)");
        f(wake_path::eventfd);
    }
}

// `loop`'s wake counters, read on its own thread.
hop::detail::wake_stats stats_of(hop::io_loop& loop) {
    hop::promise<hop::detail::wake_stats> p;
    auto f = p.get_future();
    loop.post([&] { p.set_value(loop.core().backend().wake_counts()); });
    REQUIRE(f.wait_for(guard));
    return f.get();
}

// Waits until `loop` sleeps (in the backend, or its host on the native
// handle): a state, not a time. False if it does not within the guard.
bool wait_until_sleeping(hop::io_loop& loop) {
    const auto deadline = std::chrono::steady_clock::now() + guard;
    while (!loop.core().sleeping()) {
        if (std::chrono::steady_clock::now() > deadline) return false;
        std::this_thread::yield();
    }
    return true;
}

// Hops `hops` times from loop to loop, never onto the loop it is on (so
// every hop is a post to another thread), starting from loops[start]. Each
// hop checks it landed where it scheduled; returns the hops made.
hop::task<std::size_t> bounce(std::vector<hop::io_loop*> loops, std::size_t start, std::size_t hops,
                              std::atomic<std::size_t>& misplaced) {
    const std::size_t n = loops.size();
    std::size_t at = start;
    std::size_t done = 0;
    for (std::size_t k = 0; k < hops; ++k) {
        const std::size_t next = (at + 1 + (k + start) % (n - 1)) % n;
        hop::io_loop* target = loops[next];
        co_await target->schedule();
        if (hop::current_loop() != target || !target->running_in_this_thread()) ++misplaced;
        at = next;
        ++done;
    }
    co_return done;
}

// Starts `count` bouncers spread over `loops`, each hopping `hops` times;
// checks every one lands where it scheduled and the total is exact.
void storm(const std::vector<hop::io_loop*>& loops, std::size_t count, std::size_t hops) {
    std::atomic<std::size_t> misplaced{0};
    std::vector<hop::future<std::size_t>> fs;
    for (std::size_t i = 0; i < count; ++i) {
        const std::size_t start = i % loops.size();
        fs.push_back(loops[start]->spawn(bounce(loops, start, hops, misplaced)));
    }
    std::size_t total = 0;
    for (auto& f : fs) {
        REQUIRE(f.wait_for(guard));
        total += f.get();
    }
    CHECK(total == count * hops);
    CHECK(misplaced.load() == 0);
}

}  // namespace

TEST_SUITE("cross_loop") {

TEST_CASE("a coroutine bouncing across two and four loops lands on each loop it schedules onto") {
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path) {
            for (std::size_t n : {2u, 4u}) {
                INFO("loops: " << n);
                auto loops = start_loops(b, n);
                storm(pointers(loops), 1, 3000);
            }
        });
    });
}

TEST_CASE("a storm of coroutines bouncing across all loops: every hop lands where it scheduled, none is lost") {
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path) {
            for (std::size_t n : {2u, 4u}) {
                INFO("loops: " << n);
                auto loops = start_loops(b, n);
                storm(pointers(loops), 64, 400);
            }
        });
    });
}

TEST_CASE("a post made on a running loop wakes a sleeping target loop") {
    static constexpr std::uint64_t rounds = 20;
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path path) {
            running_loop poster(b);
            running_loop target(b);
            for (std::uint64_t i = 0; i < rounds; ++i) {
                INFO("round " << i);
                // The target has nothing to do: it sleeps once its spin is over.
                REQUIRE(wait_until_sleeping(target.loop()));
                hop::promise<void> arrived;
                auto f = arrived.get_future();
                std::atomic<bool> landed_on_target{false};
                // From the main thread to the poster (a plain thread's
                // wake), and from the poster's handler to the target.
                poster.loop().post([&] {
                    target.loop().post([&] {
                        landed_on_target = target.loop().running_in_this_thread();
                        arrived.set_value();
                    });
                });
                REQUIRE(f.wait_for(guard));
                CHECK(landed_on_target.load());
            }
            const auto sent = stats_of(poster.loop());
            const auto got = stats_of(target.loop());
            switch (path) {
                case wake_path::msg_ring:
                    // Every round the target slept, and only the poster's
                    // post woke it. The post was made by a handler of the
                    // poster's run(), which went on (no blocking, a short
                    // batch): the wake went with the poster's own next
                    // submit, never with an io_uring_enter of its own.
                    CHECK(sent.msg_ring_sent == rounds);
                    CHECK(sent.msg_ring_deferred == rounds);
                    CHECK(sent.wake_flushes == 0);
                    CHECK(sent.eventfd_sent == 0);
                    CHECK(sent.msg_ring_failed == 0);
                    CHECK(got.msg_ring_received == rounds);
                    break;
                case wake_path::eventfd:
                    CHECK(sent.msg_ring_sent == 0);
                    CHECK(sent.eventfd_sent == rounds);
                    CHECK(got.msg_ring_received == 0);
                    break;
                case wake_path::epoll:
                    break;
            }
        });
    });
}

TEST_CASE("a loop that stops, or returns from run_once, right after posting has still woken the target") {
    // The wake of a post made by a handler must not wait for the poster's
    // next turn: there may be none (the poster stays idle while the test
    // waits, and is destroyed only afterwards).
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path path) {
            running_loop target(b);
            for (int mode = 0; mode < 2; ++mode) {
                INFO("poster: " << std::string(mode == 0 ? "run() then stop()" : "one run_once()"));
                hop::io_loop poster{options_for(b)};
                REQUIRE(wait_until_sleeping(target.loop()));
                hop::promise<void> arrived;
                auto f = arrived.get_future();
                // The first handler runs in the turn's first batch; the one
                // it queues runs in the batch that ends the turn, after the
                // turn's own submission: its wake must still go out.
                poster.post([&] {
                    poster.post([&] {
                        target.loop().post([&] { arrived.set_value(); });
                        if (mode == 0) poster.stop();
                    });
                });
                std::thread t([&] {
                    if (mode == 0) {
                        poster.run();
                    } else {
                        poster.run_once();
                    }
                });
                t.join();  // the poster is idle from here on
                CHECK(f.wait_for(guard));
                if (path == wake_path::msg_ring) {
                    // Deferred by the handler, sent when run / run_once
                    // returned: one io_uring_enter of its own.
                    const auto s = poster.core().backend().wake_counts();
                    CHECK(s.msg_ring_sent == 1);
                    CHECK(s.msg_ring_deferred == 1);
                    CHECK(s.wake_flushes == 1);
                }
            }
        });
    });
}

TEST_CASE("a handler that posts to a sleeping loop, then blocks in any of hop's waits for the answer, gets it") {
    // Blocking a loop thread is poor style, not an error. A post made by a
    // handler leaves its MSG_RING wake for the poster's next submit. The
    // handler here blocks before that submit, in one of hop's own blocking
    // waits, on an answer only the target can give: each wait must send the
    // owed wake first (detail::before_blocking), or the target sleeps on (a
    // wake left for the end of the batch would never go: the batch waits
    // for the answer). Should it not, this thread rescues the target after
    // `guard` (an eventfd wake): the handler then finishes and the test
    // fails instead of hanging.
    struct blocker {
        const char* name;
        int (*wait)(hop::future<int>&);
    };
    static const blocker blockers[] = {
        {"future::get()", [](hop::future<int>& g) { return g.get(); }},
        {"future::wait()",
         [](hop::future<int>& g) {
             g.wait();
             return g.get();
         }},
        {"future::wait_for()", [](hop::future<int>& g) { return g.wait_for(guard * 2) ? g.get() : -1; }},
        {"hop::wait()",
         [](hop::future<int>& g) {
             (void)hop::wait(std::vector<hop::future<int>>{g});
             return g.get();
         }},
        {"hop::sync_wait()",
         [](hop::future<int>& g) {
             return hop::sync_wait([](hop::future<int> h) -> hop::task<int> { co_return co_await h; }(g));
         }},
        {"hop::run() (another loop on this thread)",
         [](hop::future<int>& g) {
             return hop::run([](hop::future<int> h) -> hop::task<int> { co_return co_await h; }(g));
         }},
    };
    static constexpr std::uint64_t rounds = 5;
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path path) {
            for (const blocker& how : blockers) {
                INFO("the handler blocks in " << std::string(how.name));
                running_loop poster(b);
                running_loop target(b);
                std::uint64_t rescues = 0;
                for (std::uint64_t i = 0; i < rounds; ++i) {
                    INFO("round " << i);
                    REQUIRE(wait_until_sleeping(target.loop()));
                    hop::promise<int> answer;
                    auto f = answer.get_future();
                    poster.loop().post([&] {
                        auto g = target.loop().spawn([]() -> hop::task<int> { co_return 42; }());
                        answer.set_value(how.wait(g));
                    });
                    if (!f.wait_for(guard)) {
                        // The post marked the target awake (its wake was
                        // owed): only a wake of its own backend rescues it.
                        ++rescues;
                        target.loop().core().backend().wake();
                        REQUIRE(f.wait_for(guard));
                    }
                    CHECK(f.get() == 42);
                }
                CHECK(rescues == 0);
                if (path == wake_path::msg_ring) {
                    // Each round: deferred by the post, flushed by the wait.
                    const auto s = stats_of(poster.loop());
                    CHECK(s.msg_ring_sent == rounds);
                    CHECK(s.msg_ring_deferred == rounds);
                    CHECK(s.wake_flushes == rounds);
                    CHECK(s.msg_ring_failed == 0);
                }
            }
        });
    });
}

TEST_CASE("a long handler batch after a post to a sleeping loop: the target is woken within the batch") {
    // One batch of the poster runs: the post, then max_deferred_handlers
    // more handlers, then one that waits (spinning, not in a hop wait) for
    // the target to have run the post. The deferred wake must go out after
    // max_deferred_handlers handlers, not at the end of the batch, which
    // the last handler keeps from coming (it gives up after `guard`: the
    // test then fails instead of hanging).
    static constexpr std::size_t fillers = hop::detail::loop_core::max_deferred_handlers;
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path path) {
            running_loop poster(b);
            running_loop target(b);
            REQUIRE(wait_until_sleeping(target.loop()));
            std::atomic<bool> target_ran{false};
            std::size_t fillers_ran = 0;  // poster's thread
            hop::promise<bool> seen;
            auto f = seen.get_future();
            hop::io_loop& p = poster.loop();
            p.post([&] {
                // Queued from the poster's own thread: they run together,
                // in order, in the poster's next batch.
                p.post([&] { target.loop().post([&] { target_ran = true; }); });
                for (std::size_t k = 0; k < fillers; ++k) p.post([&] { ++fillers_ran; });
                p.post([&] {
                    const auto deadline = std::chrono::steady_clock::now() + guard;
                    while (!target_ran.load() && std::chrono::steady_clock::now() < deadline) {
                        std::this_thread::yield();
                    }
                    seen.set_value(target_ran.load());
                });
            });
            REQUIRE(f.wait_for(guard * 2));
            CHECK(f.get());
            CHECK(fillers_ran == fillers);
            if (path == wake_path::msg_ring) {
                const auto s = stats_of(poster.loop());
                CHECK(s.msg_ring_sent == 1);
                CHECK(s.msg_ring_deferred == 1);
                CHECK(s.wake_flushes == 1);  // by the batch's length
            }
        });
    });
}

TEST_CASE("a post from a thread that runs no loop wakes a sleeping loop at once") {
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path path) {
            running_loop target(b);
            for (int i = 0; i < 10; ++i) {
                INFO("round " << i);
                REQUIRE(wait_until_sleeping(target.loop()));
                hop::promise<void> arrived;
                auto f = arrived.get_future();
                std::thread t([&] { target.loop().post([&] { arrived.set_value(); }); });
                t.join();  // the poster is gone: its post alone woke the target
                REQUIRE(f.wait_for(guard));
            }
            if (path != wake_path::epoll) CHECK(stats_of(target.loop()).msg_ring_received == 0);  // by eventfd
        });
    });
}

TEST_CASE("a MSG_RING wake the kernel refuses falls back to eventfd: the target still wakes") {
    // HOP_TEST_URING_MSG_RING_FAIL=1 makes the posters' rings aim their
    // MSG_RING wakes at the target's eventfd, not its ring: the kernel
    // refuses them (-EBADFD). The poster must notice at once and wake the
    // target by eventfd: here it blocks right after posting (so it reaps
    // nothing) or goes idle after one run_once().
    for_each_backend([](hop::backend b) {
        if (b != hop::backend::io_uring) return;
        env_override fail("HOP_TEST_URING_MSG_RING_FAIL", "1");
        running_loop target(b);
        for (int mode = 0; mode < 2; ++mode) {
            INFO("poster " << std::string(mode == 0 ? "blocks for the answer" : "goes idle after run_once"));
            hop::io_loop poster{options_for(b)};
            REQUIRE(wait_until_sleeping(target.loop()));
            hop::promise<void> arrived;
            auto f = arrived.get_future();
            bool answered_while_blocked = false;
            poster.post([&] {
                target.loop().post([&] { arrived.set_value(); });
                if (mode == 0) answered_while_blocked = f.wait_for(guard);
            });
            std::thread t([&] { poster.run_once(); });
            t.join();
            CHECK(f.wait_for(guard));
            if (mode == 0) CHECK(answered_while_blocked);
            const auto s = poster.core().backend().wake_counts();
            CHECK(s.msg_ring_sent == 1);
            CHECK(s.msg_ring_failed == 1);
        }
        // And under load: a storm whose every wake is refused loses no hop.
        auto loops = start_loops(b, 3);
        storm(pointers(loops), 32, 300);
    });
}

TEST_CASE("a loop driven through its native handle is woken by a post from another loop") {
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path path) {
            running_loop poster(b);
            hop::io_loop target{options_for(b)};
            std::atomic<bool> done{false};
            std::atomic<int> handle{-1};
            // A plain poll(2) loop, no timeout: only the loop's handle
            // becoming readable ends a wait.
            std::thread host([&] {
                handle = target.native_handle();
                while (!done.load()) {
                    pollfd p{handle.load(), POLLIN, 0};
                    (void)::poll(&p, 1, -1);
                    target.poll();
                }
            });
            for (int i = 0; i < 10; ++i) {
                INFO("round " << i);
                REQUIRE(wait_until_sleeping(target));
                hop::promise<void> arrived;
                auto f = arrived.get_future();
                poster.loop().post([&] { target.post([&] { arrived.set_value(); }); });
                const bool woke = f.wait_for(guard);
                CHECK(woke);
                if (!woke) break;
            }
            // From this thread (eventfd): ends the host's loop either way.
            target.post([&] { done = true; });
            host.join();
            if (path == wake_path::msg_ring) CHECK(stats_of(poster.loop()).msg_ring_sent >= 1);
        });
    });
}

TEST_CASE("io_uring and epoll loops wake each other") {
    if (!hop_test::available(hop::backend::io_uring) || !hop_test::available(hop::backend::epoll)) {
        MESSAGE("skipping: needs both backends");
        return;
    }
    const auto& under_test = hop_test::backends_under_test();
    if (under_test.size() == 1 && under_test.front() != hop::backend::io_uring) return;  // once per pair
    running_loop uring(hop::backend::io_uring);
    running_loop epoll(hop::backend::epoll);
    for (int i = 0; i < 10; ++i) {
        INFO("round " << i);
        for (int dir = 0; dir < 2; ++dir) {
            hop::io_loop& from = dir == 0 ? uring.loop() : epoll.loop();
            hop::io_loop& to = dir == 0 ? epoll.loop() : uring.loop();
            REQUIRE(wait_until_sleeping(to));
            hop::promise<void> arrived;
            auto f = arrived.get_future();
            from.post([&] { to.post([&] { arrived.set_value(); }); });
            REQUIRE(f.wait_for(guard));
        }
    }
    storm({&uring.loop(), &epoll.loop()}, 32, 200);
    const auto s = stats_of(uring.loop());
    CHECK(s.msg_ring_sent == 0);  // never to an epoll loop
    CHECK(s.msg_ring_received == 0);
}

#ifndef NDEBUG
namespace {
std::atomic<int> g_flush_hook_calls{0};
std::atomic<bool> g_flush_hook_release{false};
}  // namespace

TEST_CASE("a MSG_RING wake sent after its target was destroyed: a failure or a stray wake, nothing worse") {
    // The poster prepares the wake under the target's lock and sends it
    // just after. Here the target is destroyed in between (and a new loop
    // made, whose ring may take the old ring's fd number): the send then
    // fails (the fd is closed or no ring: the poster wakes every loop) or
    // wakes the new loop for nothing. Exactly one of the two; the post
    // itself runs once; no memory is touched (ASan, TSan).
    for_each_backend([](hop::backend b) {
        if (b != hop::backend::io_uring) return;
        for (int round = 0; round < 5; ++round) {
            INFO("round " << round);
            running_loop poster(b);
            auto victim = std::make_unique<running_loop>(b);
            REQUIRE(wait_until_sleeping(victim->loop()));
            std::atomic<int> ran{0};
            g_flush_hook_calls = 0;
            g_flush_hook_release = false;
            hop::detail::test_before_wake_flush = [] {
                if (g_flush_hook_calls.fetch_add(1) != 0) return;
                const auto deadline = std::chrono::steady_clock::now() + guard;
                while (!g_flush_hook_release.load() && std::chrono::steady_clock::now() < deadline) {
                    std::this_thread::yield();
                }
            };
            hop::io_loop& v = victim->loop();
            poster.loop().post([&ran, &v] { v.post([&ran] { ++ran; }); });
            const auto deadline = std::chrono::steady_clock::now() + guard;
            while (g_flush_hook_calls.load() == 0 && std::chrono::steady_clock::now() < deadline) {
                std::this_thread::yield();
            }
            REQUIRE(g_flush_hook_calls.load() == 1);
            victim.reset();  // its stop() wakes it by eventfd; the post runs
            CHECK(ran.load() == 1);
            // The victim's fd numbers are free now; the lowest go first. Even
            // rounds: a new loop, whose ring may take the old ring's number.
            // Odd rounds: a pipe, which does (the send is then refused).
            std::optional<running_loop> next;
            std::optional<hop_test::pipe_fds> pipe;
            if (round % 2 == 0) {
                next.emplace(b);
                REQUIRE(wait_until_sleeping(next->loop()));
            } else {
                pipe.emplace();
            }
            g_flush_hook_release = true;  // now the wake goes to the old fd
            // Until the poster is past the send (a post of ours is behind it).
            hop::promise<void> past;
            auto f = past.get_future();
            poster.loop().post([&] { past.set_value(); });
            REQUIRE(f.wait_for(guard));
            hop::detail::test_before_wake_flush = nullptr;
            const auto sent = stats_of(poster.loop());
            CHECK(sent.msg_ring_sent == 1);
            if (next) {
                CHECK(sent.msg_ring_failed + stats_of(next->loop()).msg_ring_received == 1);
            } else {
                CHECK(sent.msg_ring_failed == 1);
            }
            CHECK(ran.load() == 1);
        }
    });
}
#endif

TEST_CASE("a target loop destroyed while other loops keep posting to it and to each other") {
    // Three loops bounce coroutines among themselves throughout. Feeders on
    // them also post to a victim loop, one victim after another: each is
    // destroyed right after the last post to it, while the posters may be
    // about to send it a wake (the deterministic case of that window is the
    // test above), and the next victim's ring may take its fd number. Every
    // post to a victim must run (before or during its destruction), the
    // bouncers must not lose a hop, and nothing may touch freed memory
    // (ASan, TSan).
    static constexpr int victims = 12;
    for_each_backend([](hop::backend b) {
        for_each_wake_path(b, [&](wake_path) {
            auto stable = start_loops(b, 3);
            const auto ls = pointers(stable);

            std::shared_mutex victim_mutex;
            hop::io_loop* victim = nullptr;  // guarded by victim_mutex
            std::atomic<std::uint64_t> posted{0};
            std::atomic<std::uint64_t> ran{0};
            std::atomic<bool> stop_feeding{false};
            std::atomic<std::size_t> misplaced{0};

            // Feeders: post to the victim (while it exists), then hop on.
            auto feeder = [&](std::size_t start) -> hop::task<std::size_t> {
                std::size_t at = start;
                std::size_t hops = 0;
                while (!stop_feeding.load()) {
                    {
                        std::shared_lock lock(victim_mutex);
                        if (victim != nullptr) {
                            victim->post([&ran] { ++ran; });
                            ++posted;
                        }
                    }
                    at = (at + 1) % ls.size();
                    co_await ls[at]->schedule();
                    if (hop::current_loop() != ls[at]) ++misplaced;
                    ++hops;
                }
                co_return hops;
            };
            std::vector<hop::future<std::size_t>> feeders;
            for (std::size_t i = 0; i < 6; ++i) {
                // Named: the coroutine lambda's frame refers to the closure.
                auto t = feeder(i % ls.size());
                feeders.push_back(ls[i % ls.size()]->spawn(std::move(t)));
            }
            std::atomic<std::size_t> bounce_misplaced{0};
            std::vector<hop::future<std::size_t>> bouncers;
            for (std::size_t i = 0; i < 16; ++i) {
                bouncers.push_back(ls[i % ls.size()]->spawn(bounce(ls, i % ls.size(), 2000, bounce_misplaced)));
            }

            for (int v = 0; v < victims; ++v) {
                INFO("victim " << v);
                auto runner = std::make_unique<running_loop>(b);
                const std::uint64_t ran_before = ran.load();
                {
                    std::unique_lock lock(victim_mutex);
                    victim = &runner->loop();
                }
                // Until some posts have run there (a state, not a time).
                const auto deadline = std::chrono::steady_clock::now() + guard;
                while (ran.load() < ran_before + 50 && std::chrono::steady_clock::now() < deadline) {
                    std::this_thread::yield();
                }
                REQUIRE(ran.load() >= ran_before + 50);
                {
                    std::unique_lock lock(victim_mutex);
                    victim = nullptr;
                }
                runner.reset();  // stop, join, destroy: runs what is still queued
                CHECK(ran.load() == posted.load());
            }
            stop_feeding = true;
            std::size_t fed = 0;
            for (auto& f : feeders) {
                REQUIRE(f.wait_for(guard));
                fed += f.get();
            }
            CHECK(fed > 0);
            std::size_t total = 0;
            for (auto& f : bouncers) {
                REQUIRE(f.wait_for(guard));
                total += f.get();
            }
            CHECK(total == 16u * 2000u);
            CHECK(misplaced.load() == 0);
            CHECK(bounce_misplaced.load() == 0);
            CHECK(ran.load() == posted.load());
        });
    });
}

}  // TEST_SUITE
