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
// A missing binary fails the test with a message that says what to install.
// Readiness is found by polling connect() on the port, bounded in tries; a
// server that exits early fails with its log.

#include "os.hpp"

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace hop_test {

/// A fresh directory under the temp dir, removed with everything in it.
class temp_dir {
public:
    temp_dir() {
        std::string tmpl = (std::filesystem::temp_directory_path() / "hop-http-XXXXXX").string();
        if (::mkdtemp(tmpl.data()) == nullptr) {
            throw std::runtime_error("mkdtemp(" + tmpl + "): " + std::strerror(errno));
        }
        m_path = tmpl;
    }
    ~temp_dir() {
        std::error_code ec;
        std::filesystem::remove_all(m_path, ec);
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    const std::filesystem::path& path() const noexcept { return m_path; }

private:
    std::filesystem::path m_path;
};

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

/// The full path of `name` on PATH (or `name` itself if it has a slash and
/// is executable); "" if it is nowhere.
inline std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) return ::access(name.c_str(), X_OK) == 0 ? name : "";
    const char* path = std::getenv("PATH");
    std::string dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    std::size_t start = 0;
    while (start <= dirs.size()) {
        std::size_t end = dirs.find(':', start);
        if (end == std::string::npos) end = dirs.size();
        std::string candidate = dirs.substr(start, end - start) + "/" + name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        start = end + 1;
    }
    return "";
}

/// A child process (argv[0] a full path), its stdout and stderr in `log`.
/// The destructor ends it (SIGTERM, then SIGKILL if it lingers) and reaps it.
class child_process {
public:
    child_process(const std::vector<std::string>& argv, const std::filesystem::path& log) : m_log(log) {
        std::vector<char*> args;
        for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
        args.push_back(nullptr);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
        posix_spawn_file_actions_adddup2(&fa, 1, 2);
        posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
        posix_spawnattr_t attr;
        posix_spawnattr_init(&attr);
        // The test main ignores SIGPIPE; the servers get the default back.
        sigset_t defaults;
        sigemptyset(&defaults);
        sigaddset(&defaults, SIGPIPE);
        posix_spawnattr_setsigdefault(&attr, &defaults);
        posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
        const int r = ::posix_spawn(&m_pid, args[0], &fa, &attr, args.data(), environ);
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
        if (r != 0) throw std::runtime_error("cannot start " + argv[0] + ": " + std::strerror(r));
    }
    ~child_process() { stop(); }
    child_process(const child_process&) = delete;
    child_process& operator=(const child_process&) = delete;

    /// True (and reaped) if the process has ended.
    bool exited() {
        if (m_pid <= 0) return true;
        int status = 0;
        const pid_t r = ::waitpid(m_pid, &status, WNOHANG);
        if (r == m_pid) {
            m_pid = -1;
            return true;
        }
        return false;
    }

    void stop() noexcept {
        if (m_pid <= 0) return;
        ::kill(m_pid, SIGTERM);
        // Bounded: 5 s for a clean exit, then SIGKILL (which cannot be ignored).
        for (int i = 0; i < 500; ++i) {
            if (exited()) return;
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        }
        ::kill(m_pid, SIGKILL);
        int status = 0;
        ::waitpid(m_pid, &status, 0);
        m_pid = -1;
    }

    pid_t pid() const noexcept { return m_pid; }
    std::string log() const { return read_file(m_log); }

private:
    pid_t m_pid = -1;
    std::filesystem::path m_log;
};

/// Polls until 127.0.0.1:`port` accepts (true), or `p` exits (false);
/// bounded to about 10 s, then throws.
inline bool wait_until_accepting(std::uint16_t port, child_process& p, const std::string& what) {
    for (int i = 0; i < 1000; ++i) {
        if (accepting(port)) return true;
        if (p.exited()) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    throw std::runtime_error(what + " did not accept connections on 127.0.0.1:" + std::to_string(port) +
                             " within 10 s; its log:\n" + p.log());
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
        if (::access(binary, X_OK) != 0) {
            throw std::runtime_error(std::string(binary) +
                                     " is missing: install nginx-light (scripts/deps) to run the HTTP client tests");
        }
        std::filesystem::create_directories(root());
        for (int attempt = 0; attempt < 20; ++attempt) {
            m_port = free_port();
            write_config();
            m_proc.emplace(std::vector<std::string>{binary, "-p", dir().string() + "/", "-c", conf().string(), "-e",
                                                    (dir() / "error.log").string()},
                           dir() / "stderr.log");
            if (wait_until_accepting(m_port, *m_proc, "nginx")) return;
            const std::string log = read_file(dir() / "error.log") + m_proc->log();
            m_proc.reset();
            if (log.find("Address already in use") == std::string::npos) {
                throw std::runtime_error("nginx exited at start; its log:\n" + log);
            }
        }
        throw std::runtime_error("nginx: no free port after 20 tries");
    }
    nginx_origin(const nginx_origin&) = delete;
    nginx_origin& operator=(const nginx_origin&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(m_port) + path; }
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
    std::filesystem::path conf() const { return dir() / "nginx.conf"; }

    void write_config() const {
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
        std::ostringstream c;
        c << "daemon off;\n"
          << "master_process off;\n"
          << "worker_processes 1;\n"
          << "pid " << d << "/nginx.pid;\n"
          << "error_log " << d << "/error.log warn;\n"
          << "events { worker_connections 4096; }\n"
          << "http {\n"
          << "    default_type application/octet-stream;\n"
          << "    log_format conn '$connection $connection_requests $request_method $uri $status';\n"
          << "    access_log " << d << "/access.log conn;\n"
          << "    client_body_temp_path " << d << "/client_body;\n"
          << "    proxy_temp_path " << d << "/proxy;\n"
          << "    fastcgi_temp_path " << d << "/fastcgi;\n"
          << "    uwsgi_temp_path " << d << "/uwsgi;\n"
          << "    scgi_temp_path " << d << "/scgi;\n"
          << "    keepalive_requests 1000000;\n"
          << "    keepalive_timeout 75s;\n"
          << "    server {\n"
          << "        listen 127.0.0.1:" << m_port << ";\n"
          << "        root " << d << "/www;\n"
          << redirects
          << "        location = /loop { return 302 /loop; }\n"
          << chains
          << "        location = /echo { return 200 \"$request_method $request_uri auth=$http_authorization "
             "cookie=$http_cookie len=$content_length\\n\"; }\n"
          << "        location /gz/ { gzip on; gzip_min_length 0; gzip_comp_level 1; gzip_types *; }\n"
          << "        location /sub/ { sub_filter 'a' 'A'; sub_filter_once off; sub_filter_types *; }\n"
          // 413 as soon as the head says more than 1k; lingering_time 0 closes
          // at once after it (a reset: the body was not read), not after 30 s
          // of reading and dropping the rest.
          << "        location = /upload-limit { client_max_body_size 1k; lingering_time 0; return 200 \"stored\\n\"; }\n"
          << "    }\n"
          << "}\n";
        write_file(conf(), c.str());
    }

    temp_dir m_dir;
    std::uint16_t m_port = 0;
    std::optional<child_process> m_proc;
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
        for (int attempt = 0; attempt < 20; ++attempt) {
            m_port = free_port();
            m_proc.emplace(std::vector<std::string>{python, "-m", "http.server", "--bind", "127.0.0.1",
                                                    std::to_string(m_port), "--directory", root().string()},
                           m_dir.path() / "server.log");
            if (wait_until_accepting(m_port, *m_proc, "python3 -m http.server")) return;
            const std::string log = m_proc->log();
            m_proc.reset();
            if (log.find("Address already in use") == std::string::npos) {
                throw std::runtime_error("python3 -m http.server exited at start; its log:\n" + log);
            }
        }
        throw std::runtime_error("python3 -m http.server: no free port after 20 tries");
    }
    python_http_origin(const python_http_origin&) = delete;
    python_http_origin& operator=(const python_http_origin&) = delete;

    std::uint16_t port() const noexcept { return m_port; }
    std::string url(const std::string& path) const { return "http://127.0.0.1:" + std::to_string(m_port) + path; }
    std::filesystem::path root() const { return m_dir.path() / "www"; }

private:
    temp_dir m_dir;
    std::uint16_t m_port = 0;
    std::optional<child_process> m_proc;
};

}  // namespace hop_test
