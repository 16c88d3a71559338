#include <hop/metrics.hpp>

#include <hop/combinators.hpp>
#include <hop/cpu_pool.hpp>
#include <hop/http/client.hpp>
#include <hop/http/server.hpp>
#include <hop/tls.hpp>
#include <hop/io_loop.hpp>
#include <hop/net.hpp>
#include <hop/time.hpp>

#include "lib/loop_core.hpp"
#include "lib/metrics_impl.hpp"
#include "support/backend.hpp"
#include "support/child.hpp"
#include "support/http_server_fixture.hpp"
#include "support/peer.hpp"
#include "support/sockets.hpp"
#include "support/tls_certs.hpp"

#include <doctest/doctest.h>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>

#include <algorithm>
#include <atomic>
#include <latch>
#include <system_error>
#include <chrono>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

using namespace std::chrono_literals;

// The functions a stall report must name. They spin for `d`; on a machine
// so loaded that the watchdog has not looked by then, on until `reported`
// (or a guard): the report must be taken while they hold the loop, and a
// slow watchdog is not the failure under test.
void hop_test_spinning_handler(std::chrono::milliseconds d, const std::atomic<bool>& reported);
hop::task<void> hop_test_spinning_coroutine(std::chrono::milliseconds d, const std::atomic<bool>& reported);

namespace {
// Inlined into each: the report must name the spinning function itself.
[[gnu::always_inline]] inline void spin(std::chrono::milliseconds d, const std::atomic<bool>& reported) {
    const auto start = std::chrono::steady_clock::now();
    const auto guard_end = start + hop_test::scaled(std::chrono::seconds(10));
    for (;;) {
        const auto now = std::chrono::steady_clock::now();
        if (now >= guard_end || (now >= start + d && reported.load())) break;
    }
}
}  // namespace

// Not inlined: it must be a frame of its own for the report to name.
[[gnu::noinline]] void hop_test_spinning_handler(std::chrono::milliseconds d, const std::atomic<bool>& reported) {
    spin(d, reported);
}

hop::task<void> hop_test_spinning_coroutine(std::chrono::milliseconds d, const std::atomic<bool>& reported) {
    co_await hop::sleep_for(0ms);
    spin(d, reported);
}

namespace {

using hop_test::poll_until;
using hop_test::scaled;

const hop::metrics::loop_figures* find_loop(const hop::metrics::snapshot& s, const hop::io_loop& loop) {
    for (const auto& l : s.loops) {
        if (l.id == loop.id()) return &l;
    }
    return nullptr;
}

hop::metrics::loop_figures figures_of(const hop::io_loop& loop) {
    const auto s = hop::metrics::read();
    const auto* l = find_loop(s, loop);
    REQUIRE_MESSAGE(l != nullptr, "io_loop #" << loop.id() << " is not in hop::metrics::read()");
    return *l;
}

std::uint64_t in_flight(const hop::metrics::loop_figures& l, const std::string& kind) {
    for (const auto& k : l.in_flight) {
        if (k.kind == kind) return k.count;
    }
    FAIL("no kind '" << kind << "' among the operations in flight");
    return 0;
}

constexpr auto guard = scaled(std::chrono::seconds(20));

// Polls `ready` (a figure reaching a value the test caused) under the guard.
template <class F>
bool eventually(F&& ready) {
    return poll_until(std::forward<F>(ready), [] { return false; }, guard);
}

/// Stall reports, collected from hop::set_stall_log while alive; the
/// threshold is put back to the default when it goes.
class stall_log {
public:
    explicit stall_log(std::chrono::milliseconds threshold) {
        hop::set_stall_log([this](std::string_view line) {
            std::lock_guard lock(m_mutex);
            m_lines.emplace_back(line);
            reported.store(true);
        });
        hop::set_stall_threshold(threshold);
    }
    ~stall_log() {
        hop::set_stall_threshold(100ms);
        hop::set_stall_log(nullptr);
    }
    stall_log(const stall_log&) = delete;
    stall_log& operator=(const stall_log&) = delete;

    std::vector<std::string> lines() {
        std::lock_guard lock(m_mutex);
        return m_lines;
    }
    /// The lines naming `loop`.
    std::vector<std::string> about(const hop::io_loop& loop) {
        std::vector<std::string> out;
        const std::string name = "io_loop #" + std::to_string(loop.id()) + " ";
        for (const auto& l : lines()) {
            if (l.find(name) != std::string::npos) out.push_back(l);
        }
        return out;
    }

    /// A report came.
    std::atomic<bool> reported{false};

private:
    std::mutex m_mutex;
    std::vector<std::string> m_lines;
};

// The test server: /metrics serves the exposition; /load/... answers 404
// (so the load's requests are the only 4xx the server counts: the scrapes
// are 2xx); /status/N answers N.
hop::task<hop::http::response> metrics_app(hop::http::request& req) {
    hop::http::response r;
    if (req.url == "/metrics") {
        r.headers.add("Content-Type", std::string(hop::metrics::prometheus_content_type));
        r.body = hop::metrics::prometheus();
        co_return r;
    }
    if (req.url.rfind("/status/", 0) == 0) {
        r.status = std::stoi(req.url.substr(8));
        co_return r;
    }
    r.status = 404;
    r.body = "no page " + req.url + "\n";
    co_return r;
}

// Sends `n` GET requests for `path` to `ep`, one connection each, and
// checks each was answered.
hop::task<void> send_load(hop::endpoint ep, std::string path, int n) {
    for (int i = 0; i < n; ++i) {
        std::string reply = co_await hop_test::exchange(ep, hop_test::get_request(path, "Connection: close\r\n"));
        CHECK(hop_test::starts_with(reply, "HTTP/1.1 "));
    }
}

// A server on a loop of its own thread, serving until destroyed.
class serving {
public:
    explicit serving(hop::backend b) : m_loop(b) {
        hop::promise<hop::endpoint> bound;
        hop::future<hop::endpoint> where = bound.get_future();
        m_loop.loop().post([this, &bound] {
            try {
                m_server.emplace(hop::http::server::bind(hop::endpoint::loopback_v4(0), metrics_app,
                                                         hop_test::test_options()));
                bound.set_value(m_server->local_endpoint());
                m_served = m_loop.loop().spawn(m_server->serve());
            } catch (...) {
                bound.set_exception(std::current_exception());
            }
        });
        REQUIRE(where.wait_for(guard));
        m_endpoint = where.get();
    }
    ~serving() {
        m_served.cancel();
        (void)m_served.wait_for(guard);
        hop::promise<void> gone;
        hop::future<void> done = gone.get_future();
        m_loop.loop().post([this, &gone] {
            m_server.reset();
            gone.set_value();
        });
        (void)done.wait_for(guard);
    }
    serving(const serving&) = delete;
    serving& operator=(const serving&) = delete;

    const hop::endpoint& endpoint() const noexcept { return m_endpoint; }
    hop::io_loop& loop() noexcept { return m_loop.loop(); }

    /// Runs `n` requests for `path` from a client loop on this thread.
    void load(const std::string& path, int n) {
        hop::io_loop client{hop_test::options_for(m_loop.loop().backend_kind())};
        hop_test::run_on(client, send_load(m_endpoint, path, n));
    }

private:
    hop_test::running_loop m_loop;
    std::optional<hop::http::server> m_server;
    hop::future<void> m_served;
    hop::endpoint m_endpoint;
};

std::uint64_t requests_of_class(int cls) { return hop::metrics::read().http_server.responses.at(cls - 1); }

// The value of the one series a Prometheus instant query returned, or "".
std::string query_value(const std::string& json) {
    const auto v = json.find("\"value\":[");
    if (v == std::string::npos) return {};
    const auto q = json.find(",\"", v);
    const auto end = q == std::string::npos ? q : json.find('"', q + 2);
    if (end == std::string::npos) return {};
    return json.substr(q + 2, end - q - 2);
}

// The newest live cpu_pool's figures (ids grow with each pool made).
hop::metrics::cpu_pool_figures newest_pool() {
    const auto s = hop::metrics::read();
    REQUIRE_MESSAGE(!s.cpu_pools.empty(), "no cpu_pool in hop::metrics::read()");
    return *std::max_element(s.cpu_pools.begin(), s.cpu_pools.end(),
                             [](const auto& a, const auto& b) { return a.id < b.id; });
}

std::uint64_t client_errors(const hop::metrics::http_client_figures& c, const std::string& kind) {
    for (const auto& e : c.errors) {
        if (e.kind == kind) return e.count;
    }
    FAIL("no error kind '" << kind << "' in the client's figures");
    return 0;
}

// GETs `url` `n` times, one after the other, each answered 200.
hop::task<void> get_n(hop::http::client& c, std::string url, int n) {
    for (int i = 0; i < n; ++i) {
        hop::http::response r = co_await c.get(url);
        CHECK(r.status == 200);
    }
}

// What a GET of `url` threw: "system_error", "other", or "answered".
hop::task<std::string> get_failure(hop::http::client& c, std::string url) {
    try {
        (void)co_await c.get(std::move(url));
    } catch (const std::system_error&) {
        co_return "system_error";
    } catch (...) {
        co_return "other";
    }
    co_return "answered";
}

// One TLS connection through `lis`: a round trip (so TLS 1.3 tickets are
// taken in), then a clean close on both sides (a session ended otherwise is
// not kept). Returns whether each side resumed: {client, server}.
hop::task<bool> tls_server_side(hop::tcp_listener& lis, hop::tls::context ctx) {
    hop::tcp_stream tcp = co_await lis.accept();
    hop::tls::stream s = co_await hop::tls::stream::accept(std::move(ctx), std::move(tcp));
    std::array<char, 4> buf{};
    co_await s.read_exact(buf);
    co_await s.write_all(std::string_view("pong"));
    while (co_await s.read_some(buf) != 0) {
    }
    co_await s.shutdown(0ms);
    co_return s.session_reused();
}
hop::task<bool> tls_client_side(hop::endpoint to, hop::tls::context ctx) {
    hop::tcp_stream tcp = co_await hop::tcp_stream::connect(to);
    hop::tls::stream s = co_await hop::tls::stream::connect(std::move(ctx), std::move(tcp), "localhost");
    co_await s.write_all(std::string_view("ping"));
    std::array<char, 4> buf{};
    co_await s.read_exact(buf);
    const bool reused = s.session_reused();
    co_await s.shutdown(5s);
    co_return reused;
}
hop::task<std::pair<bool, bool>> tls_session(hop::tcp_listener& lis, hop::tls::context cctx, hop::tls::context sctx) {
    auto server = tls_server_side(lis, std::move(sctx));
    auto client = tls_client_side(lis.local_endpoint(), std::move(cctx));
    auto r = co_await hop::when_all(std::move(server), std::move(client));
    co_return std::make_pair(std::get<1>(r), std::get<0>(r));
}

// A handshake both sides fail (the client does not trust the server):
// whether each side threw, {client, server}.
hop::task<bool> threw(hop::task<bool> t) {
    try {
        (void)co_await std::move(t);
    } catch (const std::exception&) {
        co_return true;
    }
    co_return false;
}
hop::task<std::pair<bool, bool>> tls_refused(hop::tcp_listener& lis, hop::tls::context cctx, hop::tls::context sctx) {
    auto server = threw(tls_server_side(lis, std::move(sctx)));
    auto client = threw(tls_client_side(lis.local_endpoint(), std::move(cctx)));
    auto r = co_await hop::when_all(std::move(server), std::move(client));
    co_return std::make_pair(std::get<1>(r), std::get<0>(r));
}

}  // namespace

TEST_SUITE("metrics") {
    TEST_CASE("a cpu_pool's figures count the jobs its workers ran, the ones stolen, its parks and its queue") {
        std::uint64_t id = 0;
        {
            hop::cpu_pool pool(2);
            const auto start = newest_pool();
            id = start.id;
            CHECK(start.threads == 2);
            CHECK(start.jobs == 0);
            CHECK(start.steals == 0);

            constexpr int n = 1000;
            std::vector<hop::future<int>> fs;
            for (int i = 0; i < n; ++i) fs.push_back(pool.submit([i] { return i; }));
            long sum = 0;
            for (auto& f : fs) sum += f.get();
            CHECK(sum == long{n} * (n - 1) / 2);
            const auto ran = newest_pool();
            REQUIRE(ran.id == id);
            CHECK(ran.jobs - start.jobs == n);

            // One job queues m more on its own worker's deque (where a
            // worker's posts go) and blocks until they have run: only the
            // other worker can have taken them, each by a steal.
            constexpr int m = 50;
            std::latch done(m);
            pool.submit([&pool, &done] {
                    for (int i = 0; i < m; ++i) pool.post([&done] { done.count_down(); });
                    done.wait();
                })
                .get();
            const auto stolen = newest_pool();
            CHECK(stolen.jobs - ran.jobs == m + 1);
            CHECK(stolen.steals - ran.steals == m);
            // Nothing left to run: the queue is empty. A worker that runs a
            // job parks when it finds no more.
            CHECK(stolen.queued == 0);
            const std::uint64_t parked = newest_pool().parks;
            CHECK(pool.submit([] { return 1; }).get() == 1);
            CHECK(eventually([&] { return newest_pool().parks > parked; }));

            const std::uint64_t jobs = newest_pool().jobs;  // nothing runs any more
            CHECK(jobs == stolen.jobs + 1);
            const std::string text = hop::metrics::prometheus();
            CHECK(text.find("hop_cpu_pool_jobs_total{pool=\"" + std::to_string(id) + "\"} " + std::to_string(jobs)) !=
                  std::string::npos);
        }
        for (const auto& p : hop::metrics::read().cpu_pools) CHECK(p.id != id);
    }

    TEST_CASE("with counting off (set_enabled(false)) the figures stand still; back on, they move again") {
        struct restore {
            ~restore() { hop::metrics::set_enabled(true); }
        } restored;
        hop::cpu_pool pool(1);
        const auto start = newest_pool();
        hop::metrics::set_enabled(false);
        CHECK(!hop::metrics::enabled());
        for (int i = 0; i < 10; ++i) CHECK(pool.submit([i] { return i; }).get() == i);
        CHECK(newest_pool().jobs == start.jobs);
        hop::metrics::set_enabled(true);
        CHECK(hop::metrics::enabled());
        for (int i = 0; i < 10; ++i) CHECK(pool.submit([i] { return i; }).get() == i);
        CHECK(newest_pool().jobs - start.jobs == 10);
    }

    TEST_CASE("the HTTP client counts connections, reuse, errors by kind and latency") {
        hop_test::for_each_backend([](hop::backend b) {
            serving srv(b);
            const auto before = hop::metrics::read().http_client;
            hop::io_loop loop{hop_test::options_for(b)};
            std::uint16_t closed_port = 0;
            {
                auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
                closed_port = lis.local_endpoint().port();
            }
            {
                hop::http::client c;
                constexpr int n = 5;
                hop_test::run_on(loop, get_n(c, "http://" + srv.endpoint().to_string() + "/status/200", n));
                const auto mid = hop::metrics::read().http_client;
                CHECK(mid.connects - before.connects == 1);
                CHECK(mid.reused - before.reused == n - 1);
                CHECK(mid.retried == before.retried);
                CHECK(mid.request_duration.count - before.request_duration.count == n);
                CHECK(mid.request_duration.sum > before.request_duration.sum);
                CHECK(mid.connections_open - before.connections_open == 1);
                CHECK(mid.connections_idle - before.connections_idle == 1);
                CHECK(mid.connections_in_use == before.connections_in_use);
                CHECK(mid.requests_waiting == 0);

                // A refused connect fails as "network", and nothing else.
                CHECK(hop_test::run_on(loop, get_failure(c, "http://127.0.0.1:" + std::to_string(closed_port) + "/")) ==
                      "system_error");
                const auto after = hop::metrics::read().http_client;
                for (const auto& e : after.errors) {
                    INFO("error kind " << e.kind);
                    CHECK(e.count - client_errors(before, e.kind) == (e.kind == "network" ? 1u : 0u));
                }
                CHECK(after.request_duration.count == mid.request_duration.count);
                CHECK(after.connects == mid.connects);
                CHECK(after.connections_open == mid.connections_open);
            }
            // The client gone: its connection leaves the gauges, its counts stay.
            const auto gone = hop::metrics::read().http_client;
            CHECK(gone.connections_open == before.connections_open);
            CHECK(gone.connections_idle == before.connections_idle);
            CHECK(gone.connects - before.connects == 1);
            CHECK(gone.reused - before.reused == 4);
        });
    }

    TEST_CASE("TLS handshakes are counted by side, resumed ones and failed ones too") {
        hop_test::for_each_backend([](hop::backend b) {
            const auto& certs = hop_test::test_certs();
            auto trusting = hop::tls::context::client();
            trusting.load_ca_file(certs.ca);
            auto sctx = hop::tls::context::server(certs.localhost.cert, certs.localhost.key);
            hop::io_loop loop{hop_test::options_for(b)};
            auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));

            const auto before = hop::metrics::read().tls;
            const auto first = hop_test::run_on(loop, tls_session(lis, trusting, sctx));
            const auto second = hop_test::run_on(loop, tls_session(lis, trusting, sctx));
            CHECK(first == std::make_pair(false, false));
            CHECK(second == std::make_pair(true, true));
            const auto after = hop::metrics::read().tls;
            CHECK(after.client_handshakes - before.client_handshakes == 2);
            CHECK(after.server_handshakes - before.server_handshakes == 2);
            CHECK(after.client_resumed - before.client_resumed == 1);
            CHECK(after.server_resumed - before.server_resumed == 1);
            CHECK(after.client_failed == before.client_failed);
            CHECK(after.server_failed == before.server_failed);

            // A client that trusts nobody: its handshake fails, and the server's.
            const auto refused = hop_test::run_on(loop, tls_refused(lis, hop::tls::context::client(), sctx));
            CHECK(refused == std::make_pair(true, true));
            const auto failed = hop::metrics::read().tls;
            CHECK(failed.client_failed - after.client_failed == 1);
            CHECK(failed.server_failed - after.server_failed == 1);
            CHECK(failed.client_handshakes == after.client_handshakes);
            CHECK(failed.server_handshakes == after.server_handshakes);
        });
    }

    TEST_CASE("a loop's figures count its turns, handlers, posts from other threads, sleeps and wakes") {
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::running_loop rl(b);
            hop::io_loop& loop = rl.loop();
            REQUIRE(eventually([&] { return loop.core().sleeping(); }));
            const auto before = figures_of(loop);
            CHECK(before.backend == hop_test::backend_label(b));

            // Posts from this thread, each one after the loop went back to sleep:
            // each is a remote post and a wake.
            constexpr int posts = 5;
            std::atomic<int> ran{0};
            for (int i = 0; i < posts; ++i) {
                REQUIRE(eventually([&] { return loop.core().sleeping(); }));
                loop.post([&ran] { ran.fetch_add(1); });
                REQUIRE(eventually([&] { return ran.load() == i + 1; }));
            }
            REQUIRE(eventually([&] { return loop.core().sleeping(); }));
            const auto after = figures_of(loop);
            CHECK(after.remote_posts - before.remote_posts == posts);
            CHECK(after.tasks_resumed - before.tasks_resumed >= posts);
            CHECK(after.wakes - before.wakes == posts);
            CHECK(after.sleeps - before.sleeps >= posts);
            CHECK(after.turns - before.turns >= posts);
            CHECK(after.busy_seconds >= before.busy_seconds);
            CHECK(after.stalls == 0);
        });
    }

    TEST_CASE("a loop's figures show its armed timers and its operations in flight by kind") {
        hop_test::for_each_backend([](hop::backend b) {
            hop_test::running_loop rl(b);
            hop::io_loop& loop = rl.loop();
            auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
            const hop::endpoint ep = lis.local_endpoint();
            auto waiting = [](hop::tcp_listener& l, hop::endpoint to) -> hop::task<void> {
                // A read that never gets data, a timer that never fires.
                hop::tcp_stream out = co_await hop::tcp_stream::connect(to);
                hop::tcp_stream in = co_await l.accept();
                char byte = 0;
                auto sleeper = [](hop::tcp_stream& s, char& c) -> hop::task<void> {
                    (void)co_await s.read_some(std::span<char>(&c, 1));
                };
                hop::future<void> reading = hop::current_loop()->spawn(sleeper(in, byte));
                co_await hop::sleep_for(std::chrono::hours(1));
                (void)reading;
            };
            const auto before = figures_of(loop);
            CHECK(in_flight(before, "recv") == 0);
            hop::future<void> f = loop.spawn(waiting(lis, ep));
            CHECK(eventually([&] {
                const auto now = figures_of(loop);
                return in_flight(now, "recv") == 1 && now.timers_armed == 1;
            }));
            f.cancel();
            REQUIRE(f.wait_for(guard));
            CHECK(eventually([&] {
                const auto now = figures_of(loop);
                return in_flight(now, "recv") == 0 && now.timers_armed == 0;
            }));
            const auto after = figures_of(loop);
            CHECK(in_flight(after, "recv") == 0);
            CHECK(in_flight(after, "accept") == 0);
            CHECK(in_flight(after, "connect") == 0);
            CHECK(after.timers_armed == 0);
        });
    }

    TEST_CASE("a destroyed loop leaves the figures") {
        std::uint64_t id = 0;
        {
            hop::io_loop loop;
            id = loop.id();
            bool listed = false;
            for (const auto& l : hop::metrics::read().loops) listed = listed || l.id == id;
            CHECK(listed);
        }
        for (const auto& l : hop::metrics::read().loops) CHECK(l.id != id);
    }

    TEST_CASE("the HTTP server counts connections, responses by status class, bytes and latency") {
        hop_test::for_each_backend([](hop::backend b) {
            serving srv(b);
            const auto before = hop::metrics::read().http_server;
            srv.load("/status/200", 3);
            srv.load("/status/302", 1);
            srv.load("/nothing", 2);
            srv.load("/status/503", 4);
            // The server counts a connection closed after the client saw its
            // end: wait for the gauge rather than race it.
            CHECK(eventually([&] { return hop::metrics::read().http_server.connections_open == before.connections_open; }));
            const auto after = hop::metrics::read().http_server;
            CHECK(after.responses[1] - before.responses[1] == 3);
            CHECK(after.responses[2] - before.responses[2] == 1);
            CHECK(after.responses[3] - before.responses[3] == 2);
            CHECK(after.responses[4] - before.responses[4] == 4);
            CHECK(after.responses[0] == before.responses[0]);
            CHECK(after.connections_accepted - before.connections_accepted == 10);
            CHECK(after.active_handlers == 0);
            CHECK(after.request_duration.count - before.request_duration.count == 10);
            CHECK(after.request_duration.sum >= before.request_duration.sum);
            // Each request was at least its request line; each answer at least its status line.
            CHECK(after.bytes_received - before.bytes_received >= 10 * std::string("GET / HTTP/1.1\r\n").size());
            CHECK(after.bytes_sent - before.bytes_sent >= 10 * std::string("HTTP/1.1 200 OK\r\n").size());
        });
    }

    TEST_CASE("the blocking pool's figures count its calls") {
        const auto before = hop::metrics::read().blocking_pool;
        hop::io_loop loop;
        auto calls = []() -> hop::task<int> {
            int sum = 0;
            for (int i = 0; i < 3; ++i) sum += co_await hop::run_blocking([i] { return i; });
            co_return sum;
        };
        CHECK(hop_test::run_on(loop, calls()) == 3);
        const auto after = hop::metrics::read().blocking_pool;
        CHECK(after.jobs - before.jobs >= 3);
        CHECK(after.threads >= 1);
        CHECK(after.queued == 0);
    }

    TEST_CASE("the exposition passes promtool check metrics") {
        hop_test::for_each_backend([](hop::backend b) {
            serving srv(b);
            srv.load("/status/200", 2);
            srv.load("/nothing", 1);
            hop::cpu_pool pool(1);  // the pool families with a sample
            const std::string text = hop::metrics::prometheus();
            CHECK(text.find("# TYPE hop_loop_turns_total counter") != std::string::npos);
            CHECK(text.find("# TYPE hop_http_server_request_duration_seconds histogram") != std::string::npos);
            CHECK(text.find("hop_http_server_request_duration_seconds_bucket{le=\"+Inf\"}") != std::string::npos);
            CHECK(text.find("# TYPE hop_http_client_request_duration_seconds histogram") != std::string::npos);
            CHECK(text.find("# TYPE hop_http_client_errors_total counter") != std::string::npos);
            CHECK(text.find("# TYPE hop_tls_handshakes_total counter") != std::string::npos);
            CHECK(text.find("# TYPE hop_cpu_pool_jobs_total counter") != std::string::npos);
            CHECK(text.find("hop_loop_operations_in_flight{loop=\"" + std::to_string(srv.loop().id()) + "\",backend=\"" +
                            hop_test::backend_label(b) + "\",kind=\"accept\"} 1") != std::string::npos);
            hop_test::peer promtool(hop_test::peer_options::piped({"promtool", "check", "metrics"}, text));
            const hop_test::peer_result r = promtool.wait(scaled(std::chrono::milliseconds(60'000)));
            CHECK_MESSAGE(r.exited_ok(), "promtool check metrics: " << r.describe() << "\n--- input:\n" << text);
        });
    }

    TEST_CASE("a real Prometheus scrapes the server and stores the request count the load sent") {
        hop_test::for_each_backend([](hop::backend b) {
            serving srv(b);
            hop_test::temp_dir dir("hop-prometheus-");
            {
                std::ofstream conf(dir.path() / "prometheus.yml");
                conf << "global:\n  scrape_interval: 200ms\n  scrape_timeout: 150ms\n"
                        "scrape_configs:\n  - job_name: hop\n    static_configs:\n      - targets: ['"
                     << srv.endpoint().to_string() << "']\n";
            }
            std::optional<hop_test::peer> prom;
            std::uint16_t port = 0;
            hop_test::start_on_free_port(
                "prometheus",
                [&](int) {
                    port = hop_test::free_port();
                    prom.reset();
                    prom.emplace(hop_test::peer_options::logged(
                        {"prometheus", "--config.file=" + (dir.path() / "prometheus.yml").string(),
                         "--storage.tsdb.path=" + (dir.path() / "data").string(),
                         "--web.listen-address=127.0.0.1:" + std::to_string(port), "--log.level=warn"},
                        dir.path() / "prometheus.log"));
                    return prom->wait_for_port(port, scaled(std::chrono::milliseconds(30'000)));
                },
                [&] { return prom ? prom->output() : std::string(); });

            const std::uint64_t baseline = requests_of_class(4);
            constexpr int sent = 40;
            srv.load("/load", sent);
            CHECK(requests_of_class(4) - baseline == sent);
            const std::string want = std::to_string(baseline + sent);

            // Wait (polling the API) until a scrape after the load is stored.
            std::string last;
            const bool stored = poll_until(
                [&] {
                    hop_test::peer curl(hop_test::peer_options::piped(
                        {"curl", "-sS", "-G", "http://127.0.0.1:" + std::to_string(port) + "/api/v1/query",
                         "--data-urlencode", "query=hop_http_server_requests_total{code=\"4xx\"}"}));
                    const hop_test::peer_result r = curl.wait(scaled(std::chrono::milliseconds(10'000)));
                    last = r.out;
                    return r.exited_ok() && query_value(r.out) == want;
                },
                [&] { return prom->exited(); }, scaled(std::chrono::milliseconds(30'000)));
            CHECK_MESSAGE(stored, "Prometheus did not store hop_http_server_requests_total{code=\"4xx\"} == "
                                      << want << "; its last answer: " << last << "\nits log: " << prom->output());
        });
    }

    // Run by the case below in a child: prints the threshold it started with.
    TEST_CASE("stall threshold at start (child)" * doctest::skip()) {
        if (std::getenv("HOP_STALL_CHILD") == nullptr) return;
        std::printf("threshold %lld\n", static_cast<long long>(hop::stall_threshold().count()));
        std::fflush(stdout);
    }

    TEST_CASE("HOP_STALL_THRESHOLD_MS sets the threshold a program starts with; a bad value is named and ignored") {
        struct row {
            const char* value;
            long long want;
            bool named;  // the value is named on stderr
        };
        for (const row r : {row{"250", 250, false}, row{"0", 0, false}, row{"", 100, false}, row{"abc", 100, true},
                            row{"-3", 100, true}, row{"12ms", 100, true}}) {
            CAPTURE(r.value);
            int out[2], err[2];
            REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
            REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
            const pid_t pid = hop_test::spawn_self("stall threshold at start*",
                                                   {"HOP_STALL_CHILD=1", std::string("HOP_STALL_THRESHOLD_MS=") + r.value},
                                                   out[1], err[1]);
            ::close(out[1]);
            ::close(err[1]);
            const auto drain = [](int fd) {
                std::string text;
                char buf[4096];
                ssize_t n;
                while ((n = ::read(fd, buf, sizeof buf)) != 0) {
                    if (n < 0 && errno == EINTR) continue;
                    if (n < 0) break;
                    text.append(buf, static_cast<std::size_t>(n));
                }
                ::close(fd);
                return text;
            };
            const std::string printed = drain(out[0]);
            const std::string said = drain(err[0]);
            int status = 0;
            while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
            }
            CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));
            CHECK_MESSAGE(printed.find("threshold " + std::to_string(r.want) + "\n") != std::string::npos, printed);
            const bool named = said.find(std::string("HOP_STALL_THRESHOLD_MS='") + r.value + "'") != std::string::npos;
            CHECK_MESSAGE(named == r.named, said);
        }
    }

    TEST_CASE("set_stall_threshold refuses a negative threshold, naming it") {
        const auto before = hop::stall_threshold();
        CHECK(hop_test::what_of<std::invalid_argument>([] { hop::set_stall_threshold(-5ms); }).find("-5 ms") !=
              std::string::npos);
        CHECK(hop::stall_threshold() == before);
    }

    TEST_CASE("a handler that holds the loop 300 ms is reported, with its function in the backtrace") {
        hop_test::for_each_backend([](hop::backend b) {
            stall_log log(50ms);
            hop_test::running_loop rl(b);
            hop::io_loop& loop = rl.loop();
            std::atomic<bool> done{false};
            loop.post([&done, &log] {
                hop_test_spinning_handler(300ms, log.reported);
                done.store(true);
            });
            REQUIRE(eventually([&] { return done.load() && !log.about(loop).empty(); }));
            const auto lines = log.about(loop);
            REQUIRE(lines.size() == 1);
            INFO("the report: " << lines[0]);
            CHECK(lines[0].find("hop: stall: io_loop #" + std::to_string(loop.id()) + " (" +
                                hop_test::backend_label(b) + ") has run one handler for ") == 0);
            CHECK(lines[0].find("hop_test_spinning_handler") != std::string::npos);
            CHECK(figures_of(loop).stalls == 1);
        });
    }

    TEST_CASE("a coroutine step that holds the loop 300 ms is reported, with the coroutine in the backtrace") {
        hop_test::for_each_backend([](hop::backend b) {
            stall_log log(50ms);
            hop_test::running_loop rl(b);
            hop::io_loop& loop = rl.loop();
            hop::future<void> f = loop.spawn(hop_test_spinning_coroutine(300ms, log.reported));
            REQUIRE(f.wait_for(guard));
            REQUIRE(eventually([&] { return !log.about(loop).empty(); }));
            const auto lines = log.about(loop);
            REQUIRE(lines.size() == 1);
            INFO("the report: " << lines[0]);
            CHECK(lines[0].find("hop_test_spinning_coroutine") != std::string::npos);
            CHECK(figures_of(loop).stalls == 1);
        });
    }

    TEST_CASE("a loop that is only idle, or runs short handlers, is never reported") {
        hop_test::for_each_backend([](hop::backend b) {
            stall_log log(100ms);  // the value metrics.hpp recommends
            hop_test::running_loop rl(b);
            hop::io_loop& loop = rl.loop();
            // Short handlers now and then (a timer every 5 ms) beside the idling.
            auto ticking = []() -> hop::task<void> {
                for (;;) co_await hop::sleep_for(5ms);
            };
            hop::future<void> ticks = loop.spawn(ticking());
            // The watchdog looks every 25 ms: 40 looks span a second, ten
            // times the threshold.
            const std::uint64_t from = hop::detail::stall_scans();
            REQUIRE(eventually([&] { return hop::detail::stall_scans() >= from + 40; }));
            ticks.cancel();
            REQUIRE(ticks.wait_for(guard));
            CHECK(log.about(loop).empty());
            CHECK(figures_of(loop).stalls == 0);
        });
    }

    TEST_CASE("a child forked while the watchdog waits for a stalled loop's backtrace can make, run and read loops") {
        // The loop's handler holds it with the backtrace signal blocked, so
        // the watchdog, which asks for the stack 1 ms in, waits for it as
        // long as the handler runs, and this thread forks meanwhile. Each
        // child makes a loop (the loop registry's lock), reads the figures
        // (the counter blocks' lock) and exits 0; a lock held across the
        // fork would hang it until its alarm.
        hop_test::for_each_backend([](hop::backend b) {
            stall_log log(1ms);
            hop_test::running_loop rl(b);
            std::atomic<bool> started{false};
            std::atomic<bool> forked{false};
            rl.loop().post([&started, &forked] {
                sigset_t sig;
                sigemptyset(&sig);
                sigaddset(&sig, SIGRTMIN + 5);  // the stall signal (metrics.hpp)
                ::pthread_sigmask(SIG_BLOCK, &sig, nullptr);
                started.store(true);
                hop_test_spinning_handler(std::chrono::milliseconds(0), forked);
                ::pthread_sigmask(SIG_UNBLOCK, &sig, nullptr);
            });
            REQUIRE(eventually([&] { return started.load(); }));
            const unsigned alarm_s = static_cast<unsigned>(scaled(std::chrono::seconds(10)).count());
            constexpr int children = 20;
            int ok = 0;
            for (int i = 0; i < children; ++i) {
                std::fflush(nullptr);
                const pid_t pid = ::fork();
                REQUIRE(pid >= 0);
                if (pid == 0) {
                    ::alarm(alarm_s);  // a hang becomes SIGALRM
                    int code = 1;
                    try {
                        hop::io_loop child{hop_test::options_for(b)};
                        bool listed = false;
                        for (const auto& l : hop::metrics::read().loops) listed = listed || l.id == child.id();
                        std::atomic<bool> ran{false};
                        child.post([&ran] { ran.store(true); });
                        child.run_once();
                        code = listed && ran.load() ? 0 : 2;
                    } catch (...) {
                        code = 3;
                    }
                    std::_Exit(code);
                }
                int status = 0;
                while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
                }
                INFO("child " << i << ": wait status " << status);
                CHECK(WIFEXITED(status));
                if (WIFEXITED(status) && WEXITSTATUS(status) == 0) ++ok;
            }
            forked.store(true);
            CHECK(ok == children);
            REQUIRE(eventually([&] { return !log.about(rl.loop()).empty(); }));
            CHECK(figures_of(rl.loop()).stalls == 1);
        });
    }

    TEST_CASE("a stall threshold of 0 turns the detector off") {
        hop_test::for_each_backend([](hop::backend b) {
            stall_log log(0ms);
            hop_test::running_loop rl(b);
            hop::io_loop& loop = rl.loop();
            std::atomic<bool> done{false};
            static const std::atomic<bool> no_wait{true};  // nothing to wait for: spin 150 ms
            loop.post([&done] {
                hop_test_spinning_handler(150ms, no_wait);
                done.store(true);
            });
            REQUIRE(eventually([&] { return done.load(); }));
            CHECK(log.about(loop).empty());
            CHECK(figures_of(loop).stalls == 0);
        });
    }
}
