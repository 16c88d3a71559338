#pragma once
// Runs test cases of this test binary in a fresh child process: for what
// only a whole process shows (static destructors at exit, a lowered
// descriptor limit). The cases run there are marked doctest::skip() and
// look for an environment variable, so the ordinary run passes them by.

#include <doctest/doctest.h>

#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace hop_test {

/// Starts `/proc/self/exe --test-case=<filter> --no-skip --minimal` with
/// `extra_env` ("NAME=value") added to the environment (replacing a NAME
/// it inherits); its stdout and
/// stderr go to `out_fd` / `err_fd` where they are not -1. Everything the
/// child needs is made before fork: it only execs. Returns the child's pid.
inline pid_t spawn_self(const std::string& filter, const std::vector<std::string>& extra_env, int out_fd = -1,
                        int err_fd = -1) {
    // An extra NAME=value replaces an inherited NAME.
    const auto name_of = [](std::string_view kv) { return kv.substr(0, kv.find('=') + 1); };
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
        const std::string_view kv(*e);
        const bool replaced = std::any_of(extra_env.begin(), extra_env.end(),
                                          [&](const std::string& x) { return name_of(x) == name_of(kv); });
        if (!replaced) env_strings.emplace_back(kv);
    }
    env_strings.insert(env_strings.end(), extra_env.begin(), extra_env.end());
    std::vector<char*> envp;
    for (auto& e : env_strings) envp.push_back(e.data());
    envp.push_back(nullptr);
    std::string self = "/proc/self/exe";
    std::string filter_arg = "--test-case=" + filter;
    std::string no_skip = "--no-skip";
    std::string quiet = "--minimal";
    char* argv[] = {self.data(), filter_arg.data(), no_skip.data(), quiet.data(), nullptr};
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        if (out_fd >= 0) ::dup2(out_fd, 1);
        if (err_fd >= 0) ::dup2(err_fd, 2);
        ::execve(self.c_str(), argv, envp.data());
        ::_exit(127);
    }
    return pid;
}

}  // namespace hop_test
