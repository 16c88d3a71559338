// An HTTP server: a hello page, /echo (the request body back), /stream (a
// response sent as it is produced) and /sum (work done on the CPU pool).
// Try it with
//
//   http_server &           then    curl http://127.0.0.1:8080/
//                                   curl --data-binary 'hi there' http://127.0.0.1:8080/echo
//                                   curl -N http://127.0.0.1:8080/stream
//
// Ctrl-C (or SIGTERM) shuts it down gracefully: no new connections, idle
// ones closed, requests in flight finish (for up to 10 s); then it exits 0.
//
// With a certificate it serves https instead:
//
//   http_server --cert cert.pem --key key.pem &   then   curl --cacert cert.pem https://localhost:8080/
//
//   http_server [--host ADDRESS] [--port N] [--backend auto|io_uring|epoll] [--cert FILE --key FILE]

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

using namespace std::chrono_literals;

namespace {

struct options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 8080;
    hop::backend backend = hop::backend::automatic;
    std::string cert, key;  // both: https
};

/// The plain handler: the whole request in, the whole response out.
hop::task<hop::http::response> app(hop::http::request& req) {
    hop::http::response r;
    if (req.url == "/echo") {
        r.headers.add("Content-Type", req.headers.get("Content-Type").value_or("application/octet-stream"));
        r.body = std::move(req.body);
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
        r.body = "no page " + req.url + "\n";
        co_return r;
    }
    r.headers.add("Content-Type", "text/html; charset=utf-8");
    r.body =
        "<!doctype html><title>hop</title><h1>Hello from hop</h1>"
        "<p>POST a body to <a href=\"/echo\">/echo</a>, or watch <a href=\"/stream\">/stream</a>.</p>\n";
    co_return r;
}

/// The streaming handler: /stream sends a line every 200 ms; everything
/// else goes to app().
hop::task<> handle(hop::http::request& req, hop::http::response_writer& out) {
    if (req.url != "/stream") {
        auto whole = app(req);
        hop::http::response r = co_await std::move(whole);
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
    "  --host ADDRESS   IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
    "  --port N         port (default 8080; 0 picks a free one)\n"
    "  --backend NAME   io_loop backend (default auto)\n"
    "  --cert FILE      serve https with this certificate chain (PEM; needs --key)\n"
    "  --key FILE       the certificate's private key (PEM)\n";

options parse_options(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a != "--host" && a != "--port" && a != "--backend" && a != "--cert" && a != "--key") {
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
    return o;
}

hop::endpoint make_endpoint(const std::string& host, std::uint16_t port) {
    const std::string text = host.find(':') == std::string::npos || host.front() == '[' ? host : "[" + host + "]";
    return hop::endpoint::parse(text + ":" + std::to_string(port));
}

/// Binds on the loop's thread (the server belongs to the loop it was made
/// on), prints where it listens, and serves until `stop` is requested.
hop::task<> main_task(options o) {
    hop::http::server_options so{.max_header_bytes = 16 * 1024,
                                 .max_body_bytes = 8 << 20,
                                 .header_timeout = 10s,
                                 .idle_timeout = 60s,
                                 .max_connections = 10000,
                                 .shutdown_grace = 10s,
                                 .server_header = "hop-example"};
    if (!o.cert.empty()) so.tls = hop::tls::context::server(o.cert, o.key);  // https
    auto srv = hop::http::server::bind(make_endpoint(o.host, o.port), handle, so);
    std::printf("http_server: listening on %s://%s/ (%.*s backend), Ctrl-C to stop\n", so.tls ? "https" : "http",
                srv.local_endpoint().to_string().c_str(), static_cast<int>(hop::current_loop()->backend_name().size()),
                hop::current_loop()->backend_name().data());
    std::fflush(stdout);  // scripts read the address from this line
    co_await srv.serve();  // returns normally after the graceful shutdown
    std::fprintf(stderr, "http_server: stopped after %llu requests\n",
                 static_cast<unsigned long long>(srv.stats().requests));
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
        hop::io_loop loop{{.backend = o.backend}};
        hop::future<void> server = loop.spawn(main_task(o));
        server.on_done([&loop](const hop::future<void>&) { loop.stop(); });

        std::atomic<bool> exiting{false};
        std::thread signal_waiter([&] {
            int sig = 0;
            sigwait(&signals, &sig);
            if (exiting.load()) return;  // main() woke us up to leave
            std::fprintf(stderr, "\nhttp_server: %s, shutting down gracefully\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
            server.cancel();  // thread-safe: serve()'s stop token is requested
        });

        loop.run();
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
