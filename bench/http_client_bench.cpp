// HTTP client benchmark: GETs of a 4 KiB body from nginx (one process, one
// worker, keep-alive, no access log) on 127.0.0.1, 100 requests in flight:
//
//   hop io_uring / epoll   hop::http::client, hop::map(..., {.max_concurrency = 100})
//                          over N URLs on one loop (max_connections 100)
//   wrk                    wrk -t1 -c100 for about 2 s: the ceiling
//   curl                   curl -Z --parallel-max 100 over N URLs from a config
//                          file (libcurl's multi interface, one thread)
//   python                 concurrent.futures.ThreadPoolExecutor(32) + urllib
//                          (fewer requests: it is slow; the rate is what counts)
//
// Each side runs in its own process; its CPU time comes from wait4's rusage
// (for hop: getrusage inside its child around the timed part). Printed:
// requests/s, CPU microseconds per request, and hop's ratio to each side
// (above 1: hop is better). Every side's requests are checked for 200 and
// the full body.

#include "common.hpp"

#include <hop/hop.hpp>
#include <hop/http.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include <csignal>
#include <thread>
#include <filesystem>
#include <limits>
#include <fstream>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>


namespace {

using bench::accepting;
using bench::child_result;
using bench::free_port;
using bench::run_program;
using bench::slurp;

constexpr const char* sections[] = {"hop", "wrk", "curl", "python"};
constexpr std::size_t in_flight = 100;
constexpr std::size_t body_size = 4096;

// ---- processes ------------------------------------------------------------------

// nginx: one process, one worker, a 4 KiB file, keep-alive, no access log.
class nginx_server {
public:
    explicit nginx_server(const std::filesystem::path& dir) : m_body(make_body(dir)), m_nginx(config(dir), dir) {}

    std::string url() const { return "http://127.0.0.1:" + std::to_string(m_nginx.port()) + "/4k.bin"; }
    const std::string& body() const { return m_body; }

private:
    static std::string make_body(const std::filesystem::path& dir) {
        std::string body(body_size, '\0');
        for (std::size_t i = 0; i < body_size; ++i) body[i] = static_cast<char>('a' + (i * 7) % 26);
        std::filesystem::create_directories(dir / "www");
        std::ofstream(dir / "www" / "4k.bin", std::ios::binary) << body;
        return body;
    }
    static hop_test::nginx_config config(const std::filesystem::path& dir) {
        hop_test::nginx_config c;
        c.worker_connections = 4096;
        c.http = "    access_log off;\n    default_type application/octet-stream;\n"
                 "    keepalive_requests 10000000;\n    keepalive_timeout 75s;\n";
        c.servers.push_back(hop_test::nginx_server_block{" backlog=4096", "        root " + (dir / "www").string() + ";"});
        return c;
    }

    std::string m_body;
    hop_test::nginx_process m_nginx;
};

// ---- hop -------------------------------------------------------------------------

struct hop_result {
    std::size_t ok = 0;
};

// One GET, checked and dropped (like curl -o /dev/null, wrk): the run does
// not keep N bodies in memory.
hop::task<bool> get_and_check(hop::http::client& client, std::string url, const std::string& body) {
    hop::http::response r = co_await client.get(std::move(url));
    co_return r.status == 200 && r.body == body;
}

hop::task<hop_result> hop_run(hop::http::client& client, std::vector<std::string> urls, const std::string& body) {
    std::vector<bool> oks = co_await hop::map([&](std::string u) { return get_and_check(client, std::move(u), body); },
                                              urls, {.max_concurrency = in_flight});
    hop_result r;
    r.ok = static_cast<std::size_t>(std::count(oks.begin(), oks.end(), true));
    co_return r;
}

bench::sample hop_side(hop::backend b, const std::string& url, const std::string& body, std::size_t n) {
    hop::io_loop loop{{.backend = b, .queue_depth = 256}};
    hop::http::client client{{.max_connections = in_flight}};
    std::vector<std::string> warm(in_flight * 2, url);
    auto w = loop.spawn(hop_run(client, warm, body));  // connections made and warm
    while (!w.done()) loop.run_once();
    std::vector<std::string> urls(n, url);
    const auto c0 = bench::process_cpu_times();
    const auto t0 = bench::clock::now();
    auto f = loop.spawn(hop_run(client, urls, body));
    while (!f.done()) loop.run_once();
    bench::sample s;
    s.seconds = bench::seconds_since(t0);
    const auto c1 = bench::process_cpu_times();
    s.user_seconds = c1.user - c0.user;
    s.system_seconds = c1.system - c0.system;
    const hop_result r = f.get();
    if (r.ok != n) throw std::runtime_error("hop: " + std::to_string(n - r.ok) + " requests failed or came back wrong");
    s.check = r.ok;
    return s;
}

// ---- the others ----------------------------------------------------------------------

struct figure {
    double requests = 0;
    double seconds = 0;
    double cpu_seconds = 0;
    double rate() const { return requests / seconds; }
    double cpu_us() const { return cpu_seconds * 1e6 / requests; }
};

figure wrk_side(const std::filesystem::path& dir, const std::string& url, bool quick) {
    const std::string dur = quick ? "1s" : "2s";
    auto r = run_program({"wrk", "-t1", "-c" + std::to_string(in_flight), "-d" + dur, "--latency", url}, dir / "wrk.out");
    std::smatch m;
    figure f;
    if (!std::regex_search(r.output, m, std::regex(R"((\d+) requests in ([0-9.]+)(m?s))"))) {
        throw std::runtime_error("cannot read wrk's output:\n" + r.output);
    }
    f.requests = std::stod(m[1]);
    f.seconds = std::stod(m[2]) / (m[3] == "ms" ? 1000.0 : 1.0);
    if (r.output.find("Non-2xx") != std::string::npos) throw std::runtime_error("wrk saw errors:\n" + r.output);
    f.cpu_seconds = r.cpu_seconds;
    return f;
}

figure curl_side(const std::filesystem::path& dir, const std::string& url, std::size_t n) {
    {
        std::ofstream cfg(dir / "curl.cfg");
        for (std::size_t i = 0; i < n; ++i) cfg << "url = \"" << url << "\"\noutput = \"/dev/null\"\n";
    }
    auto r = run_program({"curl", "-s", "-S", "--no-progress-meter", "--fail", "-Z", "--parallel-max", std::to_string(in_flight), "-K",
                          (dir / "curl.cfg").string(), "-w", "%{http_code} %{size_download}\\n"},
                         dir / "curl.out");
    bench::check_curl_transfers(r.output, n, body_size);
    return {static_cast<double>(n), r.wall_seconds, r.cpu_seconds};
}

figure python_side(const std::filesystem::path& dir, const std::string& url, std::size_t n) {
    std::ofstream(dir / "client.py") << "import sys, time, urllib.request\n"
                                        "from concurrent.futures import ThreadPoolExecutor\n"
                                        "url, n = sys.argv[1], int(sys.argv[2])\n"
                                        "def get(_):\n"
                                        "    with urllib.request.urlopen(url) as r:\n"
                                        "        return r.status == 200 and len(r.read()) == " +
                                            std::to_string(body_size) +
                                            "\n"
                                            "t0 = time.perf_counter()\n"
                                            "with ThreadPoolExecutor(32) as ex:\n"
                                            "    ok = sum(ex.map(get, range(n)))\n"
                                            "print(ok, time.perf_counter() - t0)\n";
    auto r = run_program({"python3", (dir / "client.py").string(), url, std::to_string(n)}, dir / "python.out");
    std::istringstream in(r.output);
    std::size_t ok = 0;
    double secs = 0;
    in >> ok >> secs;
    if (ok != n) throw std::runtime_error("python: " + std::to_string(ok) + " of " + std::to_string(n) + " ok:\n" + r.output);
    return {static_cast<double>(n), secs, r.cpu_seconds};
}

bool uring_available() {
    try {
        hop::io_loop loop{{.backend = hop::backend::io_uring}};
        return true;
    } catch (const std::system_error&) {
        return false;
    }
}

}  // namespace

int main(int argc, char** argv) try {
    auto opt = bench::parse_options(argc, argv, {sections[0], sections[1], sections[2], sections[3]});
    std::signal(SIGPIPE, SIG_IGN);
    // HOP_BENCH_REQUESTS overrides the count (for profiling a longer run).
    const char* env_n = std::getenv("HOP_BENCH_REQUESTS");
    const std::size_t n = env_n ? std::stoul(env_n) : opt.quick ? 2'000 : 10'000;
    const std::size_t n_python = opt.quick ? 500 : 2'000;
    const std::size_t rounds = opt.quick ? 1 : 3;

    char tmpl[] = "/tmp/hop-http-bench-XXXXXX";
    if (::mkdtemp(tmpl) == nullptr) throw std::runtime_error("mkdtemp failed");
    const std::filesystem::path dir = tmpl;
    struct cleanup {
        std::filesystem::path d;
        ~cleanup() {
            std::error_code ec;
            std::filesystem::remove_all(d, ec);
        }
    } cleanup_dir{dir};
    nginx_server ngx(dir);
    const std::string url = ngx.url();
    const std::string body = ngx.body();

    std::printf("HTTP client benchmark: %zu cores; nginx (1 process) serving a %zu-byte body on 127.0.0.1; "
                "%zu requests in flight; %zu GETs per hop/curl run (python: %zu), %zu round(s), median shown\n",
                bench::core_count(), body_size, in_flight, n, n_python, rounds);

    std::vector<hop::backend> backends;
    if (uring_available()) backends.push_back(hop::backend::io_uring);
    backends.push_back(hop::backend::epoll);

    std::vector<std::vector<figure>> hop_runs(backends.size());
    std::vector<figure> wrk_runs, curl_runs, py_runs;
    for (std::size_t round = 0; round < rounds; ++round) {
        for (std::size_t i = 0; i < backends.size() && opt.wants("hop"); ++i) {
            const auto b = backends[i];
            const auto m = bench::run_isolated([&] { return hop_side(b, url, body, n); });
            hop_runs[i].push_back({static_cast<double>(n), m.s.seconds, m.s.user_seconds + m.s.system_seconds});
        }
        if (opt.wants("wrk")) wrk_runs.push_back(wrk_side(dir, url, opt.quick));
        if (opt.wants("curl")) curl_runs.push_back(curl_side(dir, url, n));
        if (opt.wants("python")) py_runs.push_back(python_side(dir, url, n_python));
    }

    auto median = [](std::vector<double> v) {
        if (v.empty()) return std::numeric_limits<double>::quiet_NaN();  // a side left out with --only
        std::sort(v.begin(), v.end());
        return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
    };
    auto rate_of = [&](const std::vector<figure>& runs) {
        std::vector<double> v;
        for (const auto& f : runs) v.push_back(f.rate());
        return median(v);
    };
    auto cpu_of = [&](const std::vector<figure>& runs) {
        std::vector<double> v;
        for (const auto& f : runs) v.push_back(f.cpu_us());
        return median(v);
    };

    std::printf("\n%-34s | %12s | %12s\n", "client", "requests/s", "CPU us/req");
    std::printf("%s\n", std::string(34 + 3 + 12 + 3 + 12, '-').c_str());
    auto row = [&](const std::string& name, const std::vector<figure>& runs) {
        std::printf("%-34s | %12.0f | %12.2f\n", name.c_str(), rate_of(runs), cpu_of(runs));
    };
    for (std::size_t i = 0; i < backends.size(); ++i) {
        row(std::string("hop::http::client (") + (backends[i] == hop::backend::io_uring ? "io_uring" : "epoll") + ")",
            hop_runs[i]);
    }
    row("wrk -t1 -c100 (ceiling)", wrk_runs);
    row("curl -Z --parallel-max 100", curl_runs);
    row("python ThreadPoolExecutor(32)", py_runs);

    std::printf("\n%-34s | %12s | %12s | %12s\n", "hop's ratio (rate; above 1 = hop", "vs wrk", "vs curl", "vs python");
    std::printf("%-34s | %12s | %12s | %12s\n", " better; CPU: theirs / hop's)", "(>= 0.7)", "(>= 2)", "(>= 10)");
    std::printf("%s\n", std::string(34 + 3 * 15, '-').c_str());
    for (std::size_t i = 0; i < backends.size(); ++i) {
        const std::string tag = backends[i] == hop::backend::io_uring ? "io_uring" : "epoll";
        const double r = rate_of(hop_runs[i]);
        const double c = cpu_of(hop_runs[i]);
        std::printf("%-34s | %11.2fx | %11.2fx | %11.2fx\n", ("requests/s, hop " + tag).c_str(), r / rate_of(wrk_runs),
                    r / rate_of(curl_runs), r / rate_of(py_runs));
        std::printf("%-34s | %11.2fx | %11.2fx | %11.2fx\n", ("CPU per request, hop " + tag).c_str(), cpu_of(wrk_runs) / c,
                    cpu_of(curl_runs) / c, cpu_of(py_runs) / c);
    }
    return 0;
} catch (const std::exception& e) {
    std::fprintf(stderr, "http_client_bench: %s\n", e.what());
    return 1;
}
