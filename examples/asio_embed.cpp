// A program that already runs Asio hosts hop tasks on its own io_context.
//
// The Asio side ticks a steady_timer every 5 ms; the hop side runs a task on
// the same context that sleeps, hands number crunching to the CPU pool, and
// comes back to the context's thread. Both interleave on one io_context::run().

#include <hop/hop.hpp>

#include <asio.hpp>

#include <chrono>
#include <cstdio>
#include <functional>
#include <thread>

using namespace std::chrono_literals;

namespace {

long long sum_of_squares(long long n) {
    long long s = 0;
    for (long long i = 1; i <= n; ++i) s += i * i % 7;
    return s;
}

hop::task<long long> hop_side(hop::cpu_pool& pool, std::thread::id host_thread) {
    long long total = 0;
    for (int round = 0; round < 5; ++round) {
        co_await hop::sleep_for(3ms);                        // a timer on the host's io_context
        total += co_await pool.submit(sum_of_squares, 2'000'000);  // work on the CPU pool
        // Affinity: awaiting the pool's future resumes us on the host's thread.
        if (std::this_thread::get_id() != host_thread) throw std::logic_error("resumed off the host thread");
        std::printf("  hop: round %d done on the host thread, total %lld\n", round, total);
    }
    co_return total;
}

}  // namespace

int main() {
    asio::io_context ctx;
    hop::io_loop loop{ctx};  // hop's work runs as handlers on ctx
    hop::cpu_pool pool{2};

    int ticks = 0;
    asio::steady_timer ticker{ctx};
    std::function<void()> tick = [&] {
        ticker.expires_after(5ms);
        ticker.async_wait([&](const std::error_code& ec) {
            if (ec) return;
            ++ticks;
            tick();
        });
    };
    tick();

    auto result = loop.spawn(hop_side(pool, std::this_thread::get_id()));
    result.on_done([&](const hop::future<long long>&) {
        asio::post(ctx, [&] {
            ticker.cancel();
            ctx.stop();
        });
    });

    std::printf("asio_embed: backend %s, hop task and Asio timer share one io_context\n",
                std::string(loop.backend_name()).c_str());
    ctx.run();
    std::printf("asio ticks while hop worked: %d\nhop result: %lld\n", ticks, result.get());
    return ticks > 0 ? 0 : 1;
}
