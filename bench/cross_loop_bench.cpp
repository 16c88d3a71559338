// Cross-loop benchmark (issue 11): coroutines moving between two event
// loops, each run by its own thread, against standalone Asio doing the same
// with two io_contexts.
//
//   pingpong  one coroutine: `co_await b.schedule(); co_await a.schedule();`
//             N times (ns per round trip A -> B -> A)
//   storm     64 coroutines doing the same at once (ns per round trip,
//             total wall time / total round trips)
//   idle      the target loop has been idle for 100 us (so it sleeps): ns
//             from the post on A until the coroutine runs on B, median
//   fanout    as idle, but one handler on A posts to three sleeping loops
//             B, C, D: ns from the first post until the last of them ran,
//             median (4 loops, 4 threads)
//
// hop runs three ways: io_uring waking a sleeping loop with an
// IORING_OP_MSG_RING from the posting loop's ring, io_uring waking it by
// eventfd (HOP_URING_NO_MSG_RING=1, read when a ring is set up), and epoll.
// Asio: `co_await asio::post(ctx_b, use_awaitable)` from a coroutine on
// ctx_a (the handler runs on B, the coroutine resumes on A); for idle, a
// handler on B takes the time and resumes the coroutine on A.
//
// Each side runs in its own child process, the sides alternating round by
// round; figures are medians over the rounds. The wakes line says how often
// a post found its target asleep, the only time the wake mechanism matters:
// a hop loop spins 20 us before it sleeps, so pingpong and storm hardly ever
// wake one (they measure the queues and the spin; MSG_RING and eventfd tie
// there, within the noise), and idle is the one that measures the wake.
// Measured (Linux 6.18, 2 cores shared with other builds, load 2.5-5;
// medians of 3 rounds, two runs): idle MSG_RING 3557 / 4489 ns, eventfd
// 9549 / 9318 ns, Asio 3948 / 4740 ns.
//
// A MSG_RING wake posted by a handler rides on its loop's next submit
// (lib/io_uring/uring_backend.cpp); the line under each table says how many
// still needed an io_uring_enter of their own. Measured against the same
// library with that deferral switched off (--quick, 4 alternating runs,
// load 3-5, medians): fanout MSG_RING 62339 -> 33408 ns (eventfd, which
// does not defer, 63496 -> 62018), io_uring_enter calls in the fanout
// section 3979 -> 3016 (perf stat); idle 3468 -> 3591 ns and the same
// number of enters (the spin's first reap submits the wake: one enter
// either way); pingpong and storm hardly ever wake a loop.

#include "common.hpp"

#include "lib/loop_core.hpp"

#include <hop/hop.hpp>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <future>
#include <vector>

namespace {

using namespace std::chrono_literals;

constexpr const char* sections[] = {"pingpong", "storm", "idle", "fanout"};

enum class hop_way { uring_msg_ring, uring_eventfd, epoll };

const char* label(hop_way w) {
    switch (w) {
        case hop_way::uring_msg_ring:
            return "hop io_uring, MSG_RING wakes";
        case hop_way::uring_eventfd:
            return "hop io_uring, eventfd wakes";
        case hop_way::epoll:
            break;
    }
    return "hop epoll";
}

/// `n` loops of one kind, each run by its own thread until destroyed.
struct hop_loops {
    hop_loops(hop_way w, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) m_loops.push_back(std::make_unique<hop::io_loop>(options(w)));
        for (auto& l : m_loops) m_threads.emplace_back([lp = l.get()] { lp->run(); });
    }
    ~hop_loops() { stop_and_join(); }
    hop_loops(const hop_loops&) = delete;
    hop_loops& operator=(const hop_loops&) = delete;
    static hop::io_loop_options options(hop_way w) {
        // Read when a ring is set up: the child process sets it before.
        if (w == hop_way::uring_eventfd) ::setenv("HOP_URING_NO_MSG_RING", "1", 1);
        hop::io_loop_options o;
        o.backend = w == hop_way::epoll ? hop::backend::epoll : hop::backend::io_uring;
        return o;
    }
    hop::io_loop& loop(std::size_t i) { return *m_loops[i]; }
    /// Wakes of a sleeping loop sent by all the loops (io_uring counts
    /// them; epoll reports 0). Call after stop_and_join().
    double wakes_sent() {
        double wakes = 0;
        for (auto& l : m_loops) {
            auto st = l->core().backend().wake_counts();
            wakes += static_cast<double>(st.msg_ring_sent + st.eventfd_sent);
        }
        return wakes;
    }
    /// The share of MSG_RING wakes that needed an io_uring_enter of their
    /// own (the rest rode on the poster's next submit). Call after
    /// stop_and_join().
    double own_enter_share() {
        double sent = 0, flushes = 0;
        for (auto& l : m_loops) {
            auto st = l->core().backend().wake_counts();
            sent += static_cast<double>(st.msg_ring_sent);
            flushes += static_cast<double>(st.wake_flushes);
        }
        return sent == 0 ? 0.0 : flushes / sent;
    }
    void stop_and_join() {
        for (auto& l : m_loops) l->stop();
        for (auto& t : m_threads) {
            if (t.joinable()) t.join();
        }
    }

private:
    std::vector<std::unique_ptr<hop::io_loop>> m_loops;
    std::vector<std::thread> m_threads;
};

/// `n` io_contexts, each run by its own thread until destroyed.
struct asio_loops {
    explicit asio_loops(std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) {
            m_ctxs.push_back(std::make_unique<asio::io_context>(1));
            m_guards.push_back(asio::make_work_guard(*m_ctxs.back()));
        }
        for (auto& c : m_ctxs) m_threads.emplace_back([cp = c.get()] { cp->run(); });
    }
    ~asio_loops() {
        m_guards.clear();
        for (auto& c : m_ctxs) c->stop();
        for (auto& t : m_threads) t.join();
    }
    asio_loops(const asio_loops&) = delete;
    asio_loops& operator=(const asio_loops&) = delete;
    asio::io_context& ctx(std::size_t i) { return *m_ctxs[i]; }

private:
    std::vector<std::unique_ptr<asio::io_context>> m_ctxs;
    std::vector<asio::executor_work_guard<asio::io_context::executor_type>> m_guards;
    std::vector<std::thread> m_threads;
};

// ---- pingpong and storm -----------------------------------------------------

hop::task<std::uint64_t> hop_round_trips(hop::io_loop& a, hop::io_loop& b, std::size_t n) {
    std::uint64_t on_b = 0;
    for (std::size_t i = 0; i < n; ++i) {
        co_await b.schedule();
        on_b += b.running_in_this_thread() ? 1 : 0;
        co_await a.schedule();
    }
    co_return on_b;
}

bench::sample hop_ping(hop_way w, std::size_t coroutines, std::size_t n) {
    hop_loops p(w, 2);
    auto t0 = bench::clock::now();
    std::vector<hop::future<std::uint64_t>> fs;
    hop::io_loop& a = p.loop(0);
    for (std::size_t c = 0; c < coroutines; ++c) fs.push_back(a.spawn(hop_round_trips(a, p.loop(1), n)));
    std::uint64_t on_b = 0;
    for (auto& f : fs) on_b += f.get();
    double s = bench::seconds_since(t0);
    p.stop_and_join();
    bench::sample r{s, on_b};
    r.value = p.wakes_sent() / double(coroutines * n);
    r.system_seconds = p.own_enter_share();  // not a time: see table()
    return r;
}

asio::awaitable<void> asio_round_trips(asio::io_context& b, std::size_t n, std::uint64_t& on_b) {
    for (std::size_t i = 0; i < n; ++i) {
        // Runs a handler on B, then resumes here on A: one round trip.
        co_await asio::post(b.get_executor(), asio::use_awaitable);
        ++on_b;
    }
}

bench::sample asio_ping(std::size_t coroutines, std::size_t n) {
    asio_loops p(2);
    std::vector<std::uint64_t> on_b(coroutines, 0);
    std::atomic<std::size_t> left{coroutines};
    std::promise<void> all_done;
    auto t0 = bench::clock::now();
    for (std::size_t c = 0; c < coroutines; ++c) {
        asio::co_spawn(p.ctx(0), asio_round_trips(p.ctx(1), n, on_b[c]), [&](std::exception_ptr) {
            if (--left == 0) all_done.set_value();
        });
    }
    all_done.get_future().wait();
    double s = bench::seconds_since(t0);
    std::uint64_t total = 0;
    for (auto v : on_b) total += v;
    return {s, total};
}

// ---- idle and fanout: wake latency ------------------------------------------

constexpr auto idle_gap = 100us;  // well past hop's 20 us spin before a sleep

double median(std::vector<double> v) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
}

/// Runs `trips(p, lat)` on loop 0 of `loops` loops of way `w`: a task that
/// makes `n` trips, records each one's latency in `lat`, and returns a
/// count. The sample: wall time, the count, the median latency (value),
/// wakes sent per trip (user_seconds) and the share of MSG_RING wakes that
/// needed an io_uring_enter of their own (system_seconds: not a time, see
/// table()).
template <class Trips>
bench::sample hop_latency(hop_way w, std::size_t loops, std::size_t n, Trips trips) {
    hop_loops p(w, loops);
    std::vector<double> lat;
    lat.reserve(n);
    auto t0 = bench::clock::now();
    auto f = p.loop(0).spawn(trips(p, lat));
    std::uint64_t count = f.get();
    double s = bench::seconds_since(t0);
    p.stop_and_join();
    bench::sample r{s, count};
    r.value = median(lat);
    r.user_seconds = p.wakes_sent() / double(n);
    r.system_seconds = p.own_enter_share();
    return r;
}

/// Runs `trips(p, lat, count)` on io_context 0 of `loops`: an awaitable that
/// makes `n` trips, records each one's latency in `lat` and counts in
/// `count`. The sample: wall time, the count, the median latency (value).
template <class Trips>
bench::sample asio_latency(std::size_t loops, std::size_t n, Trips trips) {
    asio_loops p(loops);
    std::vector<double> lat;
    lat.reserve(n);
    std::uint64_t count = 0;
    std::promise<void> done;
    auto t0 = bench::clock::now();
    asio::co_spawn(p.ctx(0), trips(p, lat, count), [&](std::exception_ptr) { done.set_value(); });
    done.get_future().wait();
    double s = bench::seconds_since(t0);
    bench::sample r{s, count};
    r.value = median(lat);
    return r;
}

// ---- idle target --------------------------------------------------------------

hop::task<std::uint64_t> hop_idle_trips(hop::io_loop& a, hop::io_loop& b, std::size_t n, std::vector<double>& lat) {
    std::uint64_t on_b = 0;
    for (std::size_t i = 0; i < n; ++i) {
        co_await hop::sleep_for(idle_gap);  // on A; B has nothing to do and sleeps
        const auto t0 = bench::clock::now();
        co_await b.schedule();
        lat.push_back(std::chrono::duration<double, std::nano>(bench::clock::now() - t0).count());
        on_b += b.running_in_this_thread() ? 1 : 0;
        co_await a.schedule();
    }
    co_return on_b;
}

bench::sample hop_idle(hop_way w, std::size_t n) {
    return hop_latency(w, 2, n, [n](hop_loops& p, std::vector<double>& lat) {
        return hop_idle_trips(p.loop(0), p.loop(1), n, lat);
    });
}

asio::awaitable<void> asio_idle_trips(asio::io_context& b, std::size_t n, std::vector<double>& lat,
                                      std::uint64_t& on_b) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (std::size_t i = 0; i < n; ++i) {
        timer.expires_after(idle_gap);
        co_await timer.async_wait(asio::use_awaitable);
        const auto t0 = bench::clock::now();
        // A handler on B takes the time, then resumes the coroutine on A.
        co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
            [&b, &lat, t0](auto handler) {
                asio::post(b, [&lat, t0, h = std::move(handler)]() mutable {
                    lat.push_back(std::chrono::duration<double, std::nano>(bench::clock::now() - t0).count());
                    auto ex = asio::get_associated_executor(h);
                    asio::post(ex, std::move(h));
                });
            },
            asio::use_awaitable);
        ++on_b;
    }
}

bench::sample asio_idle(std::size_t n) {
    return asio_latency(2, n, [n](asio_loops& p, std::vector<double>& lat, std::uint64_t& on_b) {
        return asio_idle_trips(p.ctx(1), n, lat, on_b);
    });
}

// ---- fanout: one handler wakes three sleeping loops ---------------------------

constexpr std::size_t fan = 3;

// On loop 0; loops 1..fan are the targets.
hop::task<std::uint64_t> hop_fan_trips(hop_loops& p, std::size_t n, std::vector<double>& lat) {
    std::uint64_t ran = 0;
    for (std::size_t i = 0; i < n; ++i) {
        co_await hop::sleep_for(idle_gap);  // on A; the targets sleep
        hop::promise<void> all_ran;
        auto done = all_ran.get_future();
        std::atomic<std::size_t> left{fan};
        const auto t0 = bench::clock::now();
        for (std::size_t k = 1; k <= fan; ++k) {
            p.loop(k).post([&] {
                if (left.fetch_sub(1) == 1) {
                    lat.push_back(std::chrono::duration<double, std::nano>(bench::clock::now() - t0).count());
                    all_ran.set_value();
                }
            });
        }
        co_await done;  // resumes on A
        ran += fan;
    }
    co_return ran;
}

bench::sample hop_fanout(hop_way w, std::size_t n) {
    return hop_latency(w, 1 + fan, n, [n](hop_loops& p, std::vector<double>& lat) { return hop_fan_trips(p, n, lat); });
}

// On io_context 0; 1..fan are the targets.
asio::awaitable<void> asio_fan_trips(asio_loops& p, std::size_t n, std::vector<double>& lat, std::uint64_t& ran) {
    asio::steady_timer timer(co_await asio::this_coro::executor);
    for (std::size_t i = 0; i < n; ++i) {
        timer.expires_after(idle_gap);
        co_await timer.async_wait(asio::use_awaitable);
        std::atomic<std::size_t> left{fan};
        const auto t0 = bench::clock::now();
        co_await asio::async_initiate<const asio::use_awaitable_t<>&, void()>(
            [&](auto handler) {
                auto h = std::make_shared<decltype(handler)>(std::move(handler));
                for (std::size_t k = 1; k <= fan; ++k) {
                    asio::post(p.ctx(k), [&, h] {
                        if (left.fetch_sub(1) == 1) {
                            lat.push_back(std::chrono::duration<double, std::nano>(bench::clock::now() - t0).count());
                            auto ex = asio::get_associated_executor(*h);
                            asio::post(ex, std::move(*h));
                        }
                    });
                }
            },
            asio::use_awaitable);
        ran += fan;
    }
}

bench::sample asio_fanout(std::size_t n) {
    return asio_latency(1 + fan, n, [n](asio_loops& p, std::vector<double>& lat, std::uint64_t& ran) {
        return asio_fan_trips(p, n, lat, ran);
    });
}

bool uring_available() {
    try {
        hop::io_loop probe{{.backend = hop::backend::io_uring}};
        return true;
    } catch (const std::system_error&) {
        return false;
    }
}

double load_average() {
    double l = -1;
    if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
        if (std::fscanf(f, "%lf", &l) != 1) l = -1;
        std::fclose(f);
    }
    return l;
}

}  // namespace

int main(int argc, char** argv) try {
    auto opt = bench::parse_options(argc, argv, {sections[0], sections[1], sections[2], sections[3]});
    const std::size_t rounds = opt.quick ? 1 : 3;
    const bool uring = uring_available();
    std::printf("cross-loop benchmark: %zu cores, load average %.2f at start, %zu round(s) each (medians), "
                "io_uring %s\n",
                bench::core_count(), load_average(), rounds, uring ? "available" : "NOT available (skipped)");

    std::vector<hop_way> ways;
    if (uring) {
        ways.push_back(hop_way::uring_msg_ring);
        ways.push_back(hop_way::uring_eventfd);
    }
    ways.push_back(hop_way::epoll);

    // One table per section: every hop way against the same Asio runs.
    auto table = [&](const char* title, auto hop_fn, auto asio_fn, auto per, int decimals) {
        bench::print_table_header(title);
        std::vector<std::vector<bench::measured>> hop_runs(ways.size());
        std::vector<bench::measured> asio_runs;
        for (std::size_t r = 0; r < rounds; ++r) {
            for (std::size_t i = 0; i < ways.size(); ++i) {
                const hop_way w = ways[i];
                hop_runs[i].push_back(bench::run_isolated([&] { return hop_fn(w); }));
            }
            asio_runs.push_back(bench::run_isolated([&] { return asio_fn(); }));
        }
        for (std::size_t i = 0; i < ways.size(); ++i) {
            for (const auto& m : hop_runs[i]) bench::check_same(title, m, asio_runs.front());
        }
        const double asio_fig = bench::median_of(asio_runs, per);
        for (std::size_t i = 0; i < ways.size(); ++i) {
            bench::print_row(label(ways[i]), bench::median_of(hop_runs[i], per), asio_fig, bench::better::lower,
                             decimals);
        }
        for (std::size_t i = 0; i < ways.size(); ++i) {
            if (ways[i] == hop_way::epoll) continue;
            const bool idle = std::string(title).find("idle") != std::string::npos ||
                              std::string(title).find("fanout") != std::string::npos;
            const double wakes = bench::median_of(hop_runs[i], [&](const bench::measured& m) {
                return idle ? m.s.user_seconds : m.s.value;
            });
            std::printf("  %s: %.3f wakes of a sleeping loop per round trip", label(ways[i]), wakes);
            if (ways[i] == hop_way::uring_msg_ring) {
                // The hop sides carry the share in system_seconds.
                const double own = bench::median_of(hop_runs[i], [](const bench::measured& m) {
                    return m.s.system_seconds;
                });
                std::printf(", %.2f of the MSG_RING wakes sent by an io_uring_enter of their own", own);
            }
            std::printf("\n");
        }
    };

    if (opt.wants("pingpong")) {
        const std::size_t n = opt.quick ? 20'000 : 100'000;
        table(
            "pingpong: one coroutine, A -> B -> A (ns per round trip, lower is better)",
            [&](hop_way w) { return hop_ping(w, 1, n); }, [&] { return asio_ping(1, n); },
            [&](const bench::measured& m) { return m.s.seconds * 1e9 / double(n); }, 0);
    }
    if (opt.wants("storm")) {
        const std::size_t c = 64;
        const std::size_t n = opt.quick ? 300 : 2'000;
        table(
            "storm: 64 coroutines at once, A -> B -> A (ns per round trip, lower is better)",
            [&](hop_way w) { return hop_ping(w, c, n); }, [&] { return asio_ping(c, n); },
            [&](const bench::measured& m) { return m.s.seconds * 1e9 / double(c * n); }, 0);
    }
    if (opt.wants("idle")) {
        const std::size_t n = opt.quick ? 300 : 2'000;
        table(
            "idle: post to a loop asleep for 100 us, until the coroutine runs there (ns, median, lower is better)",
            [&](hop_way w) { return hop_idle(w, n); }, [&] { return asio_idle(n); },
            [&](const bench::measured& m) { return m.s.value; }, 0);
    }
    if (opt.wants("fanout")) {
        const std::size_t n = opt.quick ? 300 : 2'000;
        table(
            "fanout: one handler posts to 3 loops asleep for 100 us, until the last ran (ns, median, lower is better)",
            [&](hop_way w) { return hop_fanout(w, n); }, [&] { return asio_fanout(n); },
            [&](const bench::measured& m) { return m.s.value; }, 0);
    }
    std::printf("\nload average %.2f at the end\n", load_average());
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "cross_loop_bench: %s\n", e.what());
    return 2;
}
