#pragma once
// Small helpers around the OS for tests: an environment variable set for a
// scope, a pipe, whether a loopback port accepts connections.

#include "loopback.hpp"  // accepting(), free_port()

#include <doctest/doctest.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>

#include <cstdlib>
#include <optional>
#include <string>

namespace hop_test {

/// Sets an environment variable for its lifetime, then restores it.
class env_override {
public:
    env_override(const char* name, const char* value) : m_name(name) {
        if (const char* old = std::getenv(name)) m_old = old;
        ::setenv(name, value, 1);
    }
    ~env_override() {
        if (m_old) {
            ::setenv(m_name, m_old->c_str(), 1);
        } else {
            ::unsetenv(m_name);
        }
    }
    env_override(const env_override&) = delete;
    env_override& operator=(const env_override&) = delete;

private:
    const char* m_name;
    std::optional<std::string> m_old;
};

/// A close-on-exec pipe (`flags`: extra pipe2 flags, e.g. O_NONBLOCK).
struct pipe_fds {
    int r = -1;
    int w = -1;
    explicit pipe_fds(int flags = 0) {
        int p[2];
        REQUIRE(::pipe2(p, O_CLOEXEC | flags) == 0);
        r = p[0];
        w = p[1];
    }
    ~pipe_fds() {
        ::close(r);
        ::close(w);
    }
    pipe_fds(const pipe_fds&) = delete;
    pipe_fds& operator=(const pipe_fds&) = delete;
};

}  // namespace hop_test
