// hop::http::server against nginx, same work in the same run, a 4 KiB body:
//
// 1. one loop against one nginx worker: `wrk -t1 -c100 -d5s`, requests/s
//    and p99 latency;
// 1b. memory: hop on io_uring, hop on epoll and one nginx worker, each
//    fresh, after a 1 s wrk run: what an idle keep-alive connection costs
//    (VmRSS growth over the second half of --connections, default 9000,
//    connections that made one request each and stay open, per
//    connection), and VmRSS once they have all closed and the server has
//    idled for --settle seconds (default 8: hop's loops trim after 5 s idle,
//    io_loop_options::idle_trim; --idle-trim MS sets it, 0 turns it off);
// 2. every core: hop on an io_pool of --loops loops (default 2), in each
//    accept mode (least_loaded, reuse_port), against nginx with as many
//    workers (one shared listener, as nginx does by default, and with
//    `listen ... reuseport`): `wrk -t<loops> -c100`.
// 3. what hop::metrics costs: case 1's hop server twice, one counting and
//    one with hop::metrics::set_enabled(false), loaded in turn (wrk -t1
//    -c100, --metrics-rounds runs each, default 5), median requests/s of
//    each and their ratio. --only-metrics runs this case alone.
//
//   http_server_bench [--quick] [--backend auto|io_uring|epoll] [--connections N] [--duration S] [--loops N]
//                     [--settle S] [--idle-trim MS] [--only-metrics] [--metrics-rounds N]
//
// Each server runs in its own process: hop in a forked child of this
// program, nginx as itself (a config in a temporary directory, `daemon
// off;`, a free port). The clients (wrk, the idle connections) are other
// processes or this one, so their memory is not counted — but they run on
// the same machine and take CPU from the servers: with as many server
// threads as cores, client and servers share the cores (the table says how
// many there are, and the load average before the run).

#include "../tests/support/nginx.hpp"

#include <hop/http.hpp>
#include <hop/metrics.hpp>
#include <hop/io_loop.hpp>
#include <hop/io_pool.hpp>

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>


namespace {

constexpr std::size_t body_size = 4096;

struct bench_options {
    bool quick = false;
    hop::backend backend = hop::backend::automatic;
    std::size_t idle_connections = 9000;
    int duration_s = 5;
    std::size_t loops = 2;  // the pool case
    int settle_s = 8;       // idle after the connections close, before VmRSS is read
    long idle_trim_ms = -1;  // hop's io_loop_options::idle_trim; -1: its default
    bool only_metrics = false;
    int metrics_rounds = 5;
};

bench_options parse(int argc, char** argv) {
    bench_options o;
    for (int i = 1; i < argc; ++i) {
        const std::string a = argv[i];
        auto value = [&]() -> std::string {
            if (++i == argc) throw std::invalid_argument(a + ": a value is missing");
            return argv[i];
        };
        if (a == "--quick") {
            o.quick = true;
            o.duration_s = 2;
            o.idle_connections = 1000;
            o.settle_s = 6;
        } else if (a == "--backend") {
            const std::string v = value();
            if (v == "io_uring") {
                o.backend = hop::backend::io_uring;
            } else if (v == "epoll") {
                o.backend = hop::backend::epoll;
            } else if (v != "auto") {
                throw std::invalid_argument("--backend '" + v + "': expected auto, io_uring or epoll");
            }
        } else if (a == "--connections") {
            o.idle_connections = std::stoul(value());
            if (o.idle_connections < 2) throw std::invalid_argument("--connections: expected 2 or more");
        } else if (a == "--settle") {
            o.settle_s = std::stoi(value());
        } else if (a == "--idle-trim") {
            o.idle_trim_ms = std::stol(value());
            if (o.idle_trim_ms < 0) throw std::invalid_argument("--idle-trim: expected 0 or more milliseconds");
        } else if (a == "--duration") {
            o.duration_s = std::stoi(value());
        } else if (a == "--only-metrics") {
            o.only_metrics = true;
        } else if (a == "--metrics-rounds") {
            o.metrics_rounds = std::stoi(value());
            if (o.metrics_rounds < 1 || o.metrics_rounds > 100) throw std::invalid_argument("--metrics-rounds: expected 1 to 100");
        } else if (a == "--loops") {
            o.loops = std::stoul(value());
            if (o.loops < 1 || o.loops > 256) throw std::invalid_argument("--loops: expected 1 to 256");
        } else {
            throw std::invalid_argument("unknown argument '" + a + "'");
        }
    }
    return o;
}

/// VmRSS of `pid`, in KiB.
long rss_kib(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/status");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
    }
    return -1;
}

// ---- the hop server, in a child process ------------------------------------

/// Forks a child serving the 4 KiB body on 127.0.0.1:0; returns its pid and
/// port. `loops` 0: one io_loop (serve()); else an io_pool of that many
/// loops (serve(pool)) spreading connections by `mode`. SIGTERM stops it
/// (gracefully).
pid_t start_hop(hop::backend backend, std::size_t loops, hop::accept_mode mode, std::uint16_t& port,
                long idle_trim_ms = -1, bool metrics = true) {
    int pipe_fd[2];
    if (::pipe(pipe_fd) != 0) throw std::runtime_error("pipe failed");
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid > 0) {
        ::close(pipe_fd[1]);
        if (::read(pipe_fd[0], &port, sizeof port) != sizeof port) throw std::runtime_error("the hop server did not start");
        ::close(pipe_fd[0]);
        return pid;
    }
    ::close(pipe_fd[0]);
    int code = 0;
    try {
        sigset_t sigs;
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
        hop::metrics::set_enabled(metrics);  // before any loop or server exists
        const std::string body(body_size, 'x');
        auto handler = [&body](hop::http::request&) -> hop::task<hop::http::response> {
            hop::http::response r;
            r.headers.add("Content-Type", "text/plain");
            r.body = body;
            co_return r;
        };
        auto srv = hop::http::server::bind(
            hop::endpoint::loopback_v4(0), handler,
            {.max_connections = 100000, .shutdown_grace = std::chrono::seconds(1), .accept = mode});
        const std::uint16_t p = srv.local_endpoint().port();
        if (::write(pipe_fd[1], &p, sizeof p) != sizeof p) std::_Exit(3);
        ::close(pipe_fd[1]);
        hop::io_loop_options lo{.backend = backend};
        if (idle_trim_ms >= 0) lo.idle_trim = std::chrono::milliseconds(idle_trim_ms);
        if (loops == 0) {
            hop::io_loop loop{lo};
            auto f = loop.spawn(srv.serve());
            f.on_done([&loop](const hop::future<void>&) noexcept { loop.stop(); });
            std::thread stopper([&sigs, f]() mutable {
                int sig = 0;
                sigwait(&sigs, &sig);
                f.cancel();
            });
            loop.run();
            stopper.join();
        } else {
            hop::io_pool pool{hop::io_pool_options{.loops = loops, .loop = lo}};
            auto f = pool.spawn_on(0, srv.serve(pool));
            int sig = 0;
            sigwait(&sigs, &sig);
            f.cancel();
            f.wait();
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hop server: %s\n", e.what());
        code = 1;
    }
    std::_Exit(code);
}

// ---- nginx -------------------------------------------------------------------

struct nginx_instance {
    hop_test::temp_dir dir{"hop-bench-nginx-"};
    std::optional<hop_test::nginx_process> process;
    std::uint16_t port = 0;
    pid_t pid = -1;  // the master's
};

/// nginx with `workers` worker processes under a master; `reuseport`: each
/// worker gets its own listener (`listen ... reuseport`) instead of sharing
/// one. Stopped when dropped.
std::unique_ptr<nginx_instance> start_nginx(std::size_t workers, bool reuseport) {
    auto n = std::make_unique<nginx_instance>();
    const std::filesystem::path& dir = n->dir.path();
    std::filesystem::permissions(dir, std::filesystem::perms(0755));  // nginx's worker runs as another user
    std::ofstream(dir / "index.html") << std::string(body_size, 'x');
    hop_test::nginx_config c;
    c.workers = static_cast<int>(workers);
    c.master = true;
    c.worker_connections = 10000;
    c.error_log_level = "error";
    c.http = "    access_log off;\n    keepalive_requests 1000000;\n    keepalive_timeout 60s;\n"
             "    default_type text/plain;\n";
    c.servers.push_back(
        hop_test::nginx_server_block{reuseport ? " reuseport" : "", "        location / { root " + dir.string() + "; }"});
    n->process.emplace(std::move(c), dir);
    n->port = n->process->port();
    n->pid = n->process->pid();
    return n;
}

/// nginx's worker: the master's child.
pid_t nginx_worker(pid_t master) {
    std::ifstream in("/proc/" + std::to_string(master) + "/task/" + std::to_string(master) + "/children");
    pid_t w = -1;
    in >> w;
    return w;
}

void stop(pid_t pid) {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
}

// ---- wrk ---------------------------------------------------------------------

struct wrk_result {
    double requests_per_s = 0;
    double p99_ms = 0;
    std::string errors;  // "Socket errors" / "Non-2xx" lines, if any
};

double to_ms(const std::string& v) {
    const double x = std::atof(v.c_str());
    if (v.find("us") != std::string::npos) return x / 1000;
    if (v.find("ms") != std::string::npos) return x;
    if (v.find('s') != std::string::npos) return x * 1000;
    return x;
}

wrk_result run_wrk(std::uint16_t port, int duration_s, std::size_t threads = 1) {
    const std::string cmd = "wrk -t" + std::to_string(threads) + " -c100 -d" + std::to_string(duration_s) +
                            "s --latency http://127.0.0.1:" + std::to_string(port) + "/index.html 2>&1";
    FILE* p = ::popen(cmd.c_str(), "r");
    if (p == nullptr) throw std::runtime_error("wrk could not be started");
    std::string out;
    char buf[4096];
    while (std::size_t n = std::fread(buf, 1, sizeof buf, p)) out.append(buf, n);
    const int st = ::pclose(p);
    if (st != 0) throw std::runtime_error("wrk failed: " + out);
    wrk_result r;
    std::istringstream in(out);
    std::string line;
    while (std::getline(in, line)) {
        std::istringstream words(line);
        std::string first;
        words >> first;
        if (first == "Requests/sec:") words >> r.requests_per_s;
        if (first == "99%") {
            std::string v;
            words >> v;
            r.p99_ms = to_ms(v);
        }
        if (line.find("Socket errors") != std::string::npos || line.find("Non-2xx") != std::string::npos) {
            r.errors += line + "; ";
        }
    }
    return r;
}

// ---- idle connections --------------------------------------------------------

/// Opens `n` keep-alive connections, each makes one request and reads its
/// response, and they stay open; returns their descriptors.
std::vector<int> open_idle(std::uint16_t port, std::size_t n) {
    std::vector<int> fds;
    const auto ep = hop::endpoint::loopback_v4(port);
    const std::string req = "GET /index.html HTTP/1.1\r\nHost: bench\r\n\r\n";
    for (std::size_t i = 0; i < n; ++i) {
        const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || ::connect(fd, ep.data(), ep.size()) != 0) throw std::runtime_error("idle connect failed");
        fds.push_back(fd);
        timeval guard{20, 0};
        ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &guard, sizeof guard);
        if (::send(fd, req.data(), req.size(), MSG_NOSIGNAL) != static_cast<ssize_t>(req.size())) {
            throw std::runtime_error("idle send failed");
        }
    }
    // Read each response whole (head + 4 KiB).
    for (std::size_t i = 0; i < fds.size(); ++i) {
        const int fd = fds[i];
        std::string got;
        char buf[8192];
        while (true) {
            const auto end = got.find("\r\n\r\n");
            if (end != std::string::npos && got.size() >= end + 4 + body_size) break;
            const auto r = ::recv(fd, buf, sizeof buf, 0);
            if (r <= 0) {
                throw std::runtime_error("idle connection " + std::to_string(i) + " on port " + std::to_string(port) +
                                         ": " + (r == 0 ? std::string("closed") : std::string(std::strerror(errno))) +
                                         " after " + std::to_string(got.size()) + " bytes");
            }
            got.append(buf, static_cast<std::size_t>(r));
        }
    }
    return fds;
}

/// A server's memory around `n` idle keep-alive connections.
struct idle_memory {
    long start_kib = 0;        ///< VmRSS after a 1 s wrk run, before the connections
    long open_kib = 0;         ///< with all n open
    double per_connection = 0; ///< bytes: growth over the second half / its size
    long closed_kib = 0;       ///< after they closed and the server idled settle_s
};

/// Opens `n` keep-alive connections to `port` (each makes one request and
/// stays open), reads `pid`'s VmRSS, closes them, lets the server idle
/// `settle_s` seconds, reads it again. The cost per connection is the growth
/// over the second half of the connections, divided by their number: the
/// first half takes up the heap the wrk run left free (nginx's request
/// pools, hop's frames and buffers), which would otherwise hide a server's
/// own cost (nginx read 0 bytes that way, in some runs). nginx preallocates
/// its connection and event structures for `worker_connections` at start,
/// so its figure is what a connection adds beyond those.
idle_memory measure_idle(pid_t pid, std::uint16_t port, std::size_t n, int settle_s) {
    idle_memory m;
    run_wrk(port, 1);
    m.start_kib = rss_kib(pid);
    const std::size_t half = n / 2;
    auto first = open_idle(port, half);
    const long mid = rss_kib(pid);
    auto second = open_idle(port, n - half);
    m.open_kib = rss_kib(pid);
    m.per_connection = static_cast<double>(m.open_kib - mid) * 1024.0 / static_cast<double>(n - half);
    for (int fd : first) ::close(fd);
    for (int fd : second) ::close(fd);
    // A measurement pause, not a synchronisation: how much a server keeps
    // once its load has gone for a while.
    std::this_thread::sleep_for(std::chrono::seconds(settle_s));
    m.closed_kib = rss_kib(pid);
    return m;
}

bool backend_starts(hop::backend b) {
    try {
        hop::io_loop probe{{.backend = b}};
        return true;
    } catch (const std::exception&) {
        return false;
    }
}

std::string load_average() {
    std::ifstream in("/proc/loadavg");
    std::string one, five, fifteen;
    in >> one >> five >> fifteen;
    return one + " " + five + " " + fifteen;
}

}  // namespace

int main(int argc, char** argv) {
    bench_options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_server_bench: %s\n", e.what());
        return 2;
    }
    std::signal(SIGPIPE, SIG_IGN);
    rlimit nofile{};
    ::getrlimit(RLIMIT_NOFILE, &nofile);
    nofile.rlim_cur = nofile.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &nofile);

    try {
        std::printf("http_server_bench: %zu cores, load average %s before the run; wrk, the clients, runs on the same "
                    "cores as the servers\n",
                    static_cast<std::size_t>(std::max(1u, std::thread::hardware_concurrency())), load_average().c_str());

        // ---- 1. one loop against one worker --------------------------------------
        if (!o.only_metrics) {
            std::uint16_t hop_port = 0;
            const pid_t hop_pid = start_hop(o.backend, 0, hop::accept_mode::least_loaded, hop_port);
            auto nginx = start_nginx(1, false);

            std::printf("\n1 loop vs 1 worker: wrk -t1 -c100 -d%ds, %zu-byte body\n", o.duration_s, body_size);
            // Warm both (page cache, first connections), then measure.
            run_wrk(hop_port, 1);
            run_wrk(nginx->port, 1);
            const wrk_result h = run_wrk(hop_port, o.duration_s);
            const wrk_result n = run_wrk(nginx->port, o.duration_s);

            std::printf("%-28s | %12s | %12s | %s\n", "", "hop", "nginx (1 w)", "hop/nginx");
            std::printf("%-28s | %12.0f | %12.0f | %.2f\n", "requests/s", h.requests_per_s, n.requests_per_s,
                        h.requests_per_s / n.requests_per_s);
            std::printf("%-28s | %12.2f | %12.2f | %.2f\n", "p99 latency (ms)", h.p99_ms, n.p99_ms, h.p99_ms / n.p99_ms);
            if (!h.errors.empty()) std::printf("hop wrk errors: %s\n", h.errors.c_str());
            if (!n.errors.empty()) std::printf("nginx wrk errors: %s\n", n.errors.c_str());

            stop(hop_pid);
            nginx.reset();
        }

        // ---- 1b. memory: idle keep-alive connections, and after they close ------
        if (!o.only_metrics) {
            std::printf("\nmemory: %zu idle keep-alive connections (one request each), then all closed and the "
                        "server idle %d s; VmRSS\n",
                        o.idle_connections, o.settle_s);
            std::printf("%-22s | %10s | %14s | %12s | %16s\n", "", "start (MB)", "with idle (MB)", "per conn (B)",
                        "after close (MB)");
            auto row = [](const std::string& name, const idle_memory& m) {
                std::printf("%-22s | %10.1f | %14.1f | %12.0f | %16.1f\n", name.c_str(), m.start_kib / 1024.0,
                            m.open_kib / 1024.0, m.per_connection, m.closed_kib / 1024.0);
                std::fflush(stdout);
            };
            for (hop::backend b : {hop::backend::io_uring, hop::backend::epoll}) {
                const std::string name = std::string("hop, ") + (b == hop::backend::io_uring ? "io_uring" : "epoll");
                if (o.backend != hop::backend::automatic && o.backend != b) continue;
                if (!backend_starts(b)) {
                    std::printf("%-22s | (this backend cannot start here)\n", name.c_str());
                    continue;
                }
                std::uint16_t port = 0;
                const pid_t pid = start_hop(b, 0, hop::accept_mode::least_loaded, port, o.idle_trim_ms);
                row(name, measure_idle(pid, port, o.idle_connections, o.settle_s));
                stop(pid);
            }
            auto nginx = start_nginx(1, false);
            row("nginx, 1 worker", measure_idle(nginx_worker(nginx->pid), nginx->port, o.idle_connections, o.settle_s));
            nginx.reset();
            if (o.idle_trim_ms == 0) std::printf("(hop's idle trim off: --idle-trim 0)\n");
        }

        // ---- 2. every core: an io_pool against nginx's workers -------------------
        if (!o.only_metrics) {
            const std::size_t k = o.loops;
            std::uint16_t least_port = 0, reuse_port = 0;
            const pid_t least_pid = start_hop(o.backend, k, hop::accept_mode::least_loaded, least_port);
            const pid_t reuse_pid = start_hop(o.backend, k, hop::accept_mode::reuse_port, reuse_port);
            auto shared = start_nginx(k, false);
            auto per_worker = start_nginx(k, true);

            std::printf("\n%zu loops vs %zu workers: wrk -t%zu -c100 -d%ds, %zu-byte body\n", k, k, k, o.duration_s,
                        body_size);
            for (std::uint16_t port : {least_port, reuse_port, shared->port, per_worker->port}) run_wrk(port, 1, k);
            const wrk_result hl = run_wrk(least_port, o.duration_s, k);
            const wrk_result hr = run_wrk(reuse_port, o.duration_s, k);
            const wrk_result ns = run_wrk(shared->port, o.duration_s, k);
            const wrk_result nr = run_wrk(per_worker->port, o.duration_s, k);

            const std::string nginx_head = "nginx (" + std::to_string(k) + " w)";
            std::printf("%-28s | %12s | %12s | %12s | %12s | %s\n", "", "requests/s", "p99 (ms)", nginx_head.c_str(),
                        "p99 (ms)", "hop/nginx");
            auto row = [&](const char* name, const wrk_result& h, const wrk_result& n) {
                std::printf("%-28s | %12.0f | %12.2f | %12.0f | %12.2f | %.2f\n", name, h.requests_per_s, h.p99_ms,
                            n.requests_per_s, n.p99_ms, h.requests_per_s / n.requests_per_s);
            };
            std::printf("(nginx: one shared listener; nginx reuseport: one per worker)\n");
            row("hop least_loaded / nginx", hl, ns);
            row("hop reuse_port / nginx rp", hr, nr);
            for (const auto* r : {&hl, &hr, &ns, &nr}) {
                if (!r->errors.empty()) std::printf("wrk errors: %s\n", r->errors.c_str());
            }
            std::printf("load average after the run: %s\n", load_average().c_str());

            stop(least_pid);
            stop(reuse_pid);
            shared.reset();
            per_worker.reset();
        }

        // ---- 3. what hop::metrics costs ------------------------------------------
        {
            std::uint16_t on_port = 0, off_port = 0;
            const pid_t on_pid = start_hop(o.backend, 0, hop::accept_mode::least_loaded, on_port, -1, true);
            const pid_t off_pid = start_hop(o.backend, 0, hop::accept_mode::least_loaded, off_port, -1, false);
            std::printf("\nhop::metrics on against off: 1 loop each, wrk -t1 -c100 -d%ds, in turn, %d runs each, "
                        "median shown\n",
                        o.duration_s, o.metrics_rounds);
            run_wrk(on_port, 1);
            run_wrk(off_port, 1);
            std::vector<double> on_rps, off_rps, on_p99, off_p99;
            for (int r = 0; r < o.metrics_rounds; ++r) {
                // Alternate which goes first, so drift over a round favours neither.
                const bool on_first = r % 2 == 0;
                for (int k = 0; k < 2; ++k) {
                    const bool on = (k == 0) == on_first;
                    const wrk_result w = run_wrk(on ? on_port : off_port, o.duration_s);
                    if (!w.errors.empty()) std::printf("wrk errors (metrics %s): %s\n", on ? "on" : "off", w.errors.c_str());
                    (on ? on_rps : off_rps).push_back(w.requests_per_s);
                    (on ? on_p99 : off_p99).push_back(w.p99_ms);
                }
            }
            auto median = [](std::vector<double> v) {
                std::sort(v.begin(), v.end());
                const std::size_t n = v.size();
                return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
            };
            std::printf("%-28s | %12s | %12s | %s\n", "", "metrics on", "metrics off", "on/off");
            const double ron = median(on_rps), roff = median(off_rps);
            const double pon = median(on_p99), poff = median(off_p99);
            std::printf("%-28s | %12.0f | %12.0f | %.3f\n", "requests/s", ron, roff, ron / roff);
            std::printf("%-28s | %12.2f | %12.2f | %.3f\n", "p99 latency (ms)", pon, poff, pon / poff);
            std::printf("(requests/s cost of counting: %.2f%%)\n", (1.0 - ron / roff) * 100.0);
            stop(on_pid);
            stop(off_pid);
        }
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_server_bench: %s\n", e.what());
        return 1;
    }
    return 0;
}
