// The flagship: a client that sends --requests requests over TCP to a server
// it runs itself on 127.0.0.1, at most --concurrency in flight, and checks
// every answer on a CPU pool. One io_loop on the main thread carries both the
// server and the client; the hashing runs on a hop::cpu_pool.
//
// Each request shows the three moves hop is about:
//   IO on the loop        write the request, read the response   (tcp_stream)
//   CPU on the pool       co_await pool.schedule(), hash the body (cpu_pool)
//   back on the loop      the affinity rule: the caller resumes where it was
// and hop::map keeps at most --concurrency of them in flight.
//
// Protocol: every message is a 4-byte big-endian length and that many bytes.
// The client sends "GET /item/<i>"; the server answers with --size bytes that
// depend only on i, so the client can check them.
//
//   requests [--requests N] [--concurrency C] [--size BYTES] [--backend auto|io_uring|epoll]

#include <hop/hop.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <optional>
#include <ranges>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;

struct options {
    std::uint64_t requests = 10'000;
    std::size_t concurrency = 100;
    std::size_t size = 4096;  // response body bytes
    hop::backend backend = hop::backend::automatic;
};

// ---- the data: deterministic bodies and their checksum ------------------------

/// The body the server sends for item `i`: pseudo-random bytes (xorshift64*)
/// seeded by `i`, the same on every run.
void fill_body(std::uint64_t i, char* out, std::size_t size) {
    std::uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull;
    for (std::size_t k = 0; k < size; ++k) {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out[k] = static_cast<char>((x * 0x2545F4914F6CDD1Dull) >> 56);
    }
}

/// FNV-1a, 64 bits: the CPU work each response gets.
std::uint64_t fnv1a(std::string_view bytes) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (char c : bytes) {
        h ^= static_cast<unsigned char>(c);
        h *= 0x100000001b3ull;
    }
    return h;
}

// ---- the wire: length-prefixed messages -------------------------------------

constexpr std::size_t header_size = 4;

void put_length(char* out, std::size_t n) {
    for (int k = 0; k < 4; ++k) out[k] = static_cast<char>((n >> (24 - 8 * k)) & 0xff);
}

/// Reads one message of at most `limit` bytes; nullopt if the peer closed the
/// connection cleanly (before a new message began). A reference parameter is
/// safe here: the caller awaits this at once, so `s` outlives the call.
hop::task<std::optional<std::string>> read_message(hop::tcp_stream& s, std::size_t limit) {
    std::array<char, header_size> header;
    try {
        co_await s.read_exact(header);
    } catch (const hop::end_of_stream_error& e) {
        if (e.bytes_read() == 0) co_return std::nullopt;  // a clean close between messages
        throw;
    }
    std::size_t n = 0;
    for (char c : header) n = n << 8 | static_cast<unsigned char>(c);
    if (n > limit) {
        throw std::runtime_error("message of " + std::to_string(n) + " bytes, limit " + std::to_string(limit));
    }
    std::string body(n, '\0');
    co_await s.read_exact(body);
    co_return body;
}

// ---- the server ---------------------------------------------------------------

/// One connection: answers requests until the client closes it.
hop::task<> serve_connection(hop::tcp_stream conn, std::size_t body_size) {
    try {
        conn.set_nodelay(true);  // request/response: no Nagle delay on small writes
        while (std::optional<std::string> request = co_await read_message(conn, 1024)) {
            constexpr std::string_view prefix = "GET /item/";
            if (!request->starts_with(prefix)) throw std::runtime_error("bad request '" + *request + "'");
            std::uint64_t i = std::stoull(request->substr(prefix.size()));
            // Header and body in one buffer: one write, one TCP segment train.
            std::string reply(header_size + body_size, '\0');
            put_length(reply.data(), body_size);
            fill_body(i, reply.data() + header_size, body_size);
            co_await conn.write_all(reply);
        }
    } catch (const hop::cancelled_error&) {
        throw;  // shutting down: not an error
    } catch (const std::exception& e) {
        // One bad connection must not take the server down: log it and drop it.
        std::fprintf(stderr, "server: connection dropped: %s\n", e.what());
    }
}

/// Accepts connections until cancelled; each one gets its own coroutine. The
/// task_group makes it structured: when the accept loop is cancelled, the
/// connections are cancelled too and awaited before serve() ends.
hop::task<> serve(hop::tcp_listener listener, std::size_t body_size) {
    hop::task_group connections;
    try {
        for (;;) {
            hop::tcp_stream conn = co_await hop::accept_with_backoff(listener);
            connections.spawn(serve_connection(std::move(conn), body_size));
        }
    } catch (const hop::cancelled_error&) {
    }
    co_await connections.wait();  // our stop was requested: cancels them, waits, throws cancelled_error
}

// ---- the client -----------------------------------------------------------------

/// What one request produced.
struct outcome {
    bool ok = false;
    clock_type::duration latency{};  // start -> response read and checked
    std::uint64_t checksum = 0;
};

/// A progress line on stderr: redrawn in place (10 times a second) on a
/// terminal, a plain line once a second otherwise, so CI logs stay readable.
class progress {
public:
    explicit progress(std::uint64_t total) : m_total(total), m_tty(::isatty(2) != 0) {}
    void tick(bool ok) {
        ++m_done;
        m_errors += ok ? 0 : 1;
        auto now = clock_type::now();
        if (now - m_last >= (m_tty ? 100ms : 1s)) {
            m_last = now;
            draw();
        }
    }
    void finish() {
        if (m_tty) {
            draw();
            std::fputc('\n', stderr);
        }
    }

private:
    void draw() {
        double s = std::chrono::duration<double>(clock_type::now() - m_start).count();
        // On a terminal: back to the line start, and clear it (\033[K) after the text.
        std::fprintf(stderr, "%s  %llu/%llu requests  %llu errors  %.0f requests/s%s", m_tty ? "\r" : "",
                     static_cast<unsigned long long>(m_done), static_cast<unsigned long long>(m_total),
                     static_cast<unsigned long long>(m_errors), s > 0 ? static_cast<double>(m_done) / s : 0.0,
                     m_tty ? "\033[K" : "\n");
        std::fflush(stderr);
    }
    std::uint64_t m_total, m_done = 0, m_errors = 0;
    bool m_tty;
    clock_type::time_point m_start = clock_type::now(), m_last = m_start;
};

/// What the requests share. It lives in run_requests' frame, which outlives
/// every request.
struct client {
    hop::endpoint server;
    std::size_t body_size;
    hop::cpu_pool& pool;
    /// Idle connections, one per worker: a request takes one and gives it
    /// back, so --concurrency connections carry every request (no connect per
    /// request, no TIME_WAIT pile-up). They start unconnected and connect on
    /// first use.
    hop::channel<hop::tcp_stream> idle;
    progress bar;
    std::uint64_t errors_reported = 0;
};

/// CPU work, on the pool: checks the body against the one expected for `i`.
hop::task<std::uint64_t> verify(hop::cpu_pool& pool, std::uint64_t i, std::string body) {
    co_await pool.schedule();  // from here on: a pool thread, the loop is free for IO
    std::string expected(body.size(), '\0');
    fill_body(i, expected.data(), expected.size());
    const std::uint64_t h = fnv1a(body);
    if (h != fnv1a(expected)) throw std::runtime_error("item " + std::to_string(i) + ": checksum mismatch");
    co_return h;
}  // the caller resumes on ITS executor: the loop

/// One request, from the loop: IO here, hashing on the pool, back here.
hop::task<outcome> fetch_item(client& c, std::uint64_t i) {
    const auto t0 = clock_type::now();
    outcome out;
    hop::tcp_stream conn = std::move(*co_await c.idle.recv());  // never closed: always a value
    std::optional<std::string> body;
    std::string error;
    try {
        if (!conn.is_open()) {
            conn = co_await hop::tcp_stream::connect(c.server);
            conn.set_nodelay(true);
        }
        const std::string path = "GET /item/" + std::to_string(i);
        std::string request(header_size, '\0');
        put_length(request.data(), path.size());
        request += path;
        co_await conn.write_all(request);
        body = co_await read_message(conn, c.body_size);
        if (!body) throw std::runtime_error("the server closed the connection");
    } catch (const hop::cancelled_error&) {
        throw;
    } catch (const std::exception& e) {
        error = e.what();
        body.reset();
        conn.close();  // a broken connection is replaced on its next use
    }
    // Give the connection back before the CPU work: the next request can use
    // it while this one is being checked.
    co_await c.idle.send(std::move(conn));

    if (body) {
        try {
            out.checksum = co_await verify(c.pool, i, std::move(*body));
            out.latency = clock_type::now() - t0;
            out.ok = true;
        } catch (const hop::cancelled_error&) {
            throw;
        } catch (const std::exception& e) {
            error = e.what();
        }
    }
    // Back on the loop thread (affinity rule), so the counters need no lock.
    if (!out.ok && c.errors_reported++ < 5) {
        std::fprintf(stderr, "request %llu failed: %s\n", static_cast<unsigned long long>(i), error.c_str());
    }
    c.bar.tick(out.ok);
    co_return out;
}

struct report {
    std::vector<outcome> outcomes;
    double seconds = 0;
};

/// Starts the server, runs the requests through hop::map, stops the server.
hop::task<report> run_requests(options o, hop::cpu_pool& pool) {
    // Port 0: the kernel picks a free port; the listener tells us which.
    hop::tcp_listener listener = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0));
    const hop::endpoint server_at = listener.local_endpoint();
    hop::task_group server;
    server.spawn(serve(std::move(listener), o.size));

    client c{server_at, o.size, pool, hop::channel<hop::tcp_stream>{o.concurrency}, progress{o.requests}};
    for (std::size_t k = 0; k < o.concurrency; ++k) c.idle.try_send(hop::tcp_stream{});

    // A plain lambda that returns a task (not a coroutine lambda): nothing
    // it captures has to outlive it. Named, not a temporary in the co_await.
    auto one = [&c](std::uint64_t i) { return fetch_item(c, i); };
    const auto t0 = clock_type::now();
    report r;
    r.outcomes = co_await hop::map(one, std::views::iota(std::uint64_t{0}, o.requests),
                                   {.max_concurrency = o.concurrency});
    r.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    c.bar.finish();

    // Close the client ends of the connections, then stop the server: the
    // group cancels its accept loop and waits until it has ended.
    while (c.idle.try_recv()) {
    }
    server.cancel();
    co_await server.wait();
    co_return r;
}

// ---- the summary ------------------------------------------------------------------

double ms(clock_type::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

int print_report(const report& r, const options& o, std::string_view backend, std::size_t pool_threads) {
    std::vector<clock_type::duration> latencies;
    std::uint64_t errors = 0, combined = 0;
    for (const outcome& x : r.outcomes) {
        if (!x.ok) {
            ++errors;
            continue;
        }
        latencies.push_back(x.latency);
        combined ^= x.checksum;
    }
    std::sort(latencies.begin(), latencies.end());
    auto pct = [&](double p) {
        if (latencies.empty()) return 0.0;
        return ms(latencies[static_cast<std::size_t>(p * static_cast<double>(latencies.size() - 1))]);
    };
    std::printf("requests:    %llu (%zu concurrent, %zu-byte responses)\n",
                static_cast<unsigned long long>(r.outcomes.size()), o.concurrency, o.size);
    std::printf("errors:      %llu\n", static_cast<unsigned long long>(errors));
    std::printf("wall time:   %.3f s\n", r.seconds);
    std::printf("throughput:  %.0f requests/s\n", static_cast<double>(r.outcomes.size()) / r.seconds);
    std::printf("latency:     p50 %.3f ms   p99 %.3f ms   max %.3f ms   (request start to checked response)\n",
                pct(0.50), pct(0.99), pct(1.0));
    std::printf("backend:     %.*s, cpu_pool of %zu threads\n", static_cast<int>(backend.size()), backend.data(),
                pool_threads);
    std::printf("checksums:   %zu/%zu verified (fnv-1a, combined %016llx)\n", latencies.size(), r.outcomes.size(),
                static_cast<unsigned long long>(combined));
    return errors == 0 ? 0 : 1;
}

// ---- options ----------------------------------------------------------------------

constexpr const char* usage =
    "usage: requests [--requests N] [--concurrency C] [--size BYTES] [--backend auto|io_uring|epoll]\n"
    "  --requests N      requests to send (default 10000)\n"
    "  --concurrency C   requests in flight and connections (default 100)\n"
    "  --size BYTES      response body size (default 4096)\n"
    "  --backend NAME    io_loop backend (default auto: io_uring, else epoll; HOP_BACKEND overrides auto)\n";

std::uint64_t parse_number(const std::string& flag, const char* text, std::uint64_t min, std::uint64_t max) {
    std::string v = text ? text : "";
    char* end = nullptr;
    errno = 0;
    unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || v[0] == '-' || *end != '\0' || errno != 0 || n < min || n > max) {
        throw std::invalid_argument(flag + " " + (text ? "'" + v + "'" : "(missing)") +
                                    ": expected a whole number from " + std::to_string(min) + " to " +
                                    std::to_string(max));
    }
    return n;
}

options parse_options(int argc, char** argv) {
    options o;
    for (int i = 1; i < argc; i += 2) {  // every option takes one value
        const std::string a = argv[i];
        const char* value = i + 1 < argc ? argv[i + 1] : nullptr;
        if (a == "--requests") {
            o.requests = parse_number(a, value, 1, 1'000'000'000);
        } else if (a == "--concurrency") {
            o.concurrency = parse_number(a, value, 1, 5'000);
        } else if (a == "--size") {
            o.size = parse_number(a, value, 0, 64 << 20);
        } else if (a == "--backend") {
            const std::string b = value ? value : "";
            if (b == "auto") {
                o.backend = hop::backend::automatic;
            } else if (b == "io_uring") {
                o.backend = hop::backend::io_uring;
            } else if (b == "epoll") {
                o.backend = hop::backend::epoll;
            } else {
                throw std::invalid_argument("--backend " + (value ? "'" + b + "'" : std::string("(missing)")) +
                                            ": expected auto, io_uring or epoll");
            }
        } else {
            throw std::invalid_argument("unknown argument '" + a + "'");
        }
    }
    return o;
}

/// Each connection costs two descriptors here (the client's end and the
/// server's): make sure the process may open them all.
void ensure_fd_limit(std::size_t concurrency) {
    const rlim_t need = 2 * concurrency + 64;
    rlimit lim{};
    if (::getrlimit(RLIMIT_NOFILE, &lim) != 0 || lim.rlim_cur >= need) return;
    if (lim.rlim_max != RLIM_INFINITY && lim.rlim_max < need) {
        throw std::invalid_argument("--concurrency " + std::to_string(concurrency) + " needs " +
                                    std::to_string(need) + " file descriptors, the limit is " +
                                    std::to_string(lim.rlim_max) + " (ulimit -n)");
    }
    lim.rlim_cur = need;
    ::setrlimit(RLIMIT_NOFILE, &lim);
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
        ensure_fd_limit(o.concurrency);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "requests: %s\n%s", e.what(), usage);
        return 2;
    }

    try {
        hop::cpu_pool pool;  // one thread per core; declared first, so it outlives the loop
        hop::io_loop loop{{.backend = o.backend}};
        std::printf("requests: %llu requests, %zu at a time, against a server on 127.0.0.1 (%.*s backend)\n",
                    static_cast<unsigned long long>(o.requests), o.concurrency,
                    static_cast<int>(loop.backend_name().size()), loop.backend_name().data());
        std::fflush(stdout);  // before the progress line on stderr

        // Run the loop on this thread until the work is done.
        hop::future<report> done = loop.spawn(run_requests(o, pool));
        done.on_done([&loop](const hop::future<report>&) { loop.stop(); });
        loop.run();
        return print_report(done.get(), o, loop.backend_name(), pool.size());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "requests: %s\n", e.what());
        return 1;
    }
}
