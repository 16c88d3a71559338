#pragma once
// Real HTTP servers for the client tests, started by the test on a free
// 127.0.0.1 port and stopped (killed and reaped) when the fixture goes:
//
//   nginx_origin        /usr/sbin/nginx, one process (master_process off),
//                       every path (pid, logs, temp dirs) inside a temp dir;
//                       the access log records $connection and
//                       $connection_requests so a test can see keep-alive
//                       reuse; locations for redirects, gzip, chunked bodies
//                       and an echo of what the request carried.
//   python_http_origin  python3 -m http.server serving a temp dir
//                       (HTTP/1.0: one response per connection).
//
// Both are started through peer.hpp (nginx through nginx.hpp's config
// writer): a missing binary fails the test with a message that says what to
// install; readiness is found by polling connect() on the port under a
// bounded guard; a server that exits early fails with its log.

#include "nginx.hpp"
#include "os.hpp"
#include "peer.hpp"

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace hop_test {

inline void write_file(const std::filesystem::path& p, const std::string& content) {
    std::filesystem::create_directories(p.parent_path());
    std::ofstream f(p, std::ios::binary);
    f << content;
    if (!f) throw std::runtime_error("cannot write " + p.string());
}

inline std::string read_file(const std::filesystem::path& p) {
    std::ifstream f(p, std::ios::binary);
    std::ostringstream s;
    s << f.rdbuf();
    return s.str();
}

/// One line of nginx_origin's access log.
struct access_entry {
    std::uint64_t connection = 0;           ///< $connection: the connection's serial number
    std::uint64_t connection_requests = 0;  ///< $connection_requests: requests on it so far
    std::string method;
    std::string uri;
    int status = 0;
};

/// nginx on a free 127.0.0.1 port, one process (no master), serving
/// root() with these locations:
///   /r301 /r302 /r303 /r307 /r308  that status, Location /echo
///   /loop                          302 to itself
///   /chain/N (N <= 12)             302 to /chain/N-1; /chain/0 -> /hello.txt
///   /echo                          200 "METHOD URI auth=... cookie=... len=..." from the request
///   /gz/...                        files gzipped on the fly (chunked, no Content-Length)
///   /sub/...                       files through sub_filter ("a" -> "A"): chunked, not compressed
///   /upload-limit                  413 for a body over 1k, answered early and closed (reset)
///   everything else                files under root()
class nginx_origin {
public:
    static constexpr const char* binary = "/usr/sbin/nginx";

    nginx_origin() {
        std::filesystem::create_directories(root());
        m_nginx.emplace(config(), dir());
    }
    nginx_origin(const nginx_origin&) = delete;
    nginx_origin& operator=(const nginx_origin&) = delete;

    std::uint16_t port() const { return m_nginx->port(); }
    std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(port()) + path; }
    std::filesystem::path root() const { return dir() / "www"; }
    const std::filesystem::path& dir() const noexcept { return m_dir.path(); }

    /// The access log's entries. nginx writes a line once a response has
    /// gone, which may be just after the client has it: waits (bounded) until
    /// there are at least `at_least` lines.
    std::vector<access_entry> access_log(std::size_t at_least = 0) const {
        for (int i = 0;; ++i) {
            std::vector<access_entry> out;
            std::istringstream in(read_file(dir() / "access.log"));
            std::string line;
            while (std::getline(in, line)) {
                std::istringstream f(line);
                access_entry e;
                f >> e.connection >> e.connection_requests >> e.method >> e.uri >> e.status;
                if (f) out.push_back(std::move(e));
            }
            if (out.size() >= at_least) return out;
            if (i == 1000) {
                throw std::runtime_error("nginx's access log has " + std::to_string(out.size()) + " lines, expected " +
                                         std::to_string(at_least) + " (after 10 s)");
            }
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
    }

    /// Forgets the log so far (nginx keeps appending to the same file).
    void clear_access_log() const {
        std::ofstream f(dir() / "access.log", std::ios::trunc);
    }

private:
    nginx_config config() const {
        const std::string d = dir().string();
        std::string redirects;
        for (int code : {301, 302, 303, 307, 308}) {
            redirects += "        location = /r" + std::to_string(code) + " { return " + std::to_string(code) + " /echo; }\n";
        }
        std::string chains = "        location = /chain/0 { return 302 /hello.txt; }\n";
        for (int i = 1; i <= 12; ++i) {
            chains += "        location = /chain/" + std::to_string(i) + " { return 302 /chain/" + std::to_string(i - 1) +
                      "; }\n";
        }
        nginx_config c;
        c.worker_connections = 4096;
        c.http = "    default_type application/octet-stream;\n"
                 "    log_format conn '$connection $connection_requests $request_method $uri $status';\n"
                 "    access_log " + d + "/access.log conn;\n"
                 "    keepalive_requests 1000000;\n"
                 "    keepalive_timeout 75s;\n";
        c.servers.push_back(nginx_server_block{
            "",
            "        root " + d + "/www;\n" + redirects + "        location = /loop { return 302 /loop; }\n" + chains +
                "        location = /echo { return 200 \"$request_method $request_uri auth=$http_authorization "
                "cookie=$http_cookie len=$content_length\\n\"; }\n"
                "        location /gz/ { gzip on; gzip_min_length 0; gzip_comp_level 1; gzip_types *; }\n"
                "        location /sub/ { sub_filter 'a' 'A'; sub_filter_once off; sub_filter_types *; }\n"
                // 413 as soon as the head says more than 1k; lingering_time 0 closes
                // at once after it (a reset: the body was not read), not after 30 s
                // of reading and dropping the rest.
                "        location = /upload-limit { client_max_body_size 1k; lingering_time 0; return 200 \"stored\\n\"; }"});
        return c;
    }

    temp_dir m_dir{"hop-http-"};
    std::optional<nginx_process> m_nginx;
};

/// `python3 -m http.server --bind 127.0.0.1 PORT --directory root()`.
class python_http_origin {
public:
    python_http_origin() {
        const std::string python = find_program("python3");
        if (python.empty()) {
            throw std::runtime_error("python3 is not on PATH: install python3 (scripts/deps) to run the HTTP client tests");
        }
        std::filesystem::create_directories(root());
        auto start = [&](int) {
            m_port = free_port();
            m_proc.reset();
            m_proc.emplace(peer_options::logged({python, "-m", "http.server", "--bind", "127.0.0.1", std::to_string(m_port),
                                                 "--directory", root().string()},
                                                m_dir.path() / "server.log"));
            return m_proc->wait_for_port(m_port, scaled(std::chrono::seconds(10)));
        };
        start_on_free_port("python3 -m http.server", start, [&] { return m_proc->output(); });
    }
    python_http_origin(const python_http_origin&) = delete;
    python_http_origin& operator=(const python_http_origin&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(m_port) + path; }
    std::filesystem::path root() const { return m_dir.path() / "www"; }

private:
    temp_dir m_dir{"hop-http-"};
    std::uint16_t m_port = 0;
    std::optional<peer> m_proc;
};

}  // namespace hop_test
