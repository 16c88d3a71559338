// TCP echo benchmark: hop on io_uring, hop on epoll, and standalone Asio
// (asio::awaitable, asio::co_spawn, asio::ip::tcp) doing the same work in the
// same run, over loopback 127.0.0.1 with 64-byte messages and TCP_NODELAY on
// every socket. Each side runs its server AND its client in one process on ONE
// thread (one io_loop / one io_context), both written with that side's
// framework, so a figure is the framework's whole cost per round trip.
//
//   one          one connection ping-pongs N round trips: round trips/s, and
//                user / system CPU time per round trip (getrusage deltas
//                around the timed part)
//   hundred      100 connections ping-pong concurrently, M round trips each
//   ten_k        10,000 connections at once, each: connect, 10 round trips,
//                close; wall time until every server session has ended
//   idle_memory  N idle connections (2N sockets in the process), each server
//                session waiting in read_some: RSS growth / N
//   metrics      hop only: "one" and "hundred" with hop::metrics counting
//                against switched off (hop::metrics::set_enabled(false) in
//                the child before its loop exists): what the figures cost
//
// Each side runs in its own child process (bench::run_rounds), rounds
// interleaved; every figure is the median over the rounds.

#include "common.hpp"

#include <hop/hop.hpp>

#include <array>
#include <csignal>
#include <cstring>
#include <exception>
#include <fstream>
#include <sstream>
#include <span>
#include <string>
#include <system_error>
#include <vector>

namespace {

constexpr const char* sections[] = {"one", "hundred", "ten_k", "idle_memory", "metrics"};

constexpr std::size_t msg_size = 64;
// The listen backlog on both sides (the kernel caps it at somaxconn).
constexpr int backlog = 65535;
// Descriptors a child keeps for itself besides the sockets (stdio, the result
// pipe, the loop's own fds, the listeners).
constexpr std::size_t fd_reserve = 32;

using msg = std::array<char, msg_size>;

msg pattern(std::size_t round) {
    msg m;
    for (std::size_t i = 0; i < msg_size; ++i) m[i] = static_cast<char>('a' + (round + i) % 26);
    return m;
}

// /proc/sys/net/core/somaxconn (the kernel's cap on a listen backlog).
std::size_t somaxconn() {
    std::ifstream f("/proc/sys/net/core/somaxconn");
    std::size_t v = 0;
    if (!(f >> v) || v == 0) v = 4096;
    return v;
}

// TcpExt ListenOverflows from /proc/net/netstat: SYNs dropped because an
// accept queue was full (each costs the client a 1 s retransmit).
std::uint64_t listen_overflows() {
    std::ifstream f("/proc/net/netstat");
    std::string names, values;
    while (std::getline(f, names) && std::getline(f, values)) {
        if (names.rfind("TcpExt:", 0) != 0) continue;
        std::istringstream n(names), v(values);
        std::string name, value;
        while (n >> name && v >> value) {
            if (name == "ListenOverflows") return std::stoull(value);
        }
    }
    return 0;
}

// The hard RLIMIT_NOFILE (what a child may raise its soft limit to).
std::size_t fd_hard_limit() {
    rlimit rl{};
    if (::getrlimit(RLIMIT_NOFILE, &rl) != 0) return 1024;
    return rl.rlim_max == RLIM_INFINITY ? std::size_t{1} << 20 : static_cast<std::size_t>(rl.rlim_max);
}

// A side that takes this long is stuck (a lost wakeup, a connection that
// never completes): its child reports that on stderr and exits, so the run
// fails instead of hanging.
constexpr unsigned watchdog_seconds = 120;

extern "C" void on_watchdog(int) {
    static const char msg[] = "echo_bench: a benchmark side has not finished after 120 s: it is stuck\n";
    (void)!::write(2, msg, sizeof msg - 1);
    ::_exit(3);
}

// In a side's child: raises the descriptor limit and starts the watchdog.
void prepare_child() {
    bench::raise_fd_limit();
    std::signal(SIGALRM, on_watchdog);
    ::alarm(watchdog_seconds);
}

using bench::timed;

bench::sample make_sample(const timed& t0, const timed& t1, std::uint64_t check) {
    bench::sample s;
    s.seconds = bench::seconds_between(t0, t1);
    s.check = check;
    s.user_seconds = t1.cpu.user - t0.cpu.user;
    s.system_seconds = t1.cpu.system - t0.cpu.system;
    return s;
}

// ============================================================================
// hop
// ============================================================================

using bench::hop_state;

// The echo server's session: 64-byte buffer in the coroutine frame.
hop::task<void> hop_session(hop::tcp_stream s, hop_state* st) {
    return bench::hop_echo_session<sizeof(msg)>(std::move(s), st);
}

hop::task<void> hop_acceptor(hop::tcp_listener* lis, std::size_t n, hop::io_loop* loop, hop_state* st) {
    for (std::size_t i = 0; i < n; ++i) {
        hop::tcp_stream s = co_await lis->accept();
        (void)loop->spawn(hop_session(std::move(s), st));
    }
}

// The client's ping-pong on a connected stream: returns a checksum.
hop::task<std::uint64_t> hop_ping(hop::tcp_stream* c, std::size_t rounds) {
    msg in;
    std::uint64_t sum = 0;
    for (std::size_t r = 0; r < rounds; ++r) {
        const msg out = pattern(r);
        co_await c->write_all(out);
        co_await c->read_exact(in);
        if (in != out) throw std::runtime_error("hop: the echo differs from what was sent");
        sum += static_cast<unsigned char>(in[0]);
    }
    co_return sum;
}

hop::task<hop::tcp_stream> hop_connect(hop::endpoint ep) {
    hop::tcp_stream c = co_await hop::tcp_stream::connect(ep);
    c.set_nodelay(true);
    co_return c;
}

// ten_k's client: connect, ping-pong, close.
hop::task<std::uint64_t> hop_client(hop::endpoint ep, std::size_t rounds) {
    hop::tcp_stream c = co_await hop_connect(ep);
    std::uint64_t sum = co_await hop_ping(&c, rounds);
    c.close();
    co_return sum;
}

hop::tcp_listener hop_listen() {
    return hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.backlog = backlog});
}

// one / hundred: `conns` connections, connected before the timed part, then
// `rounds` round trips on each, concurrently.
hop::task<bench::sample> hop_pingpong(hop::io_loop* loop, std::size_t conns, std::size_t rounds) {
    hop_state st;
    st.sessions = conns;
    hop::tcp_listener lis = hop_listen();
    const hop::endpoint ep = lis.local_endpoint();
    auto acceptor = loop->spawn(hop_acceptor(&lis, conns, loop, &st));
    std::vector<hop::tcp_stream> cs;
    cs.reserve(conns);
    for (std::size_t i = 0; i < conns; ++i) {
        hop::tcp_stream c = co_await hop_connect(ep);
        cs.push_back(std::move(c));
    }
    co_await acceptor;
    co_await st.all_waiting.wait();

    const timed t0 = timed::now();
    std::vector<hop::task<std::uint64_t>> pings;
    pings.reserve(conns);
    for (auto& c : cs) pings.push_back(hop_ping(&c, rounds));
    std::vector<std::uint64_t> sums = co_await hop::when_all(std::move(pings));
    const timed t1 = timed::now();

    for (auto& c : cs) c.close();
    co_await st.all_ended.wait();
    st.check();
    std::uint64_t check = 0;
    for (auto v : sums) check += v;
    co_return make_sample(t0, t1, check);
}

// ten_k: `conns` clients at once, spread over `listeners` listeners so that no
// accept queue can overflow even if every connect lands before any accept.
hop::task<bench::sample> hop_ten_k(hop::io_loop* loop, std::size_t conns, std::size_t listeners, std::size_t rounds) {
    hop_state st;
    st.sessions = conns;
    std::vector<hop::tcp_listener> lis;
    std::vector<hop::endpoint> eps;
    std::vector<hop::future<void>> acceptors;
    lis.reserve(listeners);
    for (std::size_t j = 0; j < listeners; ++j) {
        lis.push_back(hop_listen());
        eps.push_back(lis.back().local_endpoint());
    }
    const std::uint64_t overflows0 = listen_overflows();
    const timed t0 = timed::now();
    for (std::size_t j = 0; j < listeners; ++j) {
        std::size_t share = conns / listeners + (j < conns % listeners ? 1 : 0);
        acceptors.push_back(loop->spawn(hop_acceptor(&lis[j], share, loop, &st)));
    }
    std::vector<hop::task<std::uint64_t>> clients;
    clients.reserve(conns);
    for (std::size_t i = 0; i < conns; ++i) clients.push_back(hop_client(eps[i % listeners], rounds));
    std::vector<std::uint64_t> sums = co_await hop::when_all(std::move(clients));
    co_await st.all_ended.wait();
    const timed t1 = timed::now();
    for (auto& a : acceptors) co_await a;
    st.check();
    std::uint64_t check = 0;
    for (auto v : sums) check += v;
    bench::sample s = make_sample(t0, t1, check);
    s.value = static_cast<double>(listen_overflows() - overflows0);
    co_return s;
}

// idle_memory: `conns` connections, each server session waiting in read_some.
hop::task<bench::sample> hop_idle(hop::io_loop* loop, std::size_t conns) {
    hop_state st;
    st.sessions = conns;
    hop::tcp_listener lis = hop_listen();
    const hop::endpoint ep = lis.local_endpoint();
    std::vector<hop::tcp_stream> cs;
    cs.reserve(conns);
    auto acceptor = loop->spawn(hop_acceptor(&lis, conns, loop, &st));
    const std::size_t rss0 = bench::current_rss_bytes();
    for (std::size_t i = 0; i < conns; ++i) {
        hop::tcp_stream c = co_await hop_connect(ep);
        cs.push_back(std::move(c));
    }
    co_await acceptor;
    co_await st.all_waiting.wait();
    const std::size_t rss1 = bench::current_rss_bytes();

    for (auto& c : cs) c.close();
    co_await st.all_ended.wait();
    st.check();
    bench::sample s;
    s.check = st.ended;
    s.value = (static_cast<double>(rss1) - static_cast<double>(rss0)) / static_cast<double>(conns);
    co_return s;
}

template <class Make>
bench::sample hop_side(hop::backend b, Make make) {
    prepare_child();
    return bench::run_on_loop(b, make);
}

// ============================================================================
// Asio
// ============================================================================

using asio::ip::tcp;

using bench::asio_event;
using bench::asio_state;

asio::awaitable<void> asio_session(asio::ip::tcp::socket s, asio_state* st) {
    return bench::asio_echo_session<sizeof(msg)>(std::move(s), st);
}

asio::awaitable<void> asio_acceptor(tcp::acceptor* acc, std::size_t n, asio_state* st) {
    for (std::size_t i = 0; i < n; ++i) {
        std::error_code ec;
        tcp::socket s = co_await acc->async_accept(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) {
            st->fail("async_accept: " + ec.message());
            co_return;
        }
        asio::co_spawn(acc->get_executor(), asio_session(std::move(s), st), asio::detached);
    }
}

asio::awaitable<std::uint64_t> asio_ping(tcp::socket* c, std::size_t rounds) {
    msg in;
    std::uint64_t sum = 0;
    for (std::size_t r = 0; r < rounds; ++r) {
        const msg out = pattern(r);
        co_await asio::async_write(*c, asio::buffer(out), asio::use_awaitable);
        co_await asio::async_read(*c, asio::buffer(in), asio::use_awaitable);
        if (in != out) throw std::runtime_error("asio: the echo differs from what was sent");
        sum += static_cast<unsigned char>(in[0]);
    }
    co_return sum;
}

asio::awaitable<tcp::socket> asio_connect(tcp::endpoint ep) {
    tcp::socket c(co_await asio::this_coro::executor);
    co_await c.async_connect(ep, asio::use_awaitable);
    c.set_option(tcp::no_delay(true));
    co_return c;
}

asio::awaitable<std::uint64_t> asio_client(tcp::endpoint ep, std::size_t rounds) {
    tcp::socket c = co_await asio_connect(ep);
    std::uint64_t sum = co_await asio_ping(&c, rounds);
    c.close();
    co_return sum;
}

tcp::acceptor asio_listen(asio::io_context& ctx) {
    tcp::acceptor a(ctx);
    tcp::endpoint ep(asio::ip::address_v4::loopback(), 0);
    a.open(ep.protocol());
    a.set_option(tcp::acceptor::reuse_address(true));
    a.bind(ep);
    a.listen(backlog);
    return a;
}

// Runs coroutines concurrently and waits for all: what hop::when_all does.
struct asio_fan_in {
    explicit asio_fan_in(asio::io_context& ctx, std::size_t n) : left(n), done(ctx) {
        if (n == 0) done.set();
    }
    std::size_t left;
    std::uint64_t sum = 0;
    std::exception_ptr error;
    asio_event done;
};

void asio_start(asio::io_context& ctx, asio_fan_in& fan, asio::awaitable<std::uint64_t> a) {
    auto on_done = [&fan](std::exception_ptr e, std::uint64_t v) {
        if (e && !fan.error) fan.error = e;
        fan.sum += v;
        if (--fan.left == 0) fan.done.set();
    };
    asio::co_spawn(ctx, std::move(a), on_done);
}

asio::awaitable<bench::sample> asio_pingpong(asio::io_context* ctx, std::size_t conns, std::size_t rounds) {
    asio_state st(*ctx);
    st.sessions = conns;
    tcp::acceptor acc = asio_listen(*ctx);
    const tcp::endpoint ep = acc.local_endpoint();
    asio::co_spawn(*ctx, asio_acceptor(&acc, conns, &st), asio::detached);
    std::vector<tcp::socket> cs;
    cs.reserve(conns);
    for (std::size_t i = 0; i < conns; ++i) {
        tcp::socket c = co_await asio_connect(ep);
        cs.push_back(std::move(c));
    }
    co_await st.all_waiting.wait();

    const timed t0 = timed::now();
    asio_fan_in fan(*ctx, conns);
    for (auto& c : cs) asio_start(*ctx, fan, asio_ping(&c, rounds));
    co_await fan.done.wait();
    const timed t1 = timed::now();
    if (fan.error) std::rethrow_exception(fan.error);

    for (auto& c : cs) c.close();
    co_await st.all_ended.wait();
    st.check();
    co_return make_sample(t0, t1, fan.sum);
}

asio::awaitable<bench::sample> asio_ten_k(asio::io_context* ctx, std::size_t conns, std::size_t listeners,
                                          std::size_t rounds) {
    asio_state st(*ctx);
    st.sessions = conns;
    std::vector<tcp::acceptor> accs;
    std::vector<tcp::endpoint> eps;
    accs.reserve(listeners);
    for (std::size_t j = 0; j < listeners; ++j) {
        accs.push_back(asio_listen(*ctx));
        eps.push_back(accs.back().local_endpoint());
    }
    const std::uint64_t overflows0 = listen_overflows();
    const timed t0 = timed::now();
    for (std::size_t j = 0; j < listeners; ++j) {
        std::size_t share = conns / listeners + (j < conns % listeners ? 1 : 0);
        asio::co_spawn(*ctx, asio_acceptor(&accs[j], share, &st), asio::detached);
    }
    asio_fan_in fan(*ctx, conns);
    for (std::size_t i = 0; i < conns; ++i) asio_start(*ctx, fan, asio_client(eps[i % listeners], rounds));
    co_await fan.done.wait();
    if (fan.error) std::rethrow_exception(fan.error);
    co_await st.all_ended.wait();
    const timed t1 = timed::now();
    st.check();
    bench::sample s = make_sample(t0, t1, fan.sum);
    s.value = static_cast<double>(listen_overflows() - overflows0);
    co_return s;
}

asio::awaitable<bench::sample> asio_idle(asio::io_context* ctx, std::size_t conns) {
    asio_state st(*ctx);
    st.sessions = conns;
    tcp::acceptor acc = asio_listen(*ctx);
    const tcp::endpoint ep = acc.local_endpoint();
    std::vector<tcp::socket> cs;
    cs.reserve(conns);
    asio::co_spawn(*ctx, asio_acceptor(&acc, conns, &st), asio::detached);
    const std::size_t rss0 = bench::current_rss_bytes();
    for (std::size_t i = 0; i < conns; ++i) {
        tcp::socket c = co_await asio_connect(ep);
        cs.push_back(std::move(c));
    }
    co_await st.all_waiting.wait();
    const std::size_t rss1 = bench::current_rss_bytes();

    for (auto& c : cs) c.close();
    co_await st.all_ended.wait();
    st.check();
    bench::sample s;
    s.check = st.ended;
    s.value = (static_cast<double>(rss1) - static_cast<double>(rss0)) / static_cast<double>(conns);
    co_return s;
}

template <class Make>
bench::sample asio_side(Make make) {
    prepare_child();
    return bench::run_on_context(make);
}

// ============================================================================

bool uring_available() {
    try {
        hop::io_loop probe{{.backend = hop::backend::io_uring}};
        return true;
    } catch (const std::system_error&) {
        return false;
    }
}

const char* label(hop::backend b) { return b == hop::backend::io_uring ? "io_uring" : "epoll"; }

}  // namespace

int main(int argc, char** argv) try {
    auto opt = bench::parse_options(argc, argv, {sections[0], sections[1], sections[2], sections[3], sections[4]});
    const std::size_t rounds = opt.quick ? 1 : 3;
    const bool uring = uring_available();
    const std::size_t hard = fd_hard_limit();
    const std::size_t max_conns = hard > fd_reserve ? (hard - fd_reserve) / 2 : 0;
    std::printf("echo benchmark: %zu cores, 64-byte ping-pong over 127.0.0.1, TCP_NODELAY, server and client on one "
                "thread per side; %zu round(s) each, median shown; io_uring %s; RLIMIT_NOFILE hard limit %zu\n",
                bench::core_count(), rounds, uring ? "available" : "NOT available (skipped)", hard);
    if (opt.quick) std::printf("--quick: runs are short, so the CPU times (counted in scheduler ticks) are coarse\n");

    std::vector<hop::backend> backends;
    if (uring) backends.push_back(hop::backend::io_uring);
    backends.push_back(hop::backend::epoll);

    auto per_rt = [](double seconds, double rts) { return seconds * 1e6 / rts; };

    auto pingpong_section = [&](const char* title, std::size_t conns, std::size_t rts_each) {
        const double rts = static_cast<double>(conns * rts_each);
        bench::print_table_header(title);
        for (auto b : backends) {
            auto hop_make = [conns, rts_each](hop::io_loop* loop) { return hop_pingpong(loop, conns, rts_each); };
            auto asio_make = [conns, rts_each](asio::io_context* ctx) { return asio_pingpong(ctx, conns, rts_each); };
            auto r = bench::run_rounds(rounds, [&] { return hop_side(b, hop_make); }, [&] { return asio_side(asio_make); });
            if (r[0].front().s.check != r[1].front().s.check) throw std::runtime_error("hop and asio echoed different bytes");
            const std::string tag = std::string(" [hop ") + label(b) + "]";
            auto rate = [&](const bench::measured& m) { return rts / m.s.seconds; };
            auto user = [&](const bench::measured& m) { return per_rt(m.s.user_seconds, rts); };
            auto sys = [&](const bench::measured& m) { return per_rt(m.s.system_seconds, rts); };
            bench::print_row("round trips/s" + tag, bench::median_of(r[0], rate), bench::median_of(r[1], rate),
                             bench::better::higher, 0);
            bench::print_row("user CPU us/round trip" + tag, bench::median_of(r[0], user), bench::median_of(r[1], user),
                             bench::better::lower, 2);
            bench::print_row("sys CPU us/round trip" + tag, bench::median_of(r[0], sys), bench::median_of(r[1], sys),
                             bench::better::lower, 2);
        }
    };

    if (opt.wants("one")) {
        const std::size_t n = opt.quick ? 5'000 : 200'000;
        pingpong_section(("one connection, " + std::to_string(n) + " round trips").c_str(), 1, n);
    }
    if (opt.wants("hundred")) {
        const std::size_t n = opt.quick ? 200 : 2'000;
        pingpong_section(("100 connections at once, " + std::to_string(n) + " round trips each").c_str(), 100, n);
    }
    if (opt.wants("ten_k")) {
        const std::size_t want = opt.quick ? 1'000 : 10'000;
        const std::size_t conns = std::min(want, max_conns);
        const std::size_t somax = somaxconn();
        const std::size_t listeners = (conns + somax - 1) / somax;
        const std::size_t rts_each = 10;
        const std::string title = std::to_string(conns) + " connections at once: connect, 10 round trips, close (" +
                                  std::to_string(listeners) + " listener(s), somaxconn " + std::to_string(somax) + ")";
        if (conns < want) {
            std::printf("\nNOTE: %zu connections, not %zu: RLIMIT_NOFILE's hard limit %zu allows %zu sockets\n", conns,
                        want, hard, hard - fd_reserve);
        }
        bench::print_table_header(title.c_str());
        for (auto b : backends) {
            auto hop_make = [=](hop::io_loop* loop) { return hop_ten_k(loop, conns, listeners, rts_each); };
            auto asio_make = [=](asio::io_context* ctx) { return asio_ten_k(ctx, conns, listeners, rts_each); };
            auto r = bench::run_rounds(rounds, [&] { return hop_side(b, hop_make); }, [&] { return asio_side(asio_make); });
            if (r[0].front().s.check != r[1].front().s.check) throw std::runtime_error("hop and asio echoed different bytes");
            const std::string tag = std::string(" [hop ") + label(b) + "]";
            auto wall = [](const bench::measured& m) { return m.s.seconds * 1e3; };
            auto cpu = [](const bench::measured& m) { return (m.s.user_seconds + m.s.system_seconds) * 1e3; };
            bench::print_row("wall ms" + tag, bench::median_of(r[0], wall), bench::median_of(r[1], wall),
                             bench::better::lower, 1);
            bench::print_row("CPU ms (user+sys)" + tag, bench::median_of(r[0], cpu), bench::median_of(r[1], cpu),
                             bench::better::lower, 1);
            double overflows = 0;
            for (const auto& side : r) {
                for (const auto& m : side) overflows += m.s.value;
            }
            if (overflows > 0) {
                std::printf("NOTE: %.0f SYNs dropped on full accept queues (ListenOverflows) during these runs: "
                            "those clients waited for a 1 s retransmit\n",
                            overflows);
            }
        }
    }
    if (opt.wants("idle_memory")) {
        const std::size_t want = opt.quick ? 1'000 : 10'000;
        const std::size_t conns = std::min(want, max_conns);
        const std::string title = std::to_string(conns) +
                                  " idle connections: RSS growth per connection, bytes (both ends in-process; "
                                  "server buffer 64 B in the coroutine frame on both sides)";
        if (conns < want) {
            std::printf("\nNOTE: %zu connections, not %zu: RLIMIT_NOFILE's hard limit %zu allows %zu sockets\n", conns,
                        want, hard, hard - fd_reserve);
        }
        bench::print_table_header(title.c_str());
        for (auto b : backends) {
            auto hop_make = [=](hop::io_loop* loop) { return hop_idle(loop, conns); };
            auto asio_make = [=](asio::io_context* ctx) { return asio_idle(ctx, conns); };
            auto r = bench::run_rounds(rounds, [&] { return hop_side(b, hop_make); }, [&] { return asio_side(asio_make); });
            auto bytes = [](const bench::measured& m) { return m.s.value; };
            bench::print_row(std::string("bytes per idle connection [hop ") + label(b) + "]", bench::median_of(r[0], bytes),
                             bench::median_of(r[1], bytes), bench::better::lower, 0);
        }
    }
    if (opt.wants("metrics")) {
        // More rounds than the other sections: the difference sought is a
        // few percent at most, less than a shared machine's drift between
        // two runs, so on and off alternate and the medians are compared.
        const std::size_t metric_rounds = opt.quick ? 1 : 7;
        struct load {
            std::string title;
            std::size_t conns, rts_each;
        };
        const std::size_t one_n = opt.quick ? 5'000 : 200'000;
        const std::size_t hundred_n = opt.quick ? 200 : 2'000;
        const load loads[] = {{"one connection, " + std::to_string(one_n) + " round trips", 1, one_n},
                              {"100 connections, " + std::to_string(hundred_n) + " round trips each", 100, hundred_n}};
        bench::print_overhead_header(("hop::metrics on against off, same run, " + std::to_string(metric_rounds) +
                                      " rounds each, median shown")
                                         .c_str());
        for (const load& l : loads) {
            const double rts = static_cast<double>(l.conns * l.rts_each);
            for (auto b : backends) {
                auto hop_make = [&l](hop::io_loop* loop) { return hop_pingpong(loop, l.conns, l.rts_each); };
                auto r = bench::run_rounds(
                    metric_rounds, [&] { return hop_side(b, hop_make); },
                    [&] {
                        hop::metrics::set_enabled(false);
                        return hop_side(b, hop_make);
                    });
                if (r[0].front().s.check != r[1].front().s.check) throw std::runtime_error("the two runs echoed different bytes");
                auto rate = [&](const bench::measured& m) { return rts / m.s.seconds; };
                auto cpu = [&](const bench::measured& m) { return per_rt(m.s.user_seconds + m.s.system_seconds, rts); };
                const std::string tag = std::string(" [") + label(b) + ", " + (l.conns == 1 ? "1" : "100") + " conn]";
                bench::print_overhead_row("round trips/s" + tag, bench::median_of(r[0], rate), bench::median_of(r[1], rate),
                                          bench::better::higher, 0);
                bench::print_overhead_row("CPU us/round trip" + tag, bench::median_of(r[0], cpu),
                                          bench::median_of(r[1], cpu), bench::better::lower, 3);
            }
        }
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "echo_bench: %s\n", e.what());
    return 2;
}
