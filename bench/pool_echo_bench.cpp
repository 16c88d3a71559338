// The echo server on every core: hop::io_pool with 1 and 2 loops (both ways
// of spreading connections), against standalone Asio's io_context-per-thread
// pattern with 1 and 2 threads, serving the same client in the same run.
//
// The client is the same for every server: hop on its own io_pool of 2
// loops, C connections spread over them, each doing R round trips of 64
// bytes (TCP_NODELAY) one after the other. Server and client share one
// process (each side of a round in its own forked child) and THIS MACHINE'S
// CORES: on a 2-core machine the client needs about as much CPU as the
// server, so a second server loop cannot double the rate. What the figures
// show is what a second loop buys under that load, and how hop's pool
// compares with Asio's threads doing the same.
//
//   pool_echo_bench [--quick] [--only hundred|thousand]
//
// Figures: round trips per second (all connections together), median over
// the rounds; the ratio column is hop / Asio with the same number of threads.

#include "common.hpp"

#include <hop/hop.hpp>

#include <array>
#include <atomic>
#include <csignal>
#include <memory>
#include <span>
#include <string>
#include <vector>

namespace {

constexpr const char* sections[] = {"hundred", "thousand"};
constexpr std::size_t msg_size = 64;
constexpr int backlog = 4096;
using msg = std::array<char, msg_size>;

msg pattern(std::size_t round) {
    msg m;
    for (std::size_t i = 0; i < msg_size; ++i) m[i] = static_cast<char>('a' + (round + i) % 26);
    return m;
}

extern "C" void on_watchdog(int) {
    static const char text[] = "pool_echo_bench: a run has not finished after 120 s: it is stuck\n";
    (void)!::write(2, text, sizeof text - 1);
    ::_exit(3);
}

void prepare_child() {
    bench::raise_fd_limit();
    std::signal(SIGALRM, on_watchdog);
    ::alarm(120);
}

// ---- the client (hop, 2 loops, the same for every server) -----------------

hop::task<std::uint64_t> ping(hop::endpoint ep, std::size_t rounds) {
    hop::tcp_stream c = co_await hop::tcp_stream::connect(ep);
    c.set_nodelay(true);
    msg in;
    std::uint64_t sum = 0;
    for (std::size_t r = 0; r < rounds; ++r) {
        const msg out = pattern(r);
        co_await c.write_all(out);
        co_await c.read_exact(in);
        if (in != out) throw std::runtime_error("the echo differs from what was sent");
        sum += static_cast<unsigned char>(in[0]);
    }
    co_return sum;
}

hop::task<std::uint64_t> client_share(hop::endpoint ep, std::size_t conns, std::size_t rounds) {
    std::vector<hop::future<std::uint64_t>> fs;
    fs.reserve(conns);
    for (std::size_t i = 0; i < conns; ++i) fs.push_back(hop::current_loop()->spawn(ping(ep, rounds)));
    std::uint64_t sum = 0;
    for (auto& f : fs) sum += co_await std::move(f);
    co_return sum;
}

// Runs the client against `port`; returns wall seconds and the checksum.
bench::sample run_client(std::uint16_t port, std::size_t conns, std::size_t rounds) {
    hop::io_pool client{2};
    const auto ep = hop::endpoint::loopback_v4(port);
    const auto t0 = bench::clock::now();
    auto fs = client.spawn_on_each([&](std::size_t i) {
        const std::size_t share = conns / 2 + (i < conns % 2 ? 1 : 0);
        return client_share(ep, share, rounds);
    });
    std::uint64_t sum = 0;
    for (auto& f : fs) sum += f.get();
    bench::sample s;
    s.seconds = bench::seconds_since(t0);
    s.check = sum;
    return s;
}

// ---- hop's server -----------------------------------------------------------

hop::task<void> echo_session(hop::tcp_stream s) {
    s.set_nodelay(true);
    msg buf;
    for (;;) {
        const std::size_t n = co_await s.read_some(buf);
        if (n == 0) break;
        co_await s.write_all(std::span<const char>(buf.data(), n));
    }
}

// reuse_port: each loop accepts on its own listener and serves there.
hop::task<void> accept_here(hop::io_pool& pool, hop::tcp_listener& lis) {
    const std::size_t me = pool.this_index();
    for (;;) {
        hop::tcp_stream s = co_await lis.accept();
        (void)pool.spawn_on(me, echo_session(std::move(s)));
    }
}

// least_loaded: one acceptor hands each connection to the least loaded loop.
hop::task<void> accept_and_hand_over(hop::io_pool& pool, hop::tcp_listener& lis) {
    for (;;) {
        hop::tcp_stream s = co_await lis.accept_detached();
        (void)pool.spawn_on(pool.least_loaded(), echo_session(std::move(s)));
    }
}

bench::sample hop_side(std::size_t loops, hop::accept_mode mode, std::size_t conns, std::size_t rounds) {
    prepare_child();
    hop::io_pool server{loops};
    std::vector<hop::tcp_listener> listeners;
    const bool reuse = mode == hop::accept_mode::reuse_port;
    listeners.push_back(hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.backlog = backlog, .reuse_port = reuse}));
    const std::uint16_t port = listeners.front().local_endpoint().port();
    if (reuse) {
        for (std::size_t i = 1; i < loops; ++i) {
            listeners.push_back(
                hop::tcp_listener::bind(hop::endpoint::loopback_v4(port), {.backlog = backlog, .reuse_port = true}));
        }
        for (std::size_t i = 0; i < loops; ++i) (void)server.spawn_on(i, accept_here(server, listeners[i]));
    } else {
        (void)server.spawn_on(0, accept_and_hand_over(server, listeners.front()));
    }
    auto s = run_client(port, conns, rounds);
    server.stop();
    return s;
}

// ---- Asio's server: one io_context per thread, SO_REUSEPORT acceptors -------

using asio::ip::tcp;

asio::awaitable<void> asio_session(tcp::socket s) {
    std::error_code ec;
    s.set_option(tcp::no_delay(true), ec);
    msg buf;
    for (;;) {
        const std::size_t n =
            co_await s.async_read_some(asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        co_await asio::async_write(s, asio::buffer(buf.data(), n), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
    }
}

asio::awaitable<void> asio_accept(tcp::acceptor& acc) {
    for (;;) {
        std::error_code ec;
        tcp::socket s = co_await acc.async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return;
        asio::co_spawn(acc.get_executor(), asio_session(std::move(s)), asio::detached);
    }
}

bench::sample asio_side(std::size_t threads, std::size_t conns, std::size_t rounds) {
    prepare_child();
    std::vector<std::unique_ptr<asio::io_context>> ctxs;
    std::vector<std::unique_ptr<tcp::acceptor>> accs;
    std::uint16_t port = 0;
    for (std::size_t i = 0; i < threads; ++i) {
        ctxs.push_back(std::make_unique<asio::io_context>(1));
        auto a = std::make_unique<tcp::acceptor>(*ctxs.back());
        tcp::endpoint ep(asio::ip::address_v4::loopback(), port);
        a->open(ep.protocol());
        a->set_option(tcp::acceptor::reuse_address(true));
        const int one = 1;
        if (::setsockopt(a->native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) != 0) {
            throw std::runtime_error("asio side: SO_REUSEPORT failed");
        }
        a->bind(ep);
        a->listen(backlog);
        port = a->local_endpoint().port();
        asio::co_spawn(*ctxs.back(), asio_accept(*a), asio::detached);
        accs.push_back(std::move(a));
    }
    std::vector<std::thread> ts;
    for (auto& c : ctxs) ts.emplace_back([&ctx = *c] { ctx.run(); });
    auto s = run_client(port, conns, rounds);
    for (auto& c : ctxs) c->stop();
    for (auto& t : ts) t.join();
    return s;
}

}  // namespace

int main(int argc, char** argv) try {
    auto opt = bench::parse_options(argc, argv, {sections[0], sections[1]});
    const std::size_t rounds = opt.quick ? 1 : 3;
    std::printf("echo server on every core: %zu cores; 64-byte ping-pong over 127.0.0.1; the client is hop on 2 "
                "loops in the same process, sharing the cores with the server; %zu round(s), median shown\n",
                bench::core_count(), rounds);
    std::printf("backend: %s (HOP_BACKEND; automatic if unset)\n",
                std::getenv("HOP_BACKEND") ? std::getenv("HOP_BACKEND") : "automatic");

    auto section = [&](std::size_t conns, std::size_t rts_each) {
        const double rts = static_cast<double>(conns * rts_each);
        auto rate = [&](const bench::measured& m) { return rts / m.s.seconds; };
        auto r = bench::run_rounds(
            rounds, [&] { return hop_side(1, hop::accept_mode::reuse_port, conns, rts_each); },
            [&] { return asio_side(1, conns, rts_each); },
            [&] { return hop_side(2, hop::accept_mode::least_loaded, conns, rts_each); },
            [&] { return hop_side(2, hop::accept_mode::reuse_port, conns, rts_each); },
            [&] { return asio_side(2, conns, rts_each); });
        for (std::size_t i = 1; i < r.size(); ++i) {
            if (r[i].front().s.check != r[0].front().s.check) throw std::runtime_error("servers echoed different bytes");
        }
        const std::string title = std::to_string(conns) + " connections, " + std::to_string(rts_each) +
                                  " round trips each: round trips/s";
        bench::print_table_header(title.c_str());
        const double hop1 = bench::median_of(r[0], rate);
        const double asio1 = bench::median_of(r[1], rate);
        const double hop2_ll = bench::median_of(r[2], rate);
        const double hop2_rp = bench::median_of(r[3], rate);
        const double asio2 = bench::median_of(r[4], rate);
        bench::print_row("1 loop / 1 thread", hop1, asio1, bench::better::higher, 0);
        bench::print_row("2 loops least_loaded / 2 threads", hop2_ll, asio2, bench::better::higher, 0);
        bench::print_row("2 loops reuse_port / 2 threads", hop2_rp, asio2, bench::better::higher, 0);
        std::printf("2 loops against 1: least_loaded %.2fx, reuse_port %.2fx (Asio 2 threads against 1: %.2fx)\n",
                    hop2_ll / hop1, hop2_rp / hop1, asio2 / asio1);
    };
    if (opt.wants("hundred")) section(100, opt.quick ? 200 : 2'000);
    if (opt.wants("thousand")) section(1'000, opt.quick ? 20 : 200);
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "pool_echo_bench: %s\n", e.what());
    return 1;
}
