// A TCP echo server: every connection gets its own coroutine on one io_loop
// and gets back whatever it sends, until it closes. Try it with
//
//   echo_server &            then    nc 127.0.0.1 7777
//
// Connects, disconnects and per-connection errors are logged on stderr; a
// peer that resets its connection ends that connection only. Ctrl-C (or
// SIGTERM) cancels the server: the accept and every connection end, and the
// program exits 0.
//
//   echo_server [--host ADDRESS] [--port N] [--backend auto|io_uring|epoll] [--once]

#include <hop/hop.hpp>

#include <pthread.h>
#include <signal.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>

namespace {

struct options {
    std::string host = "127.0.0.1";
    std::uint16_t port = 7777;
    hop::backend backend = hop::backend::automatic;
    bool once = false;  // serve one connection, then exit
};

/// Echoes until the peer closes. Errors end this connection only.
hop::task<> echo(hop::tcp_stream conn) {
    std::string peer = "fd " + std::to_string(conn.native_handle());
    std::array<char, 16 * 1024> buf;  // in the coroutine frame: no allocation per read
    std::size_t total = 0;
    try {
        peer = conn.remote_endpoint().to_string();  // throws ENOTCONN if the peer is already gone
        std::fprintf(stderr, "%s connected\n", peer.c_str());
        for (;;) {
            std::size_t n = co_await conn.read_some(buf);
            if (n == 0) break;  // the peer closed its side
            co_await conn.write_all(std::string_view(buf.data(), n));
            total += n;
        }
        std::fprintf(stderr, "%s disconnected (%zu bytes echoed)\n", peer.c_str(), total);
    } catch (const hop::cancelled_error&) {
        std::fprintf(stderr, "%s closed: server shutting down\n", peer.c_str());
    } catch (const std::exception& e) {
        // ECONNRESET, EPIPE...: this peer is gone, the server carries on.
        std::fprintf(stderr, "%s dropped: %s\n", peer.c_str(), e.what());
    }
}

/// Accepts until cancelled. The task_group ties the connections to the
/// server: cancelling serve() cancels them too, and serve() ends only once
/// they all have.
hop::task<> serve(hop::tcp_listener listener, bool once) {
    if (once) {
        co_await echo(co_await hop::accept_with_backoff(listener));
        co_return;
    }
    hop::task_group connections;
    try {
        for (;;) {
            hop::tcp_stream conn = co_await hop::accept_with_backoff(listener);
            connections.spawn(echo(std::move(conn)));
        }
    } catch (const hop::cancelled_error&) {
    }
    try {
        co_await connections.wait();  // cancels the connections (our stop was requested) and waits for them
    } catch (const hop::cancelled_error&) {
    }
}

constexpr const char* usage =
    "usage: echo_server [--host ADDRESS] [--port N] [--backend auto|io_uring|epoll] [--once]\n"
    "  --host ADDRESS   IPv4 or IPv6 address to listen on (default 127.0.0.1)\n"
    "  --port N         port (default 7777; 0 picks a free one)\n"
    "  --backend NAME   io_loop backend (default auto)\n"
    "  --once           serve one connection, then exit\n";

options parse_options(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        if (a == "--once") {
            o.once = true;
            continue;
        }
        if (a != "--host" && a != "--port" && a != "--backend") {
            throw std::invalid_argument("unknown argument '" + a + "'");
        }
        if (++i == argc) throw std::invalid_argument(a + ": a value is missing");
        const std::string v = argv[i];
        if (a == "--host") {
            o.host = v;
        } else if (a == "--port") {
            char* end = nullptr;
            errno = 0;
            long n = std::strtol(v.c_str(), &end, 10);
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
    return o;
}

/// "127.0.0.1" or "::1" (brackets optional) with a port.
hop::endpoint make_endpoint(const std::string& host, std::uint16_t port) {
    std::string text = host.find(':') == std::string::npos || host.front() == '[' ? host : "[" + host + "]";
    return hop::endpoint::parse(text + ":" + std::to_string(port));
}

/// Binds on the loop's thread (a listener belongs to the loop it was made
/// on) and runs the server.
hop::task<> main_task(options o) {
    hop::tcp_listener listener = hop::tcp_listener::bind(make_endpoint(o.host, o.port));
    std::printf("echo_server: listening on %s (%.*s backend)%s\n", listener.local_endpoint().to_string().c_str(),
                static_cast<int>(hop::current_loop()->backend_name().size()),
                hop::current_loop()->backend_name().data(), o.once ? ", one connection" : ", Ctrl-C to stop");
    std::fflush(stdout);  // scripts read the port from this line
    co_await serve(std::move(listener), o.once);
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
        make_endpoint(o.host, o.port);  // a bad --host fails here, with exit code 2
    } catch (const std::exception& e) {
        std::fprintf(stderr, "echo_server: %s\n%s", e.what(), usage);
        return 2;
    }

    // Signals: a handler may not call loop.stop() or future::cancel() (they
    // are not async-signal-safe). Instead SIGINT and SIGTERM are blocked in
    // every thread (threads started later inherit the mask) and one thread
    // takes them with sigwait(), where any call is allowed.
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
            std::fprintf(stderr, "\necho_server: %s, shutting down\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
            server.cancel();  // thread-safe: requests stop on the server task
        });

        loop.run();
        exiting.store(true);
        pthread_kill(signal_waiter.native_handle(), SIGTERM);  // wakes sigwait if no signal came
        signal_waiter.join();

        if (server.cancelled()) return 0;  // Ctrl-C before the server task started
        server.get();                      // rethrows a failure (EADDRINUSE...)
        return 0;
    } catch (const hop::cancelled_error&) {
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "echo_server: %s\n", e.what());
        return 1;
    }
}
