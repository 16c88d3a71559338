// Streamed uploads: what a large request body costs in memory on each side.
//
//   server  a hop server (its own process) whose handler reads the body as
//           it arrives (request_body) and hashes it; curl uploads a file to
//           it with `-T` (streamed) and with `--data-binary @file`;
//   client  hop::http::client uploading the same file (body_source::file) and
//           the same bytes from a producer (body_source::producer, chunked)
//           to that server, each in a fresh process, against `curl -T`.
//
// Printed per upload: MiB/s, and the growth of the measuring process's peak
// RSS (VmHWM, reset through /proc/PID/clear_refs before the upload) over its
// RSS before it: the hop server's for the server rows, the hop client's for
// the client rows (curl's own memory is not measured).
//
//   http_upload_bench [--size MIB] [--backend auto|io_uring|epoll]   (default 1024 MiB)

#include <hop/http.hpp>
#include <hop/io_loop.hpp>

#include "common.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

namespace {

namespace http = hop::http;

std::uint64_t fnv1a(std::string_view s, std::uint64_t h) {
    for (char c : s) {
        h ^= static_cast<unsigned char>(c);
        h *= 1099511628211ull;
    }
    return h;
}
constexpr std::uint64_t fnv_start = 1469598103934665603ull;

// Bytes of the test body: the same from the file and from the producer.
void fill_pattern(std::span<char> out, std::uint64_t offset) {
    for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<char>('a' + (offset + i) % 23);
}

std::size_t status_kib(pid_t pid, const char* field) {
    std::ifstream f("/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) + "/status");
    std::string line;
    while (std::getline(f, line)) {
        if (line.rfind(field, 0) == 0) return std::strtoull(line.c_str() + std::strlen(field), nullptr, 10);
    }
    return 0;
}
void reset_peak(pid_t pid) {
    std::ofstream("/proc/" + (pid == 0 ? std::string("self") : std::to_string(pid)) + "/clear_refs") << "5";
}

hop::backend backend_from(const std::string& name) {
    if (name == "io_uring") return hop::backend::io_uring;
    if (name == "epoll") return hop::backend::epoll;
    return hop::backend::automatic;
}

// The server's process: prints its port on `fd`, serves until killed.
[[noreturn]] void run_server(int fd, hop::backend b) {
    hop::io_loop loop{{.backend = b}};
    http::server_options options;
    options.max_body_bytes = std::numeric_limits<std::uint64_t>::max();  // the handler reads as it comes
    auto srv = http::server::bind(hop::endpoint::parse("127.0.0.1:0"),
                                  [](http::request&, http::request_body& body) -> hop::task<http::response> {
                                      std::vector<char> buf(64 * 1024);
                                      std::uint64_t size = 0;
                                      std::uint64_t h = fnv_start;
                                      while (const std::size_t n = co_await body.read_some(buf)) {
                                          size += n;
                                          h = fnv1a(std::string_view(buf.data(), n), h);
                                      }
                                      http::response r;
                                      r.body = std::to_string(size) + " " + std::to_string(h);
                                      co_return r;
                                  },
                                  options);
    const std::string port = std::to_string(srv.local_endpoint().port()) + "\n";
    [[maybe_unused]] auto w = ::write(fd, port.data(), port.size());
    ::close(fd);
    loop.spawn(srv.serve());
    loop.run();
    std::_Exit(0);
}

struct row {
    std::string name;
    double mib_per_s = 0;
    double peak_growth_mib = -1;  // -1: not measured
};

// A hop client uploading in this (fresh, forked) process; writes
// "seconds growth_kib answer" to `fd`.
hop::task<std::string> client_upload(std::string url, std::string path, std::uint64_t size, bool producer) {
    http::client client;
    // Warm up the loop and the client with a small request first.
    http::request warm;
    warm.method = "PUT";
    warm.url = url;
    warm.body = "warm";
    (void)co_await client.fetch(std::move(warm));
    http::request req;
    req.method = "PUT";
    req.url = url;
    if (producer) {
        auto at = std::make_shared<std::uint64_t>(0);
        http::body_source::producer_function fn = [at, size](std::span<char> buf) -> hop::task<std::size_t> {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - *at));
            fill_pattern(buf.first(n), *at);
            *at += n;
            co_return n;
        };
        req.body_source = http::body_source::producer(fn);
    } else {
        req.body_source = http::body_source::file(path);
    }
    const std::size_t before = status_kib(0, "VmRSS:");
    reset_peak(0);
    const auto t0 = bench::clock::now();
    http::response r = co_await client.fetch(std::move(req));
    const double secs = bench::seconds_since(t0);
    const std::size_t peak = status_kib(0, "VmHWM:");
    co_return std::to_string(secs) + " " + std::to_string(peak > before ? peak - before : 0) + " " + r.body + "\n";
}

[[noreturn]] void run_client(int fd, const std::string& backend, const std::string& url, const std::string& path,
                             std::uint64_t size, bool producer) {
    if (backend != "auto") ::setenv("HOP_BACKEND", backend.c_str(), 1);
    const std::string out = hop::run(client_upload(url, path, size, producer));
    [[maybe_unused]] auto w = ::write(fd, out.data(), out.size());
    std::_Exit(0);
}

}  // namespace

int main(int argc, char** argv) {
    std::uint64_t size_mib = 1024;
    std::string backend = "auto";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (std::strcmp(argv[i], "--size") == 0) size_mib = std::strtoull(argv[i + 1], nullptr, 10);
        if (std::strcmp(argv[i], "--backend") == 0) backend = argv[i + 1];
    }
    const std::uint64_t size = size_mib << 20;
    const hop::backend b = backend_from(backend);
    const auto dir = std::filesystem::temp_directory_path() / ("hop-upload-bench-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "body").string();
    std::uint64_t want = fnv_start;
    {
        std::ofstream f(path, std::ios::binary);
        std::vector<char> buf(1 << 20);
        for (std::uint64_t at = 0; at < size; at += buf.size()) {
            const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), size - at));
            fill_pattern(std::span<char>(buf.data(), n), at);
            want = fnv1a(std::string_view(buf.data(), n), want);
            f.write(buf.data(), static_cast<std::streamsize>(n));
        }
    }
    const std::string answer = std::to_string(size) + " " + std::to_string(want);

    int pipe_fds[2];
    if (::pipe(pipe_fds) != 0) return 1;
    const pid_t server = ::fork();
    if (server == 0) {
        ::close(pipe_fds[0]);
        run_server(pipe_fds[1], b);
    }
    ::close(pipe_fds[1]);
    char port_text[16] = {};
    [[maybe_unused]] auto got = ::read(pipe_fds[0], port_text, sizeof port_text - 1);
    ::close(pipe_fds[0]);
    const std::string url = "http://127.0.0.1:" + std::string(port_text, std::strcspn(port_text, "\n")) + "/up";

    std::vector<row> rows;
    const auto curl_upload = [&](const std::string& name, std::vector<std::string> args) {
        std::vector<std::string> argv{"curl", "-sS", "--fail"};
        argv.insert(argv.end(), args.begin(), args.end());
        argv.push_back(url);
        const std::size_t before = status_kib(server, "VmRSS:");
        reset_peak(server);
        const bench::child_result r = bench::run_program(argv, dir / "curl.out");
        const std::size_t peak = status_kib(server, "VmHWM:");
        if (r.output != answer) throw std::runtime_error(name + ": the server got '" + r.output + "', not '" + answer + "'");
        rows.push_back({name, static_cast<double>(size_mib) / r.wall_seconds,
                        static_cast<double>(peak > before ? peak - before : 0) / 1024.0});
    };
    const auto hop_upload = [&](const std::string& name, bool producer) {
        int fds[2];
        if (::pipe(fds) != 0) throw std::runtime_error("pipe");
        const pid_t c = ::fork();
        if (c == 0) {
            ::close(fds[0]);
            run_client(fds[1], backend, url, path, size, producer);
        }
        ::close(fds[1]);
        std::string out;
        char buf[256];
        for (ssize_t n; (n = ::read(fds[0], buf, sizeof buf)) > 0;) out.append(buf, static_cast<std::size_t>(n));
        ::close(fds[0]);
        int status = 0;
        ::waitpid(c, &status, 0);
        double secs = 0;
        std::size_t growth_kib = 0;
        char body[128] = {};
        if (std::sscanf(out.c_str(), "%lf %zu %127[^\n]", &secs, &growth_kib, body) != 3 || answer != body) {
            throw std::runtime_error(name + ": the client said '" + out + "', the answer should be '" + answer + "'");
        }
        rows.push_back({name, static_cast<double>(size_mib) / secs, static_cast<double>(growth_kib) / 1024.0});
    };
    try {
        // The server's memory, curl uploading.
        curl_upload("server: hop <- curl -T file", {"-T", path});
        // curl reads a --data-binary file whole into its memory (it refuses 1 GiB).
        if (size_mib <= 256) {
            curl_upload("server: hop <- curl --data-binary @file", {"--data-binary", "@" + path, "-H",
                                                                     "Content-Type: application/octet-stream"});
        }
        // The client's memory and speed, against curl -T to the same server.
        hop_upload("client: hop body_source::file -> hop", false);
        hop_upload("client: hop body_source::producer -> hop", true);
        curl_upload("client: curl -T file -> hop", {"-T", path});
    } catch (const std::exception& e) {
        std::fprintf(stderr, "http_upload_bench: %s\n", e.what());
        ::kill(server, SIGKILL);
        std::filesystem::remove_all(dir);
        return 1;
    }
    ::kill(server, SIGKILL);
    ::waitpid(server, nullptr, 0);
    std::filesystem::remove_all(dir);

    std::printf("streamed uploads of %llu MiB on 127.0.0.1, %zu cores, backend %s; peak RSS growth of the hop side\n",
                static_cast<unsigned long long>(size_mib), bench::core_count(), backend.c_str());
    std::printf("%-44s | %10s | %22s\n", "upload", "MiB/s", "peak RSS growth (MiB)");
    for (const row& r : rows) {
        const bool curl_client = r.name.rfind("client: curl", 0) == 0;
        if (curl_client) {
            std::printf("%-44s | %10.0f | %22s\n", r.name.c_str(), r.mib_per_s, "(curl: not measured)");
        } else {
            std::printf("%-44s | %10.0f | %22.1f\n", r.name.c_str(), r.mib_per_s, r.peak_growth_mib);
        }
    }
    const double curl_rate = rows.back().mib_per_s;
    const std::size_t first_client = rows.size() - 3;
    std::printf("hop client / curl -T, MiB/s: file %.2fx, producer %.2fx\n", rows[first_client].mib_per_s / curl_rate,
                rows[first_client + 1].mib_per_s / curl_rate);
    return 0;
}
