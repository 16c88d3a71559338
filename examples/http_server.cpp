// An HTTP server: a hello page, /echo (the request body back), /stream (a
// response sent as it is produced), /sum (work done on the CPU pool) and
// /metrics (hop's figures for Prometheus).
// Try it with
//
//   http_server &           then    curl http://127.0.0.1:8080/
//                                   curl --data-binary 'hi there' http://127.0.0.1:8080/echo
//                                   curl -N http://127.0.0.1:8080/stream
//                                   curl http://127.0.0.1:8080/metrics
//
// Ctrl-C (or SIGTERM) shuts it down gracefully: no new connections, idle
// ones closed, requests in flight finish (for up to 10 s); then it exits 0.
//
// With a certificate it serves https instead:
//
//   http_server --cert cert.pem --key key.pem &   then   curl --cacert cert.pem https://localhost:8080/
//
// With --loops N it serves on every core: an io_pool of N loops (0: one per
// core), each serving its share of the connections (--accept picks how they
// are spread); without it, one io_loop serves everything.
//
//   http_server [--host ADDRESS] [--port N] [--backend auto|io_uring|epoll] [--cert FILE --key FILE]
//               [--loops N] [--accept least_loaded|reuse_port]

#include <hop/hop.hpp>
#include <hop/http.hpp>
#include <hop/metrics.hpp>

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

namespace {

struct options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;
    hop::backend backend = hop::backend::automatic;
    std::string cert, key;  // both: https
    std::optional<std::size_t> loops;  // set: an io_pool of that many loops (0: one per core)
    hop::accept_mode accept = hop::accept_mode::least_loaded;
};

/// 405 with the methods `url` takes.
hop::http::response not_allowed(const std::string& method, std::string_view allow) {
    hop::http::response r{.status = 405};
    r.headers.add("Allow", allow);
    r.headers.add("Content-Type", "text/plain; charset=utf-8");
    r.body = method + " is not allowed here; try " + std::string(allow) + "\n";
    return r;
}

/// The plain handler: the whole request in, the whole response out.
hop::task<hop::http::response> app(hop::http::request& req) {
    hop::http::response r;
    const bool get = req.method == "GET" || req.method == "HEAD";
    if (req.url == "/echo") {
        if (get) {
            // What a browser following the link gets: a form that POSTs here.
            r.headers.add("Content-Type", "text/html; charset=utf-8");
            r.body =
                "<!doctype html><title>hop: echo</title><h1>Echo</h1>"
                "<form method=\"post\" action=\"/echo\" enctype=\"text/plain\">"
                "<textarea name=\"text\" rows=\"4\" cols=\"40\">hello</textarea><br>"
                "<button>POST it</button></form><p>or: <code>curl --data-binary 'hi' URL/echo</code></p>\n";
            co_return r;
        }
        if (req.method != "POST" && req.method != "PUT") co_return not_allowed(req.method, "GET, HEAD, POST, PUT");
        r.headers.add("Content-Type", req.headers.get("Content-Type").value_or("application/octet-stream"));
        r.body = std::move(req.body);
        co_return r;
    }
    if (req.url == "/metrics") {
        // Every loop, the blocking pool and the server, in Prometheus' text format.
        if (!get) co_return not_allowed(req.method, "GET, HEAD");
        r.headers.add("Content-Type", std::string(hop::metrics::prometheus_content_type));
        r.body = hop::metrics::prometheus();
        co_return r;
    }
    if (req.url == "/sum") {
        // CPU work goes to the pool; the response is written back on the loop.
        co_await hop::cpu().schedule();
        std::uint64_t sum = 0;
        for (unsigned char ch : req.body) sum += ch;
        r.body = std::to_string(sum) + "\n";
        co_return r;
    }
    if (req.url != "/" && req.url != "/index.html") {
        r.status = 404;
        r.headers.add("Content-Type", "text/plain; charset=utf-8");
        r.body = "no page " + req.url + "\n";
        co_return r;
    }
    if (!get) co_return not_allowed(req.method, "GET, HEAD");
    r.headers.add("Content-Type", "text/html; charset=utf-8");
    r.body =
        "<!doctype html><title>hop</title><h1>Hello from hop</h1>"
        "<p>POST a body to <a href=\"/echo\">/echo</a> (a form), add up bytes with POST /sum, "
        "or watch <a href=\"/stream\">/stream</a>.</p>\n";
    co_return r;
}

/// The streaming handler: /stream sends a line every 200 ms; everything
/// else goes to app().
hop::task<> handle(hop::http::request& req, hop::http::response_writer& out) {
    if (req.url != "/stream") {
        auto whole = app(req);
        hop::http::response r = co_await std::move(whole);
        // The length is known: Content-Length, not chunks (so HTTP/1.0
        // clients that ask for keep-alive keep their connection).
        r.headers.set("Content-Length", std::to_string(r.body.size()));
        co_await out.start(r.status, std::move(r.headers));
        co_await out.write(r.body);
        co_return;
    }
    hop::http::headers fields{{"Content-Type", "text/plain"}};
    co_await out.start(200, std::move(fields));
    for (int i = 1; i <= 5; ++i) {
        co_await out.write("line " + std::to_string(i) + "\n");
        co_await hop::sleep_for(200ms);
    }
}

constexpr const char* usage =
    "usage: http_server [--host ADDRESS] [--port N] [--backend auto|io_uring|epoll] [--cert FILE --key FILE]\n"
    "                   [--loops N] [--accept least_loaded|reuse_port]\n"
    "  --host ADDRESS   IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
    "  --port N         port (default 8080; 0 picks a free one)\n"
    "  --backend NAME   io_loop backend (default auto)\n"
    "  --cert FILE      serve https with this certificate chain (PEM; needs --key)\n"
    "  --key FILE       the certificate's private key (PEM)\n"
    "  --loops N        serve on an io_pool of N loops, one thread each (0: one per core);\n"
    "                   without it, one io_loop on the main thread serves everything\n"
    "  --accept MODE    with --loops: how connections are spread (default least_loaded: the\n"
    "                   loop serving the fewest; reuse_port: a SO_REUSEPORT listener per loop)\n";

options parse_options(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a != "--host" && a != "--port" && a != "--backend" && a != "--cert" && a != "--key" && a != "--loops" &&
            a != "--accept") {
            throw std::invalid_argument("unknown argument '" + a + "'");
        }
        if (++i == argc) throw std::invalid_argument(a + ": a value is missing");
        const std::string v = argv[i];
        if (a == "--host") {
            o.host = v;
        } else if (a == "--cert") {
            o.cert = v;
        } else if (a == "--key") {
            o.key = v;
        } else if (a == "--loops") {
            char* end = nullptr;
            errno = 0;
            const long n = std::strtol(v.c_str(), &end, 10);
            if (v.empty() || *end != '\0' || errno != 0 || n < 0 || n > 4096) {
                throw std::invalid_argument("--loops '" + v + "': expected a number of loops from 0 (one per core) to 4096");
            }
            o.loops = static_cast<std::size_t>(n);
        } else if (a == "--accept") {
            if (v == "least_loaded") {
                o.accept = hop::accept_mode::least_loaded;
            } else if (v == "reuse_port") {
                o.accept = hop::accept_mode::reuse_port;
            } else {
                throw std::invalid_argument("--accept '" + v + "': expected least_loaded or reuse_port");
            }
        } else if (a == "--port") {
            char* end = nullptr;
            errno = 0;
            const long n = std::strtol(v.c_str(), &end, 10);
            if (v.empty() || *end != '\0' || errno != 0 || n < 0 || n > 65535) {
                throw std::invalid_argument("--port '" + v + "': expected a port number from 0 to 65535");
            }
            o.port = static_cast<std::uint16_t>(n);
        } else if (v == "auto") {
            o.backend = hop::backend::automatic;
        } else if (v == "io_uring") {
            o.backend = hop::backend::io_uring;
        } else if (v == "epoll") {
            o.backend = hop::backend::epoll;
        } else {
            throw std::invalid_argument("--backend '" + v + "': expected auto, io_uring or epoll");
        }
    }
    if (o.cert.empty() != o.key.empty()) throw std::invalid_argument("--cert and --key go together");
    if (!o.loops && o.accept != hop::accept_mode::least_loaded) {
        throw std::invalid_argument("--accept is for --loops: one loop has one listener");
    }
    return o;
}

hop::endpoint make_endpoint(const std::string& host, std::uint16_t port) {
    const std::string text = host.find(':') == std::string::npos || host.front() == '[' ? host : "[" + host + "]";
    return hop::endpoint::parse(text + ":" + std::to_string(port));
}

/// Requests served by one loop of the pool. Per-loop state: each loop only
/// touches its own, so nothing is locked (and the padding keeps the loops
/// off each other's cache lines).
struct alignas(64) loop_count {
    std::uint64_t requests = 0;
};

/// Binds, prints where it listens, and serves until its stop is requested:
/// on the loop running it, or on every loop of `pool` if there is one.
hop::task<> main_task(options o, hop::io_pool* pool) {
    hop::http::server_options so{.max_header_bytes = 16 * 1024,
                                 .max_body_bytes = 8 << 20,
                                 .header_timeout = 10s,
                                 .idle_timeout = 60s,
                                 .max_connections = 10000,
                                 .shutdown_grace = 10s,
                                 .accept = o.accept,
                                 .server_header = "hop-example"};
    if (!o.cert.empty()) so.tls = hop::tls::context::server(o.cert, o.key);  // https
    std::vector<loop_count> served(pool ? pool->size() : 0);
    auto counted = [pool, &served](hop::http::request& req, hop::http::response_writer& out) {
        ++served[pool->this_index()].requests;  // runs on the loop serving the connection
        return handle(req, out);
    };
    auto srv = pool ? hop::http::server::bind(make_endpoint(o.host, o.port), counted, so)
                    : hop::http::server::bind(make_endpoint(o.host, o.port), handle, so);
    const std::string where = pool ? ", " + std::to_string(pool->size()) + " loops, " +
                                         (o.accept == hop::accept_mode::reuse_port ? "reuse_port" : "least_loaded")
                                   : std::string();
    std::printf("http_server: listening on %s://%s/ (%.*s backend%s), Ctrl-C to stop\n", so.tls ? "https" : "http",
                srv.local_endpoint().to_string().c_str(), static_cast<int>(hop::current_loop()->backend_name().size()),
                hop::current_loop()->backend_name().data(), where.c_str());
    std::fflush(stdout);  // scripts read the address from this line
    if (pool) {
        co_await srv.serve(*pool);  // every loop; returns normally after the graceful shutdown
    } else {
        co_await srv.serve();
    }
    std::string per_loop;
    for (const auto& c : served) per_loop += (per_loop.empty() ? " (per loop:" : "") + (" " + std::to_string(c.requests));
    if (!per_loop.empty()) per_loop += ")";
    std::fprintf(stderr, "http_server: stopped after %llu requests%s\n",
                 static_cast<unsigned long long>(srv.stats().requests), per_loop.c_str());
}

}  // namespace

int main(int argc, char** argv) {
    options o;
    try {
        for (int i = 1; i < argc; ++i) {
            if (std::string_view(argv[i]) == "--help" || std::string_view(argv[i]) == "-h") {
                std::fputs(usage, stdout);
                return 0;
            }
        }
        o = parse_options(argc, argv);
        make_endpoint(o.host, o.port);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_server: %s\n%s", e.what(), usage);
        return 2;
    }

    // Signals: SIGINT and SIGTERM are blocked in every thread and taken by
    // one thread with sigwait(), where calling into hop is allowed (a signal
    // handler may not). Cancelling the server task stops serve(), which
    // then shuts down gracefully.
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);

    try {
        std::optional<hop::io_loop> loop;
        std::optional<hop::io_pool> pool;
        hop::future<void> server;
        if (o.loops) {
            // Every core: the server task runs on loop 0, the server on all of them.
            pool.emplace(hop::io_pool_options{.loops = *o.loops, .loop = {.backend = o.backend}});
            server = pool->spawn_on(0, main_task(o, &*pool));
        } else {
            loop.emplace(hop::io_loop_options{.backend = o.backend});
            server = loop->spawn(main_task(o, nullptr));
            server.on_done([&loop](const hop::future<void>&) { loop->stop(); });
        }

        std::atomic<bool> exiting{false};
        std::thread signal_waiter([&] {
            int sig = 0;
            sigwait(&signals, &sig);
            if (exiting.load()) return;  // main() woke us up to leave
            std::fprintf(stderr, "\nhttp_server: %s, shutting down gracefully\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
            server.cancel();  // thread-safe: serve()'s stop token is requested
        });

        if (loop) {
            loop->run();
        } else {
            server.wait();  // the pool's threads serve; this one waits
        }
        exiting.store(true);
        pthread_kill(signal_waiter.native_handle(), SIGTERM);  // wakes sigwait if no signal came
        signal_waiter.join();

        if (server.cancelled()) return 0;  // a signal before the server task started
        server.get();                      // rethrows a failure (EADDRINUSE...)
        return 0;
    } catch (const hop::cancelled_error&) {
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_server: %s\n", e.what());
        return 1;
    }
}
