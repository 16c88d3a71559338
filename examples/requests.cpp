// The flagship: thousands of HTTP requests with hop's pooled client, at most
// --concurrency in flight (hop::map), every body checked on a CPU pool.
//
// By default it starts a hop HTTP server on 127.0.0.1 that answers
// GET /item/<i> with --size bytes depending only on i, and fetches
// --requests items from it; one io_loop on the main thread carries both the
// server and the client. --url URL (repeatable) or --urls FILE points it at
// any server instead (each URL once, or cycled to --requests); https:// URLs
// are verified against the system CAs, or against --cacert FILE.
//
// Each request shows the three moves hop is about:
//   IO on the loop        client.get(url)                        (hop::http::client)
//   CPU on the pool       co_await pool.schedule(), hash the body (hop::cpu_pool)
//   back on the loop      the affinity rule: the caller resumes where it was
//
//   requests [--requests N] [--concurrency C] [--size BYTES] [--backend auto|io_uring|epoll]
//            [--url URL]... [--urls FILE] [--cacert FILE]

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <fstream>
#include <map>
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
    std::optional<std::uint64_t> requests;  // default: 10,000 (own server) or each URL once
    std::size_t concurrency = 100;
    std::size_t size = 4096;  // the own server's body bytes
    hop::backend backend = hop::backend::automatic;
    std::vector<std::string> urls;  // empty: the own server
    std::string cacert;             // https: trust this CA too
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

/// The item number in "/item/<i>", if the target is one.
std::optional<std::uint64_t> item_of(std::string_view target) {
    constexpr std::string_view prefix = "/item/";
    if (!target.starts_with(prefix)) return std::nullopt;
    target.remove_prefix(prefix.size());
    std::uint64_t i = 0;
    auto [end, ec] = std::from_chars(target.data(), target.data() + target.size(), i);
    if (ec != std::errc{} || end != target.data() + target.size()) return std::nullopt;
    return i;
}

// ---- the server: hop::http::server ----------------------------------------------

hop::http::server make_server(std::size_t body_size) {
    return hop::http::server::bind(
        hop::endpoint::loopback_v4(0), [body_size](hop::http::request& req) -> hop::task<hop::http::response> {
            hop::http::response r;
            auto i = item_of(req.url);
            if (req.method != "GET" || !i) {
                r.status = 404;
                r.body = "no such item\n";
                co_return r;
            }
            r.body.resize(body_size);
            fill_body(*i, r.body.data(), r.body.size());
            r.headers.add("Content-Type", "application/octet-stream");
            co_return r;
        });
}

// ---- the client ---------------------------------------------------------------------

struct outcome {
    bool ok = false;
    int status = 0;
    clock_type::duration latency{};  // start -> response read and checked
    std::uint64_t checksum = 0;
    std::size_t bytes = 0;
};

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

struct fetcher {
    hop::http::client& http;
    hop::cpu_pool& pool;
    bool own_server;  // bodies can be checked against fill_body
    progress bar;
    std::uint64_t errors_reported = 0;
};

/// On the pool: the body's checksum, and for the own server a check that
/// it is the body of item `i`.
hop::task<std::uint64_t> verify(hop::cpu_pool& pool, std::optional<std::uint64_t> item, std::string body) {
    co_await pool.schedule();  // from here on: a pool thread, the loop is free for IO
    const std::uint64_t h = fnv1a(body);
    if (item) {
        std::string expected(body.size(), '\0');
        fill_body(*item, expected.data(), expected.size());
        if (h != fnv1a(expected)) throw std::runtime_error("item " + std::to_string(*item) + ": checksum mismatch");
    }
    co_return h;
}  // the caller resumes on ITS executor: the loop

hop::task<outcome> fetch(fetcher& f, std::string url) {
    const auto t0 = clock_type::now();
    outcome out;
    std::string error;
    try {
        hop::http::response r = co_await f.http.get(url);
        out.status = r.status;
        out.bytes = r.body.size();
        std::optional<std::uint64_t> item;
        if (f.own_server) item = item_of(hop::http::url::parse(url).target);
        out.checksum = co_await verify(f.pool, item, std::move(r.body));
        out.latency = clock_type::now() - t0;
        out.ok = out.status < 400;
        if (!out.ok) error = "status " + std::to_string(out.status);
    } catch (const hop::cancelled_error&) {
        throw;
    } catch (const std::exception& e) {
        error = e.what();
    }
    if (!out.ok && f.errors_reported++ < 5) std::fprintf(stderr, "%s failed: %s\n", url.c_str(), error.c_str());
    f.bar.tick(out.ok);
    co_return out;
}

struct report {
    std::vector<outcome> outcomes;
    double seconds = 0;
    hop::http::client_stats pool;
};

hop::task<report> run_requests(const options& o, std::vector<std::string> urls, hop::cpu_pool& pool) {
    hop::http::server server;
    hop::task_group serving;
    const bool own = urls.empty();
    if (own) {
        server = make_server(o.size);
        const std::string base = "http://" + server.local_endpoint().to_string() + "/item/";
        for (std::uint64_t i = 0; i < o.requests.value_or(10'000); ++i) urls.push_back(base + std::to_string(i));
        serving.spawn(server.serve());
    }
    hop::http::client_options co{.max_connections = o.concurrency};
    if (!o.cacert.empty()) {
        co.tls = hop::tls::context::client();  // system CAs and peer verification...
        co.tls->load_ca_file(o.cacert);        // ...plus this CA
    }
    hop::http::client http{co};
    fetcher f{http, pool, own, progress{urls.size()}};

    auto one = [&f](std::string url) { return fetch(f, std::move(url)); };
    const auto t0 = clock_type::now();
    report r;
    r.outcomes = co_await hop::map(one, urls, {.max_concurrency = o.concurrency});
    r.seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
    r.pool = http.stats();
    f.bar.finish();
    server.shutdown();  // serve() returns after a graceful shutdown
    co_await serving.wait();
    co_return r;
}

// ---- the report -------------------------------------------------------------------

double ms(clock_type::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

int print_report(const report& r, bool own, std::size_t concurrency, std::string_view backend,
                 std::size_t pool_threads) {
    std::vector<clock_type::duration> latencies;
    std::uint64_t errors = 0, combined = 0, bytes = 0;
    std::map<int, std::uint64_t> statuses;
    for (const outcome& x : r.outcomes) {
        if (x.status != 0) ++statuses[x.status];
        if (!x.ok) {
            ++errors;
            continue;
        }
        latencies.push_back(x.latency);
        combined ^= x.checksum;
        bytes += x.bytes;
    }
    std::sort(latencies.begin(), latencies.end());
    auto pct = [&](double p) {
        if (latencies.empty()) return 0.0;
        return ms(latencies[static_cast<std::size_t>(p * static_cast<double>(latencies.size() - 1))]);
    };
    std::printf("requests:    %zu (%zu concurrent, %llu body bytes)\n", r.outcomes.size(), concurrency,
                static_cast<unsigned long long>(bytes));
    std::printf("errors:      %llu\n", static_cast<unsigned long long>(errors));
    std::printf("statuses:   ");
    for (auto [status, n] : statuses) std::printf(" %d x %llu", status, static_cast<unsigned long long>(n));
    std::printf("\n");
    std::printf("wall time:   %.3f s\n", r.seconds);
    std::printf("throughput:  %.0f requests/s\n", static_cast<double>(r.outcomes.size()) / r.seconds);
    std::printf("latency:     p50 %.3f ms   p99 %.3f ms   max %.3f ms   (request start to checked response)\n",
                pct(0.50), pct(0.99), pct(1.0));
    std::printf("connections: %llu made, %llu requests on a reused one\n",
                static_cast<unsigned long long>(r.pool.connects), static_cast<unsigned long long>(r.pool.reuses));
    std::printf("backend:     %.*s, cpu_pool of %zu threads\n", static_cast<int>(backend.size()), backend.data(),
                pool_threads);
    std::printf("checksums:   %zu/%zu %s (fnv-1a, combined %016llx)\n", latencies.size(), r.outcomes.size(),
                own ? "verified" : "computed", static_cast<unsigned long long>(combined));
    return errors == 0 ? 0 : 1;
}

// ---- options -----------------------------------------------------------------------

constexpr const char* usage =
    "usage: requests [--requests N] [--concurrency C] [--size BYTES] [--backend auto|io_uring|epoll]\n"
    "                [--url URL]... [--urls FILE] [--cacert FILE]\n"
    "  --requests N      requests to send (default 10000; with URLs: each URL once, cycled to N)\n"
    "  --concurrency C   requests in flight and connections (default 100)\n"
    "  --size BYTES      the local server's body size (default 4096)\n"
    "  --backend NAME    io_loop backend (default auto: io_uring, else epoll; HOP_BACKEND overrides auto)\n"
    "  --url URL         fetch URL (http:// or https://) instead of the local server; repeatable\n"
    "  --urls FILE       fetch the URLs in FILE, one per line\n"
    "  --cacert FILE     for https: trust the CA certificates in FILE (PEM) too\n";

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

void add_url(options& o, const std::string& u) {
    (void)hop::http::url::parse(u);  // throws std::invalid_argument naming it
    o.urls.push_back(u);
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
        } else if (a == "--url") {
            if (!value) throw std::invalid_argument("--url: a URL is missing");
            add_url(o, value);
        } else if (a == "--urls") {
            if (!value) throw std::invalid_argument("--urls: a file name is missing");
            std::ifstream in(value);
            if (!in) throw std::invalid_argument(std::string("--urls '") + value + "': cannot open it");
            std::size_t before = o.urls.size();
            for (std::string line; std::getline(in, line);) {
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (!line.empty() && line.front() != '#') add_url(o, line);
            }
            if (o.urls.size() == before) throw std::invalid_argument(std::string("--urls '") + value + "' has no URL");
        } else if (a == "--cacert") {
            if (!value) throw std::invalid_argument("--cacert: a file name is missing");
            if (!std::ifstream(value)) throw std::invalid_argument(std::string("--cacert '") + value + "': cannot open it");
            o.cacert = value;
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

/// The URLs to fetch with the user's list: each once, or cycled to --requests.
std::vector<std::string> url_list(const options& o) {
    if (o.urls.empty() || !o.requests) return o.urls;
    std::vector<std::string> out;
    out.reserve(*o.requests);
    for (std::uint64_t i = 0; i < *o.requests; ++i) out.push_back(o.urls[i % o.urls.size()]);
    return out;
}

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
        const std::vector<std::string> urls = url_list(o);
        const bool own = urls.empty();
        std::printf("requests: %llu HTTP requests, %zu at a time, against %s (%.*s backend)\n",
                    static_cast<unsigned long long>(own ? o.requests.value_or(10'000) : urls.size()), o.concurrency,
                    own ? "a hop HTTP server on 127.0.0.1" : "the given URLs",
                    static_cast<int>(loop.backend_name().size()), loop.backend_name().data());
        std::fflush(stdout);  // before the progress line on stderr

        // Run the loop on this thread until the work is done.
        hop::future<report> done = loop.spawn(run_requests(o, urls, pool));
        done.on_done([&loop](const hop::future<report>&) { loop.stop(); });
        loop.run();
        return print_report(done.get(), own, o.concurrency, loop.backend_name(), pool.size());
    } catch (const std::exception& e) {
        std::fprintf(stderr, "requests: %s\n", e.what());
        return 1;
    }
}
