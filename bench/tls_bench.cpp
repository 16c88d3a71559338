// TLS benchmark: hop's https against nginx's and curl's, same work in the
// same run (issue 9). Three parts:
//
//   throughput  keep-alive https, `wrk -t1 -c100 -dDs` (as http_server_bench)
//               for a 4 KiB body: hop::http::server with TLS, the same server
//               plain, nginx (1 worker) with TLS, nginx plain (and, as a
//               diagnostic, a bare hop::tls::stream loop answering each
//               request head with a canned response). Goals:
//               hop TLS / hop plain >= 0.7, hop TLS / nginx TLS >= 1.0.
//   handshake   full handshakes per second (no resumption), for an EC
//               P-256 and an RSA-2048 certificate, against hop::http::server
//               (TLS) and nginx (TLS), each driven by two clients in turn:
//               `openssl s_time -connect 127.0.0.1:P -new -time N` (two in
//               parallel; handshake, then close) and a small hop client
//               (hop::tls::stream::connect, 16 in flight; handshake, one
//               GET, close). Goal: hop / nginx >= 1.0. Also a bare
//               hop::tls::stream accept loop (no HTTP), to tell the TLS
//               engine's cost from the server's.
//   client      10,000 https GETs of a 4 KiB body from nginx (TLS), 100 in
//               flight: hop::http::client (client_options::tls with the
//               bench's CA, max_connections 100, hop::map) against
//               `curl -Z --parallel-max 100 --cacert ca.pem` (libcurl's
//               multi interface). Both start cold: their 100 connections
//               and full handshakes are inside the timed run. Goal: hop /
//               curl >= 1.0.
//
//   tls_bench [--quick] [--backend auto|io_uring|epoll] [--duration S]
//             [--rounds N] [--only throughput|handshake|client]
//
// --duration is wrk's (default 5 s per server, as http_server_bench) and
// --rounds how many times each wrk run is repeated, servers alternating
// (default 1; the median is shown). The handshake part runs 3 rounds of
// 1 s per server and client, alternating, the client part 3 rounds (median
// shown). --quick: 1 s, 1 round, 2,000 GETs (a smoke run of ~30 s).
//
// Every server runs in its own process (hop in a forked child, nginx as
// itself with `master_process off`), so its CPU time (from /proc/PID/stat,
// around each measurement) is its own. The certificates (a private CA, an
// EC P-256 leaf and an RSA-2048 leaf for 127.0.0.1) are made with the
// openssl CLI in a temporary directory at start. Client and servers share
// this machine's cores: with 2 cores a client that spends as much CPU per
// request as the server caps both figures, so the server's CPU time per
// request or handshake is printed as well, with the client's.
//
// HOP_TLS_BENCH_WORKERS=N sets the hop handshake client's connections in
// flight (for experiments).

#include "common.hpp"

#include <hop/hop.hpp>
#include <hop/http.hpp>
#include <hop/tls.hpp>

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <atomic>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>


namespace {

using bench::accepting;
using bench::child_result;
using bench::free_port;
using bench::run_program;
using bench::slurp;

constexpr std::size_t body_size = 4096;
constexpr std::size_t in_flight = 100;
/// Connections in flight from the hop handshake client (HOP_TLS_BENCH_WORKERS overrides it).
std::size_t hop_handshake_workers = 16;
constexpr const char* sections[] = {"throughput", "handshake", "client"};

struct bench_options {
    bool quick = false;
    hop::backend backend = hop::backend::automatic;
    int duration_s = 5;            ///< wrk's -d per server
    std::size_t throughput_rounds = 1;
    int handshake_s = 1;           ///< s_time's -time per server and round
    std::size_t handshake_rounds = 3;
    std::size_t parallel_s_time = 2;
    std::size_t requests = 10'000; ///< client GETs per run
    std::size_t rounds = 3;        ///< client runs per side (median shown)
    std::string only;

    bool wants(const std::string& s) const { return only.empty() || only == s; }
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
            o.duration_s = 1;
            o.handshake_s = 1;
            o.handshake_rounds = 1;
            o.requests = 2'000;
            o.rounds = 1;
        } else if (a == "--backend") {
            const std::string v = value();
            if (v == "io_uring") {
                o.backend = hop::backend::io_uring;
            } else if (v == "epoll") {
                o.backend = hop::backend::epoll;
            } else if (v != "auto") {
                throw std::invalid_argument("--backend '" + v + "': expected auto, io_uring or epoll");
            }
        } else if (a == "--duration") {
            const std::string v = value();
            const int d = std::atoi(v.c_str());
            if (d < 1 || d > 600) throw std::invalid_argument("--duration '" + v + "': expected 1 to 600 seconds");
            o.duration_s = d;
        } else if (a == "--rounds") {
            const std::string v = value();
            const int r = std::atoi(v.c_str());
            if (r < 1 || r > 100) throw std::invalid_argument("--rounds '" + v + "': expected 1 to 100");
            o.throughput_rounds = static_cast<std::size_t>(r);
        } else if (a == "--only") {
            o.only = value();
            bool known = false;
            for (const char* s : sections) known = known || o.only == s;
            if (!known) throw std::invalid_argument("--only '" + o.only + "': expected throughput, handshake or client");
        } else {
            throw std::invalid_argument("unknown argument '" + a + "'");
        }
    }
    return o;
}

// ---- processes -------------------------------------------------------------------

/// user + system CPU seconds of process `pid` so far (/proc/PID/stat).
double proc_cpu_seconds(pid_t pid) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
    std::string stat;
    std::getline(in, stat);
    const auto close = stat.rfind(')');
    if (close == std::string::npos) throw std::runtime_error("cannot read /proc/" + std::to_string(pid) + "/stat");
    std::istringstream fields(stat.substr(close + 2));
    std::string f;
    unsigned long long utime = 0, stime = 0;
    // After "(comm) ": state is field 3; utime and stime are fields 14 and 15.
    for (int i = 3; i <= 15 && fields >> f; ++i) {
        if (i == 14) utime = std::stoull(f);
        if (i == 15) stime = std::stoull(f);
    }
    return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

void stop(pid_t& pid) {
    if (pid <= 0) return;
    ::kill(pid, SIGTERM);
    int st = 0;
    while (::waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    pid = -1;
}

// ---- certificates ------------------------------------------------------------------

struct certificates {
    std::filesystem::path ca, ec_cert, ec_key, rsa_cert, rsa_key;
};

/// A private CA and two leaves for 127.0.0.1 / localhost signed by it.
certificates make_certificates(const std::filesystem::path& dir) {
    const std::string d = dir.string();
    std::ofstream(dir / "leaf.ext") << "basicConstraints=CA:FALSE\n"
                                       "keyUsage=digitalSignature,keyEncipherment\n"
                                       "extendedKeyUsage=serverAuth\n"
                                       "subjectAltName=IP:127.0.0.1,DNS:localhost\n";
    auto openssl = [&](std::vector<std::string> args) {
        args.insert(args.begin(), "openssl");
        run_program(args, dir / "openssl.out");
    };
    openssl({"req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", d + "/ca.key",
             "-out", d + "/ca.pem", "-days", "2", "-subj", "/CN=hop tls_bench CA"});
    certificates c;
    c.ca = dir / "ca.pem";
    auto leaf = [&](const std::string& name, std::vector<std::string> newkey) {
        std::vector<std::string> req{"req", "-new"};
        req.insert(req.end(), newkey.begin(), newkey.end());
        for (const char* a : {"-nodes", "-subj", "/CN=127.0.0.1"}) req.emplace_back(a);
        req.insert(req.end(), {"-keyout", d + "/" + name + ".key", "-out", d + "/" + name + ".csr"});
        openssl(req);
        openssl({"x509", "-req", "-in", d + "/" + name + ".csr", "-CA", d + "/ca.pem", "-CAkey", d + "/ca.key",
                 "-CAcreateserial", "-days", "2", "-extfile", d + "/leaf.ext", "-out", d + "/" + name + ".pem"});
    };
    leaf("ec", {"-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"});
    leaf("rsa", {"-newkey", "rsa:2048"});
    c.ec_cert = dir / "ec.pem";
    c.ec_key = dir / "ec.key";
    c.rsa_cert = dir / "rsa.pem";
    c.rsa_key = dir / "rsa.key";
    return c;
}

// ---- hop servers, each in a child process --------------------------------------------

enum class hop_mode {
    http,        ///< hop::http::server, plain or (with a certificate) https
    bare_tls,    ///< hop::tls::stream accept loop answering each request head with a canned response
};

/// A hop server's child process; destroying it stops the child (SIGTERM).
struct hop_server {
    pid_t pid = -1;
    std::uint16_t port = 0;

    hop_server() = default;
    hop_server(hop_server&& o) noexcept : pid(std::exchange(o.pid, -1)), port(o.port) {}
    hop_server& operator=(hop_server&&) = delete;
    ~hop_server() { stop(pid); }
};

std::string canned_response() {
    return "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: " + std::to_string(body_size) + "\r\n\r\n" +
           std::string(body_size, 'x');
}

/// One connection of the bare server: handshake, then for every request
/// head ("\r\n\r\n") the canned response. Failures end the connection.
hop::task<void> bare_connection(hop::tls::context ctx, hop::tcp_stream tcp, const std::string& response,
                                std::uint64_t& failures) {
    try {
        hop::tls::stream s = co_await hop::tls::stream::accept(ctx, std::move(tcp));
        std::vector<char> buf(16384);
        std::string pending;
        while (true) {
            const std::size_t n = co_await s.read_some(std::span<char>(buf));
            if (n == 0) break;
            pending.append(buf.data(), n);
            std::size_t heads = 0;
            for (auto at = pending.find("\r\n\r\n"); at != std::string::npos; at = pending.find("\r\n\r\n")) {
                pending.erase(0, at + 4);
                ++heads;
            }
            for (std::size_t i = 0; i < heads; ++i) co_await s.write_all(std::string_view(response));
        }
        co_await s.shutdown(std::chrono::milliseconds(0));
    } catch (const hop::cancelled_error&) {
        throw;
    } catch (const std::exception&) {
        ++failures;  // a peer that leaves without close_notify (s_time, wrk at the end): not counted as an error below
    }
}

hop::task<void> bare_server(hop::tls::context ctx, hop::tcp_listener& lis, const std::string& response,
                            std::uint64_t& failures) {
    hop::task_group group;
    while (true) {
        hop::tcp_stream c = co_await lis.accept();
        group.spawn(bare_connection(ctx, std::move(c), response, failures));
    }
}

/// Forks a child serving the 4 KiB body on 127.0.0.1:0 (https if `cert` is
/// given); SIGTERM stops it. At exit it reports to stderr what its log saw.
hop_server start_hop(hop_mode mode, hop::backend backend, const std::filesystem::path& cert,
                     const std::filesystem::path& key) {
    int pipe_fd[2];
    if (::pipe(pipe_fd) != 0) throw std::runtime_error("pipe failed");
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid > 0) {
        ::close(pipe_fd[1]);
        hop_server s;
        s.pid = pid;
        if (::read(pipe_fd[0], &s.port, sizeof s.port) != sizeof s.port) throw std::runtime_error("the hop server did not start");
        ::close(pipe_fd[0]);
        return s;
    }
    ::close(pipe_fd[0]);
    int code = 0;
    try {
        sigset_t sigs;
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGTERM);
        pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
        hop::io_loop loop{{.backend = backend}};
        const std::string body(body_size, 'x');
        const std::string response = canned_response();
        std::uint64_t log_lines = 0;
        std::string first_log;
        std::uint64_t bare_failures = 0;
        std::optional<hop::tls::context> tls;
        if (!cert.empty()) tls = hop::tls::context::server(cert.string(), key.string());
        auto handler = [&body](hop::http::request&) -> hop::task<hop::http::response> {
            hop::http::response r;
            r.headers.add("Content-Type", "text/plain");
            r.body = body;
            co_return r;
        };
        auto main_task = [&]() -> hop::task<void> {
            if (mode == hop_mode::http) {
                hop::http::server_options so{.max_connections = 100000, .shutdown_grace = std::chrono::seconds(1)};
                so.tls = tls;
                so.log = [&](std::string_view line) {
                    if (log_lines++ == 0) first_log = line;
                };
                auto srv = hop::http::server::bind(hop::endpoint::loopback_v4(0), handler, so);
                const std::uint16_t p = srv.local_endpoint().port();
                if (::write(pipe_fd[1], &p, sizeof p) != sizeof p) std::_Exit(3);
                ::close(pipe_fd[1]);
                co_await srv.serve();
            } else {
                auto lis = hop::tcp_listener::bind(hop::endpoint::loopback_v4(0), {.backlog = 1024});
                const std::uint16_t p = lis.local_endpoint().port();
                if (::write(pipe_fd[1], &p, sizeof p) != sizeof p) std::_Exit(3);
                ::close(pipe_fd[1]);
                co_await bare_server(*tls, lis, response, bare_failures);
            }
        };
        auto f = loop.spawn(main_task());
        f.on_done([&loop](const hop::future<void>&) noexcept { loop.stop(); });
        std::thread stopper([&sigs, f]() mutable {
            int sig = 0;
            sigwait(&sigs, &sig);
            f.cancel();
        });
        loop.run();
        stopper.join();
        if (log_lines > 0) {
            std::fprintf(stderr, "  (hop server log: %llu lines; the first: %s)\n", static_cast<unsigned long long>(log_lines),
                         first_log.c_str());
        }
    } catch (const hop::cancelled_error&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "hop server: %s\n", e.what());
        code = 1;
    }
    std::_Exit(code);
}

// ---- nginx -------------------------------------------------------------------------

/// nginx, one process (`master_process off`), no access log, keep-alive,
/// TLS defaults (session cache "none", tickets on) but TLS 1.3 enabled
/// (ssl_protocols TLSv1.2 TLSv1.3, as hop): a plain port, an https
/// port with the EC certificate and one with the RSA certificate.
class nginx_server {
public:
    nginx_server(const std::filesystem::path& dir, const certificates& certs) : m_nginx(config(dir / "nginx", certs), dir / "nginx") {}

    pid_t pid() const { return m_nginx.pid(); }
    std::uint16_t plain_port() const { return m_nginx.port(0); }
    std::uint16_t ec_port() const { return m_nginx.port(1); }
    std::uint16_t rsa_port() const { return m_nginx.port(2); }

private:
    static hop_test::nginx_config config(const std::filesystem::path& dir, const certificates& certs) {
        std::filesystem::create_directories(dir / "www");
        std::ofstream(dir / "www" / "index.html", std::ios::binary) << std::string(body_size, 'x');
        const std::string root = "        root " + (dir / "www").string() + ";\n";
        hop_test::nginx_config c;
        c.worker_connections = 10000;
        c.http = "    access_log off;\n    default_type text/plain;\n"
                 "    keepalive_requests 10000000;\n    keepalive_timeout 75s;\n"
                 // nginx 1.22's default is TLSv1 to TLSv1.2; hop speaks 1.2 and 1.3 and
                 // clients pick 1.3: the same protocol on both sides.
                 "    ssl_protocols TLSv1.2 TLSv1.3;\n";
        c.servers = {{" backlog=4096", root},
                     {" ssl backlog=4096", root + "        ssl_certificate " + certs.ec_cert.string() +
                                               ";\n        ssl_certificate_key " + certs.ec_key.string() + ";"},
                     {" ssl backlog=4096", root + "        ssl_certificate " + certs.rsa_cert.string() +
                                               ";\n        ssl_certificate_key " + certs.rsa_key.string() + ";"}};
        return c;
    }

    hop_test::nginx_process m_nginx;
};

/// "TLSv1.3 TLS_AES_256_GCM_SHA384, ECDSA, X25519" from `openssl s_client -brief`.
std::string negotiated(const std::filesystem::path& dir, std::uint16_t port) {
    const auto r = run_program({"openssl", "s_client", "-connect", "127.0.0.1:" + std::to_string(port), "-brief"},
                               dir / "s_client.out");
    std::string out;
    std::istringstream in(r.output);
    std::string line;
    for (const char* key : {"Protocol version: ", "Ciphersuite: ", "Peer signature type: ", "Server Temp Key: "}) {
        in.clear();
        in.seekg(0);
        while (std::getline(in, line)) {
            if (line.rfind(key, 0) == 0) out += (out.empty() ? "" : ", ") + line.substr(std::strlen(key));
        }
    }
    return out.empty() ? "?" : out;
}

// ---- 1: keep-alive throughput (wrk) -------------------------------------------------------

struct rate {
    double per_s = 0;          ///< requests or handshakes per second
    double server_cpu_us = 0;  ///< server CPU microseconds per request or handshake
    double client_cpu_us = 0;  ///< the client's (wrk's, s_time's) CPU microseconds per request or handshake
    double p99_ms = 0;
    std::string errors;
};

double to_ms(const std::string& v) {
    const double x = std::atof(v.c_str());
    if (v.find("us") != std::string::npos) return x / 1000;
    if (v.find("ms") != std::string::npos) return x;
    if (v.find('s') != std::string::npos) return x * 1000;
    return x;
}

rate run_wrk(const std::filesystem::path& dir, const std::string& scheme, std::uint16_t port, pid_t server, int seconds) {
    const double cpu0 = proc_cpu_seconds(server);
    const auto r = run_program({"wrk", "-t1", "-c" + std::to_string(in_flight), "-d" + std::to_string(seconds) + "s",
                                "--latency", scheme + "://127.0.0.1:" + std::to_string(port) + "/index.html"},
                               dir / "wrk.out");
    const double cpu1 = proc_cpu_seconds(server);
    rate out;
    std::smatch m;
    if (!std::regex_search(r.output, m, std::regex(R"((\d+) requests in ([0-9.]+)(m?s))"))) {
        throw std::runtime_error("cannot read wrk's output:\n" + r.output);
    }
    const double requests = std::stod(m[1]);
    const double secs = std::stod(m[2]) / (m[3] == "ms" ? 1000.0 : 1.0);
    out.per_s = requests / secs;
    out.server_cpu_us = requests > 0 ? (cpu1 - cpu0) * 1e6 / requests : 0;
    out.client_cpu_us = requests > 0 ? r.cpu_seconds * 1e6 / requests : 0;
    if (std::regex_search(r.output, m, std::regex(R"(\n\s*99%\s+(\S+))"))) out.p99_ms = to_ms(m[1]);
    std::istringstream in(r.output);
    std::string line;
    while (std::getline(in, line)) {
        if (line.find("Socket errors") != std::string::npos || line.find("Non-2xx") != std::string::npos) {
            out.errors += line + "; ";
        }
    }
    if (requests == 0) throw std::runtime_error("wrk made no request:\n" + r.output);
    return out;
}

// ---- 2: full handshakes (openssl s_time) -----------------------------------------------------

/// `parallel` s_time processes, each making new connections (full
/// handshakes) for `seconds`; handshakes per second over the wall time.
rate run_s_time(const std::filesystem::path& dir, std::uint16_t port, pid_t server, int seconds, std::size_t parallel) {
    const double cpu0 = proc_cpu_seconds(server);
    const auto t0 = bench::clock::now();
    std::vector<std::unique_ptr<hop_test::peer>> clients;
    double client_cpu = 0;
    for (std::size_t i = 0; i < parallel; ++i) {
        // s_time does not verify the peer, but OpenSSL still looks for the
        // issuer in the default CA directory on every handshake (a scan of
        // /etc/ssl/certs that costs the client more than the handshake):
        // no default CA locations.
        clients.push_back(bench::start_program({"openssl", "s_time", "-connect", "127.0.0.1:" + std::to_string(port),
                                                "-new", "-time", std::to_string(seconds), "-no-CApath", "-no-CAfile",
                                                "-no-CAstore"},
                                               dir / ("s_time." + std::to_string(i) + ".out")));
    }
    for (auto& c : clients) client_cpu += bench::finish(*c);
    const double wall = bench::seconds_since(t0);
    const double cpu1 = proc_cpu_seconds(server);
    double total = 0;
    for (std::size_t i = 0; i < parallel; ++i) {
        const std::string out = slurp(dir / ("s_time." + std::to_string(i) + ".out"));
        std::smatch m;
        if (!std::regex_search(out, m, std::regex(R"((\d+) connections in [0-9.]+ real seconds)"))) {
            throw std::runtime_error("cannot read openssl s_time's output:\n" + out);
        }
        total += std::stod(m[1]);
    }
    if (total == 0) throw std::runtime_error("openssl s_time made no connection");
    rate r;
    r.per_s = total / wall;
    r.server_cpu_us = (cpu1 - cpu0) * 1e6 / total;
    r.client_cpu_us = client_cpu * 1e6 / total;
    return r;
}

// ---- 2b: the same with a lighter client (hop::tls::stream::connect) ------------------------------

struct hs_count {
    std::uint64_t ok = 0;
    std::uint64_t failed = 0;
    std::string first_error;
};

/// Until `deadline`: connect, full handshake (no resumption, no
/// verification: as s_time), one keep-alive GET, its whole response, then
/// close without close_notify (as s_time).
hop::task<void> handshake_worker(hop::tls::context ctx, hop::endpoint ep, bench::clock::time_point deadline,
                                 hs_count& count) {
    const std::string request = "GET /index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    std::vector<char> buf(16384);
    while (bench::clock::now() < deadline) {
        try {
            hop::tcp_stream tcp = co_await hop::tcp_stream::connect(ep);
            hop::tls::stream t = co_await hop::tls::stream::connect(ctx, std::move(tcp), "127.0.0.1");
            co_await t.write_all(std::string_view(request));
            std::string got;
            std::size_t want = std::string::npos;
            while (want == std::string::npos || got.size() < want) {
                const std::size_t n = co_await t.read_some(std::span<char>(buf));
                if (n == 0) throw std::runtime_error("the server closed the connection early");
                got.append(buf.data(), n);
                const auto end = got.find("\r\n\r\n");
                if (want == std::string::npos && end != std::string::npos) want = end + 4 + body_size;
            }
            t.close();
            ++count.ok;
        } catch (const std::exception& e) {
            if (count.failed++ == 0) count.first_error = e.what();
        }
    }
}

/// In a forked child: `in_flight` workers on one loop for `seconds`.
bench::sample hop_handshake_side(hop::backend b, std::uint16_t port, int seconds, std::size_t workers,
                                 const std::filesystem::path& ca) {
    hop::io_loop loop{{.backend = b, .queue_depth = 256}};
    auto ctx = hop::tls::context::client();
    // The chain is built even unverified: with the issuer in memory OpenSSL
    // does not look for it in /etc/ssl/certs on every handshake.
    ctx.load_ca_file(ca.string());
    ctx.insecure_skip_verify();
    ctx.set_session_resumption(false);
    hs_count count;
    const auto c0 = bench::process_cpu_times();
    const auto t0 = bench::clock::now();
    const auto deadline = t0 + std::chrono::seconds(seconds);
    std::vector<hop::future<void>> running;
    for (std::size_t i = 0; i < workers; ++i) {
        running.push_back(loop.spawn(handshake_worker(ctx, hop::endpoint::loopback_v4(port), deadline, count)));
    }
    for (auto& f : running) {
        while (!f.done()) loop.run_once();
    }
    bench::sample s;
    s.seconds = bench::seconds_since(t0);
    const auto c1 = bench::process_cpu_times();
    s.user_seconds = c1.user - c0.user;
    s.system_seconds = c1.system - c0.system;
    if (count.failed * 100 > count.ok) {
        throw std::runtime_error("hop handshake client: " + std::to_string(count.failed) + " of " +
                                 std::to_string(count.ok + count.failed) + " connections failed; the first: " +
                                 count.first_error);
    }
    s.value = static_cast<double>(count.ok);
    return s;
}

rate run_hop_handshakes(hop::backend b, std::uint16_t port, pid_t server, int seconds, std::size_t workers,
                        const std::filesystem::path& ca) {
    const double cpu0 = proc_cpu_seconds(server);
    const auto m = bench::run_isolated([&] { return hop_handshake_side(b, port, seconds, workers, ca); });
    const double cpu1 = proc_cpu_seconds(server);
    rate r;
    r.per_s = m.s.value / m.s.seconds;
    r.server_cpu_us = (cpu1 - cpu0) * 1e6 / m.s.value;
    r.client_cpu_us = (m.s.user_seconds + m.s.system_seconds) * 1e6 / m.s.value;
    return r;
}

// ---- 3: the client (hop::http::client vs curl -Z) ------------------------------------------------

hop::task<bool> get_and_check(hop::http::client& client, std::string url) {
    hop::http::response r = co_await client.get(std::move(url));
    co_return r.status == 200 && r.body.size() == body_size;
}

hop::task<std::size_t> hop_gets(hop::http::client& client, std::vector<std::string> urls) {
    std::vector<bool> oks = co_await hop::map([&](std::string u) { return get_and_check(client, std::move(u)); }, urls,
                                              {.max_concurrency = in_flight});
    co_return static_cast<std::size_t>(std::count(oks.begin(), oks.end(), true));
}

hop::tls::context client_context(const std::filesystem::path& ca) {
    auto ctx = hop::tls::context::client();
    ctx.load_ca_file(ca.string());
    return ctx;
}

/// In a forked child: a warm-up with its own client and context, then the
/// timed run with a fresh client and context (so its 100 connections make
/// full handshakes, as curl's do).
bench::sample hop_client_side(hop::backend b, const std::string& url, const std::filesystem::path& ca, std::size_t n) {
    hop::io_loop loop{{.backend = b, .queue_depth = 256}};
    {
        hop::http::client warm{{.max_connections = in_flight, .tls = client_context(ca)}};
        auto w = loop.spawn(hop_gets(warm, std::vector<std::string>(in_flight * 2, url)));
        while (!w.done()) loop.run_once();
        if (w.get() != in_flight * 2) throw std::runtime_error("hop: the warm-up requests failed");
    }
    hop::http::client client{{.max_connections = in_flight, .tls = client_context(ca)}};
    std::vector<std::string> urls(n, url);
    const auto c0 = bench::process_cpu_times();
    const auto t0 = bench::clock::now();
    auto f = loop.spawn(hop_gets(client, std::move(urls)));
    while (!f.done()) loop.run_once();
    bench::sample s;
    s.seconds = bench::seconds_since(t0);
    const auto c1 = bench::process_cpu_times();
    s.user_seconds = c1.user - c0.user;
    s.system_seconds = c1.system - c0.system;
    const std::size_t ok = f.get();
    if (ok != n) throw std::runtime_error("hop: " + std::to_string(n - ok) + " requests failed or came back wrong");
    s.check = ok;
    return s;
}

struct client_figure {
    double seconds = 0;
    double cpu_seconds = 0;
    double server_cpu_seconds = 0;
    std::size_t requests = 0;
    double per_s() const { return static_cast<double>(requests) / seconds; }
    double cpu_us() const { return cpu_seconds * 1e6 / static_cast<double>(requests); }
    double server_cpu_us() const { return server_cpu_seconds * 1e6 / static_cast<double>(requests); }
};

client_figure curl_side(const std::filesystem::path& dir, const std::string& url, const std::filesystem::path& ca,
                        std::size_t n, pid_t server) {
    {
        std::ofstream cfg(dir / "curl.cfg");
        for (std::size_t i = 0; i < n; ++i) cfg << "url = \"" << url << "\"\noutput = \"/dev/null\"\n";
    }
    const double s0 = proc_cpu_seconds(server);
    const auto r = run_program({"curl", "-s", "-S", "--no-progress-meter", "--fail", "--cacert", ca.string(), "-Z",
                                "--parallel-max", std::to_string(in_flight), "-K", (dir / "curl.cfg").string(), "-w",
                                "%{http_code} %{size_download}\\n"},
                               dir / "curl.out");
    const double s1 = proc_cpu_seconds(server);
    bench::check_curl_transfers(r.output, n, body_size);
    return {r.wall_seconds, r.cpu_seconds, s1 - s0, n};
}

double median(std::vector<double> v) {
    if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
}

const char* goal_mark(double ratio, double goal) { return ratio >= goal ? "met" : "MISSED"; }

std::string backend_name(hop::backend b) {
    switch (b) {
        case hop::backend::io_uring: return "io_uring";
        case hop::backend::epoll: return "epoll";
        default: break;
    }
    try {
        hop::io_loop loop{{.backend = hop::backend::io_uring}};
        return "auto: io_uring";
    } catch (const std::exception&) {
        return "auto: epoll";
    }
}

}  // namespace

int main(int argc, char** argv) try {
    bench_options o;
    try {
        o = parse(argc, argv);
    } catch (const std::exception& e) {
        std::fprintf(stderr, "tls_bench: %s\n", e.what());
        return 2;
    }
    std::signal(SIGPIPE, SIG_IGN);
    bench::raise_fd_limit();
    if (const char* w = std::getenv("HOP_TLS_BENCH_WORKERS")) hop_handshake_workers = std::max(1ul, std::strtoul(w, nullptr, 10));

    char tmpl[] = "/tmp/hop-tls-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    ::chmod(tmpl, 0755);
    const std::filesystem::path dir = tmpl;
    struct cleanup {
        std::filesystem::path d;
        ~cleanup() {
            std::error_code ec;
            std::filesystem::remove_all(d, ec);
        }
    } cleanup_dir{dir};

    const certificates certs = make_certificates(dir);
    nginx_server nginx(dir, certs);

    std::printf("tls_bench: %zu cores, shared by the clients (wrk, openssl s_time, curl, hop's client) and the server "
                "under test (one process, one thread each); hop backend %s; %zu-byte body; certificates: private CA, "
                "EC P-256 and RSA-2048 leaves for 127.0.0.1\n",
                bench::core_count(), backend_name(o.backend).c_str(), body_size);

    // ---- 1: throughput
    if (o.wants("throughput")) {
        hop_server plain = start_hop(hop_mode::http, o.backend, {}, {});
        hop_server tls = start_hop(hop_mode::http, o.backend, certs.ec_cert, certs.ec_key);
        hop_server bare = start_hop(hop_mode::bare_tls, o.backend, certs.ec_cert, certs.ec_key);
        std::printf("\n[throughput] wrk -t1 -c%zu -d%ds --latency, keep-alive, EC P-256 certificate\n", in_flight, o.duration_s);
        std::printf("  negotiated: hop %s | nginx %s\n", negotiated(dir, tls.port).c_str(), negotiated(dir, nginx.ec_port()).c_str());
        struct target {
            const char* name;
            const char* scheme;
            std::uint16_t port;
            pid_t pid;
        };
        const target targets[] = {
            {"hop::http::server https", "https", tls.port, tls.pid},
            {"hop::http::server http", "http", plain.port, plain.pid},
            {"nginx (1 worker) https", "https", nginx.ec_port(), nginx.pid()},
            {"nginx (1 worker) http", "http", nginx.plain_port(), nginx.pid()},
            {"hop tls::stream, canned reply (diag.)", "https", bare.port, bare.pid},
        };
        constexpr std::size_t n_targets = sizeof targets / sizeof targets[0];
        std::vector<double> per_s[n_targets], srv_us[n_targets], cli_us[n_targets], p99[n_targets];
        std::string errors[n_targets];
        for (const auto& t : targets) run_wrk(dir, t.scheme, t.port, t.pid, 1);  // warm up
        for (std::size_t round = 0; round < o.throughput_rounds; ++round) {
            for (std::size_t i = 0; i < n_targets; ++i) {
                const rate r = run_wrk(dir, targets[i].scheme, targets[i].port, targets[i].pid, o.duration_s);
                per_s[i].push_back(r.per_s);
                srv_us[i].push_back(r.server_cpu_us);
                cli_us[i].push_back(r.client_cpu_us);
                p99[i].push_back(r.p99_ms);
                errors[i] += r.errors;
            }
        }
        std::printf("  %-38s | %12s | %14s | %12s | %10s\n", "server", "requests/s", "server us/req", "wrk us/req",
                    "p99 ms");
        std::printf("  %s\n", std::string(38 + 3 + 12 + 3 + 14 + 3 + 12 + 3 + 10, '-').c_str());
        for (std::size_t i = 0; i < n_targets; ++i) {
            std::printf("  %-38s | %12.0f | %14.1f | %12.1f | %10.2f\n", targets[i].name, median(per_s[i]),
                        median(srv_us[i]), median(cli_us[i]), median(p99[i]));
            if (!errors[i].empty()) std::printf("    wrk: %s\n", errors[i].c_str());
        }
        // wrk -t1 is one thread: when it, not the server, is the limit, the
        // rates say more about wrk's TLS than the server's; the server's CPU
        // per request says what a server-bound run would show.
        const double r1 = median(per_s[0]) / median(per_s[1]);
        const double c1 = median(srv_us[1]) / median(srv_us[0]);
        const double r2 = median(per_s[0]) / median(per_s[2]);
        const double c2 = median(srv_us[2]) / median(srv_us[0]);
        std::printf("  hop https / hop http     requests/s %.2f (goal >= 0.7: %s); server CPU per request, http/https: "
                    "%.2f (%s)\n",
                    r1, goal_mark(r1, 0.7), c1, goal_mark(c1, 0.7));
        std::printf("  hop https / nginx https  requests/s %.2f (goal >= 1.0: %s); server CPU per request, nginx/hop: "
                    "%.2f (%s)\n",
                    r2, goal_mark(r2, 1.0), c2, goal_mark(c2, 1.0));
        std::printf("  wrk's own ceiling (1 / wrk us per request): https %.0f/s, http %.0f/s\n", 1e6 / median(cli_us[0]),
                    1e6 / median(cli_us[1]));
        std::fflush(stdout);
        stop(plain.pid);
        stop(tls.pid);
        stop(bare.pid);
    }

    // ---- 2: handshakes
    if (o.wants("handshake")) {
        std::printf("\n[handshake] full handshakes (no resumption), %zu round(s) of %d s per server and client, "
                    "alternating, median shown; two clients:\n"
                    "  s_time: %zu x openssl s_time -connect 127.0.0.1:PORT -new -time %d -no-CApath -no-CAfile "
                    "-no-CAstore in parallel (handshake, then close)\n"
                    "  hop:    %zu x hop::tls::stream::connect in flight on one loop (no verification, no resumption; "
                    "handshake, one GET, then close)\n",
                    o.handshake_rounds, o.handshake_s, o.parallel_s_time, o.handshake_s, hop_handshake_workers);
        std::printf("  %-6s | %-34s | %12s | %13s | %13s\n", "client", "server, certificate", "handshakes/s", "server us/hs",
                    "client us/hs");
        std::printf("  %s\n", std::string(6 + 3 + 34 + 3 + 12 + 3 + 13 + 3 + 13, '-').c_str());
        struct key_kind {
            const char* name;
            std::filesystem::path cert, key;
            std::uint16_t nginx_port;
        };
        const key_kind kinds[] = {{"EC P-256", certs.ec_cert, certs.ec_key, nginx.ec_port()},
                                  {"RSA-2048", certs.rsa_cert, certs.rsa_key, nginx.rsa_port()}};
        const char* clients[] = {"s_time", "hop"};
        std::vector<std::string> verdicts;
        for (const auto& k : kinds) {
            hop_server srv = start_hop(hop_mode::http, o.backend, k.cert, k.key);
            hop_server bare = start_hop(hop_mode::bare_tls, o.backend, k.cert, k.key);
            const std::uint16_t ports[] = {srv.port, k.nginx_port, bare.port};
            const pid_t pids[] = {srv.pid, nginx.pid(), bare.pid};
            const std::string names[] = {std::string("hop::http::server, ") + k.name, std::string("nginx (1 worker), ") + k.name,
                                         std::string("hop tls::stream (diag.), ") + k.name};
            auto measure = [&](std::size_t client, std::size_t server, int seconds) {
                return client == 0 ? run_s_time(dir, ports[server], pids[server], seconds, o.parallel_s_time)
                                   : run_hop_handshakes(o.backend, ports[server], pids[server], seconds, hop_handshake_workers,
                                                        certs.ca);
            };
            for (std::size_t i = 0; i < 3; ++i) measure(1, i, 1);  // warm up
            std::vector<double> per_s[2][3], srv_us[2][3], cli_us[2][3];
            for (std::size_t round = 0; round < o.handshake_rounds; ++round) {
                for (std::size_t c = 0; c < 2; ++c) {
                    for (std::size_t i = 0; i < 3; ++i) {
                        const rate r = measure(c, i, o.handshake_s);
                        per_s[c][i].push_back(r.per_s);
                        srv_us[c][i].push_back(r.server_cpu_us);
                        cli_us[c][i].push_back(r.client_cpu_us);
                    }
                }
            }
            for (std::size_t c = 0; c < 2; ++c) {
                for (std::size_t i = 0; i < 3; ++i) {
                    std::printf("  %-6s | %-34s | %12.0f | %13.1f | %13.1f\n", clients[c], names[i].c_str(),
                                median(per_s[c][i]), median(srv_us[c][i]), median(cli_us[c][i]));
                }
                char line[256];
                const double r = median(per_s[c][0]) / median(per_s[c][1]);
                std::snprintf(line, sizeof line,
                              "  hop / nginx handshakes/s, %s, client %s: %.2f (goal >= 1.0: %s); server CPU per handshake "
                              "(nginx/hop) %.2fx",
                              k.name, clients[c], r, goal_mark(r, 1.0), median(srv_us[c][1]) / median(srv_us[c][0]));
                verdicts.emplace_back(line);
            }
            std::fflush(stdout);
        }
        for (const auto& v : verdicts) std::printf("%s\n", v.c_str());
    }

    // ---- 3: the client
    if (o.wants("client")) {
        const std::string url = "https://127.0.0.1:" + std::to_string(nginx.ec_port()) + "/index.html";
        std::printf("\n[client] %zu https GETs of %s, %zu in flight, EC P-256, cold start (connections and full "
                    "handshakes timed); %zu round(s), median shown\n",
                    o.requests, url.c_str(), in_flight, o.rounds);
        std::vector<double> hop_rate, hop_cpu, hop_srv, curl_rate, curl_cpu, curl_srv;
        for (std::size_t round = 0; round < o.rounds; ++round) {
            const double s0 = proc_cpu_seconds(nginx.pid());
            const auto m = bench::run_isolated([&] { return hop_client_side(o.backend, url, certs.ca, o.requests); });
            const double s1 = proc_cpu_seconds(nginx.pid());
            // The server's CPU for hop includes its warm-up requests (made in the same child).
            hop_rate.push_back(static_cast<double>(o.requests) / m.s.seconds);
            hop_cpu.push_back((m.s.user_seconds + m.s.system_seconds) * 1e6 / static_cast<double>(o.requests));
            hop_srv.push_back((s1 - s0) * 1e6 / static_cast<double>(o.requests + 2 * in_flight));
            const client_figure c = curl_side(dir, url, certs.ca, o.requests, nginx.pid());
            curl_rate.push_back(c.per_s());
            curl_cpu.push_back(c.cpu_us());
            curl_srv.push_back(c.server_cpu_us());
        }
        std::printf("  %-38s | %12s | %14s | %14s\n", "client", "requests/s", "client us/req", "nginx us/req");
        std::printf("  %s\n", std::string(38 + 3 + 12 + 3 + 14 + 3 + 14, '-').c_str());
        std::printf("  %-38s | %12.0f | %14.1f | %14.1f\n", "hop::http::client", median(hop_rate), median(hop_cpu),
                    median(hop_srv));
        std::printf("  %-38s | %12.0f | %14.1f | %14.1f\n", "curl -Z --parallel-max 100", median(curl_rate), median(curl_cpu),
                    median(curl_srv));
        const double r = median(hop_rate) / median(curl_rate);
        std::printf("  hop / curl requests/s %.2f (goal >= 1.0: %s); client CPU per request (curl/hop) %.2fx\n", r,
                    goal_mark(r, 1.0), median(curl_cpu) / median(hop_cpu));
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "tls_bench: %s\n", e.what());
    return 1;
}
