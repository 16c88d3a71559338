// io_loop benchmark: hop on io_uring, hop on epoll, and standalone Asio
// (io_context + asio::awaitable) doing the same work in the same run.
//
//   post      one producer thread posts N callables to a loop running on
//             another thread; time until all have run (posts/s)
//   schedule  a coroutine on the loop hops to a cpu pool and back, N times
//             (ns per round trip)
//   timers    100,000 coroutines each sleep 1 ms concurrently; wall time
//             until all have woken (ms)
//
// Each side runs in its own child process (bench::run_interleaved), so its
// CPU time and peak RSS are its own.

#include "common.hpp"

#include <hop/hop.hpp>

#include <atomic>
#include <vector>

namespace {

using namespace std::chrono_literals;

constexpr const char* sections[] = {"post", "schedule", "timers"};

// ---- post ------------------------------------------------------------------

bench::sample hop_post(hop::backend b, std::size_t n) {
    hop::io_loop loop{{.backend = b}};
    std::size_t count = 0;  // touched only on the loop thread
    auto t0 = bench::clock::now();
    std::thread producer([&] {
        for (std::size_t i = 0; i < n; ++i) {
            loop.post([&count, &loop, n] {
                if (++count == n) loop.stop();
            });
        }
    });
    loop.run();
    double s = bench::seconds_since(t0);
    producer.join();
    return {s, count};
}

bench::sample asio_post(std::size_t n) {
    asio::io_context ctx{1};
    auto guard = asio::make_work_guard(ctx);
    std::size_t count = 0;
    auto t0 = bench::clock::now();
    std::thread producer([&] {
        for (std::size_t i = 0; i < n; ++i) {
            asio::post(ctx, [&count, &ctx, n] {
                if (++count == n) ctx.stop();
            });
        }
    });
    ctx.run();
    double s = bench::seconds_since(t0);
    producer.join();
    return {s, count};
}

// ---- schedule round trip -----------------------------------------------------

hop::task<std::uint64_t> hop_round_trips(hop::io_loop& loop, hop::cpu_pool& pool, std::size_t n) {
    std::uint64_t on_pool = 0;
    for (std::size_t i = 0; i < n; ++i) {
        co_await pool.schedule();
        on_pool += pool.running_in_this_thread() ? 1 : 0;
        co_await loop.schedule();
    }
    co_return on_pool;
}

bench::sample hop_schedule(hop::backend b, std::size_t n, std::size_t threads) {
    hop::cpu_pool pool{threads};
    hop::io_loop loop{{.backend = b}};
    auto t0 = bench::clock::now();
    auto f = loop.spawn(hop_round_trips(loop, pool, n));
    f.on_done([&loop](const auto&) { loop.stop(); });
    loop.run();
    double s = bench::seconds_since(t0);
    return {s, f.get()};
}

asio::awaitable<void> asio_round_trips(asio::thread_pool& pool, std::size_t n, std::uint64_t& on_pool) {
    for (std::size_t i = 0; i < n; ++i) {
        // The handler runs on the pool; the coroutine then resumes on its own
        // executor (the io_context): one full round trip per iteration.
        co_await asio::post(pool.get_executor(), asio::use_awaitable);
        ++on_pool;
    }
}

bench::sample asio_schedule(std::size_t n, std::size_t threads) {
    asio::thread_pool pool{threads};
    asio::io_context ctx{1};
    std::uint64_t on_pool = 0;
    auto t0 = bench::clock::now();
    asio::co_spawn(ctx, asio_round_trips(pool, n, on_pool), asio::detached);
    ctx.run();
    double s = bench::seconds_since(t0);
    pool.join();
    return {s, on_pool};
}

// ---- timers ------------------------------------------------------------------

hop::task<void> hop_sleeper(std::uint64_t& woke) {
    co_await hop::sleep_for(1ms);
    ++woke;
}

hop::task<std::uint64_t> hop_sleepers(std::size_t n) {
    std::uint64_t woke = 0;
    std::vector<hop::task<void>> ts;
    ts.reserve(n);
    for (std::size_t i = 0; i < n; ++i) ts.push_back(hop_sleeper(woke));
    co_await hop::when_all(std::move(ts));
    co_return woke;
}

bench::sample hop_timers(hop::backend b, std::size_t n) {
    hop::io_loop loop{{.backend = b}};
    auto t0 = bench::clock::now();
    auto f = loop.spawn(hop_sleepers(n));
    f.on_done([&loop](const auto&) { loop.stop(); });
    loop.run();
    double s = bench::seconds_since(t0);
    return {s, f.get()};
}

asio::awaitable<void> asio_sleeper(std::uint64_t& woke, std::size_t n, asio::io_context& ctx) {
    asio::steady_timer t(co_await asio::this_coro::executor, 1ms);
    co_await t.async_wait(asio::use_awaitable);
    if (++woke == n) ctx.stop();
}

bench::sample asio_timers(std::size_t n) {
    asio::io_context ctx{1};
    std::uint64_t woke = 0;
    auto t0 = bench::clock::now();
    for (std::size_t i = 0; i < n; ++i) asio::co_spawn(ctx, asio_sleeper(woke, n, ctx), asio::detached);
    ctx.run();
    double s = bench::seconds_since(t0);
    return {s, woke};
}

bool uring_available() {
    try {
        hop::io_loop probe{{.backend = hop::backend::io_uring}};
        return true;
    } catch (const std::system_error&) {
        return false;
    }
}

}  // namespace

int main(int argc, char** argv) try {
    auto opt = bench::parse_options(argc, argv, {sections[0], sections[1], sections[2]});
    const std::size_t rounds = opt.quick ? 1 : 3;
    const bool uring = uring_available();
    std::printf("io_loop benchmark: %zu cores, pool threads %zu, %zu round(s) each, io_uring %s\n",
                bench::core_count(), opt.threads, rounds, uring ? "available" : "NOT available (skipped)");

    std::vector<hop::backend> backends;
    if (uring) backends.push_back(hop::backend::io_uring);
    backends.push_back(hop::backend::epoll);
    auto label = [](hop::backend b) { return b == hop::backend::io_uring ? "io_uring" : "epoll"; };

    if (opt.wants("post")) {
        const std::size_t n = opt.quick ? 200'000 : 2'000'000;
        bench::print_table_header("post from another thread (posts/s, higher is better)");
        for (auto b : backends) {
            auto r = bench::run_interleaved(rounds, [&] { return hop_post(b, n); }, [&] { return asio_post(n); });
            bench::check_same("post", r[0], r[1]);
            bench::print_row(std::string("post x") + std::to_string(n) + " [hop " + label(b) + "]",
                             double(n * rounds) / r[0].s.seconds, double(n * rounds) / r[1].s.seconds,
                             bench::better::higher, 0);
        }
    }
    if (opt.wants("schedule")) {
        const std::size_t n = opt.quick ? 50'000 : 500'000;
        bench::print_table_header("schedule() round trip loop <-> cpu pool (ns, lower is better)");
        for (auto b : backends) {
            auto r = bench::run_interleaved(rounds, [&] { return hop_schedule(b, n, opt.threads); },
                                            [&] { return asio_schedule(n, opt.threads); });
            bench::check_same("schedule", r[0], r[1]);
            bench::print_row(std::string("round trip [hop ") + label(b) + "]", r[0].s.seconds * 1e9 / double(n * rounds),
                             r[1].s.seconds * 1e9 / double(n * rounds), bench::better::lower, 0);
        }
    }
    if (opt.wants("timers")) {
        const std::size_t n = opt.quick ? 20'000 : 100'000;
        bench::print_table_header("concurrent 1 ms timers (ms wall, lower is better)");
        for (auto b : backends) {
            auto r = bench::run_interleaved(rounds, [&] { return hop_timers(b, n); }, [&] { return asio_timers(n); });
            bench::check_same("timers", r[0], r[1]);
            bench::print_row(std::to_string(n) + " timers [hop " + label(b) + "]", r[0].s.seconds * 1e3 / double(rounds),
                             r[1].s.seconds * 1e3 / double(rounds), bench::better::lower, 1);
            bench::print_row(std::to_string(n) + " timers, peak RSS MiB [hop " + label(b) + "]", r[0].peak_rss_mib,
                             r[1].peak_rss_mib, bench::better::lower, 1);
        }
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "io_loop_bench: %s\n", e.what());
    return 2;
}
